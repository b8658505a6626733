# One entry point for everything: `make help` lists the targets.
.PHONY: help run test test-deps python-worker-test requests build lint fmt compose-check compose-test bench bench-micro bench-model models python-models fuzz soak audit callgrind

help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: ## build and run the whole system locally (NATS, Redis, 1 gateway on :8080, 2 workers)
	scripts/run-local.sh

test: test-deps ## the whole test suite (starts its own nats-server and redis-server)
	PREDICTION_WORKER_PYTHON="$$(scripts/python-env.sh)" cargo test --workspace --locked
	"$$(scripts/python-env.sh)" -m pytest -q workers/python
	"$$(scripts/python-env.sh)" -m pytest -q e2e/tests/clients
	scripts/check-compose.sh
	scripts/check-docs.py

test-deps: ## the independent NATS client the tests use and the manifests' checker's YAML parser (from PyPI)
	@python3 -c 'import nats, yaml' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check nats-py pyyaml

compose-test: ## docker-compose.yml and docker-compose.cluster.yml run for real: built, started, scaled, a worker and a Redis master stopped, then `down -v` (needs root or a running Docker daemon; 45 min at most)
	timeout --foreground 2700 scripts/compose-test.sh

python-worker-test: ## the Python worker library's own tests (pytest, against a real nats-server)
	"$$(scripts/python-env.sh)" -m pytest -q workers/python

requests: ## the original demo: 100 timed requests against a running gateway
	scripts/requests.sh

build: ## release binaries in target/release
	cargo build --release --locked --bin gateway --bin worker

lint: ## formatting and clippy, as CI would want them; ruff and mypy --strict on the Python library
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	"$$(scripts/python-env.sh)" -m ruff check workers/python e2e/tests/python e2e/tests/clients
	"$$(scripts/python-env.sh)" -m ruff format --check workers/python e2e/tests/clients
	"$$(scripts/python-env.sh)" -m mypy --strict workers/python/src

fmt: ## format the code
	cargo fmt --all

bench: bench-model ## load benchmarks against same-run baselines (wrk; nginx for its row); writes bench/results.md and bench/latency.svg
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || { echo "install wrk: apt-get install wrk" >&2; exit 1; }
	@[ -x /usr/sbin/nginx ] || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq nginx-light; } || { echo "install nginx: apt-get install nginx-light" >&2; exit 1; }
	cargo build --release --locked --bin gateway --bin worker --bin bench
	ulimit -n 65536 2>/dev/null; target/release/bench

soak: ## 10 minutes of mixed load (SOAK_MINUTES to change); memory reported along the way
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || { echo "install wrk: apt-get install wrk" >&2; exit 1; }
	cargo build --release --locked --bin gateway --bin worker --bin bench
	target/release/bench soak

callgrind: ## the gateway's instructions per request (/healthz, hot-key hit, Redis-only hit, miss), counted by callgrind
	@command -v valgrind >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq valgrind; } || { echo "install valgrind: apt-get install valgrind" >&2; exit 1; }
	cargo build --release --locked --bin gateway --bin worker --bin bench
	target/release/bench callgrind

bench-micro: ## criterion micro-benchmarks of the hot pure functions and of ONNX inference
	cargo bench --locked -p prediction-contract -p gateway -p worker

bench-model: ## the bench-only models (models/bench: a large MLP, a 784-input one), trained once
	@[ -f models/bench/bench-mlp.onnx ] && [ -f models/bench/bench-784.onnx ] || { $(MAKE) --no-print-directory python-models && python3 models/train.py --bench-only; }

models: python-models ## retrain the example ONNX models and their onnxruntime reference outputs
	python3 models/train.py

python-models:
	@python3 -c 'import skl2onnx, onnxruntime, sklearn' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check -r models/requirements.txt

fuzz: ## schemathesis against every route, from the gateway's own /openapi.json (pip-installs schemathesis)
	scripts/fuzz.sh

audit: ## licenses, banned crates and sources of every dependency (cargo-deny, installed if missing)
	@command -v cargo-deny >/dev/null || cargo install cargo-deny --locked
	cargo deny check licenses bans sources

compose-check: ## validate the compose files, the Dockerfile and deploy/ (Prometheus, Grafana, Kubernetes) offline
	cargo build --locked --bin gateway --bin worker
	scripts/check-compose.sh
