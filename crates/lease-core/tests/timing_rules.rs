//! The protocol's timing and ownership rules, each pinned by a test on the paused clock that fails
//! when the rule is removed from the code (see docs/testing.md, mutation testing). Mocks are fine
//! here: this tests the protocol, not a store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lease_core::conformance::{FaultyBackend, Op};
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, Error, LeaseKey,
    LeaseRecord, Locker, LostReason, MemoryBackend, ReleaseOutcome, ReleaseRequest, RenewOutcome,
    RenewRequest, RetryPolicy,
};
use tokio::time::{Instant, sleep};

const TTL: Duration = Duration::from_millis(600);
const MARGIN: Duration = Duration::from_millis(60);
/// TTL − margin, with no drift allowance: round numbers on the paused clock.
const WINDOW: Duration = Duration::from_millis(540);
const INTERVAL: Duration = Duration::from_millis(200);

fn locker_on(backend: impl Backend) -> Locker {
    Locker::builder(backend)
        .ttl(TTL)
        .safety_margin(MARGIN)
        .max_clock_drift(0.0)
        .renew_interval(INTERVAL)
        .retry(RetryPolicy::default().with_jitter(false))
        .build()
        .unwrap()
}

fn faulty_memory() -> (MemoryBackend, FaultyBackend) {
    let store = MemoryBackend::new();
    let faulty = FaultyBackend::new(Arc::new(store.clone()));
    (store, faulty)
}

fn key(name: &str) -> LeaseKey {
    LeaseKey::new(name).unwrap()
}

/// What a test wrapper changes about MemoryBackend.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Twist {
    /// Renewals are granted (and reported) for this fraction of the TTL asked for.
    ShortRenewals(f64),
    /// Grants on keys starting with "short" are made (and reported) for half the TTL asked for.
    ShortGrantsOnShortKeys,
    /// Inspect leaves out the TTL (and, if `drop_left` too, the time left).
    InspectWithoutTtl { drop_left: bool },
    /// Renewals of keys starting with "sick" fail (transiently) forever.
    SickRenewals,
    /// Renewals are granted for the TTL asked for, but the answer reports this TTL instead (a
    /// store rounding up, or one reporting an "infinite" lease).
    InflatedRenewals(Duration),
    /// "Held" answers and records say the holder has this long left (a hostile stored value).
    HugeTimeLeft(Duration),
}

/// MemoryBackend with one twist, counting renewal calls and the leases they carry.
#[derive(Debug)]
struct Twisted {
    inner: MemoryBackend,
    twist: Twist,
    renew_calls: AtomicU64,
    renew_items: AtomicU64,
}

impl Twisted {
    fn new(inner: MemoryBackend, twist: Twist) -> Arc<Self> {
        Arc::new(Self {
            inner,
            twist,
            renew_calls: AtomicU64::new(0),
            renew_items: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl Backend for Twisted {
    fn name(&self) -> &'static str {
        "twisted"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        if self.twist == Twist::ShortGrantsOnShortKeys && request.key.as_str().starts_with("short")
        {
            let mut half = request.clone();
            half.ttl = request.ttl / 2;
            return self.inner.acquire(&half).await;
        }
        match (self.twist, self.inner.acquire(request).await?) {
            (Twist::HugeTimeLeft(left), AcquireOutcome::Held(Some(mut record))) => {
                record.expires_in = Some(left);
                Ok(AcquireOutcome::Held(Some(record)))
            }
            (_, outcome) => Ok(outcome),
        }
    }
    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.renew_many(std::slice::from_ref(request))
            .await
            .pop()
            .unwrap()
    }
    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        self.renew_calls.fetch_add(1, Ordering::SeqCst);
        self.renew_items
            .fetch_add(requests.len() as u64, Ordering::SeqCst);
        let mut results = Vec::new();
        for request in requests {
            results.push(match self.twist {
                Twist::ShortRenewals(f) => {
                    let shorter = RenewRequest::new(
                        request.key.clone(),
                        request.holder,
                        request.ttl.mul_f64(f),
                    );
                    self.inner.renew(&shorter).await
                }
                Twist::SickRenewals if request.key.as_str().starts_with("sick") => {
                    Err(BackendError::transient("twisted", "sick"))
                }
                Twist::InflatedRenewals(reported) => match self.inner.renew(request).await {
                    Ok(RenewOutcome::Renewed(_)) => Ok(RenewOutcome::Renewed(reported)),
                    other => other,
                },
                _ => self.inner.renew(request).await,
            });
        }
        results
    }
    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.inner.release(request).await
    }
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let record = self.inner.inspect(key).await?;
        Ok(match (self.twist, record) {
            (Twist::InspectWithoutTtl { drop_left }, Some(mut r)) => {
                r.ttl = None;
                if drop_left {
                    r.expires_in = None;
                }
                Some(r)
            }
            (_, record) => record,
        })
    }
}

/// Forwards to a shared backend (so a test keeps a handle on the twisted one).
#[derive(Debug)]
struct Shared<B>(Arc<B>);

#[async_trait]
impl<B: Backend> Backend for Shared<B> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn acquire(&self, r: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.0.acquire(r).await
    }
    async fn renew(&self, r: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.0.renew(r).await
    }
    async fn renew_many(&self, r: &[RenewRequest]) -> Vec<Result<RenewOutcome, BackendError>> {
        self.0.renew_many(r).await
    }
    async fn release(&self, r: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.0.release(r).await
    }
    async fn inspect(&self, k: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.0.inspect(k).await
    }
}

// --- The deadline counts from the instant the request was sent --------------------------------

#[tokio::test(start_paused = true)]
async fn the_deadline_counts_from_the_acquire_send_instant() {
    let (_, faulty) = faulty_memory();
    faulty.delay_responses(Op::Acquire, Duration::from_millis(100));
    let locker = locker_on(faulty);
    let sent = Instant::now();
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    assert_eq!(Instant::now() - sent, Duration::from_millis(100));
    assert_eq!(
        lease.deadline(),
        sent + WINDOW,
        "the deadline must count from the send instant, not from the (late) answer"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_counts_from_the_renewal_send_instant() {
    let (_, faulty) = faulty_memory();
    faulty.delay_responses(Op::Renew, Duration::from_millis(100));
    let locker = locker_on(faulty);
    let acquired = Instant::now();
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    // The first renewal is sent at +200 ms and answered at +300 ms.
    sleep(Duration::from_millis(350)).await;
    assert_eq!(lease.deadline(), acquired + INTERVAL + WINDOW);
}

// --- A late answer never revives a lease -----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_renewal_answered_at_the_deadline_does_not_revive_the_lease() {
    let (_, faulty) = faulty_memory();
    let locker = locker_on(faulty.clone());
    let acquired = Instant::now();
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    // The renewal sent at +200 ms is answered "renewed" exactly at the deadline (+540 ms).
    faulty.delay_responses(Op::Renew, WINDOW - INTERVAL);
    let lost = lease.lost();
    let reason = tokio::time::timeout(TTL, lost).await.expect("lost() fired");
    assert_eq!(reason, LostReason::DeadlineExpired);
    assert_eq!(Instant::now(), acquired + WINDOW);
    sleep(Duration::from_millis(1)).await;
    assert!(
        !lease.is_held(),
        "a renewal confirmed at the deadline revived the lease"
    );
    assert_eq!(locker.held_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_grant_read_back_after_its_deadline_is_given_back() {
    let (store, faulty) = faulty_memory();
    // The acquire lands but its answer is lost; the read-back answers exactly at the deadline.
    faulty.lose_next_response(Op::Acquire, 1);
    faulty.delay_responses(Op::Inspect, WINDOW);
    let locker = locker_on(faulty.clone());
    match locker.try_acquire("k").await {
        Err(Error::Backend(e)) => assert!(e.is_transient(), "{e}"),
        other => panic!("a grant confirmed after its deadline was handed out: {other:?}"),
    }
    let record = store.inspect(&key("k")).await.unwrap().unwrap();
    assert!(
        !record.is_held(),
        "the late grant was not given back: {record:?}"
    );
    assert_eq!(faulty.calls(Op::Release), 1);
}

// --- The deadline follows what the store granted -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_shorter_renewal_shortens_the_deadline() {
    let backend = Twisted::new(MemoryBackend::new(), Twist::ShortRenewals(0.5));
    let locker = locker_on(Shared(Arc::clone(&backend)));
    let acquired = Instant::now();
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    assert_eq!(lease.deadline(), acquired + WINDOW);
    sleep(INTERVAL + Duration::from_millis(1)).await;
    // Renewed at +200 ms for 300 ms: the store now expires the grant at +500 ms.
    assert_eq!(
        lease.deadline(),
        acquired + INTERVAL + Duration::from_millis(300) - MARGIN,
        "the deadline did not follow a renewal granted for less than before"
    );
}

#[tokio::test(start_paused = true)]
async fn a_grant_read_back_without_a_ttl_is_given_back_whatever_time_left_it_states() {
    // The acquire lands but its answer is lost; the record read back has no TTL, only the time
    // left, rounded up to whole seconds (1 s while 600 ms are left). Trusting it would give a
    // deadline past the store's expiry: the time left is an estimate, never used for safety.
    #[derive(Debug)]
    struct RoundsUp(MemoryBackend);
    #[async_trait]
    impl Backend for RoundsUp {
        fn name(&self) -> &'static str {
            "rounds-up"
        }
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        async fn acquire(&self, r: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
            self.0.acquire(r).await?;
            Err(BackendError::transient("rounds-up", "answer lost"))
        }
        async fn renew(&self, r: &RenewRequest) -> Result<RenewOutcome, BackendError> {
            self.0.renew(r).await
        }
        async fn release(&self, r: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
            self.0.release(r).await
        }
        async fn inspect(&self, k: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
            Ok(self.0.inspect(k).await?.map(|mut r| {
                r.ttl = None;
                r.expires_in = r
                    .expires_in
                    .map(|left| Duration::from_secs(left.as_secs_f64().ceil() as u64));
                r
            }))
        }
    }
    let store = MemoryBackend::new();
    let locker = locker_on(RoundsUp(store.clone()));
    let sent = Instant::now();
    match locker.try_acquire("k").await {
        Err(Error::Backend(e)) => assert!(e.is_transient(), "{e}"),
        Ok(Some(lease)) => panic!(
            "a grant read back without a TTL was kept, with a deadline {:?} after the send \
             (the store expires it after {TTL:?})",
            lease.deadline() - sent
        ),
        other => panic!("unexpected {other:?}"),
    }
    let record = store.inspect(&key("k")).await.unwrap().unwrap();
    assert!(
        !record.is_held(),
        "the grant was not given back: {record:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_grant_read_back_counts_the_ttl_the_record_states() {
    // The store grants 300 ms of the 600 asked for; the answer is lost; the record read back
    // states the 300 ms it kept.
    let store = MemoryBackend::new();
    let faulty = FaultyBackend::new(Twisted::new(store, Twist::ShortGrantsOnShortKeys));
    faulty.lose_next_response(Op::Acquire, 1);
    let locker = locker_on(faulty);
    let sent = Instant::now();
    let lease = locker.try_acquire("short-k").await.unwrap().unwrap();
    assert_eq!(
        lease.deadline(),
        sent + Duration::from_millis(300) - MARGIN,
        "a grant found by reading back assumed a longer TTL than the store kept"
    );
}

#[tokio::test(start_paused = true)]
async fn a_grant_read_back_without_any_timing_is_given_back() {
    let store = MemoryBackend::new();
    let faulty = FaultyBackend::new(Twisted::new(
        store.clone(),
        Twist::InspectWithoutTtl { drop_left: true },
    ));
    faulty.lose_next_response(Op::Acquire, 1);
    let locker = locker_on(faulty);
    assert!(locker.try_acquire("k").await.is_err());
    let record = store.inspect(&key("k")).await.unwrap().unwrap();
    assert!(!record.is_held(), "an untimed grant was kept: {record:?}");
}

// --- Read-back gets time, and counts from the right attempt --------------------------------------

#[tokio::test(start_paused = true)]
async fn a_hung_acquire_leaves_time_to_read_the_grant_back() {
    let (_, faulty) = faulty_memory();
    // The grant lands, but its answer would take ten seconds.
    faulty.delay_responses(Op::Acquire, Duration::from_secs(10));
    let locker = locker_on(faulty.clone());
    let sent = Instant::now();
    let lease = locker
        .try_acquire("k")
        .await
        .expect("the read-back had no time left to find the grant")
        .unwrap();
    assert!(lease.is_held());
    assert_eq!(lease.deadline(), sent + WINDOW);
    assert!(Instant::now() - sent <= WINDOW / 2 + Duration::from_millis(1));
    assert_eq!(faulty.calls(Op::Inspect), 1);
}

#[tokio::test(start_paused = true)]
async fn a_grant_found_after_a_long_wait_is_kept() {
    let store = MemoryBackend::new();
    let holder = locker_on(store.clone());
    let waiter_backend = FaultyBackend::new(Arc::new(store.clone()));
    let waiter = locker_on(waiter_backend.clone());
    let first = holder.try_acquire("k").await.unwrap().unwrap();
    let first_token = first.fencing_token();
    let waiting = tokio::spawn(async move { waiter.acquire("k").await });
    // Wait far longer than a holder window, then free the key; the waiter's next attempt lands
    // but its answer is lost, and the read-back finds it.
    sleep(WINDOW * 4).await;
    waiter_backend.lose_next_response(Op::Acquire, 1);
    first.release().await.unwrap();
    let lease = waiting.await.unwrap().unwrap();
    assert!(lease.is_held());
    assert_eq!(
        lease.fencing_token().get(),
        first_token.get() + 1,
        "the grant was given back and taken again (a token burnt)"
    );
    assert_eq!(waiter_backend.calls(Op::Release), 0);
}

// --- Lost signals fire on time ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn lost_fires_on_time_for_a_lease_added_while_a_batch_is_in_flight() {
    let store = MemoryBackend::new();
    let twisted = Twisted::new(store, Twist::ShortGrantsOnShortKeys);
    let faulty = FaultyBackend::new(twisted);
    let locker = locker_on(faulty.clone());
    let start = Instant::now();
    let long = locker.try_acquire("long").await.unwrap().unwrap();
    sleep(INTERVAL + Duration::from_millis(1)).await;
    assert_eq!(long.deadline(), start + INTERVAL + WINDOW);
    // The next batch (sent at +400 ms) hangs until +740 ms; meanwhile a short grant (300 ms,
    // deadline +645 ms) is added.
    faulty.delay_responses(Op::Renew, Duration::from_secs(5));
    tokio::time::sleep_until(start + Duration::from_millis(405)).await;
    let added = Instant::now();
    let short = locker.try_acquire("short").await.unwrap().unwrap();
    assert_eq!(
        short.deadline(),
        added + Duration::from_millis(300) - MARGIN
    );
    let deadline = short.deadline();
    short.lost().await;
    assert_eq!(
        Instant::now(),
        deadline,
        "lost() fired after the deadline of a lease added mid-batch"
    );
    assert!(short.cancellation_token().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn lost_fires_on_time_for_a_lease_added_while_the_renewer_sleeps() {
    // A renew interval close to the holder window: the renewal task sleeps longer than a short
    // grant added meanwhile lives, so that grant must wake it.
    let interval = Duration::from_millis(500);
    let locker = Locker::builder(Shared(Twisted::new(
        MemoryBackend::new(),
        Twist::ShortGrantsOnShortKeys,
    )))
    .ttl(TTL)
    .safety_margin(MARGIN)
    .max_clock_drift(0.0)
    .renew_interval(interval)
    .build()
    .unwrap();
    let start = Instant::now();
    let _long = locker.try_acquire("long").await.unwrap().unwrap();
    sleep(Duration::from_millis(10)).await;
    // The task sleeps until the long lease's renewal at +500 ms; the short grant (300 ms) has
    // its deadline at +250 ms.
    let short = locker.try_acquire("short").await.unwrap().unwrap();
    let deadline = short.deadline();
    assert!(deadline < start + interval);
    short.lost().await;
    assert_eq!(
        Instant::now(),
        deadline,
        "lost() fired after the deadline of a lease added while the renewal task slept"
    );
}

#[tokio::test(start_paused = true)]
async fn the_renewal_task_lets_go_of_the_backend_when_the_last_lease_is_released() {
    let backend = Twisted::new(MemoryBackend::new(), Twist::ShortRenewals(1.0));
    let locker = locker_on(Shared(Arc::clone(&backend)));
    let first = locker.try_acquire("a").await.unwrap().unwrap();
    let second = locker.try_acquire("b").await.unwrap().unwrap();
    sleep(Duration::from_millis(10)).await;
    first.release().await.unwrap();
    second.release().await.unwrap();
    drop(locker);
    // No time passes: the task must end on the last release, not at its next timer.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        Arc::strong_count(&backend),
        1,
        "the renewal task still holds the backend after the last lease was released"
    );
}

// --- Renewal batches ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn one_failing_lease_does_not_make_the_batch_resend() {
    let backend = Twisted::new(MemoryBackend::new(), Twist::SickRenewals);
    let locker = locker_on(Shared(Arc::clone(&backend)));
    let mut leases = Vec::new();
    for i in 0..99 {
        leases.push(
            locker
                .try_acquire(format!("ok-{i}"))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let sick = locker.try_acquire("sick").await.unwrap().unwrap();
    sleep(Duration::from_millis(1000)).await;
    assert!(!sick.is_held());
    assert!(leases.iter().all(|l| l.is_held()));
    let calls = backend.renew_calls.load(Ordering::SeqCst);
    let items = backend.renew_items.load(Ordering::SeqCst);
    // Five regular batches of (up to) 100 in a second, plus the sick lease's own retries.
    assert!(
        items <= 5 * 100 + 20,
        "{items} renewals in {calls} calls: the failing lease made the batch resend"
    );
}

#[tokio::test(start_paused = true)]
async fn one_renewal_task_per_locker_however_many_leases_are_added() {
    // Renewals take 50 ms to answer, so two renewal tasks would both send the batch before
    // either answer moved its schedule on: every lease renewed twice per interval.
    let backend = Twisted::new(MemoryBackend::new(), Twist::ShortRenewals(1.0));
    let faulty = FaultyBackend::new(Arc::clone(&backend) as Arc<dyn Backend>);
    faulty.delay_responses(Op::Renew, Duration::from_millis(50));
    let locker = locker_on(faulty);
    let mut leases = Vec::new();
    for i in 0..4 {
        leases.push(locker.try_acquire(format!("k-{i}")).await.unwrap().unwrap());
    }
    sleep(INTERVAL * 3 + Duration::from_millis(100)).await;
    assert!(leases.iter().all(|l| l.is_held()));
    let items = backend.renew_items.load(Ordering::SeqCst);
    assert_eq!(
        items,
        3 * 4,
        "4 leases over 3 intervals were renewed {items} times: more than one renewal task ran"
    );
}

// --- Waiting ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_release_just_before_waiting_is_not_missed() {
    let store = MemoryBackend::new();
    let k = key("k");
    let holder = lease_core::HolderToken::generate();
    let request = AcquireRequest::new(
        k.clone(),
        holder,
        TTL,
        lease_core::HolderMetadata::from_stored_lossy("raw"),
    );
    store.acquire(&request).await.unwrap();
    store
        .release(&ReleaseRequest::new(k.clone(), holder))
        .await
        .unwrap();
    let started = Instant::now();
    store
        .wait_for_change(&k, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        Instant::now() - started < Duration::from_secs(1),
        "wait_for_change slept through a release that had already happened"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_while_the_store_fails_carries_the_last_error() {
    let (_, faulty) = faulty_memory();
    faulty.fail_next(Op::Acquire, 1_000);
    let locker = locker_on(faulty);
    match locker.acquire_timeout("k", Duration::from_secs(2)).await {
        Err(Error::Timeout {
            last_error: Some(e),
            ..
        }) => assert!(e.is_transient()),
        other => panic!("expected a Timeout naming the last error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_renewal_ends_the_lease() {
    let (_, faulty) = faulty_memory();
    let locker = locker_on(faulty.clone());
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    faulty.panic_next(Op::Renew, 1);
    let reason = tokio::time::timeout(TTL, lease.lost()).await.unwrap();
    assert_eq!(reason, LostReason::FatalBackendError);
    assert_eq!(locker.held_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_shorter_grant_on_acquire_sets_a_shorter_deadline() {
    let backend = Twisted::new(MemoryBackend::new(), Twist::ShortGrantsOnShortKeys);
    let locker = locker_on(Shared(backend));
    let sent = Instant::now();
    let lease = locker.try_acquire("short-x").await.unwrap().unwrap();
    assert_eq!(lease.deadline(), sent + Duration::from_millis(300) - MARGIN);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_reported_longer_than_asked_is_capped_at_the_ttl() {
    // The store renews for the 600 ms asked but reports a whole second more (rounded up).
    let backend = Twisted::new(
        MemoryBackend::new(),
        Twist::InflatedRenewals(TTL + Duration::from_secs(1)),
    );
    let locker = locker_on(Shared(backend));
    let acquired = Instant::now();
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    sleep(INTERVAL + Duration::from_millis(1)).await;
    assert_eq!(
        lease.deadline(),
        acquired + INTERVAL + WINDOW,
        "a renewal reporting more than the TTL asked for stretched the deadline past the store's \
         expiry"
    );
}

#[tokio::test(start_paused = true)]
async fn an_infinite_renewal_neither_panics_nor_stops_the_renewal() {
    let backend = Twisted::new(MemoryBackend::new(), Twist::InflatedRenewals(Duration::MAX));
    let locker = locker_on(Shared(Arc::clone(&backend)));
    let acquired = Instant::now();
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    sleep(TTL * 4).await;
    assert!(
        lease.is_held(),
        "renewal stopped after a renewal reported Duration::MAX"
    );
    assert!(backend.renew_calls.load(Ordering::SeqCst) >= 10);
    assert!(lease.deadline() <= Instant::now() + WINDOW);
    assert!(lease.deadline() > acquired + TTL * 3);
}

#[tokio::test(start_paused = true)]
async fn a_huge_time_left_on_a_held_key_does_not_panic_the_waiter() {
    let store = MemoryBackend::new();
    let _held = locker_on(store.clone())
        .try_acquire("k")
        .await
        .unwrap()
        .unwrap();
    let waiter = locker_on(Shared(Twisted::new(
        store,
        Twist::HugeTimeLeft(Duration::MAX),
    )));
    match waiter
        .acquire_timeout("k", Duration::from_millis(300))
        .await
    {
        Err(Error::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
}

// --- Release -------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn releasing_a_broken_lease_reports_it_lost() {
    let store = MemoryBackend::new();
    let locker = locker_on(store.clone());
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    // An administrator breaks it; the holder has not renewed since, so it still believes.
    store.break_lease(&key("k")).await.unwrap();
    assert!(lease.is_held());
    match lease.release().await {
        Err(Error::Lost { reason, .. }) => assert_eq!(reason, LostReason::NotHeld),
        other => {
            panic!("a release answered NotHeld (without an earlier unknown outcome) gave {other:?}")
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_release_after_an_unknown_outcome_reports_a_takeover_as_lost() {
    // Broken by an administrator and taken over; the holder has not renewed since. Its first
    // release attempt fails before reaching the store, the second answers NotHeld: that NotHeld
    // does not come from our own release, and the record shows a newer grant.
    let (store, faulty) = faulty_memory();
    let lease = locker_on(faulty.clone())
        .try_acquire("k")
        .await
        .unwrap()
        .unwrap();
    store.break_lease(&key("k")).await.unwrap();
    let _next = locker_on(store).try_acquire("k").await.unwrap().unwrap();
    faulty.fail_next(Op::Release, 1);
    match lease.release().await {
        Err(Error::Lost { reason, .. }) => assert_eq!(reason, LostReason::NotHeld),
        other => panic!("a broken, taken-over lease released as {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_release_whose_answer_was_lost_is_confirmed_by_the_record() {
    // Control for the test above: the first attempt landed (only its answer was lost), so the
    // NotHeld of the second is our own release, and nobody was granted the key since.
    let (_, faulty) = faulty_memory();
    let lease = locker_on(faulty.clone())
        .try_acquire("k")
        .await
        .unwrap()
        .unwrap();
    faulty.lose_next_response(Op::Release, 1);
    lease.release().await.unwrap();
}

/// MemoryBackend whose first release never answers (it hangs before reaching the store).
#[derive(Debug)]
struct FirstReleaseHangs(MemoryBackend, AtomicU64);

#[async_trait]
impl Backend for FirstReleaseHangs {
    fn name(&self) -> &'static str {
        "first-release-hangs"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn acquire(&self, r: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.0.acquire(r).await
    }
    async fn renew(&self, r: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.0.renew(r).await
    }
    async fn release(&self, r: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        if self.1.fetch_add(1, Ordering::SeqCst) == 0 {
            std::future::pending::<()>().await;
        }
        self.0.release(r).await
    }
    async fn inspect(&self, k: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.0.inspect(k).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_release_still_releases_in_the_background() {
    let store = MemoryBackend::new();
    let locker = locker_on(FirstReleaseHangs(store.clone(), AtomicU64::new(0)));
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    let handle = lease.handle();
    assert!(
        tokio::time::timeout(Duration::from_millis(10), lease.release())
            .await
            .is_err(),
        "the first release should hang"
    );
    assert!(!handle.is_held());
    sleep(Duration::from_millis(10)).await;
    let record = store.inspect(&key("k")).await.unwrap().unwrap();
    assert!(
        !record.is_held(),
        "a cancelled release left the key held for the rest of its TTL: {record:?}"
    );
}

/// MemoryBackend whose releases fail with a non-retryable error, counting them.
#[derive(Debug)]
struct FatalRelease(MemoryBackend, AtomicU64);

#[async_trait]
impl Backend for FatalRelease {
    fn name(&self) -> &'static str {
        "fatal-release"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn acquire(&self, r: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.0.acquire(r).await
    }
    async fn renew(&self, r: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.0.renew(r).await
    }
    async fn release(&self, _: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Err(BackendError::fatal("fatal-release", "permission denied"))
    }
    async fn inspect(&self, k: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.0.inspect(k).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_fatal_release_error_is_returned_at_once_not_retried() {
    let backend = Arc::new(FatalRelease(MemoryBackend::new(), AtomicU64::new(0)));
    let locker = locker_on(Shared(Arc::clone(&backend)));
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    let started = Instant::now();
    match lease.release().await {
        Err(Error::Backend(e)) => assert!(!e.is_transient(), "{e}"),
        other => panic!("expected the fatal error, got {other:?}"),
    }
    assert_eq!(Instant::now(), started, "a fatal error was retried");
    assert_eq!(backend.1.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_transient_release_error_is_retried_until_it_lands() {
    let (store, faulty) = faulty_memory();
    let locker = locker_on(faulty.clone());
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    // The first release lands but its answer is lost; the retry answers NotHeld: it landed.
    faulty.lose_next_response(Op::Release, 1);
    lease.release().await.unwrap();
    assert_eq!(faulty.calls(Op::Release), 2);
    assert!(!store.inspect(&key("k")).await.unwrap().unwrap().is_held());
}

#[tokio::test(start_paused = true)]
async fn a_release_that_keeps_failing_gives_up_by_the_deadline() {
    let (_, faulty) = faulty_memory();
    let locker = locker_on(faulty.clone());
    let lease = locker.try_acquire("k").await.unwrap().unwrap();
    let deadline = lease.deadline();
    faulty.fail_next(Op::Release, 10_000);
    assert!(lease.release().await.is_err());
    assert!(
        Instant::now() <= deadline,
        "release went on retrying {:?} past the deadline",
        Instant::now() - deadline
    );
}

// --- The handle given to the work ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_work_handle_follows_the_lease() {
    let (_, faulty) = faulty_memory();
    let locker = locker_on(faulty.clone());
    let lease = locker.try_acquire("handled").await.unwrap().unwrap();
    let handle = lease.handle();
    assert!(handle.is_held());
    assert_eq!(handle.key().as_str(), "handled");
    assert_eq!(handle.fencing_token(), lease.fencing_token());
    assert_eq!(handle.deadline(), lease.deadline());
    for debug in [format!("{lease:?}"), format!("{handle:?}")] {
        assert!(
            debug.contains("handled") && debug.contains("fencing") && debug.contains("held: true"),
            "{debug}"
        );
    }
    let token = handle.cancellation_token();
    assert!(!token.is_cancelled());
    faulty.drop_renewals(true);
    handle.lost().await;
    assert!(
        token.is_cancelled(),
        "the handle's token was not cancelled on loss"
    );
    assert!(!handle.is_held());
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_the_release_of_a_dropped_lease() {
    let (store, faulty) = faulty_memory();
    faulty.delay_responses(Op::Release, Duration::from_millis(100));
    let locker = locker_on(faulty);
    drop(locker.try_acquire("k").await.unwrap().unwrap());
    let started = Instant::now();
    locker.drain().await;
    assert!(Instant::now() - started >= Duration::from_millis(100));
    assert!(!store.inspect(&key("k")).await.unwrap().unwrap().is_held());
}

// --- Errors while acquiring ----------------------------------------------------------------------

/// MemoryBackend whose acquire fails with a non-retryable error, or (`own_held`) answers a
/// re-acquire by the holder with "held" and that holder's own record.
#[derive(Debug)]
struct OddAcquire {
    inner: MemoryBackend,
    fatal: bool,
}

#[async_trait]
impl Backend for OddAcquire {
    fn name(&self) -> &'static str {
        "odd-acquire"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn acquire(&self, r: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        if self.fatal {
            return Err(BackendError::fatal("odd-acquire", "permission denied"));
        }
        if let Some(record) = self.inner.inspect(&r.key).await?
            && record.is_held_by(&r.holder)
        {
            return Ok(AcquireOutcome::Held(Some(Box::new(record))));
        }
        self.inner.acquire(r).await
    }
    async fn renew(&self, r: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.inner.renew(r).await
    }
    async fn release(&self, r: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.inner.release(r).await
    }
    async fn inspect(&self, k: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.inspect(k).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_fatal_acquire_error_ends_the_wait_at_once_without_a_read_back() {
    let faulty = FaultyBackend::new(Arc::new(OddAcquire {
        inner: MemoryBackend::new(),
        fatal: true,
    }));
    let locker = locker_on(faulty.clone());
    let started = Instant::now();
    match locker.acquire_timeout("k", Duration::from_secs(5)).await {
        Err(Error::Backend(e)) => assert!(!e.is_transient(), "{e}"),
        other => panic!("a fatal error was not returned: {other:?}"),
    }
    assert_eq!(Instant::now(), started, "a fatal acquire error was retried");
    assert_eq!(faulty.calls(Op::Acquire), 1);
    assert_eq!(faulty.calls(Op::Inspect), 0, "a fatal answer was read back");
}

#[tokio::test(start_paused = true)]
async fn a_held_answer_naming_our_own_grant_is_our_grant() {
    let faulty = FaultyBackend::new(Arc::new(OddAcquire {
        inner: MemoryBackend::new(),
        fatal: false,
    }));
    // The first attempt lands but its answer and the read-back are lost; the retry is answered
    // "held", with our own holder token in the record.
    faulty.lose_next_response(Op::Acquire, 1);
    faulty.fail_next(Op::Inspect, 1);
    let locker = locker_on(faulty.clone());
    let started = Instant::now();
    let lease = locker
        .acquire_timeout("k", Duration::from_secs(2))
        .await
        .expect("our own grant, reported as held, was not recognised");
    assert!(lease.is_held());
    // Recognised at the second attempt, not taken again after our own grant expired.
    assert_eq!(faulty.calls(Op::Acquire), 2, "our own grant was waited out");
    assert!(
        Instant::now() - started < INTERVAL,
        "our own grant was waited out: acquired after {:?}",
        Instant::now() - started
    );
    let record = locker.inspect("k").await.unwrap().unwrap();
    assert_eq!(
        lease.fencing_token(),
        record.fencing,
        "one grant, one token"
    );
}

#[tokio::test(start_paused = true)]
async fn list_returns_the_records_under_the_prefix() {
    let locker = locker_on(MemoryBackend::new());
    let _a = locker.try_acquire("jobs/a").await.unwrap().unwrap();
    let _b = locker.try_acquire("jobs/b").await.unwrap().unwrap();
    let _c = locker.try_acquire("other").await.unwrap().unwrap();
    let debug = format!("{locker:?}");
    assert!(
        debug.contains("Locker") && debug.contains("options"),
        "{debug}"
    );
    let listed = locker.list("jobs/").await.unwrap();
    let keys: Vec<_> = listed.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["jobs/a", "jobs/b"]);
    assert!(listed.iter().all(LeaseRecord::is_held));
    assert!(matches!(
        locker.list("50%").await,
        Err(Error::InvalidInput(e)) if e.field() == "prefix"
    ));
}

// --- A holder token given back is never used again -----------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_holder_token_given_back_is_never_acquired_with_again() {
    // The first acquire lands but its answer is lost; the record read back has no TTL, so the
    // grant is given back. That release is slow: it lands 300 ms later (a request stalled in the
    // network, or one whose answer timed out). If the next attempt acquired with the same holder
    // token, the late release would free the lease it got, while it believes itself the holder,
    // and another client would be granted the key (found by `cargo xtask torture` on PostgreSQL).
    #[derive(Debug)]
    struct LateRelease {
        store: MemoryBackend,
        acquires: AtomicU64,
    }
    #[async_trait]
    impl Backend for LateRelease {
        fn name(&self) -> &'static str {
            "late-release"
        }
        fn capabilities(&self) -> Capabilities {
            self.store.capabilities()
        }
        async fn acquire(&self, r: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
            let outcome = self.store.acquire(r).await?;
            if self.acquires.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(BackendError::transient("late-release", "answer lost"));
            }
            Ok(outcome)
        }
        async fn renew(&self, r: &RenewRequest) -> Result<RenewOutcome, BackendError> {
            self.store.renew(r).await
        }
        async fn release(&self, r: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
            let (store, r) = (self.store.clone(), r.clone());
            tokio::spawn(async move {
                sleep(Duration::from_millis(300)).await;
                let _ = store.release(&r).await;
            });
            Err(BackendError::transient("late-release", "timed out"))
        }
        async fn inspect(&self, k: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
            Ok(self.store.inspect(k).await?.map(|mut r| {
                r.ttl = None;
                r
            }))
        }
    }
    let store = MemoryBackend::new();
    let locker = locker_on(LateRelease {
        store: store.clone(),
        acquires: AtomicU64::new(0),
    });
    let lease = locker
        .acquire_timeout("k", Duration::from_secs(5))
        .await
        .unwrap();
    let other = locker_on(store.clone());
    for _ in 0..20 {
        sleep(Duration::from_millis(25)).await;
        if let Some(second) = other.try_acquire("k").await.unwrap() {
            assert!(
                !lease.is_held(),
                "two holders: {:?} and {:?}, {:?} before the first one's deadline",
                lease.fencing_token(),
                second.fencing_token(),
                lease.deadline() - Instant::now()
            );
        }
    }
}
