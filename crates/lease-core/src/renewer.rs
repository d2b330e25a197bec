//! Background renewal of every lease a [`Locker`](crate::Locker) holds, in batches.
//!
//! One task per locker (started when the first lease is taken, ended when none is left) renews all
//! leases that are due in one [`Backend::renew_many`] call, so a process holding 10,000 leases sends
//! one batch per renew interval to a backend that can batch. The same task fires each lease's lost
//! signal at its deadline, even while a batch is still in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::backend::{Backend, RenewOutcome, RenewRequest};
use crate::error::{BackendError, LostReason};
use crate::lease::LeaseState;
use crate::options::LockerOptions;

type Delays = Box<dyn Iterator<Item = std::time::Duration> + Send>;

pub(crate) struct Renewer {
    shared: Arc<Shared>,
}

struct Shared {
    backend: Arc<dyn Backend>,
    options: LockerOptions,
    entries: Mutex<Entries>,
    wake: Notify,
}

#[derive(Default)]
struct Entries {
    leases: HashMap<u64, Entry>,
    next_id: u64,
    /// The renewal task, while one runs. A finished handle (the task ended because no lease was
    /// left, or its runtime shut down) is replaced by a new task on the next lease.
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Entry {
    state: Arc<LeaseState>,
    /// When to send the next renewal (a regular interval, or a retry after a failure).
    next_renew: Instant,
    /// Backoff after consecutive failures; `None` while renewals succeed.
    retry: Option<Delays>,
}

impl Renewer {
    pub(crate) fn new(backend: Arc<dyn Backend>, options: LockerOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                backend,
                options,
                entries: Mutex::new(Entries::default()),
                wake: Notify::new(),
            }),
        }
    }

    /// Puts a freshly granted lease (whose acquire request was sent at `sent`) on the schedule.
    pub(crate) fn add(&self, state: Arc<LeaseState>, sent: Instant) -> u64 {
        let mut entries = self.shared.lock();
        let id = entries.next_id;
        entries.next_id += 1;
        entries.leases.insert(
            id,
            Entry {
                state,
                next_renew: sent + self.shared.options.renew_interval,
                retry: None,
            },
        );
        if entries.task.as_ref().is_none_or(|t| t.is_finished()) {
            entries.task = Some(tokio::spawn(Arc::clone(&self.shared).run()));
        } else {
            self.shared.wake.notify_one();
        }
        id
    }

    /// Takes a lease off the schedule (it was released or dropped).
    pub(crate) fn remove(&self, id: u64) {
        if self.shared.lock().leases.remove(&id).is_some() {
            self.shared.wake.notify_one();
        }
    }

    /// How many leases are on the schedule.
    pub(crate) fn len(&self) -> usize {
        self.shared.lock().leases.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fires the lost signal of every lease whose deadline has passed and drops lost leases.
    /// Returns the earliest deadline left, if any.
    fn expire_overdue(&self, entries: &mut Entries) -> Option<Instant> {
        let now = Instant::now();
        entries.leases.retain(|_, entry| {
            if entry.state.is_marked_lost() {
                return false;
            }
            if now >= entry.state.deadline() {
                tracing::warn!(key = %entry.state.key, fencing = %entry.state.fencing,
                    "lease lost: deadline passed without a confirmed renewal");
                entry.state.mark_lost(LostReason::DeadlineExpired);
                return false;
            }
            true
        });
        entries.leases.values().map(|e| e.state.deadline()).min()
    }

    async fn run(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let (batch, next_wake) = {
                let mut entries = self.lock();
                let Some(earliest_deadline) = self.expire_overdue(&mut entries) else {
                    entries.task = None;
                    return;
                };
                let next_renew = entries.leases.values().map(|e| e.next_renew).min();
                let mut batch = Vec::new();
                if next_renew.is_some_and(|t| t <= now) {
                    let regular_due = entries
                        .leases
                        .values()
                        .any(|e| e.retry.is_none() && e.next_renew <= now);
                    // A regular renewal takes every lease, not only the due ones: renewing early
                    // is harmless, and it keeps all leases of a locker in one batch (one call) per
                    // interval, however scattered their acquisition times. A retry after a failure
                    // takes only the failing leases, so one sick lease does not make the whole
                    // batch resend at the retry cadence.
                    let horizon = now + self.options.renew_interval;
                    batch.extend(
                        entries
                            .leases
                            .iter()
                            .filter(|(_, e)| {
                                if regular_due {
                                    e.next_renew <= horizon
                                } else {
                                    e.retry.is_some() && e.next_renew <= now
                                }
                            })
                            .map(|(id, e)| (*id, Arc::clone(&e.state))),
                    );
                }
                let next_wake = next_renew.map_or(earliest_deadline, |t| t.min(earliest_deadline));
                (batch, next_wake)
            };
            if batch.is_empty() {
                tokio::select! {
                    () = tokio::time::sleep_until(next_wake) => {}
                    () = self.wake.notified() => {}
                }
                continue;
            }
            self.renew_batch(batch).await;
        }
    }

    async fn renew_batch(&self, batch: Vec<(u64, Arc<LeaseState>)>) {
        let requests: Vec<RenewRequest> = batch
            .iter()
            .map(|(_, s)| RenewRequest::new(s.key.clone(), s.holder, self.options.ttl))
            .collect();
        // Every call is bounded by the remaining lease: no answer after the latest deadline in the
        // batch can help any lease in it. (Bounding by the earliest would let the sickest lease
        // cut the call short for all; a lease whose own deadline passes meanwhile is ended by the
        // watchdog below, and a late answer cannot revive it.)
        let bound = batch
            .iter()
            .map(|(_, s)| s.deadline())
            .max()
            .unwrap_or_else(Instant::now);
        let sent = Instant::now();
        let started = std::time::Instant::now();
        // A panicking backend must not kill renewal silently: it ends the batch's leases as lost.
        let span = tracing::debug_span!(
            "backend_call",
            backend = self.backend.name(),
            op = "renew_many",
            leases = requests.len()
        );
        let call = tokio::time::timeout_at(
            bound,
            AssertUnwindSafe(self.backend.renew_many(&requests).instrument(span)).catch_unwind(),
        );
        tokio::pin!(call);
        // While the batch is in flight, keep firing lost signals of any lease (in the batch or not,
        // including leases added meanwhile) whose deadline passes.
        let results = loop {
            let next_deadline = {
                let mut entries = self.lock();
                self.expire_overdue(&mut entries)
            };
            let watchdog = tokio::time::sleep_until(next_deadline.unwrap_or(bound));
            tokio::select! {
                // An answer that is ready at the same instant as a deadline is looked at first,
                // and judged against that deadline by `LeaseState::extend`.
                biased;
                result = &mut call => break result,
                () = watchdog => {}
                // A lease added mid-batch may have the earliest deadline: recompute.
                () = self.wake.notified() => {}
            }
        };
        let mut results = match results {
            Ok(Ok(results)) => results,
            Ok(Err(panic)) => {
                let what = panic_message(panic.as_ref());
                tracing::error!(backend = self.backend.name(), panic = %what,
                    "lease lost: the backend panicked during renewal");
                let mut entries = self.lock();
                for (id, state) in batch {
                    state.mark_lost(LostReason::FatalBackendError);
                    entries.leases.remove(&id);
                }
                return;
            }
            // A timeout leaves no results: every lease in the batch counts as a transient failure.
            Err(_) => Vec::new(),
        };
        if results.len() != requests.len() {
            let why = if results.is_empty() {
                "renewal timed out before the lease deadline"
            } else {
                "backend returned the wrong number of renewal results"
            };
            results = (0..requests.len())
                .map(|_| Err(BackendError::transient(self.backend.name(), why)))
                .collect();
        }
        crate::metrics::renew_batch(self.backend.name(), sent.elapsed(), &results);
        tracing::debug!(
            backend = self.backend.name(),
            op = "renew_many",
            leases = requests.len(),
            latency_ms = started.elapsed().as_secs_f64() * 1e3,
            "renewal batch"
        );
        let now = Instant::now();
        let mut entries = self.lock();
        for ((id, state), result) in batch.into_iter().zip(results) {
            let Some(entry) = entries.leases.get_mut(&id) else {
                continue; // released while the batch was in flight
            };
            state.observer.renewal_answered(&result);
            match result {
                Ok(RenewOutcome::Renewed(granted)) => {
                    if state.extend(sent + self.options.holder_window(granted)) {
                        entry.next_renew = sent + self.options.renew_interval;
                        entry.retry = None;
                    } else {
                        state.mark_lost(LostReason::DeadlineExpired);
                        entries.leases.remove(&id);
                    }
                }
                Ok(RenewOutcome::NotHeld) => {
                    tracing::warn!(key = %state.key, fencing = %state.fencing,
                        "lease lost: the backend says it is no longer ours");
                    state.mark_lost(LostReason::NotHeld);
                    entries.leases.remove(&id);
                }
                Err(e) if e.is_transient() => {
                    let retry = entry
                        .retry
                        .get_or_insert_with(|| Box::new(self.options.retry.delays()));
                    let delay = retry.next().unwrap_or(self.options.retry.max_delay);
                    tracing::warn!(key = %state.key, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "renewal failed; retrying until the deadline");
                    entry.next_renew = now + delay;
                }
                Err(e) => {
                    tracing::error!(key = %state.key, error = %e, "lease lost: renewal failed fatally");
                    state.mark_lost(LostReason::FatalBackendError);
                    entries.leases.remove(&id);
                }
            }
        }
    }
}

/// The message of a caught panic, when it is a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}
