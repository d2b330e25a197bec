//! The conformance kit must catch what it claims to: each deliberately broken backend below fails
//! the cases that check the rule it breaks (and the kit's verdict is checked, not just run).

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
    /// Grants and renewals expire 8 % early (the TTL reported is the one asked for).
    ExpiresEarly,
    /// Acquiring again with the same holder token answers "acquired" but keeps the old expiry.
    ReacquireKeepsExpiry,
    /// Renewals are granted for 85 % of the TTL, but report the full TTL.
    ShortRenewalUnreported,
    /// A second acquire by the same holder token is refused.
    RefusesReacquire,
    /// Listed records come without their holder metadata (a semaphore cannot see counts).
    ListDropsMetadata,
    /// No defect: the control, proving the wrapper itself is not what the kit rejects.
    None,
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
        let own_grant = self
            .inner
            .inspect(&request.key)
            .await?
            .filter(|r| r.is_held_by(&request.holder));
        match (self.defect, own_grant) {
            (Defect::RefusesReacquire, Some(_)) => return Ok(AcquireOutcome::Held(None)),
            (Defect::ReacquireKeepsExpiry, Some(record)) => {
                return Ok(AcquireOutcome::Acquired(Grant::new(
                    record.fencing,
                    request.ttl,
                )));
            }
            _ => {}
        }
        let outcome = if self.defect == Defect::ExpiresEarly {
            let mut shorter = request.clone();
            shorter.ttl = request.ttl.mul_f64(0.92);
            match self.inner.acquire(&shorter).await? {
                AcquireOutcome::Acquired(g) => {
                    AcquireOutcome::Acquired(Grant::new(g.fencing, request.ttl))
                }
                held => held,
            }
        } else {
            self.inner.acquire(request).await?
        };
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
        let factor = match self.defect {
            Defect::ExpiresEarly => 0.92,
            Defect::ShortRenewalUnreported => 0.85,
            _ => return self.inner.renew(request).await,
        };
        let shorter = RenewRequest::new(
            request.key.clone(),
            request.holder,
            request.ttl.mul_f64(factor),
        );
        Ok(match self.inner.renew(&shorter).await? {
            RenewOutcome::Renewed(_) => RenewOutcome::Renewed(request.ttl),
            other => other,
        })
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

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        let mut records = self.inner.list(prefix).await?;
        if self.defect == Defect::ListDropsMetadata {
            for record in &mut records {
                record.metadata = None;
            }
        }
        Ok(records)
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
    expect_failure(&h, "semaphore_admits_exactly_n").await;
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
async fn a_listing_without_metadata_is_caught() {
    let h = Broken::harness(Defect::ListDropsMetadata);
    expect_failure(&h, "semaphore_refuses_mixed_permit_counts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_reacquire_is_caught() {
    let h = Broken::harness(Defect::RefusesReacquire);
    expect_failure(&h, "reacquire_by_same_holder_is_idempotent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_eight_percent_early_is_caught() {
    let h = Broken::harness(Defect::ExpiresEarly);
    expect_failure(&h, "stopped_holder_is_taken_over_after_ttl").await;
    expect_failure(&h, "renewal_reports_the_ttl_it_granted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reacquire_that_keeps_the_old_expiry_is_caught() {
    let h = Broken::harness(Defect::ReacquireKeepsExpiry);
    expect_failure(&h, "reacquire_extends_the_expiry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_shorter_than_reported_is_caught() {
    let h = Broken::harness(Defect::ShortRenewalUnreported);
    expect_failure(&h, "renewal_reports_the_ttl_it_granted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapper_without_a_defect_passes_every_case() {
    // Control: the composition itself is not what fails, for every case the tests above use.
    let h = Broken::harness(Defect::None);
    for case in [
        "stale_grant_cannot_renew_or_release",
        "fencing_never_resets",
        "release_lets_next_in_with_higher_token",
        "held_key_reports_holder",
        "contenders_never_overlap",
        "stopped_holder_is_taken_over_after_ttl",
        "lost_signal_fires_before_next_grant",
        "reacquire_by_same_holder_is_idempotent",
        "reacquire_extends_the_expiry",
        "renewal_reports_the_ttl_it_granted",
        "semaphore_admits_exactly_n",
        "semaphore_contenders_never_exceed_n",
        "semaphore_lost_permit_signalled_before_regrant",
        "semaphore_refuses_mixed_permit_counts",
    ] {
        run_case(case, &h).await.unwrap();
    }
}
