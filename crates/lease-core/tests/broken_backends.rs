//! The conformance kit must catch what it claims to: each deliberately broken backend below fails
//! the cases that check the rule it breaks (and the kit's verdict is checked, not just run).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lease_core::conformance::{Harness, run_case};
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, FencingToken, Grant,
    LeaseKey, LeaseRecord, MemoryBackend, ReleaseOutcome, ReleaseRequest, RenewOutcome,
    RenewRequest,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    /// Release frees the key whoever asks.
    ReleaseIgnoresToken,
    /// Renew extends the grant whoever asks.
    RenewIgnoresToken,
    /// The fencing counter restarts at 1 on every grant.
    FencingResets,
    /// Acquire grants even when the key is held.
    NoExclusion,
    /// A held key is taken over at half its TTL.
    TakeoverTooEarly,
}

/// MemoryBackend with one defect, built by composition so the defect is the only difference.
#[derive(Debug)]
struct Broken {
    inner: MemoryBackend,
    defect: Defect,
}

impl Broken {
    fn harness(defect: Defect) -> Harness {
        Harness::new(Broken {
            inner: MemoryBackend::new(),
            defect,
        })
        .with_ttl(Duration::from_millis(300))
    }

    async fn current_holder(&self, key: &LeaseKey) -> Option<lease_core::HolderToken> {
        self.inner
            .inspect(key)
            .await
            .ok()
            .flatten()
            .filter(LeaseRecord::is_held)
            .and_then(|r| r.holder)
    }
}

#[async_trait]
impl Backend for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        let outcome = self.inner.acquire(request).await?;
        Ok(match (self.defect, outcome) {
            (Defect::FencingResets, AcquireOutcome::Acquired(g)) => {
                AcquireOutcome::Acquired(Grant::new(FencingToken::new(1), g.ttl))
            }
            (Defect::NoExclusion, AcquireOutcome::Held(_)) => {
                let fencing = self
                    .inner
                    .inspect(&request.key)
                    .await?
                    .map_or(1, |r| r.fencing.get());
                AcquireOutcome::Acquired(Grant::new(FencingToken::new(fencing), request.ttl))
            }
            (Defect::TakeoverTooEarly, AcquireOutcome::Held(Some(record)))
                if record.expires_in.is_some_and(|left| left < request.ttl / 2) =>
            {
                self.inner.break_lease(&request.key).await?;
                self.inner.acquire(request).await?
            }
            (_, outcome) => outcome,
        })
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        if self.defect == Defect::RenewIgnoresToken
            && let Some(current) = self.current_holder(&request.key).await
        {
            let forged = RenewRequest::new(request.key.clone(), current, request.ttl);
            return self.inner.renew(&forged).await;
        }
        self.inner.renew(request).await
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        if self.defect == Defect::ReleaseIgnoresToken
            && let Some(current) = self.current_holder(&request.key).await
        {
            return self
                .inner
                .release(&ReleaseRequest::new(request.key.clone(), current))
                .await;
        }
        self.inner.release(request).await
    }

    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.inspect(key).await
    }

    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.break_lease(key).await
    }
}

/// A backend wrapper whose acquire refuses a second acquire by the same holder.
#[derive(Debug)]
struct RefusesReacquire(MemoryBackend);

#[async_trait]
impl Backend for RefusesReacquire {
    fn name(&self) -> &'static str {
        "refuses-reacquire"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        if let Some(record) = self.0.inspect(&request.key).await?
            && record.is_held_by(&request.holder)
        {
            return Ok(AcquireOutcome::Held(None));
        }
        self.0.acquire(request).await
    }
    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.0.renew(request).await
    }
    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.0.release(request).await
    }
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.0.inspect(key).await
    }
}

async fn expect_failure(harness: &Harness, case: &str) {
    match run_case(case, harness).await {
        Err(failure) => {
            assert_eq!(failure.case, case);
            eprintln!("caught as expected: {failure}");
        }
        Ok(()) => panic!("the kit's case {case} passed a backend that breaks its rule"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_ignoring_the_token_is_caught() {
    expect_failure(
        &Broken::harness(Defect::ReleaseIgnoresToken),
        "stale_grant_cannot_renew_or_release",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_ignoring_the_token_is_caught() {
    expect_failure(
        &Broken::harness(Defect::RenewIgnoresToken),
        "stale_grant_cannot_renew_or_release",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_fencing_is_caught() {
    let h = Broken::harness(Defect::FencingResets);
    expect_failure(&h, "fencing_never_resets").await;
    expect_failure(&h, "release_lets_next_in_with_higher_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exclusion_is_caught() {
    let h = Broken::harness(Defect::NoExclusion);
    expect_failure(&h, "held_key_reports_holder").await;
    expect_failure(&h, "contenders_never_overlap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_takeover_is_caught() {
    let h = Broken::harness(Defect::TakeoverTooEarly);
    expect_failure(&h, "stopped_holder_is_taken_over_after_ttl").await;
    expect_failure(&h, "lost_signal_fires_before_next_grant").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_reacquire_is_caught() {
    let h =
        Harness::new(RefusesReacquire(MemoryBackend::new())).with_ttl(Duration::from_millis(300));
    expect_failure(&h, "reacquire_by_same_holder_is_idempotent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_wrapper_passes_the_same_cases() {
    // Control: the composition itself is not what fails.
    let h =
        Harness::from_shared(Arc::new(MemoryBackend::new())).with_ttl(Duration::from_millis(300));
    for case in [
        "stale_grant_cannot_renew_or_release",
        "fencing_never_resets",
        "held_key_reports_holder",
        "stopped_holder_is_taken_over_after_ttl",
        "lost_signal_fires_before_next_grant",
        "reacquire_by_same_holder_is_idempotent",
    ] {
        run_case(case, &h).await.unwrap();
    }
}
