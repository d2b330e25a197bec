//! Latency of the SQL backends against the floor (a raw one-row upsert on the same server, same
//! run) and a go-dbkit-style baseline (one `UPDATE … WHERE expired` acquire on a pre-created row,
//! no fencing), plus PostgreSQL's release → waiter hand-off with `LISTEN/NOTIFY` and polling only.
//! For every database also: takeover time after a holder is killed (it stops renewing; a waiter
//! blocked in `Locker::acquire` gets the key once the store lets the grant expire), and the cost of
//! holding 1, 100 and 10,000 leases on one `Locker` (renewal statements and rows per second,
//! process CPU time, resident memory).
//!
//! Reads `LEASE_TEST_POSTGRES_URL`, `LEASE_TEST_MYSQL_URL` and `LEASE_TEST_SQLITE_DIR` (SQLite
//! falls back to the temporary directory); a database whose feature is off or whose URL is unset is
//! skipped. `cargo xtask bench` runs it; by hand:
//! `cargo bench -p lease-sql --bench sql --all-features`.

// Built once per database feature by `cargo xtask bench`: helpers only some databases use are
// unused in the other builds.
#![cfg_attr(
    not(all(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports)
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use lease_sql::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, HolderMetadata,
    HolderToken, LeaseKey, LeaseRecord, Locker, ReleaseOutcome, ReleaseRequest, RenewOutcome,
    RenewRequest, RetryPolicy, SqlOptions, TableName, async_trait,
};

const ITERATIONS: usize = 300;
const HANDOFFS: usize = 12;
const TTL: Duration = Duration::from_secs(30);
/// Killed holders per database, and the TTL of their grants.
const TAKEOVERS: usize = 5;
const TAKEOVER_TTL: Duration = Duration::from_secs(2);
/// The killed holders start this far apart (so their expiries do not coincide) and run
/// concurrently on distinct keys, so the whole measurement takes about 3 s per database.
const TAKEOVER_STAGGER: Duration = Duration::from_millis(300);
/// Lease counts held on one locker, the renew interval, the TTL, and the measuring window.
const HELD: [usize; 3] = [1, 100, 10_000];
const HOLD_RENEW_INTERVAL: Duration = Duration::from_secs(1);
const HOLD_TTL: Duration = Duration::from_secs(6);
const HOLD_WINDOW: Duration = Duration::from_secs(3);
/// Concurrent acquires (and releases) while taking the held leases.
const HOLD_CONCURRENCY: usize = 64;

struct Stats {
    label: String,
    p50: Duration,
    p99: Duration,
    round_trips: f64,
}

fn stats(label: impl Into<String>, mut samples: Vec<Duration>, round_trips: f64) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        label: label.into(),
        p50: at(0.5),
        p99: at(0.99),
        round_trips,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn print_table(db: &str, floor: &Stats, rows: &[Stats]) {
    println!("\n### {db}\n");
    println!("| operation | round trips | p50 ms | p99 ms | p50 / floor |");
    println!("|---|---|---|---|---|");
    for row in std::iter::once(floor).chain(rows) {
        let trips = if row.round_trips.is_nan() {
            "—".to_owned()
        } else {
            format!("{:.2}", row.round_trips)
        };
        println!(
            "| {} | {trips} | {} | {} | {:.2} |",
            row.label,
            ms(row.p50),
            ms(row.p99),
            row.p50.as_secs_f64() / floor.p50.as_secs_f64()
        );
    }
}

fn random() -> String {
    HolderToken::generate().to_string()[..12].to_owned()
}

/// Times acquire (on a free row), renew and release through the `Backend` trait: one attempt each,
/// exactly what the `Locker` sends. `statements` counts round trips.
async fn lease_ops(backend: &dyn Backend, statements: &dyn Fn() -> u64) -> Vec<Stats> {
    let meta = HolderMetadata::new("bench").unwrap();
    let prefix = random();
    let (mut acquire, mut renew, mut release) = (Vec::new(), Vec::new(), Vec::new());
    let mut trips = [0u64; 3];
    for i in 0..ITERATIONS {
        let key = LeaseKey::new(format!("bench-{prefix}/{}", i % 10)).unwrap();
        let holder = HolderToken::generate();
        let before = statements();
        let started = Instant::now();
        let outcome = backend
            .acquire(&AcquireRequest::new(key.clone(), holder, TTL, meta.clone()))
            .await
            .unwrap();
        acquire.push(started.elapsed());
        trips[0] += statements() - before;
        assert!(matches!(outcome, AcquireOutcome::Acquired(_)));
        let before = statements();
        let started = Instant::now();
        let outcome = backend
            .renew(&RenewRequest::new(key.clone(), holder, TTL))
            .await
            .unwrap();
        renew.push(started.elapsed());
        trips[1] += statements() - before;
        assert!(matches!(outcome, RenewOutcome::Renewed(_)));
        let before = statements();
        let started = Instant::now();
        let outcome = backend
            .release(&ReleaseRequest::new(key, holder))
            .await
            .unwrap();
        release.push(started.elapsed());
        trips[2] += statements() - before;
        assert_eq!(outcome, ReleaseOutcome::Released);
    }
    let n = ITERATIONS as f64;
    vec![
        stats("lease-sql acquire (free row)", acquire, trips[0] as f64 / n),
        stats("lease-sql renew", renew, trips[1] as f64 / n),
        stats("lease-sql release", release, trips[2] as f64 / n),
    ]
}

/// Runs `op(i)` ITERATIONS times and times each call.
macro_rules! timed {
    ($label:expr, $trips:expr, |$i:ident| $body:expr) => {{
        let mut samples = Vec::with_capacity(ITERATIONS);
        for $i in 0..ITERATIONS {
            let started = Instant::now();
            $body;
            samples.push(started.elapsed());
        }
        stats($label, samples, $trips)
    }};
}

/// The baseline's three statements (go-dbkit style: a pre-created row, one UPDATE to acquire when
/// expired, one to extend, one to release; no fencing token) and the floor's upsert.
struct RawSql {
    setup: Vec<String>,
    floor: String,
    create_row: String,
    acquire: String,
    extend: String,
    release: String,
}

/// A backend that hides `wait_for_change`, so waiters poll (the pre-NOTIFY behaviour).
#[derive(Debug)]
struct PollingOnly(Arc<dyn Backend>);

#[async_trait]
impl Backend for PollingOnly {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities().with_notifies_waiters(false)
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
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.0.inspect(key).await
    }
}

/// Release → next holder latency: a waiter blocks in `Locker::acquire`, the holder releases after
/// a pause (so a polling waiter's backoff has grown as it would in practice), and we time from the
/// release call to the waiter's grant.
async fn handoff(label: &str, backend: Arc<dyn Backend>) -> Stats {
    let retry = RetryPolicy::default();
    let holder = Locker::builder_shared(Arc::clone(&backend))
        .ttl(TTL)
        .build()
        .unwrap();
    let waiter = Locker::builder_shared(backend)
        .ttl(TTL)
        .retry(retry)
        .build()
        .unwrap();
    let key = format!("handoff-{}", random());
    let mut samples = Vec::new();
    for _ in 0..HANDOFFS {
        let lease = holder.try_acquire(&key).await.unwrap().unwrap();
        let waiting = tokio::spawn({
            let (waiter, key) = (waiter.clone(), key.clone());
            async move {
                let lease = waiter.acquire(&key).await.unwrap();
                (Instant::now(), lease)
            }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        let released = Instant::now();
        lease.release().await.unwrap();
        let (granted, lease) = waiting.await.unwrap();
        samples.push(granted - released);
        lease.release().await.unwrap();
    }
    stats(label, samples, f64::NAN)
}

/// Counts statements; a closure over the concrete backend's `round_trips()`.
type Statements = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Takeover after a holder is killed. Each holder takes its key with a raw `Backend::acquire`
/// (TTL `TAKEOVER_TTL`, fresh holder token) and then never renews nor releases — exactly what the
/// store sees of a process killed right after its last write. A waiter (`Locker::acquire`, default
/// retry policy) starts at that moment. Measured: from the holder's acquire returning to the
/// waiter's grant, that minus the TTL (the overshoot past the store's expiry), and the statements
/// the waiter sent while waiting (its polls, including the granting one).
async fn takeover(backend: Arc<dyn Backend>, statements: Statements) -> Vec<Stats> {
    let recording = Recording::new(Arc::clone(&backend));
    let waiter = Locker::builder(recording.clone())
        .ttl(TAKEOVER_TTL)
        .build()
        .unwrap();
    let meta = HolderMetadata::new("bench killed holder").unwrap();
    let prefix = random();
    let before = statements();
    let runs = (0..TAKEOVERS).map(|run| {
        let (backend, waiter, meta) = (Arc::clone(&backend), waiter.clone(), meta.clone());
        let key = format!("takeover-{prefix}/{run}");
        async move {
            tokio::time::sleep(TAKEOVER_STAGGER * run as u32).await;
            let request = AcquireRequest::new(
                LeaseKey::new(&key).unwrap(),
                HolderToken::generate(),
                TAKEOVER_TTL,
                meta,
            );
            let outcome = backend.acquire(&request).await.unwrap();
            let written = Instant::now();
            assert!(matches!(outcome, AcquireOutcome::Acquired(_)));
            // The holder is dead from here on: nothing renews or releases its grant.
            let lease = waiter.acquire(&key).await.unwrap();
            let waited = written.elapsed();
            // Released at once, before the waiter's first renewal is due.
            lease.release().await.unwrap();
            waited
        }
    });
    let waited = futures_util::future::join_all(runs).await;
    // The waiters' statements: their polls and the granting acquire (not the holders' acquires
    // nor the releases).
    let trips = (statements() - before - 2 * TAKEOVERS as u64) as f64 / TAKEOVERS as f64;
    let attempts = recording.acquires() as f64 / TAKEOVERS as f64;
    let overshoot = waited
        .iter()
        .map(|w| w.saturating_sub(TAKEOVER_TTL))
        .collect();
    let mut row = stats("holder's last write → waiter's grant", waited, trips);
    row.label = format!("{} | {attempts:.1}", row.label);
    let mut overshoot = stats("overshoot past the TTL", overshoot, f64::NAN);
    overshoot.label = format!("{} | —", overshoot.label);
    vec![row, overshoot]
}

fn print_takeover(db: &str, rows: &[Stats]) {
    println!(
        "\n| {db}: takeover after a killed holder (TTL {} s, {TAKEOVERS} runs) | waiter attempts | waiter statements | p50 ms | max ms |",
        TAKEOVER_TTL.as_secs()
    );
    println!("|---|---|---|---|---|");
    for row in rows {
        let trips = if row.round_trips.is_nan() {
            "—".to_owned()
        } else {
            format!("{:.1}", row.round_trips)
        };
        // `stats` keeps p50 and p99; with a handful of runs p99 is the maximum.
        println!(
            "| {} | {trips} | {} | {} |",
            row.label,
            ms(row.p50),
            ms(row.p99)
        );
    }
}

/// Forwards to a backend, counts `acquire` calls and logs every renewal call: when it started, how
/// many leases it carried, how many it renewed.
#[derive(Debug, Clone)]
struct Recording {
    inner: Arc<dyn Backend>,
    acquires: Arc<AtomicU64>,
    calls: Arc<Mutex<Vec<(Instant, usize, usize)>>>,
}

impl Recording {
    fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            acquires: Arc::default(),
            calls: Arc::default(),
        }
    }

    fn acquires(&self) -> u64 {
        self.acquires.load(Ordering::Relaxed)
    }

    fn calls(&self) -> Vec<(Instant, usize, usize)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Backend for Recording {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn acquire(&self, r: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.acquires.fetch_add(1, Ordering::Relaxed);
        self.inner.acquire(r).await
    }
    async fn renew(&self, r: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        let started = Instant::now();
        let result = self.inner.renew(r).await;
        let renewed = usize::from(matches!(result, Ok(RenewOutcome::Renewed(_))));
        self.calls.lock().unwrap().push((started, 1, renewed));
        result
    }
    async fn renew_many(&self, r: &[RenewRequest]) -> Vec<Result<RenewOutcome, BackendError>> {
        let started = Instant::now();
        let results = self.inner.renew_many(r).await;
        let renewed = results
            .iter()
            .filter(|r| matches!(r, Ok(RenewOutcome::Renewed(_))))
            .count();
        self.calls.lock().unwrap().push((started, r.len(), renewed));
        results
    }
    async fn release(&self, r: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.inner.release(r).await
    }
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.inspect(key).await
    }
    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.break_lease(key).await
    }
    async fn wait_for_change(&self, key: &LeaseKey, wait: Duration) -> Result<(), BackendError> {
        self.inner.wait_for_change(key, wait).await
    }
}

/// This process's CPU time, from `/proc` (Linux only; no unsafe code).
struct Cpu {
    /// Per-thread time on CPU in ns (`/proc/self/task/*/schedstat`), by thread id: precise, but
    /// threads that exit take their time with them.
    threads: Vec<(u64, u64)>,
    /// utime + stime of the whole process (`/proc/self/stat`), in clock ticks of 10 ms (USER_HZ
    /// is 100 on Linux): coarse, but includes exited threads.
    ticks: u64,
}

fn cpu_now() -> Option<Cpu> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path();
        let Some(tid) = path.file_name().and_then(|n| n.to_str()?.parse().ok()) else {
            continue;
        };
        // A thread may exit between listing and reading.
        if let Ok(text) = std::fs::read_to_string(path.join("schedstat"))
            && let Some(ns) = text.split_whitespace().next().and_then(|n| n.parse().ok())
        {
            threads.push((tid, ns));
        }
    }
    threads.sort_unstable();
    Some(Cpu { threads, ticks })
}

/// CPU time between two samples: the per-thread sum when no thread came or went, else the ticks.
fn cpu_between(before: &Cpu, after: &Cpu) -> Duration {
    let same = before.threads.len() == after.threads.len()
        && before
            .threads
            .iter()
            .zip(&after.threads)
            .all(|(a, b)| a.0 == b.0);
    if same {
        let ns: u64 = before
            .threads
            .iter()
            .zip(&after.threads)
            .map(|(a, b)| b.1.saturating_sub(a.1))
            .sum();
        Duration::from_nanos(ns)
    } else {
        Duration::from_millis(10 * after.ticks.saturating_sub(before.ticks))
    }
}

/// Resident set size in bytes (`VmRSS` of `/proc/self/status`).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

struct Holding {
    leases: usize,
    acquire_all: Duration,
    batches: usize,
    window: Duration,
    statements: u64,
    renewed: usize,
    cpu: Option<Duration>,
    rss_delta: Option<i64>,
    lost: usize,
}

/// Holds `n` leases on one locker (renew interval `HOLD_RENEW_INTERVAL`) and measures, over
/// `HOLD_WINDOW` of steady state, the renewal statements and renewed rows per second, the CPU time
/// of this process, and the growth of its resident memory since before the leases were taken.
async fn holding(backend: Arc<dyn Backend>, statements: &Statements, n: usize) -> Holding {
    let log = Recording::new(backend);
    let locker = Locker::builder(log.clone())
        .ttl(HOLD_TTL)
        .renew_interval(HOLD_RENEW_INTERVAL)
        .build()
        .unwrap();
    let rss_before = rss_bytes();
    let prefix = format!("held-{}", random());
    let started = Instant::now();
    let leases: Vec<_> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (locker, key) = (locker.clone(), format!("{prefix}/{i}"));
            async move { locker.try_acquire(&key).await }
        })
        .buffer_unordered(HOLD_CONCURRENCY)
        .collect()
        .await;
    let acquire_all = started.elapsed();
    let leases: Vec<_> = leases
        .into_iter()
        .map(|l| l.expect("acquire").expect("a fresh key is free"))
        .collect();
    // Steady state: wait for a renewal batch that starts after every lease was taken, then start
    // the window half an interval later, so the window holds whole intervals between batches.
    let acquired = Instant::now();
    let deadline = acquired + HOLD_RENEW_INTERVAL * 3 + Duration::from_secs(10);
    while !log.calls().iter().any(|c| c.0 > acquired) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(HOLD_RENEW_INTERVAL / 2).await;
    let (from, statements_before, cpu_before) = (Instant::now(), statements(), cpu_now());
    tokio::time::sleep(HOLD_WINDOW).await;
    let (to, statements_after, cpu_after) = (Instant::now(), statements(), cpu_now());
    let rss_holding = rss_bytes();
    let window: Vec<_> = log
        .calls()
        .into_iter()
        .filter(|c| c.0 >= from && c.0 < to)
        .collect();
    let lost = leases.iter().filter(|l| !l.is_held()).count();
    futures_util::stream::iter(leases)
        .map(|lease| lease.release())
        .buffer_unordered(HOLD_CONCURRENCY)
        .for_each(|_| async {})
        .await;
    Holding {
        leases: n,
        acquire_all,
        batches: window.len(),
        window: to - from,
        statements: statements_after - statements_before,
        renewed: window.iter().map(|c| c.2).sum(),
        cpu: cpu_before.zip(cpu_after).map(|(a, b)| cpu_between(&a, &b)),
        rss_delta: rss_before
            .zip(rss_holding)
            .map(|(a, b)| b as i64 - a as i64),
        lost,
    }
}

fn print_holding(db: &str, rows: &[Holding]) {
    println!(
        "\n| {db}: leases held on one locker (renew every {} s) | acquire all, s | renew calls / s | statements / s | rows renewed / s | CPU, % of a core | RSS growth, KiB | per lease, bytes | lost |",
        HOLD_RENEW_INTERVAL.as_secs()
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let secs = row.window.as_secs_f64();
        let cpu = row.cpu.map_or("—".to_owned(), |c| {
            format!("{:.2}", c.as_secs_f64() / secs * 100.0)
        });
        // Below a thousand leases the growth is allocator and page noise, not a per-lease cost.
        let (rss, per_lease) = row.rss_delta.map_or(("—".to_owned(), "—".to_owned()), |d| {
            let per_lease = if row.leases >= 1000 {
                format!("{}", d / row.leases as i64)
            } else {
                "—".to_owned()
            };
            (format!("{}", d / 1024), per_lease)
        });
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {cpu} | {rss} | {per_lease} | {} |",
            row.leases,
            row.acquire_all.as_secs_f64(),
            row.batches as f64 / secs,
            row.statements as f64 / secs,
            row.renewed as f64 / secs,
            row.lost
        );
    }
}

/// The takeover and holding measurements of one database.
async fn liveness(db: &str, backend: Arc<dyn Backend>, statements: Statements) {
    let rows = takeover(Arc::clone(&backend), Arc::clone(&statements)).await;
    print_takeover(db, &rows);
    let mut held = Vec::new();
    for n in HELD {
        held.push(holding(Arc::clone(&backend), &statements, n).await);
    }
    print_holding(db, &held);
}

#[cfg(feature = "postgres")]
async fn postgres() {
    use lease_sql::PostgresBackend;
    use lease_sql::sqlx::{self, AssertSqlSafe};
    let Some(url) = std::env::var("LEASE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        println!("\n(postgres skipped: LEASE_TEST_POSTGRES_URL is not set)");
        return;
    };
    let table = TableName::new(&format!("bench_{}", random())).unwrap();
    let backend = PostgresBackend::connect_with(&url, SqlOptions::default().with_table(table))
        .await
        .unwrap();
    backend.migrate().await.unwrap();
    let pool = backend.pool().clone();
    let s = random();
    let raw = RawSql {
        setup: vec![
            format!("CREATE TABLE floor_{s} (name TEXT PRIMARY KEY, v BIGINT NOT NULL)"),
            format!(
                "CREATE TABLE dbkit_{s} (key TEXT PRIMARY KEY, token TEXT, expire_at TIMESTAMPTZ)"
            ),
        ],
        floor: format!(
            "INSERT INTO floor_{s} (name, v) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET v = EXCLUDED.v"
        ),
        create_row: format!("INSERT INTO dbkit_{s} (key) VALUES ($1) ON CONFLICT DO NOTHING"),
        acquire: format!(
            "UPDATE dbkit_{s} SET token = $2, expire_at = now() + interval '30 seconds' \
             WHERE key = $1 AND (expire_at IS NULL OR expire_at < now())"
        ),
        extend: format!(
            "UPDATE dbkit_{s} SET expire_at = now() + interval '30 seconds' WHERE key = $1 AND token = $2"
        ),
        release: format!(
            "UPDATE dbkit_{s} SET token = NULL, expire_at = NULL WHERE key = $1 AND token = $2"
        ),
    };
    for sql in &raw.setup {
        sqlx::query(AssertSqlSafe(sql.as_str()))
            .execute(&pool)
            .await
            .unwrap();
    }
    let q = |sql: &str| sqlx::query(AssertSqlSafe(sql.to_owned()));
    let floor = timed!("floor: raw one-row upsert", 1.0, |i| q(&raw.floor)
        .bind(format!("k{}", i % 10))
        .bind(i as i64)
        .execute(&pool)
        .await
        .unwrap());
    let counter = backend.clone();
    let mut rows = lease_ops(&backend, &move || counter.round_trips()).await;
    for i in 0..10 {
        q(&raw.create_row)
            .bind(format!("k{i}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    rows.extend(baseline_pg(&pool, &raw).await);
    let notify: Arc<dyn Backend> = Arc::new(backend.clone());
    rows.push(
        handoff(
            "hand-off release → waiter, LISTEN/NOTIFY",
            Arc::clone(&notify),
        )
        .await,
    );
    rows.push(
        handoff(
            "hand-off release → waiter, polling only",
            Arc::new(PollingOnly(notify)),
        )
        .await,
    );
    print_table("PostgreSQL", &floor, &rows);
    let counter = backend.clone();
    liveness(
        "PostgreSQL",
        Arc::new(backend.clone()),
        Arc::new(move || counter.round_trips()),
    )
    .await;
    for sql in [
        format!("DROP TABLE floor_{s}"),
        format!("DROP TABLE dbkit_{s}"),
    ] {
        let _ = sqlx::query(AssertSqlSafe(sql)).execute(&pool).await;
    }
}

#[cfg(feature = "postgres")]
async fn baseline_pg(pool: &lease_sql::sqlx::PgPool, raw: &RawSql) -> Vec<Stats> {
    use lease_sql::sqlx::{self, AssertSqlSafe};
    baseline(
        |sql: String, key: String, token: String| async move {
            sqlx::query(AssertSqlSafe(sql))
                .bind(key)
                .bind(token)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected()
        },
        raw,
    )
    .await
}

/// The baseline's acquire / extend / release on pre-created rows `k0..k9`.
async fn baseline<F, Fut>(exec: F, raw: &RawSql) -> Vec<Stats>
where
    F: Fn(String, String, String) -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let (mut acquire, mut extend, mut release) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ITERATIONS {
        let key = format!("k{}", i % 10);
        let token = HolderToken::generate().to_string();
        for (samples, sql) in [
            (&mut acquire, &raw.acquire),
            (&mut extend, &raw.extend),
            (&mut release, &raw.release),
        ] {
            let started = Instant::now();
            let rows = exec(sql.clone(), key.clone(), token.clone()).await;
            samples.push(started.elapsed());
            assert_eq!(rows, 1, "baseline statement did not apply: {sql}");
        }
    }
    vec![
        stats(
            "baseline (go-dbkit style) acquire, no fencing",
            acquire,
            1.0,
        ),
        stats("baseline extend", extend, 1.0),
        stats("baseline release", release, 1.0),
    ]
}

#[cfg(feature = "mysql")]
async fn mysql() {
    use lease_sql::MySqlBackend;
    use lease_sql::sqlx::{self, AssertSqlSafe};
    let Some(url) = std::env::var("LEASE_TEST_MYSQL_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        println!("\n(mysql skipped: LEASE_TEST_MYSQL_URL is not set)");
        return;
    };
    let table = TableName::new(&format!("bench_{}", random())).unwrap();
    let backend = MySqlBackend::connect_with(&url, SqlOptions::default().with_table(table))
        .await
        .unwrap();
    backend.migrate().await.unwrap();
    let pool = backend.pool().clone();
    let s = random();
    let raw = RawSql {
        setup: vec![
            format!("CREATE TABLE floor_{s} (name VARCHAR(200) PRIMARY KEY, v BIGINT NOT NULL)"),
            format!(
                "CREATE TABLE dbkit_{s} (`key` VARCHAR(200) PRIMARY KEY, token VARCHAR(64), expire_at DATETIME(6))"
            ),
        ],
        floor: format!(
            "INSERT INTO floor_{s} (name, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)"
        ),
        create_row: format!("INSERT IGNORE INTO dbkit_{s} (`key`) VALUES (?)"),
        acquire: format!(
            "UPDATE dbkit_{s} SET token = ?, expire_at = UTC_TIMESTAMP(6) + INTERVAL 30 SECOND \
             WHERE `key` = ? AND (expire_at IS NULL OR expire_at < UTC_TIMESTAMP(6))"
        ),
        extend: format!(
            "UPDATE dbkit_{s} SET expire_at = UTC_TIMESTAMP(6) + INTERVAL 30 SECOND WHERE `key` = ? AND token = ?"
        ),
        release: format!(
            "UPDATE dbkit_{s} SET token = NULL, expire_at = NULL WHERE `key` = ? AND token = ?"
        ),
    };
    for sql in &raw.setup {
        sqlx::query(AssertSqlSafe(sql.as_str()))
            .execute(&pool)
            .await
            .unwrap();
    }
    let q = |sql: &str| sqlx::query(AssertSqlSafe(sql.to_owned()));
    let floor = timed!("floor: raw one-row upsert", 1.0, |i| q(&raw.floor)
        .bind(format!("k{}", i % 10))
        .bind(i as i64)
        .execute(&pool)
        .await
        .unwrap());
    let counter = backend.clone();
    let mut rows = lease_ops(&backend, &move || counter.round_trips()).await;
    for i in 0..10 {
        q(&raw.create_row)
            .bind(format!("k{i}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let pool2 = pool.clone();
    rows.extend(
        baseline(
            |sql: String, key: String, token: String| {
                let pool = pool2.clone();
                async move {
                    // The acquire binds (token, key); extend and release bind (key, token).
                    let query = sqlx::query(AssertSqlSafe(sql.clone()));
                    let query = if sql.starts_with("UPDATE") && sql.contains("SET token = ?") {
                        query.bind(token).bind(key)
                    } else {
                        query.bind(key).bind(token)
                    };
                    query.execute(&pool).await.unwrap().rows_affected()
                }
            },
            &raw,
        )
        .await,
    );
    print_table("MariaDB / MySQL", &floor, &rows);
    let counter = backend.clone();
    liveness(
        "MariaDB / MySQL",
        Arc::new(backend.clone()),
        Arc::new(move || counter.round_trips()),
    )
    .await;
    for sql in [
        format!("DROP TABLE floor_{s}"),
        format!("DROP TABLE dbkit_{s}"),
    ] {
        let _ = sqlx::query(AssertSqlSafe(sql)).execute(&pool).await;
    }
}

#[cfg(feature = "sqlite")]
async fn sqlite() {
    use lease_sql::SqliteBackend;
    use lease_sql::sqlx::{self, AssertSqlSafe};
    let dir = std::env::var_os("LEASE_TEST_SQLITE_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("bench-{}.db", random()));
    let backend = SqliteBackend::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    backend.migrate().await.unwrap();
    let pool = backend.pool().clone();
    let raw = RawSql {
        setup: vec![
            "CREATE TABLE floor (name TEXT PRIMARY KEY, v INTEGER NOT NULL)".into(),
            "CREATE TABLE dbkit (key TEXT PRIMARY KEY, token TEXT, expire_at INTEGER)".into(),
        ],
        floor: "INSERT INTO floor (name, v) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET v = excluded.v".into(),
        create_row: "INSERT OR IGNORE INTO dbkit (key) VALUES (?1)".into(),
        acquire: "UPDATE dbkit SET token = ?2, expire_at = unixepoch('now') + 30 \
                  WHERE key = ?1 AND (expire_at IS NULL OR expire_at < unixepoch('now'))"
            .into(),
        extend: "UPDATE dbkit SET expire_at = unixepoch('now') + 30 WHERE key = ?1 AND token = ?2".into(),
        release: "UPDATE dbkit SET token = NULL, expire_at = NULL WHERE key = ?1 AND token = ?2".into(),
    };
    for sql in &raw.setup {
        sqlx::query(AssertSqlSafe(sql.as_str()))
            .execute(&pool)
            .await
            .unwrap();
    }
    let q = |sql: &str| sqlx::query(AssertSqlSafe(sql.to_owned()));
    let floor = timed!("floor: raw one-row upsert", 1.0, |i| q(&raw.floor)
        .bind(format!("k{}", i % 10))
        .bind(i as i64)
        .execute(&pool)
        .await
        .unwrap());
    let counter = backend.clone();
    let mut rows = lease_ops(&backend, &move || counter.round_trips()).await;
    for i in 0..10 {
        q(&raw.create_row)
            .bind(format!("k{i}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let pool2 = pool.clone();
    rows.extend(
        baseline(
            |sql: String, key: String, token: String| {
                let pool = pool2.clone();
                async move {
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(key)
                        .bind(token)
                        .execute(&pool)
                        .await
                        .unwrap()
                        .rows_affected()
                }
            },
            &raw,
        )
        .await,
    );
    print_table("SQLite (file, WAL, synchronous=FULL)", &floor, &rows);
    let counter = backend.clone();
    liveness(
        "SQLite",
        Arc::new(backend.clone()),
        Arc::new(move || counter.round_trips()),
    )
    .await;
    drop(backend);
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it (and
    // nextest asks it to `--list`): measure only when asked to.
    if !std::env::args().any(|a| a == "--bench") {
        println!("lease-sql bench: run it with `cargo bench` (or `cargo xtask bench`)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "lease-sql bench: {ITERATIONS} iterations per operation, {HANDOFFS} hand-offs; latencies in ms"
        );
        println!(
            "(CPU and memory are this process's: the bench, the locker and, for SQLite, the database \
             engine; a database server's own CPU is not counted)"
        );
        #[cfg(feature = "postgres")]
        postgres().await;
        #[cfg(feature = "mysql")]
        mysql().await;
        #[cfg(feature = "sqlite")]
        sqlite().await;
    });
}
