# Multi-stage build: one builder, two small runtime images (targets `gateway`
# and `worker`). docker-compose.yml builds both.
#
# The builder compiles the dependencies in a layer of their own, from the
# workspace's manifests alone, so a change to a source file rebuilds only this
# workspace's crates, and a change elsewhere (docs, deploy/, models/) none.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Release binaries without symbols: the worker's is a quarter smaller.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/
COPY runtime/Cargo.toml runtime/
COPY gateway/Cargo.toml gateway/
COPY worker/Cargo.toml worker/
COPY test-support/Cargo.toml test-support/
COPY e2e/Cargo.toml e2e/
COPY bench/Cargo.toml bench/
# Every target of the manifests as a stub, then every dependency of the two
# binaries (pinned by the lock file); then the stubs of the crates copied
# below go (the other members keep theirs: the workspace names them).
COPY scripts/stub-workspace.sh /usr/local/bin/
RUN stub-workspace.sh > /tmp/stubs \
    && cargo build --release --locked --bin gateway --bin worker \
    && grep -E '^(shared|runtime|gateway|worker)/' /tmp/stubs | xargs rm
# The sources of the crates the two binaries are made of. Touched, because
# their files keep the build context's times, which may be older than the
# stubs' and would leave the stubs' build looking current.
COPY shared shared
COPY runtime runtime
COPY gateway gateway
COPY worker worker
RUN find shared runtime gateway worker -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin gateway --bin worker \
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
