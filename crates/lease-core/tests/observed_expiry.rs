//! Observed expiry (`lease_core::observed`): the whole conformance kit over the in-memory
//! conditional store, the rule's timing on tokio's paused clock (including a read served after
//! the holder's renewal landed), request counts, corrupt objects, and a broken backend the kit
//! must reject.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lease_core::conformance::{Harness, OutsideChange, OutsideWrite, OutsideWriter, run_case};
use lease_core::observed::{
    InMemoryConditionalStore, ObservationRule, ObservedExpiryBackend, StoreCalls,
};
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, BackendErrorKind, Capabilities,
    ClockModel, FencingToken, HolderMetadata, HolderToken, LeaseKey, LeaseRecord, Locker,
    RecordState, ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};
use tokio::time::{Instant, sleep};

const TTL: Duration = Duration::from_secs(1);

type MemBackend = ObservedExpiryBackend<InMemoryConditionalStore>;

async fn harness() -> Option<Harness> {
    let store = InMemoryConditionalStore::new();
    let backend = ObservedExpiryBackend::new(store.clone());
    // The peer shares the store, not the first instance's observations: a second process.
    let peer = ObservedExpiryBackend::new(store.clone());
    let writer = OutsideWriter::new(move |key, change| {
        let store = store.clone();
        async move {
            match change {
                OutsideChange::Delete => {
                    store.delete(&key);
                }
                _ => store.put_unreadable(&key, "foreign bytes"),
            }
            Ok(OutsideWrite::Done)
        }
    });
    Some(
        Harness::new(backend)
            .with_peer(peer)
            .with_ttl(Duration::from_millis(400))
            .with_outside_writer(writer),
    )
}

lease_core::conformance_tests!(harness);

fn key(name: &str) -> LeaseKey {
    LeaseKey::new(name).unwrap()
}

fn acquire_request(key: &LeaseKey, holder: HolderToken) -> AcquireRequest {
    AcquireRequest::new(
        key.clone(),
        holder,
        TTL,
        HolderMetadata::from_stored_lossy("test"),
    )
}

async fn acquire(backend: &MemBackend, key: &LeaseKey, holder: HolderToken) -> AcquireOutcome {
    backend
        .acquire(&acquire_request(key, holder))
        .await
        .unwrap()
}

async fn granted(backend: &MemBackend, key: &LeaseKey, holder: HolderToken) -> FencingToken {
    match acquire(backend, key, holder).await {
        AcquireOutcome::Acquired(grant) => grant.fencing,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Polls acquire every 10 ms until granted; returns the token and the instant of the grant.
async fn poll_until_granted(backend: &MemBackend, key: &LeaseKey) -> (FencingToken, Instant) {
    let contender = HolderToken::generate();
    loop {
        if let AcquireOutcome::Acquired(grant) = acquire(backend, key, contender).await {
            return (grant.fencing, Instant::now());
        }
        sleep(Duration::from_millis(10)).await;
    }
}

fn two_processes() -> (InMemoryConditionalStore, MemBackend, MemBackend) {
    let store = InMemoryConditionalStore::new();
    let holder_side = ObservedExpiryBackend::new(store.clone());
    let contender_side = ObservedExpiryBackend::new(store.clone());
    (store, holder_side, contender_side)
}

fn rule_wait() -> Duration {
    ObservationRule::default().takeover_after(TTL)
}

#[tokio::test(start_paused = true)]
async fn takeover_comes_no_earlier_than_the_rule_and_no_later_than_one_poll_after() {
    let (_, holder_side, contender_side) = two_processes();
    let k = key("takeover");
    let first = granted(&holder_side, &k, HolderToken::generate()).await;
    // The holder stops here. The contender's first read answers at once (paused clock).
    let first_read = Instant::now();
    let (second, at) = poll_until_granted(&contender_side, &k).await;
    assert!(
        at - first_read >= rule_wait(),
        "taken over after {:?}, the rule needs {:?}",
        at - first_read,
        rule_wait()
    );
    assert!(
        at - first_read <= rule_wait() + Duration::from_millis(10),
        "taken over {:?} after the first read: later than the rule plus one 10 ms poll",
        at - first_read
    );
    assert!(second > first);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_locker_takes_over_within_its_first_poll_delay_after_the_rule() {
    let (_, holder_side, contender_side) = two_processes();
    let k = key("locker-takeover");
    let first = granted(&holder_side, &k, HolderToken::generate()).await;
    let started = Instant::now();
    let locker = Locker::builder(contender_side).ttl(TTL).build().unwrap();
    let lease = locker.acquire(&k).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= rule_wait(), "taken over after {waited:?}");
    // The Locker wakes at the expiry the record reports (+5 ms), not at its next backoff step.
    assert!(
        waited <= rule_wait() + Duration::from_millis(25),
        "taken over {waited:?} after the holder stopped"
    );
    assert!(lease.fencing_token() > first);
    lease.release().await.unwrap();
}

/// The mistake this rule exists for: counting the observation from when the read was *sent*. The
/// holder renews after the contender's read left and the renewal lands before the read is
/// served; the read returns the renewed version, whose holder deadline counts from the renewal's
/// send. Counting from the read's send, the contender would take over 190 ms before that deadline
/// could have passed.
#[tokio::test(start_paused = true)]
async fn a_read_served_after_a_renewal_counts_from_its_response_not_its_send() {
    let (store, holder_side, contender_side) = two_processes();
    let contender_side = Arc::new(contender_side);
    let k = key("slow-read");
    let holder = HolderToken::generate();
    granted(&holder_side, &k, holder).await;
    // The contender knows the key, so its next acquire starts with a read.
    contender_side.inspect(&k).await.unwrap();

    store.delay_next_read(Duration::from_millis(600));
    let read_sent = Instant::now();
    let contender = HolderToken::generate();
    let slow = {
        let backend = Arc::clone(&contender_side);
        let k = k.clone();
        tokio::spawn(async move { backend.acquire(&acquire_request(&k, contender)).await })
    };
    sleep(Duration::from_millis(300)).await;
    let renew_sent = Instant::now();
    let renewed = holder_side
        .renew(&RenewRequest::new(k.clone(), holder, TTL))
        .await
        .unwrap();
    assert_eq!(renewed, RenewOutcome::Renewed(TTL));
    // The holder crashes now: its deadline can be as late as renew_sent + TTL.
    match slow.await.unwrap().unwrap() {
        AcquireOutcome::Held(Some(record)) => assert!(record.is_held_by(&holder)),
        other => panic!("the slow read should see the renewed grant, got {other:?}"),
    }
    let response = read_sent + Duration::from_millis(600);
    let (_, at) = poll_until_granted(&contender_side, &k).await;
    assert!(
        at >= renew_sent + TTL,
        "taken over {:?} before the renewed holder's deadline could have passed",
        (renew_sent + TTL) - at
    );
    assert!(at >= response + rule_wait());
}

#[tokio::test(start_paused = true)]
async fn a_changed_version_restarts_the_observation() {
    let (_, holder_side, contender_side) = two_processes();
    let k = key("restart");
    let holder = HolderToken::generate();
    granted(&holder_side, &k, holder).await;
    let contender = HolderToken::generate();
    // Observing version 1 for most of the rule's wait…
    assert!(matches!(
        acquire(&contender_side, &k, contender).await,
        AcquireOutcome::Held(_)
    ));
    sleep(rule_wait() - Duration::from_millis(100)).await;
    assert!(matches!(
        acquire(&contender_side, &k, contender).await,
        AcquireOutcome::Held(_)
    ));
    // …then the holder renews once and stops.
    holder_side
        .renew(&RenewRequest::new(k.clone(), holder, TTL))
        .await
        .unwrap();
    let renewed = Instant::now();
    sleep(Duration::from_millis(200)).await;
    match acquire(&contender_side, &k, contender).await {
        AcquireOutcome::Held(Some(record)) => {
            // The new version was first seen just now: a full wait is left.
            assert_eq!(record.expires_in, Some(rule_wait()));
            assert_eq!(record.state, RecordState::Held);
        }
        other => panic!("taken over {other:?} 200 ms after a renewal"),
    }
    let (_, at) = poll_until_granted(&contender_side, &k).await;
    assert!(at - renewed >= rule_wait());
}

#[tokio::test(start_paused = true)]
async fn fresh_acquire_is_one_create_and_cached_renew_and_release_one_update_each() {
    let store = InMemoryConditionalStore::new();
    let backend = ObservedExpiryBackend::new(store.clone());
    let k = key("counted");
    let holder = HolderToken::generate();
    let first = granted(&backend, &k, holder).await;
    let calls: StoreCalls = store.calls();
    assert_eq!((calls.creates, calls.total()), (1, 1), "{calls:?}");
    let before = store.calls().total();
    let renewed = backend
        .renew(&RenewRequest::new(k.clone(), holder, TTL))
        .await
        .unwrap();
    assert_eq!(renewed, RenewOutcome::Renewed(TTL));
    assert_eq!(
        store.calls().total() - before,
        1,
        "renew: {:?}",
        store.calls()
    );
    assert_eq!(store.calls().updates, 1);
    let before = store.calls().total();
    let released = backend
        .release(&ReleaseRequest::new(k.clone(), holder))
        .await
        .unwrap();
    assert_eq!(released, ReleaseOutcome::Released);
    assert_eq!(
        store.calls().total() - before,
        1,
        "release: {:?}",
        store.calls()
    );
    let free = store.peek(&k).unwrap();
    assert!(free.is_free());
    assert_eq!(free.fencing, first, "release keeps the counter");
    // A free known key: one read and one update, with the next token.
    let before = store.calls().total();
    assert_eq!(
        granted(&backend, &k, HolderToken::generate()).await.get(),
        first.get() + 1
    );
    assert_eq!(store.calls().total() - before, 2);
}

#[tokio::test(start_paused = true)]
async fn renew_from_another_process_reads_then_writes_and_a_stale_holder_is_not_held() {
    let (store, holder_side, other_instance) = two_processes();
    let k = key("uncached");
    let holder = HolderToken::generate();
    granted(&holder_side, &k, holder).await;
    // An instance without the cache (say, after a restart) reads first: two requests.
    let before = store.calls().total();
    let renewed = other_instance
        .renew(&RenewRequest::new(k.clone(), holder, TTL))
        .await
        .unwrap();
    assert_eq!(renewed, RenewOutcome::Renewed(TTL));
    assert_eq!(store.calls().total() - before, 2);
    // The first instance's cached version is stale now: its renewal conflicts, reads, and still
    // succeeds (the grant is its own).
    let renewed = holder_side
        .renew(&RenewRequest::new(k.clone(), holder, TTL))
        .await
        .unwrap();
    assert_eq!(renewed, RenewOutcome::Renewed(TTL));
    // Taken over: the old holder's renew and release are NotHeld and change nothing.
    sleep(rule_wait()).await;
    let (taken, _) = poll_until_granted(&other_instance, &k).await;
    let stale = holder_side
        .renew(&RenewRequest::new(k.clone(), holder, TTL))
        .await
        .unwrap();
    assert_eq!(stale, RenewOutcome::NotHeld);
    let stale = holder_side
        .release(&ReleaseRequest::new(k.clone(), holder))
        .await
        .unwrap();
    assert_eq!(stale, ReleaseOutcome::NotHeld);
    let now = store.peek(&k).unwrap();
    assert_eq!(now.fencing, taken);
    assert!(!now.is_free());
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_object_is_a_corrupt_record_and_stays_untouched() {
    let store = InMemoryConditionalStore::new();
    let backend = ObservedExpiryBackend::new(store.clone());
    let k = key("garbage");
    store.put_unreadable(&k, "random bytes");
    let holder = HolderToken::generate();
    let errors = [
        backend
            .acquire(&acquire_request(&k, holder))
            .await
            .map(|_| ()),
        // Known to exist now: the second acquire reads first.
        backend
            .acquire(&acquire_request(&k, holder))
            .await
            .map(|_| ()),
        backend.inspect(&k).await.map(|_| ()),
        backend
            .renew(&RenewRequest::new(k.clone(), holder, TTL))
            .await
            .map(|_| ()),
        backend
            .release(&ReleaseRequest::new(k.clone(), holder))
            .await
            .map(|_| ()),
    ];
    for result in errors {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::CorruptRecord, "{err}");
        assert!(
            err.to_string().contains("garbage"),
            "names the object: {err}"
        );
    }
    assert!(store.is_unreadable(&k, "random bytes"));
    assert_eq!(store.calls().updates, 0);
}

#[tokio::test(start_paused = true)]
async fn list_reports_a_corrupt_object_as_unreadable_beside_the_readable_ones() {
    let store = InMemoryConditionalStore::new();
    let backend = ObservedExpiryBackend::new(store.clone());
    let good = key("jobs/a");
    let bad = key("jobs/b");
    let holder = HolderToken::generate();
    backend
        .acquire(&acquire_request(&good, holder))
        .await
        .unwrap();
    store.put_unreadable(&bad, "random bytes");
    let listed = backend.list("jobs/").await.unwrap();
    let keys: Vec<_> = listed.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["jobs/a", "jobs/b"]);
    assert!(listed[0].is_held_by(&holder));
    assert_eq!(listed[1].state, RecordState::Unreadable);
    assert!(listed[1].holder.is_none());
    let why = listed[1].unreadable.as_deref().unwrap();
    assert!(why.contains("jobs/b"), "names the object: {why}");
    // Listing reports it; it never repairs or overwrites it.
    assert!(store.is_unreadable(&bad, "random bytes"));
    assert_eq!(store.calls().updates, 0);
}

#[tokio::test(start_paused = true)]
async fn break_overwrites_a_corrupt_object_restarting_the_counter_above_the_clock() {
    let store = InMemoryConditionalStore::new();
    let backend = ObservedExpiryBackend::new(store.clone());
    let k = key("garbage-broken");
    store.put_unreadable(&k, "another format");
    let floor = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let record = backend.break_lease(&k).await.unwrap().unwrap();
    assert_eq!(record.state, RecordState::Free);
    assert!(
        record.fencing.get() >= floor,
        "restarted at {}, below the clock {floor}",
        record.fencing
    );
    let next = granted(&backend, &k, HolderToken::generate()).await;
    assert_eq!(next.get(), record.fencing.get() + 1);
}

#[tokio::test(start_paused = true)]
async fn break_frees_a_held_lease_keeping_the_counter() {
    let (store, holder_side, admin) = two_processes();
    let k = key("broken");
    let holder = HolderToken::generate();
    let token = granted(&holder_side, &k, holder).await;
    let before = admin.break_lease(&k).await.unwrap().unwrap();
    assert!(before.is_held_by(&holder));
    let now = store.peek(&k).unwrap();
    assert!(now.is_free());
    assert_eq!(now.fencing, token);
    let renewed = holder_side
        .renew(&RenewRequest::new(k.clone(), holder, TTL))
        .await
        .unwrap();
    assert_eq!(renewed, RenewOutcome::NotHeld);
    assert!(
        admin
            .break_lease(&key("never-written"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn inspect_and_list_report_expiry_by_this_process_observation() {
    let (_, holder_side, watcher) = two_processes();
    let k = key("dir/watched");
    let holder = HolderToken::generate();
    granted(&holder_side, &k, holder).await;
    granted(&holder_side, &key("other"), HolderToken::generate()).await;
    let record = watcher.inspect(&k).await.unwrap().unwrap();
    assert_eq!(record.state, RecordState::Held);
    assert_eq!(record.ttl, Some(TTL));
    assert_eq!(record.metadata.unwrap().as_str(), "test");
    sleep(rule_wait()).await;
    let listed: Vec<LeaseRecord> = watcher.list("dir/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, k);
    assert_eq!(listed[0].state, RecordState::Expired);
    assert_eq!(listed[0].expires_in, Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn capabilities_declare_the_rule() {
    let rule = ObservationRule::new(0.05, Duration::from_millis(250)).unwrap();
    let backend = ObservedExpiryBackend::with_rule(InMemoryConditionalStore::new(), rule);
    let caps = backend.capabilities();
    assert_eq!(caps.clock, ClockModel::ObservedExpiry);
    assert_eq!(caps.observation, Some(rule));
    assert_eq!(backend.rule(), rule);
    assert_eq!(
        backend.name(),
        lease_core::observed::ConditionalStore::name(backend.store())
    );
    let debug = format!("{backend:?}");
    assert!(
        debug.contains("ObservedExpiryBackend") && debug.contains("rule"),
        "{debug}"
    );
    assert!(caps.can_break);
    let err = backend
        .acquire(&AcquireRequest::new(
            key("k"),
            HolderToken::generate(),
            Duration::ZERO,
            HolderMetadata::from_stored_lossy("t"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Fatal);
}

/// Takes over after the bare TTL (no drift allowance, no margin) while declaring the default rule.
#[derive(Debug)]
struct EarlyTakeover {
    inner: MemBackend,
}

#[async_trait]
impl Backend for EarlyTakeover {
    fn name(&self) -> &'static str {
        "early-takeover"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner
            .capabilities()
            .with_observation(ObservationRule::default())
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.inner.acquire(request).await
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.inner.renew(request).await
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.inner.release(request).await
    }

    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.inspect(key).await
    }
}

fn early_takeover() -> Harness {
    let bare = ObservationRule::new(0.0, Duration::ZERO).unwrap();
    Harness::new(EarlyTakeover {
        inner: ObservedExpiryBackend::with_rule(InMemoryConditionalStore::new(), bare),
    })
    .with_ttl(TTL)
}

#[tokio::test(start_paused = true)]
async fn kit_rejects_a_takeover_earlier_than_the_declared_rule() {
    let h = early_takeover();
    for case in [
        "observed_takeover_waits_for_the_rule",
        "observed_renewal_restarts_the_observation",
    ] {
        let failure = run_case(case, &h).await.unwrap_err();
        assert!(failure.message.contains("taken over"), "{case}: {failure}");
    }
    // Control: the same backend declaring the rule it applies passes.
    let honest = Harness::new(ObservedExpiryBackend::with_rule(
        InMemoryConditionalStore::new(),
        ObservationRule::new(0.0, Duration::ZERO).unwrap(),
    ))
    .with_ttl(TTL);
    run_case("observed_takeover_waits_for_the_rule", &honest)
        .await
        .unwrap();
    run_case("observed_renewal_restarts_the_observation", &honest)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn kit_requires_an_observed_expiry_backend_to_declare_its_rule() {
    #[derive(Debug)]
    struct Undeclared(MemBackend);
    #[async_trait]
    impl Backend for Undeclared {
        fn name(&self) -> &'static str {
            "undeclared"
        }
        fn capabilities(&self) -> Capabilities {
            let caps = self.0.capabilities();
            Capabilities::new(caps.min_ttl, caps.max_ttl, ClockModel::ObservedExpiry)
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
            self.0.inspect(k).await
        }
    }
    let h = Harness::new(Undeclared(ObservedExpiryBackend::new(
        InMemoryConditionalStore::new(),
    )));
    let failure = run_case("observed_takeover_waits_for_the_rule", &h)
        .await
        .unwrap_err();
    assert!(failure.message.contains("ObservationRule"), "{failure}");
}

#[tokio::test(start_paused = true)]
async fn a_cold_instance_gets_a_free_key_on_its_first_attempt() {
    let (store, first_process, cold) = two_processes();
    let k = key("released-elsewhere");
    let holder = HolderToken::generate();
    let first = granted(&first_process, &k, holder).await;
    first_process
        .release(&ReleaseRequest::new(k.clone(), holder))
        .await
        .unwrap();
    // The cold instance does not know the key exists: its create conflicts, it reads the free
    // lease and takes it, all in one acquire (create + read + update).
    let before = store.calls().total();
    assert_eq!(
        granted(&cold, &k, HolderToken::generate()).await.get(),
        first.get() + 1
    );
    assert_eq!(store.calls().total() - before, 3);
}

#[tokio::test(start_paused = true)]
async fn breaking_a_free_lease_writes_nothing() {
    let store = InMemoryConditionalStore::new();
    let backend = ObservedExpiryBackend::new(store.clone());
    let k = key("free-break");
    let holder = HolderToken::generate();
    granted(&backend, &k, holder).await;
    backend
        .release(&ReleaseRequest::new(k.clone(), holder))
        .await
        .unwrap();
    let before: StoreCalls = store.calls();
    let record = backend.break_lease(&k).await.unwrap().unwrap();
    assert!(!record.is_held());
    let after = store.calls();
    assert_eq!(after.updates, before.updates, "break rewrote a free lease");
    assert_eq!(after.creates, before.creates);
}

/// A conditional store that does not implement `list`: forwards the rest to the in-memory one.
#[derive(Debug)]
struct NoList(InMemoryConditionalStore);

#[async_trait]
impl lease_core::observed::ConditionalStore for NoList {
    type Version = <InMemoryConditionalStore as lease_core::observed::ConditionalStore>::Version;
    fn name(&self) -> &'static str {
        "no-list"
    }
    fn ttl_range(&self) -> (Duration, Duration) {
        self.0.ttl_range()
    }
    async fn read(
        &self,
        key: &LeaseKey,
    ) -> Result<lease_core::observed::ReadOutcome<Self::Version>, BackendError> {
        self.0.read(key).await
    }
    async fn create(
        &self,
        key: &LeaseKey,
        lease: &lease_core::observed::StoredLease,
    ) -> Result<lease_core::observed::WriteOutcome<Self::Version>, BackendError> {
        self.0.create(key, lease).await
    }
    async fn update(
        &self,
        key: &LeaseKey,
        expected: &Self::Version,
        lease: &lease_core::observed::StoredLease,
    ) -> Result<lease_core::observed::WriteOutcome<Self::Version>, BackendError> {
        self.0.update(key, expected, lease).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_without_list_says_so() {
    let backend = ObservedExpiryBackend::new(NoList(InMemoryConditionalStore::new()));
    granted_on(&backend, &key("listed"), HolderToken::generate()).await;
    let err = backend.list("").await.unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Unsupported);
}

async fn granted_on<B: Backend>(backend: &B, key: &LeaseKey, holder: HolderToken) {
    let request = AcquireRequest::new(
        key.clone(),
        holder,
        TTL,
        HolderMetadata::from_stored_lossy("t"),
    );
    assert!(matches!(
        backend.acquire(&request).await.unwrap(),
        AcquireOutcome::Acquired(_)
    ));
}

/// Item 11 of issue 19: keys of leases lost without a release do not pile up in the instance's
/// memory; forgetting them costs a read, never a grant.
#[tokio::test(start_paused = true)]
async fn remembered_keys_are_bounded_and_forgetting_is_safe() {
    let store = InMemoryConditionalStore::new();
    let backend = ObservedExpiryBackend::new(store.clone()).with_key_limit(8);
    let mut grants = Vec::new();
    for i in 0..50 {
        let k = key(&format!("lost-{i}"));
        let holder = HolderToken::generate();
        granted(&backend, &k, holder).await;
        grants.push((k, holder));
        assert!(
            backend.remembered_keys() <= 8,
            "{} keys remembered",
            backend.remembered_keys()
        );
    }
    // The first grant was forgotten long ago: its renewal reads and still finds it ours.
    let (k, holder) = &grants[0];
    let renewed = backend
        .renew(&RenewRequest::new(k.clone(), *holder, TTL))
        .await
        .unwrap();
    assert_eq!(renewed, RenewOutcome::Renewed(TTL));
    // And a contender on another instance still cannot take it before the rule.
    let other = ObservedExpiryBackend::new(store);
    let request = AcquireRequest::new(
        k.clone(),
        HolderToken::generate(),
        TTL,
        HolderMetadata::from_stored_lossy("other"),
    );
    assert!(matches!(
        other.acquire(&request).await.unwrap(),
        AcquireOutcome::Held(_)
    ));
}
