//! A backend wrapper that injects faults: latency, transient errors, lost responses, dropped
//! renewals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, LeaseRecord, ReleaseOutcome,
    ReleaseRequest, RenewOutcome, RenewRequest,
};
use crate::error::BackendError;
use crate::key::LeaseKey;

/// The operations a fault can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`Backend::acquire`].
    Acquire,
    /// [`Backend::renew`] and [`Backend::renew_many`].
    Renew,
    /// [`Backend::release`].
    Release,
    /// [`Backend::inspect`].
    Inspect,
    /// [`Backend::break_lease`].
    Break,
    /// [`Backend::list`].
    List,
}

/// Wraps a backend and misbehaves on request, the way networks and servers do.
///
/// - [`FaultyBackend::fail_next`]: the next calls fail with a transient error *without* reaching
///   the store (a refused connection).
/// - [`FaultyBackend::lose_next_response`]: the next calls *reach* the store and take effect, then
///   report a transient error (a response lost on the way back) — the case the protocol must
///   resolve by reading back.
/// - [`FaultyBackend::drop_renewals`]: renewals fail without reaching the store (a holder cut off
///   from the store while it still runs).
/// - [`FaultyBackend::set_latency`]: every call is delayed before it is sent.
/// - [`FaultyBackend::delay_responses`]: calls of one operation *reach* the store and take effect,
///   then their answer is held back (a slow network on the way back) — the fault the holder
///   deadline rule (counted from the send instant) and the late-answer guards exist for.
/// - [`FaultyBackend::panic_next`]: the next calls panic inside the backend (a bug in a driver).
///
/// Clones share the same fault settings.
///
/// ```
/// use std::sync::Arc;
/// use lease_core::conformance::{FaultyBackend, Op};
/// use lease_core::{Locker, MemoryBackend};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
/// let faulty = FaultyBackend::new(Arc::new(MemoryBackend::new()));
/// faulty.lose_next_response(Op::Acquire, 1);
/// // The grant landed but its answer was lost: the locker reads the record back and finds it.
/// let lease = Locker::new(faulty.clone()).try_acquire("k").await?.expect("resolved");
/// assert_eq!(faulty.calls(Op::Acquire), 1);
/// # drop(lease); Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    latency: Mutex<Duration>,
    fail_next: Mutex<HashMap<Op, u32>>,
    lose_next: Mutex<HashMap<Op, u32>>,
    drop_renewals: AtomicBool,
    response_delay: Mutex<HashMap<Op, Duration>>,
    panic_next: Mutex<HashMap<Op, u32>>,
    calls: Mutex<HashMap<Op, AtomicU64>>,
}

fn take(counter: &Mutex<HashMap<Op, u32>>, op: Op) -> bool {
    let mut map = counter.lock().unwrap_or_else(|e| e.into_inner());
    match map.get_mut(&op) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

impl FaultyBackend {
    /// Wraps `inner` with no faults switched on.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    /// Delays every call by `latency` before it is sent.
    pub fn set_latency(&self, latency: Duration) {
        *self
            .faults
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = latency;
    }

    /// The next `n` calls of `op` fail with a transient error without reaching the store.
    pub fn fail_next(&self, op: Op, n: u32) {
        *self
            .faults
            .fail_next
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(op)
            .or_default() += n;
    }

    /// The next `n` calls of `op` take effect on the store, then report a transient error.
    pub fn lose_next_response(&self, op: Op, n: u32) {
        *self
            .faults
            .lose_next
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(op)
            .or_default() += n;
    }

    /// Holds back every answer of `op` for `delay` after the store applied the call
    /// (`Duration::ZERO` switches it off).
    pub fn delay_responses(&self, op: Op, delay: Duration) {
        self.faults
            .response_delay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(op, delay);
    }

    /// The next `n` calls of `op` panic inside the backend, before reaching the store.
    pub fn panic_next(&self, op: Op, n: u32) {
        *self
            .faults
            .panic_next
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(op)
            .or_default() += n;
    }

    /// While on, renewals fail with a transient error without reaching the store.
    pub fn drop_renewals(&self, on: bool) {
        self.faults.drop_renewals.store(on, Ordering::SeqCst);
    }

    /// How many calls of `op` were made (each request of a batch renewal counts once).
    pub fn calls(&self, op: Op) -> u64 {
        self.faults
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&op)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    async fn before(&self, op: Op, count: u64) -> Result<(), BackendError> {
        self.faults
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(op)
            .or_default()
            .fetch_add(count, Ordering::SeqCst);
        let latency = *self
            .faults
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if take(&self.faults.panic_next, op) {
            panic!("injected: the {op:?} call panicked inside the backend");
        }
        if op == Op::Renew && self.faults.drop_renewals.load(Ordering::SeqCst) {
            return Err(BackendError::transient(
                "faulty",
                "injected: renewal dropped",
            ));
        }
        if take(&self.faults.fail_next, op) {
            return Err(BackendError::transient(
                "faulty",
                "injected: request failed",
            ));
        }
        Ok(())
    }

    /// Holds the answer back if a response delay is set for `op` (the store has applied the call).
    async fn delay_answer(&self, op: Op) {
        let delay = self
            .faults
            .response_delay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&op)
            .copied()
            .unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    async fn after<T>(&self, op: Op, result: Result<T, BackendError>) -> Result<T, BackendError> {
        self.delay_answer(op).await;
        if result.is_ok() && take(&self.faults.lose_next, op) {
            return Err(BackendError::transient(
                "faulty",
                "injected: response lost after the request took effect",
            ));
        }
        result
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.before(Op::Acquire, 1).await?;
        let result = self.inner.acquire(request).await;
        self.after(Op::Acquire, result).await
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.before(Op::Renew, 1).await?;
        let result = self.inner.renew(request).await;
        self.after(Op::Renew, result).await
    }

    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        if let Err(e) = self.before(Op::Renew, requests.len() as u64).await {
            return requests
                .iter()
                .map(|_| Err(BackendError::transient("faulty", e.message().to_owned())))
                .collect();
        }
        let results = self.inner.renew_many(requests).await;
        self.delay_answer(Op::Renew).await;
        let lost = take(&self.faults.lose_next, Op::Renew);
        results
            .into_iter()
            .map(|r| match r {
                Ok(_) if lost => Err(BackendError::transient(
                    "faulty",
                    "injected: response lost after the request took effect",
                )),
                other => other,
            })
            .collect()
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.before(Op::Release, 1).await?;
        let result = self.inner.release(request).await;
        self.after(Op::Release, result).await
    }

    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.before(Op::Inspect, 1).await?;
        let result = self.inner.inspect(key).await;
        self.after(Op::Inspect, result).await
    }

    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.before(Op::Break, 1).await?;
        let result = self.inner.break_lease(key).await;
        self.after(Op::Break, result).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        self.before(Op::List, 1).await?;
        let result = self.inner.list(prefix).await;
        self.after(Op::List, result).await
    }

    async fn wait_for_change(
        &self,
        key: &LeaseKey,
        max_wait: Duration,
    ) -> Result<(), BackendError> {
        self.inner.wait_for_change(key, max_wait).await
    }
}
