//! Redis: the conformance kit plus backend-specific tests, against the server named by
//! `LEASE_TEST_REDIS_URL` (skipped loudly when unset, failing when `LEASE_TEST_REQUIRE=1`), and
//! servers of the tests' own (restarts, authentication, replicas) started from `redis-server`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_core::conformance::{Harness, OutsideChange, OutsideWrite, OutsideWriter, require_env};
use lease_redis::redis::{self, AsyncCommands};
use lease_redis::{
    AcquireOutcome, AcquireRequest, Backend, BackendErrorKind, ErrorKind, HolderMetadata,
    HolderToken, KeyPrefix, LeaseKey, Locker, RecordState, RedisBackend, RedisOptions,
    ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest, RetryPolicy,
};
use support::{OwnServer, random_suffix};

fn url() -> Option<String> {
    require_env("LEASE_TEST_REDIS_URL")
}

fn options() -> RedisOptions {
    RedisOptions::default().with_prefix(KeyPrefix::new(format!("t{}:", random_suffix())).unwrap())
}

async fn backend_on(url: &str, options: RedisOptions) -> RedisBackend {
    RedisBackend::connect_with(url, options)
        .await
        .expect("connect to the Redis server")
}

async fn backend() -> Option<RedisBackend> {
    Some(backend_on(&url()?, options()).await)
}

async fn harness() -> Option<Harness> {
    let url = url()?;
    let options = options();
    let backend = backend_on(&url, options.clone()).await;
    // A second instance on the same server and prefix: a second process.
    let peer = backend_on(&url, options).await;
    let writer = keys_deleter(&backend);
    Some(
        Harness::new(backend)
            .with_peer(peer)
            .with_outside_writer(writer),
    )
}

/// Deletes a key's lease and counter as a `FLUSHDB`, an eviction or a restart without
/// persistence would. Foreign data at our keys is never overwritten (a `CorruptRecord`, tested
/// below), so there is no overwrite to make.
fn keys_deleter(backend: &RedisBackend) -> OutsideWriter {
    let backend = backend.clone();
    OutsideWriter::new(move |key, change| {
        let backend = backend.clone();
        async move {
            if change != OutsideChange::Delete {
                return Ok(OutsideWrite::NotApplicable);
            }
            let mut conn = backend.connection();
            let _: () = conn
                .del(&[backend.lease_key(&key), backend.fence_key(&key)])
                .await
                .map_err(|e| e.to_string())?;
            Ok(OutsideWrite::Done)
        }
    })
}

lease_core::conformance_tests!(harness);

fn request(key: &LeaseKey, ttl: Duration) -> AcquireRequest {
    AcquireRequest::new(
        key.clone(),
        HolderToken::generate(),
        ttl,
        HolderMetadata::new("test").unwrap(),
    )
}

fn granted(outcome: AcquireOutcome) -> lease_redis::Grant {
    match outcome {
        AcquireOutcome::Acquired(grant) => grant,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test]
async fn sixteen_racers_on_a_fresh_key_get_one_grant() {
    let Some(url) = url() else { return };
    let options = options();
    let mut backends = Vec::new();
    for _ in 0..16 {
        backends.push(Arc::new(backend_on(&url, options.clone()).await));
    }
    for round in 0..20 {
        let key = LeaseKey::new(format!("race-{round}")).unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = backends
            .iter()
            .map(|backend| {
                let (backend, barrier, key) =
                    (Arc::clone(backend), Arc::clone(&barrier), key.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    backend
                        .acquire(&request(&key, Duration::from_secs(10)))
                        .await
                })
            })
            .collect();
        let mut grants = 0;
        for task in tasks {
            if let AcquireOutcome::Acquired(_) = task.await.unwrap().unwrap() {
                grants += 1;
            }
        }
        assert_eq!(
            grants, 1,
            "round {round}: {grants} racers were granted a fresh key"
        );
    }
}

#[tokio::test]
async fn a_killed_holder_is_taken_over_within_ttl_and_one_poll() {
    let Some(backend) = backend().await else {
        return;
    };
    let key = LeaseKey::new("killed").unwrap();
    let ttl = Duration::from_millis(800);
    // The "killed" holder: a grant nobody renews or releases.
    let first = granted(backend.acquire(&request(&key, ttl)).await.unwrap());
    let poll = Duration::from_millis(200);
    let locker = Locker::builder(backend.clone())
        .ttl(Duration::from_secs(2))
        .retry(
            RetryPolicy::default()
                .with_initial_delay(poll)
                .with_max_delay(poll),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    let lease = locker
        .acquire_timeout(key.as_str(), Duration::from_secs(10))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(lease.fencing_token() > first.fencing);
    // Not before the store's expiry; TTL + one poll, plus slack for a loaded 2-core host (the
    // measured wait is printed: about TTL + half a poll on a quiet machine).
    eprintln!("taken over {waited:?} after the grant (TTL {ttl:?}, poll {poll:?})");
    assert!(
        waited + Duration::from_millis(50) >= ttl,
        "taken over after {waited:?}"
    );
    assert!(
        waited <= ttl + poll + Duration::from_secs(2),
        "took {waited:?}"
    );
    lease.release().await.unwrap();
}

/// Someone else's data at our keys: every operation answers CorruptRecord and nothing changes.
#[tokio::test]
async fn wrong_types_and_foreign_values_are_corrupt_and_left_intact() {
    let Some(backend) = backend().await else {
        return;
    };
    let mut conn = backend.connection();
    let list_key = LeaseKey::new("a-list").unwrap();
    let foreign = LeaseKey::new("foreign-string").unwrap();
    let hash_counter = LeaseKey::new("hash-counter").unwrap();
    let text_counter = LeaseKey::new("text-counter").unwrap();
    let no_expiry = LeaseKey::new("no-expiry").unwrap();
    let _: () = conn.rpush(backend.lease_key(&list_key), "x").await.unwrap();
    let _: () = conn
        .set(backend.lease_key(&foreign), "someone's cache entry")
        .await
        .unwrap();
    let _: () = conn
        .hset(backend.fence_key(&hash_counter), "f", "1")
        .await
        .unwrap();
    let _: () = conn
        .set(backend.fence_key(&text_counter), "twelve")
        .await
        .unwrap();
    let persisted = format!("lease1 {} 5 1000 1 me", HolderToken::generate());
    let _: () = conn
        .set(backend.lease_key(&no_expiry), &persisted)
        .await
        .unwrap();
    for key in [
        &list_key,
        &foreign,
        &hash_counter,
        &text_counter,
        &no_expiry,
    ] {
        let acquire = backend.acquire(&request(key, Duration::from_secs(5))).await;
        let err = acquire.expect_err("acquire on foreign data");
        assert_eq!(err.kind(), BackendErrorKind::CorruptRecord, "{key}: {err}");
        let err = backend.inspect(key).await.expect_err("inspect");
        assert_eq!(err.kind(), BackendErrorKind::CorruptRecord, "{key}: {err}");
        let err = backend.break_lease(key).await.expect_err("break");
        assert_eq!(err.kind(), BackendErrorKind::CorruptRecord, "{key}: {err}");
        // The locker surfaces it as a typed error too, not a panic or a hang.
        let err = Locker::new(backend.clone())
            .try_acquire(key.as_str())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CorruptRecord, "{key}: {err}");
    }
    for key in [&list_key, &foreign] {
        let holder = HolderToken::generate();
        let err = backend
            .renew(&RenewRequest::new(
                key.clone(),
                holder,
                Duration::from_secs(1),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::CorruptRecord);
        let err = backend
            .release(&ReleaseRequest::new(key.clone(), holder))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::CorruptRecord);
        let batch = backend
            .renew_many(&[RenewRequest::new(
                key.clone(),
                holder,
                Duration::from_secs(1),
            )])
            .await;
        assert_eq!(
            batch[0].as_ref().unwrap_err().kind(),
            BackendErrorKind::CorruptRecord
        );
    }
    // A listing reports each one as unreadable beside a readable lease, instead of failing.
    let good = request(&LeaseKey::new("good").unwrap(), Duration::from_secs(5));
    granted(backend.acquire(&good).await.unwrap());
    let listed = backend
        .list("")
        .await
        .expect("foreign data must not fail the listing");
    let states: Vec<_> = listed.iter().map(|r| (r.key.as_str(), r.state)).collect();
    assert_eq!(
        states,
        [
            ("a-list", RecordState::Unreadable),
            ("foreign-string", RecordState::Unreadable),
            ("good", RecordState::Held),
            ("hash-counter", RecordState::Unreadable),
            ("no-expiry", RecordState::Unreadable),
            ("text-counter", RecordState::Unreadable),
        ]
    );
    assert!(listed[2].is_held_by(&good.holder));
    for record in listed.iter().filter(|r| r.is_unreadable()) {
        let why = record.unreadable.as_deref().unwrap_or_default();
        assert!(why.contains(record.key.as_str()), "names the key: {why}");
        assert!(record.holder.is_none());
    }
    // Untouched.
    let list: Vec<String> = conn
        .lrange(backend.lease_key(&list_key), 0, -1)
        .await
        .unwrap();
    assert_eq!(list, ["x"]);
    let value: String = conn.get(backend.lease_key(&foreign)).await.unwrap();
    assert_eq!(value, "someone's cache entry");
    let ttl: i64 = conn.pttl(backend.lease_key(&foreign)).await.unwrap();
    assert_eq!(ttl, -1);
    let field: String = conn
        .hget(backend.fence_key(&hash_counter), "f")
        .await
        .unwrap();
    assert_eq!(field, "1");
    let exists: bool = conn.exists(backend.lease_key(&hash_counter)).await.unwrap();
    assert!(!exists, "nothing was granted next to a foreign counter");
    let text: String = conn.get(backend.fence_key(&text_counter)).await.unwrap();
    assert_eq!(text, "twelve");
    let value: String = conn.get(backend.lease_key(&no_expiry)).await.unwrap();
    assert_eq!(value, persisted);
}

/// A counter lost behind the backend's back (an eviction, `DEL`, `FLUSHDB` of this key) restarts
/// above every token issued before, not at 1.
#[tokio::test]
async fn a_deleted_counter_never_gives_a_lower_token() {
    let Some(backend) = backend().await else {
        return;
    };
    let mut conn = backend.connection();
    let key = LeaseKey::new("deleted-counter").unwrap();
    let mut highest = lease_redis::FencingToken::new(0);
    for _ in 0..3 {
        let r = request(&key, Duration::from_secs(5));
        let grant = granted(backend.acquire(&r).await.unwrap());
        assert!(grant.fencing > highest, "{} after {highest}", grant.fencing);
        highest = grant.fencing;
        let released = backend
            .release(&ReleaseRequest::new(key.clone(), r.holder))
            .await
            .unwrap();
        assert_eq!(released, ReleaseOutcome::Released);
        let _: () = conn.del(backend.fence_key(&key)).await.unwrap();
    }
    // And with both keys gone (a FLUSHDB, as far as this key is concerned).
    let _: () = conn
        .del(&[backend.lease_key(&key), backend.fence_key(&key)])
        .await
        .unwrap();
    let grant = granted(
        backend
            .acquire(&request(&key, Duration::from_secs(5)))
            .await
            .unwrap(),
    );
    assert!(grant.fencing > highest);
}

#[tokio::test]
async fn release_keeps_the_counter_and_publishes() {
    let Some(backend) = backend().await else {
        return;
    };
    let mut conn = backend.connection();
    let key = LeaseKey::new("publish").unwrap();
    let client = redis::Client::open(url().unwrap()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(backend.lease_key(&key)).await.unwrap();
    let r = request(&key, Duration::from_secs(5));
    let grant = granted(backend.acquire(&r).await.unwrap());
    backend
        .release(&ReleaseRequest::new(key.clone(), r.holder))
        .await
        .unwrap();
    let mut messages = pubsub.into_on_message();
    let message = tokio::time::timeout(Duration::from_secs(5), futures_next(&mut messages))
        .await
        .expect("the release published");
    assert_eq!(message.get_channel_name(), backend.lease_key(&key));
    let counter: u64 = conn.get(backend.fence_key(&key)).await.unwrap();
    assert_eq!(counter, grant.fencing.get());
    let ttl: i64 = conn.pttl(backend.fence_key(&key)).await.unwrap();
    assert_eq!(ttl, -1, "the counter never expires");
    let record = backend.inspect(&key).await.unwrap().unwrap();
    assert_eq!(record.state, RecordState::Free);
    assert_eq!(record.fencing, grant.fencing);
}

async fn futures_next<S: futures_util::Stream + Unpin>(s: &mut S) -> S::Item {
    use futures_util::StreamExt;
    s.next().await.expect("stream ended")
}

/// A waiter wakes on the release's publish, long before its poll interval.
#[tokio::test]
async fn a_waiter_wakes_on_release_not_on_its_poll() {
    let Some(backend) = backend().await else {
        return;
    };
    let slow_poll = Duration::from_secs(20);
    let locker = Locker::builder(backend.clone())
        .ttl(Duration::from_secs(30))
        .retry(
            RetryPolicy::default()
                .with_initial_delay(slow_poll)
                .with_max_delay(slow_poll),
        )
        .build()
        .unwrap();
    let holder = locker.try_acquire("handoff").await.unwrap().expect("free");
    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move {
            let lease = locker
                .acquire_timeout("handoff", Duration::from_secs(60))
                .await
                .unwrap();
            (Instant::now(), lease)
        })
    };
    // Let the waiter see the key held and subscribe.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let (granted_at, lease) = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("woken before the 20 s poll")
        .unwrap();
    assert!(granted_at.duration_since(released_at) < Duration::from_secs(5));
    lease.release().await.unwrap();
}

#[tokio::test]
async fn renewals_of_many_leases_are_one_round_trip() {
    let Some(backend) = backend().await else {
        return;
    };
    let ttl = Duration::from_secs(5);
    let mut requests = Vec::new();
    for i in 0..50 {
        let key = LeaseKey::new(format!("batch-{i}")).unwrap();
        let r = request(&key, ttl);
        granted(backend.acquire(&r).await.unwrap());
        requests.push(RenewRequest::new(key, r.holder, Duration::from_secs(7)));
    }
    // A stale holder in the batch: NotHeld, and it does not disturb the others.
    requests.push(RenewRequest::new(
        requests[0].key.clone(),
        HolderToken::generate(),
        ttl,
    ));
    let before = backend.round_trips();
    let results = backend.renew_many(&requests).await;
    assert_eq!(backend.round_trips() - before, 1);
    for result in &results[..50] {
        assert_eq!(
            *result.as_ref().unwrap(),
            RenewOutcome::Renewed(Duration::from_secs(7))
        );
    }
    assert_eq!(*results[50].as_ref().unwrap(), RenewOutcome::NotHeld);
    let record = backend.inspect(&requests[3].key).await.unwrap().unwrap();
    assert!(record.expires_in.unwrap() > Duration::from_secs(5));
    assert_eq!(record.ttl, Some(Duration::from_secs(7)));
    // Split into several calls past max_batch.
    let small = RedisBackend::connect_with(
        &url().unwrap(),
        RedisOptions::default()
            .with_prefix(backend.prefix().clone())
            .with_max_batch(20),
    )
    .await
    .unwrap();
    small.renew_many(&requests[..1]).await;
    // One call per hash slot when asked (for servers that refuse multi-slot scripts).
    let by_slot = RedisBackend::connect_with(
        &url().unwrap(),
        RedisOptions::default()
            .with_prefix(backend.prefix().clone())
            .with_batch_by_slot(true),
    )
    .await
    .unwrap();
    by_slot.renew_many(&requests[..1]).await;
    let slots: std::collections::BTreeSet<u16> = requests[..50]
        .iter()
        .map(|r| lease_redis::hash_slot(&r.key))
        .collect();
    let before = by_slot.round_trips();
    let results = by_slot.renew_many(&requests[..50]).await;
    assert_eq!(by_slot.round_trips() - before, slots.len() as u64);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(RenewOutcome::Renewed(_))))
    );
    let before = small.round_trips();
    let results = small.renew_many(&requests[..50]).await;
    assert_eq!(
        small.round_trips() - before,
        3,
        "50 leases in batches of 20"
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(RenewOutcome::Renewed(_))))
    );
}

#[tokio::test]
async fn list_finds_held_and_free_keys_under_a_prefix() {
    let Some(backend) = backend().await else {
        return;
    };
    let held = request(&LeaseKey::new("jobs/a").unwrap(), Duration::from_secs(5));
    granted(backend.acquire(&held).await.unwrap());
    let freed = request(&LeaseKey::new("jobs/b").unwrap(), Duration::from_secs(5));
    granted(backend.acquire(&freed).await.unwrap());
    backend
        .release(&ReleaseRequest::new(freed.key.clone(), freed.holder))
        .await
        .unwrap();
    granted(
        backend
            .acquire(&request(
                &LeaseKey::new("other").unwrap(),
                Duration::from_secs(5),
            ))
            .await
            .unwrap(),
    );
    let records = backend.list("jobs/").await.unwrap();
    let names: Vec<_> = records.iter().map(|r| (r.key.as_str(), r.state)).collect();
    assert_eq!(
        names,
        [("jobs/a", RecordState::Held), ("jobs/b", RecordState::Free)]
    );
    assert_eq!(backend.list("").await.unwrap().len(), 3);
}

#[tokio::test]
async fn debug_output_hides_the_password() {
    let Some(mut server) = OwnServer::start(&["--requirepass", "s3cret-pw"]).await else {
        return;
    };
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}/0", server.port());
    let backend = RedisBackend::connect(&url).await.unwrap();
    let debug = format!("{backend:?}");
    assert!(!debug.contains("s3cret-pw"), "{debug}");
    // A wrong password is fatal at once, and says nothing of the password.
    let wrong = format!("redis://:not-it@127.0.0.1:{}/0", server.port());
    let err = RedisBackend::connect(&wrong).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    assert!(!err.to_string().contains("not-it"), "{err}");
    // No password at all: NOAUTH on the first call, fatal.
    let anonymous = RedisBackend::connect(&server.url()).await;
    match anonymous {
        Err(err) => assert_eq!(err.kind(), ErrorKind::Fatal, "{err}"),
        Ok(backend) => {
            let err = backend
                .acquire(&request(
                    &LeaseKey::new("k").unwrap(),
                    Duration::from_secs(1),
                ))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), BackendErrorKind::Fatal, "{err}");
        }
    }
    server.kill().await;
}

/// A restart without persistence loses every key, the counter too; the next token is still
/// higher than every token issued before, and the scripts are loaded again (`NOSCRIPT`).
#[tokio::test]
async fn a_restart_without_persistence_never_gives_a_lower_token() {
    let Some(mut server) = OwnServer::start(&[]).await else {
        return;
    };
    let backend = backend_on(&server.url(), options()).await;
    let key = LeaseKey::new("restarted").unwrap();
    let mut highest = lease_redis::FencingToken::new(0);
    for _ in 0..5 {
        let r = request(&key, Duration::from_secs(5));
        let grant = granted(backend.acquire(&r).await.unwrap());
        assert!(grant.fencing > highest);
        highest = grant.fencing;
        backend
            .release(&ReleaseRequest::new(key.clone(), r.holder))
            .await
            .unwrap();
    }
    server.restart().await;
    // The first call after the restart may meet the dead connection (transient); the locker
    // retries it.
    let locker = Locker::new(backend.clone());
    let lease = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match locker.try_acquire(key.as_str()).await {
                Ok(Some(lease)) => return lease,
                Ok(None) => panic!("nobody holds the key after the restart"),
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("acquired after the restart");
    assert!(
        lease.fencing_token() > highest,
        "token {} after a restart, {highest} before",
        lease.fencing_token()
    );
    lease.release().await.unwrap();
}

/// With an append-only file fsynced on every write, a crash (SIGKILL) keeps the grant in force
/// with its token, and the counter: nobody else is granted the key after the restart.
#[tokio::test]
async fn a_crash_with_appendfsync_always_keeps_the_lease_and_its_token() {
    let Some(mut server) =
        OwnServer::start(&["--appendonly", "yes", "--appendfsync", "always"]).await
    else {
        return;
    };
    let backend = backend_on(&server.url(), options()).await;
    let key = LeaseKey::new("durable").unwrap();
    let r = request(&key, Duration::from_secs(60));
    let grant = granted(backend.acquire(&r).await.unwrap());
    server.restart().await;
    let record = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match backend.inspect(&key).await {
                Ok(record) => return record,
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the restarted server answers");
    let record = record.expect("the lease survived the crash");
    assert!(record.is_held_by(&r.holder), "{record:?}");
    assert_eq!(record.fencing, grant.fencing);
    let other = backend
        .acquire(&request(&key, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(matches!(other, AcquireOutcome::Held(_)), "{other:?}");
    backend
        .release(&ReleaseRequest::new(key.clone(), r.holder))
        .await
        .unwrap();
    let next = granted(
        backend
            .acquire(&request(&key, Duration::from_secs(5)))
            .await
            .unwrap(),
    );
    assert_eq!(
        next.fencing.get(),
        grant.fencing.get() + 1,
        "the counter survived as it was"
    );
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded_once() {
    let Some(server) = OwnServer::start(&[]).await else {
        return;
    };
    let backend = backend_on(&server.url(), options()).await;
    let key = LeaseKey::new("noscript").unwrap();
    let r = request(&key, Duration::from_secs(5));
    granted(backend.acquire(&r).await.unwrap());
    let mut conn = backend.connection();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = backend.round_trips();
    let renewed = backend
        .renew(&RenewRequest::new(
            key.clone(),
            r.holder,
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert_eq!(renewed, RenewOutcome::Renewed(Duration::from_secs(5)));
    assert_eq!(
        backend.round_trips() - before,
        3,
        "EVALSHA, SCRIPT LOAD, EVALSHA"
    );
    let before = backend.round_trips();
    backend
        .renew(&RenewRequest::new(key, r.holder, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(backend.round_trips() - before, 1, "loaded now");
}

/// A replica refuses writes with READONLY (as a demoted primary does in a failover): transient,
/// so the protocol retries until the deadline instead of losing the lease at once.
#[tokio::test]
async fn a_read_only_replica_is_transient() {
    let Some(server) = OwnServer::start(&[]).await else {
        return;
    };
    let backend = backend_on(&server.url(), options()).await;
    let mut conn = backend.connection();
    // Follow a primary that does not exist: the server stays a read-only replica.
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = backend
        .acquire(&request(
            &LeaseKey::new("k").unwrap(),
            Duration::from_secs(1),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Transient, "{err}");
}

#[test]
fn hostile_prefixes_are_typed_errors() {
    for bad in ["a{b", "x}", "*", "has space", "q?"] {
        let err = KeyPrefix::new(bad).unwrap_err();
        let err: lease_redis::Error = err.into();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
    // Keys cannot carry braces either, so the hash tag is always exactly the key.
    assert!(LeaseKey::new("a{b}").is_err());
}
