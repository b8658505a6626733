//! The Open Inference Protocol (KServe v2, Triton's HTTP API): health, server
//! and model metadata, readiness and inference, as `tritonclient` and KServe's
//! clients call them, with the binary tensor data extension they use by
//! default.
//!
//! An inference request is read into tensors in one canonical form whatever
//! it came in (JSON or binary: see `prediction_contract::tensors`), checked
//! against the tensors the model's workers declare, and answered by the
//! prediction core: the cache key is made of the model's name, the version
//! the request names (if any), each input's name, datatype, shape and data, the
//! outputs asked for and the parameters; never the request's `id`, nor how its
//! tensors travel. The worker gets every input binary and answers every output
//! binary; the client gets each output as it asked. Requests read recently
//! are remembered by their bytes ([`OIP_REQUESTS_BYTES`], see `routes::memo`).

mod error;

use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prediction_contract::tensors::{
    INFERENCE_HEADER_CONTENT_LENGTH, InferenceRequest, InferenceResponse, TensorSignature,
    header_length_of,
};
use prediction_contract::{CanonicalInput, ModelName};
use serde_json::json;

pub use error::OipError;

use super::answer::insert_cache_headers;
use super::extract::{PredictionHeaders, read_body};
use crate::input::RawInput;
use crate::prediction::{Answer, PredictionRequest};
use crate::request_log::PredictionOutcome;
use crate::routes::memo::Remembered;
use crate::state::AppState;

/// Memory for the inference requests read recently.
pub const OIP_REQUESTS_BYTES: u64 = 8 * 1024 * 1024;

const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// `GET /v2`: the server's metadata.
pub async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "prediction-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
    .into_response()
}

/// `GET /v2/health/live`: 200 while the process runs.
pub async fn live() -> StatusCode {
    StatusCode::OK
}

/// `GET /v2/health/ready`: 200 while the gateway can ask its workers (NATS is
/// connected), else 400 (the protocol's "false").
pub async fn ready(State(state): State<AppState>) -> StatusCode {
    if state.nats.is_connected() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// The model a path names, served with tensors, and the version it names:
/// the directory's view of it (a new look at the workers if it knows none).
async fn served_model(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<(ModelName, crate::discovery::ModelView), OipError> {
    let model = ModelName::parse(model).map_err(|err| OipError::bad_request(err.to_string()))?;
    let known = state.directory.view(&model);
    let view = state.directory.find(&model, &known).await;
    let name = model.as_str();
    if !view.is_served() {
        return Err(OipError::not_found(format!(
            "no worker serves model {name:?}"
        )));
    }
    if view.tensors().is_none() {
        return Err(OipError::not_found(format!(
            "model {name:?} takes JSON inputs (POST /v1/models/{name}/predict), not tensors"
        )));
    }
    if let Some(version) = version
        && view.current_version() != Some(version)
    {
        let served: Vec<&str> = view.versions().collect();
        return Err(OipError::not_found(format!(
            "model {name:?} version {version:?} is not the one served (current: {}; workers hold {served:?})",
            view.current_version().unwrap_or("none")
        )));
    }
    Ok((model, view))
}

/// `GET /v2/models/{model}[/versions/{version}]`: the model's name, versions,
/// platform and tensors, as its workers declare them.
pub async fn model_metadata(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
) -> Response {
    let (model, version) = path_params(&params);
    match served_model(&state, model, version).await {
        Ok((model, view)) => {
            let signature = view.tensors().expect("checked above");
            axum::Json(json!({
                "name": model.as_str(),
                "versions": view.versions().collect::<Vec<_>>(),
                "platform": signature.platform,
                "inputs": signature.inputs,
                "outputs": signature.outputs,
            }))
            .into_response()
        }
        Err(err) => err.into_response(),
    }
}

/// `GET /v2/models/{model}[/versions/{version}]/ready`: 200 when served, else
/// 400 (the protocol's "false") with the reason.
pub async fn model_ready(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
) -> Response {
    let (model, version) = path_params(&params);
    match served_model(&state, model, version).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(err) => OipError::bad_request(err.message).into_response(),
    }
}

fn path_params(params: &[(String, String)]) -> (&str, Option<&str>) {
    let find = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    (find("model").unwrap_or_default(), find("version"))
}

/// A request body, read as on the other routes, refused in the protocol's shape.
#[derive(Debug)]
pub struct OipBody(Bytes);

impl FromRequest<AppState> for OipBody {
    type Rejection = OipError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, OipError> {
        Ok(Self(
            read_body(request.into_body(), state)
                .await
                .map_err(OipError::from)?,
        ))
    }
}

/// `POST /v2/models/{model}[/versions/{version}]/infer`.
pub async fn infer(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    headers: PredictionHeaders,
    http_headers: HeaderMap,
    OipBody(body): OipBody,
) -> Response {
    let (model, version) = path_params(&params);
    match answer(&state, model, version, &headers, &http_headers, &body).await {
        Ok((model, outcome, response)) => {
            let mut response = response;
            response.extensions_mut().insert(PredictionOutcome {
                model,
                cache: Some(outcome),
            });
            response
        }
        Err((model, err)) => {
            let mut response = err.into_response();
            if let Some(model) = model {
                response
                    .extensions_mut()
                    .insert(PredictionOutcome { model, cache: None });
            }
            response
        }
    }
}

type Answered = (ModelName, crate::prediction::CacheOutcome, Response);

async fn answer(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &PredictionHeaders,
    http_headers: &HeaderMap,
    body: &Bytes,
) -> Result<Answered, (Option<ModelName>, OipError)> {
    let (model, view) = served_model(state, model, version)
        .await
        .map_err(|err| (None, err))?;
    let fail = |err: OipError| (Some(model.clone()), err);
    let header_length = match http_headers.get(&HEADER_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    fail(OipError::bad_request(format!(
                        "{INFERENCE_HEADER_CONTENT_LENGTH} must be a whole number"
                    )))
                })?,
        ),
    };
    let signature = view.tensors().expect("served_model checks");
    // What else than the body changes how it reads: the model, the version
    // its workers serve (their tensors), the version named, the header's length.
    let scope = format!(
        "{model}\n{}\n{}\n{header_length:?}",
        view.current_version().unwrap_or_default(),
        version.unwrap_or_default(),
    );
    let read = state
        .oip_requests
        .read(&scope, body, || {
            ReadInference::read(body, header_length, signature, version)
        })
        .map_err(fail)?;
    let input = RawInput::Tensors {
        request: read.for_worker.clone(),
        header_length: read.worker_header_length,
        key: read.key.clone(),
    };
    let request = &read.request;
    let answer = state
        .predictor
        .predict(PredictionRequest {
            model: &model,
            input,
            directives: &headers.directives,
            request_id: headers.request_id(),
            sampled: false,
        })
        .await
        .map_err(|err| fail(OipError::from(crate::error::ApiError::from(err))))?;
    let response = respond(&model, request, &answer).map_err(fail)?;
    Ok((model, answer.outcome, response))
}

/// A request read: checked against the model's tensors, its key, and the
/// request its worker gets.
#[derive(Debug)]
pub struct ReadInference {
    request: InferenceRequest,
    key: CanonicalInput,
    for_worker: Bytes,
    worker_header_length: usize,
}

impl ReadInference {
    fn read(
        body: &[u8],
        header_length: Option<usize>,
        signature: &TensorSignature,
        version: Option<&str>,
    ) -> Result<Self, OipError> {
        let request = InferenceRequest::parse(body, header_length)
            .map_err(|err| OipError::bad_request(err.to_string()))?;
        signature
            .check(&request)
            .map_err(|err| OipError::bad_request(err.to_string()))?;
        let key = CanonicalInput::from_value(&request.key_material(version))
            .map_err(|err| OipError::bad_request(err.to_string()))?;
        let (for_worker, worker_header_length) = request.for_worker();
        Ok(Self {
            request,
            key,
            for_worker: for_worker.into(),
            worker_header_length,
        })
    }
}

impl Remembered for ReadInference {
    fn weight(&self) -> usize {
        // The tensors twice (read, and for the worker) and the key.
        2 * self.for_worker.len() + self.key.as_str().len()
    }
}

/// The answer as the client asked: each output binary or JSON, its `id`
/// echoed, the version that computed it; with the cache's headers.
fn respond(
    model: &ModelName,
    request: &InferenceRequest,
    answer: &Answer,
) -> Result<Response, OipError> {
    let stored = &answer.entry.prediction;
    let mut response = header_length_of(stored)
        .and_then(|length| InferenceResponse::parse(stored, Some(length)).ok())
        .ok_or_else(|| OipError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the worker's answer is not an inference response".into(),
        })?;
    response.model_name = model.as_str().to_owned();
    response.model_version = Some(answer.entry.model_version.to_string());
    response.id = request.id.clone();
    let (body, header_length) = response
        .write(|output| request.wants_binary(&output.name))
        .map_err(|err| OipError::bad_request(err.to_string()))?;
    let mut headers = HeaderMap::with_capacity(8);
    match header_length {
        Some(length) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(HEADER_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    insert_cache_headers(answer, &mut headers);
    let mut response = Response::new(Body::from(body));
    *response.headers_mut() = headers;
    Ok(response)
}
