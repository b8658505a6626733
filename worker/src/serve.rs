//! The serve loop: takes each request as it arrives, admits it or refuses it as
//! busy, computes and answers it, and stops taking requests at shutdown while
//! finishing those it holds.
//!
//! A request's life here: `Admission::admit` (in arrival order), then
//! `answer`: its deadline checked, its input parsed, the model run (through its
//! [`Runner`]), the reply sent with the prediction's metadata, or an error reply
//! in the NATS Services convention.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::service::{self, endpoint::Endpoint};
use futures::StreamExt;
use prediction_contract::headers::{error_codes, write_heartbeat};
use prediction_contract::time::unix_now_ms;
use prediction_contract::{ReplyMetadata, RequestMetadata};
use prediction_runtime::{nats_headers, traces};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;
use tracing::{debug, info, warn};

use crate::batching::Runner;
use crate::model::{Input, ModelError};
use crate::streaming::{StreamContext, stream_answer};
use prediction_contract::openai::Api;
use prediction_contract::tensors::{
    INFERENCE_HEADER_CONTENT_LENGTH, InferenceRequest, InferenceResponse,
};
use serde_json::Value;

/// How long after the stop signal the request streams may take to end. They end
/// as soon as the unsubscribes are processed, well under this, unless NATS is
/// unreachable.
const STREAMS_END_TIMEOUT: Duration = Duration::from_secs(2);

/// Which requests a worker takes. Core NATS has no server-side queue: a queue
/// group hands each request to a random member, busy or not. So a worker bounds
/// what it holds itself: at most `concurrency` inference calls run (see
/// [`Runner`]), at most `queue_depth` more requests wait, and the rest are refused
/// at once as busy. A request whose caller will try another worker is refused
/// earlier, once `redirect_backlog` requests wait: random delivery would otherwise
/// queue it here while another worker may be idle.
#[derive(Debug)]
pub struct Admission {
    /// One permit per request held, running or waiting.
    permits: Arc<Semaphore>,
    capacity: usize,
    /// From this many requests held, one that asked to avoid a backlog is refused.
    redirect_from: usize,
}

impl Admission {
    pub fn new(running_capacity: usize, queue_depth: usize, redirect_backlog: usize) -> Self {
        let capacity = running_capacity + queue_depth;
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            redirect_from: running_capacity + redirect_backlog,
        }
    }

    /// A permit to hold `request`, or why not: the busy reply's text. Decided in
    /// the order requests arrive, so a backlog is seen by the request behind it.
    fn admit(&self, request: &service::Request) -> Result<OwnedSemaphorePermit, &'static str> {
        let avoids_backlog =
            RequestMetadata::read(nats_headers::lookup(request.message.headers.as_ref()))
                .avoid_backlog;
        let held = self.capacity - self.permits.available_permits();
        if avoids_backlog && held >= self.redirect_from {
            return Err("requests are waiting at this worker; try another worker");
        }
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| "the worker is at capacity; try again or another worker")
    }
}

/// Serves the requests of `endpoints` until `shutdown` completes, then stops the
/// `service` (unsubscribing every endpoint) and returns once every request
/// received has been answered.
pub async fn serve(
    context: &StreamContext,
    endpoints: Vec<(Runner, Endpoint)>,
    service: service::Service,
    admission: Admission,
    shutdown: impl Future<Output = ()>,
) {
    let mut requests = futures::stream::select_all(
        endpoints
            .into_iter()
            .map(|(runner, endpoint)| endpoint.map(move |request| (runner.clone(), request))),
    );
    let mut in_flight = JoinSet::new();
    let mut service = Some(service);
    // Set at shutdown: the request streams normally end at once, but not while
    // NATS is unreachable (the unsubscribe cannot be processed then).
    let streams_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(shutdown, streams_deadline);
    loop {
        tokio::select! {
            () = &mut shutdown, if service.is_some() => {
                // Unsubscribes every endpoint; the request streams end once the
                // messages already delivered to us have been handed out.
                if let Some(service) = service.take() {
                    let _ = service.stop().await;
                }
                streams_deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + STREAMS_END_TIMEOUT);
                info!(in_flight = in_flight.len(), "stopped taking requests; finishing those received");
            }
            () = &mut streams_deadline => {
                warn!("the request streams did not end (NATS unreachable?); stopping anyway");
                break;
            }
            next = requests.next() => {
                let Some((runner, request)) = next else { break };
                match admission.admit(&request) {
                    // Boxed: the request's future is kilobytes, which the task
                    // would otherwise copy around as it is spawned.
                    Ok(held) => {
                        let context = context.clone();
                        in_flight.spawn(Box::pin(async move {
                            answer(&context, &runner, request).await;
                            drop(held);
                        }))
                    }
                    Err(reason) => in_flight.spawn(refuse_as_busy(runner, request, reason)),
                };
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// Answers `request` at once with a busy error (see [`Admission`]).
async fn refuse_as_busy(runner: Runner, request: service::Request, reason: &'static str) {
    runner.record("503", Duration::ZERO);
    let busy = service::error::Error {
        status: reason.to_owned(),
        code: error_codes::BUSY.into(),
    };
    if let Err(err) = request.respond(Err(busy)).await {
        warn!(model = %runner.model().name(), error = %err, "could not send the busy reply");
    }
}

/// Computes and sends the reply to one request; with tracing on, in a span that
/// continues the caller's trace (the gateway's model call).
async fn answer(context: &StreamContext, runner: &Runner, request: service::Request) {
    let header = |name: &str| {
        request
            .message
            .headers
            .as_ref()?
            .get(name)
            .map(|value| value.as_str())
    };
    if !traces::enabled() {
        return answer_request(context, runner, request).await;
    }
    let caller = traces::Caller::from_headers(header);
    // A caller that did not sample its trace gets no span here either.
    if caller.sampled() == Some(false) {
        return answer_request(context, runner, request).await;
    }
    let span = tracing::info_span!(
        "predict",
        otel.kind = "server",
        model = runner.model().name().as_str()
    );
    caller.continued_by(&span);
    answer_request(context, runner, request)
        .instrument(span)
        .await;
}

/// Computes and sends the reply to one request, with heartbeats meanwhile if
/// the caller asked for them; a generative model's answer streamed, if asked
/// for. Never fails: every problem becomes an error reply (or, if even that
/// cannot be sent, a log line).
async fn answer_request(context: &StreamContext, runner: &Runner, request: service::Request) {
    let client = &context.client;
    let model = runner.model();
    let started = Instant::now();
    let metadata = RequestMetadata::read(nats_headers::lookup(request.message.headers.as_ref()));
    let request_id = metadata.request_id.to_owned();
    let tensor_header =
        nats_headers::lookup(request.message.headers.as_ref())(INFERENCE_HEADER_CONTENT_LENGTH)
            .map(|length| length.trim().parse::<usize>());
    let heartbeats = metadata
        .heartbeat_interval
        .zip(request.message.reply.as_ref());
    let result: Result<Reply, (u16, String)> = if metadata.deadline_passed(unix_now_ms()) {
        Err((
            error_codes::DEADLINE_EXCEEDED,
            "the caller's deadline passed before the worker started".to_owned(),
        ))
    } else if let Some(header_length) = tensor_header {
        let work = async {
            let header_length = header_length.map_err(|_| {
                ModelError::InvalidInput(format!(
                    "{INFERENCE_HEADER_CONTENT_LENGTH} must be a whole number"
                ))
            })?;
            tensors(runner, &request.message.payload, header_length).await
        };
        match heartbeats {
            Some((every, to)) => with_heartbeats(client, to, every, work).await,
            None => work.await,
        }
        .map_err(|err| (err.code(), err.to_string()))
    } else {
        match parse_input(&request.message.payload) {
            Ok(input) => {
                let api = model
                    .generates()
                    .then(|| metadata.api.or_else(|| Api::infer(&input)))
                    .flatten();
                if let Some(api) = api.filter(|api| metadata.stream && api.streams()) {
                    let heartbeat = metadata.heartbeat_interval;
                    let outcome =
                        stream_answer(context, runner, &request, api, input, heartbeat).await;
                    runner.record(&outcome, started.elapsed());
                    return;
                }
                let prediction: futures::future::BoxFuture<'_, Result<Value, ModelError>> =
                    match api {
                        Some(api) => Box::pin(whole(runner, api, input)),
                        None => Box::pin(runner.predict(input)),
                    };
                match heartbeats {
                    Some((every, to)) => with_heartbeats(client, to, every, prediction).await,
                    None => prediction.await,
                }
                .map_err(|err| (err.code(), err.to_string()))
                .and_then(|prediction| {
                    serde_json::to_vec(&prediction)
                        .map(|payload| Reply {
                            payload: payload.into(),
                            tensor_header: None,
                        })
                        .map_err(|err| {
                            (
                                error_codes::MODEL_FAILED,
                                format!("the prediction could not be serialised: {err}"),
                            )
                        })
                })
            }
            Err(err) => Err((err.code(), err.to_string())),
        }
    };
    let compute_time = started.elapsed();
    let reply_metadata = ReplyMetadata {
        model_version: model.version().to_owned(),
        freshness_ttl: model.freshness_ttl(),
        compute_time: Some(compute_time),
    };
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err((code, message)) => {
            if *code == error_codes::MODEL_FAILED {
                warn!(model = %model.name(), request_id, error = message, "the model failed");
            }
            code.to_string()
        }
    };
    let mut tensor_header = None;
    let reply = match result {
        Ok(reply) => {
            tensor_header = reply.tensor_header;
            Ok(reply.payload)
        }
        Err((code, message)) => Err(service::error::Error {
            status: message,
            code: code.into(),
        }),
    };
    let headers = nats_headers::written(|put| {
        reply_metadata.write(&mut *put);
        if let Some(length) = tensor_header {
            put(INFERENCE_HEADER_CONTENT_LENGTH, &length.to_string());
        }
    });
    if let Err(err) = request.respond_with_headers(reply, headers).await {
        warn!(model = %model.name(), request_id, error = %err, "could not send the reply");
    }
    runner.record(&outcome, started.elapsed());
    // At debug: the gateway logs every request, with its id, at info; this line
    // would double the log volume (and cost more than a fast model's inference).
    // Failures are logged at warn or error where they happen.
    debug!(
        model = %model.name(),
        request_id,
        outcome,
        compute_ms = compute_time.as_secs_f64() * 1000.0,
        "prediction request"
    );
}

/// Runs `work`, telling the caller at `reply` every `every` that this worker
/// still holds its request (see [`HEARTBEAT_MS`]): the caller then sends it
/// again only if the heartbeats stop, never because the model is slow. Driven
/// by the request's own task: no task, and no timer once the work is done.
///
/// [`HEARTBEAT_MS`]: prediction_contract::headers::HEARTBEAT_MS
async fn with_heartbeats<F: Future>(
    client: &async_nats::Client,
    reply: &async_nats::Subject,
    every: Duration,
    work: F,
) -> F::Output {
    tokio::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            output = &mut work => return output,
            _ = ticks.tick() => {
                let sent = client
                    .publish_with_headers(
                        reply.clone(),
                        nats_headers::written(|put| write_heartbeat(put)),
                        bytes::Bytes::new(),
                    )
                    .await;
                if let Err(err) = sent {
                    debug!(error = %err, "could not send a heartbeat");
                }
            }
        }
    }
}

/// A generative model's whole answer in `api`: its chunks assembled (for
/// embeddings, its one answer), computed in a slot.
/// A reply's payload, and the length of its JSON header if it holds tensors.
struct Reply {
    payload: bytes::Bytes,
    tensor_header: Option<usize>,
}

/// The answer to a tensor request (the Open Inference Protocol's binary form):
/// checked against the tensors the model declares, computed, and written with
/// every output binary (those asked for, in their order, or all).
async fn tensors(
    runner: &Runner,
    payload: &[u8],
    header_length: usize,
) -> Result<Reply, ModelError> {
    let model = runner.model();
    let signature = model.tensors().ok_or_else(|| {
        ModelError::InvalidInput(format!(
            "model {} takes JSON inputs, not tensors",
            model.name()
        ))
    })?;
    let request = InferenceRequest::parse(payload, Some(header_length))
        .and_then(|request| signature.check(&request).map(|()| request))
        .map_err(|err| ModelError::InvalidInput(err.to_string()))?;
    let wanted: Vec<String> = request
        .outputs
        .iter()
        .map(|output| output.name.clone())
        .collect();
    let mut outputs = runner.infer(request).await?;
    if !wanted.is_empty() {
        let mut chosen = Vec::with_capacity(wanted.len());
        for name in &wanted {
            let at = outputs
                .iter()
                .position(|output| &output.name == name)
                .ok_or_else(|| ModelError::Failed(format!("the model gave no output {name:?}")))?;
            chosen.push(outputs.swap_remove(at));
        }
        outputs = chosen;
    }
    let response = InferenceResponse {
        model_name: model.name().as_str().to_owned(),
        model_version: Some(model.version().to_owned()),
        id: None,
        parameters: serde_json::Map::new(),
        outputs,
    };
    let (payload, tensor_header) = response
        .write(|_| true)
        .map_err(|err| ModelError::Failed(err.to_string()))?;
    Ok(Reply {
        payload: payload.into(),
        tensor_header,
    })
}

async fn whole(runner: &Runner, api: Api, input: Input) -> Result<Value, ModelError> {
    let chunks: Vec<Value> = runner
        .generate(api, input)
        .await
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    if api.streams() {
        Ok(prediction_contract::openai::assemble(api, &chunks))
    } else {
        chunks
            .into_iter()
            .next()
            .ok_or_else(|| ModelError::Failed("the model answered nothing".into()))
    }
}

fn parse_input(payload: &[u8]) -> Result<Input, ModelError> {
    match serde_json::from_slice(payload) {
        Ok(serde_json::Value::Object(input)) => Ok(input),
        Ok(_) => Err(ModelError::InvalidInput(
            "the input must be a JSON object, e.g. {\"product_id\": \"ETH/EUR\"}".into(),
        )),
        Err(err) => Err(ModelError::InvalidInput(format!(
            "the input is not valid JSON: {err}"
        ))),
    }
}
