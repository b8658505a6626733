#!/usr/bin/env bash
# `make fuzz`: a property-based fuzz of every route of the gateway with schemathesis,
# driven by the gateway's own OpenAPI document (/openapi.json). Starts its own
# nats-server, redis-server, a worker (price and echo) and a gateway on free ports.
# Fails on any status the document does not list for the route, on any response
# that does not match the document, and on any 5xx but 503 and 504 (see
# scripts/fuzz_hooks.py): the stand-in models never fail, so a 500 is a bug.
# The coverage phase is left out: it crashes inside schemathesis 4.32 on Python
# 3.11 ("AST constructor recursion depth mismatch").
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES=${FUZZ_EXAMPLES:-100}
RUN_DIR=$(mktemp -d -t prediction-fuzz.XXXXXX)
pids=()
cleanup() {
  if ((${#pids[@]})); then kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; fi
  echo "logs: $RUN_DIR"
}
trap cleanup EXIT

command -v schemathesis >/dev/null || python3 -m pip install --quiet --disable-pip-version-check schemathesis
find_bin() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

cargo build --release --locked --bin gateway --bin worker
nats_port=$(free_port); redis_port=$(free_port); http_port=$(free_port)
"$(find_bin nats-server)" -a 127.0.0.1 -p "$nats_port" >"$RUN_DIR/nats.log" 2>&1 & pids+=($!)
"$(find_bin redis-server)" --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >"$RUN_DIR/redis.log" 2>&1 & pids+=($!)
wait_port "$nats_port"; wait_port "$redis_port"
target/release/worker --nats-url "nats://127.0.0.1:$nats_port" --model price,echo --latency-ms 0 \
  >"$RUN_DIR/worker.log" 2>&1 & pids+=($!)
target/release/gateway --listen "127.0.0.1:$http_port" --nats-url "nats://127.0.0.1:$nats_port" \
  --redis-url "redis://127.0.0.1:$redis_port" --request-timeout 2s >"$RUN_DIR/gateway.log" 2>&1 & pids+=($!)
wait_port "$http_port"

PYTHONPATH=scripts SCHEMATHESIS_HOOKS=fuzz_hooks schemathesis run "http://127.0.0.1:$http_port/openapi.json" \
  --checks status_code_conformance,content_type_conformance,response_schema_conformance,no_server_error_but_unavailable \
  --max-examples "$EXAMPLES" --generation-deterministic --workers 2 \
  --phases examples,fuzzing,stateful
