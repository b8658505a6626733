//! How much a worker holds: its concurrency, its queue, its backlog redirects,
//! and every request it holds answered when it stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use serde_json::Value;
use test_support::NatsServer;

use crate::{GaugedModel, header, start_with_model};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_holds_and_requests_past_the_queue_are_refused_as_busy() {
    let nats = NatsServer::start();
    let model = GaugedModel::new();
    let (shutdown, task) = start_with_model(
        &nats,
        model.clone(),
        &["--concurrency", "3", "--queue-depth", "2"],
    )
    .await;
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(nats.url())
        .await
        .unwrap();

    let replies = futures::future::join_all((0..10).map(|i| {
        let client = client.clone();
        async move {
            client
                .request("predict.gauged", format!(r#"{{"i":{i}}}"#).into())
                .await
                .unwrap()
        }
    }))
    .await;
    let busy = replies
        .iter()
        .filter(|reply| header(reply, "Nats-Service-Error-Code") == Some("503"))
        .count();
    let answered = replies
        .iter()
        .filter(|reply| {
            reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error-Code"))
                .is_none()
        })
        .count();
    assert_eq!(
        model.most_at_once.load(Ordering::SeqCst),
        3,
        "never more than 3 at once"
    );
    assert_eq!(answered, 5, "3 running and 2 waiting were held");
    assert_eq!(busy, 5, "the rest were refused at once");
    assert_eq!(model.calls.load(Ordering::SeqCst), 5);

    let _ = shutdown.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_avoids_backlogs_is_refused_at_once_where_one_waits_and_others_wait() {
    let nats = NatsServer::start();
    let model = GaugedModel::new();
    // One at a time; by default a request may be turned away once one waits.
    let (shutdown, task) = start_with_model(&nats, model.clone(), &["--concurrency", "1"]).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut replies = client.subscribe("replies.>").await.unwrap();
    let avoid_backlog = || {
        let mut headers = HeaderMap::new();
        headers.insert("Avoid-Backlog", "1");
        headers
    };

    // Published in this order on one connection, so the worker sees them so: `a`
    // runs, `b` waits, `c` (which may go elsewhere) is refused, `d` (from a caller
    // that would not go elsewhere, like `nats req`) waits too.
    for (name, redirectable) in [("a", false), ("b", false), ("c", true), ("d", false)] {
        let payload = format!(r#"{{"i":"{name}"}}"#).into();
        let reply = format!("replies.{name}");
        if redirectable {
            client
                .publish_with_reply_and_headers("predict.gauged", reply, avoid_backlog(), payload)
                .await
                .unwrap();
        } else {
            client
                .publish_with_reply("predict.gauged", reply, payload)
                .await
                .unwrap();
        }
    }
    client.flush().await.unwrap();

    let mut order = Vec::new();
    for _ in 0..4 {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("every request is answered")
            .unwrap();
        let name = reply.subject.trim_start_matches("replies.").to_owned();
        let code = header(&reply, "Nats-Service-Error-Code").map(str::to_owned);
        if name == "c" {
            assert_eq!(code.as_deref(), Some("503"));
            let message = header(&reply, "Nats-Service-Error").unwrap();
            assert!(message.contains("try another worker"), "{message}");
        } else {
            assert_eq!(code, None, "{name} waited and was answered");
        }
        order.push(name);
    }
    assert_eq!(
        order[0], "c",
        "the refusal came before any answer: {order:?}"
    );
    assert_eq!(model.calls.load(Ordering::SeqCst), 3);

    // With nothing waiting, the same request is taken.
    let reply = client
        .request_with_headers("predict.gauged", avoid_backlog(), r#"{"i":"e"}"#.into())
        .await
        .unwrap();
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), None);

    let _ = shutdown.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_answers_every_request_it_holds_running_or_waiting() {
    stop_while_holding_requests(GaugedModel::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_finishes_the_batches_in_flight() {
    let model = GaugedModel::with_batching(true);
    stop_while_holding_requests(model.clone()).await;
    assert!(
        model.most_at_once.load(Ordering::SeqCst) > 2,
        "the requests ran in batches, beyond the two slots"
    );
}

/// Six requests of 200 ms each on a worker with two slots; the stop signal comes
/// while they run or wait. Every one must be answered, and the worker exit cleanly.
async fn stop_while_holding_requests(model: Arc<GaugedModel>) {
    let nats = NatsServer::start();
    let (shutdown, task) = start_with_model(
        &nats,
        model.clone(),
        &[
            "--concurrency",
            "2",
            "--queue-depth",
            "10",
            "--batch-window",
            "20ms",
        ],
    )
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();

    let requests = futures::future::join_all((0..6).map(|i| {
        let client = client.clone();
        async move {
            client
                .request("predict.gauged", format!(r#"{{"i":{i}}}"#).into())
                .await
        }
    }));
    let stop = async {
        // Two are running, four waiting, when the signal comes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = shutdown.send(());
    };
    let (replies, ()) = tokio::join!(requests, stop);
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply.expect("every held request is answered");
        let body: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(body["input"]["i"], i, "each request got its own answer");
    }
    task.await.unwrap().expect("the worker exits cleanly");
}
