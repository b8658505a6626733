#!/usr/bin/env bash
# `make requests`: the original demo. Sends N sequential requests for one product to
# the gateway and prints each one's time and cache outcome, then a summary.
set -euo pipefail

URL=${URL:-http://127.0.0.1:8080/predict}
PRODUCT=${PRODUCT:-ETH/EUR}
COUNT=${COUNT:-100}

times=()
for i in $(seq "$COUNT"); do
  out=$(curl -sS -o /dev/null -D - -w 'TIME %{time_total} %{http_code}\n' \
    -X POST "$URL" -H 'content-type: application/json' -d "{\"product_id\":\"$PRODUCT\"}") || {
    echo "request $i failed: is the gateway running? (make run)" >&2; exit 1; }
  cache=$(printf '%s\n' "$out" | tr -d '\r' | awk 'tolower($1)=="x-cache:" {print $2}')
  read -r _ seconds status < <(printf '%s\n' "$out" | grep '^TIME ')
  ms=$(awk -v s="$seconds" 'BEGIN { printf "%.2f", s * 1000 }')
  times+=("$ms")
  echo "Time taken: ${ms}ms (HTTP $status, ${cache:-no X-Cache})"
done

printf '%s\n' "${times[@]}" | awk -v count="$COUNT" '
  NR == 1 { first = $1; next }
  { rest[NR - 1] = $1 }
  END {
    n = asort(rest)
    if (n == 0) { printf "first request: %.2f ms\n", first; exit }
    median = (n % 2) ? rest[(n + 1) / 2] : (rest[n / 2] + rest[n / 2 + 1]) / 2
    printf "\nSummary: first request %.2f ms; median of the other %d: %.2f ms; speed-up %.0fx\n",
      first, n, median, (median > 0 ? first / median : 0)
  }'
