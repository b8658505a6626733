//! The cache's keys, all under the deployment's `--key-prefix`: what every
//! gateway of a deployment must compute alike to share entries, locks and
//! announcements.
//!
//! A prediction depends only on (model, model version, input), so its key names
//! the model and the SHA-256 of the input's canonical form; the version is in the
//! entry, which the gateway compares with the version served now. Beside each
//! entry's key live the keys of its compute lock and of the mark that another
//! gateway waits for it. The prefix lets several deployments (or tests) share one
//! Redis without seeing each other's entries; [`KeySpace`] is its one home.

use std::sync::Arc;

use crate::{CanonicalInput, ModelName};
use sha2::{Digest, Sha256};

/// Bumped whenever the canonical form or the key layout changes, so that a new
/// gateway never reads entries written under the old rules. v2: an entry's key
/// may hold a lease ([`LEASE_PREFIX`]) instead of an entry; v3: the input's
/// digest is the keys' hash tag.
pub const KEY_FORMAT_VERSION: &str = "v3";

/// What a value under an entry's key starts with when it is not an entry but the
/// lease of the gateway computing it: `lease:<gateway token>`. Entries are JSON
/// objects, so they never start with it.
pub const LEASE_PREFIX: &str = "lease:";

const ENTRY_NAMESPACE: &str = "prediction:";
const LOCK_NAMESPACE: &str = "prediction-lock:";
const WAITING_SUFFIX: &str = ":waiting";

/// The keys of one deployment: every key the gateway reads or writes is made here.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: Arc<str>,
}

impl KeySpace {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The deployment's `--key-prefix`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of `model`'s prediction for `input`.
    pub fn key(&self, model: &ModelName, input: &CanonicalInput) -> CacheKey {
        CacheKey::new(&self.prefix, model, input)
    }

    /// What every entry key of `model` starts with, for purges.
    pub fn model_prefix(&self, model: &ModelName) -> String {
        format!(
            "{}{ENTRY_NAMESPACE}{KEY_FORMAT_VERSION}:{model}:",
            self.prefix
        )
    }

    /// The `SCAN MATCH` pattern of every entry of `model`.
    pub fn model_pattern(&self, model: &ModelName) -> String {
        let mut pattern = self.model_prefix(model);
        pattern.push('*');
        pattern
    }
}

/// The Redis keys of one (model, input) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// `<prefix>prediction:<format version>:<model>:{<sha256 of the canonical input>}`
    entry: String,
    prefix_len: usize,
}

impl CacheKey {
    /// The key of `model`'s prediction for `input` under `prefix`; prefer
    /// [`KeySpace::key`], which knows the prefix.
    pub fn new(prefix: &str, model: &ModelName, input: &CanonicalInput) -> Self {
        let digest = sha256_hex(input.as_str().as_bytes());
        let mut entry = String::with_capacity(
            prefix.len()
                + ENTRY_NAMESPACE.len()
                + KEY_FORMAT_VERSION.len()
                + model.as_str().len()
                + 68,
        );
        for part in [
            prefix,
            ENTRY_NAMESPACE,
            KEY_FORMAT_VERSION,
            ":",
            model.as_str(),
            ":{",
            &digest,
            "}",
        ] {
            entry.push_str(part);
        }
        Self {
            entry,
            prefix_len: prefix.len(),
        }
    }

    /// The key the prediction is stored under.
    pub fn as_str(&self) -> &str {
        &self.entry
    }

    /// The key of the lock that lets one gateway compute this prediction while the
    /// others wait. Outside the entries' namespace, so purging a model's entries
    /// leaves locks of computations in flight alone.
    pub fn lock_key(&self) -> String {
        self.lock_key_with("")
    }

    /// The key a gateway waiting for another's computation of this key sets, so
    /// that the computing gateway announces its outcome only when someone waits.
    pub fn waiting_key(&self) -> String {
        self.lock_key_with(WAITING_SUFFIX)
    }

    /// The lock key followed by `suffix`, written at its final size (a miss
    /// makes one): `format!` would cost several times as much.
    fn lock_key_with(&self, suffix: &str) -> String {
        let (prefix, rest) = self.entry.split_at(self.prefix_len);
        let rest = &rest[ENTRY_NAMESPACE.len()..];
        let mut key =
            String::with_capacity(prefix.len() + LOCK_NAMESPACE.len() + rest.len() + suffix.len());
        for part in [prefix, LOCK_NAMESPACE, rest, suffix] {
            key.push_str(part);
        }
        key
    }

    /// A NATS subject token naming this key: the SHA-256 of the whole key, so it is
    /// unique per prefix and safe in a subject whatever the prefix holds.
    pub fn subject_token(&self) -> String {
        sha256_hex(self.entry.as_bytes()).to_owned()
    }
}

/// SHA-256 of `bytes` in lower-case hex, on the stack. Computed for every request
/// whose key is not remembered: `hex::encode` builds its string a `char` at a
/// time, several times slower than this table-driven slice encoding.
fn sha256_hex(bytes: &[u8]) -> HexDigest {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(bytes), &mut hex).expect("64 bytes hold a 32-byte digest");
    HexDigest(hex)
}

/// A SHA-256 digest in lower-case hex.
struct HexDigest([u8; 64]);

impl std::ops::Deref for HexDigest {
    type Target = str;

    fn deref(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_names_prefix_format_model_and_hash() {
        let model = ModelName::parse("price").unwrap();
        let a = CanonicalInput::from_json_slice(br#"{"a":1,"b":2}"#).unwrap();
        let b = CanonicalInput::from_json_slice(br#"{ "b":2, "a":1 }"#).unwrap();
        let c = CanonicalInput::from_json_slice(br#"{"a":1,"b":3}"#).unwrap();
        let key = CacheKey::new("t:", &model, &a);
        assert_eq!(key, CacheKey::new("t:", &model, &b));
        assert_ne!(key, CacheKey::new("t:", &model, &c));
        assert!(key.as_str().starts_with("t:prediction:v3:price:{"));
        assert!(key.as_str().ends_with('}'));
        assert_eq!(key.as_str().len(), "t:prediction:v3:price:{}".len() + 64);
        let other_model = ModelName::parse("price2").unwrap();
        assert_ne!(key, CacheKey::new("t:", &other_model, &a));
        assert_ne!(key, CacheKey::new("u:", &model, &a));
        assert_eq!(KeySpace::new("t:").key(&model, &a), key);
    }

    #[test]
    fn lock_keys_stay_under_the_prefix_but_outside_the_purge_pattern() {
        let model = ModelName::parse("price").unwrap();
        let input = CanonicalInput::from_json_slice(br#"{"a":1}"#).unwrap();
        let keys = KeySpace::new("t:");
        let key = keys.key(&model, &input);
        let lock = key.lock_key();
        assert!(lock.starts_with("t:prediction-lock:v3:price:"));
        let tag = format!("{{{}}}", &*sha256_hex(input.as_str().as_bytes()));
        assert!(lock.ends_with(&tag));
        let pattern = keys.model_pattern(&model);
        assert_eq!(pattern.trim_end_matches('*'), keys.model_prefix(&model));
        assert!(key.as_str().starts_with(&keys.model_prefix(&model)));
        assert!(!lock.starts_with(&keys.model_prefix(&model)));
        // The waiters' mark lives beside the lock: under the prefix (so a Redis
        // ACL on `~<prefix>*` covers it), out of reach of a purge.
        let waiting = key.waiting_key();
        assert_eq!(waiting, format!("{lock}:waiting"));
        assert!(!waiting.starts_with(&keys.model_prefix(&model)));
        // One hash tag, the same in all three: one cluster slot.
        for name in [key.as_str(), &lock, &waiting] {
            assert_eq!(hash_tag(name), Some(tag.trim_matches(['{', '}'])), "{name}");
        }
    }

    /// The part of `key` Redis Cluster hashes, if it has a hash tag.
    fn hash_tag(key: &str) -> Option<&str> {
        let open = key.find('{')?;
        let close = key[open + 1..].find('}')? + open + 1;
        (close > open + 1).then(|| &key[open + 1..close])
    }

    #[test]
    fn subject_tokens_differ_per_prefix_and_are_hex() {
        let model = ModelName::parse("price").unwrap();
        let input = CanonicalInput::from_json_slice(br#"{"a":1}"#).unwrap();
        let a = CacheKey::new("a:", &model, &input).subject_token();
        let b = CacheKey::new("b:", &model, &input).subject_token();
        assert_ne!(a, b);
        assert!(a.len() == 64 && a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
