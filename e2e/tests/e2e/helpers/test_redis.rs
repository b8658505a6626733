//! A test's own Redis, however deployed, and the macro that runs a test body
//! in every mode.

use test_support::{RedisAccess, RedisCluster, RedisSentinels, RedisServer, SENTINEL_MASTER_NAME};

/// How a test's Redis is deployed; the gateway's `--redis-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    Standalone,
    Cluster,
    Sentinel,
}

/// A test's own Redis, however deployed.
pub enum TestRedis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
    Sentinel(RedisSentinels),
}

impl TestRedis {
    pub fn start(mode: RedisMode) -> Self {
        Self::start_with(mode, RedisAccess::default())
    }

    /// One that only `access` lets in.
    pub fn start_with(mode: RedisMode, access: RedisAccess) -> Self {
        match mode {
            RedisMode::Standalone => Self::Standalone(RedisServer::start_with_access(access)),
            RedisMode::Cluster => Self::Cluster(RedisCluster::start_with(access)),
            RedisMode::Sentinel => Self::Sentinel(RedisSentinels::start_with(access)),
        }
    }

    /// The gateway's flags that point it at this Redis.
    pub fn gateway_args(&self) -> Vec<String> {
        let url = match self {
            Self::Standalone(server) => server.url(),
            Self::Cluster(cluster) => cluster.urls(),
            Self::Sentinel(sentinels) => sentinels.urls(),
        };
        self.gateway_args_with_url(url)
    }

    /// The same flags with a wrong password in the URL.
    pub fn gateway_args_with_password(&self, password: &str) -> Vec<String> {
        let url = match self {
            Self::Standalone(server) => server.url_with_password(password),
            Self::Cluster(cluster) => cluster.urls_with_password(password),
            Self::Sentinel(sentinels) => sentinels.urls_with_password(password),
        };
        self.gateway_args_with_url(url)
    }

    fn gateway_args_with_url(&self, url: String) -> Vec<String> {
        let (mode, tls_ca) = match self {
            Self::Standalone(server) => ("standalone", server.tls_ca()),
            Self::Cluster(cluster) => ("cluster", cluster.tls_ca()),
            Self::Sentinel(sentinels) => ("sentinel", sentinels.tls_ca()),
        };
        let mut args = vec![
            "--redis-mode".to_owned(),
            mode.to_owned(),
            "--redis-url".to_owned(),
            url,
        ];
        if let Some(ca) = tls_ca {
            args.extend(["--redis-tls-ca".to_owned(), ca.to_owned()]);
        }
        if matches!(self, Self::Sentinel(_)) {
            args.extend([
                "--redis-sentinel-master".to_owned(),
                SENTINEL_MASTER_NAME.to_owned(),
            ]);
        }
        args
    }

    fn standalone(&mut self) -> &mut RedisServer {
        match self {
            Self::Standalone(server) => server,
            _ => panic!("this test stops and starts a standalone Redis"),
        }
    }

    /// The URL of a standalone server.
    pub fn url(&self) -> String {
        match self {
            Self::Standalone(server) => server.url(),
            _ => panic!("this test reads a standalone Redis"),
        }
    }

    pub fn stop(&mut self) {
        self.standalone().stop();
    }

    pub fn restart(&mut self) {
        self.standalone().restart();
    }
}

/// Runs a test body once per Redis mode: `in_every_redis_mode!(name);` makes a
/// module `name` with a test `standalone`, `cluster` and `sentinel`, each calling
/// `name(mode)`.
#[macro_export]
macro_rules! in_every_redis_mode {
    ($body:ident) => {
        mod $body {
            use $crate::helpers::RedisMode;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$body(RedisMode::Standalone).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$body(RedisMode::Cluster).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sentinel() {
                super::$body(RedisMode::Sentinel).await;
            }
        }
    };
}
