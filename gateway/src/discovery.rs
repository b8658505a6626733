//! Which models are served right now, learned from the workers themselves.
//!
//! Every worker is a NATS service answering `$SRV.INFO.prediction-worker` with its
//! endpoints. The directory asks all of them at once and gathers the replies. A
//! request never waits for that while the model is known: the snapshot is renewed
//! in the background once older than `--discovery-interval`. A model missing from
//! it is looked up again at once (at most every `RESCAN_AFTER`) before it is
//! declared unserved, so a worker that just started is found without waiting.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::service::Info;
use prediction_contract::ModelName;
use prediction_contract::headers::{
    CACHE_SAMPLED_METADATA, CHUNK_GAP_MS_METADATA, FIRST_CHUNK_MS_METADATA, HEARTBEATS_METADATA,
    STREAMS_METADATA, TENSORS_METADATA, TIMEOUT_MS_METADATA,
};
use prediction_contract::subjects::PREDICT_SUBJECT_PREFIX;
use prediction_contract::tensors::TensorSignature;
use serde::Serialize;
use tokio::sync::Mutex;
use tracing::debug;

use crate::nats::Nats;

/// The shortest time between two scans made because a model was missing.
const RESCAN_AFTER: Duration = Duration::from_millis(250);
/// The most models that get a label of their own in the metrics; those past it
/// (and models no worker has served) share [`OTHER_MODELS_LABEL`].
pub const MAX_LABELLED_MODELS: usize = 1_000;
/// The metrics' `model` label of a model no worker has served: a client can
/// name any number of those, and a series each would grow without bound. No
/// model name starts with `_`, so no model can be mistaken for it.
pub const OTHER_MODELS_LABEL: &str = "_other";

/// A model as the workers serving it describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServedModel {
    pub name: String,
    /// Every version some worker serves; more than one during a rollout.
    pub versions: BTreeSet<String>,
    /// The highest of `versions` (see [`compare_versions`]): only its predictions
    /// are served from the cache.
    pub current_version: Option<String>,
    /// How many workers serve it.
    pub workers: usize,
    /// Whether every worker serving it sends heartbeats (see
    /// [`HEARTBEATS_METADATA`]).
    #[serde(skip)]
    pub heartbeats: bool,
    /// Whether it generates (streams its answers when asked), as its workers
    /// say: every one of them must.
    #[serde(skip)]
    pub streams: bool,
    /// Its generations' bounds, if its workers declare them (the first
    /// worker's, when they differ).
    #[serde(skip)]
    pub bounds: Option<GenerationBounds>,
    /// Whether answers of sampled requests may be cached (no worker saying
    /// otherwise).
    #[serde(skip)]
    pub caches_sampled: bool,
    /// The tensors it takes and gives (the Open Inference Protocol), as the
    /// workers of its current version declare them; `None`: JSON inputs only.
    #[serde(skip)]
    pub tensors: Option<Arc<TensorSignature>>,
}

/// How long a generative model's answers may take, as its workers declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationBounds {
    pub total: Duration,
    pub first_chunk: Duration,
    pub between_chunks: Duration,
}

impl GenerationBounds {
    /// The bounds an endpoint's metadata declares, if it declares them all.
    fn declared(metadata: &std::collections::HashMap<String, String>) -> Option<Self> {
        let millis = |key: &str| {
            metadata
                .get(key)
                .and_then(|value| value.parse::<u64>().ok())
                .map(Duration::from_millis)
        };
        Some(Self {
            total: millis(TIMEOUT_MS_METADATA)?,
            first_chunk: millis(FIRST_CHUNK_MS_METADATA)?,
            between_chunks: millis(CHUNK_GAP_MS_METADATA)?,
        })
    }
}

#[derive(Debug, Clone)]
struct Snapshot {
    taken_at: Instant,
    models: BTreeMap<String, Arc<ServedModel>>,
}

/// What the directory knew of one model when a request asked: whether and by
/// how many workers it is served, its current version, whether its workers
/// send heartbeats. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ModelView {
    served: Option<Arc<ServedModel>>,
}

impl ModelView {
    /// A view of a model no worker serves (for tests of the pure parts).
    pub fn unknown() -> Self {
        Self::default()
    }

    /// A view of `served`.
    pub fn of(served: ServedModel) -> Self {
        Self {
            served: Some(Arc::new(served)),
        }
    }

    /// Whether some worker serves the model.
    pub fn is_served(&self) -> bool {
        self.served.is_some()
    }

    /// The version whose cached predictions may be served: the highest one
    /// served; `None` while no worker (or version) is known, when any may be,
    /// so cached answers keep flowing as in an outage.
    pub fn current_version(&self) -> Option<&str> {
        self.served.as_ref()?.current_version.as_deref()
    }

    /// Whether a prediction computed by `version` may be served.
    pub fn accepts_version(&self, version: &str) -> bool {
        self.current_version()
            .is_none_or(|current| current == version)
    }

    /// How many workers serve the model (0 if unknown).
    pub fn workers(&self) -> usize {
        self.served.as_ref().map_or(0, |served| served.workers)
    }

    /// Whether every worker serving the model sends heartbeats.
    pub fn sends_heartbeats(&self) -> bool {
        self.served.as_ref().is_some_and(|served| served.heartbeats)
    }

    /// Whether the model generates (streams its answers when asked).
    pub fn streams(&self) -> bool {
        self.served.as_ref().is_some_and(|served| served.streams)
    }

    /// The bounds of the model's generations, if declared.
    pub fn bounds(&self) -> Option<GenerationBounds> {
        self.served.as_ref()?.bounds
    }

    /// Whether answers of sampled requests may be cached.
    /// The tensors it takes and gives, if its workers declare them.
    pub fn tensors(&self) -> Option<&Arc<TensorSignature>> {
        self.served.as_ref()?.tensors.as_ref()
    }

    /// Every version some worker serves.
    pub fn versions(&self) -> impl Iterator<Item = &str> {
        self.served
            .iter()
            .flat_map(|served| served.versions.iter().map(String::as_str))
    }

    pub fn caches_sampled(&self) -> bool {
        self.served
            .as_ref()
            .is_none_or(|served| served.caches_sampled)
    }
}

/// The models being served, from the workers' service info.
#[derive(Debug)]
pub struct ModelDirectory {
    nats: Nats,
    max_age: Duration,
    snapshot: Mutex<Option<Snapshot>>,
    /// The last snapshot, readable without waiting for a scan in progress.
    latest: std::sync::RwLock<Option<Snapshot>>,
    refreshing: AtomicBool,
    /// Every model some worker has served since this gateway started, up to
    /// [`MAX_LABELLED_MODELS`]: the models with metrics of their own.
    ever_served: std::sync::RwLock<HashSet<String>>,
}

impl ModelDirectory {
    pub fn new(nats: Nats, max_age: Duration) -> Arc<Self> {
        Arc::new(Self {
            nats,
            max_age,
            snapshot: Mutex::new(None),
            latest: std::sync::RwLock::new(None),
            refreshing: AtomicBool::new(false),
            ever_served: std::sync::RwLock::new(HashSet::new()),
        })
    }

    /// The `model` label of `model`'s metrics: its name if some worker has
    /// served it, else [`OTHER_MODELS_LABEL`], so the metrics hold a bounded
    /// number of series whatever names clients send.
    pub fn metric_label<'a>(&self, model: &'a ModelName) -> &'a str {
        if self
            .ever_served
            .read()
            .expect("not poisoned")
            .contains(model.as_str())
        {
            model.as_str()
        } else {
            OTHER_MODELS_LABEL
        }
    }

    /// What the latest snapshot says of `model`: read once per request, and
    /// carried to every decision the request makes about the model. On every
    /// cache hit, so it reads the snapshot in place and clones one `Arc`.
    pub fn view(&self, model: &ModelName) -> ModelView {
        let latest = self.latest.read().expect("not poisoned");
        ModelView {
            served: latest
                .as_ref()
                .and_then(|snapshot| snapshot.models.get(model.as_str()))
                .cloned(),
        }
    }

    /// `model`'s view for a request about to ask its workers: the latest
    /// snapshot's when it knows the model (an old snapshot is renewed in the
    /// background), else a new scan's (at most every `RESCAN_AFTER`), so a
    /// worker that just started is found without waiting.
    pub async fn find(self: &Arc<Self>, model: &ModelName, known: &ModelView) -> ModelView {
        if known.is_served() {
            self.refresh_in_background_if_old();
            return known.clone();
        }
        ModelView {
            served: self
                .snapshot_younger_than(RESCAN_AFTER)
                .await
                .models
                .get(model.as_str())
                .cloned(),
        }
    }

    /// Renews the snapshot in the background once older than `--discovery-interval`.
    fn refresh_in_background_if_old(self: &Arc<Self>) {
        let old = self
            .latest
            .read()
            .expect("not poisoned")
            .as_ref()
            .is_none_or(|snapshot| snapshot.taken_at.elapsed() >= self.max_age);
        if old && !self.refreshing.swap(true, Ordering::SeqCst) {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                this.snapshot_younger_than(this.max_age).await;
                this.refreshing.store(false, Ordering::SeqCst);
            });
        }
    }

    /// Every model served now, by name.
    pub async fn models(&self) -> Vec<ServedModel> {
        self.snapshot_younger_than(self.max_age)
            .await
            .models
            .into_values()
            .map(Arc::unwrap_or_clone)
            .collect()
    }

    async fn snapshot_younger_than(&self, age: Duration) -> Snapshot {
        // Holding the lock through the scan makes concurrent callers share it.
        let mut snapshot = self.snapshot.lock().await;
        if let Some(current) = snapshot.as_ref()
            && current.taken_at.elapsed() < age
        {
            return current.clone();
        }
        let fresh = Snapshot {
            taken_at: Instant::now(),
            models: self.scan().await,
        };
        *snapshot = Some(fresh.clone());
        *self.latest.write().expect("not poisoned") = Some(fresh.clone());
        let mut ever_served = self.ever_served.write().expect("not poisoned");
        for name in fresh.models.keys() {
            if ever_served.len() < MAX_LABELLED_MODELS {
                ever_served.insert(name.clone());
            }
        }
        drop(ever_served);
        fresh
    }

    /// Asks every worker for its service info and tallies the models.
    async fn scan(&self) -> BTreeMap<String, Arc<ServedModel>> {
        let mut models: BTreeMap<String, ServedModel> = BTreeMap::new();
        let mut without_heartbeats = HashSet::new();
        let mut without_streams = HashSet::new();
        let mut sampled_not_cached = HashSet::new();
        let mut signatures: HashMap<(String, String), Arc<TensorSignature>> = HashMap::new();
        for reply in self.nats.ask_every_worker().await {
            let Ok(info) = serde_json::from_slice::<Info>(&reply.payload) else {
                debug!("ignoring an unreadable service info reply");
                continue;
            };
            for endpoint in info.endpoints {
                let Some(name) = endpoint
                    .subject
                    .strip_prefix(PREDICT_SUBJECT_PREFIX)
                    .and_then(|rest| rest.strip_prefix('.'))
                else {
                    continue;
                };
                let served = models
                    .entry(name.to_owned())
                    .or_insert_with(|| ServedModel {
                        name: name.to_owned(),
                        ..ServedModel::default()
                    });
                served.workers += 1;
                let says =
                    |key: &str, value: &str| endpoint.metadata.get(key).is_some_and(|v| v == value);
                if !says(HEARTBEATS_METADATA, "true") {
                    without_heartbeats.insert(name.to_owned());
                }
                if !says(STREAMS_METADATA, "true") {
                    without_streams.insert(name.to_owned());
                }
                if says(CACHE_SAMPLED_METADATA, "false") {
                    sampled_not_cached.insert(name.to_owned());
                }
                if served.bounds.is_none() {
                    served.bounds = GenerationBounds::declared(&endpoint.metadata);
                }
                if let Some(version) = endpoint.metadata.get("model_version") {
                    served.versions.insert(version.clone());
                    if let Some(signature) = endpoint
                        .metadata
                        .get(TENSORS_METADATA)
                        .and_then(|text| serde_json::from_str::<TensorSignature>(text).ok())
                    {
                        signatures
                            .entry((name.to_owned(), version.clone()))
                            .or_insert_with(|| Arc::new(signature));
                    }
                }
            }
        }
        for served in models.values_mut() {
            served.heartbeats = !without_heartbeats.contains(&served.name);
            served.streams = !without_streams.contains(&served.name);
            served.caches_sampled = !sampled_not_cached.contains(&served.name);
            served.current_version = served
                .versions
                .iter()
                .max_by(|a, b| compare_versions(a, b))
                .cloned();
            served.tensors = served.current_version.as_ref().and_then(|version| {
                signatures
                    .get(&(served.name.clone(), version.clone()))
                    .cloned()
            });
        }
        models
            .into_iter()
            .map(|(name, served)| (name, Arc::new(served)))
            .collect()
    }
}

/// Orders versions the way people number them: split at `.`, `-`, `+` and `_`,
/// numeric parts compared as numbers (1.10 after 1.9), other parts as text, and a
/// version that extends another after it (1.0.1 after 1.0). Every gateway orders
/// the same way, so they all agree on which version is current.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &'_ str| {
        v.split(['.', '-', '+', '_'])
            .map(|part| (part.parse::<u64>().ok(), part.to_owned()))
            .collect::<Vec<_>>()
    };
    let (a_parts, b_parts) = (parts(a), parts(b));
    for ((a_number, a_text), (b_number, b_text)) in a_parts.iter().zip(&b_parts) {
        let order = match (a_number, b_number) {
            (Some(x), Some(y)) => x.cmp(y),
            // A number sorts before a word: arbitrary, but the same everywhere.
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a_text.cmp(b_text),
        };
        if order.is_ne() {
            return order;
        }
    }
    a_parts.len().cmp(&b_parts.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::compare_versions;

    #[test]
    fn versions_order_numerically_then_by_length() {
        let mut versions = vec!["1.10.0", "1.9.2", "2", "1.9", "1.9.10", "v3", "1.9.2-a"];
        versions.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            versions,
            ["1.9", "1.9.2", "1.9.2-a", "1.9.10", "1.10.0", "2", "v3"]
        );
        assert!(compare_versions("2026-11-26", "2026-02-01").is_gt());
    }
}
