//! PostgreSQL behind PgBouncer in transaction pooling mode: the conformance kit plus the rules
//! transaction pooling needs, against the pooler named by `LEASE_TEST_PGBOUNCER_URL` (in front of
//! the server named by `LEASE_TEST_POSTGRES_URL`, which waiters `LISTEN` on directly). Skipped
//! loudly when unset, failing when `LEASE_TEST_REQUIRE=1`.
#![cfg(feature = "postgres")]

mod support;

use std::time::{Duration, Instant};

use lease_core::conformance::{Harness, require_env};
use lease_sql::{
    AcquireRequest, Backend, HolderMetadata, HolderToken, LeaseKey, Locker, Pooler,
    PostgresBackend, SqlOptions, TableName,
};
use support::{random_suffix, unique_table};

/// PgBouncer in transaction mode.
fn pooler_url() -> Option<String> {
    require_env("LEASE_TEST_PGBOUNCER_URL")
}

/// The same server without the pooler.
fn direct_url() -> Option<String> {
    require_env("LEASE_TEST_POSTGRES_URL")
}

async fn pooled(pooler: Pooler, table: TableName) -> Option<PostgresBackend> {
    let options = SqlOptions::default()
        .with_table(table)
        .with_max_connections(3)
        .with_pooler(pooler);
    let backend = PostgresBackend::connect_with(&pooler_url()?, options)
        .await
        .expect("connect to LEASE_TEST_PGBOUNCER_URL");
    backend.migrate().await.expect("migrate through the pooler");
    Some(backend)
}

async fn listening(table: TableName) -> Option<PostgresBackend> {
    let direct = direct_url()?;
    pooled(
        Pooler::transaction_listening_on(direct).expect("a postgres URL"),
        table,
    )
    .await
}

async fn harness() -> Option<Harness> {
    Some(Harness::new(listening(unique_table()).await?))
}

lease_core::conformance_tests!(harness);

fn request(key: &LeaseKey) -> AcquireRequest {
    AcquireRequest::new(
        key.clone(),
        HolderToken::generate(),
        Duration::from_secs(30),
        HolderMetadata::new("pgbouncer").unwrap(),
    )
}

/// Why the option exists: with sqlx's default named, cached statements, two clients of one
/// PgBouncer in transaction mode meet each other's prepared statements on the server
/// connections they are handed (`prepared statement "sqlx_s_1" already exists` or `does not
/// exist`). With [`Pooler::transaction`] the same sequence runs cleanly.
#[tokio::test]
async fn cached_statements_break_through_transaction_pooling_and_the_option_fixes_it() {
    let Some(url) = pooler_url() else { return };
    let table = unique_table();
    let setup = pooled(Pooler::transaction(), table.clone()).await.unwrap();
    let run = async |pooler: Pooler| -> Vec<String> {
        let options = SqlOptions::default()
            .with_table(table.clone())
            .with_pooler(pooler);
        // Two clients, each with its own pooler connection, taking turns: PgBouncer hands them
        // the same idle server connections.
        let (a, b) = (
            PostgresBackend::connect_with(&url, options.clone())
                .await
                .unwrap(),
            PostgresBackend::connect_with(&url, options).await.unwrap(),
        );
        let mut errors = Vec::new();
        for round in 0..10 {
            let key = LeaseKey::new(format!("turns-{round}-{}", random_suffix())).unwrap();
            for backend in [&a, &b] {
                if let Err(e) = backend.acquire(&request(&key)).await {
                    errors.push(e.to_string());
                }
                if let Err(e) = backend.inspect(&key).await {
                    errors.push(e.to_string());
                }
            }
        }
        errors
    };
    let without = run(Pooler::none()).await;
    assert!(
        without.iter().any(|e| e.contains("prepared statement")),
        "named statements were expected to collide through the pooler: {without:?}"
    );
    let with = run(Pooler::transaction()).await;
    assert!(with.is_empty(), "{with:?}");
    drop(setup);
}

/// Each operation through a transaction pooler is `BEGIN`, the statement's parse, its
/// execution and `COMMIT`: four round trips, every time (nothing is cached).
#[tokio::test]
async fn each_statement_costs_four_round_trips_through_the_pooler() {
    let Some(backend) = pooled(Pooler::transaction(), unique_table()).await else {
        return;
    };
    for _ in 0..2 {
        let key = LeaseKey::new(format!("trips-{}", random_suffix())).unwrap();
        let before = backend.round_trips();
        backend.acquire(&request(&key)).await.unwrap();
        assert_eq!(backend.round_trips() - before, 4, "acquire of a free key");
    }
}

/// With a direct URL, a release through the pooler wakes a waiter long before its poll.
#[tokio::test]
async fn release_wakes_a_waiter_listening_on_the_direct_connection() {
    let Some(holder_side) = listening(unique_table()).await else {
        return;
    };
    let waiter_side = listening(holder_side.table().clone()).await.unwrap();
    assert!(waiter_side.capabilities().notifies_waiters);
    let key = LeaseKey::new(format!("notify-{}", random_suffix())).unwrap();
    let lease = Locker::new(holder_side.clone())
        .try_acquire(&key)
        .await
        .unwrap()
        .unwrap();
    // The first call starts the listener; give it time to LISTEN.
    waiter_side
        .wait_for_change(&key, Duration::from_millis(300))
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let (backend, key) = (waiter_side.clone(), key.clone());
        async move { backend.wait_for_change(&key, Duration::from_secs(60)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "returned before any change");
    lease.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("NOTIFY woke the waiter long before its 60 s poll")
        .unwrap()
        .unwrap();
}

/// Without a direct URL the backend does not claim wake-ups, waiters poll, and a waiting
/// acquire still gets the key after a release (at its next retry).
#[tokio::test]
async fn without_a_direct_url_waiters_poll_and_still_get_the_key() {
    let Some(backend) = pooled(Pooler::transaction(), unique_table()).await else {
        return;
    };
    assert!(!backend.capabilities().notifies_waiters);
    let key = LeaseKey::new(format!("poll-{}", random_suffix())).unwrap();
    let started = Instant::now();
    backend
        .wait_for_change(&key, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "a polling wait sleeps its whole interval"
    );
    let locker = Locker::new(backend.clone());
    let lease = locker.try_acquire(&key).await.unwrap().unwrap();
    let lease_token = lease.fencing_token().get();
    let waiting = tokio::spawn({
        let (locker, key) = (locker.clone(), key.clone());
        async move { locker.acquire(&key).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "got a held key");
    lease.release().await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiter polled its way to the key")
        .unwrap()
        .unwrap();
    assert_eq!(next.fencing_token().get(), lease_token + 1);
    next.release().await.unwrap();
}
