//! The lease guard handed to a holder, and the state it shares with the renewer.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::backend::{ReleaseOutcome, ReleaseRequest};
use crate::error::{Error, LostReason};
use crate::key::LeaseKey;
use crate::locker::{LockerInner, traced};
use crate::observe::LeaseObserver;
use crate::token::{FencingToken, HolderToken};

/// What a held lease shares between its guard, its handles and the renewer.
pub(crate) struct LeaseState {
    pub(crate) key: LeaseKey,
    pub(crate) holder: HolderToken,
    pub(crate) fencing: FencingToken,
    /// The holder deadline: past it, this process no longer believes it holds the key.
    deadline: Mutex<Instant>,
    /// Cancelled exactly when the lease stops being held, for whatever reason.
    lost: CancellationToken,
    reason: OnceLock<LostReason>,
    /// Its span and metric labels.
    pub(crate) observer: LeaseObserver,
}

impl LeaseState {
    pub(crate) fn new(
        key: LeaseKey,
        holder: HolderToken,
        fencing: FencingToken,
        deadline: Instant,
        backend: &'static str,
    ) -> Self {
        Self {
            observer: LeaseObserver::granted(backend, &key, fencing),
            key,
            holder,
            fencing,
            deadline: Mutex::new(deadline),
            lost: CancellationToken::new(),
            reason: OnceLock::new(),
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Held means: not marked lost, and the deadline has not passed. Checking the clock here (not
    /// only the flag) keeps the answer right even if the renewer task is starved.
    pub(crate) fn is_held(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < self.deadline()
    }

    /// Sets the deadline to `new` (from a confirmed renewal) if the lease is still held at this
    /// instant. A confirmation that arrives after the deadline must not resurrect a lease whose loss
    /// may already have been acted on. `new` replaces the old deadline even when it is earlier: the
    /// store replaced its expiry, so a renewal granted for less than before shortens the lease.
    pub(crate) fn extend(&self, new: Instant) -> bool {
        let mut deadline = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if self.lost.is_cancelled() || now >= *deadline {
            return false;
        }
        self.observer.renewed(*deadline - now);
        *deadline = new;
        true
    }

    /// Marks the lease lost (the first reason wins) and fires the lost signal.
    pub(crate) fn mark_lost(&self, reason: LostReason) {
        if self.reason.set(reason).is_ok() {
            self.observer
                .stopped(reason, Instant::now() >= self.deadline());
        }
        self.lost.cancel();
    }

    /// Whether [`LeaseState::mark_lost`] was called. Reads the reason (set first, one atomic
    /// load) rather than the token (a mutex): the renewer asks this of every lease on every sweep.
    pub(crate) fn is_marked_lost(&self) -> bool {
        self.reason.get().is_some()
    }

    fn lost_reason(&self) -> Option<LostReason> {
        self.reason.get().copied()
    }

    fn lost_future(self: &Arc<Self>) -> impl Future<Output = LostReason> + Send + 'static {
        let state = Arc::clone(self);
        async move {
            state.lost.cancelled().await;
            state.lost_reason().unwrap_or(LostReason::DeadlineExpired)
        }
    }
}

/// A held lease. Renewed in the background while it lives; released by [`Lease::release`], or on
/// drop (renewal stops at once and a best-effort release is spawned).
///
/// Check [`Lease::is_held`] before acting on the protected resource, pass
/// [`Lease::fencing_token`] to it, and stop work when [`Lease::lost`] resolves or
/// [`Lease::cancellation_token`] is cancelled.
///
/// ```
/// use lease_core::{Locker, MemoryBackend};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
/// let locker = Locker::new(MemoryBackend::new());
/// let lease = locker.acquire("migrations").await?;
/// println!("holding {} with fencing token {}", lease.key(), lease.fencing_token());
/// assert!(lease.is_held());
/// lease.release().await?;
/// # Ok(()) }
/// ```
///
/// A lease that is not bound is released at once, so the compiler warns about it:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// # use lease_core::{Locker, MemoryBackend};
/// # async fn f(locker: Locker) -> Result<(), lease_core::Error> {
/// locker.acquire("migrations").await?; // warning: unused `Lease` that must be used
/// # Ok(()) }
/// ```
///
/// (`try_acquire` returns `Option<Lease>`, which the lint does not look into: bind that too.)
#[must_use = "dropping a Lease releases it at once; bind it (`let lease = ...`) for as long as the work runs"]
pub struct Lease {
    state: Arc<LeaseState>,
    locker: Arc<LockerInner>,
    renewal_id: u64,
    /// The release finished (or was never needed); dropping the guard does nothing more.
    done: bool,
    /// Set when [`Lease::release`] starts: whether the lease was still held then. If that
    /// release is cancelled, `Drop` finishes it in the background with the same retry policy.
    release_started: Option<bool>,
}

impl Lease {
    pub(crate) fn new(state: Arc<LeaseState>, locker: Arc<LockerInner>, renewal_id: u64) -> Self {
        Self {
            state,
            locker,
            renewal_id,
            done: false,
            release_started: None,
        }
    }

    /// The key this lease is on.
    pub fn key(&self) -> &LeaseKey {
        &self.state.key
    }

    /// The fencing token of this grant: pass it to the resource you protect.
    pub fn fencing_token(&self) -> FencingToken {
        self.state.fencing
    }

    /// The holder token of this grant.
    pub fn holder_token(&self) -> HolderToken {
        self.state.holder
    }

    /// The holder deadline: the instant the last confirmed acquire or renew request was sent, plus
    /// the granted TTL, minus the clock-drift allowance and safety margin. Past it, the lease is not
    /// held.
    pub fn deadline(&self) -> Instant {
        self.state.deadline()
    }

    /// Whether the lease is still held (not lost, and the deadline has not passed).
    pub fn is_held(&self) -> bool {
        self.state.is_held()
    }

    /// Resolves when the lease stops being held, with the reason. Fires at the holder deadline at
    /// the latest, which is before any other holder can be granted the key.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.state.lost_future()
    }

    /// A token cancelled when the lease stops being held. Cancelling it yourself does not release
    /// the lease (it is a child of the lease's own token).
    pub fn cancellation_token(&self) -> CancellationToken {
        self.state.lost.child_token()
    }

    /// A cheap, cloneable view of this lease for tasks doing the protected work.
    pub fn handle(&self) -> LeaseHandle {
        LeaseHandle {
            state: Arc::clone(&self.state),
        }
    }

    /// Stops renewing and frees the key on the store (the fencing counter is kept).
    ///
    /// # Errors
    /// - [`Error::Lost`] if the lease had already been lost before this call (the work done under it
    ///   may have overlapped with another holder's, unless fenced);
    /// - [`Error::Backend`] if the release could not be confirmed before the lease's deadline; the
    ///   key then frees itself when its TTL runs out.
    pub async fn release(mut self) -> Result<(), Error> {
        let was_held = self.state.is_held();
        let earlier_loss = self.state.lost_reason();
        self.stop(LostReason::Released);
        // If this future is dropped before the release below is done (a timeout around it, a
        // cancelled `run_exclusive`), `Drop` sends it in the background instead.
        self.release_started = Some(was_held);
        let result = if was_held {
            self.send_release(true).await
        } else {
            // Still try: an expired grant nobody took is cleaned up, a taken one is left alone.
            let _ = self.send_release(false).await;
            Err(Error::Lost {
                key: self.state.key.clone(),
                fencing: self.state.fencing,
                reason: earlier_loss.unwrap_or(LostReason::DeadlineExpired),
            })
        };
        self.done = true;
        result
    }

    /// Marks the lease no longer held (before the store frees it, so this process never believes it
    /// holds a key another holder may already have) and takes it off the renewal schedule.
    fn stop(&self, reason: LostReason) {
        self.state.mark_lost(reason);
        self.locker.renewer.remove(self.renewal_id);
    }

    async fn send_release(&self, retry: bool) -> Result<(), Error> {
        release_until(
            Arc::clone(&self.locker),
            Arc::clone(&self.state),
            self.state.deadline(),
            retry,
        )
        .instrument(self.state.observer.span().clone())
        .await
    }
}

/// Sends the release, retrying transient failures until `until`. A `NotHeld` answer after an
/// attempt whose outcome was unknown means that attempt landed.
async fn release_until(
    locker: Arc<LockerInner>,
    state: Arc<LeaseState>,
    until: Instant,
    retry: bool,
) -> Result<(), Error> {
    let request = ReleaseRequest::new(state.key.clone(), state.holder);
    let mut delays = locker.options.retry.delays();
    let mut ambiguous = false;
    loop {
        let remaining = until.saturating_duration_since(Instant::now());
        // A lease past its deadline still gets one attempt, bounded like a renewal.
        let bound = remaining.max(locker.options.renew_interval);
        let result = traced(
            &*locker.backend,
            "release",
            &state.key,
            tokio::time::timeout(bound, locker.backend.release(&request)),
        )
        .await;
        match result {
            Ok(ReleaseOutcome::Released) => return Ok(()),
            Ok(ReleaseOutcome::NotHeld) if ambiguous => {
                return confirm_after_unknown(&locker, &state).await;
            }
            Ok(ReleaseOutcome::NotHeld) => {
                return Err(Error::Lost {
                    key: state.key.clone(),
                    fencing: state.fencing,
                    reason: LostReason::NotHeld,
                });
            }
            Err(e) if e.is_transient() && retry => {
                ambiguous = true;
                let delay = delays.next().unwrap_or(locker.options.retry.max_delay);
                if Instant::now() + delay >= until {
                    return Err(e.into());
                }
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A `NotHeld` answer after an attempt whose outcome was unknown: that attempt may have freed the
/// key, or the grant was already gone (broken, or expired and taken over) and the attempt never
/// reached the store. The record tells what is known: if no grant newer than ours was made, nobody
/// else can have held the key, and the release is confirmed; if one was, it may have come before
/// our release, so the lease is reported lost (work done under it may have overlapped).
async fn confirm_after_unknown(locker: &LockerInner, state: &LeaseState) -> Result<(), Error> {
    let read = traced(
        &*locker.backend,
        "inspect",
        &state.key,
        tokio::time::timeout(
            locker.options.renew_interval,
            locker.backend.inspect(&state.key),
        ),
    )
    .await?;
    match read {
        Some(record) if record.fencing > state.fencing => Err(Error::Lost {
            key: state.key.clone(),
            fencing: state.fencing,
            reason: LostReason::NotHeld,
        }),
        _ => Ok(()),
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let was_held = self.release_started.unwrap_or_else(|| self.state.is_held());
        self.stop(LostReason::Released);
        // Best effort, and sent even when the deadline has passed: a grant that expired here but
        // was not taken over is freed now instead of at its TTL. Without a runtime (dropped during
        // shutdown) the key frees itself at expiry. `Locker::drain` waits for it.
        let locker = Arc::clone(&self.locker);
        let state = Arc::clone(&self.state);
        let until = state.deadline();
        let span = state.observer.span().clone();
        self.locker.spawn_background(
            async move {
                if let Err(e) = release_until(locker, Arc::clone(&state), until, was_held).await {
                    tracing::debug!(key = %state.key, error = %e, "release on drop failed");
                }
            }
            .instrument(span),
        );
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.state.key)
            .field("fencing", &self.state.fencing)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

/// A cloneable view of a [`Lease`] for the tasks doing the protected work. It cannot release or
/// renew; dropping it does nothing.
#[derive(Clone)]
pub struct LeaseHandle {
    state: Arc<LeaseState>,
}

impl LeaseHandle {
    /// The key.
    pub fn key(&self) -> &LeaseKey {
        &self.state.key
    }

    /// The fencing token of the grant.
    pub fn fencing_token(&self) -> FencingToken {
        self.state.fencing
    }

    /// The current holder deadline.
    pub fn deadline(&self) -> Instant {
        self.state.deadline()
    }

    /// Whether the lease is still held.
    pub fn is_held(&self) -> bool {
        self.state.is_held()
    }

    /// Resolves when the lease stops being held.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.state.lost_future()
    }

    /// A child token cancelled when the lease stops being held.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.state.lost.child_token()
    }
}

impl fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseHandle")
            .field("key", &self.state.key)
            .field("fencing", &self.state.fencing)
            .field("held", &self.is_held())
            .finish()
    }
}
