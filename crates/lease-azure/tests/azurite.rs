//! Azurite: the conformance kit plus Azure-specific tests, against the endpoint named by
//! `LEASE_TEST_AZURITE_BLOB_URL` (key: `LEASE_TEST_AZURITE_ACCOUNT_KEY`, Azurite's published key
//! when unset). Skipped loudly when unset; failing when `LEASE_TEST_REQUIRE=1`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_azure::conformance::{
    CASES, FaultyBackend, Harness, Op, OutsideChange, OutsideWrite, OutsideWriter, require_env,
    run_case,
};
use lease_azure::{
    AcquireOutcome, AcquireRequest, AzureBlobBackend, AzureBlobBuilder, Backend, BackendErrorKind,
    Error, ErrorKind, FencingToken, HolderMetadata, HolderToken, LeaseKey, Locker, RecordState,
    ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};
use support::{Raw, random_name};

struct Server {
    url: String,
    key: String,
}

fn server() -> Option<Server> {
    let url = require_env("LEASE_TEST_AZURITE_BLOB_URL")?;
    let key = std::env::var("LEASE_TEST_AZURITE_ACCOUNT_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| lease_azure::AZURITE_ACCOUNT_KEY.to_owned());
    Some(Server { url, key })
}

fn backend_in(server: &Server, container: &str) -> AzureBlobBackend {
    AzureBlobBuilder::new()
        .with_account(lease_azure::AZURITE_ACCOUNT)
        .with_endpoint(&server.url)
        .with_access_key(&server.key)
        .with_container(container)
        .build()
        .expect("backend settings")
}

/// Every conformance case shares one container; the harness gives each run its own key prefix.
const CONFORMANCE_CONTAINER: &str = "lease-conformance";

async fn harness() -> Option<Harness> {
    let server = server()?;
    let raw = Arc::new(Raw::new(&server.url, &server.key));
    let backend = backend_in(&server, CONFORMANCE_CONTAINER);
    let prefix = backend.prefix().to_owned();
    // Another client on the lease blob: deletes it, or uploads over it (which wipes metadata).
    let writer = OutsideWriter::new(move |key, change| {
        let (raw, blob) = (Arc::clone(&raw), format!("{prefix}{key}"));
        async move {
            match change {
                OutsideChange::Delete => raw.delete_blob(CONFORMANCE_CONTAINER, &blob).await,
                _ => {
                    raw.put_blob(CONFORMANCE_CONTAINER, &blob, b"someone else's data", &[])
                        .await;
                }
            }
            Ok(OutsideWrite::Done)
        }
    });
    // A second instance on the same container: a second process.
    Some(
        Harness::new(backend)
            .with_peer(backend_in(&server, CONFORMANCE_CONTAINER))
            .with_outside_writer(writer),
    )
}

/// Every case of the kit, run concurrently in one test: Azure's 15 s minimum TTL makes the timing
/// cases wait tens of seconds each, so one case after another would cost minutes of CI time.
/// Each failure names its case.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_kit_passes() {
    let Some(harness) = harness().await else {
        return;
    };
    let started = Instant::now();
    let tasks: Vec<_> = CASES
        .iter()
        .map(|case| {
            let harness = harness.clone();
            let name = case.name;
            tokio::spawn(async move {
                let result = run_case(name, &harness).await;
                println!(
                    "{name}: {} after {:?}",
                    if result.is_ok() { "ok" } else { "FAILED" },
                    started.elapsed()
                );
                (name, result)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for task in tasks {
        match task.await {
            Ok((_, Ok(()))) => {}
            Ok((_, Err(failure))) => failures.push(failure.to_string()),
            Err(panic) => failures.push(format!("a case panicked: {panic}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

fn request(key: &LeaseKey, holder: HolderToken, ttl: Duration) -> AcquireRequest {
    AcquireRequest::new(
        key.clone(),
        holder,
        ttl,
        HolderMetadata::from_stored_lossy("test"),
    )
}

fn key(name: &str) -> LeaseKey {
    LeaseKey::new(format!("{name}-{}", random_name())).unwrap()
}

async fn acquire(backend: &AzureBlobBackend, key: &LeaseKey, holder: HolderToken) -> FencingToken {
    match backend
        .acquire(&request(key, holder, Duration::from_secs(15)))
        .await
        .expect("acquire")
    {
        AcquireOutcome::Acquired(grant) => grant.fencing,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_account_key_is_a_fatal_error_within_two_seconds() {
    let Some(server) = server() else { return };
    // A valid base64 key that is not the account's.
    let wrong = Server {
        url: server.url.clone(),
        key: "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==".into(),
    };
    let locker = Locker::new(backend_in(&wrong, "lease-wrong-key"));
    let started = Instant::now();
    let err = locker.acquire(&key("k")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("403"), "{text}");
    assert!(!text.contains("d3Jvbmc"), "the key leaked: {text}");
}

#[tokio::test]
async fn a_wrong_sas_is_fatal_and_its_signature_never_shown() {
    let Some(server) = server() else { return };
    let backend = AzureBlobBuilder::new()
        .with_account(lease_azure::AZURITE_ACCOUNT)
        .with_endpoint(&server.url)
        .with_sas_token(
            "sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2099-01-01T00:00:00Z&sig=TOPSECRETSIGNATURE",
        )
        .with_container("lease-wrong-sas")
        .build()
        .unwrap();
    assert!(!format!("{backend:?}").contains("TOPSECRET"));
    let err = Locker::new(backend).acquire(&key("k")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("TOPSECRET"), "the SAS leaked: {text}");
}

#[tokio::test]
async fn ttl_outside_azure_range_is_invalid_input_before_any_request() {
    // Nothing listens on port 9: any request would fail as a transient connection error.
    let nowhere = Server {
        url: "http://127.0.0.1:9/devstoreaccount1".into(),
        key: lease_azure::AZURITE_ACCOUNT_KEY.into(),
    };
    let backend = Arc::new(backend_in(&nowhere, "lease-nowhere"));
    for ttl in [Duration::from_secs(10), Duration::from_secs(90)] {
        let err = Locker::builder_shared(backend.clone())
            .ttl(ttl)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "ttl", "{err}");
        // The backend refuses it too, at once, without sending anything.
        let started = Instant::now();
        let err = backend
            .acquire(&request(&key("k"), HolderToken::generate(), ttl))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Fatal, "{err}");
        assert!(err.message().contains("15 s..=60 s"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}

#[tokio::test]
async fn missing_container_is_created() {
    let Some(server) = server() else { return };
    let container = format!("lease-new-{}", random_name());
    let raw = Raw::new(&server.url, &server.key);
    assert_eq!(raw.container_status(&container).await, 404);
    let locker = Locker::new(backend_in(&server, &container));
    let lease = locker.try_acquire("first").await.unwrap().expect("free");
    assert!(lease.is_held());
    assert_eq!(raw.container_status(&container).await, 200);
    lease.release().await.unwrap();
}

#[tokio::test]
async fn foreign_content_and_metadata_are_kept() {
    let Some(server) = server() else { return };
    let container = "lease-foreign";
    let raw = Raw::new(&server.url, &server.key);
    raw.create_container(container).await;
    let key = key("report");
    raw.put_blob(
        container,
        key.as_str(),
        b"quarterly numbers",
        &[("department", "finance")],
    )
    .await;
    // Creating the lease blob never overwrites a blob that exists.
    let backend = backend_in(&server, container);
    backend.ensure_blob(&key).await.unwrap();
    let locker = Locker::new(backend);
    let mut tokens = Vec::new();
    for _ in 1..=2 {
        let lease = locker.try_acquire(&key).await.unwrap().expect("free");
        tokens.push(lease.fencing_token().get());
        lease.release().await.unwrap();
    }
    assert_eq!(tokens[1], tokens[0] + 1);
    let (body, metadata) = raw.get_blob(container, key.as_str()).await;
    assert_eq!(body, b"quarterly numbers");
    assert_eq!(
        metadata.get("department").map(String::as_str),
        Some("finance")
    );
    assert_eq!(
        metadata.get("leasefencing").map(String::as_str),
        Some(tokens[1].to_string().as_str())
    );
}

#[tokio::test]
async fn corrupt_fencing_metadata_is_a_typed_error_and_the_lease_is_given_back() {
    let Some(server) = server() else { return };
    let container = "lease-foreign";
    let raw = Raw::new(&server.url, &server.key);
    raw.create_container(container).await;
    let key = key("corrupt");
    raw.put_blob(
        container,
        key.as_str(),
        b"data",
        &[("leaseformat", "1"), ("leasefencing", "many")],
    )
    .await;
    let backend = backend_in(&server, container);
    let err = backend
        .acquire(&request(
            &key,
            HolderToken::generate(),
            Duration::from_secs(15),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::CorruptRecord, "{err}");
    assert!(err.message().contains("leasefencing"), "{err}");
    // Not left leased: someone else can lease it at once.
    assert_eq!(
        raw.acquire_lease(container, key.as_str(), None).await.0,
        201
    );
    let err = Locker::new(backend).inspect(&key).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptRecord);
}

/// Items 4 and 5 of issue 19: the fencing write re-sends someone else's metadata, so it is signed
/// with names Azure orders unlike bytes (`i_` before `i0`, `foo_bar` before `foo2_bar`) and a
/// value with a run of spaces; a byte-order signature is refused with 403.
#[tokio::test]
async fn foreign_metadata_that_sorts_unlike_bytes_is_signed_as_azure_does() {
    let Some(server) = server() else { return };
    let container = "lease-foreign";
    let raw = Raw::new(&server.url, &server.key);
    raw.create_container(container).await;
    let key = key("sorting");
    let foreign = [
        ("i0", "digit"),
        ("i_", "underscore"),
        ("foo_bar", "one"),
        ("foo2_bar", "two"),
        ("note", "annual  report"),
    ];
    raw.put_blob(container, key.as_str(), b"data", &foreign)
        .await;
    let locker = Locker::new(backend_in(&server, container));
    for _ in 0..2 {
        let lease = locker
            .try_acquire(&key)
            .await
            .expect("signed as Azure signs")
            .expect("free");
        lease.release().await.unwrap();
    }
    let (body, metadata) = raw.get_blob(container, key.as_str()).await;
    assert_eq!(body, b"data");
    for (name, value) in foreign {
        assert_eq!(
            metadata.get(name).map(String::as_str),
            Some(value),
            "{name}"
        );
    }
}

/// Item 10 of issue 19: an explicit break recovers a blob whose fencing record cannot be read (as
/// the object store's break does): our entries are cleared, someone else's kept, and the next
/// grant's token starts from the clock.
#[tokio::test]
async fn break_recovers_an_unreadable_fencing_record() {
    let Some(server) = server() else { return };
    let container = "lease-foreign";
    let raw = Raw::new(&server.url, &server.key);
    raw.create_container(container).await;
    let key = key("corrupt-break");
    raw.put_blob(
        container,
        key.as_str(),
        b"data",
        &[
            ("leaseformat", "1"),
            ("leasefencing", "many"),
            ("department", "finance"),
        ],
    )
    .await;
    let backend = Arc::new(backend_in(&server, container));
    let locker = Locker::from_shared(backend.clone());
    let err = locker.try_acquire(&key).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CorruptRecord, "{err}");
    let floor = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let before = backend
        .break_lease(&key)
        .await
        .unwrap()
        .expect("the blob exists");
    assert_eq!(before.state, RecordState::Free);
    let lease = locker
        .try_acquire(&key)
        .await
        .unwrap()
        .expect("free after the break");
    assert!(
        lease.fencing_token().get() >= floor,
        "{} restarted below the clock ({floor} µs)",
        lease.fencing_token()
    );
    lease.release().await.unwrap();
    let (body, metadata) = raw.get_blob(container, key.as_str()).await;
    assert_eq!(body, b"data");
    assert_eq!(
        metadata.get("department").map(String::as_str),
        Some("finance")
    );
}

#[tokio::test]
async fn retried_acquire_after_a_lost_response_is_the_same_lease_with_one_bump() {
    let Some(server) = server() else { return };
    let backend = Arc::new(backend_in(&server, "lease-retries"));
    let key = key("lost");
    // Direct: the same holder token twice is one grant and one bump.
    let holder = HolderToken::generate();
    let first = acquire(&backend, &key, holder).await;
    let again = acquire(&backend, &key, holder).await;
    assert_eq!(first, again);
    let record = backend.inspect(&key).await.unwrap().unwrap();
    assert!(record.is_held_by(&holder));
    assert_eq!(record.fencing, first);
    backend
        .release(&ReleaseRequest::new(key.clone(), holder))
        .await
        .unwrap();

    // Through the locker: the first response is lost and so is the read-back, so the locker
    // retries acquire with the same holder token; it must find its own bump.
    let faulty = FaultyBackend::new(backend.clone());
    faulty.lose_next_response(Op::Acquire, 1);
    faulty.fail_next(Op::Inspect, 1);
    let locker = Locker::new(faulty.clone());
    let lease = tokio::time::timeout(Duration::from_secs(30), locker.acquire(&key))
        .await
        .expect("resolved in time")
        .unwrap();
    assert!(
        faulty.calls(Op::Acquire) >= 2,
        "the acquire was not retried"
    );
    assert_eq!(
        lease.fencing_token().get(),
        first.get() + 1,
        "bumped more than once"
    );
    let record = backend.inspect(&key).await.unwrap().unwrap();
    assert!(record.is_held_by(&lease.holder_token()));
    assert_eq!(record.fencing, lease.fencing_token());
    lease.release().await.unwrap();
}

#[tokio::test]
async fn interop_with_another_client_on_the_same_blob() {
    let Some(server) = server() else { return };
    let container = "lease-interop";
    let raw = Raw::new(&server.url, &server.key);
    raw.create_container(container).await;
    let backend = Arc::new(backend_in(&server, container));
    let locker = Locker::from_shared(backend.clone());
    let key = key("shared");

    // Our lease first (creates the blob); the other client is refused.
    let ours = locker.try_acquire(&key).await.unwrap().expect("free");
    let first = ours.fencing_token();
    assert_eq!(
        raw.acquire_lease(container, key.as_str(), None).await.0,
        409
    );
    ours.release().await.unwrap();

    // The other client's lease blocks us with Error::Held.
    let (status, their_id) = raw.acquire_lease(container, key.as_str(), None).await;
    assert_eq!(status, 201);
    match locker.acquire_now(&key).await {
        Err(Error::Held { key: held, .. }) => assert_eq!(held, key),
        other => panic!("expected Held, got {other:?}"),
    }
    assert!(locker.try_acquire(&key).await.unwrap().is_none());
    // A record read while they hold it never names one of ours as the holder.
    let record = backend.inspect(&key).await.unwrap().unwrap();
    assert_eq!(record.state, RecordState::Held);
    assert_eq!(record.holder, None, "{record:?}");

    // Released elsewhere: we get it with a token above every earlier one.
    assert_eq!(
        raw.release_lease(container, key.as_str(), &their_id).await,
        200
    );
    let next = locker.try_acquire(&key).await.unwrap().expect("free again");
    assert_eq!(next.fencing_token().get(), first.get() + 1);
    next.release().await.unwrap();
}

#[tokio::test]
async fn renew_reports_the_duration_azure_actually_granted() {
    let Some(server) = server() else { return };
    let backend = backend_in(&server, "lease-renew");
    let key = key("granted");
    let holder = HolderToken::generate();
    let granted = match backend
        .acquire(&request(&key, holder, Duration::from_millis(20_700)))
        .await
        .unwrap()
    {
        AcquireOutcome::Acquired(grant) => grant.ttl,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        granted,
        Duration::from_secs(20),
        "Azure counts whole seconds"
    );
    // Azure renews to the acquired duration whatever the request says.
    let renewed = backend
        .renew(&RenewRequest::new(
            key.clone(),
            holder,
            Duration::from_secs(45),
        ))
        .await
        .unwrap();
    assert_eq!(renewed, RenewOutcome::Renewed(Duration::from_secs(20)));
    // Another instance (no memory of the acquire) reads it from the stored record.
    let other = backend_in(&server, "lease-renew");
    let renewed = other
        .renew(&RenewRequest::new(
            key.clone(),
            holder,
            Duration::from_secs(45),
        ))
        .await
        .unwrap();
    assert_eq!(renewed, RenewOutcome::Renewed(Duration::from_secs(20)));
    let released = other
        .release(&ReleaseRequest::new(key.clone(), holder))
        .await
        .unwrap();
    assert_eq!(released, ReleaseOutcome::Released);
    // After release, renew is refused.
    let renewed = backend
        .renew(&RenewRequest::new(
            key.clone(),
            holder,
            Duration::from_secs(20),
        ))
        .await
        .unwrap();
    assert_eq!(renewed, RenewOutcome::NotHeld);
}

#[tokio::test]
async fn list_reports_records_under_a_prefix_sorted() {
    let Some(server) = server() else { return };
    let backend = Arc::new(backend_in(&server, "lease-list"));
    let locker = Locker::from_shared(backend.clone());
    let base = format!("list-{}", random_name());
    let mut held = Vec::new();
    for name in ["b", "a", "c"] {
        held.push(
            locker
                .try_acquire(format!("{base}/{name}"))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let released = held.pop().unwrap();
    let released_token = released.fencing_token();
    released.release().await.unwrap();
    let records = locker.list(&format!("{base}/")).await.unwrap();
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{base}/a"),
            format!("{base}/b"),
            format!("{base}/c")
        ]
    );
    assert!(records[0].is_held() && records[1].is_held());
    assert_eq!(records[2].state, RecordState::Free);
    assert_eq!(records[2].fencing, released_token);
    assert!(locker.list("no-such-prefix/").await.unwrap().is_empty());
}

#[tokio::test]
async fn list_reports_an_unreadable_fencing_record_beside_the_readable_ones() {
    let Some(server) = server() else { return };
    let container = "lease-list-unreadable";
    let raw = Raw::new(&server.url, &server.key);
    raw.create_container(container).await;
    let base = format!("list-{}", random_name());
    let bad = format!("{base}/bad");
    raw.put_blob(
        container,
        &bad,
        b"data",
        &[("leaseformat", "1"), ("leasefencing", "many")],
    )
    .await;
    let locker = Locker::new(backend_in(&server, container));
    let good = locker
        .try_acquire(format!("{base}/good"))
        .await
        .unwrap()
        .unwrap();
    let records = locker
        .list(&format!("{base}/"))
        .await
        .expect("one unreadable blob must not fail the listing");
    let states: Vec<_> = records.iter().map(|r| (r.key.as_str(), r.state)).collect();
    assert_eq!(
        states,
        [
            (bad.as_str(), RecordState::Unreadable),
            (format!("{base}/good").as_str(), RecordState::Held),
        ]
    );
    let why = records[0].unreadable.as_deref().unwrap_or_default();
    assert!(why.contains("leasefencing"), "says what is wrong: {why}");
    assert!(records[0].holder.is_none());
    assert_eq!(records[1].fencing, good.fencing_token());
    // Listing wrote nothing: the blob is still unleased and anyone may lease it.
    assert_eq!(raw.acquire_lease(container, &bad, None).await.0, 201);
    good.release().await.unwrap();
}

#[tokio::test]
async fn keys_that_differ_only_in_dot_segments_are_different_blobs() {
    let Some(server) = server() else { return };
    let locker = Locker::new(backend_in(&server, "lease-names"));
    let base = format!("dots-{}", random_name());
    let plain = locker
        .try_acquire(format!("{base}/a/b"))
        .await
        .unwrap()
        .unwrap();
    let dotted = locker.try_acquire(format!("{base}/a/./b")).await.unwrap();
    assert!(dotted.is_some(), "a/./b and a/b mapped to the same blob");
    plain.release().await.unwrap();
}

/// Collects formatted log lines (every level) written on this thread.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn keys_and_sas_signatures_never_reach_the_logs() {
    let Some(server) = server() else { return };
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // A working account key: acquire, renew, release, all logged by the SDK and the locker.
    let locker = Locker::new(backend_in(&server, "lease-logs"));
    let lease = locker.try_acquire(&key("logged")).await.unwrap().unwrap();
    lease.release().await.unwrap();
    // A SAS (refused by Azurite: its signature is made up).
    let sas = AzureBlobBuilder::new()
        .with_account(lease_azure::AZURITE_ACCOUNT)
        .with_endpoint(&server.url)
        .with_sas_token(
            "sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2099-01-01T00:00:00Z&sig=TOPSECRETSIGNATURE",
        )
        .with_container("lease-logs")
        .build()
        .unwrap();
    let _ = Locker::new(sas).try_acquire(&key("logged")).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("Request"), "the SDK logged nothing: {text}");
    assert!(
        text.contains("acquire"),
        "the locker logged nothing: {text}"
    );
    assert!(!text.contains("TOPSECRET"), "a SAS signature was logged");
    assert!(
        !text.contains(&server.key[..16]),
        "the account key was logged"
    );
    assert!(
        !text.contains("SharedKey devstoreaccount1:"),
        "a request signature was logged"
    );
}
