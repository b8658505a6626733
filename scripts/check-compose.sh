#!/usr/bin/env bash
# Validates docker-compose.yml and the Dockerfile as far as a machine without a
# Docker engine can: the compose file parses and resolves, every build target it
# names exists in the Dockerfile, and every file the Dockerfile copies exists.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-compose: $*" >&2; exit 1; }

if command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  fail "neither docker-compose nor 'docker compose' is installed (apt-get install -y docker-compose)"
fi

"${compose[@]}" -f docker-compose.yml config -q || fail "docker-compose.yml does not validate"

resolved=$("${compose[@]}" -f docker-compose.yml config)
for target in $(printf '%s\n' "$resolved" | awk '/^ +target: [a-z]/ {print $2}'); do
  grep -Eq "^FROM .* AS ${target}\$" Dockerfile || fail "compose builds target '$target', which the Dockerfile lacks"
done
for service in nats redis gateway worker; do
  printf '%s\n' "$resolved" | grep -Eq "^  ${service}:\$" || fail "service '$service' missing"
done
[ "$(printf '%s\n' "$resolved" | grep -c 'healthcheck:')" -ge 4 ] || fail "every service needs a health check"

# Every local source of a COPY (not --from) must exist.
while read -r sources; do
  for source in $sources; do
    [ "$source" = "." ] && continue
    [ -e "$source" ] || fail "the Dockerfile copies '$source', which does not exist"
  done
done < <(awk '/^COPY / && !/--from/ { $1=""; NF--; print }' Dockerfile)

echo "check-compose: docker-compose.yml and Dockerfile are consistent"
