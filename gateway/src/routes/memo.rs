//! Requests a front door read recently, remembered by their bytes: an
//! application that sends the same request again (the cache's reason to be)
//! is answered without the door parsing it, checking it and hashing it into
//! its key again, as the key memo of the JSON routes does (`crate::input`).
//! The protocol doors (the OpenAI API, the Open Inference Protocol) keep one
//! each; it is bounded by memory, whatever clients send.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use quick_cache::{Equivalent, Weighter};

/// Bodies longer than this are not remembered: reading is a small part of
/// their cost, and a few would crowd out many short ones.
pub const LONGEST_REMEMBERED: usize = 16 * 1024;

/// What a door read from a request, remembered with its weight.
pub trait Remembered: Send + Sync + 'static {
    /// The bytes it holds besides the body it came from.
    fn weight(&self) -> usize;
}

/// Requests read recently by (scope, body): the scope is what besides the
/// body changes the reading (the API and the caller's partition; the model,
/// its version and the header's length).
#[derive(Debug)]
pub struct BodyMemo<T> {
    memo: quick_cache::sync::Cache<Key, Arc<T>, ByWeight>,
}

impl<T: Remembered> BodyMemo<T> {
    /// A memo holding about `budget` bytes.
    pub fn new(budget: u64) -> Self {
        let typical_weight = 1024;
        Self {
            memo: quick_cache::sync::Cache::with_weighter(
                usize::try_from(budget / typical_weight).unwrap_or(1).max(1),
                budget.max(1),
                ByWeight,
            ),
        }
    }

    /// `body` in `scope` as `read` reads it, remembered.
    pub fn read<E>(
        &self,
        scope: &str,
        body: &Bytes,
        read: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let sought = Sought { scope, body };
        if let Some(remembered) = self.memo.get(&sought) {
            return Ok(remembered);
        }
        let value = Arc::new(read()?);
        if body.len() <= LONGEST_REMEMBERED {
            let key = Key {
                scope: scope.into(),
                body: body.clone(),
                weight: value.weight(),
            };
            self.memo.insert(key, Arc::clone(&value));
        }
        Ok(value)
    }
}

#[derive(Debug, Clone)]
struct Key {
    scope: Box<str>,
    body: Bytes,
    /// What the remembered value holds, for the weigher.
    weight: usize,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.scope == other.scope && self.body == other.body
    }
}

impl Eq for Key {}

/// A lookup of a [`Key`] without copying the scope or the body.
struct Sought<'a> {
    scope: &'a str,
    body: &'a [u8],
}

// Both hash the same fields the same way, so a lookup finds what was inserted.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (&*self.scope, &self.body[..]).hash(state);
    }
}

impl Hash for Sought<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.scope, self.body).hash(state);
    }
}

impl Equivalent<Key> for Sought<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.scope == &*key.scope && self.body == &key.body[..]
    }
}

#[derive(Debug, Clone, Copy)]
struct ByWeight;

impl<T> Weighter<Key, Arc<T>> for ByWeight {
    fn weight(&self, key: &Key, _: &Arc<T>) -> u64 {
        let bytes = key.scope.len() + key.body.len() + key.weight;
        // The structs, the Arc and the allocations' rounding.
        u64::try_from(bytes).unwrap_or(u64::MAX).saturating_add(256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Read(usize);

    impl Remembered for Read {
        fn weight(&self) -> usize {
            8
        }
    }

    #[test]
    fn a_body_read_again_in_its_scope_is_remembered_and_another_scope_reads_anew() {
        let memo = BodyMemo::new(1 << 20);
        let body = Bytes::from_static(b"{}");
        let mut reads = 0;
        let mut read = |scope: &str| {
            memo.read(scope, &body, || {
                reads += 1;
                Ok::<_, ()>(Read(reads))
            })
            .unwrap()
        };
        let first = read("a");
        let again = read("a");
        let other = read("b");
        assert!(Arc::ptr_eq(&first, &again));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!((first.0, other.0), (1, 2));
    }

    #[test]
    fn distinct_bodies_at_any_rate_stay_within_the_budget() {
        let budget = 64 * 1024;
        let memo = BodyMemo::new(budget);
        for n in 0..10_000u32 {
            let body = Bytes::from(format!("{n:01000}"));
            memo.read("scope", &body, || Ok::<_, ()>(Read(0))).unwrap();
        }
        assert!(
            memo.memo.weight() <= budget,
            "{} > {budget}",
            memo.memo.weight()
        );
        assert!(memo.memo.len() > 10, "it still remembers some");
    }

    #[test]
    fn failures_and_long_bodies_are_not_remembered() {
        let memo: BodyMemo<Read> = BodyMemo::new(1 << 20);
        let body = Bytes::from_static(b"x");
        assert!(memo.read("a", &body, || Err::<Read, _>("bad")).is_err());
        assert_eq!(memo.read("a", &body, || Ok::<_, ()>(Read(7))).unwrap().0, 7);
        let long = Bytes::from(vec![b' '; LONGEST_REMEMBERED + 1]);
        let first = memo.read("a", &long, || Ok::<_, ()>(Read(1))).unwrap();
        let again = memo.read("a", &long, || Ok::<_, ()>(Read(2))).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
    }
}
