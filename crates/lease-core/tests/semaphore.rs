//! Counting semaphores on MemoryBackend: cost, waking, the permit-count rule, the fallback without
//! `list`, and typed errors. (The kit's semaphore cases run on every backend.)

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, Error, ErrorKind,
    HolderMetadata, HolderToken, LeaseKey, LeaseRecord, Locker, MemoryBackend, ReleaseOutcome,
    ReleaseRequest, RenewOutcome, RenewRequest, RetryPolicy, Semaphore, SemaphoreOptions,
    async_trait,
};

/// MemoryBackend with call counters, an optional "cannot list", and an optional foreign grant that
/// lands just before the next acquire (a contender racing in after our listing).
#[derive(Debug, Default)]
struct Spy {
    inner: MemoryBackend,
    acquires: AtomicU64,
    lists: AtomicU64,
    no_list: AtomicBool,
    race_in: Mutex<Option<AcquireRequest>>,
}

impl Spy {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

#[async_trait]
impl Backend for Spy {
    fn name(&self) -> &'static str {
        "spy"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        let racing = self.race_in.lock().unwrap().take();
        if let Some(racing) = racing {
            let outcome = self.inner.acquire(&racing).await?;
            assert!(matches!(outcome, AcquireOutcome::Acquired(_)));
        }
        self.acquires.fetch_add(1, Ordering::SeqCst);
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
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        if self.no_list.load(Ordering::SeqCst) {
            return Err(BackendError::unsupported("spy", "list"));
        }
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix).await
    }
    async fn wait_for_change(
        &self,
        key: &LeaseKey,
        max_wait: Duration,
    ) -> Result<(), BackendError> {
        self.inner.wait_for_change(key, max_wait).await
    }
}

fn locker(backend: Arc<dyn Backend>, name: &str) -> Locker {
    Locker::builder_shared(backend)
        .ttl(Duration::from_secs(5))
        .retry(
            RetryPolicy::default()
                .with_initial_delay(Duration::from_millis(5))
                .with_max_delay(Duration::from_millis(50)),
        )
        .metadata(HolderMetadata::new(name).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn acquire_on_a_nearly_full_semaphore_costs_one_acquire_not_n() {
    let spy = Spy::new();
    let pool = Semaphore::new(&locker(spy.clone(), "a"), "pool", 10).unwrap();
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(pool.try_acquire().await.unwrap().unwrap());
    }
    spy.acquires.store(0, Ordering::SeqCst);
    spy.lists.store(0, Ordering::SeqCst);
    let last = pool.acquire().await.unwrap();
    assert_eq!(
        spy.acquires.load(Ordering::SeqCst),
        1,
        "only the free slot is tried"
    );
    assert_eq!(
        spy.lists.load(Ordering::SeqCst),
        2,
        "one listing to find it, one to check counts"
    );
    let free_slot = (0..10)
        .find(|s| held.iter().all(|p| p.slot() != *s))
        .unwrap();
    assert_eq!(last.slot(), free_slot);
    spy.acquires.store(0, Ordering::SeqCst);
    assert!(pool.try_acquire().await.unwrap().is_none());
    assert_eq!(
        spy.acquires.load(Ordering::SeqCst),
        0,
        "a full listing tries nothing"
    );
}

#[tokio::test]
async fn without_list_every_slot_is_tried_and_inspect_reads_each() {
    let spy = Spy::new();
    spy.no_list.store(true, Ordering::SeqCst);
    let pool = Semaphore::new(&locker(spy.clone(), "a"), "pool", 3).unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.try_acquire().await.unwrap().unwrap());
    }
    let mut slots: Vec<u32> = held.iter().map(|p| p.slot()).collect();
    slots.sort_unstable();
    assert_eq!(slots, [0, 1, 2]);
    spy.acquires.store(0, Ordering::SeqCst);
    assert!(pool.try_acquire().await.unwrap().is_none());
    assert_eq!(
        spy.acquires.load(Ordering::SeqCst),
        3,
        "each slot tried once"
    );
    let records = pool.inspect().await.unwrap();
    assert_eq!(records.len(), 3);
    assert!(
        records
            .iter()
            .all(|r| r.record.is_held() && r.declared_permits == Some(3))
    );
}

#[tokio::test]
async fn a_grant_racing_in_after_the_listing_is_refused_by_the_count_check() {
    let racer = || {
        AcquireRequest::new(
            LeaseKey::new("pool/permit-4").unwrap(),
            HolderToken::generate(),
            Duration::from_secs(5),
            HolderMetadata::new("other-host permits=5").unwrap(),
        )
    };
    let spy = Spy::new();
    let three = Semaphore::new(&locker(spy.clone(), "a"), "pool", 3).unwrap();
    *spy.race_in.lock().unwrap() = Some(racer());
    match three.try_acquire().await {
        Err(Error::PermitCountMismatch {
            name,
            ours: 3,
            theirs: 5,
        }) => assert_eq!(name.as_str(), "pool"),
        other => panic!("expected PermitCountMismatch, got {other:?}"),
    }
    // The refused grant was given back.
    let records = three.inspect().await.unwrap();
    let held: Vec<u32> = records
        .iter()
        .filter(|r| r.record.is_held())
        .map(|r| r.slot)
        .collect();
    assert_eq!(held, [4], "only the racer's slot is held: {records:?}");

    // The same race with the check off hands out a permit beside the other count's holder.
    let spy = Spy::new();
    let options = SemaphoreOptions::new(3).with_permit_count_check(false);
    let unchecked = Semaphore::with_options(&locker(spy.clone(), "a"), "pool", options).unwrap();
    *spy.race_in.lock().unwrap() = Some(racer());
    let permit = unchecked.try_acquire().await.unwrap();
    assert!(
        permit.is_some(),
        "without the check the race goes unnoticed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holders_with_different_counts_never_hold_at_once() {
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let inside = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let overlaps = Arc::new(AtomicU64::new(0));
    let most_of_three = Arc::new(AtomicU64::new(0));
    let granted = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..16 {
        let (group, permits) = if c % 2 == 0 { (0, 3) } else { (1, 5) };
        let pool = Semaphore::new(
            &locker(Arc::clone(&store), &format!("c{c}")),
            "pool",
            permits,
        )
        .unwrap();
        let (inside, overlaps, most_of_three, granted, refused) = (
            Arc::clone(&inside),
            Arc::clone(&overlaps),
            Arc::clone(&most_of_three),
            Arc::clone(&granted),
            Arc::clone(&refused),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                match pool.try_acquire().await {
                    Ok(Some(permit)) => {
                        let mine = inside[group].fetch_add(1, Ordering::SeqCst) + 1;
                        if group == 0 {
                            most_of_three.fetch_max(mine, Ordering::SeqCst);
                        }
                        if inside[1 - group].load(Ordering::SeqCst) > 0 {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        granted[group].fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        inside[group].fetch_sub(1, Ordering::SeqCst);
                        permit.release().await.unwrap();
                        // Idle a while, so each count's holders sometimes all leave and the
                        // other count gets its turn.
                        let idle = u64::from(HolderToken::generate().to_bytes()[0] % 10);
                        tokio::time::sleep(Duration::from_millis(idle)).await;
                    }
                    Ok(None) => tokio::task::yield_now().await,
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::PermitCountMismatch, "{e}");
                        match e {
                            Error::PermitCountMismatch { ours, theirs, .. } => {
                                assert_eq!(
                                    (ours, theirs),
                                    if group == 0 { (3, 5) } else { (5, 3) }
                                );
                            }
                            other => panic!("{other}"),
                        }
                        refused.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "holders of 3 and 5 permits held at once"
    );
    assert!(most_of_three.load(Ordering::SeqCst) <= 3);
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the two counts never met"
    );
    // (One count may keep the semaphore the whole time: its holders never all leave at once.)
    assert!(granted[0].load(Ordering::SeqCst) + granted[1].load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn a_waiting_acquire_wakes_on_release_rather_than_its_next_poll() {
    let store = MemoryBackend::new();
    // Polling alone would not retry for a minute.
    let slow_polls = Locker::builder(store.clone())
        .ttl(Duration::from_secs(5))
        .retry(
            RetryPolicy::default()
                .with_initial_delay(Duration::from_secs(60))
                .with_max_delay(Duration::from_secs(60))
                .with_jitter(false),
        )
        .build()
        .unwrap();
    let holders = Semaphore::new(&Locker::new(store.clone()), "pool", 2).unwrap();
    let a = holders.acquire().await.unwrap();
    let b = holders.acquire().await.unwrap();
    let waiter = Semaphore::new(&slow_polls, "pool", 2).unwrap();
    let waiting = tokio::spawn(async move { waiter.acquire().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    let freed = b.slot();
    b.release().await.unwrap();
    let permit = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the release woke the waiter")
        .unwrap()
        .unwrap();
    assert_eq!(permit.slot(), freed);
    assert!(a.is_held());
}

#[tokio::test]
async fn timeouts_and_cancellation_name_the_semaphore() {
    let store = MemoryBackend::new();
    let pool = Semaphore::new(&Locker::new(store.clone()), "pool", 1).unwrap();
    let _held = pool.acquire().await.unwrap();
    match pool.acquire_timeout(Duration::from_millis(100)).await {
        Err(Error::Timeout { key, holder, .. }) => {
            assert_eq!(key.as_str(), "pool");
            let holder = holder.expect("the holder seen");
            assert_eq!(holder.key.as_str(), "pool/permit-0");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let cancel = lease_core::CancellationToken::new();
    cancel.cancel();
    assert!(matches!(
        pool.acquire_cancellable(&cancel).await,
        Err(Error::Cancelled { .. })
    ));
}

#[tokio::test]
async fn bad_permit_counts_and_names_are_typed_errors() {
    let locker = Locker::new(MemoryBackend::new());
    for permits in [0, Semaphore::MAX_PERMITS + 1, u32::MAX] {
        let e = Semaphore::new(&locker, "pool", permits).unwrap_err();
        assert_eq!(e.field(), "permits");
    }
    assert_eq!(
        Semaphore::new(&locker, "bad name", 2).unwrap_err().field(),
        "key"
    );
    // A valid key, but too long once `/permit-10` (the 11th slot) is appended.
    let long = "n".repeat(LeaseKey::MAX_LEN - "/permit-9".len());
    assert!(Semaphore::new(&locker, &long, 10).is_ok());
    assert_eq!(
        Semaphore::new(&locker, &long, 11).unwrap_err().field(),
        "semaphore name"
    );
}

#[tokio::test]
async fn an_unreadable_slot_counts_as_taken_and_is_never_tried() {
    use lease_core::RecordState;
    use lease_core::observed::{InMemoryConditionalStore, ObservedExpiryBackend};
    let store = InMemoryConditionalStore::new();
    let locker = Locker::new(ObservedExpiryBackend::new(store.clone()));
    let pool = Semaphore::new(&locker, "pool", 2).unwrap();
    store.put_unreadable(pool.slot_key(0).unwrap(), "foreign bytes");

    let permit = pool.try_acquire().await.unwrap().expect("slot 1 is free");
    assert_eq!(permit.slot(), 1);
    // Only the unreadable slot is left: full, not an error from trying to acquire it.
    assert!(pool.try_acquire().await.unwrap().is_none());
    let seen = pool.inspect().await.unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].record.state, RecordState::Unreadable);
    assert!(seen[1].record.is_held());
    assert!(store.is_unreadable(pool.slot_key(0).unwrap(), "foreign bytes"));
    permit.release().await.unwrap();
}
