//! [`ObservedExpiryBackend`]: the lease protocol's store side on top of a [`ConditionalStore`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::rule::ObservationRule;
use super::store::{ConditionalStore, ReadOutcome, StoredLease, WriteOutcome};
use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, ClockModel, Grant, LeaseRecord,
    RecordState, ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};
use crate::error::BackendError;
use crate::key::LeaseKey;
use crate::token::{FencingToken, HolderToken};

/// How many renewals [`ObservedExpiryBackend`] sends at once (each is one conditional write).
pub const RENEW_CONCURRENCY: usize = 32;

/// How many keys [`ObservedExpiryBackend`] remembers by default before it forgets them all.
pub const KEY_CACHE_LIMIT: usize = 100_000;

/// A lease [`Backend`] over a store with conditional writes and no clock, deciding expiry by the
/// [`ObservationRule`].
///
/// It remembers, per key, the version it last read and when the response of the first read that
/// returned that version arrived (on [`tokio::time::Instant`], so tests can pause the clock); a
/// held record is taken over only when that version has been seen unchanged for
/// [`ObservationRule::takeover_after`] the record's TTL. It also remembers its own last write per
/// key and holder, so renew and release are one conditional write each (a read first only when
/// that write conflicts or nothing is cached).
///
/// Request costs: acquire of a key this instance has not seen is one create; of a known key, one
/// read plus one conditional update when it is granted; renew and release one update. Objects are
/// never deleted by the backend. A key whose object is absent (new, or deleted by someone else)
/// gets its first token from the clock ([`FencingToken::from_clock`]), so the counter never goes
/// back even when the object is deleted behind the backend's back. Create one instance per process and share
/// it: observations made by one instance are not known to another.
///
/// See the [module documentation](super) for an example.
pub struct ObservedExpiryBackend<S: ConditionalStore> {
    store: S,
    rule: ObservationRule,
    keys: Mutex<HashMap<LeaseKey, KeyState<S::Version>>>,
    key_limit: usize,
}

/// What this instance knows about one key.
struct KeyState<V> {
    /// An object exists (so acquire reads first instead of trying to create).
    exists: bool,
    /// The version last read, and when the response of the first read returning it arrived.
    observed: Option<(V, Instant)>,
    /// This instance's last successful write per holder token.
    own: HashMap<HolderToken, (V, StoredLease)>,
}

impl<V> Default for KeyState<V> {
    fn default() -> Self {
        Self {
            exists: false,
            observed: None,
            own: HashMap::new(),
        }
    }
}

impl<S: ConditionalStore> fmt::Debug for ObservedExpiryBackend<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedExpiryBackend")
            .field("store", &self.store)
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

/// A read's result with the observation it updated.
struct Observed<V> {
    outcome: ReadOutcome<V>,
    /// How long this instance has seen the version read (zero for a new one).
    seen_for: Duration,
}

impl<S: ConditionalStore> ObservedExpiryBackend<S> {
    /// A backend over `store` with the default [`ObservationRule`].
    pub fn new(store: S) -> Self {
        Self::with_rule(store, ObservationRule::default())
    }

    /// A backend over `store` with `rule`.
    pub fn with_rule(store: S, rule: ObservationRule) -> Self {
        Self {
            store,
            rule,
            keys: Mutex::new(HashMap::new()),
            key_limit: KEY_CACHE_LIMIT,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The rule in force.
    pub fn rule(&self) -> ObservationRule {
        self.rule
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<LeaseKey, KeyState<S::Version>>> {
        // Every update under this lock is a few assignments; a panic elsewhere cannot leave it
        // half-done, so a poisoned lock is still consistent.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_key<T>(&self, key: &LeaseKey, f: impl FnOnce(&mut KeyState<S::Version>) -> T) -> T {
        let mut keys = self.keys();
        if keys.len() >= self.key_limit && !keys.contains_key(key) {
            // Entries of leases lost without a release are never removed one by one. Forgetting
            // is safe: an observation starts again (a takeover only waits longer), and a renew or
            // release without its cached version reads first.
            keys.clear();
        }
        f(keys.entry(key.clone()).or_default())
    }

    /// Sets how many keys this instance remembers (observations and its own last writes) before
    /// it forgets them all; [`KEY_CACHE_LIMIT`] by default. Forgetting costs requests, never
    /// safety: observations start again and renewals read first.
    pub fn with_key_limit(mut self, limit: usize) -> Self {
        self.key_limit = limit.max(1);
        self
    }

    /// How many keys this instance remembers now.
    pub fn remembered_keys(&self) -> usize {
        self.keys().len()
    }

    fn known_to_exist(&self, key: &LeaseKey) -> bool {
        self.keys().get(key).is_some_and(|k| k.exists)
    }

    /// Records the answer to a read whose response arrived at `arrived`; returns how long the
    /// version it returned has been seen.
    fn observe(&self, key: &LeaseKey, version: Option<&S::Version>, arrived: Instant) -> Duration {
        self.with_key(key, |state| {
            state.exists = version.is_some();
            match (version, &state.observed) {
                (None, _) => {
                    state.observed = None;
                    Duration::ZERO
                }
                (Some(v), Some((seen, since))) if seen == v => {
                    arrived.saturating_duration_since(*since)
                }
                (Some(v), _) => {
                    state.observed = Some((v.clone(), arrived));
                    Duration::ZERO
                }
            }
        })
    }

    /// One read, observed. The observation counts from the instant the response arrived — taken
    /// after the read returns, never before it was sent: a write sent after the read left may land
    /// before the store serves it, and its holder's deadline counts from that later send.
    async fn read(&self, key: &LeaseKey) -> Result<Observed<S::Version>, BackendError> {
        let outcome = self.store.read(key).await?;
        let arrived = Instant::now();
        let version = match &outcome {
            ReadOutcome::Absent => None,
            ReadOutcome::Found { version, .. } | ReadOutcome::Corrupt { version, .. } => {
                Some(version)
            }
        };
        let seen_for = self.observe(key, version, arrived);
        Ok(Observed { outcome, seen_for })
    }

    fn remember_own(
        &self,
        key: &LeaseKey,
        holder: HolderToken,
        version: S::Version,
        lease: StoredLease,
    ) {
        self.with_key(key, |state| {
            state.exists = true;
            state.own.insert(holder, (version, lease));
        });
    }

    fn cached_own(
        &self,
        key: &LeaseKey,
        holder: &HolderToken,
    ) -> Option<(S::Version, StoredLease)> {
        self.keys()
            .get(key)
            .and_then(|state| state.own.get(holder).cloned())
    }

    fn forget_own(&self, key: &LeaseKey, holder: &HolderToken) {
        if let Some(state) = self.keys().get_mut(key) {
            state.own.remove(holder);
        }
    }

    fn check_ttl(&self, ttl: Duration) -> Result<(), BackendError> {
        self.capabilities()
            .check_ttl(ttl)
            .map_err(|e| BackendError::invalid_input(self.store.name(), e))
    }

    fn corrupt(&self, key: &LeaseKey, what: &str) -> BackendError {
        BackendError::corrupt_record(self.store.name(), format!("lease object {key}: {what}"))
    }

    /// The record a read returned, judged by this instance's observation.
    fn record(&self, key: &LeaseKey, lease: &StoredLease, seen_for: Duration) -> LeaseRecord {
        let Some(holder) = lease.holder else {
            return LeaseRecord::free(key.clone(), lease.fencing);
        };
        let mut record = LeaseRecord::held(key.clone(), holder, lease.fencing);
        if let Some(metadata) = &lease.metadata {
            record = record.with_metadata(metadata.clone());
        }
        if let Some(at) = lease.acquired_at {
            record = record.with_acquired_at(at);
        }
        if let Some(ttl) = lease.ttl {
            let wait = self.rule.takeover_after(ttl);
            let left = wait.saturating_sub(seen_for);
            record = record.with_ttl(ttl).with_expires_in(left);
            if left.is_zero() {
                record = record.with_state(RecordState::Expired);
            }
        }
        record
    }

    /// After a conditional write of ours was refused: what the object says now, as the answer to
    /// an acquire (a grant of ours found there came from an earlier attempt with this token, and
    /// the protocol counts its deadline from that attempt).
    async fn held_answer(&self, key: &LeaseKey) -> Result<AcquireOutcome, BackendError> {
        let observed = self.read(key).await?;
        match observed.outcome {
            ReadOutcome::Absent => Ok(AcquireOutcome::Held(None)),
            ReadOutcome::Found { lease, .. } => Ok(AcquireOutcome::Held(Some(Box::new(
                self.record(key, &lease, observed.seen_for),
            )))),
            ReadOutcome::Corrupt { error, .. } => Err(error),
        }
    }

    /// Grants `request` by writing `lease`: a create when `expected` is `None`, else an update.
    async fn write_grant(
        &self,
        request: &AcquireRequest,
        expected: Option<&S::Version>,
        lease: StoredLease,
    ) -> Result<AcquireOutcome, BackendError> {
        let key = &request.key;
        let written = match expected {
            None => self.store.create(key, &lease).await,
            Some(version) => self.store.update(key, version, &lease).await,
        };
        match written {
            Ok(WriteOutcome::Written(version)) => {
                let grant = Grant::new(lease.fencing, request.ttl);
                self.remember_own(key, request.holder, version, lease);
                Ok(AcquireOutcome::Acquired(grant))
            }
            Ok(WriteOutcome::Conflict) => {
                self.with_key(key, |state| state.exists = true);
                self.held_answer(key).await
            }
            Err(e) => {
                // The write may have landed: the cache no longer knows the version.
                self.forget_own(key, &request.holder);
                Err(e)
            }
        }
    }

    fn new_grant(
        &self,
        request: &AcquireRequest,
        fencing: FencingToken,
        revision: u64,
    ) -> StoredLease {
        StoredLease::held(request.holder, fencing, request.ttl)
            .with_metadata(request.metadata.clone())
            .with_revision(revision)
    }

    fn next_fencing(
        &self,
        key: &LeaseKey,
        lease: &StoredLease,
    ) -> Result<FencingToken, BackendError> {
        lease
            .fencing
            .get()
            .checked_add(1)
            .map(FencingToken::new)
            .ok_or_else(|| self.corrupt(key, "the fencing counter is exhausted"))
    }

    /// Finds our own grant of `key` by reading, and writes `next(lease)` over it. `None`: the
    /// object is not ours (or is gone).
    async fn rewrite_own(
        &self,
        key: &LeaseKey,
        holder: HolderToken,
        next: impl FnOnce(&StoredLease) -> StoredLease,
    ) -> Result<Option<StoredLease>, BackendError> {
        let observed = self.read(key).await?;
        let (version, current) = match observed.outcome {
            ReadOutcome::Found { version, lease } if lease.holder == Some(holder) => {
                (version, lease)
            }
            ReadOutcome::Found { .. } | ReadOutcome::Absent => {
                self.forget_own(key, &holder);
                return Ok(None);
            }
            ReadOutcome::Corrupt { error, .. } => return Err(error),
        };
        let lease = next(&current);
        match self.store.update(key, &version, &lease).await {
            Ok(WriteOutcome::Written(version)) => {
                self.remember_own(key, holder, version, lease.clone());
                Ok(Some(lease))
            }
            Ok(WriteOutcome::Conflict) => Err(BackendError::transient(
                self.store.name(),
                format!("lease object {key} changed between read and write; try again"),
            )),
            Err(e) => Err(e),
        }
    }

    /// One conditional write on our cached version of our own grant. `None`: nothing cached, or
    /// the object changed since (the caller reads).
    async fn rewrite_cached(
        &self,
        key: &LeaseKey,
        holder: HolderToken,
        next: impl FnOnce(&StoredLease) -> StoredLease,
    ) -> Result<Option<StoredLease>, BackendError> {
        let Some((version, cached)) = self.cached_own(key, &holder) else {
            return Ok(None);
        };
        let lease = next(&cached);
        match self.store.update(key, &version, &lease).await {
            Ok(WriteOutcome::Written(version)) => {
                self.remember_own(key, holder, version, lease.clone());
                Ok(Some(lease))
            }
            Ok(WriteOutcome::Conflict) => {
                self.forget_own(key, &holder);
                Ok(None)
            }
            Err(e) => {
                self.forget_own(key, &holder);
                Err(e)
            }
        }
    }
}

#[async_trait]
impl<S: ConditionalStore> Backend for ObservedExpiryBackend<S> {
    fn name(&self) -> &'static str {
        self.store.name()
    }

    fn capabilities(&self) -> Capabilities {
        let (min_ttl, max_ttl) = self.store.ttl_range();
        Capabilities::new(min_ttl, max_ttl, ClockModel::ObservedExpiry)
            .with_break(true)
            .with_observation(self.rule)
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.check_ttl(request.ttl)?;
        let key = &request.key;
        if !self.known_to_exist(key) {
            // A fresh key costs one request. If the object exists, read it and decide below (it
            // may be free, or ours).
            let first = self.new_grant(request, FencingToken::from_clock(None), 1);
            match self.store.create(key, &first).await? {
                WriteOutcome::Written(version) => {
                    let grant = Grant::new(first.fencing, request.ttl);
                    self.remember_own(key, request.holder, version, first);
                    return Ok(AcquireOutcome::Acquired(grant));
                }
                WriteOutcome::Conflict => self.with_key(key, |state| state.exists = true),
            }
        }
        let observed = self.read(key).await?;
        let (version, current) = match observed.outcome {
            ReadOutcome::Absent => {
                // Deleted behind our back (by hand, a lifecycle rule): the counter restarts from
                // the clock, above every token it issued (see `FencingToken::from_clock`).
                let first = self.new_grant(request, FencingToken::from_clock(None), 1);
                return self.write_grant(request, None, first).await;
            }
            ReadOutcome::Corrupt { error, .. } => return Err(error),
            ReadOutcome::Found { version, lease } => (version, lease),
        };
        let revision = current.revision.wrapping_add(1);
        let next = match current.holder {
            None => self.new_grant(request, self.next_fencing(key, &current)?, revision),
            // The same grant asking again (a retried acquire): same token, a fresh TTL.
            Some(holder) if holder == request.holder => {
                let mut again = current.renewed(request.ttl);
                again.metadata = Some(request.metadata.clone());
                again
            }
            Some(_) => {
                let Some(ttl) = current.ttl else {
                    return Err(self.corrupt(key, "a held lease without a TTL"));
                };
                if observed.seen_for < self.rule.takeover_after(ttl) {
                    let record = self.record(key, &current, observed.seen_for);
                    return Ok(AcquireOutcome::Held(Some(Box::new(record))));
                }
                tracing::info!(key = %key, fencing = %current.fencing, seen_for_ms = observed.seen_for.as_millis() as u64,
                    "taking over a lease observed unchanged past the observed-expiry rule");
                self.new_grant(request, self.next_fencing(key, &current)?, revision)
            }
        };
        self.write_grant(request, Some(&version), next).await
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.check_ttl(request.ttl)?;
        let (key, holder, ttl) = (&request.key, request.holder, request.ttl);
        if self
            .rewrite_cached(key, holder, |l| l.renewed(ttl))
            .await?
            .is_some()
        {
            return Ok(RenewOutcome::Renewed(ttl));
        }
        Ok(
            match self.rewrite_own(key, holder, |l| l.renewed(ttl)).await? {
                Some(_) => RenewOutcome::Renewed(ttl),
                None => RenewOutcome::NotHeld,
            },
        )
    }

    /// Renews up to [`RENEW_CONCURRENCY`] leases at a time: an object store has no batch write,
    /// and one after the other, a few dozen renewals would outlast a short TTL.
    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        let mut results = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(RENEW_CONCURRENCY) {
            let mut renewals = Vec::with_capacity(chunk.len());
            for request in chunk {
                renewals.push(self.renew(request));
            }
            results.extend(futures_util::future::join_all(renewals).await);
        }
        results
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        let (key, holder) = (&request.key, request.holder);
        let done = match self
            .rewrite_cached(key, holder, StoredLease::released)
            .await?
        {
            Some(free) => Some(free),
            None => self.rewrite_own(key, holder, StoredLease::released).await?,
        };
        self.forget_own(key, &holder);
        Ok(match done {
            Some(_) => ReleaseOutcome::Released,
            None => ReleaseOutcome::NotHeld,
        })
    }

    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let observed = self.read(key).await?;
        match observed.outcome {
            ReadOutcome::Absent => Ok(None),
            ReadOutcome::Found { lease, .. } => {
                Ok(Some(self.record(key, &lease, observed.seen_for)))
            }
            ReadOutcome::Corrupt { error, .. } => Err(error),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        let objects = self.store.list(prefix).await?;
        // Later than every read's response: a safe (late) start for each observation.
        let arrived = Instant::now();
        let mut records = Vec::with_capacity(objects.len());
        for (key, outcome) in objects {
            match outcome {
                ReadOutcome::Absent => {}
                ReadOutcome::Found { version, lease } => {
                    let seen_for = self.observe(&key, Some(&version), arrived);
                    records.push(self.record(&key, &lease, seen_for));
                }
                // One undecodable object does not hide the others: it is reported in its place.
                ReadOutcome::Corrupt { error, .. } => {
                    records.push(LeaseRecord::unreadable(key, error.message()));
                }
            }
        }
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(records)
    }

    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let observed = self.read(key).await?;
        let (version, before, free) = match observed.outcome {
            ReadOutcome::Absent => return Ok(None),
            ReadOutcome::Found { lease, .. } if lease.is_free() => {
                return Ok(Some(self.record(key, &lease, observed.seen_for)));
            }
            ReadOutcome::Found { version, lease } => {
                let before = self.record(key, &lease, observed.seen_for);
                (version, before, lease.released())
            }
            ReadOutcome::Corrupt { version, error } => {
                // Only an explicit break overwrites an object we cannot read. Its counter is
                // unknown, so it restarts above any value it can have reached.
                let fencing = FencingToken::from_clock(None);
                tracing::warn!(key = %key, error = %error, fencing = %fencing,
                    "break overwrites an unreadable lease object; fencing restarts from the clock");
                let free = StoredLease::free(fencing);
                (version, LeaseRecord::free(key.clone(), fencing), free)
            }
        };
        match self.store.update(key, &version, &free).await? {
            WriteOutcome::Written(_) => Ok(Some(before)),
            WriteOutcome::Conflict => Err(BackendError::transient(
                self.store.name(),
                format!("lease object {key} changed while breaking it; try again"),
            )),
        }
    }
}
