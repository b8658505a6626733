//! Building and running the gateway.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prediction_contract::nats_connection::connection_name;
use prediction_contract::telemetry::redact_url;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::{debug, info, warn};

use crate::cache::PredictionCache;
use crate::config::GatewayConfig;
use crate::discovery::ModelDirectory;
use crate::metrics::Metrics;
use crate::model_call::ModelCaller;
use crate::model_client::ModelClient;
use crate::prediction::Predictor;
use crate::purge;
use crate::request_log::log_request;
use crate::routes::router;
use crate::state::App;

/// How long startup waits for the first NATS connection before serving anyway
/// (from the cache) and connecting in the background.
const NATS_STARTUP_WAIT: Duration = Duration::from_secs(2);

/// The most a request line and headers may take (hyper answers 431 past it): room
/// for long tokens and query strings, not for abuse.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long shutdown waits for in-flight requests before closing what is left.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A gateway with its listener bound and its clients created, ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    local_addr: SocketAddr,
    /// See [`GatewayConfig::client_timeout`].
    client_timeout: Duration,
}

impl Application {
    /// Binds the listener (port 0 picks a free one) and connects to NATS and Redis.
    /// Neither being down stops the gateway from starting: it reconnects to both by
    /// itself and `/readyz` says what is missing meanwhile.
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        let nats_url = config.nats.redacted_url();
        let (nats_options, nats_servers) = config.nats.connect_options().await?;
        let known_servers = nats_servers.len();
        let nats = nats_options
            .name(connection_name("gateway"))
            .retry_on_initial_connect()
            .event_callback(|event| async move { info!(%event, "NATS connection event") })
            .connect(nats_servers.as_slice())
            .await
            .with_context(|| format!("connecting to NATS at {nats_url}"))?;
        if tokio::time::timeout(NATS_STARTUP_WAIT, nats.flush())
            .await
            .is_err()
        {
            warn!(nats = %nats_url, "NATS not reachable yet; serving from the cache and retrying");
        }

        let redis_url = redact_url(&config.redis_url);
        let metrics = Metrics::new();
        let cache = PredictionCache::new(
            &(&config).into(),
            &(&config).into(),
            metrics.redis_errors.clone(),
        )
        .await
        .with_context(|| format!("configuring Redis at {redis_url}"))?;
        let directory = ModelDirectory::new(nats.clone(), config.discovery_interval);
        let models = ModelCaller::new(
            ModelClient::new(nats.clone(), known_servers),
            Arc::clone(&directory),
            metrics.clone(),
            (&config).into(),
        );
        let predictor = Predictor::new(
            cache.clone(),
            models,
            Arc::clone(&directory),
            nats.clone(),
            metrics.clone(),
            config.request_timeout,
        );
        purge::listen(&nats, cache.clone())
            .await
            .context("subscribing to purge broadcasts")?;

        let state = Arc::new(App {
            predictor,
            directory,
            cache,
            nats,
            metrics,
            settings: (&config).into(),
        });
        let router = router(Arc::clone(&state), (&config).into())
            .layer(DefaultBodyLimit::max(config.max_body))
            .layer(RequestBodyTimeoutLayer::new(config.client_timeout))
            .layer(axum::middleware::from_fn_with_state(state, log_request))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the HTTP listener to {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        info!(
            listen = %local_addr,
            nats = %nats_url,
            redis = %redis_url,
            cache_ttl = ?config.cache_ttl,
            request_timeout = ?config.request_timeout,
            "gateway ready"
        );
        Ok(Self {
            listener,
            router,
            local_addr,
            client_timeout: config.client_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Serves until Ctrl-C or SIGTERM, then finishes the requests in flight.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run(prediction_contract::shutdown::shutdown_signal())
            .await
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    ///
    /// The accept loop is hyper's own rather than `axum::serve`, which sets no
    /// timer and so no deadline for a client to send its headers.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut connections = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        connections
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.client_timeout)
            // Request line and headers together; larger ones get 431.
            .max_buf_size(MAX_HEADER_BYTES);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        // Responses are small: send them at once, not when Nagle's
                        // algorithm has waited for the previous one's ACK.
                        if let Err(err) = stream.set_nodelay(true) {
                            debug!(error = %err, "could not set TCP_NODELAY");
                        }
                        stream
                    }
                    Err(err) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        warn!(error = %err, "could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let service = TowerToHyperService::new(self.router.clone().map_request(
                |request: hyper::Request<hyper::body::Incoming>| request.map(Body::new),
            ));
            let connection = connections
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    debug!(error = %err, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        info!("stopped accepting connections; finishing the requests in flight");
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight at the end of the grace period");
        }
        info!("gateway stopped");
        Ok(())
    }
}
