#!/usr/bin/env bash
# `make run`: the whole system on this machine. Builds release binaries, makes sure
# NATS and Redis are reachable (starting or installing them when needed), starts one
# gateway and two workers, and stops everything it started on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
GATEWAY_LISTEN=${GATEWAY_LISTEN:-0.0.0.0:8080}
WORKERS=${WORKERS:-2}
# PYTHON_WORKERS=1 also starts the scikit-learn example (workers/python/examples/iris.py).
PYTHON_WORKERS=${PYTHON_WORKERS:-0}
RUN_DIR=${RUN_DIR:-$(mktemp -d -t prediction-run.XXXXXX)}
export NATS_URL REDIS_URL GATEWAY_LISTEN

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

pids=()
cleanup() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    say "stopping ${#pids[@]} processes"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  say "logs are in $RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# host:port of a nats:// or redis:// URL (credentials and path dropped).
host_port() { local rest=${1#*://}; rest=${rest##*@}; echo "${rest%%/*}"; }
reachable() { local hp; hp=$(host_port "$1"); timeout 1 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp##*:}" 2>/dev/null; }

find_bin() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }

ensure_installed() { # $1 binary, $2 Debian package
  local bin; bin=$(find_bin "$1")
  if [ -n "$bin" ]; then echo "$bin"; return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing $2 with apt-get" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    say "installing $2 with sudo apt-get" >&2
    sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
  else
    echo "error: $1 is not installed and not reachable. Install it ('sudo apt-get install $2'), or" >&2
    echo "       point ${3} at a running server, or run 'docker compose up' instead." >&2
    exit 1
  fi
  find_bin "$1"
}

say "building release binaries"
cargo build --release --locked --bin gateway --bin worker

if reachable "$NATS_URL"; then
  say "NATS is up at $(host_port "$NATS_URL")"
else
  bin=$(ensure_installed nats-server nats-server NATS_URL)
  hp=$(host_port "$NATS_URL")
  say "starting nats-server on $hp"
  "$bin" -a "${hp%:*}" -p "${hp##*:}" >"$RUN_DIR/nats.log" 2>&1 &
  pids+=($!)
fi

if reachable "$REDIS_URL"; then
  say "Redis is up at $(host_port "$REDIS_URL")"
else
  bin=$(ensure_installed redis-server redis-server REDIS_URL)
  hp=$(host_port "$REDIS_URL")
  say "starting redis-server on $hp"
  "$bin" --bind "${hp%:*}" --port "${hp##*:}" --save "" --appendonly no >"$RUN_DIR/redis.log" 2>&1 &
  pids+=($!)
fi

for _ in $(seq 50); do reachable "$NATS_URL" && reachable "$REDIS_URL" && break; sleep 0.1; done

for i in $(seq "$WORKERS"); do
  say "starting worker $i (logs: $RUN_DIR/worker-$i.log)"
  # The stand-in `price` model, the LLM stand-ins `tiny-chat` and `tiny-embed`,
  # and the example ONNX models of models/.
  WORKER_MODELS=${WORKER_MODELS:-price,tiny-chat,tiny-embed} WORKER_MODEL_CONFIG=${WORKER_MODEL_CONFIG:-models/models.toml} \
    target/release/worker >"$RUN_DIR/worker-$i.log" 2>&1 &
  pids+=($!)
done

if [ "$PYTHON_WORKERS" -gt 0 ]; then
  say "preparing the Python worker library (target/python-venv)"
  python=$(scripts/python-env.sh)
  for i in $(seq "$PYTHON_WORKERS"); do
    say "starting Python worker $i: the iris example (logs: $RUN_DIR/python-worker-$i.log)"
    (cd workers/python/examples && exec "$python" -m prediction_worker iris:worker) \
      >"$RUN_DIR/python-worker-$i.log" 2>&1 &
    pids+=($!)
  done
fi

say "starting the gateway on $GATEWAY_LISTEN (logs: $RUN_DIR/gateway.log)"
target/release/gateway >"$RUN_DIR/gateway.log" 2>&1 &
pids+=($!)
port=${GATEWAY_LISTEN##*:}
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$port/readyz" || { echo "the gateway did not become ready; see $RUN_DIR/gateway.log" >&2; exit 1; }
echo

cat <<TXT

Ready. Try (the first answer takes the model's second, the next comes from the cache):

  curl -i -X POST http://127.0.0.1:$port/predict -H 'content-type: application/json' -d '{"product_id":"ETH/EUR"}'
  curl -i 'http://127.0.0.1:$port/v1/models/price/predict?product_id=BTC/EUR'
  curl -i http://127.0.0.1:$port/v1/models/price-gbt/predict -H 'content-type: application/json' \
       -d '{"features":[2001.5,2002.1,2001.8,2003.0,2004.2,2003.9,2005.1,2006.0,2005.5,2007.3]}'
  curl -s http://127.0.0.1:$port/v1/models    # what the workers serve, with versions
  curl -N http://127.0.0.1:$port/v1/chat/completions -H 'content-type: application/json' \
       -d '{"model":"tiny-chat","messages":[{"role":"user","content":"hello"}],"seed":1,"stream":true}'   # the OpenAI API
TXT
if [ "$PYTHON_WORKERS" -gt 0 ]; then cat <<TXT
  curl -i http://127.0.0.1:$port/v1/models/iris/predict -H 'content-type: application/json' \
       -d '{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4,"petal_width":0.2}'   # the Python worker
TXT
fi
cat <<TXT
  make requests        # the original demo: 100 requests, timed

Ctrl-C stops everything this started.
TXT
wait -n "${pids[@]}" || true
echo "a process exited; stopping the rest" >&2
