//! SQLite: the conformance kit plus backend-specific tests, on database files in
//! `LEASE_TEST_SQLITE_DIR` (or the system temporary directory when unset).
#![cfg(feature = "sqlite")]

mod support;
#[macro_use]
mod fenced;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lease_core::conformance::{Harness, OutsideChange, OutsideWrite, OutsideWriter};
use lease_sql::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use lease_sql::sqlx::{self, AssertSqlSafe, Connection};
use lease_sql::{
    Backend, ErrorKind, HolderToken, LeaseKey, Locker, RecordState, RetryPolicy, SqlOptions,
    SqliteBackend, TableName,
};

fn test_dir() -> PathBuf {
    let dir = std::env::var_os("LEASE_TEST_SQLITE_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || std::env::temp_dir().join("lease-sql-tests"),
            PathBuf::from,
        );
    std::fs::create_dir_all(&dir).expect("create the SQLite test directory");
    dir
}

fn fresh_db() -> PathBuf {
    test_dir().join(format!("leases-{}.db", support::random_suffix()))
}

fn url_of(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

async fn backend_at(path: &std::path::Path, options: SqlOptions) -> SqliteBackend {
    let backend = SqliteBackend::connect_with(&url_of(path), options)
        .await
        .expect("open the database file");
    backend.migrate().await.expect("migrate");
    backend
}

async fn backend() -> SqliteBackend {
    backend_at(&fresh_db(), SqlOptions::default()).await
}

async fn harness() -> Option<Harness> {
    let path = fresh_db();
    let backend = backend_at(&path, SqlOptions::default()).await;
    // A second instance on the same database file: a second process.
    let peer = backend_at(&path, SqlOptions::default()).await;
    let writer = row_deleter(&backend);
    Some(
        Harness::new(backend)
            .with_peer(peer)
            .with_outside_writer(writer),
    )
}

/// Deletes a key's row as a clean-up job would (`DELETE FROM leases`). A row always has its
/// `fencing` column (NOT NULL), so there is nothing to overwrite it with but another counter.
fn row_deleter(backend: &SqliteBackend) -> OutsideWriter {
    let pool = backend.pool().clone();
    let delete = format!("DELETE FROM {} WHERE name = ?1", backend.table().as_str());
    OutsideWriter::new(move |key, change| {
        let (pool, delete) = (pool.clone(), delete.clone());
        async move {
            if change != OutsideChange::Delete {
                return Ok(OutsideWrite::NotApplicable);
            }
            sqlx::query(AssertSqlSafe(delete))
                .bind(key.as_str())
                .execute(&pool)
                .await
                .map_err(|e| e.to_string())?;
            Ok(OutsideWrite::Done)
        }
    })
}

lease_core::conformance_tests!(harness);

#[tokio::test]
async fn hostile_table_names_are_typed_errors() {
    support::assert_hostile_names_rejected();
    let backend = backend_at(
        &fresh_db(),
        SqlOptions::default().with_table(TableName::new("main.order").unwrap()),
    )
    .await;
    assert!(backend.create_table_sql().contains("\"main\".\"order\""));
    let lease = Locker::new(backend)
        .try_acquire("k")
        .await
        .unwrap()
        .expect("free");
    assert!(lease.is_held());
}

#[tokio::test]
async fn url_forms_and_create_if_missing() {
    // Absolute (sqlite:///abs/path.db), created because missing.
    let path = fresh_db();
    assert!(!path.exists());
    let abs = SqliteBackend::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    abs.migrate().await.unwrap();
    assert!(path.exists(), "the file was not created");
    // Relative to the working directory (sqlite://relative/path.db): the same file.
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let relative = format!(
        "sqlite://{up}{}",
        path.display().to_string().trim_start_matches('/')
    );
    let rel = SqliteBackend::connect(&relative).await.unwrap();
    let lease = Locker::new(abs.clone())
        .try_acquire("shared")
        .await
        .unwrap()
        .unwrap();
    let seen = rel
        .inspect(&LeaseKey::new("shared").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(seen.is_held_by(&lease.holder_token()));
    // In memory.
    let memory = SqliteBackend::connect("sqlite::memory:").await.unwrap();
    memory.migrate().await.unwrap();
    let locker = Locker::new(memory);
    let a = locker.try_acquire("m").await.unwrap().unwrap();
    assert!(locker.try_acquire("m").await.unwrap().is_none());
    a.release().await.unwrap();
    // A bad option.
    let err = SqliteBackend::connect("sqlite:///tmp/x.db?mode=bogus")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[tokio::test]
async fn foreign_rows_are_corrupt_records_not_panics() {
    let backend = backend().await;
    let t = backend.table().as_str();
    let valid = HolderToken::generate();
    let far = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) + 3600000";
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {t} (name, holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at) VALUES
        ('garbage-holder', 'not a token', 'x', 5, 1000, 0, {far}),
        ('integer-holder', 42, 'x', 5, 1000, 0, {far}),
        ('null-expiry', '{valid}', NULL, 5, NULL, NULL, NULL),
        ('text-expiry', '{valid}', NULL, 5, 1000, 0, 'tomorrow'),
        ('text-fencing', NULL, NULL, 'seven', NULL, NULL, NULL),
        ('real-fencing', NULL, NULL, 7.5, NULL, NULL, NULL),
        ('negative-fencing', NULL, NULL, -7, NULL, NULL, NULL),
        ('negative-ttl', '{valid}', 'x', 5, -5, 0, {far}),
        ('exhausted-fencing', NULL, NULL, 9223372036854775807, NULL, NULL, NULL),
        ('not a key!', NULL, NULL, 1, NULL, NULL, NULL)"
    )))
    .execute(backend.pool())
    .await
    .unwrap();
    let shared: Arc<dyn Backend> = Arc::new(backend.clone());
    support::assert_foreign_rows_are_corrupt(
        Arc::clone(&shared),
        &[
            "garbage-holder",
            "integer-holder",
            "null-expiry",
            "text-expiry",
            "text-fencing",
            "real-fencing",
            "negative-fencing",
            "negative-ttl",
        ],
    )
    .await;
    support::assert_exhausted_counter_is_corrupt(shared, "exhausted-fencing").await;
    let fencing: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT fencing FROM {t} WHERE name = 'text-fencing'"
    )))
    .fetch_one(backend.pool())
    .await
    .unwrap();
    assert_eq!(fencing, "seven", "a corrupt row was overwritten");
}

/// Another connection holds SQLite's write lock longer than the busy timeout: acquire fails with
/// a transient error — never "held" — and succeeds once the lock is gone.
#[tokio::test]
async fn lock_contention_is_transient_never_held() {
    let path = fresh_db();
    let backend = backend_at(
        &path,
        SqlOptions::default().with_busy_timeout(Duration::from_millis(200)),
    )
    .await;
    let mut other = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let locker = Locker::new(backend.clone());
    let err = locker
        .try_acquire("busy")
        .await
        .expect_err("the file is write-locked");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    assert!(
        locker.inspect("busy").await.unwrap().is_none(),
        "the failed attempt wrote a row (and minted a token)"
    );
    let lease = locker.try_acquire("busy").await.unwrap().expect("free now");
    assert!(lease.is_held());
}

#[tokio::test]
async fn duplicate_renewals_report_the_stored_ttl() {
    support::duplicate_renewals_report_the_stored_ttl(Arc::new(backend().await)).await;
}

#[tokio::test]
async fn mixed_batch_renews_each_lease_with_its_own_ttl() {
    support::mixed_batch_renews_each_lease_with_its_own_ttl(Arc::new(backend().await)).await;
}

#[tokio::test]
async fn ten_thousand_leases_renew_with_one_statement_per_interval() {
    let backend = backend().await;
    let counter = backend.clone();
    support::many_leases_one_statement_per_interval(
        Arc::new(backend),
        move || counter.round_trips(),
        10_000,
        1,
    )
    .await;
}

const CHILD_DB: &str = "LEASE_SQL_CHILD_DB";
const CHILD_LOG: &str = "LEASE_SQL_CHILD_LOG";
const CHILD_ROUNDS: &str = "LEASE_SQL_CHILD_ROUNDS";

/// Several processes contend for one key in one database file. Each, while it holds the lease,
/// appends `enter <token>` and `exit <token>` to a shared log; the log must show strictly
/// alternating, non-overlapping critical sections with strictly rising tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_file_never_overlap() {
    const CHILDREN: usize = 4;
    const ROUNDS: usize = 8;
    let db = fresh_db();
    backend_at(&db, SqlOptions::default()).await;
    let log = db.with_extension("log");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args(["--ignored", "--exact", "sqlite_child_worker", "--nocapture"])
                .env(CHILD_DB, &db)
                .env(CHILD_LOG, &log)
                .env(CHILD_ROUNDS, ROUNDS.to_string())
                .kill_on_drop(true)
                .output()
        })
        .collect();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(120), child)
            .await
            .expect("children finished")
            .unwrap();
        assert!(
            out.status.success(),
            "child failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the child did not run the worker"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(&str, u64)> = text
        .lines()
        .map(|l| {
            let mut parts = l.split_whitespace();
            (
                parts.next().unwrap(),
                parts.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(lines.len(), 2 * CHILDREN * ROUNDS, "{text}");
    let mut last = 0;
    for pair in lines.chunks(2) {
        assert_eq!(pair[0].0, "enter", "overlap: {text}");
        assert_eq!(pair[1].0, "exit", "overlap: {text}");
        assert_eq!(pair[0].1, pair[1].1, "overlap: {text}");
        assert!(pair[0].1 > last, "tokens did not rise: {text}");
        last = pair[0].1;
    }
    let backend = SqliteBackend::connect(&url_of(&db)).await.unwrap();
    let record = backend
        .inspect(&LeaseKey::new("shared").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.fencing.get(), last);
    assert_eq!(record.state, RecordState::Free);
}

/// The body of one child process of `processes_sharing_a_file_never_overlap` (run only by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of processes_sharing_a_file_never_overlap"]
async fn sqlite_child_worker() {
    let (Some(db), Some(log)) = (std::env::var_os(CHILD_DB), std::env::var_os(CHILD_LOG)) else {
        eprintln!(
            "sqlite_child_worker only runs as a child of processes_sharing_a_file_never_overlap"
        );
        return;
    };
    let rounds: usize = std::env::var(CHILD_ROUNDS).unwrap().parse().unwrap();
    let backend = SqliteBackend::connect(&url_of(std::path::Path::new(&db)))
        .await
        .unwrap();
    let locker = Locker::builder(backend)
        .ttl(Duration::from_secs(10))
        .retry(
            RetryPolicy::default()
                .with_initial_delay(Duration::from_millis(2))
                .with_max_delay(Duration::from_millis(40)),
        )
        .build()
        .unwrap();
    for _ in 0..rounds {
        let lease = locker.acquire("shared").await.unwrap();
        let token = lease.fencing_token();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        file.write_all(format!("enter {token}\n").as_bytes())
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(lease.is_held());
        file.write_all(format!("exit {token}\n").as_bytes())
            .unwrap();
        lease.release().await.unwrap();
    }
}

#[tokio::test]
async fn list_returns_the_prefix_sorted() {
    support::list_returns_the_prefix_sorted(Arc::new(backend().await)).await;
}

#[tokio::test]
async fn round_trips_are_counted() {
    let backend = backend_at(&fresh_db(), SqlOptions::default().with_max_connections(1)).await;
    let counter = backend.clone();
    // In-process: no prepare round trips. A break is BEGIN IMMEDIATE, SELECT, UPDATE, COMMIT.
    support::round_trips_are_counted(Arc::new(backend), move || counter.round_trips(), 0, 4).await;
}

#[tokio::test]
async fn connect_picks_the_dialect_from_the_url() {
    let path = fresh_db();
    let backend = lease_sql::connect(&url_of(&path)).await.unwrap();
    assert!(
        matches!(backend, lease_sql::AnySqlBackend::Sqlite(_)),
        "{backend:?}"
    );
    backend.migrate().await.unwrap();
    let lease = Locker::new(backend)
        .try_acquire("any")
        .await
        .unwrap()
        .unwrap();
    assert!(lease.is_held());
    lease.release().await.unwrap();
    for (url, says) in [
        ("redis://me:hunter2@cache:6379", "unknown scheme `redis:`"),
        ("no scheme at all", "expected postgres://"),
        ("", "expected postgres://"),
        #[cfg(not(feature = "postgres"))]
        ("postgres://me:hunter2@db/x", "`postgres` feature"),
        #[cfg(not(feature = "mysql"))]
        ("mysql://me:hunter2@db/x", "`mysql` feature"),
    ] {
        let err = lease_sql::connect(url).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url}: {err}");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(says), "{url}: {shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

/// Fenced transactions on this database (`tests/fenced/mod.rs`).
mod fenced_transactions {
    fenced_tests!(sqlite);
}

/// Several processes opening a database file that does not exist yet, at once (two `lease exec`
/// started together): switching the new file to WAL takes a lock the others find busy, and every
/// open must wait for it, not fail with "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_opens_of_a_new_file_all_connect() {
    // The race is lost in about one round of 30 without the retry: 200 rounds make a miss rare.
    for _ in 0..200 {
        let path = fresh_db();
        let opens = (0..6).map(|_| {
            let url = url_of(&path);
            tokio::spawn(async move {
                let backend = SqliteBackend::connect(&url).await?;
                backend.migrate().await?;
                Ok::<_, lease_sql::Error>(backend)
            })
        });
        for open in futures_util::future::join_all(opens).await {
            if let Err(e) = open.unwrap() {
                panic!("a concurrent first open of {} failed: {e}", path.display());
            }
        }
    }
}
