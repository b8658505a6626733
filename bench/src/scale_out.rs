//! Scale-out: 1, 2 and 4 workers of the stand-in at 100 ms, one prediction at a
//! time each, through one gateway; and 4 again with the workers' backlog
//! redirects off, to show in the same run what they are worth. On a system of
//! their own.

use std::time::Duration;

use test_support::{NatsServer, RedisServer};

use crate::load::{self, Load};
use crate::report::{Row, row_from};
use crate::settings::Run;
use crate::stack;
use crate::traffic::{check_clean, redirected_requests};

/// How long each scale-out run lasts: long enough for a few hundred 100 ms
/// calls per worker count.
pub fn scale_seconds(run: &Run) -> Duration {
    (run.seconds * 2).max(Duration::from_secs(10))
}

pub async fn rows(run: &Run) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let scale_nats = NatsServer::start();
    let scale_redis = RedisServer::start();
    let (_scale_gateway, scale_port) = stack::gateway(
        &scale_nats.url(),
        &scale_redis.url(),
        &["--request-timeout", "30s"],
    )
    .await?;
    // Long enough for a few hundred 100 ms calls per worker count.
    let scale_seconds = scale_seconds(run);
    let mut one_worker = None;
    let mut scale_workers = Vec::new();
    // The last run turns the workers' backlog redirects off (a request then waits
    // wherever NATS delivers it), to show in the same run what they are worth.
    let runs = [(1usize, true), (2, true), (4, true), (4, false)];
    for (count, redirects) in runs {
        if !redirects {
            scale_workers.clear();
        }
        while scale_workers.len() < count {
            let mut args = vec!["--latency-ms", "100", "--concurrency", "1"];
            if !redirects {
                args.extend(["--redirect-backlog", "256"]);
            }
            scale_workers.push(stack::worker(&scale_nats.url(), &args).await?);
        }
        // Let the gateway's model directory see the new workers.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let variant = if redirects { "" } else { ", redirects off" };
        run.say(&format!(
            "scale-out: {count} worker(s){variant}, model at 100 ms"
        ));
        let redirected_before = redirected_requests(scale_port).await?;
        let measured = load::run(
            scale_port,
            &Load {
                connections: 16,
                duration: scale_seconds,
                threads: 1,
                prepared: false,
                path: format!(
                    r#""/v1/models/price/predict?product_id=W{}-{count}-{redirects}-" .. n"#,
                    run.id
                ),
                count_server_errors: false,
                cpus: None,
                body: None,
            },
        )?;
        check_clean("scale-out", &measured)?;
        let redirected = redirected_requests(scale_port).await? - redirected_before;
        let label = format!("scale-out: {count} worker(s) × concurrency 1, 100 ms model{variant}");
        let mut row = match &one_worker {
            None => row_from(&label, &measured, 16, None, ("", None)),
            Some(base) => row_from(
                &label,
                &measured,
                16,
                Some(("1 worker", base)),
                if count == 4 && redirects {
                    ("≥ 3.6×", Some(3.6))
                } else {
                    ("", None)
                },
            ),
        };
        // Approximate: the requests still in flight at the end were redirected too.
        row.load = format!(
            "16 conns; ~{:.1} redirects per request",
            redirected / measured.requests.max(1) as f64
        );
        rows.push(row);
        if one_worker.is_none() {
            one_worker = Some(measured);
        }
    }

    Ok(rows)
}
