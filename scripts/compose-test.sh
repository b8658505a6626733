#!/usr/bin/env bash
# Runs the project's compose files for real, as a user would: builds the images,
# starts docker-compose.yml (all but Grafana), checks a MISS then a HIT through
# /predict, an ONNX model, `--scale worker=4` (in /v1/models and in
# Prometheus's targets), a worker stopped with requests in flight (none lost,
# exit 0 within its grace period) and /readyz; then docker-compose.cluster.yml:
# a miss through one gateway, a hit through the other, a Redis master killed
# under load with no failed request. `down -v` always, even on failure; a
# summary line with the timings at the end.
#
# Starts the Docker daemon when none runs (installing docker.io and
# docker-compose from Debian when missing, as root), and builds the stand-in
# base images (STANDIN_IMAGES, ../shared/tools/make-standin-images.sh) when the
# images the Dockerfile and compose files name are missing, since no image
# registry may be reachable. Every published port is a free one on this
# machine, and every request goes to 127.0.0.1; the containers are the project
# `prediction-compose-test` only.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=prediction-compose-test
# The stand-in builder: STANDIN_IMAGES, else beside this checkout, else where
# these machines keep their shared tools.
if [ -z "${STANDIN_IMAGES:-}" ]; then
  for candidate in ../shared/tools/make-standin-images.sh /work/shared/tools/make-standin-images.sh; do
    if [ -f "$candidate" ]; then STANDIN_IMAGES=$candidate; break; fi
  done
fi
STANDIN_IMAGES=${STANDIN_IMAGES:-../shared/tools/make-standin-images.sh}
BASE_IMAGES=(debian:bookworm-slim rust:1.95-bookworm nats:2.10-alpine redis:7-alpine prom/prometheus:v2.53.3)
# How long any one wait may take, in seconds (a cold build has its own bound,
# the caller's).
WAIT=${COMPOSE_TEST_WAIT:-180}

started=$SECONDS
timings=()
file=""

say() { echo "compose-test: $*"; }
fail() { echo "compose-test: FAILED: $*" >&2; exit 1; }
# lap NAME: the seconds since the last lap, recorded for the summary.
lap_started=$SECONDS
lap() { timings+=("$1 $((SECONDS - lap_started))s"); lap_started=$SECONDS; }

compose_binary() {
  if command -v docker-compose >/dev/null 2>&1; then
    echo docker-compose
  elif docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  fi
}

# --- Docker itself ---------------------------------------------------------
ensure_docker() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  [ -n "$(compose_binary)" ] || missing+=(docker-compose)
  if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || fail "install ${missing[*]} (apt-get install -y ${missing[*]})"
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "no Docker daemon runs and only root may start one"
    say "starting the Docker daemon (its log: /var/log/dockerd.log)"
    # In a subshell, so that it is not one of this script's jobs (`wait`).
    (setsid dockerd >>/var/log/dockerd.log 2>&1 < /dev/null &)
    local deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
      ((SECONDS < deadline)) || fail "the Docker daemon did not start within 60 s (see /var/log/dockerd.log)"
      sleep 1
    done
  fi
}

ensure_base_images() {
  local missing=()
  for image in "${BASE_IMAGES[@]}"; do
    docker image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
  done
  ((${#missing[@]})) || return 0
  if [ ! -x "$STANDIN_IMAGES" ] && [ ! -f "$STANDIN_IMAGES" ]; then
    say "${missing[*]} missing and no stand-in script at $STANDIN_IMAGES: the build pulls them"
    return 0
  fi
  say "building stand-ins for ${missing[*]} ($STANDIN_IMAGES)"
  # The rust stand-in carries this machine's crate cache: it must hold every
  # crate of the lock file for the build inside it to work offline.
  cargo fetch --locked --quiet
  bash "$STANDIN_IMAGES" >/dev/null
}

# --- helpers -----------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

compose() {
  # shellcheck disable=SC2046 # "docker compose" is two words
  $(compose_binary) -p "$PROJECT" -f "$file" "$@"
}

# Stops and removes whatever this run started (the file given), volumes too.
down() {
  [ -n "$file" ] || return 0
  timeout 120 $(compose_binary) -p "$PROJECT" -f "$file" down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true
}

on_exit() {
  local status=$?
  if ((status != 0)) && [ -n "$file" ]; then
    echo "--- the last log lines of $file's services" >&2
    compose logs --no-color --tail=30 2>&1 | tail -200 >&2 || true
  fi
  down
  local summary
  summary=$(printf '%s, ' "${timings[@]}")
  if ((status == 0)); then
    say "passed in $((SECONDS - started))s: ${summary%, }"
  else
    say "failed after $((SECONDS - started))s: ${summary%, }" >&2
  fi
}
trap on_exit EXIT
# Stopped from outside (the Makefile's time bound, ^C): still clean up.
trap 'exit 143' TERM INT

# wait_for WHAT COMMAND...: runs COMMAND every second until it succeeds, for at
# most $WAIT seconds.
wait_for() {
  local what=$1 deadline=$((SECONDS + WAIT))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what: not within ${WAIT}s"
    sleep 1
  done
}

# Every container of the project up and healthy; those without a health check
# running, and one-shot containers exited with 0.
all_healthy() {
  local ids id state
  ids=$(compose ps -q)
  [ -n "$ids" ] || return 1
  for id in $ids; do
    state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' "$id")
    case "$state" in
      "running healthy "* | "running none "* | "exited none 0") ;;
      *) return 1 ;;
    esac
  done
}

# post PORT PATH BODY: prints "STATUS X-CACHE" of the request.
post() {
  local headers status
  headers=$(mktemp)
  status=$(curl -sS -o /dev/null -D "$headers" -w '%{http_code}' --max-time 15 \
    -H 'content-type: application/json' -d "$3" "http://127.0.0.1:$1$2")
  echo "$status $(awk -F': ' 'tolower($1) == "x-cache" { gsub(/\r/, "", $2); print $2 }' "$headers")"
  rm -f "$headers"
}

expect_post() {
  local got
  got=$(post "$1" "$2" "$3")
  [ "$got" = "$4" ] || fail "POST $2 $3 on :$1 answered '$got', expected '$4'"
}

# serving_workers PORT MODEL COUNT: whether the gateway's /v1/models counts
# COUNT workers serving MODEL.
serving_workers() {
  curl -sS --max-time 5 "http://127.0.0.1:$1/v1/models" | python3 -c '
import json, sys
models = {m["name"]: m for m in json.load(sys.stdin).get("models", [])}
sys.exit(models.get(sys.argv[1], {}).get("workers") != int(sys.argv[2]))' "$2" "$3"
}

# worker_targets_up PORT COUNT: whether Prometheus has COUNT worker targets up.
worker_targets_up() {
  curl -sS --max-time 5 "http://127.0.0.1:$1/api/v1/targets" | python3 -c '
import json, sys
targets = json.load(sys.stdin)["data"]["activeTargets"]
up = sum(1 for t in targets if t["labels"].get("job") == "workers" and t["health"] == "up")
sys.exit(up != int(sys.argv[1]))' "$2"
}

# load PORT... : requests on each port in turn until the file $stop_load
# exists, each input one of 20; prints one status per request.
load() {
  local i=0
  until [ -e "$stop_load" ]; do
    for port in "$@"; do
      curl -sS -o /dev/null -w '%{http_code}\n' --max-time 15 -H 'content-type: application/json' \
        -d "{\"product_id\":\"LOAD/$((i % 20))\"}" "http://127.0.0.1:$port/predict" || echo failed
      i=$((i + 1))
    done
  done
}

# --- the main file -------------------------------------------------------------
ensure_docker
ensure_base_images
lap setup

export GATEWAY_HOST_PORT NATS_HOST_PORT PROMETHEUS_HOST_PORT GRAFANA_HOST_PORT GATEWAY_2_HOST_PORT
GATEWAY_HOST_PORT=$(free_port)
NATS_HOST_PORT=$(free_port)
PROMETHEUS_HOST_PORT=$(free_port)
GRAFANA_HOST_PORT=$(free_port)
GATEWAY_2_HOST_PORT=$(free_port)
gateway=$GATEWAY_HOST_PORT

file=docker-compose.yml
down
say "building the images"
compose build >/dev/null
lap build
for image in prediction-gateway prediction-worker; do
  timings+=("$image $(docker image inspect -f '{{.Size}}' "$image:latest" | awk '{printf "%d", $1 / 1e6}')MB")
done

say "starting $file (all but Grafana)"
compose up -d nats redis gateway worker prometheus >/dev/null 2>&1
wait_for "every container of $file healthy" all_healthy
lap healthy

expect_post "$gateway" /predict '{"product_id":"ETH/EUR"}' "200 MISS"
expect_post "$gateway" /predict '{"product_id":"ETH/EUR"}' "200 HIT"
features='{"features":[100,101,102,103,104,105,106,107,108,109]}'
expect_post "$gateway" /v1/models/price-mlp/predict "$features" "200 MISS"
expect_post "$gateway" /v1/models/price-mlp/predict "$features" "200 HIT"
say "MISS then HIT through /predict and through the ONNX model price-mlp"

compose up -d --no-recreate --scale worker=4 worker >/dev/null 2>&1
wait_for "4 workers in /v1/models" serving_workers "$gateway" price 4
lap scaled
wait_for "4 workers up in Prometheus's targets" worker_targets_up "$PROMETHEUS_HOST_PORT" 4
lap scraped
say "--scale worker=4: in /v1/models and in Prometheus's targets"

# Twenty misses in flight (the price model takes a second) and one worker
# stopped while it holds some of them: it finishes what it holds, the others
# the rest. (Another twenty when it happens to hold none.)
in_flight=$(mktemp -d)
stopped=$(compose ps -q worker | head -1)
batches=0 held=0 requests=()
until ((held > 0)); do
  ((batches < 5)) || fail "the worker to stop was sent none of $((batches * 20)) requests"
  batches=$((batches + 1))
  for i in $(seq 1 20); do
    post "$gateway" /predict "{\"product_id\":\"STOP/$batches/$i\"}" > "$in_flight/$batches-$i" &
    requests+=($!)
  done
  sleep 0.2
  held=$(docker exec "$stopped" curl -sS --max-time 2 http://127.0.0.1:9100/metrics \
    | awk '/^worker_requests_in_flight\{model="price"\}/ { print $2 }')
  held=${held:-0}
done
stop_started=$(date +%s%N)
docker stop -t 30 "$stopped" >/dev/null
stop_ms=$((($(date +%s%N) - stop_started) / 1000000))
wait "${requests[@]}"
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$stopped")
[ "$exit_code" = 0 ] || fail "the stopped worker exited with $exit_code"
((stop_ms < 30000)) || fail "the stopped worker took ${stop_ms} ms, its whole grace period"
sent=$((batches * 20))
answered=$(cat "$in_flight"/* | grep -c '^200 MISS$' || true)
rm -rf "$in_flight"
[ "$answered" = "$sent" ] || fail "$answered of $sent requests in flight answered while a worker stopped"
# What it still held when SIGTERM came, in its words.
finishing=$(docker logs "$stopped" 2>&1 | grep -o '"in_flight":[0-9]*' | tail -1 | cut -d: -f2)
timings+=("worker-stop ${stop_ms}ms finishing ${finishing:-?}")
say "a worker holding $held requests stopped in ${stop_ms} ms (exit 0), finishing ${finishing:-?} after SIGTERM: all $sent answered"

status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$gateway/readyz")
[ "$status" = 200 ] || fail "/readyz answered $status"
down
lap main-file

# --- the cluster file ------------------------------------------------------------
file=docker-compose.cluster.yml
down
say "starting $file"
compose up -d >/dev/null 2>&1
wait_for "every container of $file healthy" all_healthy
lap cluster-healthy
expect_post "$GATEWAY_HOST_PORT" /predict '{"product_id":"ETH/EUR"}' "200 MISS"
expect_post "$GATEWAY_2_HOST_PORT" /predict '{"product_id":"ETH/EUR"}' "200 HIT"
say "a MISS through gateway-1, then a HIT through gateway-2"

redis_1=$(compose ps -q redis-1)
docker exec "$redis_1" redis-cli role | head -1 | grep -qx master || fail "redis-1 is not a master"
# Twenty inputs cached (on every master), then four clients asking for them
# through both gateways while redis-1 is killed and its replica takes over
# (the node timeout is 5 s).
warming=()
for i in $(seq 0 19); do
  post "$GATEWAY_HOST_PORT" /predict "{\"product_id\":\"LOAD/$i\"}" >/dev/null &
  warming+=($!)
done
wait "${warming[@]}"
stop_load=$(mktemp -u)
statuses=$(mktemp -d)
loaders=()
for client in 1 2 3 4; do
  load "$GATEWAY_HOST_PORT" "$GATEWAY_2_HOST_PORT" > "$statuses/$client" &
  loaders+=($!)
done
sleep 3
compose kill redis-1 >/dev/null 2>&1
sleep 12
touch "$stop_load"
wait "${loaders[@]}"
total=$(cat "$statuses"/* | wc -l)
failed=$(cat "$statuses"/* | grep -cv '^200$' || true)
rm -rf "$statuses" "$stop_load"
((total > 0)) || fail "no request was sent while redis-1 was killed"
[ "$failed" = 0 ] || fail "$failed of $total requests failed while a Redis master was killed"
timings+=("redis-master-killed ${total}-requests-0-failed")
say "a Redis master killed under load: $total requests, none failed"
down
lap cluster-file
