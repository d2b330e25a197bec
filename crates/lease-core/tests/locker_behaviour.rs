//! Protocol behaviour beyond the conformance kit, on `MemoryBackend` (mocks are fine here: this
//! tests the protocol, not a store).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lease_core::conformance::{FaultyBackend, Op};
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, CancellationToken, Capabilities, Error,
    LeaseKey, LeaseRecord, Locker, LostReason, MemoryBackend, RecordState, ReleaseOutcome,
    ReleaseRequest, RenewOutcome, RenewRequest,
};
use tokio::time::Instant;

const TTL: Duration = Duration::from_millis(600);

fn locker(backend: impl Backend) -> Locker {
    Locker::builder(backend).ttl(TTL).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exclusive_cancels_work_when_the_lease_is_lost() {
    let faulty = FaultyBackend::new(Arc::new(MemoryBackend::new()));
    let locker = locker(faulty.clone());
    let dropped = Arc::new(AtomicBool::new(false));
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = Arc::clone(&dropped);
    let started = Instant::now();
    let result = locker
        .run_exclusive("work", |_lease| async move {
            let _guard = SetOnDrop(flag);
            faulty.drop_renewals(true);
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<(), Error>(())
        })
        .await;
    match result {
        Err(Error::Lost { reason, .. }) => assert_eq!(reason, LostReason::DeadlineExpired),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(dropped.load(Ordering::SeqCst), "the work was not cancelled");
    let elapsed = started.elapsed();
    assert!(elapsed < TTL, "lost signal came after the TTL: {elapsed:?}");
    assert!(elapsed > TTL / 2, "lost signal came too early: {elapsed:?}");
}

#[tokio::test]
async fn acquire_cancellable_and_timeout_report_distinct_errors() {
    let store = MemoryBackend::new();
    let holder = locker(store.clone());
    let waiter = locker(store);
    let _lease = holder.try_acquire("busy").await.unwrap().unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.cancel();
    });
    match waiter.acquire_cancellable("busy", &cancel).await {
        Err(Error::Cancelled { key }) => assert_eq!(key.as_str(), "busy"),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    match waiter
        .acquire_timeout("busy", Duration::from_millis(50))
        .await
    {
        Err(Error::Timeout {
            holder: Some(record),
            ..
        }) => {
            assert_eq!(record.holder, Some(_lease.holder_token()));
        }
        other => panic!("expected Timeout naming the holder, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_a_lease_releases_it_in_the_background() {
    let store = MemoryBackend::new();
    let a = locker(store.clone());
    let b = locker(store.clone());
    let lease = a.try_acquire("dropped").await.unwrap().unwrap();
    let handle = lease.handle();
    drop(lease);
    assert!(!handle.is_held(), "a dropped lease still counts as held");
    assert_eq!(a.held_count(), 0, "a dropped lease is still being renewed");
    let next = tokio::time::timeout(Duration::from_millis(200), b.acquire("dropped"))
        .await
        .expect("the key was not freed by the drop")
        .unwrap();
    assert!(next.fencing_token() > handle.fencing_token());
}

#[tokio::test]
async fn a_grant_that_landed_unseen_is_given_back_when_the_caller_gives_up() {
    let store = MemoryBackend::new();
    let faulty = FaultyBackend::new(Arc::new(store.clone()));
    let locker = locker(faulty.clone());
    faulty.lose_next_response(Op::Acquire, 1);
    faulty.fail_next(Op::Inspect, 1);
    // The write landed, the answer was lost and the read-back failed: try_acquire cannot tell.
    let err = locker.try_acquire("phantom").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let key = LeaseKey::new("phantom").unwrap();
    // The background release frees the grant instead of leaving it blocked for a TTL.
    let mut freed = false;
    for _ in 0..50 {
        let record = store.inspect(&key).await.unwrap().unwrap();
        if record.state == RecordState::Free {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(freed, "the unseen grant was not released");
}

/// Counts `renew_many` calls, to show renewal is batched per locker.
#[derive(Debug)]
struct CountingBackend {
    inner: MemoryBackend,
    batches: AtomicUsize,
    renewed: AtomicUsize,
    fatal_renewals: bool,
}

#[async_trait]
impl Backend for CountingBackend {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.inner.acquire(request).await
    }
    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.inner.renew(request).await
    }
    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.renewed.fetch_add(requests.len(), Ordering::SeqCst);
        if self.fatal_renewals {
            return requests
                .iter()
                .map(|_| Err(BackendError::fatal("counting", "credentials revoked")))
                .collect();
        }
        self.inner.renew_many(requests).await
    }
    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.inner.release(request).await
    }
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.inspect(key).await
    }
}

fn counting(fatal_renewals: bool) -> Arc<CountingBackend> {
    Arc::new(CountingBackend {
        inner: MemoryBackend::new(),
        batches: AtomicUsize::new(0),
        renewed: AtomicUsize::new(0),
        fatal_renewals,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_leases_are_renewed_in_one_batch_per_interval() {
    const LEASES: usize = 500;
    let backend = counting(false);
    let locker = Locker::builder_shared(backend.clone())
        .ttl(TTL)
        .build()
        .unwrap();
    let mut leases = Vec::new();
    for i in 0..LEASES {
        leases.push(
            locker
                .try_acquire(format!("batch-{i}"))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let intervals = 4;
    tokio::time::sleep(locker.options().renew_interval * intervals).await;
    assert!(leases.iter().all(|l| l.is_held()));
    let batches = backend.batches.load(Ordering::SeqCst);
    let renewed = backend.renewed.load(Ordering::SeqCst);
    // One batch per interval, each carrying every lease.
    assert!(
        (intervals as usize - 1..=intervals as usize).contains(&batches),
        "{batches} renewal calls for {LEASES} leases over {intervals} intervals"
    );
    assert_eq!(renewed, batches * LEASES, "a batch left some leases out");
}

#[tokio::test]
async fn a_fatal_renewal_error_ends_the_lease_at_once() {
    let backend = counting(true);
    let locker = Locker::builder_shared(backend).ttl(TTL).build().unwrap();
    let lease = locker.try_acquire("fatal").await.unwrap().unwrap();
    let reason = tokio::time::timeout(TTL, lease.lost())
        .await
        .expect("lease not lost");
    assert_eq!(reason, LostReason::FatalBackendError);
    match lease.release().await {
        Err(Error::Lost { reason, .. }) => assert_eq!(reason, LostReason::FatalBackendError),
        other => panic!("release of a lost lease: {other:?}"),
    }
}

#[tokio::test]
async fn election_observe_reports_each_change_once() {
    use futures_util::StreamExt;
    let store = MemoryBackend::new();
    let election = locker(store.clone()).election("leader").unwrap();
    let mut changes = Box::pin(election.observe(Duration::from_millis(20)));
    assert!(changes.next().await.unwrap().unwrap().is_none());
    let term1 = election.campaign().await.unwrap();
    let seen = changes.next().await.unwrap().unwrap().unwrap();
    assert_eq!(seen.fencing, term1.fencing_token());
    let first_term = term1.fencing_token();
    term1.resign().await.unwrap();
    assert!(changes.next().await.unwrap().unwrap().is_none());
    let term2 = election.campaign().await.unwrap();
    let seen = changes.next().await.unwrap().unwrap().unwrap();
    assert_eq!(seen.fencing, term2.fencing_token());
    assert!(term2.fencing_token() > first_term);
    // No change, no item.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), changes.next())
            .await
            .is_err()
    );
}

#[test]
fn renewal_survives_the_runtime_that_started_it() {
    let locker = locker(MemoryBackend::new());
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let lease = first.block_on(locker.try_acquire("a")).unwrap().unwrap();
    std::mem::forget(lease); // its renewal task dies with the runtime below
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    second.block_on(async {
        let lease = locker.try_acquire("b").await.unwrap().unwrap();
        tokio::time::sleep(TTL * 2).await;
        assert!(lease.is_held(), "no renewal task ran on the second runtime");
    });
}

fn runtime(multi_thread: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(1);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_time().build().unwrap()
}

#[test]
fn a_lease_from_a_second_runtime_is_renewed_after_the_first_shuts_down() {
    let locker = Locker::builder(MemoryBackend::new())
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let first = runtime(false);
    let second = runtime(true);
    // The renewal task starts on the first runtime; the second lease only joins it.
    let a = first.block_on(locker.try_acquire("a")).unwrap().unwrap();
    let b = second.block_on(locker.try_acquire("b")).unwrap().unwrap();
    drop(first);
    second.block_on(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            b.is_held(),
            "nothing renewed the second runtime's lease after the first runtime shut down"
        );
        assert!(a.is_held(), "the first runtime's lease was not moved along");
        b.release().await.unwrap();
    });
    std::mem::forget(a);
}

#[test]
fn the_lost_signal_fires_in_time_when_no_runtime_is_left() {
    let store = MemoryBackend::new();
    let locker = Locker::builder(store.clone())
        .ttl(Duration::from_secs(1))
        .safety_margin(Duration::from_millis(300))
        .build()
        .unwrap();
    let first = runtime(false);
    let lease = first.block_on(locker.try_acquire("k")).unwrap().unwrap();
    let token = lease.cancellation_token();
    drop(first);
    // Another client waits for the key, and is granted it when the store expires the grant.
    let other = runtime(false);
    let next = other
        .block_on(
            Locker::builder(store)
                .ttl(Duration::from_secs(1))
                .build()
                .unwrap()
                .acquire("k"),
        )
        .unwrap();
    assert!(
        token.is_cancelled(),
        "another client holds the key and the first holder's lost signal has not fired"
    );
    assert!(!lease.is_held());
    assert!(next.fencing_token() > lease.fencing_token());
    other.block_on(next.release()).unwrap();
    std::mem::forget(lease);
}

/// A grant found by reading back may have been written by an *earlier* attempt than the one that
/// failed: its deadline must count from the first attempt's send time, or the holder would outlive
/// the store's expiry.
#[test]
fn a_read_back_grant_counts_from_the_first_attempt() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = MemoryBackend::new();
        let faulty = FaultyBackend::new(Arc::new(store.clone()));
        let ttl = Duration::from_millis(1000);
        let slow_retry = lease_core::RetryPolicy::default()
            .with_initial_delay(Duration::from_millis(600))
            .with_max_delay(Duration::from_millis(600))
            .with_jitter(false);
        let locker = Locker::builder(faulty.clone())
            .ttl(ttl)
            .retry(slow_retry)
            .build()
            .unwrap();
        // Attempt 1 (t = 0) lands but its answer is lost and the read-back fails; attempt 2
        // (t = 600 ms) never reaches the store, and its read-back finds attempt 1's grant, which
        // the store expires at t = 1000 ms.
        faulty.lose_next_response(Op::Acquire, 1);
        faulty.fail_next(Op::Inspect, 1);
        faulty.drop_renewals(true);
        let started = Instant::now();
        let waiting = tokio::spawn({
            let locker = locker.clone();
            async move { locker.acquire("read-back").await }
        });
        // Attempt 1 has run and the waiter sleeps until its second attempt.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(faulty.calls(Op::Acquire), 1);
        faulty.fail_next(Op::Acquire, 1);
        let lease = waiting.await.unwrap().unwrap();
        assert_eq!(faulty.calls(Op::Acquire), 2);
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "expected a second attempt"
        );
        assert!(
            lease.deadline() <= started + ttl,
            "deadline {:?} after the first attempt outlives the store's expiry {ttl:?}",
            lease.deadline() - started
        );
        tokio::time::advance(Duration::from_millis(401)).await;
        let other = locker_for_test(store);
        let next = other.try_acquire("read-back").await.unwrap();
        assert!(next.is_some(), "the store did not expire attempt 1's grant");
        assert!(
            !lease.is_held(),
            "two holders: the read-back grant is still believed held"
        );
    });
}

fn locker_for_test(store: MemoryBackend) -> Locker {
    Locker::builder(store)
        .ttl(Duration::from_millis(1000))
        .build()
        .unwrap()
}

/// MemoryBackend whose change notifications return at once, counting reads.
#[derive(Debug)]
struct RestlessWaits(MemoryBackend, AtomicUsize);

#[async_trait]
impl Backend for RestlessWaits {
    fn name(&self) -> &'static str {
        "restless"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities().with_notifies_waiters(true)
    }
    async fn acquire(&self, r: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.0.acquire(r).await
    }
    async fn renew(&self, r: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.0.renew(r).await
    }
    async fn release(&self, r: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.0.release(r).await
    }
    async fn inspect(&self, k: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.inspect(k).await
    }
    async fn wait_for_change(&self, _: &LeaseKey, _: Duration) -> Result<(), BackendError> {
        tokio::task::yield_now().await;
        Ok(())
    }
}

#[tokio::test]
async fn election_observe_never_reads_faster_than_its_poll() {
    use futures_util::StreamExt as _;
    let backend = Arc::new(RestlessWaits(MemoryBackend::new(), AtomicUsize::new(0)));
    let election = Locker::from_shared(backend.clone()).election("e").unwrap();
    let mut changes = Box::pin(election.observe(Duration::from_millis(50)));
    assert!(changes.next().await.unwrap().unwrap().is_none());
    // Nobody leads, nothing changes: the stream reads once per poll.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), changes.next())
            .await
            .is_err()
    );
    let reads = backend.1.load(Ordering::SeqCst);
    assert!(
        reads <= 6,
        "{reads} reads in 200 ms with a 50 ms poll: observe spins"
    );
}
