//! Beyond one machine: a Redis Cluster master, a Sentinel-managed master and a
//! NATS node die under steady load through two gateways, and no request fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway::cache::CacheKey;
use prediction_contract::{CanonicalInput, ModelName};
use test_support::NatsCluster;

use crate::helpers::{
    RedisMode, StubModel, TestRedis, assert_error, header, spawn_app_in, start_gateway_on,
    start_worker,
};

/// The hot input of the load, and the model it is asked of.
const HOT: &str = r#"{"hot":true}"#;
const PATH: &str = "/v1/models/echo/predict";

/// Requests sent by [`SteadyLoad`], and those that did not get a 200.
#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    failed: AtomicUsize,
    /// Hot-key answers that came from Redis (`HIT`), by when they came.
    hits: std::sync::Mutex<Vec<Instant>>,
}

/// Hits of one hot key and misses of distinct inputs, sent without pause
/// through every gateway until stopped.
struct SteadyLoad {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SteadyLoad {
    fn start(gateways: &[String]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for (index, gateway) in gateways.iter().enumerate() {
            for lane in 0..2 {
                let (stop, tally, http) = (stop.clone(), tally.clone(), http.clone());
                let url = format!("{gateway}{PATH}");
                tasks.push(tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        // Lane 0 asks for the hot key, lane 1 for a new input each time.
                        let body = if lane == 0 {
                            HOT.to_owned()
                        } else {
                            format!(r#"{{"gateway":{index},"n":{n}}}"#)
                        };
                        tally.sent.fetch_add(1, Ordering::SeqCst);
                        match http.post(&url).body(body).send().await {
                            Ok(response) if response.status() == 200 => {
                                if lane == 0 && header(&response, "x-cache") == "HIT" {
                                    tally.hits.lock().unwrap().push(Instant::now());
                                }
                            }
                            _ => {
                                tally.failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }));
            }
        }
        Self { stop, tally, tasks }
    }

    /// Waits until a hot-key answer comes from Redis after `since`.
    async fn wait_for_hit_after(&self, since: Instant, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.tally.hits.lock().unwrap().iter().any(|at| *at > since) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Stops the load; returns (sent, failed).
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.tally.sent.load(Ordering::SeqCst),
            self.tally.failed.load(Ordering::SeqCst),
        )
    }
}

/// The Redis key of the hot input, to find the master holding it.
fn hot_key(key_prefix: &str) -> String {
    let model = ModelName::parse("echo").unwrap();
    let input = CanonicalInput::from_json_slice(HOT.as_bytes()).unwrap();
    CacheKey::new(key_prefix, &model, &input)
        .as_str()
        .to_owned()
}

// Every hit reads Redis (no in-process tier), so a hit shows Redis answering.
const GATEWAY_ARGS: &[&str] = &["--local-capacity", "0"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_cluster_master_of_a_hot_key_fails_no_request_and_hits_resume() {
    let mut app = spawn_app_in(RedisMode::Cluster, GATEWAY_ARGS).await;
    let other = app.start_another_gateway(GATEWAY_ARGS).await;
    let key = hot_key(&app.key_prefix);
    let load = SteadyLoad::start(&[app.address.clone(), other.address.clone()]);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let TestRedis::Cluster(cluster) = &mut app.redis else {
        unreachable!()
    };
    let old = cluster.master_of(&key);
    cluster.kill(old);
    let promoted_at = {
        let new = cluster.wait_for_failover(&key, old);
        assert_ne!(new, old);
        Instant::now()
    };
    let resumed = load
        .wait_for_hit_after(promoted_at, Duration::from_secs(10))
        .await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    assert!(sent > 200, "the load ran: {sent} requests");
    assert!(
        resumed,
        "hits came from Redis again after the replica took over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_fails_no_request_and_hits_resume_from_the_new_master() {
    let mut app = spawn_app_in(RedisMode::Sentinel, GATEWAY_ARGS).await;
    let other = app.start_another_gateway(GATEWAY_ARGS).await;
    let load = SteadyLoad::start(&[app.address.clone(), other.address.clone()]);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let TestRedis::Sentinel(sentinels) = &mut app.redis else {
        unreachable!()
    };
    let old = sentinels.kill_master();
    let new = sentinels.wait_for_failover(old);
    assert_ne!(new, old);
    let promoted_at = Instant::now();
    let resumed = load
        .wait_for_hit_after(promoted_at, Duration::from_secs(10))
        .await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    assert!(sent > 200, "the load ran: {sent} requests");
    assert!(resumed, "hits came from the promoted master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_in_a_cluster_reaches_the_entries_on_every_master() {
    let app = spawn_app_in(RedisMode::Cluster, &[]).await;
    for n in 0..30 {
        let response = app.post(PATH, &format!(r#"{{"n":{n}}}"#)).await;
        assert_eq!(response.status(), 200);
    }
    let TestRedis::Cluster(cluster) = &app.redis else {
        unreachable!()
    };
    let masters: std::collections::HashSet<u16> = (0..30)
        .map(|n| {
            let model = ModelName::parse("echo").unwrap();
            let input =
                CanonicalInput::from_json_slice(format!(r#"{{"n":{n}}}"#).as_bytes()).unwrap();
            cluster.master_of(CacheKey::new(&app.key_prefix, &model, &input).as_str())
        })
        .collect();
    assert_eq!(masters.len(), 3, "the 30 entries spread over the 3 masters");

    let purged: serde_json::Value = app
        .http
        .delete(app.url("/v1/models/echo/cache"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged["purged"], 30, "{purged}");
    let again = app.post(PATH, r#"{"n":7}"#).await;
    assert_eq!(header(&again, "x-cache"), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_nats_node_of_the_gateway_fails_no_request() {
    let mut nats = NatsCluster::start();
    let redis = TestRedis::start(RedisMode::Standalone);
    // Workers on two different nodes, one of them the gateway's below.
    let echo = StubModel::new("echo");
    let _workers = [
        start_worker(&nats.url(0), vec![echo.clone()]).await,
        start_worker(&nats.url(1), vec![echo.clone()]).await,
    ];
    let (first, _stop_first) = start_gateway_on(&nats.urls(), &redis, "nats-failover:", &[]).await;
    let (second, _stop_second) =
        start_gateway_on(&nats.urls(), &redis, "nats-failover:", &[]).await;
    let warm = reqwest::get(format!("{first}/healthz")).await.unwrap();
    assert_eq!(warm.status(), 200);
    // Wait until the workers are seen, then find a node a gateway is on.
    let node = wait_for(|| (0..3).find(|&i| has_client(&nats, i, "gateway@"))).await;
    let load = SteadyLoad::start(&[first.clone(), second.clone()]);
    tokio::time::sleep(Duration::from_secs(1)).await;

    nats.kill(node);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    assert!(sent > 200, "the load ran: {sent} requests");
    // Every gateway and worker is connected to a live node again.
    let live: Vec<usize> = (0..3).filter(|&i| i != node).collect();
    let names: Vec<String> = live
        .iter()
        .flat_map(|&i| nats.connection_names(i))
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("gateway@")).count(),
        2,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| n.starts_with("worker@")).count(),
        2,
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_nats_node_gone_a_miss_fails_fast_with_nats_unavailable() {
    let mut nats = NatsCluster::start();
    let redis = TestRedis::start(RedisMode::Standalone);
    let _worker = start_worker(&nats.url(0), vec![StubModel::new("echo")]).await;
    let (gateway, _stop) = start_gateway_on(
        &nats.urls(),
        &redis,
        "nats-gone:",
        &["--request-timeout", "20s"],
    )
    .await;
    let http = reqwest::Client::new();
    let first = http
        .post(format!("{gateway}{PATH}"))
        .body(r#"{"before":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    for node in 0..3 {
        nats.kill(node);
    }
    let refused = http
        .post(format!("{gateway}{PATH}"))
        .body(r#"{"after":1}"#)
        .send()
        .await
        .unwrap();
    // Not 504 after the 20 s deadline: the wait for a reconnect is bounded.
    assert_error(refused, 503, "nats_unavailable").await;
}

fn has_client(nats: &NatsCluster, node: usize, prefix: &str) -> bool {
    nats.connection_names(node)
        .iter()
        .any(|name| name.starts_with(prefix))
}

async fn wait_for<T>(mut found: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(value) = found() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not found within 10 s");
}
