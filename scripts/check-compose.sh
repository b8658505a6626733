#!/usr/bin/env bash
# Validates the compose files (docker-compose.yml, and docker-compose.cluster.yml
# with a Redis Cluster and a NATS cluster) and the Dockerfile as far as a machine
# without a Docker engine can: each compose file parses and resolves, has its
# services and their health checks, every build target it names exists in the
# Dockerfile, and every file the Dockerfile copies exists.
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

# check FILE MIN_HEALTHCHECKS SERVICE...
check() {
  local file=$1 checks=$2
  shift 2
  "${compose[@]}" -f "$file" config -q || fail "$file does not validate"
  local resolved
  resolved=$("${compose[@]}" -f "$file" config)
  for target in $(printf '%s\n' "$resolved" | awk '/^ +target: [a-z]/ {print $2}'); do
    grep -Eq "^FROM .* AS ${target}\$" Dockerfile || fail "$file builds target '$target', which the Dockerfile lacks"
  done
  for service in "$@"; do
    printf '%s\n' "$resolved" | grep -Eq "^  ${service}:\$" || fail "$file: service '$service' missing"
  done
  [ "$(printf '%s\n' "$resolved" | grep -c 'healthcheck:')" -ge "$checks" ] || fail "$file: every long-running service needs a health check"
}

check docker-compose.yml 6 nats redis gateway worker prometheus grafana

# The monitoring configuration the main file mounts: Prometheus's own checker
# for its configuration, and the dashboard's JSON.
if command -v promtool >/dev/null 2>&1; then
  promtool check config --syntax-only deploy/prometheus/prometheus.yml >/dev/null \
    || fail "deploy/prometheus/prometheus.yml does not validate (promtool check config)"
else
  fail "promtool is not installed (apt-get install -y prometheus)"
fi
python3 scripts/check-kubernetes.py || fail "deploy/kubernetes does not validate"
python3 -m json.tool deploy/grafana/dashboards/prediction-cache.json >/dev/null \
  || fail "deploy/grafana/dashboards/prediction-cache.json is not valid JSON"
check docker-compose.cluster.yml 12 nats-1 nats-2 nats-3 redis-1 redis-2 redis-3 redis-4 redis-5 redis-6 \
  redis-cluster gateway-1 gateway-2 worker
grep -q 'REDIS_MODE: cluster' docker-compose.cluster.yml || fail "the cluster file's gateways must use --redis-mode cluster"

# Every local source of a COPY (not --from) must exist.
while read -r sources; do
  for source in $sources; do
    [ "$source" = "." ] && continue
    [ -e "$source" ] || fail "the Dockerfile copies '$source', which does not exist"
  done
done < <(awk '/^COPY / && !/--from/ { $1=""; NF--; print }' Dockerfile)

echo "check-compose: docker-compose.yml, docker-compose.cluster.yml, the Dockerfile and deploy/ are consistent"
