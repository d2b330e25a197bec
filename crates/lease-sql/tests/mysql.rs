//! MySQL / MariaDB: the conformance kit plus backend-specific tests, against the server named by
//! `LEASE_TEST_MYSQL_URL` (skipped loudly when unset, failing when `LEASE_TEST_REQUIRE=1`).
#![cfg(feature = "mysql")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use lease_core::conformance::{Harness, require_env};
use lease_sql::sqlx::{self, AssertSqlSafe};
use lease_sql::{
    Backend, ErrorKind, HolderToken, LeaseKey, Locker, MySqlBackend, SqlOptions, TableName,
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
    Some(Harness::new(backend().await?))
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
    assert_eq!((a.fencing_token().get(), b.fencing_token().get()), (1, 1));
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
    locker
        .try_acquire(&key)
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
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
    assert_eq!(lease.fencing_token().get(), 2);
    let record = locker.inspect(&key).await.unwrap().unwrap();
    assert!(record.is_held_by(&lease.holder_token()));
    lease.release().await.unwrap();
}

/// The contended path and the idempotent re-acquire, checked through the raw backend (the
/// statement's reply decoding is the MySQL-specific part).
#[tokio::test]
async fn acquire_reply_decoding() {
    use lease_sql::{AcquireOutcome, AcquireRequest, HolderMetadata};
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
    assert_eq!(token(backend.acquire(&request(me)).await.unwrap()), Some(1));
    assert_eq!(
        token(backend.acquire(&request(me)).await.unwrap()),
        Some(1),
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
        Some(2)
    );
}

#[tokio::test]
async fn ten_thousand_leases_renew_with_one_statement_per_interval() {
    let Some(url) = url() else { return };
    let options = SqlOptions::default()
        .with_table(unique_table())
        .with_max_connections(16);
    let backend = MySqlBackend::connect_with(&url, options).await.unwrap();
    backend.migrate().await.unwrap();
    let counter = backend.clone();
    support::many_leases_one_statement_per_interval(
        Arc::new(backend),
        move || counter.statements_sent(),
        10_000,
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
