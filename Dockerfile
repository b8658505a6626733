# Multi-stage build: one builder, two small runtime images (targets `gateway`
# and `worker`). docker-compose.yml builds both.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The workspace's lock file pins every dependency; only the two binaries are built.
RUN cargo build --release --locked --bin gateway --bin worker \
    && mkdir -p /out && cp target/release/gateway target/release/worker /out/

FROM debian:bookworm-slim AS runtime
# curl serves the gateway's health check; ca-certificates the tls:// and rediss:// URLs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home app
USER app

FROM runtime AS gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
ENV GATEWAY_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/gateway"]

FROM runtime AS worker
COPY --from=build /out/worker /usr/local/bin/worker
# The example ONNX models; serve them with WORKER_MODEL_CONFIG=/models/models.toml,
# or mount a directory of your own over /models.
COPY models/models.toml models/*.onnx /models/
ENV WORKER_ID_FILE=/tmp/worker.id
HEALTHCHECK --interval=5s --timeout=3s --retries=5 \
    CMD ["/usr/local/bin/worker", "--health-check"]
ENTRYPOINT ["/usr/local/bin/worker"]
