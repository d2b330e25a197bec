//! PostgreSQL: the conformance kit plus backend-specific tests, against the server named by
//! `LEASE_TEST_POSTGRES_URL` (skipped loudly when unset, failing when `LEASE_TEST_REQUIRE=1`).
#![cfg(feature = "postgres")]

mod support;
#[macro_use]
mod fenced;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_core::conformance::{Harness, OutsideChange, OutsideWrite, OutsideWriter, require_env};
use lease_sql::sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use lease_sql::sqlx::{self, AssertSqlSafe};
use lease_sql::{
    Backend, ErrorKind, HolderToken, LeaseKey, Locker, PostgresBackend, SqlOptions, TableName,
};
use support::{CuttingProxy, unique_table};

fn url() -> Option<String> {
    require_env("LEASE_TEST_POSTGRES_URL")
}

async fn backend_on(url: &str, table: TableName) -> PostgresBackend {
    let options = SqlOptions::default()
        .with_table(table)
        .with_max_connections(3);
    let backend = PostgresBackend::connect_with(url, options)
        .await
        .expect("connect to LEASE_TEST_POSTGRES_URL");
    backend.migrate().await.expect("migrate");
    backend
}

async fn backend() -> Option<PostgresBackend> {
    Some(backend_on(&url()?, unique_table()).await)
}

async fn harness() -> Option<Harness> {
    let url = url()?;
    let table = unique_table();
    let backend = backend_on(&url, table.clone()).await;
    // A second instance on the same table, with its own pool: a second process.
    let peer = backend_on(&url, table).await;
    let writer = row_deleter(&backend);
    Some(
        Harness::new(backend)
            .with_peer(peer)
            .with_outside_writer(writer),
    )
}

/// Deletes a key's row as a clean-up job would (`DELETE FROM leases`). A row always has its
/// `fencing` column (NOT NULL), so there is nothing to overwrite it with but another counter.
fn row_deleter(backend: &PostgresBackend) -> OutsideWriter {
    let pool = backend.pool().clone();
    let delete = format!("DELETE FROM {} WHERE name = $1", backend.table().as_str());
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

async fn exec(backend: &PostgresBackend, sql: String) {
    sqlx::query(AssertSqlSafe(sql))
        .execute(backend.pool())
        .await
        .expect("raw SQL");
}

#[tokio::test]
async fn hostile_table_names_are_typed_errors() {
    support::assert_hostile_names_rejected();
    // A reserved word is a valid identifier: quoting makes it work end to end.
    let Some(url) = url() else { return };
    let table = TableName::new(&format!("select_{}", support::random_suffix())).unwrap();
    let backend = backend_on(&url, table).await;
    let backend = PostgresBackend::from_pool(
        backend.pool().clone(),
        SqlOptions::default().with_table(TableName::new("user").unwrap()),
    );
    backend.migrate().await.unwrap();
    assert!(backend.create_table_sql().contains("\"user\""));
    let locker = Locker::new(backend);
    let key = format!("k-{}", support::random_suffix());
    let lease = locker.try_acquire(&key).await.unwrap().expect("free");
    lease.release().await.unwrap();
}

#[tokio::test]
async fn migrate_is_idempotent_and_missing_table_is_fatal() {
    let Some(url) = url() else { return };
    let backend = backend_on(&url, unique_table()).await;
    backend.migrate().await.expect("second migrate");
    let missing = PostgresBackend::from_pool(
        backend.pool().clone(),
        SqlOptions::default().with_table(unique_table()),
    );
    let err = Locker::new(missing).try_acquire("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
}

#[tokio::test]
async fn foreign_rows_are_corrupt_records_not_panics() {
    let Some(backend) = backend().await else {
        return;
    };
    let t = backend.table().as_str();
    let valid = HolderToken::generate();
    exec(
        &backend,
        format!(
            "INSERT INTO {t} (name, holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at) VALUES
            ('garbage-holder', 'not a token', 'x', 5, 1000, now(), now() + interval '1 hour'),
            ('null-expiry', '{valid}', NULL, 5, NULL, NULL, NULL),
            ('negative-fencing', NULL, NULL, -7, NULL, NULL, NULL),
            ('negative-ttl', '{valid}', 'x', 5, -5, now(), now() + interval '1 hour'),
            ('exhausted-fencing', NULL, NULL, 9223372036854775807, NULL, NULL, NULL)"
        ),
    )
    .await;
    let shared: Arc<dyn Backend> = Arc::new(backend.clone());
    support::assert_foreign_rows_are_corrupt(
        Arc::clone(&shared),
        &[
            "garbage-holder",
            "null-expiry",
            "negative-fencing",
            "negative-ttl",
        ],
    )
    .await;
    support::assert_exhausted_counter_is_corrupt(shared, "exhausted-fencing").await;
    // Nothing was taken over.
    let fencing: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT fencing FROM {t} WHERE name = 'garbage-holder'"
    )))
    .fetch_one(backend.pool())
    .await
    .unwrap();
    assert_eq!(fencing, 5);
}

/// The acquire statement is blocked on a row lock, then its connection is killed: the outcome is
/// unknown to the client, the core reads back, finds it is not the holder, and a later acquire
/// gets the next token (the killed statement minted nothing).
#[tokio::test]
async fn connection_killed_mid_acquire_is_resolved() {
    let Some(url) = url() else { return };
    // The blocker, the blocked acquire, the spawned clean-up release and the killer each hold a
    // connection.
    let options = SqlOptions::default()
        .with_table(unique_table())
        .with_max_connections(8);
    let backend = PostgresBackend::connect_with(&url, options).await.unwrap();
    backend.migrate().await.unwrap();
    let t = backend.table().as_str();
    let locker = Locker::builder(backend.clone())
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let key = format!("killed-{}", support::random_suffix());
    let first = locker.try_acquire(&key).await.unwrap().unwrap();
    let first_token = first.fencing_token().get();
    first.release().await.unwrap();

    let kill_blocked_acquire = || async {
        for _ in 0..500 {
            let killed: Option<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO%' AND query LIKE $1 LIMIT 1",
            )
            .bind(format!("%{t}%"))
            .fetch_optional(backend.pool())
            .await
            .unwrap();
            if killed == Some(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the acquire never blocked on the row lock");
    };

    // try_acquire: the outcome is unknown, read back: not ours, so the error is reported.
    let mut blocker = backend.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM {t} WHERE name = $1 FOR UPDATE"
    )))
    .bind(&key)
    .execute(&mut *blocker)
    .await
    .unwrap();
    let attempt = tokio::spawn({
        let (locker, key) = (locker.clone(), key.clone());
        async move { locker.try_acquire(&key).await }
    });
    kill_blocked_acquire().await;
    let err = attempt
        .await
        .unwrap()
        .expect_err("a killed acquire cannot be a grant");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");

    // acquire: retried with the same holder token after the kill; gets the key once the row
    // lock is gone, with the next token (first + 1: nothing was minted by the killed statement).
    let waiting = tokio::spawn({
        let (locker, key) = (locker.clone(), key.clone());
        async move { locker.acquire(&key).await }
    });
    kill_blocked_acquire().await;
    blocker.rollback().await.unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("acquire finished")
        .unwrap()
        .expect("acquired after the kill");
    assert_eq!(lease.fencing_token().get(), first_token + 1);
    let record = locker.inspect(&key).await.unwrap().unwrap();
    assert!(record.is_held_by(&lease.holder_token()));
    lease.release().await.unwrap();
}

/// The acquire lands and commits but the connection is cut before the reply arrives: the core
/// reads the row back and finds its own holder token, so the lease is ours.
#[tokio::test]
async fn connection_cut_after_acquire_landed_is_resolved() {
    let Some(url) = url() else { return };
    let direct = backend_on(&url, unique_table()).await;
    let options = PgConnectOptions::from_str(&url).unwrap();
    let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = CuttingProxy::start(upstream, b"INSERT 0 1").await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        // Plain text, so the proxy can see the reply it cuts.
        .connect_with(
            options
                .host("127.0.0.1")
                .port(proxy.port)
                .ssl_mode(PgSslMode::Disable),
        )
        .await
        .unwrap();
    let through_proxy = PostgresBackend::from_pool(
        pool,
        SqlOptions::default().with_table(direct.table().clone()),
    );
    let locker = Locker::builder(through_proxy)
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let key = format!("cut-{}", support::random_suffix());
    proxy.arm();
    let lease = locker
        .try_acquire(&key)
        .await
        .expect("resolved by reading back")
        .expect("the grant landed, so it is ours");
    assert_eq!(proxy.cuts(), 1, "the reply was not cut");
    let record = direct
        .inspect(&LeaseKey::new(&key).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(record.is_held_by(&lease.holder_token()), "{record:?}");
    // And it is really held: nobody else gets it.
    assert!(
        Locker::new(direct.clone())
            .try_acquire(&key)
            .await
            .unwrap()
            .is_none()
    );
    lease.release().await.unwrap();
}

#[tokio::test]
async fn release_notifies_a_waiter_on_another_connection() {
    let Some(url) = url() else { return };
    let holder_side = backend_on(&url, unique_table()).await;
    let waiter_side = backend_on(&url, holder_side.table().clone()).await;
    let key = LeaseKey::new(format!("notify-{}", support::random_suffix())).unwrap();
    let lease = Locker::new(holder_side.clone())
        .try_acquire(&key)
        .await
        .unwrap()
        .unwrap();
    // First call starts the listener; give it time to LISTEN.
    waiter_side
        .wait_for_change(&key, Duration::from_millis(300))
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let (backend, key) = (waiter_side.clone(), key.clone());
        async move { backend.wait_for_change(&key, Duration::from_secs(60)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter returned before any change"
    );
    let released = Instant::now();
    lease.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("NOTIFY woke the waiter long before its 60 s poll")
        .unwrap()
        .unwrap();
    eprintln!("woken {:?} after release", released.elapsed());
    // A break notifies too.
    let lease = Locker::new(holder_side.clone())
        .try_acquire(&key)
        .await
        .unwrap()
        .unwrap();
    let waiter = tokio::spawn({
        let (backend, key) = (waiter_side.clone(), key.clone());
        async move { backend.wait_for_change(&key, Duration::from_secs(60)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    let before = holder_side.break_lease(&key).await.unwrap().unwrap();
    assert!(before.is_held_by(&lease.holder_token()));
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("NOTIFY on break")
        .unwrap()
        .unwrap();
}

/// A semaphore's waiter wakes on the NOTIFY of a slot's release, not on its next poll.
#[tokio::test]
async fn a_semaphore_waiter_wakes_on_notify_when_a_permit_is_released() {
    let Some(url) = url() else { return };
    let holder_side = backend_on(&url, unique_table()).await;
    let waiter_side = backend_on(&url, holder_side.table().clone()).await;
    let name = format!("sem-notify-{}", support::random_suffix());
    let holders = lease_sql::Semaphore::new(&Locker::new(holder_side), &name, 2).unwrap();
    let a = holders.acquire().await.unwrap();
    let b = holders.acquire().await.unwrap();
    // Polling alone would not retry for a minute.
    let slow_polls = Locker::builder(waiter_side)
        .retry(
            lease_sql::RetryPolicy::default()
                .with_initial_delay(Duration::from_secs(60))
                .with_max_delay(Duration::from_secs(60))
                .with_jitter(false),
        )
        .build()
        .unwrap();
    let waiter = lease_sql::Semaphore::new(&slow_polls, &name, 2).unwrap();
    let waiting = tokio::spawn(async move { waiter.acquire().await });
    // Time for the waiter's first round and its LISTEN.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "a permit was granted while both were held"
    );
    let freed = b.slot();
    let released = Instant::now();
    b.release().await.unwrap();
    let permit = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("NOTIFY woke the semaphore's waiter long before its 60 s poll")
        .unwrap()
        .unwrap();
    eprintln!("permit granted {:?} after the release", released.elapsed());
    assert_eq!(permit.slot(), freed);
    assert!(a.is_held());
}

#[tokio::test]
async fn duplicate_renewals_report_the_stored_ttl() {
    let Some(backend) = backend().await else {
        return;
    };
    support::duplicate_renewals_report_the_stored_ttl(Arc::new(backend)).await;
}

#[tokio::test]
async fn mixed_batch_renews_each_lease_with_its_own_ttl() {
    let Some(backend) = backend().await else {
        return;
    };
    support::mixed_batch_renews_each_lease_with_its_own_ttl(Arc::new(backend)).await;
}

/// A server in read-only mode (a primary being demoted during a failover) answers 25006: that is
/// transient, so the lease lives on until its deadline while the client finds the new primary.
#[tokio::test]
async fn read_only_server_is_transient() {
    let Some(url) = url() else { return };
    let direct = backend_on(&url, unique_table()).await;
    let read_only = PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET default_transaction_read_only = on")
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect(&url)
        .await
        .unwrap();
    let backend = PostgresBackend::from_pool(
        read_only,
        SqlOptions::default().with_table(direct.table().clone()),
    );
    let request = lease_sql::AcquireRequest::new(
        LeaseKey::new("read-only").unwrap(),
        HolderToken::generate(),
        Duration::from_secs(5),
        lease_sql::HolderMetadata::new("t").unwrap(),
    );
    let err = backend.acquire(&request).await.unwrap_err();
    assert_eq!(err.kind(), lease_sql::BackendErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
}

/// `LISTEN` keeps its connection for good, so it must not take it from the operations pool:
/// with a pool of one, operations still run while a waiter listens, and the holder keeps its
/// lease.
#[tokio::test]
async fn listen_does_not_take_the_only_pooled_connection() {
    let Some(url) = url() else { return };
    let options = SqlOptions::default()
        .with_table(unique_table())
        .with_max_connections(1)
        .with_acquire_timeout(Duration::from_secs(1));
    let backend = PostgresBackend::connect_with(&url, options).await.unwrap();
    backend.migrate().await.unwrap();
    let key = LeaseKey::new(format!("listen-{}", support::random_suffix())).unwrap();
    let holder = Locker::builder(backend.clone())
        .ttl(Duration::from_secs(2))
        .build()
        .unwrap();
    let lease = holder.try_acquire(&key).await.unwrap().expect("free");
    // A contended acquire and a wait start the listener.
    assert!(
        Locker::new(backend.clone())
            .try_acquire(&key)
            .await
            .unwrap()
            .is_none()
    );
    backend
        .wait_for_change(&key, Duration::from_millis(500))
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let (backend, key) = (backend.clone(), key.clone());
        async move { backend.wait_for_change(&key, Duration::from_secs(30)).await }
    });
    for _ in 0..5 {
        let record = backend.inspect(&key).await.expect("a pooled connection");
        assert!(record.unwrap().is_held_by(&lease.holder_token()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Renewals (every TTL/3) kept going on the one pooled connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(lease.is_held(), "the holder lost its lease");
    lease.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the release woke the waiter")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn ten_thousand_leases_renew_with_one_statement_per_interval() {
    let Some(url) = url() else { return };
    let options = SqlOptions::default()
        .with_table(unique_table())
        .with_max_connections(16);
    let backend = PostgresBackend::connect_with(&url, options).await.unwrap();
    backend.migrate().await.unwrap();
    let counter = backend.clone();
    support::many_leases_one_statement_per_interval(
        Arc::new(backend),
        move || counter.round_trips(),
        10_000,
        1,
    )
    .await;
}

#[tokio::test]
async fn connect_errors_are_classified_and_never_show_the_password() {
    let options = SqlOptions::default().with_acquire_timeout(Duration::from_secs(1));
    let err =
        PostgresBackend::connect_with("postgres://me:hunter2@127.0.0.1:1/db", options.clone())
            .await
            .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
    for bad in [
        "postgres://me:hunter2@127.0.0.1:5432/db?sslmode=bogus",
        "not a url",
    ] {
        let err = PostgresBackend::connect_with(bad, options.clone())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}: {err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }
    let Some(url) = url() else { return };
    let (base, _) = url.rsplit_once('/').unwrap();
    let err = PostgresBackend::connect_with(
        &format!("{base}/no_such_db_{}", support::random_suffix()),
        options,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    // Trust authentication ignores the password, so it connects: Debug must not show it.
    let with_password = url.replacen("://postgres@", "://postgres:hunter2@", 1);
    if with_password != url {
        let backend = PostgresBackend::connect(&with_password).await.unwrap();
        assert!(!format!("{backend:?}").contains("hunter2"));
    }
}

#[tokio::test]
async fn list_returns_the_prefix_sorted() {
    let Some(backend) = backend().await else {
        return;
    };
    support::list_returns_the_prefix_sorted(Arc::new(backend)).await;
}

#[tokio::test]
async fn round_trips_are_counted() {
    let Some(url) = url() else { return };
    let options = SqlOptions::default()
        .with_table(unique_table())
        .with_max_connections(1);
    let backend = PostgresBackend::connect_with(&url, options).await.unwrap();
    backend.migrate().await.unwrap();
    let counter = backend.clone();
    support::round_trips_are_counted(Arc::new(backend), move || counter.round_trips(), 1, 1).await;
}

#[tokio::test]
async fn connect_picks_the_dialect_from_the_url() {
    let Some(url) = url() else { return };
    let table = unique_table();
    let mut tokens = Vec::new();
    for url in [url.clone(), url.replacen("postgres://", "postgresql://", 1)] {
        let backend =
            lease_sql::connect_with(&url, SqlOptions::default().with_table(table.clone()))
                .await
                .unwrap();
        assert!(
            matches!(backend, lease_sql::AnySqlBackend::Postgres(_)),
            "{backend:?}"
        );
        assert_eq!(backend.name(), "postgres");
        backend.migrate().await.unwrap();
        let lease = Locker::new(backend)
            .try_acquire("any")
            .await
            .unwrap()
            .unwrap();
        tokens.push(lease.fencing_token().get());
        lease.release().await.unwrap();
    }
    let direct = PostgresBackend::connect_with(&url, SqlOptions::default().with_table(table))
        .await
        .unwrap();
    let record = direct
        .inspect(&LeaseKey::new("any").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (tokens[1], record.fencing.get()),
        (tokens[0] + 1, tokens[0] + 1),
        "both URLs reached the same table"
    );
}

/// Fenced transactions on this database (`tests/fenced/mod.rs`).
mod fenced_transactions {
    fenced_tests!(postgres);
}

/// Processes that start together each run `migrate()`: racing `CREATE TABLE IF NOT EXISTS`
/// statements make PostgreSQL fail one of them (a duplicate key in `pg_type`); every migration
/// must still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_of_one_table_all_succeed() {
    let Some(url) = url() else { return };
    for _ in 0..3 {
        let table = unique_table();
        let fences = unique_table();
        let mut backends = Vec::new();
        for _ in 0..8 {
            let options = SqlOptions::default()
                .with_table(table.clone())
                .with_fence_table(fences.clone())
                .with_max_connections(1);
            backends.push(
                PostgresBackend::connect_with(&url, options)
                    .await
                    .expect("connect to LEASE_TEST_POSTGRES_URL"),
            );
        }
        let results = futures_util::future::join_all(backends.iter().map(|b| b.migrate())).await;
        for result in results {
            result.expect("every concurrent migration succeeds");
        }
    }
}
