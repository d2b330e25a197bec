//! Helpers shared by the backend test files (each file uses a subset).
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lease_sql::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, BackendErrorKind, Capabilities,
    ErrorKind, HolderToken, LeaseKey, LeaseRecord, Locker, RecordState, ReleaseOutcome,
    ReleaseRequest, RenewOutcome, RenewRequest, TableName, async_trait,
};

/// A random lowercase suffix for table and key names.
pub fn random_suffix() -> String {
    HolderToken::generate().to_string()[..12].to_owned()
}

/// A fresh table name for one test.
pub fn unique_table() -> TableName {
    TableName::new(&format!("leases_{}", random_suffix())).expect("valid table name")
}

/// Names that must be refused before anything reaches SQL.
pub const HOSTILE_TABLE_NAMES: &[&str] = &[
    "leases; DROP TABLE users; --",
    "leases\"--",
    "leases`",
    "lea'ses",
    "a.b.c",
    "",
    "1leases",
    "leases name",
    "leases\0",
    "schema.",
];

pub fn assert_hostile_names_rejected() {
    for name in HOSTILE_TABLE_NAMES {
        let err = TableName::new(name).expect_err(name);
        assert_eq!(err.field(), "table name", "{name:?}: {err}");
        let as_error: lease_sql::Error = err.into();
        assert_eq!(as_error.kind(), ErrorKind::InvalidInput);
    }
}

/// Wraps a backend and records the size of every `renew_many` batch.
#[derive(Clone, Debug)]
pub struct CountingBackend {
    inner: Arc<dyn Backend>,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl CountingBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            batches: Arc::default(),
        }
    }

    pub fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }
}

#[async_trait]
impl Backend for CountingBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.inner.acquire(request).await
    }
    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.batches.lock().unwrap().push(1);
        self.inner.renew(request).await
    }
    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        self.batches.lock().unwrap().push(requests.len());
        self.inner.renew_many(requests).await
    }
    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.inner.release(request).await
    }
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.inspect(key).await
    }
    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.break_lease(key).await
    }
    async fn wait_for_change(
        &self,
        key: &LeaseKey,
        max_wait: Duration,
    ) -> Result<(), BackendError> {
        self.inner.wait_for_change(key, max_wait).await
    }
}

/// Holds `n` leases on one locker and checks that every `renew_many` call the locker makes costs
/// `statements_per_batch` statements whatever its size, that the leases stay held, and that the
/// renewals of a whole interval take at most two calls (the core's renewer groups leases whose
/// renewals fall due within half an interval of each other; leases taken over several seconds can
/// settle into two groups). Then checks the backend directly: one `renew_many` of all `n`
/// grants is `statements_per_batch` statements and renews every one.
///
/// `statements` reads the backend's statement counter.
pub async fn many_leases_one_statement_per_interval(
    backend: Arc<dyn Backend>,
    statements: impl Fn() -> u64,
    n: usize,
    statements_per_batch: u64,
) {
    let counting = CountingBackend::new(Arc::clone(&backend));
    let interval = Duration::from_secs(1);
    // Long enough that a starved machine (a CI box compiling beside it) does not lose leases
    // while 10,000 are being taken; the renew interval is what the test is about.
    let ttl = Duration::from_secs(30);
    let locker = Locker::builder(counting.clone())
        .ttl(ttl)
        .renew_interval(interval)
        .build()
        .unwrap();
    let prefix = format!("many-{}", random_suffix());
    let leases: Vec<_> = futures_util::stream::iter(0..n)
        .map(|i| {
            let locker = locker.clone();
            let key = format!("{prefix}/{i}");
            async move { locker.try_acquire(&key).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let leases: Vec<_> = leases
        .into_iter()
        .map(|l| l.expect("acquire").expect("free key"))
        .collect();
    assert_eq!(locker.held_count(), n);
    tokio::time::sleep(interval * 2).await;
    let batches_before = counting.batches().len();
    let statements_before = statements();
    let intervals = 3;
    tokio::time::sleep(interval * intervals).await;
    let batches = counting.batches()[batches_before..].to_vec();
    let statements_used = statements() - statements_before;
    eprintln!(
        "{n} leases on one locker: renew_many calls over {intervals} intervals: {batches:?}; \
         statements: {statements_used}"
    );
    // Round trips include a server-side prepare the first time a pooled connection runs the
    // statement: at most one per call.
    let calls = batches.len() as u64;
    assert!(
        (calls * statements_per_batch..=calls * (statements_per_batch + 1))
            .contains(&statements_used),
        "each renew_many call must cost {statements_per_batch} statement(s) whatever its size \
         (plus a first-use prepare): {statements_used} for {calls} calls"
    );
    // The locker puts every lease in each batch, so one call per interval carries all of them.
    assert!(
        (intervals as usize - 1..=intervals as usize + 1).contains(&batches.len()),
        "expected one renew_many call per interval, saw {batches:?}"
    );
    assert!(
        batches.iter().all(|&size| size == n),
        "every batch must carry all {n} leases: {batches:?}"
    );
    assert!(
        batches.iter().sum::<usize>() >= n * (intervals as usize - 1),
        "not every lease was renewed every interval: {batches:?}"
    );
    assert!(leases.iter().all(|l| l.is_held()), "a lease was lost");
    assert_eq!(locker.held_count(), n);
    futures_util::stream::iter(leases)
        .map(|lease| lease.release())
        .buffer_unordered(16)
        .for_each(|r| async move { r.expect("release") })
        .await;
    assert_eq!(locker.held_count(), 0);

    // The backend alone: all n grants renewed by one renew_many.
    let grants: Vec<(LeaseKey, HolderToken)> = (0..n)
        .map(|i| {
            (
                LeaseKey::new(format!("{prefix}-raw/{i}")).unwrap(),
                HolderToken::generate(),
            )
        })
        .collect();
    let metadata = lease_sql::HolderMetadata::new("many").unwrap();
    futures_util::stream::iter(grants.iter())
        .map(|(key, holder)| {
            let request = AcquireRequest::new(
                key.clone(),
                *holder,
                Duration::from_secs(120),
                metadata.clone(),
            );
            let backend = Arc::clone(&backend);
            async move { backend.acquire(&request).await }
        })
        .buffer_unordered(16)
        .for_each(|r| async move {
            assert!(matches!(r, Ok(AcquireOutcome::Acquired(_))), "{r:?}");
        })
        .await;
    let mut requests: Vec<RenewRequest> = grants
        .iter()
        .map(|(key, holder)| RenewRequest::new(key.clone(), *holder, Duration::from_secs(300)))
        .collect();
    // One stale grant in the batch: refused, without disturbing the others.
    requests.push(RenewRequest::new(
        grants[0].0.clone(),
        HolderToken::generate(),
        Duration::from_secs(300),
    ));
    let before = statements();
    let results = backend.renew_many(&requests).await;
    let used = statements() - before;
    eprintln!(
        "one renew_many of {} requests: {used} statement(s)",
        requests.len()
    );
    assert_eq!(results.len(), n + 1);
    assert!(
        results[..n]
            .iter()
            .all(|r| matches!(r, Ok(RenewOutcome::Renewed(_)))),
        "a held grant was not renewed: {} of {n}, first {:?}",
        results[..n]
            .iter()
            .filter(|r| !matches!(r, Ok(RenewOutcome::Renewed(_))))
            .count(),
        results[..n]
            .iter()
            .find(|r| !matches!(r, Ok(RenewOutcome::Renewed(_))))
    );
    assert!(matches!(results[n], Ok(RenewOutcome::NotHeld)));
    // The one extra statement a partial batch may cost (MySQL asks which ones were renewed),
    // and first-use prepares of both on the connection.
    assert!(
        (statements_per_batch..=statements_per_batch + 3).contains(&used),
        "{used} statements"
    );
    let record = backend.inspect(&grants[n - 1].0).await.unwrap().unwrap();
    assert!(
        record.expires_in.unwrap() > Duration::from_secs(200),
        "{record:?}"
    );
}

/// A 127.0.0.1 TCP proxy to `upstream` that, once armed, cuts the connection (both ways) when the
/// server's reply contains `marker`, without forwarding that reply: the request landed, the
/// answer is lost.
pub struct CuttingProxy {
    pub port: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
    cuts: Arc<std::sync::atomic::AtomicU64>,
}

impl CuttingProxy {
    pub async fn start(upstream: std::net::SocketAddr, marker: &'static [u8]) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let (armed2, cuts2) = (Arc::clone(&armed), Arc::clone(&cuts));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (armed, cuts) = (Arc::clone(&armed2), Arc::clone(&cuts2));
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buf[..n];
                        if armed.load(Ordering::SeqCst)
                            && chunk.windows(marker.len()).any(|w| w == marker)
                        {
                            armed.store(false, Ordering::SeqCst);
                            cuts.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if cw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                    // Dropping both halves closes both connections.
                });
            }
        });
        Self { port, armed, cuts }
    }

    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn cuts(&self) -> u64 {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Each named row was written by something else (NULL or garbage columns): inspect and acquire
/// both report `CorruptRecord`, never a panic or a grant.
pub async fn assert_foreign_rows_are_corrupt(backend: Arc<dyn Backend>, names: &[&str]) {
    let locker = Locker::from_shared(Arc::clone(&backend));
    for name in names {
        let key = LeaseKey::new(*name).unwrap();
        let err = backend.inspect(&key).await.expect_err(name);
        assert_eq!(err.kind(), BackendErrorKind::CorruptRecord, "{name}: {err}");
        let err = locker.try_acquire(name).await.expect_err(name);
        assert_eq!(err.kind(), ErrorKind::CorruptRecord, "{name}: {err}");
    }
    // A listing reports each bad row as unreadable, in key order beside a readable one, instead
    // of failing whole.
    let good = format!("readable-{}", random_suffix());
    let lease = locker.try_acquire(&good).await.unwrap().expect("free");
    let listed = backend
        .list("")
        .await
        .expect("one bad row must not fail the listing");
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].key.as_str().as_bytes() < w[1].key.as_str().as_bytes()),
        "not sorted by key"
    );
    for name in names {
        let record = listed
            .iter()
            .find(|r| r.key.as_str() == *name)
            .unwrap_or_else(|| panic!("{name} is not listed"));
        assert_eq!(record.state, RecordState::Unreadable, "{name}: {record:?}");
        assert!(record.holder.is_none(), "{name}");
        let why = record.unreadable.as_deref().unwrap_or_default();
        assert!(!why.is_empty(), "{name}: no reason");
    }
    let record = listed
        .iter()
        .find(|r| r.key.as_str() == good)
        .expect("the readable row is listed");
    assert!(record.is_held(), "{record:?}");
    assert_eq!(record.fencing, lease.fencing_token());
    lease.release().await.unwrap();
}

/// The row `name` holds the largest counter a BIGINT can: acquiring it is `CorruptRecord` (the
/// token cannot be bumped) and the row is left free with its counter.
pub async fn assert_exhausted_counter_is_corrupt(backend: Arc<dyn Backend>, name: &str) {
    let locker = Locker::from_shared(Arc::clone(&backend));
    let err = locker.try_acquire(name).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptRecord, "{err}");
    let record = backend
        .inspect(&LeaseKey::new(name).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.state, RecordState::Free);
    assert_eq!(record.fencing.get(), i64::MAX as u64);
}

/// `renew_many` asked to renew the same grant twice with different TTLs: the grant is renewed,
/// and both answers report the one TTL the store now holds (never two different ones).
pub async fn duplicate_renewals_report_the_stored_ttl(backend: Arc<dyn Backend>) {
    let key = LeaseKey::new(format!("dup-{}", random_suffix())).unwrap();
    let holder = HolderToken::generate();
    let request = AcquireRequest::new(
        key.clone(),
        holder,
        Duration::from_secs(30),
        lease_sql::HolderMetadata::new("dup").unwrap(),
    );
    assert!(matches!(
        backend.acquire(&request).await,
        Ok(AcquireOutcome::Acquired(_))
    ));
    let stranger = LeaseKey::new(format!("dup-none-{}", random_suffix())).unwrap();
    let results = backend
        .renew_many(&[
            RenewRequest::new(key.clone(), holder, Duration::from_secs(20)),
            RenewRequest::new(stranger, holder, Duration::from_secs(20)),
            RenewRequest::new(key.clone(), holder, Duration::from_secs(40)),
        ])
        .await;
    let granted: Vec<Duration> = [&results[0], &results[2]]
        .iter()
        .map(|r| match r {
            Ok(RenewOutcome::Renewed(ttl)) => *ttl,
            other => panic!("expected Renewed, got {other:?}"),
        })
        .collect();
    assert!(
        matches!(results[1], Ok(RenewOutcome::NotHeld)),
        "{results:?}"
    );
    assert_eq!(granted[0], granted[1], "one grant, two different TTLs");
    let record = backend.inspect(&key).await.unwrap().unwrap();
    assert_eq!(record.ttl, Some(granted[0]), "{record:?}");
    let left = record.expires_in.unwrap();
    assert!(
        left <= granted[0] && left + Duration::from_secs(5) > granted[0],
        "stored expiry {left:?} does not follow the reported TTL {:?}",
        granted[0]
    );
}

/// One `renew_many` over leases with every key character the library allows (and a key of the
/// longest length), three different TTLs, one lease released and one taken by another holder:
/// each live lease is renewed with its own TTL, stored as reported, and the two lost ones are
/// answered `NotHeld` (which a dialect that first counts the changed rows has to find out).
pub async fn mixed_batch_renews_each_lease_with_its_own_ttl(backend: Arc<dyn Backend>) {
    let suffix = random_suffix();
    let long = format!("mixed-{suffix}-{}", "x".repeat(LeaseKey::MAX_LEN));
    let names = [
        format!("mixed-{suffix}/a_b-c.d:e@f"),
        format!("mixed-{suffix}/UPPER/9"),
        long[..LeaseKey::MAX_LEN].to_owned(),
        format!("mixed-{suffix}/released"),
        format!("mixed-{suffix}/taken"),
        format!("mixed-{suffix}/@:_-"),
    ];
    let ttls = [20, 30, 40, 30, 30, 20].map(Duration::from_secs);
    let keys: Vec<LeaseKey> = names
        .iter()
        .map(|n| LeaseKey::new(n.as_str()).unwrap())
        .collect();
    let holders: Vec<HolderToken> = keys.iter().map(|_| HolderToken::generate()).collect();
    for (key, holder) in keys.iter().zip(&holders) {
        let request = AcquireRequest::new(
            key.clone(),
            *holder,
            Duration::from_secs(30),
            lease_sql::HolderMetadata::new("mixed").unwrap(),
        );
        let granted = backend.acquire(&request).await;
        assert!(
            matches!(granted, Ok(AcquireOutcome::Acquired(_))),
            "{key}: {granted:?}"
        );
    }
    let released = backend
        .release(&ReleaseRequest::new(keys[3].clone(), holders[3]))
        .await;
    assert!(
        matches!(released, Ok(ReleaseOutcome::Released)),
        "{released:?}"
    );
    backend.break_lease(&keys[4]).await.unwrap();
    let thief = AcquireRequest::new(
        keys[4].clone(),
        HolderToken::generate(),
        Duration::from_secs(30),
        lease_sql::HolderMetadata::new("thief").unwrap(),
    );
    assert!(matches!(
        backend.acquire(&thief).await,
        Ok(AcquireOutcome::Acquired(_))
    ));
    let requests: Vec<RenewRequest> = keys
        .iter()
        .zip(&holders)
        .zip(ttls)
        .map(|((key, holder), ttl)| RenewRequest::new(key.clone(), *holder, ttl))
        .collect();
    let results = backend.renew_many(&requests).await;
    assert_eq!(results.len(), requests.len());
    for (i, result) in results.iter().enumerate() {
        if i == 3 || i == 4 {
            assert!(
                matches!(result, Ok(RenewOutcome::NotHeld)),
                "{}: {result:?}",
                keys[i]
            );
            continue;
        }
        match result {
            Ok(RenewOutcome::Renewed(ttl)) => assert_eq!(*ttl, ttls[i], "{}", keys[i]),
            other => panic!(
                "{}: expected Renewed({:?}), got {other:?}",
                keys[i], ttls[i]
            ),
        }
        let record = backend.inspect(&keys[i]).await.unwrap().unwrap();
        assert_eq!(record.ttl, Some(ttls[i]), "{record:?}");
        // Acquired for 30 s: a 20 s or 40 s expiry shows this renewal's TTL was stored.
        let left = record.expires_in.unwrap();
        assert!(
            left <= ttls[i] && left + Duration::from_secs(5) > ttls[i],
            "{}: stored expiry {left:?} does not follow the TTL {:?}",
            keys[i],
            ttls[i]
        );
    }
}

/// `list(prefix)`: every record under the prefix and nothing else, sorted by key in byte order,
/// across pages (more than 1,000 records), with `_` matched literally (a legal key character,
/// and a `LIKE` wildcard), and free, held and expired records in their states.
pub async fn list_returns_the_prefix_sorted(backend: Arc<dyn Backend>) {
    let p = format!("list-{}", random_suffix());
    let metadata = lease_sql::HolderMetadata::new("lister").unwrap();
    let acquire = |key: String, ttl: Duration| {
        let backend = Arc::clone(&backend);
        let metadata = metadata.clone();
        async move {
            let holder = HolderToken::generate();
            let request = AcquireRequest::new(LeaseKey::new(&key).unwrap(), holder, ttl, metadata);
            let outcome = backend.acquire(&request).await.unwrap();
            assert!(
                matches!(outcome, AcquireOutcome::Acquired(_)),
                "{outcome:?}"
            );
            holder
        }
    };
    const MANY: usize = 1_050;
    futures_util::stream::iter(0..MANY)
        .map(|i| acquire(format!("{p}/many/{i:05}"), Duration::from_secs(60)))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let held = acquire(format!("{p}/a_b"), Duration::from_secs(60)).await;
    acquire(format!("{p}/aXb"), Duration::from_secs(60)).await;
    let released = acquire(format!("{p}/a_c"), Duration::from_secs(60)).await;
    backend
        .release(&ReleaseRequest::new(
            LeaseKey::new(format!("{p}/a_c")).unwrap(),
            released,
        ))
        .await
        .unwrap();
    acquire(format!("{p}/a_d"), Duration::from_millis(50)).await;
    // Just past the prefix `{p}/` in byte order ('0' follows '/'): never listed under it.
    acquire(format!("{p}0"), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let underscored = backend.list(&format!("{p}/a_")).await.unwrap();
    let keys: Vec<&str> = underscored.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        [format!("{p}/a_b"), format!("{p}/a_c"), format!("{p}/a_d")],
        "`_` must match itself only"
    );
    assert!(underscored[0].is_held_by(&held), "{:?}", underscored[0]);
    assert_eq!(underscored[1].state, RecordState::Free);
    assert_eq!(underscored[2].state, RecordState::Expired);

    let all = backend.list(&format!("{p}/")).await.unwrap();
    assert_eq!(
        all.len(),
        MANY + 4,
        "every record under the prefix, across pages"
    );
    assert!(
        all.windows(2)
            .all(|w| w[0].key.as_str().as_bytes() < w[1].key.as_str().as_bytes()),
        "not sorted by key"
    );
    assert!(
        all.iter()
            .all(|r| r.key.as_str().starts_with(&format!("{p}/")))
    );
    // Byte order: 'X' (0x58) before '_' (0x5f) before 'm' (0x6d).
    assert_eq!(all[0].key.as_str(), format!("{p}/aXb"));
    assert_eq!(all[1].key.as_str(), format!("{p}/a_b"));
    assert_eq!(all[4].key.as_str(), format!("{p}/many/00000"));
    let everything = backend.list("").await.unwrap();
    assert_eq!(
        everything.len(),
        MANY + 5,
        "the empty prefix lists the whole table"
    );
    assert!(backend.list(&format!("{p}/none")).await.unwrap().is_empty());
    let err = backend.list("bad prefix").await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

/// Round trips are counted as sent: the first use of a statement on a (single) pooled connection
/// costs `prepare` extra, a repeat costs 1; a break costs `break_trips`.
pub async fn round_trips_are_counted(
    backend: Arc<dyn Backend>,
    round_trips: impl Fn() -> u64,
    prepare: u64,
    break_trips: u64,
) {
    let metadata = lease_sql::HolderMetadata::new("count").unwrap();
    let request = |key: &LeaseKey| {
        AcquireRequest::new(
            key.clone(),
            HolderToken::generate(),
            Duration::from_secs(30),
            metadata.clone(),
        )
    };
    let (a, b) = (
        LeaseKey::new(format!("count-{}", random_suffix())).unwrap(),
        LeaseKey::new(format!("count-{}", random_suffix())).unwrap(),
    );
    let before = round_trips();
    backend.acquire(&request(&a)).await.unwrap();
    assert_eq!(round_trips() - before, 1 + prepare, "first acquire");
    let before = round_trips();
    backend.acquire(&request(&b)).await.unwrap();
    assert_eq!(round_trips() - before, 1, "second acquire");
    // Contended: the upsert and a read of the holder's record (first read: a prepare).
    let before = round_trips();
    backend.acquire(&request(&b)).await.unwrap();
    assert_eq!(round_trips() - before, 2 + prepare, "contended acquire");
    // Break, twice: the second one is counted without prepares.
    backend.break_lease(&a).await.unwrap();
    backend.acquire(&request(&a)).await.unwrap();
    let before = round_trips();
    backend.break_lease(&a).await.unwrap();
    assert_eq!(round_trips() - before, break_trips, "break");
}
