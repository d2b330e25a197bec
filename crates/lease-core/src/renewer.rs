//! Background renewal of every lease a [`Locker`](crate::Locker) holds, in batches.
//!
//! One task per locker (started when the first lease is taken, ended when none is left) renews all
//! leases that are due in one [`Backend::renew_many`] call, so a process holding 10,000 leases sends
//! one batch per renew interval to a backend that can batch. The same task fires each lease's lost
//! signal at its deadline, even while a batch is still in flight.
//!
//! The task runs on one runtime, but leases may come from several (a `#[tokio::test]`, a blocking
//! pool, an application with two runtimes). When the task's runtime shuts down while leases are
//! left, the task moves to another runtime one of those leases came from; when none is running, a
//! plain thread fires their lost signals at their deadlines (nothing can renew them without a
//! runtime), until a lease taken on a running runtime starts a task again.

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
    /// A task is being started (outside the lock): a task dropped meanwhile leaves the choice of
    /// runtime to the starter.
    starting: bool,
    /// A thread fires lost signals because no runtime is left to run the task.
    watching: bool,
    /// When the renewal task will next look at the schedule on its own, as it computed from the
    /// entries under this lock; `None` when unknown (no task yet, or one just started). A new
    /// lease wakes the task only if it is due before then: waking it for every lease made taking
    /// n leases cost n scans of the whole schedule.
    wakes_at: Option<Wake>,
}

/// The renewal task's own next look at the schedule.
#[derive(Clone, Copy)]
struct Wake {
    at: Instant,
    /// A batch is in flight: until it is answered the task watches deadlines only (it sweeps
    /// everything again right after the answer).
    deadlines_only: bool,
}

/// What one sweep of the schedule found (every lease left is held and not overdue).
struct Sweep {
    earliest_deadline: Instant,
    earliest_renewal: Instant,
    /// A lease on the regular schedule (not retrying after a failure) is due for renewal.
    regular_due: bool,
}

struct Entry {
    state: Arc<LeaseState>,
    /// The runtime the lease was taken on: where the renewal task may move if its own shuts down.
    runtime: tokio::runtime::Handle,
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
        let runtime = tokio::runtime::Handle::current();
        let next_renew = sent + self.shared.options.renew_interval;
        let deadline = state.deadline();
        // Wake the task only if this lease is due before the task looks again by itself.
        let wake = entries.wakes_at.is_none_or(|w| {
            let due = if w.deadlines_only {
                deadline
            } else {
                deadline.min(next_renew)
            };
            due < w.at
        });
        entries.leases.insert(
            id,
            Entry {
                state,
                runtime: runtime.clone(),
                next_renew,
                retry: None,
            },
        );
        drop(entries);
        self.shared.ensure_task(&runtime);
        if wake {
            self.shared.wake.notify_one();
        }
        id
    }

    /// Takes a lease off the schedule (it was released or dropped). Only the last one wakes the
    /// task, which then ends: with leases left, the task looking at the schedule at the time it
    /// chose finds nothing due it did not already know of.
    pub(crate) fn remove(&self, id: u64) {
        let mut entries = self.shared.lock();
        if entries.leases.remove(&id).is_some() && entries.leases.is_empty() {
            drop(entries);
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

    /// Fires the lost signal of every lease whose deadline has passed and drops lost leases, in
    /// one pass that also finds the earliest deadline and renewal left (`None`: no lease left).
    fn expire_overdue(&self, entries: &mut Entries) -> Option<Sweep> {
        let now = Instant::now();
        let mut sweep: Option<Sweep> = None;
        entries.leases.retain(|_, entry| {
            if entry.state.is_marked_lost() {
                return false;
            }
            let deadline = entry.state.deadline();
            if now >= deadline {
                tracing::warn!(key = %entry.state.key, fencing = %entry.state.fencing,
                    "lease lost: deadline passed without a confirmed renewal");
                entry.state.mark_lost(LostReason::DeadlineExpired);
                return false;
            }
            let regular_due = entry.retry.is_none() && entry.next_renew <= now;
            let s = sweep.get_or_insert(Sweep {
                earliest_deadline: deadline,
                earliest_renewal: entry.next_renew,
                regular_due,
            });
            s.earliest_deadline = s.earliest_deadline.min(deadline);
            s.earliest_renewal = s.earliest_renewal.min(entry.next_renew);
            s.regular_due |= regular_due;
            true
        });
        sweep
    }

    /// Starts the renewal task on `runtime` unless one is running (or being started). Returns
    /// `false` if `runtime` is shut down. Call it without the lock held: a task spawned on a
    /// runtime that is shut down is dropped at once, and its guard takes the lock.
    fn ensure_task(self: &Arc<Self>, runtime: &tokio::runtime::Handle) -> bool {
        {
            let mut entries = self.lock();
            if entries.starting || entries.task.as_ref().is_some_and(|t| !t.is_finished()) {
                return true;
            }
            entries.starting = true;
            // The new task sweeps the schedule before it sleeps; until then any lease wakes it.
            entries.wakes_at = None;
        }
        let task = runtime.spawn(Arc::clone(self).run());
        let mut entries = self.lock();
        entries.starting = false;
        if task.is_finished() {
            return false;
        }
        entries.task = Some(task);
        true
    }

    /// The renewal task. The guard is made before the first poll: a task that its runtime drops
    /// unpolled (a current-thread runtime shut down before it ran again) still hands its leases
    /// on.
    fn run(self: Arc<Self>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let guard = TaskGuard {
            shared: Arc::clone(&self),
            ended: false,
        };
        self.renew_until_none_left(guard)
    }

    async fn renew_until_none_left(self: Arc<Self>, mut guard: TaskGuard) {
        loop {
            let now = Instant::now();
            let (batch, next_wake) = {
                let mut entries = self.lock();
                let Some(sweep) = self.expire_overdue(&mut entries) else {
                    entries.task = None;
                    entries.wakes_at = None;
                    guard.ended = true;
                    return;
                };
                let mut batch = Vec::new();
                if sweep.earliest_renewal <= now {
                    let regular_due = sweep.regular_due;
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
                let next_wake = sweep.earliest_renewal.min(sweep.earliest_deadline);
                entries.wakes_at = Some(Wake {
                    at: next_wake,
                    deadlines_only: !batch.is_empty(),
                });
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
        // Every call is bounded by the remaining lease: no answer after the latest deadline in the
        // batch can help any lease in it. (Bounding by the earliest would let the sickest lease
        // cut the call short for all; a lease whose own deadline passes meanwhile is ended by the
        // watchdog below, and a late answer cannot revive it.)
        let mut latest_deadline: Option<Instant> = None;
        let requests: Vec<RenewRequest> = batch
            .iter()
            .map(|(_, s)| {
                latest_deadline = latest_deadline.max(Some(s.deadline()));
                RenewRequest::new(s.key.clone(), s.holder, self.options.ttl)
            })
            .collect();
        let bound = latest_deadline.unwrap_or_else(Instant::now);
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
            let watch_until = {
                let mut entries = self.lock();
                let until = self
                    .expire_overdue(&mut entries)
                    .map_or(bound, |s| s.earliest_deadline);
                entries.wakes_at = Some(Wake {
                    at: until,
                    deadlines_only: true,
                });
                until
            };
            let watchdog = tokio::time::sleep_until(watch_until);
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
                    // Never trust a grant longer than the one asked for: a store that rounds up
                    // (or reports "infinite") would stretch the deadline past its own expiry.
                    let granted = granted.min(self.options.ttl);
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

impl Shared {
    /// The renewal task was dropped with leases left (its runtime shut down): starts it again on
    /// a running runtime one of the leases was taken on, or, if none is running, on a thread that
    /// fires the lost signals at the deadlines.
    fn rehome(self: &Arc<Self>) {
        let runtimes: Vec<tokio::runtime::Handle> = {
            let mut entries = self.lock();
            if entries.starting {
                return; // dropped unstarted: the starter sees it finished and chooses again
            }
            entries.task = None;
            let mut seen = std::collections::HashSet::new();
            entries
                .leases
                .values()
                .filter(|e| seen.insert(e.runtime.id()))
                .map(|e| e.runtime.clone())
                .collect()
        };
        if runtimes.is_empty() {
            return;
        }
        // The runtime that dropped the task is shut down, so spawning there fails at once.
        if runtimes.iter().any(|runtime| self.ensure_task(runtime)) {
            tracing::debug!("the renewal task's runtime shut down; renewal moved to another");
            return;
        }
        {
            let mut entries = self.lock();
            if entries.watching {
                return;
            }
            entries.watching = true;
        }
        tracing::warn!(
            "the renewal task's runtime shut down and no runtime that took these leases is \
             running: they cannot be renewed, and a thread fires their lost signals at their \
             deadlines"
        );
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("lease-lost-watchdog".into())
            .spawn(move || shared.watch_without_runtime());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the lost-signal thread");
            self.lock().watching = false;
        }
    }

    /// Fires lost signals at their deadlines (on the monotonic clock, outside any runtime) until
    /// no lease is left or a renewal task runs again.
    fn watch_without_runtime(&self) {
        loop {
            let earliest = {
                let mut entries = self.lock();
                // A task running again (a lease was taken on a running runtime) takes over.
                let running = entries.task.as_ref().is_some_and(|t| !t.is_finished());
                let earliest = if running {
                    None
                } else {
                    self.expire_overdue(&mut entries)
                        .map(|s| s.earliest_deadline)
                };
                let Some(earliest) = earliest else {
                    entries.watching = false;
                    return;
                };
                earliest
            };
            // Outside a runtime, tokio's clock is the monotonic clock itself.
            let left = earliest
                .into_std()
                .saturating_duration_since(std::time::Instant::now());
            std::thread::sleep(left.max(std::time::Duration::from_millis(1)));
        }
    }
}

/// Held by the renewal task; see [`Shared::rehome`].
struct TaskGuard {
    shared: Arc<Shared>,
    /// The task ended by itself (no lease left).
    ended: bool,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if std::thread::panicking() {
            // A bug in the renewal task: restarting it could panic again at once. End its leases
            // as lost, signalled, rather than leave them unguarded.
            let mut entries = self.shared.lock();
            entries.task = None;
            for (_, entry) in entries.leases.drain() {
                entry.state.mark_lost(LostReason::FatalBackendError);
            }
            return;
        }
        self.shared.rehome();
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
