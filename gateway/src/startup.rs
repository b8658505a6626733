//! Building and running the gateway.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use prediction_runtime::telemetry::redact_url;
use tokio::net::TcpListener;
use tracing::info;

use crate::auth::Tokens;
use crate::cache::PredictionCache;
use crate::config::GatewayConfig;
use crate::discovery::ModelDirectory;
use crate::metrics::Metrics;
use crate::model_call::ModelCaller;
use crate::nats::Nats;
use crate::prediction::Predictor;
use crate::purge;
use crate::request_log::RequestLog;
use crate::routes::Routes;
use crate::routes::memo::BodyMemo;
use crate::routes::oip::OIP_REQUESTS_BYTES;
use crate::routes::openai::ReadRequests;
use crate::state::App;
use prediction_runtime::http_server::{self as server, ConnectionLimits};

/// A gateway with its listener bound and its clients created, ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    service: RequestLog<Routes>,
    local_addr: SocketAddr,
    limits: ConnectionLimits,
    metrics: Metrics,
}

impl Application {
    /// Binds the listener (port 0 picks a free one) and connects to NATS and Redis.
    /// Neither being down stops the gateway from starting: it reconnects to both by
    /// itself and `/readyz` says what is missing meanwhile. A setting that cannot
    /// work (an empty token, an unreadable token file, a Redis of another kind
    /// than `--redis-mode` says) stops it with a message.
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        let tokens = Tokens::load((&config).into())?;
        let nats = Nats::connect(&config.nats).await?;
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
            nats.clone(),
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
            metrics: metrics.clone(),
            settings: (&config).into(),
            openai_requests: ReadRequests::default(),
            oip_requests: BodyMemo::new(OIP_REQUESTS_BYTES),
        });
        // The request log wraps the routes whole, once: not a layer on each
        // route, cloned with it for every request.
        let service = RequestLog::new(Routes::new(Arc::clone(&state), tokens), state);

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the HTTP listener to {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let limits = ConnectionLimits::from(&config);
        info!(
            listen = %local_addr,
            nats = %config.nats.redacted_url(),
            redis = %redis_url,
            cache_ttl = ?config.cache_ttl,
            request_timeout = ?config.request_timeout,
            max_connections = limits.max_connections,
            "gateway ready"
        );
        Ok(Self {
            listener,
            service,
            local_addr,
            limits,
            metrics,
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
        self.run(prediction_runtime::shutdown::shutdown_signal())
            .await
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        server::serve(
            self.listener,
            self.service,
            self.limits,
            Some(self.metrics.connections()),
            shutdown,
        )
        .await;
        info!("gateway stopped");
        Ok(())
    }
}
