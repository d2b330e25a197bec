//! A backend wrapper that counts calls and logs the timing of the ones the scale and hand-off
//! measurements break down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, LeaseKey, LeaseRecord,
    ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest, async_trait,
};

/// One logged call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub(crate) kind: Kind,
    pub(crate) started: Instant,
    pub(crate) ended: Instant,
    /// Of those, how many succeeded.
    pub(crate) ok: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Acquire,
    Renew,
    Release,
    Wait,
}

/// Forwards to a backend; counts every call; logs calls when `logging` is on.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    inner: Arc<dyn Backend>,
    calls: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<Call>>>,
    polling_only: bool,
}

impl Recorder {
    pub(crate) fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            calls: Arc::default(),
            log: Arc::default(),
            polling_only: false,
        }
    }

    /// Hides `wait_for_change`, so waiters poll (what a backend without notifications does).
    pub(crate) fn polling_only(mut self) -> Self {
        self.polling_only = true;
        self
    }

    /// Backend calls so far.
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub(crate) fn log(&self) -> Vec<Call> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Empties the log and frees its memory (the holding measurement counts resident memory).
    pub(crate) fn clear_log(&self) {
        drop(std::mem::take(
            &mut *self.log.lock().unwrap_or_else(|e| e.into_inner()),
        ));
    }

    fn record(&self, kind: Kind, started: Instant, ok: usize) {
        let call = Call {
            kind,
            started,
            ended: Instant::now(),
            ok,
        };
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }
}

#[async_trait]
impl Backend for Recorder {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        let caps = self.inner.capabilities();
        if self.polling_only {
            caps.with_notifies_waiters(false)
        } else {
            caps
        }
    }
    async fn acquire(&self, r: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let out = self.inner.acquire(r).await;
        let ok = usize::from(matches!(out, Ok(AcquireOutcome::Acquired(_))));
        self.record(Kind::Acquire, started, ok);
        out
    }
    async fn renew(&self, r: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let out = self.inner.renew(r).await;
        let ok = usize::from(matches!(out, Ok(RenewOutcome::Renewed(_))));
        self.record(Kind::Renew, started, ok);
        out
    }
    async fn renew_many(&self, r: &[RenewRequest]) -> Vec<Result<RenewOutcome, BackendError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let out = self.inner.renew_many(r).await;
        let ok = out
            .iter()
            .filter(|o| matches!(o, Ok(RenewOutcome::Renewed(_))))
            .count();
        self.record(Kind::Renew, started, ok);
        out
    }
    async fn release(&self, r: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let out = self.inner.release(r).await;
        self.record(Kind::Release, started, usize::from(out.is_ok()));
        out
    }
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.inspect(key).await
    }
    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.break_lease(key).await
    }
    async fn wait_for_change(&self, key: &LeaseKey, wait: Duration) -> Result<(), BackendError> {
        let started = Instant::now();
        let out = if self.polling_only {
            tokio::time::sleep(wait).await;
            Ok(())
        } else {
            self.inner.wait_for_change(key, wait).await
        };
        self.record(Kind::Wait, started, usize::from(out.is_ok()));
        out
    }
}
