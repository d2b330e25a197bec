//! Helpers shared by the suites: store factories, and the issue's checks written once for every
//! store (16 racers, killed-holder takeover, garbage objects).
#![allow(dead_code, unreachable_pub)]

pub mod fenced;

use std::sync::Arc;
use std::time::Duration;

use lease_objstore::conformance::{OutsideChange, OutsideWrite, OutsideWriter};
use lease_objstore::object_store::path::Path;
use lease_objstore::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use lease_objstore::observed::ObservationRule;
use lease_objstore::{
    AcquireOutcome, AcquireRequest, Backend, ErrorKind, HolderMetadata, HolderToken, LeaseKey,
    Locker, ObjectStoreBackend, RecordState,
};
use tokio::time::{Instant, sleep};

/// A new backend instance ("a process") over the same store each call.
pub type Factory = Arc<dyn Fn() -> ObjectStoreBackend + Send + Sync>;

pub const TTL: Duration = Duration::from_secs(1);

pub fn random_name(prefix: &str) -> String {
    format!("{prefix}-{}", &HolderToken::generate().to_string()[..12])
}

/// Changes lease objects behind the backend's back, as a person or a lifecycle rule would: deletes
/// the object, or overwrites it (unconditionally) with bytes that are not a lease document.
pub fn outside_writer(backend: &ObjectStoreBackend) -> OutsideWriter {
    let leases = backend.leases().clone();
    OutsideWriter::new(move |key, change| {
        let (store, path) = (Arc::clone(leases.store()), leases.path(&key));
        async move {
            let done = match change {
                OutsideChange::Delete => store.delete(&path).await,
                _ => store
                    .put(&path, PutPayload::from_static(b"someone else's data"))
                    .await
                    .map(|_| ()),
            };
            done.map_err(|e| e.to_string())?;
            Ok(OutsideWrite::Done)
        }
    })
}

fn request(key: &LeaseKey, holder: HolderToken) -> AcquireRequest {
    AcquireRequest::new(
        key.clone(),
        holder,
        TTL,
        HolderMetadata::from_stored_lossy("test"),
    )
}

/// 16 contenders, each its own backend instance, race for a fresh key: exactly one is granted.
pub async fn sixteen_racers_on_a_fresh_key_one_grant(make: &Factory) {
    let key = LeaseKey::new(random_name("race")).unwrap();
    let mut racers = Vec::new();
    for _ in 0..16 {
        let backend = make();
        let key = key.clone();
        racers.push(tokio::spawn(async move {
            backend
                .acquire(&request(&key, HolderToken::generate()))
                .await
        }));
    }
    let mut grants = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(AcquireOutcome::Acquired(grant)) => grants.push(grant.fencing),
            Ok(_) => {}
            // A transient 409 from a racing conditional write is allowed; it grants nothing.
            Err(e) => assert!(e.is_transient(), "a racer failed: {e}"),
        }
    }
    assert_eq!(grants.len(), 1, "grants: {grants:?}");
}

/// A holder that stops renewing is taken over no earlier than the rule after the contender's
/// first read answered, and no later than the rule plus one poll (and one request) after it.
pub async fn killed_holder_is_taken_over_between_the_rule_and_one_poll_later(make: &Factory) {
    let key = LeaseKey::new(random_name("takeover")).unwrap();
    let holder_side = make();
    let first = match holder_side
        .acquire(&request(&key, HolderToken::generate()))
        .await
        .unwrap()
    {
        AcquireOutcome::Acquired(grant) => grant.fencing,
        other => panic!("fresh key: {other:?}"),
    };
    let holder_answered = Instant::now();
    drop(holder_side); // killed: no renewal, no release
    let contender = make();
    let rule = ObservationRule::default().takeover_after(TTL);
    let poll = Duration::from_millis(50);
    let me = HolderToken::generate();
    let mut first_held_answer = None;
    let (second, sent) = loop {
        let sent = Instant::now();
        match contender.acquire(&request(&key, me)).await.unwrap() {
            AcquireOutcome::Acquired(grant) => break (grant.fencing, sent),
            _ => {
                first_held_answer.get_or_insert_with(Instant::now);
            }
        }
        sleep(poll).await;
    };
    let granted = Instant::now();
    let first_held_answer = first_held_answer.expect("the first attempt found it held");
    assert!(
        granted - holder_answered >= rule,
        "taken over {:?} after the holder's grant; the rule needs {rule:?}",
        granted - holder_answered
    );
    // The winning attempt was sent within one poll (+ one attempt's round trips) of the rule.
    let slack = Duration::from_millis(500);
    assert!(
        sent <= first_held_answer + rule + poll + slack,
        "the takeover attempt was sent {:?} after the first read answered; expected at most \
         the rule {rule:?} + one poll {poll:?} (+ {slack:?} for round trips)",
        sent - first_held_answer
    );
    assert!(second > first, "{second} is not above {first}");
}

/// Objects that are not lease documents give CorruptRecord naming the object, through the
/// Locker's acquire and inspect, and stay byte-for-byte as they were.
pub async fn garbage_objects_are_corrupt_records_and_stay_intact(
    make: &Factory,
    store: Arc<dyn ObjectStore>,
) {
    let mut random = vec![0u8; 4096];
    getrandom_fill(&mut random);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random-bytes", random),
        (
            "other-json",
            br#"{"lock":"mine","expires":"tomorrow","fencing":1}"#.to_vec(),
        ),
        (
            "future-format",
            br#"{"format":"lease-objstore/9","fencing":3}"#.to_vec(),
        ),
        ("ten-mib", vec![b'x'; 10 * 1024 * 1024]),
    ];
    let backend = make();
    let mut garbage = Vec::new();
    for (name, bytes) in cases {
        let key = LeaseKey::new(random_name(name)).unwrap();
        garbage.push(key.clone());
        let path: Path = backend.leases().path(&key);
        store
            .put(&path, PutPayload::from(bytes.clone()))
            .await
            .unwrap();
        let locker = Locker::builder(make()).ttl(TTL).build().unwrap();
        for attempt in 0..2 {
            let err = locker.try_acquire(&key).await.unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::CorruptRecord,
                "{name} attempt {attempt}: {err}"
            );
            assert!(
                err.to_string().contains(path.as_ref()),
                "names the object: {err}"
            );
        }
        let err = locker.inspect(&key).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CorruptRecord, "{name}: {err}");
        let after = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert!(after.as_ref() == bytes.as_slice(), "{name} was changed");
    }
    // A listing reports each garbage object as unreadable, beside a readable lease, instead of
    // failing whole.
    let locker = Locker::builder(make()).ttl(TTL).build().unwrap();
    let good = locker
        .try_acquire(random_name("readable"))
        .await
        .unwrap()
        .unwrap();
    let listed = locker
        .list("")
        .await
        .expect("garbage objects must not fail the listing");
    assert!(
        listed.windows(2).all(|w| w[0].key < w[1].key),
        "not sorted by key"
    );
    for key in &garbage {
        let record = listed
            .iter()
            .find(|r| &r.key == key)
            .unwrap_or_else(|| panic!("{key} is not listed"));
        assert_eq!(record.state, RecordState::Unreadable, "{key}: {record:?}");
        assert!(record.holder.is_none());
        let why = record.unreadable.as_deref().unwrap_or_default();
        assert!(why.contains(key.as_str()), "names the object: {why}");
    }
    let record = listed
        .iter()
        .find(|r| &r.key == good.key())
        .expect("the readable lease is listed");
    assert!(record.is_held());
    assert_eq!(record.fencing, good.fencing_token());
    good.release().await.unwrap();
}

/// Break is the one operation that may overwrite an unreadable object; its counter restarts above
/// the clock in microseconds.
pub async fn break_replaces_garbage_with_a_counter_above_the_clock(
    make: &Factory,
    store: Arc<dyn ObjectStore>,
) {
    let backend = make();
    let key = LeaseKey::new(random_name("garbage-break")).unwrap();
    store
        .put(
            &backend.leases().path(&key),
            PutPayload::from_static(b"not json"),
        )
        .await
        .unwrap();
    let floor = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let record = backend.break_lease(&key).await.unwrap().unwrap();
    assert!(record.fencing.get() >= floor);
    let locker = Locker::builder(make()).ttl(TTL).build().unwrap();
    let lease = locker.try_acquire(&key).await.unwrap().unwrap();
    assert_eq!(lease.fencing_token().get(), record.fencing.get() + 1);
    lease.release().await.unwrap();
}

fn getrandom_fill(buf: &mut [u8]) {
    // 16 bytes of randomness at a time from holder tokens (no extra dependency).
    for chunk in buf.chunks_mut(16) {
        let bytes = HolderToken::generate().to_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}
