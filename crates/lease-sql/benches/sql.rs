//! Latency of the SQL backends against the floor (a raw one-row upsert on the same server, same
//! run) and a go-dbkit-style baseline (one `UPDATE … WHERE expired` acquire on a pre-created row,
//! no fencing), plus PostgreSQL's release → waiter hand-off with `LISTEN/NOTIFY` and polling only.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_sql::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, HolderMetadata,
    HolderToken, LeaseKey, LeaseRecord, Locker, ReleaseOutcome, ReleaseRequest, RenewOutcome,
    RenewRequest, RetryPolicy, SqlOptions, TableName, async_trait,
};

const ITERATIONS: usize = 300;
const HANDOFFS: usize = 12;
const TTL: Duration = Duration::from_secs(30);

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
    let mut rows = lease_ops(&backend, &move || counter.statements_sent()).await;
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
    let mut rows = lease_ops(&backend, &move || counter.statements_sent()).await;
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
    let mut rows = lease_ops(&backend, &move || counter.statements_sent()).await;
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
        #[cfg(feature = "postgres")]
        postgres().await;
        #[cfg(feature = "mysql")]
        mysql().await;
        #[cfg(feature = "sqlite")]
        sqlite().await;
    });
}
