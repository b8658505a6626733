//! The OpenAI API, served by the built-in `tiny-chat` (20 ms a token): a
//! cached, non-streamed chat answer against `/healthz`; a cached streamed
//! answer's time to first byte at one request at a time, against `/healthz`'s
//! measured the same way; and 100 identical streams at once, which must make
//! one generation and give every client the same chunks, against one stream
//! alone.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::future::join_all;
use serde_json::Value;

use crate::load::{self, Load, RequestBody};
use crate::report::{Row, paired_row, percentile};
use crate::settings::Run;
use crate::stack::{self, Process, System};
use crate::traffic::check_clean;

/// The cached chat request of the throughput and time-to-first-byte rows.
const CACHED_CHAT: &str = r#"{"model":"tiny-chat","messages":[{"role":"user","content":"What is the price of ETH in EUR?"}],"seed":1}"#;
/// Sequential requests whose first byte is timed.
const FIRST_BYTE_SAMPLES: usize = 2_000;
/// Identical streams at once.
const STREAMS: usize = 100;

pub async fn rows(run: &Run, system: &System) -> anyhow::Result<Vec<Row>> {
    let port = system.port;
    let _worker = tiny_chat_worker(system).await?;
    let http = reqwest::Client::new();
    let chat_url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    post(&http, &chat_url, CACHED_CHAT).await?;
    let mut rows = Vec::new();

    run.say("OpenAI chat, cached, not streamed, alternating with GET /healthz");
    let chat = Load {
        body: Some(RequestBody::new(
            "cached-chat",
            CACHED_CHAT.as_bytes(),
            "application/json",
            &[],
        )?),
        ..run.round_load(r#""/v1/chat/completions""#)
    };
    let cached = load::interleaved(
        port,
        &run.round_load(r#""/healthz""#),
        |_| chat.clone(),
        run.rounds,
    )?;
    check_clean("cached chat", &cached.scenario)?;
    rows.push(paired_row(
        "OpenAI chat, cached, not streamed",
        &cached,
        run.connections,
        Some(("≥ 0.7×", 0.7)),
    ));

    run.say("OpenAI chat, cached, streamed: time to first byte, one request at a time");
    let streamed = CACHED_CHAT.replace(r#""seed":1"#, r#""seed":1,"stream":true"#);
    let healthz = first_bytes(|| http.get(format!("http://127.0.0.1:{port}/healthz"))).await?;
    let stream = first_bytes(|| {
        http.post(&chat_url)
            .header("content-type", "application/json")
            .body(streamed.clone())
    })
    .await?;
    rows.push(Row {
        scenario: "OpenAI chat, cached, streamed: time to first byte".into(),
        load: "1 client".into(),
        throughput: None,
        latency_ms: Some(stream),
        baseline: format!("GET /healthz first byte p50 {:.3} ms", healthz[0]),
        ratio: None,
        goal: "p50 < 1 ms".into(),
        met: Some(stream[0] < 1.0),
    });

    run.say("100 identical OpenAI chat streams at once, against one stream alone");
    rows.push(identical_streams(&http, port, run.id).await?);
    Ok(rows)
}

/// A worker serving `tiny-chat` at 20 ms a token, once the gateway sees it.
async fn tiny_chat_worker(system: &System) -> anyhow::Result<Process> {
    let worker = stack::worker(
        &system.nats.url(),
        &["--model", "tiny-chat", "--token-interval-ms", "20"],
    )
    .await?;
    let url = format!("http://127.0.0.1:{}/v1/models", system.port);
    for _ in 0..100 {
        let listed: Value = reqwest::get(&url).await?.json().await?;
        if listed["data"]
            .as_array()
            .is_some_and(|models| models.iter().any(|m| m["id"] == "tiny-chat"))
        {
            return Ok(worker);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the gateway never listed tiny-chat")
}

async fn post(http: &reqwest::Client, url: &str, body: &str) -> anyhow::Result<String> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(response.text().await?)
}

/// Percentiles (p50, p90, p99, max, in ms) of the time from sending a request
/// to its body's first bytes, over one kept-alive connection.
async fn first_bytes(request: impl Fn() -> reqwest::RequestBuilder) -> anyhow::Result<[f64; 4]> {
    let mut samples = Vec::with_capacity(FIRST_BYTE_SAMPLES);
    for _ in 0..FIRST_BYTE_SAMPLES {
        let started = Instant::now();
        let mut response = request().send().await?;
        response.chunk().await?.context("a body")?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        while response.chunk().await?.is_some() {}
    }
    samples.sort_by(f64::total_cmp);
    Ok([
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        *samples.last().unwrap_or(&0.0),
    ])
}

/// The content of a streamed answer: its deltas' text, in order.
fn streamed_text(body: &str) -> String {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// `tiny-chat`'s model calls so far, from the gateway's metrics.
async fn generations(port: u16) -> anyhow::Result<f64> {
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    Ok(metrics
        .lines()
        .filter(|line| {
            line.starts_with("gateway_model_calls_total{") && line.contains(r#"model="tiny-chat""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn identical_streams(http: &reqwest::Client, port: u16, run_id: u128) -> anyhow::Result<Row> {
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let request = |tag: &str| {
        format!(
            r#"{{"model":"tiny-chat","messages":[{{"role":"user","content":"{tag} {run_id} tell me about caches and streams"}}],"seed":1,"stream":true}}"#
        )
    };
    let started = Instant::now();
    let alone = streamed_text(&post(http, &url, &request("alone")).await?);
    let alone_ms = started.elapsed().as_secs_f64() * 1000.0;
    let before = generations(port).await?;
    let together = request("together");
    let started = Instant::now();
    let answers = join_all((0..STREAMS).map(|_| {
        let (http, url, body) = (http.clone(), url.clone(), together.clone());
        async move {
            let text = post(&http, &url, &body)
                .await
                .map(|body| streamed_text(&body));
            (text, started.elapsed().as_secs_f64() * 1000.0)
        }
    }))
    .await;
    let made = generations(port).await? - before;
    let mut texts = Vec::with_capacity(STREAMS);
    let mut times = Vec::with_capacity(STREAMS);
    for (text, ms) in answers {
        texts.push(text?);
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    let same = texts
        .iter()
        .all(|text| !text.is_empty() && *text == texts[0]);
    Ok(Row {
        scenario: format!("{STREAMS} identical streams at once, tiny-chat 20 ms/token"),
        load: format!("{STREAMS} clients"),
        throughput: None,
        latency_ms: Some([
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            percentile(&times, 0.99),
            *times.last().unwrap_or(&0.0),
        ]),
        baseline: format!(
            "1 stream alone: {alone_ms:.0} ms ({} chars); generations: {made:.0}; every client the same chunks: {}",
            alone.len(),
            if same { "yes" } else { "no" }
        ),
        ratio: None,
        goal: "1 generation, every client the same chunks".into(),
        met: Some(made == 1.0 && same),
    })
}
