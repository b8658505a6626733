//! The ONNX models of `models/`: compared with the outputs onnxruntime computed
//! for them (`models/reference.json`), in process and over plain NATS; dynamic
//! batching as the worker counts it; and every startup error.

use std::path::Path;
use std::process::Command;

use serde_json::{Map, Value, json};
use test_support::example_models::{manifest, models_dir, references};
use worker::load_manifest;

use crate::{gather, header, request_owned, start};

#[tokio::test]
async fn every_example_model_matches_onnxruntime_one_by_one_and_batched() {
    let models = load_manifest(Path::new(&manifest())).unwrap();
    let names: Vec<_> = models.iter().map(|model| model.name().as_str()).collect();
    assert_eq!(names, ["price-mlp", "price-gbt", "price-linear"]);
    let references = references();
    for model in &models {
        let cases: Vec<_> = references
            .iter()
            .filter(|reference| reference.model == model.name().as_str())
            .collect();
        assert_eq!(cases.len(), 32, "references of {}", model.name());
        let inputs: Vec<_> = cases.iter().map(|case| case.input.clone()).collect();
        let batched = model.predict_batch(&inputs).await;
        for (case, batched) in cases.iter().zip(batched) {
            let single = model.predict(&case.input).await.unwrap();
            assert_eq!(
                single,
                batched.unwrap(),
                "{}: batch and single differ",
                model.name()
            );
            case.assert_matches(&single);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_models_answer_plain_nats_requests_with_their_versions() {
    let mut running = start(&["--model-config", &manifest()]).await;
    for reference in references().iter().step_by(3) {
        let subject = format!("predict.{}", reference.model);
        let payload = serde_json::to_string(&reference.input).unwrap();
        let reply = request_owned(&running.client, &subject, payload).await;
        assert_eq!(header(&reply, "Nats-Service-Error-Code"), None);
        assert_eq!(header(&reply, "Model-Version"), Some("1.0.0"));
        assert_eq!(header(&reply, "Freshness-Ttl-Ms"), Some("60000"));
        let prediction: Value = serde_json::from_slice(&reply.payload).unwrap();
        reference.assert_matches(&prediction);
    }

    let infos = gather(&running.client, "$SRV.INFO.prediction-worker").await;
    assert_eq!(infos.len(), 1);
    let mut endpoints: Vec<_> = infos[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["metadata"]["model_version"].as_str().unwrap(),
            )
        })
        .collect();
    endpoints.sort_unstable();
    assert_eq!(
        endpoints,
        [
            ("price-gbt", "1.0.0"),
            ("price-linear", "1.0.0"),
            ("price-mlp", "1.0.0")
        ],
        "a worker given only a manifest serves only its models"
    );
    running.stop().await.unwrap();
}

/// `inference_calls` and `predictions` of `model` in the worker's service stats.
async fn inference_counts(client: &async_nats::Client, model: &str) -> (u64, u64) {
    let stats = gather(client, "$SRV.STATS.prediction-worker").await;
    let endpoint = stats[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == model)
        .unwrap()
        .clone();
    (
        endpoint["data"]["inference_calls"].as_u64().unwrap(),
        endpoint["data"]["predictions"].as_u64().unwrap(),
    )
}

/// 64 distinct inputs, the 10th malformed, sent at once; returns the replies.
async fn sixty_four_at_once(client: &async_nats::Client) -> Vec<async_nats::Message> {
    let requests = sixty_four_inputs()
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let body = if i == 9 {
                json!({ "features": [1, 2, 3] }).to_string()
            } else {
                String::from_utf8(body).unwrap()
            };
            request_owned(client, "predict.price-gbt", body)
        });
    futures::future::join_all(requests).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_inference_calls_and_a_bad_input_fails_alone() {
    let reference_model = load_manifest(Path::new(&manifest()))
        .unwrap()
        .into_iter()
        .find(|model| model.name().as_str() == "price-gbt")
        .unwrap();
    let mut running = start(&["--model-config", &manifest(), "--batch-window", "20ms"]).await;
    let replies = sixty_four_at_once(&running.client).await;
    for (i, reply) in replies.iter().enumerate() {
        if i == 9 {
            assert_eq!(header(reply, "Nats-Service-Error-Code"), Some("400"));
            let message = header(reply, "Nats-Service-Error").unwrap();
            assert!(message.contains("`features` has 3 element(s)"), "{message}");
            assert!(
                message.contains(r#"expected {"features": [10 numbers]}"#),
                "{message}"
            );
            continue;
        }
        assert_eq!(header(reply, "Nats-Service-Error"), None, "request {i}");
        let prediction: Value = serde_json::from_slice(&reply.payload).unwrap();
        let input: Map<String, Value> = serde_json::from_slice(&sixty_four_inputs()[i]).unwrap();
        let alone = reference_model.predict(&input).await.unwrap();
        assert_eq!(prediction, alone, "request {i} got another row's answer");
    }
    let (calls, predictions) = inference_counts(&running.client, "price-gbt").await;
    assert_eq!(predictions, 64);
    assert!(calls < 64 / 4, "64 requests took {calls} inference calls");
    running.stop().await.unwrap();

    // Batching off: one call per request.
    let mut unbatched = start(&["--model-config", &manifest(), "--max-batch", "1"]).await;
    let replies = sixty_four_at_once(&unbatched.client).await;
    assert_eq!(replies.len(), 64);
    assert_eq!(
        inference_counts(&unbatched.client, "price-gbt").await,
        (64, 64)
    );
    unbatched.stop().await.unwrap();
}

/// The request bodies of [`sixty_four_at_once`], as bytes.
fn sixty_four_inputs() -> Vec<Vec<u8>> {
    (0..64)
        .map(|i| {
            let features: Vec<f64> = (0..10)
                .map(|j| 2000.0 + f64::from(i) + f64::from(j) / 10.0)
                .collect();
            serde_json::to_vec(&json!({ "features": features })).unwrap()
        })
        .collect()
}

/// Runs the worker binary on a manifest written from `toml` (model files are
/// looked up in `models/` and in the test fixtures) and returns what it printed,
/// asserting it exited with an error before serving.
fn startup_failure(case: &str, toml: &str, extra_files: &[(&str, &[u8])]) -> String {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("startup-{case}"));
    std::fs::create_dir_all(&directory).unwrap();
    for (name, bytes) in extra_files {
        std::fs::write(directory.join(name), bytes).unwrap();
    }
    let manifest = directory.join("models.toml");
    std::fs::write(&manifest, toml).unwrap();
    // No NATS server at this address: the models are loaded before connecting.
    let output = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["--nats-url", "nats://127.0.0.1:1", "--model-config"])
        .arg(&manifest)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "{case}: the worker started:\n{printed}"
    );
    printed
}

fn entry(name: &str, path: &str, input: &str, output: &str) -> String {
    format!(
        "[[model]]\nname = \"{name}\"\nversion = \"1\"\npath = \"{path}\"\ninput = {input}\noutput = {output}\n"
    )
}

#[test]
fn a_model_the_worker_cannot_serve_stops_it_at_startup_naming_the_model_and_why() {
    let gbt = models_dir().join("price-gbt.onnx").display().to_string();
    let svr = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/svr.onnx")
        .display()
        .to_string();
    let features = r#"{ field = "features" }"#;
    let price = r#"{ predicted_price = { index = 0 } }"#;
    // (case, manifest, files beside it, what the error must say)
    type Case<'a> = (&'a str, String, &'a [(&'a str, &'a [u8])], &'a [&'a str]);
    let cases: [Case; 7] = [
        (
            "missing-file",
            entry("ghost", "nowhere.onnx", features, price),
            &[],
            &[r#"model "ghost""#, "nowhere.onnx", "does not exist"],
        ),
        (
            "corrupt-file",
            entry("garbled", "garbled.onnx", features, price),
            &[("garbled.onnx", b"this is not protobuf \x00\xff\xfe")],
            &[r#"model "garbled""#, "not an ONNX model"],
        ),
        (
            "unsupported-operator",
            entry("svr", &svr, features, price),
            &[],
            &[
                r#"model "svr""#,
                "unsupported ONNX operator(s): SVMRegressor",
            ],
        ),
        (
            "manifest-syntax",
            "[[model]]\nname = \"broken\"\nversion = ".to_owned(),
            &[],
            &["models.toml", "TOML"],
        ),
        (
            "manifest-input",
            entry(
                "both",
                &gbt,
                r#"{ field = "features", fields = ["a"] }"#,
                price,
            ),
            &[],
            &[r#"model "both""#, "exactly one of `field`"],
        ),
        (
            "wrong-width",
            entry("narrow", &gbt, r#"{ fields = ["open", "close"] }"#, price),
            &[],
            &[
                r#"model "narrow""#,
                "maps 2 field(s) but the model takes 10 features",
            ],
        ),
        (
            "wrong-output",
            entry(
                "misread",
                &gbt,
                features,
                r#"{ y = { tensor = "probabilities" } }"#,
            ),
            &[],
            &[
                r#"model "misread""#,
                r#"reads tensor "probabilities""#,
                r#"["variable"]"#,
            ],
        ),
    ];
    for (case, toml, files, expected) in cases {
        let printed = startup_failure(case, &toml, files);
        for text in expected {
            assert!(
                printed.contains(text),
                "{case}: {text:?} not in:\n{printed}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_models_are_served_beside_a_manifest() {
    let mut running = start(&["--model-config", &manifest(), "--model", "echo"]).await;
    let infos = gather(&running.client, "$SRV.INFO.prediction-worker").await;
    let mut names: Vec<_> = infos[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["echo", "price-gbt", "price-linear", "price-mlp"]);
    let reply = request_owned(&running.client, "predict.echo", r#"{"a":1}"#.into()).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&reply.payload).unwrap(),
        json!({"echo": {"a": 1}})
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn named_input_fields_feed_the_same_tensor_as_an_array() {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("named-fields");
    std::fs::create_dir_all(&directory).unwrap();
    let manifest_path = directory.join("models.toml");
    let names: Vec<String> = (1..=10).map(|minute| format!("t{minute}")).collect();
    std::fs::write(
        &manifest_path,
        format!(
            "[[model]]\nname = \"named\"\nversion = \"1\"\npath = \"{}\"\n\
             input = {{ fields = {names:?} }}\noutput = {{ predicted_price = {{ index = 0 }}, row = {{}} }}\n",
            models_dir().join("price-linear.onnx").display()
        ),
    )
    .unwrap();
    let named = load_manifest(&manifest_path).unwrap().remove(0);
    for reference in references()
        .iter()
        .filter(|r| r.model == "price-linear")
        .take(8)
    {
        let values = reference.input["features"].as_array().unwrap();
        let input: Map<String, Value> = names.iter().cloned().zip(values.iter().cloned()).collect();
        let prediction = named.predict(&input).await.unwrap();
        reference.assert_matches(&prediction);
        assert_eq!(prediction["row"], json!([prediction["predicted_price"]]));
    }
    let mut missing: Map<String, Value> = names.iter().map(|n| (n.clone(), json!(1.0))).collect();
    missing.remove("t4");
    let err = named.predict(&missing).await.unwrap_err().to_string();
    assert!(err.contains("missing field `t4`"), "{err}");
    assert!(err.contains("the number fields `t1`, `t2`"), "{err}");
}

#[tokio::test]
async fn a_random_forest_with_two_targets_matches_onnxruntime() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("forest");
    std::fs::create_dir_all(&directory).unwrap();
    let manifest_path = directory.join("models.toml");
    std::fs::write(
        &manifest_path,
        format!(
            "[[model]]\nname = \"forest\"\nversion = \"1\"\npath = \"{}\"\n\
             input = {{ field = \"x\" }}\noutput = {{ y = {{}} }}\n",
            fixtures.join("forest.onnx").display()
        ),
    )
    .unwrap();
    let forest = load_manifest(&manifest_path).unwrap().remove(0);
    let text = std::fs::read_to_string(fixtures.join("forest-reference.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 16);
    let inputs: Vec<Map<String, Value>> = cases
        .iter()
        .map(|case| case["input"].as_object().unwrap().clone())
        .collect();
    let predictions = forest.predict_batch(&inputs).await;
    for (case, prediction) in cases.iter().zip(predictions) {
        let actual = prediction.unwrap()["y"].clone();
        let (actual, expected) = (actual.as_array().unwrap(), case["y"].as_array().unwrap());
        assert_eq!(actual.len(), 2);
        for (a, e) in actual.iter().zip(expected) {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            assert!(
                (a - e).abs() <= 1e-5 * e.abs().max(1e-3),
                "{a} vs onnxruntime {e}"
            );
        }
    }
}

/// A tensor request in the binary form for `price-mlp`'s input `X`.
fn tensor_request(rows: &[[f32; 10]], shape: &[u64]) -> (Vec<u8>, usize) {
    let mut request = prediction_contract::tensors::InferenceRequest::parse(
        json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": shape,
            "data": rows.iter().flatten().collect::<Vec<_>>()}]})
        .to_string()
        .as_bytes(),
        None,
    )
    .unwrap();
    request.id = None;
    request.for_worker()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensors_in_binary_form_get_the_same_answers_as_json_and_bad_ones_a_400() {
    let mut running = start(&["--model-config", &manifest()]).await;
    let cases: Vec<_> = references()
        .into_iter()
        .filter(|reference| reference.model == "price-mlp")
        .take(4)
        .collect();
    let rows: Vec<[f32; 10]> = cases
        .iter()
        .map(|case| {
            let features = case.input["features"].as_array().unwrap();
            std::array::from_fn(|i| features[i].as_f64().unwrap() as f32)
        })
        .collect();
    let (body, header_length) = tensor_request(&rows, &[rows.len() as u64, 10]);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Inference-Header-Content-Length",
        header_length.to_string().as_str(),
    );
    let reply = running
        .client
        .request_with_headers("predict.price-mlp", headers.clone(), body.into())
        .await
        .unwrap();
    assert_eq!(
        header(&reply, "Nats-Service-Error-Code"),
        None,
        "{:?}",
        reply.headers
    );
    let length: usize = header(&reply, "Inference-Header-Content-Length")
        .unwrap()
        .parse()
        .unwrap();
    let response =
        prediction_contract::tensors::InferenceResponse::parse(&reply.payload, Some(length))
            .unwrap();
    assert_eq!(response.model_version.as_deref(), Some("1.0.0"));
    let output = &response.outputs[0];
    assert_eq!(
        (output.name.as_str(), output.shape.as_slice()),
        ("variable", &[4u64, 1][..])
    );
    let values: Vec<f32> = output
        .data
        .chunks_exact(4)
        .map(|bytes| f32::from_le_bytes(bytes.try_into().unwrap()))
        .collect();
    for (case, value) in cases.iter().zip(values) {
        case.assert_matches(&json!({ "predicted_price": value }));
    }

    let (bad, bad_length) = tensor_request(&rows[..1], &[10, 1]);
    let mut bad_headers = async_nats::HeaderMap::new();
    bad_headers.insert(
        "Inference-Header-Content-Length",
        bad_length.to_string().as_str(),
    );
    let refused = running
        .client
        .request_with_headers("predict.price-mlp", bad_headers, bad.into())
        .await
        .unwrap();
    assert_eq!(header(&refused, "Nats-Service-Error-Code"), Some("400"));
    let message = header(&refused, "Nats-Service-Error").unwrap();
    assert!(
        message.contains("tensor \"X\"") && message.contains("[-1, 10]"),
        "{message}"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_takes_json_refuses_tensors() {
    let mut running = start(&[]).await;
    let (body, header_length) = tensor_request(&[[1.0; 10]], &[1, 10]);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Inference-Header-Content-Length",
        header_length.to_string().as_str(),
    );
    let reply = running
        .client
        .request_with_headers("predict.price", headers, body.into())
        .await
        .unwrap();
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), Some("400"));
    assert!(
        header(&reply, "Nats-Service-Error")
            .unwrap()
            .contains("takes JSON inputs, not tensors")
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn tensor_requests_stacked_into_one_call_get_what_each_gets_alone() {
    let models = load_manifest(Path::new(&manifest())).unwrap();
    let row = |value: f32| [value; 10];
    let parse = |rows: &[[f32; 10]]| {
        let (body, length) = tensor_request(rows, &[rows.len() as u64, 10]);
        prediction_contract::tensors::InferenceRequest::parse(&body, Some(length)).unwrap()
    };
    let first = parse(&[row(2000.0), row(2100.0)]);
    let second = parse(&[row(1900.0)]);
    let odd = prediction_contract::tensors::InferenceRequest::parse(
        json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [10], "data": vec![1.0; 10]}]})
            .to_string()
            .as_bytes(),
        None,
    )
    .unwrap();
    for model in &models {
        let together = model.infer_batch(&[first.clone(), second.clone()]).await;
        assert_eq!(together[0], model.infer(&first).await, "{}", model.name());
        assert_eq!(together[1], model.infer(&second).await, "{}", model.name());
        assert_eq!(together[0].as_ref().unwrap()[0].shape, [2, 1]);
        // A request whose tensors do not stack runs alone, and is refused alone.
        let mixed = model.infer_batch(&[first.clone(), odd.clone()]).await;
        assert_eq!(mixed[0], model.infer(&first).await);
    }
}
