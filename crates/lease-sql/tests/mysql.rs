//! MySQL / MariaDB: the conformance kit plus backend-specific tests, against the server named by
//! `LEASE_TEST_MYSQL_URL` (skipped loudly when unset, failing when `LEASE_TEST_REQUIRE=1`).
#![cfg(feature = "mysql")]

mod support;
#[macro_use]
mod fenced;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lease_core::conformance::{Harness, OutsideChange, OutsideWrite, OutsideWriter, require_env};
use lease_sql::sqlx::mysql::MySqlPoolOptions;
use lease_sql::sqlx::{self, AssertSqlSafe};
use lease_sql::{
    AcquireOutcome, AcquireRequest, Backend, BackendErrorKind, ErrorKind, HolderMetadata,
    HolderToken, LeaseKey, Locker, MySqlBackend, RenewOutcome, RenewRequest, SqlOptions, TableName,
};
use support::unique_table;

fn url() -> Option<String> {
    require_env("LEASE_TEST_MYSQL_URL")
}

async fn backend_on(url: &str, table: TableName) -> MySqlBackend {
    let options = SqlOptions::default()
        .with_table(table)
        .with_max_connections(3);
    let backend = MySqlBackend::connect_with(url, options)
        .await
        .expect("connect to LEASE_TEST_MYSQL_URL");
    backend.migrate().await.expect("migrate");
    backend
}

async fn backend() -> Option<MySqlBackend> {
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
fn row_deleter(backend: &MySqlBackend) -> OutsideWriter {
    let pool = backend.pool().clone();
    let delete = format!("DELETE FROM `{}` WHERE name = ?", backend.table().as_str());
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

async fn exec(backend: &MySqlBackend, sql: String) {
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
    let backend = backend_on(&url, unique_table()).await;
    let backend = MySqlBackend::from_pool(
        backend.pool().clone(),
        SqlOptions::default().with_table(TableName::new("select").unwrap()),
    );
    backend.migrate().await.unwrap();
    assert!(backend.create_table_sql().contains("`select`"));
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
    let missing = MySqlBackend::from_pool(
        backend.pool().clone(),
        SqlOptions::default().with_table(unique_table()),
    );
    let err = Locker::new(missing).try_acquire("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
}

#[tokio::test]
async fn keys_are_case_sensitive() {
    let Some(backend) = backend().await else {
        return;
    };
    let locker = Locker::new(backend);
    let a = locker.try_acquire("Job").await.unwrap().expect("free");
    let b = locker
        .try_acquire("job")
        .await
        .unwrap()
        .expect("a different key");
    // Two rows, each with its own counter (neither bumped the other's).
    let (ra, rb) = (
        locker.inspect("Job").await.unwrap().unwrap(),
        locker.inspect("job").await.unwrap().unwrap(),
    );
    assert_eq!(
        (ra.fencing, rb.fencing),
        (a.fencing_token(), b.fencing_token())
    );
    assert!(ra.is_held_by(&a.holder_token()) && rb.is_held_by(&b.holder_token()));
}

#[tokio::test]
async fn foreign_rows_are_corrupt_records_not_panics() {
    let Some(backend) = backend().await else {
        return;
    };
    let t = backend.table().as_str();
    let valid = HolderToken::generate();
    let far = "UTC_TIMESTAMP(6) + INTERVAL 1 HOUR";
    exec(
        &backend,
        format!(
            "INSERT INTO {t} (name, holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at) VALUES
            ('garbage-holder', 'not a token', 'x', 5, 1000, UTC_TIMESTAMP(6), {far}),
            ('null-expiry', '{valid}', NULL, 5, NULL, NULL, NULL),
            ('negative-fencing', NULL, NULL, -7, NULL, NULL, NULL),
            ('negative-ttl', '{valid}', 'x', 5, -5, UTC_TIMESTAMP(6), {far}),
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
    let backend = MySqlBackend::connect_with(&url, options).await.unwrap();
    backend.migrate().await.unwrap();
    let locker = Locker::builder(backend.clone())
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let key = format!("killed-{}", support::random_suffix());
    let first = locker.try_acquire(&key).await.unwrap().unwrap();
    let first_token = first.fencing_token().get();
    first.release().await.unwrap();
    let t = backend.table().as_str();

    let kill_blocked_acquire = |blocker_id: u64| {
        let pool = backend.pool().clone();
        let pattern = format!("INSERT INTO `{t}`%");
        async move {
            for _ in 0..500 {
                let waiting: Option<u64> = sqlx::query_scalar(
                    "SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST \
                     WHERE INFO LIKE ? AND ID <> ? LIMIT 1",
                )
                .bind(&pattern)
                .bind(blocker_id)
                .fetch_optional(&pool)
                .await
                .unwrap();
                // A connection killed a moment ago can still be listed while it goes away.
                if let Some(id) = waiting
                    && sqlx::query(AssertSqlSafe(format!("KILL CONNECTION {id}")))
                        .execute(&pool)
                        .await
                        .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the acquire never blocked on the row lock");
        }
    };

    let mut blocker = backend.pool().begin().await.unwrap();
    let blocker_id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM {t} WHERE name = ? FOR UPDATE"
    )))
    .bind(&key)
    .execute(&mut *blocker)
    .await
    .unwrap();
    let attempt = tokio::spawn({
        let (locker, key) = (locker.clone(), key.clone());
        async move { locker.try_acquire(&key).await }
    });
    kill_blocked_acquire(blocker_id).await;
    let err = attempt
        .await
        .unwrap()
        .expect_err("a killed acquire cannot be a grant");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");

    let waiting = tokio::spawn({
        let (locker, key) = (locker.clone(), key.clone());
        async move { locker.acquire(&key).await }
    });
    kill_blocked_acquire(blocker_id).await;
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

/// The contended path and the idempotent re-acquire, checked through the raw backend (the
/// statement's reply decoding is the MySQL-specific part).
#[tokio::test]
async fn acquire_reply_decoding() {
    let Some(backend) = backend().await else {
        return;
    };
    let key = LeaseKey::new(format!("decode-{}", support::random_suffix())).unwrap();
    let me = HolderToken::generate();
    let request = |holder| {
        AcquireRequest::new(
            key.clone(),
            holder,
            Duration::from_secs(5),
            HolderMetadata::new("t").unwrap(),
        )
    };
    let token = |o: AcquireOutcome| match o {
        AcquireOutcome::Acquired(g) => Some(g.fencing.get()),
        _ => None,
    };
    // The insert reports the token it stored: the server's clock in microseconds.
    let first = token(backend.acquire(&request(me)).await.unwrap()).expect("granted");
    let stored = backend.inspect(&key).await.unwrap().unwrap().fencing.get();
    assert_eq!(first, stored);
    let local_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(
        first.abs_diff(local_us) < 60_000_000,
        "the first token {first} is not the server clock in µs (local {local_us})"
    );
    assert_eq!(
        token(backend.acquire(&request(me)).await.unwrap()),
        Some(first),
        "re-acquire"
    );
    match backend
        .acquire(&request(HolderToken::generate()))
        .await
        .unwrap()
    {
        AcquireOutcome::Held(Some(r)) => assert!(r.is_held_by(&me)),
        other => panic!("expected held by me, got {other:?}"),
    }
    backend.break_lease(&key).await.unwrap();
    assert_eq!(
        token(
            backend
                .acquire(&request(HolderToken::generate()))
                .await
                .unwrap()
        ),
        Some(first + 1)
    );
}

/// The locker side of batching at 2,000 leases (the 10,000-lease batch itself is exercised,
/// faster, by `batch_renewal_never_blocks_other_holders` on rows inserted in bulk).
#[tokio::test]
async fn many_leases_renew_with_one_statement_per_interval() {
    let Some(url) = url() else { return };
    let options = SqlOptions::default()
        .with_table(unique_table())
        .with_max_connections(16);
    let backend = MySqlBackend::connect_with(&url, options).await.unwrap();
    backend.migrate().await.unwrap();
    let counter = backend.clone();
    support::many_leases_one_statement_per_interval(
        Arc::new(backend),
        move || counter.round_trips(),
        2_000,
        1,
    )
    .await;
}

#[tokio::test]
async fn connect_errors_are_classified_and_never_show_the_password() {
    let options = SqlOptions::default().with_acquire_timeout(Duration::from_secs(1));
    let err = MySqlBackend::connect_with("mysql://me:hunter2@127.0.0.1:1/db", options.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
    for bad in [
        "mysql://me:hunter2@127.0.0.1:3306/db?ssl-mode=bogus",
        "not a url",
    ] {
        let err = MySqlBackend::connect_with(bad, options.clone())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}: {err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }
    let Some(url) = url() else { return };
    let (base, _) = url.rsplit_once('/').unwrap();
    let err = MySqlBackend::connect_with(
        &format!("{base}/no_such_db_{}", support::random_suffix()),
        options.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    // A wrong password is refused: fatal, and the password is not in the message.
    let wrong = url.replacen("://root@", "://root:hunter2@", 1);
    if wrong != url {
        let err = MySqlBackend::connect_with(&wrong, options)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }
}

fn acquire_request(key: &LeaseKey, holder: HolderToken, ttl: Duration) -> AcquireRequest {
    AcquireRequest::new(key.clone(), holder, ttl, HolderMetadata::new("t").unwrap())
}

fn granted_token(outcome: &AcquireOutcome) -> Option<u64> {
    match outcome {
        AcquireOutcome::Acquired(grant) => Some(grant.fencing.get()),
        _ => None,
    }
}

/// An audit tool's `BEFORE UPDATE` trigger makes the server report `LAST_INSERT_ID` 0 for the
/// acquire statement. `migrate` and `connect` refuse such a table by name; a backend built on a
/// pool anyway never trusts the reply: exclusion and fencing hold.
#[tokio::test]
async fn update_trigger_is_refused_and_never_breaks_exclusion() {
    let Some(url) = url() else { return };
    let backend = backend_on(&url, unique_table()).await;
    let t = backend.table().as_str();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TRIGGER `{t}_audit` BEFORE UPDATE ON `{t}` FOR EACH ROW SET @audit = 1"
    )))
    .execute(backend.pool())
    .await
    .unwrap();
    let err = backend.migrate().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    assert!(err.to_string().contains(&format!("{t}_audit")), "{err}");
    let err = MySqlBackend::connect_with(
        &url,
        SqlOptions::default().with_table(backend.table().clone()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("UPDATE trigger"), "{err}");

    let key = LeaseKey::new(format!("trigger-{}", support::random_suffix())).unwrap();
    let (a, b) = (HolderToken::generate(), HolderToken::generate());
    let ttl = Duration::from_millis(800);
    let first = backend
        .acquire(&acquire_request(&key, a, ttl))
        .await
        .unwrap();
    let t1 = granted_token(&first).expect("granted");
    match backend
        .acquire(&acquire_request(&key, b, ttl))
        .await
        .unwrap()
    {
        AcquireOutcome::Held(Some(record)) => assert!(record.is_held_by(&a), "{record:?}"),
        other => panic!("a held key was granted again: {other:?}"),
    }
    let again = backend
        .acquire(&acquire_request(&key, a, ttl))
        .await
        .unwrap();
    assert_eq!(
        granted_token(&again),
        Some(t1),
        "re-acquire keeps the token"
    );
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let taken = backend
        .acquire(&acquire_request(&key, b, ttl))
        .await
        .unwrap();
    assert_eq!(granted_token(&taken), Some(t1 + 1), "takeover after expiry");
    let refused = backend
        .acquire(&acquire_request(&key, a, ttl))
        .await
        .unwrap();
    assert_eq!(granted_token(&refused), None, "{refused:?}");
    backend
        .release(&lease_sql::ReleaseRequest::new(key.clone(), b))
        .await
        .unwrap();
    let next = backend
        .acquire(&acquire_request(&key, a, ttl))
        .await
        .unwrap();
    assert_eq!(granted_token(&next), Some(t1 + 2));
}

/// MariaDB's `max_statement_time` (error 1969) interrupting an acquire stuck behind a row lock is
/// transient: the lease's deadline bounds the retries, a timeout does not end it.
#[tokio::test]
async fn statement_time_limit_is_transient() {
    let Some(url) = url() else { return };
    let direct = backend_on(&url, unique_table()).await;
    let limited = MySqlPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET SESSION max_statement_time = 0.2")
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect(&url)
        .await
        .unwrap();
    let backend = MySqlBackend::from_pool(
        limited,
        SqlOptions::default().with_table(direct.table().clone()),
    );
    let key = LeaseKey::new(format!("slow-{}", support::random_suffix())).unwrap();
    let a = HolderToken::generate();
    let ttl = Duration::from_secs(5);
    assert!(
        granted_token(
            &direct
                .acquire(&acquire_request(&key, a, ttl))
                .await
                .unwrap()
        )
        .is_some()
    );
    let t = direct.table().as_str();
    let mut blocker = direct.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM `{t}` WHERE name = ? FOR UPDATE"
    )))
    .bind(key.as_str())
    .execute(&mut *blocker)
    .await
    .unwrap();
    let err = backend
        .acquire(&acquire_request(&key, HolderToken::generate(), ttl))
        .await
        .unwrap_err();
    blocker.rollback().await.unwrap();
    assert_eq!(err.kind(), BackendErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("1969"), "{err}");
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

/// Inserts rows held by `holder` for an hour, one per key, in one statement.
async fn insert_held(backend: &MySqlBackend, keys: &[String], holder: HolderToken) {
    let t = backend.table().as_str();
    let rows: Vec<String> = keys
        .iter()
        .map(|key| {
            format!(
                "('{key}', '{holder}', 'bulk', 1, 3600000, UTC_TIMESTAMP(6), \
                 UTC_TIMESTAMP(6) + INTERVAL 1 HOUR)"
            )
        })
        .collect();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "INSERT INTO `{t}` (name, holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at) \
         VALUES {}",
        rows.join(",")
    )))
    .execute(backend.pool())
    .await
    .unwrap();
}

/// A backend on a one-connection pool whose `innodb_lock_wait_timeout` is 0 (MariaDB: no wait):
/// a statement that meets a row lock fails at once (1205) instead of waiting for it.
async fn no_lock_waits(url: &str, table: &TableName) -> MySqlBackend {
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET SESSION innodb_lock_wait_timeout = 0")
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect(url)
        .await
        .unwrap();
    MySqlBackend::from_pool(pool, SqlOptions::default().with_table(table.clone()))
}

/// Two holders with 10,000 leases each in one table, their keys interleaved (`k/0` is one's,
/// `k/1` the other's, …), so a batch of one holder covers half the table and every row of the
/// other lies between its rows in the index.
///
/// First, with rows of the other holder locked (a renewal of theirs in flight), the batch renews
/// on a connection that may not wait for any row lock: it succeeds, so it touches no row but its
/// own (a batch that scanned the index, as a long `IN` list does, fails here with 1205). Then, while
/// the batch renews again and again, the other holder's renewals on a no-wait connection never
/// meet a lock either, and answer quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_renewal_never_blocks_other_holders() {
    let Some(url) = url() else { return };
    let backend = backend_on(&url, unique_table()).await;
    let batch_side = no_lock_waits(&url, backend.table()).await;
    let other_side = no_lock_waits(&url, backend.table()).await;
    let (a, b) = (HolderToken::generate(), HolderToken::generate());
    const N: usize = 10_000;
    let a_keys: Vec<String> = (0..N).map(|i| format!("k/{}", 2 * i)).collect();
    let b_keys: Vec<String> = (0..N).map(|i| format!("k/{}", 2 * i + 1)).collect();
    insert_held(&backend, &a_keys, a).await;
    insert_held(&backend, &b_keys, b).await;
    let a_batch: Vec<RenewRequest> = a_keys
        .iter()
        .map(|key| RenewRequest::new(LeaseKey::new(key).unwrap(), a, Duration::from_secs(600)))
        .collect();
    let all_renewed = |results: &[Result<RenewOutcome, lease_sql::BackendError>]| {
        let failed: Vec<_> = results
            .iter()
            .filter(|r| !matches!(r, Ok(RenewOutcome::Renewed(_))))
            .collect();
        assert!(
            failed.is_empty(),
            "{} not renewed: {:?}",
            failed.len(),
            failed.first()
        );
    };

    let t = backend.table().as_str();
    // Fresh statistics, as a table that has lived a while has.
    sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE TABLE `{t}`")))
        .execute(backend.pool())
        .await
        .unwrap();
    let mut in_flight = backend.pool().begin().await.unwrap();
    for key in [&b_keys[0], &b_keys[N / 2], &b_keys[N - 1]] {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT 1 FROM `{t}` WHERE name = ? FOR UPDATE"
        )))
        .bind(key)
        .execute(&mut *in_flight)
        .await
        .unwrap();
    }
    all_renewed(&batch_side.renew_many(&a_batch).await);
    in_flight.rollback().await.unwrap();

    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let batches = tokio::spawn({
        let running = Arc::clone(&running);
        async move {
            let mut took = Vec::new();
            while running.load(std::sync::atomic::Ordering::SeqCst) {
                let start = Instant::now();
                all_renewed(&batch_side.renew_many(&a_batch).await);
                took.push(start.elapsed());
            }
            took
        }
    });
    let mut waits = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let request = RenewRequest::new(
            LeaseKey::new(&b_keys[(i * 97) % N]).unwrap(),
            b,
            Duration::from_secs(600),
        );
        let start = Instant::now();
        let outcome = other_side.renew(&request).await;
        waits.push(start.elapsed());
        assert!(
            matches!(outcome, Ok(RenewOutcome::Renewed(_))),
            "the other holder's renew met a row lock: {outcome:?}"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    let took = batches.await.unwrap();
    waits.sort();
    let median = waits[waits.len() / 2];
    let worst = waits[waits.len() - 1];
    eprintln!(
        "batches of {N}: {took:?}; {} renewals of the other holder, median {median:?}, worst {worst:?}",
        waits.len()
    );
    assert!(took.len() >= 2, "the batches did not overlap the renewals");
    // Lock waits are ruled out above; what is left is CPU time on a shared machine.
    assert!(
        median < Duration::from_millis(100),
        "the other holder's renewals took {median:?} (median)"
    );
}

/// Every batch size runs the same statement text: after the first batch, renewing batches of 40
/// different sizes (some with a lease that is not held, which costs the follow-up SELECT)
/// prepares nothing new on the connection, so `max_prepared_stmt_count` is never approached.
#[tokio::test]
async fn batch_renewal_prepares_a_bounded_number_of_statements() {
    let Some(url) = url() else { return };
    let options = SqlOptions::default()
        .with_table(unique_table())
        .with_max_connections(1);
    let backend = MySqlBackend::connect_with(&url, options).await.unwrap();
    backend.migrate().await.unwrap();
    let holder = HolderToken::generate();
    let keys: Vec<String> = (0..64).map(|i| format!("p/{i}")).collect();
    insert_held(&backend, &keys, holder).await;
    let request = |i: usize| {
        RenewRequest::new(
            LeaseKey::new(format!("p/{i}")).unwrap(),
            holder,
            Duration::from_secs(60),
        )
    };
    let prepared = || async {
        let (_, value): (String, String) =
            sqlx::query_as("SHOW SESSION STATUS LIKE 'Com_stmt_prepare'")
                .fetch_one(backend.pool())
                .await
                .unwrap();
        value.parse::<u64>().unwrap()
    };
    let stale = RenewRequest::new(
        LeaseKey::new("p/none").unwrap(),
        holder,
        Duration::from_secs(60),
    );
    // Warm up: the UPDATE, the follow-up SELECT and the status query itself.
    backend.renew_many(&[request(0), stale.clone()]).await;
    prepared().await;
    let before = prepared().await;
    for n in 1..=40 {
        let mut batch: Vec<RenewRequest> = (0..n).map(request).collect();
        if n % 2 == 0 {
            batch.push(stale.clone());
        }
        let results = backend.renew_many(&batch).await;
        for (r, result) in batch.iter().zip(&results) {
            let renewed = matches!(result, Ok(RenewOutcome::Renewed(_)));
            assert_eq!(renewed, r.key.as_str() != "p/none", "{result:?}");
        }
    }
    let after = prepared().await;
    eprintln!("statements prepared for 40 batch sizes: {}", after - before);
    assert_eq!(after - before, 0, "a batch size prepared a new statement");
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
    let backend = MySqlBackend::connect_with(&url, options).await.unwrap();
    backend.migrate().await.unwrap();
    let counter = backend.clone();
    // A break is BEGIN, SELECT … FOR UPDATE, UPDATE, COMMIT.
    support::round_trips_are_counted(Arc::new(backend), move || counter.round_trips(), 1, 4).await;
}

#[tokio::test]
async fn connect_picks_the_dialect_from_the_url() {
    let Some(url) = url() else { return };
    let table = unique_table();
    let mut tokens = Vec::new();
    for url in [url.clone(), url.replacen("mysql://", "mariadb://", 1)] {
        let backend =
            lease_sql::connect_with(&url, SqlOptions::default().with_table(table.clone()))
                .await
                .unwrap();
        assert!(
            matches!(backend, lease_sql::AnySqlBackend::MySql(_)),
            "{backend:?}"
        );
        backend.migrate().await.unwrap();
        let lease = Locker::new(backend)
            .try_acquire("any")
            .await
            .unwrap()
            .unwrap();
        tokens.push(lease.fencing_token().get());
        lease.release().await.unwrap();
    }
    let direct = MySqlBackend::connect_with(&url, SqlOptions::default().with_table(table))
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
    fenced_tests!(mysql);
}
