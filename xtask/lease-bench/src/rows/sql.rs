//! `postgres`, `mysql`, `sqlite`: each operation against the floor (a raw one-row upsert on the
//! same pool), the go-dbkit baseline (one `UPDATE … WHERE expired` per acquire on a pre-created
//! row, no fencing), then hand-off, a crowd of waiters and the cost of holding many leases.

use std::sync::Arc;
use std::time::Duration;

use lease_sql::sqlx::{self, AssertSqlSafe};
use lease_sql::{
    AcquireOutcome, AcquireRequest, AnySqlBackend, Backend, HolderMetadata, HolderToken, LeaseKey,
    ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest, SqlOptions, TableName,
};

use super::{random, scale};
use crate::report::Comparison;
use crate::sample::{Sample, interleave, measure, timed};
use crate::stats::Summary;
use crate::{Options, Report};

const TTL: Duration = Duration::from_secs(30);
const FLOOR: &str = "raw one-row upsert";
const LEASE: &str = "lease-sql";
const SEED: &str = "baseline: go-dbkit one UPDATE, no fencing";

/// A bind value of a raw statement.
enum Bind {
    Text(String),
    Int(i64),
}

/// The row's pool, for raw statements next to the backend's.
enum RawPool {
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
    Sqlite(sqlx::SqlitePool),
}

macro_rules! execute {
    ($pool:expr, $sql:expr, $binds:expr) => {{
        let mut query = sqlx::query(AssertSqlSafe($sql.to_owned()));
        for bind in $binds {
            query = match bind {
                Bind::Text(s) => query.bind(s.clone()),
                Bind::Int(i) => query.bind(*i),
            };
        }
        query
            .execute($pool)
            .await
            .unwrap_or_else(|e| panic!("raw statement failed: {e}: {}", $sql))
            .rows_affected()
    }};
}

impl RawPool {
    async fn exec(&self, sql: &str, binds: &[Bind]) -> u64 {
        match self {
            RawPool::Postgres(p) => execute!(p, sql, binds),
            RawPool::MySql(p) => execute!(p, sql, binds),
            RawPool::Sqlite(p) => execute!(p, sql, binds),
        }
    }
}

/// The floor's upsert and the baseline's statements, in one dialect. Baseline statements bind
/// (key, token), except MySQL's acquire, which binds (token, key).
struct RawSql {
    setup: Vec<String>,
    teardown: Vec<String>,
    floor: String,
    create_row: String,
    acquire: String,
    extend: String,
    release: String,
}

fn raw_sql(row: &str, s: &str) -> RawSql {
    match row {
        "postgres" => RawSql {
            setup: vec![
                format!("CREATE TABLE floor_{s} (name TEXT PRIMARY KEY, v BIGINT NOT NULL)"),
                format!(
                    "CREATE TABLE dbkit_{s} (key TEXT PRIMARY KEY, token TEXT, expire_at TIMESTAMPTZ)"
                ),
            ],
            teardown: vec![
                format!("DROP TABLE floor_{s}"),
                format!("DROP TABLE dbkit_{s}"),
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
        },
        "mysql" => RawSql {
            setup: vec![
                format!(
                    "CREATE TABLE floor_{s} (name VARCHAR(200) PRIMARY KEY, v BIGINT NOT NULL)"
                ),
                format!(
                    "CREATE TABLE dbkit_{s} (`key` VARCHAR(200) PRIMARY KEY, token VARCHAR(64), expire_at DATETIME(6))"
                ),
            ],
            teardown: vec![
                format!("DROP TABLE floor_{s}"),
                format!("DROP TABLE dbkit_{s}"),
            ],
            floor: format!(
                "INSERT INTO floor_{s} (name, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)"
            ),
            create_row: format!("INSERT IGNORE INTO dbkit_{s} (`key`) VALUES (?)"),
            // Positional binds only: this one binds (token, key).
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
        },
        _ => RawSql {
            setup: vec![
                format!("CREATE TABLE floor_{s} (name TEXT PRIMARY KEY, v INTEGER NOT NULL)"),
                format!(
                    "CREATE TABLE dbkit_{s} (key TEXT PRIMARY KEY, token TEXT, expire_at INTEGER)"
                ),
            ],
            teardown: vec![
                format!("DROP TABLE floor_{s}"),
                format!("DROP TABLE dbkit_{s}"),
            ],
            floor: format!(
                "INSERT INTO floor_{s} (name, v) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET v = excluded.v"
            ),
            create_row: format!("INSERT OR IGNORE INTO dbkit_{s} (key) VALUES (?1)"),
            acquire: format!(
                "UPDATE dbkit_{s} SET token = ?2, expire_at = unixepoch('now') + 30 \
                 WHERE key = ?1 AND (expire_at IS NULL OR expire_at < unixepoch('now'))"
            ),
            extend: format!(
                "UPDATE dbkit_{s} SET expire_at = unixepoch('now') + 30 WHERE key = ?1 AND token = ?2"
            ),
            release: format!(
                "UPDATE dbkit_{s} SET token = NULL, expire_at = NULL WHERE key = ?1 AND token = ?2"
            ),
        },
    }
}

/// Connects to the row's database, or says why not.
async fn connect(row: &str, options: &Options) -> Result<(String, String), String> {
    match row {
        "postgres" => options
            .var("LEASE_TEST_POSTGRES_URL")
            .map(|u| (u, "PostgreSQL".to_owned()))
            .ok_or_else(|| "LEASE_TEST_POSTGRES_URL is not set".into()),
        "mysql" => options
            .var("LEASE_TEST_MYSQL_URL")
            .map(|u| (u, "MariaDB / MySQL".to_owned()))
            .ok_or_else(|| "LEASE_TEST_MYSQL_URL is not set".into()),
        _ => {
            let dir = options
                .var("LEASE_TEST_SQLITE_DIR")
                .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = dir.join(format!("bench-{}.db", random()));
            Ok((
                format!("sqlite://{}", path.display()),
                "SQLite file, WAL, synchronous=FULL".to_owned(),
            ))
        }
    }
}

/// Runs one SQL row.
pub(crate) async fn run(row: &str, options: &Options, report: &mut Report) {
    let (url, server) = match connect(row, options).await {
        Ok(c) => c,
        Err(why) => {
            report.skipped.push((row.to_owned(), why));
            return;
        }
    };
    let table = TableName::new(&format!("bench_{}", random())).unwrap();
    let sql_options = SqlOptions::default().with_table(table);
    let backend = lease_sql::connect_with(&url, sql_options.clone())
        .await
        .unwrap_or_else(|e| panic!("{row}: connect: {e}"));
    backend.migrate().await.unwrap();
    let pool = match &backend {
        AnySqlBackend::Postgres(b) => RawPool::Postgres(b.pool().clone()),
        AnySqlBackend::MySql(b) => RawPool::MySql(b.pool().clone()),
        AnySqlBackend::Sqlite(b) => RawPool::Sqlite(b.pool().clone()),
        _ => unreachable!("lease-bench enables the three SQL features"),
    };
    let raw = raw_sql(row, &random());
    for sql in &raw.setup {
        pool.exec(sql, &[]).await;
    }
    for i in 0..10 {
        pool.exec(&raw.create_row, &[Bind::Text(format!("k{i}"))])
            .await;
    }

    let floor_p50 = comparisons(row, &server, options, &backend, &pool, &raw, report).await;

    // Everything below builds lockers over the same database: more connections, a second
    // backend for a second "process".
    let connect_more = || {
        let (url, sql_options) = (url.clone(), sql_options.clone());
        async move {
            let b = lease_sql::connect_with(&url, sql_options).await.unwrap();
            let trips = b.clone();
            let counter: scale::Counter = Arc::new(move || trips.round_trips());
            (Arc::new(b) as Arc<dyn Backend>, counter)
        }
    };
    if options.wants_part("handoff") {
        scale::handoff(row, options, report, &connect_more, floor_p50).await;
    }
    if options.wants_part("crowd") {
        scale::crowd(row, options, report, &connect_more).await;
    }
    if options.wants_part("holding") {
        scale::holding(row, options, report, &connect_more).await;
    }

    for sql in &raw.teardown {
        pool.exec(sql, &[]).await;
    }
    if let AnySqlBackend::Sqlite(b) = &backend {
        b.pool().close().await;
        if let Some(path) = url.strip_prefix("sqlite://") {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        }
    }
}

/// The interleaved comparisons; returns the floor's p50 (ms), the row's round trip.
async fn comparisons(
    row: &str,
    server: &str,
    options: &Options,
    backend: &AnySqlBackend,
    pool: &RawPool,
    raw: &RawSql,
    report: &mut Report,
) -> f64 {
    let plan = options.plan();
    let meta = HolderMetadata::new("bench").unwrap();
    let count = || backend.round_trips();
    let prefix = random();
    let key = |i: usize| LeaseKey::new(format!("ops-{prefix}/{}", i % 10)).unwrap();
    let floor = async |i: usize| {
        let binds = [Bind::Text(format!("k{}", i % 10)), Bind::Int(i as i64)];
        timed(1, pool.exec(&raw.floor, &binds)).await.1
    };
    let acquire = async |key: &LeaseKey| {
        let holder = HolderToken::generate();
        let request = AcquireRequest::new(key.clone(), holder, TTL, meta.clone());
        let (out, s) = measure(&count, backend.acquire(&request)).await;
        assert!(matches!(out, Ok(AcquireOutcome::Acquired(_))), "{out:?}");
        (holder, s)
    };
    let release = async |key: &LeaseKey, holder: HolderToken| {
        let request = ReleaseRequest::new(key.clone(), holder);
        let (out, s) = measure(&count, backend.release(&request)).await;
        assert!(matches!(out, Ok(ReleaseOutcome::Released)), "{out:?}");
        s
    };
    let mut floor_p50 = Vec::new();
    let mut push = |operation: &str, subject: &str, paired: &crate::Paired| {
        let c = Comparison::new(row, server, operation, subject, FLOOR, paired);
        floor_p50.push(c.floor_samples.p50_ms);
        report.comparisons.push(c);
    };

    let paired = interleave(
        plan,
        async |i| {
            let k = key(i);
            let (holder, s) = acquire(&k).await;
            release(&k, holder).await;
            s
        },
        floor,
    )
    .await;
    push("acquire (free row)", LEASE, &paired);

    let held = LeaseKey::new(format!("renew-{prefix}")).unwrap();
    let (holder, _) = acquire(&held).await;
    let paired = interleave(
        plan,
        async |_| {
            let request = RenewRequest::new(held.clone(), holder, TTL);
            let (out, s) = measure(&count, backend.renew(&request)).await;
            assert!(matches!(out, Ok(RenewOutcome::Renewed(_))), "{out:?}");
            s
        },
        floor,
    )
    .await;
    release(&held, holder).await;
    push("renew", LEASE, &paired);

    let paired = interleave(
        plan,
        async |i| {
            let k = key(i);
            let (holder, _) = acquire(&k).await;
            release(&k, holder).await
        },
        floor,
    )
    .await;
    push("release", LEASE, &paired);

    // The baseline on its pre-created rows k0..k9.
    let seed = async |sql: &str, i: usize, token: &str| -> Sample {
        let (key, token) = (
            Bind::Text(format!("k{}", i % 10)),
            Bind::Text(token.to_owned()),
        );
        let binds = if row == "mysql" && sql == raw.acquire {
            [token, key]
        } else {
            [key, token]
        };
        let (rows, s) = timed(1, pool.exec(sql, &binds)).await;
        assert_eq!(rows, 1, "baseline statement did not apply: {sql}");
        s
    };
    let paired = interleave(
        plan,
        async |i| {
            let token = HolderToken::generate().to_string();
            let s = seed(&raw.acquire, i, &token).await;
            seed(&raw.release, i, &token).await;
            s
        },
        floor,
    )
    .await;
    push("acquire (free row)", SEED, &paired);
    let token = HolderToken::generate().to_string();
    seed(&raw.acquire, 0, &token).await;
    let paired = interleave(plan, async |_| seed(&raw.extend, 0, &token).await, floor).await;
    seed(&raw.release, 0, &token).await;
    push("renew", SEED, &paired);
    let paired = interleave(
        plan,
        async |i| {
            let token = HolderToken::generate().to_string();
            seed(&raw.acquire, i, &token).await;
            seed(&raw.release, i, &token).await
        },
        floor,
    )
    .await;
    push("release", SEED, &paired);

    Summary::of_ms(&floor_p50, 1.0).p50_ms
}
