//! An in-process backend, correct under concurrency, for tests and single-process programs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, ClockModel, Grant, LeaseRecord,
    RecordState, ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};
use crate::error::BackendError;
use crate::key::LeaseKey;
use crate::token::{FencingToken, HolderMetadata, HolderToken};

/// Leases held in this process's memory.
///
/// Expiry is measured on [`tokio::time::Instant`], so tests may use tokio's paused clock
/// (`tokio::time::pause` / `advance`). Clones share the same store. Waiters are woken on release.
/// A key's first fencing token comes from the clock ([`FencingToken::from_clock`]), then counts up
/// by one.
///
/// ```
/// use lease_core::{Locker, MemoryBackend};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
/// let store = MemoryBackend::new();
/// let a = Locker::new(store.clone());
/// let b = Locker::new(store);
/// let lease = a.try_acquire("job").await?.expect("free");
/// assert!(b.try_acquire("job").await?.is_none());
/// lease.release().await?;
/// assert!(b.try_acquire("job").await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    slots: Mutex<HashMap<LeaseKey, Slot>>,
}

#[derive(Debug)]
struct Slot {
    /// Holder of the current grant, if it has not been released.
    holder: Option<Grantee>,
    /// Last fencing token issued; never decreases.
    fencing: u64,
    changed: Arc<Notify>,
}

#[derive(Debug)]
struct Grantee {
    token: HolderToken,
    metadata: HolderMetadata,
    expires_at: Instant,
    acquired_at: SystemTime,
    ttl: Duration,
}

impl Slot {
    fn new() -> Self {
        Self {
            holder: None,
            fencing: 0,
            changed: Arc::new(Notify::new()),
        }
    }

    fn live_holder(&self, now: Instant) -> Option<&Grantee> {
        self.holder.as_ref().filter(|g| g.expires_at > now)
    }

    fn record(&self, key: &LeaseKey, now: Instant) -> LeaseRecord {
        let fencing = FencingToken::new(self.fencing);
        match &self.holder {
            None => LeaseRecord::free(key.clone(), fencing),
            Some(g) => {
                let state = if g.expires_at > now {
                    RecordState::Held
                } else {
                    RecordState::Expired
                };
                LeaseRecord::held(key.clone(), g.token, fencing)
                    .with_state(state)
                    .with_metadata(g.metadata.clone())
                    .with_acquired_at(g.acquired_at)
                    .with_ttl(g.ttl)
                    .with_expires_in(g.expires_at.saturating_duration_since(now))
            }
        }
    }
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything about `key`, counter included, as if someone had deleted its record
    /// behind the backend's back (the conformance kit's outside writer). The next grant's token
    /// starts from the clock, above every token issued before; a holder of the forgotten grant
    /// finds it gone at its next renewal. Returns whether the key had a record.
    pub fn forget(&self, key: &LeaseKey) -> bool {
        let removed = self.slots().remove(key);
        if let Some(slot) = &removed {
            slot.changed.notify_waiters();
        }
        removed.is_some_and(|slot| slot.fencing > 0)
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<LeaseKey, Slot>> {
        // A panic while holding the lock cannot leave a slot half-written (every update is a
        // single assignment), so a poisoned lock is still consistent.
        self.shared.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn renew_one(slots: &mut HashMap<LeaseKey, Slot>, request: &RenewRequest) -> RenewOutcome {
        let now = Instant::now();
        match slots.get_mut(&request.key).and_then(|s| s.holder.as_mut()) {
            Some(g) if g.token == request.holder && g.expires_at > now => {
                g.expires_at = now + request.ttl;
                g.ttl = request.ttl;
                RenewOutcome::Renewed(request.ttl)
            }
            _ => RenewOutcome::NotHeld,
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            Duration::from_millis(1),
            Duration::from_secs(365 * 24 * 3600),
            ClockModel::StoreClock,
        )
        .with_notifies_waiters(true)
        .with_batch_renew(true)
        .with_break(true)
        .with_takeover_tolerance(Duration::from_millis(50))
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.capabilities()
            .check_ttl(request.ttl)
            .map_err(|e| BackendError::invalid_input("memory", e))?;
        let now = Instant::now();
        let mut slots = self.slots();
        let slot = slots.entry(request.key.clone()).or_insert_with(Slot::new);
        if let Some(live) = slot.live_holder(now) {
            if live.token != request.holder {
                return Ok(AcquireOutcome::Held(Some(Box::new(
                    slot.record(&request.key, now),
                ))));
            }
            // Idempotent re-acquire by the same grant: same token, expiry extended.
            let fencing = FencingToken::new(slot.fencing);
            if let Some(g) = slot.holder.as_mut() {
                g.expires_at = now + request.ttl;
                g.ttl = request.ttl;
            }
            return Ok(AcquireOutcome::Acquired(Grant::new(fencing, request.ttl)));
        }
        // A key with no counter (never granted, or forgotten) starts from the clock, as every
        // backend's does when its record is gone: above any token it could have issued before.
        let next = if slot.fencing == 0 {
            Some(FencingToken::from_clock(None).get())
        } else {
            slot.fencing.checked_add(1)
        };
        let Some(next) = next else {
            return Err(BackendError::corrupt_record(
                "memory",
                format!("fencing counter of {} is exhausted", request.key),
            ));
        };
        slot.fencing = next;
        slot.holder = Some(Grantee {
            token: request.holder,
            metadata: request.metadata.clone(),
            expires_at: now + request.ttl,
            acquired_at: SystemTime::now(),
            ttl: request.ttl,
        });
        Ok(AcquireOutcome::Acquired(Grant::new(
            FencingToken::new(next),
            request.ttl,
        )))
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.capabilities()
            .check_ttl(request.ttl)
            .map_err(|e| BackendError::invalid_input("memory", e))?;
        Ok(Self::renew_one(&mut self.slots(), request))
    }

    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        let caps = self.capabilities();
        let mut slots = self.slots();
        requests
            .iter()
            .map(|r| {
                caps.check_ttl(r.ttl)
                    .map_err(|e| BackendError::invalid_input("memory", e))?;
                Ok(Self::renew_one(&mut slots, r))
            })
            .collect()
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        let now = Instant::now();
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&request.key) else {
            return Ok(ReleaseOutcome::NotHeld);
        };
        match &slot.holder {
            // An expired grant that nobody took over yet is still ours to clean up.
            Some(g) if g.token == request.holder => {
                let was_live = g.expires_at > now;
                slot.holder = None;
                slot.changed.notify_waiters();
                Ok(if was_live {
                    ReleaseOutcome::Released
                } else {
                    ReleaseOutcome::NotHeld
                })
            }
            _ => Ok(ReleaseOutcome::NotHeld),
        }
    }

    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let now = Instant::now();
        Ok(self.slots().get(key).map(|slot| slot.record(key, now)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        let now = Instant::now();
        let slots = self.slots();
        let mut records: Vec<LeaseRecord> = slots
            .iter()
            // Waiters create empty slots (no grant ever): those are not records.
            .filter(|(key, slot)| key.as_str().starts_with(prefix) && slot.fencing > 0)
            .map(|(key, slot)| slot.record(key, now))
            .collect();
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(records)
    }

    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let now = Instant::now();
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(key) else {
            return Ok(None);
        };
        let before = slot.record(key, now);
        slot.holder = None;
        slot.changed.notify_waiters();
        Ok(Some(before))
    }

    async fn wait_for_change(
        &self,
        key: &LeaseKey,
        max_wait: Duration,
    ) -> Result<(), BackendError> {
        let changed = {
            let mut slots = self.slots();
            let slot = slots.entry(key.clone()).or_insert_with(Slot::new);
            Arc::clone(&slot.changed)
        };
        // Subscribe first, then look: a release between the caller's last attempt and this call
        // would otherwise be missed (`notify_waiters` keeps no permit) and the waiter would sleep
        // the whole `max_wait`.
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Instant::now();
        let held = self
            .slots()
            .get(key)
            .is_some_and(|slot| slot.live_holder(now).is_some());
        if !held {
            return Ok(());
        }
        let _ = tokio::time::timeout(max_wait, notified).await;
        Ok(())
    }
}
