//! [`InMemoryConditionalStore`]: the smallest complete [`ConditionalStore`], for tests and as an
//! example.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::store::{ConditionalStore, ReadOutcome, StoredLease, WriteOutcome};
use crate::error::BackendError;
use crate::key::LeaseKey;

/// Lease objects in this process's memory, with a version counter, request counts and a fault
/// hook. Clones share the same objects.
///
/// The version is a counter shared by all objects, so no write ever repeats a version.
///
/// ```
/// use std::time::Duration;
/// use lease_core::{FencingToken, HolderToken, LeaseKey};
/// use lease_core::observed::{ConditionalStore, InMemoryConditionalStore, StoredLease, WriteOutcome};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryConditionalStore::new();
/// let key = LeaseKey::new("k")?;
/// let lease = StoredLease::held(HolderToken::generate(), FencingToken::new(1), Duration::from_secs(5));
/// let WriteOutcome::Written(v1) = store.create(&key, &lease).await? else { panic!() };
/// assert_eq!(store.create(&key, &lease).await?, WriteOutcome::Conflict);
/// assert!(matches!(store.update(&key, &v1, &lease).await?, WriteOutcome::Written(_)));
/// assert_eq!(store.update(&key, &v1, &lease).await?, WriteOutcome::Conflict);
/// assert_eq!(store.calls().updates, 2);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct InMemoryConditionalStore {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<LeaseKey, Object>,
    last_version: u64,
    calls: StoreCalls,
    /// Delays for the next reads: each waits this long between being sent and being served.
    read_delays: Vec<Duration>,
}

#[derive(Clone, Debug)]
enum Object {
    Lease { version: u64, lease: StoredLease },
    Unreadable { version: u64, what: String },
}

/// How many requests of each kind an [`InMemoryConditionalStore`] has served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreCalls {
    /// Reads.
    pub reads: u64,
    /// Creates (answered `Written` or `Conflict`).
    pub creates: u64,
    /// Updates (answered `Written` or `Conflict`).
    pub updates: u64,
    /// Lists.
    pub lists: u64,
}

impl StoreCalls {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.reads + self.creates + self.updates + self.lists
    }
}

impl InMemoryConditionalStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is a few assignments: a poisoned lock is still consistent.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The requests served so far.
    pub fn calls(&self) -> StoreCalls {
        self.state().calls
    }

    /// Puts an object under `key` that reads as corrupt (as garbage in a bucket would), described
    /// by `what` in the error.
    pub fn put_unreadable(&self, key: &LeaseKey, what: impl Into<String>) {
        let mut state = self.state();
        state.last_version += 1;
        let version = state.last_version;
        state.objects.insert(
            key.clone(),
            Object::Unreadable {
                version,
                what: what.into(),
            },
        );
    }

    /// Deletes the object under `key`, as someone deleting it behind the backend's back would.
    /// Returns whether there was one.
    pub fn delete(&self, key: &LeaseKey) -> bool {
        self.state().objects.remove(key).is_some()
    }

    /// The lease stored under `key`, without counting a read (`None` when absent or unreadable).
    pub fn peek(&self, key: &LeaseKey) -> Option<StoredLease> {
        match self.state().objects.get(key) {
            Some(Object::Lease { lease, .. }) => Some(lease.clone()),
            _ => None,
        }
    }

    /// Whether the object under `key` is the unreadable one put there with `what`.
    pub fn is_unreadable(&self, key: &LeaseKey, what: &str) -> bool {
        matches!(self.state().objects.get(key), Some(Object::Unreadable { what: w, .. }) if w == what)
    }

    /// Makes the next read wait `delay` after it is sent before the store serves it (takes its
    /// snapshot): writes sent meanwhile land first. For tests of the observation rule.
    pub fn delay_next_read(&self, delay: Duration) {
        self.state().read_delays.push(delay);
    }

    fn next_version(state: &mut State) -> u64 {
        state.last_version += 1;
        state.last_version
    }

    fn outcome(&self, key: &LeaseKey, object: Option<&Object>) -> ReadOutcome<u64> {
        match object {
            None => ReadOutcome::Absent,
            Some(Object::Lease { version, lease }) => ReadOutcome::Found {
                version: *version,
                lease: lease.clone(),
            },
            Some(Object::Unreadable { version, what }) => ReadOutcome::Corrupt {
                version: *version,
                error: BackendError::corrupt_record(
                    self.name(),
                    format!("lease object {key} is not a lease document: {what}"),
                ),
            },
        }
    }
}

#[async_trait]
impl ConditionalStore for InMemoryConditionalStore {
    type Version = u64;

    fn name(&self) -> &'static str {
        "in-memory-conditional"
    }

    fn ttl_range(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(1),
            Duration::from_secs(365 * 24 * 3600),
        )
    }

    async fn read(&self, key: &LeaseKey) -> Result<ReadOutcome<u64>, BackendError> {
        let delay = {
            let mut state = self.state();
            if state.read_delays.is_empty() {
                None
            } else {
                Some(state.read_delays.remove(0))
            }
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.state();
        state.calls.reads += 1;
        let object = state.objects.get(key).cloned();
        Ok(self.outcome(key, object.as_ref()))
    }

    async fn create(
        &self,
        key: &LeaseKey,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<u64>, BackendError> {
        let mut state = self.state();
        state.calls.creates += 1;
        if state.objects.contains_key(key) {
            return Ok(WriteOutcome::Conflict);
        }
        let version = Self::next_version(&mut state);
        state.objects.insert(
            key.clone(),
            Object::Lease {
                version,
                lease: lease.clone(),
            },
        );
        Ok(WriteOutcome::Written(version))
    }

    async fn update(
        &self,
        key: &LeaseKey,
        expected: &u64,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<u64>, BackendError> {
        let mut state = self.state();
        state.calls.updates += 1;
        let current = match state.objects.get(key) {
            Some(Object::Lease { version, .. } | Object::Unreadable { version, .. }) => *version,
            None => return Ok(WriteOutcome::Conflict),
        };
        if current != *expected {
            return Ok(WriteOutcome::Conflict);
        }
        let version = Self::next_version(&mut state);
        state.objects.insert(
            key.clone(),
            Object::Lease {
                version,
                lease: lease.clone(),
            },
        );
        Ok(WriteOutcome::Written(version))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LeaseKey, ReadOutcome<u64>)>, BackendError> {
        let mut state = self.state();
        state.calls.lists += 1;
        let mut found: Vec<(LeaseKey, Object)> = state
            .objects
            .iter()
            .filter(|(key, _)| key.as_str().starts_with(prefix))
            .map(|(key, object)| (key.clone(), object.clone()))
            .collect();
        drop(state);
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found
            .into_iter()
            .map(|(key, object)| {
                let outcome = self.outcome(&key, Some(&object));
                (key, outcome)
            })
            .collect())
    }
}
