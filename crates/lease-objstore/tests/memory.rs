//! object_store's `InMemory` store: the whole conformance kit, the race / takeover /
//! garbage checks, URL parsing, and the stores that cannot hold leases.

mod common;

use std::sync::Arc;

use common::{Factory, TTL};
use futures_util::stream::BoxStream;
use lease_objstore::conformance::Harness;
use lease_objstore::object_store::memory::InMemory;
use lease_objstore::object_store::path::Path;
use lease_objstore::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use lease_objstore::{BuildError, ErrorKind, Locker, ObjectStoreBackend};
use object_store::local::LocalFileSystem;

fn shared() -> (Arc<dyn ObjectStore>, Factory) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let for_factory = Arc::clone(&store);
    let factory: Factory =
        Arc::new(move || ObjectStoreBackend::new(Arc::clone(&for_factory), "leases"));
    (store, factory)
}

async fn harness() -> Option<Harness> {
    let (_, make) = shared();
    let backend = make();
    let writer = common::outside_writer(&backend);
    Some(
        // A second backend on the same store (its own observations): a second process.
        Harness::new(backend)
            .with_peer(make())
            .with_ttl(TTL)
            .with_outside_writer(writer),
    )
}

lease_objstore::conformance_tests!(harness);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_racers_on_a_fresh_key_one_grant() {
    common::sixteen_racers_on_a_fresh_key_one_grant(&shared().1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_is_taken_over_between_the_rule_and_one_poll_later() {
    common::killed_holder_is_taken_over_between_the_rule_and_one_poll_later(&shared().1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_objects_are_corrupt_records_and_stay_intact() {
    let (store, make) = shared();
    common::garbage_objects_are_corrupt_records_and_stay_intact(&make, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_replaces_garbage_with_a_counter_above_the_clock() {
    let (store, make) = shared();
    common::break_replaces_garbage_with_a_counter_above_the_clock(&make, store).await;
}

#[tokio::test]
async fn file_urls_are_refused_with_the_reason() {
    let err = ObjectStoreBackend::from_url("file:///tmp/leases", [("k", "v"); 0]).unwrap_err();
    assert!(matches!(err, BuildError::Unsupported(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("PutMode::Update") && text.contains("sqlite://"),
        "{text}"
    );
}

#[tokio::test]
async fn a_local_file_store_passed_directly_grants_nothing() {
    let dir = std::env::temp_dir().join(common::random_name("lease-objstore-local"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(LocalFileSystem::new_with_prefix(&dir).unwrap());
    let locker = Locker::builder(ObjectStoreBackend::new(store, "leases"))
        .ttl(TTL)
        .build()
        .unwrap();
    let err = locker.try_acquire("job").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    assert!(err.to_string().contains("conditional"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 8 of issue 19: a `LocalFileSystem` inside another store (here a `PrefixStore`) is found by
/// what it does, not by its name: no lease is granted and nothing is written under the prefix.
#[tokio::test]
async fn a_wrapped_local_file_store_grants_nothing() {
    let dir = std::env::temp_dir().join(common::random_name("lease-objstore-wrapped"));
    std::fs::create_dir_all(&dir).unwrap();
    let local = LocalFileSystem::new_with_prefix(&dir).unwrap();
    let store = Arc::new(object_store::prefix::PrefixStore::new(local, "sub"));
    let locker = Locker::builder(ObjectStoreBackend::new(store, "leases"))
        .ttl(TTL)
        .build()
        .unwrap();
    let err = locker.try_acquire("job").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    assert!(err.to_string().contains("conditional"), "{err}");
    assert!(
        !dir.join("sub/leases/job").exists(),
        "a lease object was written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 8 of issue 19: a store that ignores `If-None-Match` / `If-Match` would grant a key to every
/// contender; the backend finds out before its first grant and refuses with a fatal error.
#[tokio::test]
async fn a_store_that_ignores_conditions_grants_nothing() {
    let store = Arc::new(ListingRecorder {
        ignore_conditions: true,
        ..ListingRecorder::default()
    });
    let backend = ObjectStoreBackend::new(Arc::clone(&store) as Arc<dyn ObjectStore>, "leases");
    let locker = Locker::builder(backend).ttl(TTL).build().unwrap();
    for _ in 0..2 {
        let err = locker.try_acquire("job").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
        assert!(
            err.to_string().contains("ignored a conditional write"),
            "{err}"
        );
    }
    let lease_object = store.inner.head(&Path::from("leases/job")).await;
    assert!(
        lease_object.is_err(),
        "a lease object was written: {lease_object:?}"
    );
    // The probe object is cleaned up.
    let left: Vec<_> = futures_util::StreamExt::collect::<Vec<_>>(store.inner.list(None)).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn bad_urls_and_options_are_typed_errors_without_secrets() {
    let err = ObjectStoreBackend::from_url("not a url", [("k", "v"); 0]).unwrap_err();
    assert!(matches!(err, BuildError::InvalidUrl { .. }), "{err:?}");
    let err = ObjectStoreBackend::from_url("https://example.com/x?sig=SECRET", [("k", "v"); 0])
        .unwrap_err();
    assert!(matches!(err, BuildError::Unsupported(_)), "{err:?}");
    assert!(!err.to_string().contains("SECRET"), "{err}");
    let err = ObjectStoreBackend::from_url("memory:///", [("aws_secret_access_key", "SECRET")])
        .unwrap_err();
    assert!(matches!(err, BuildError::UnknownOption { .. }), "{err:?}");
    assert!(!err.to_string().contains("SECRET"), "{err}");
    let backend = ObjectStoreBackend::from_url("memory:///some/prefix", [("k", "v"); 0]).unwrap();
    assert_eq!(backend.leases().prefix().as_ref(), "some/prefix");
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn unknown_s3_option_is_refused_and_secrets_stay_out_of_debug() {
    let err =
        ObjectStoreBackend::from_url("s3://bucket/p", [("aws_no_such_thing", "x")]).unwrap_err();
    assert!(
        matches!(err, BuildError::UnknownOption { store: "s3", .. }),
        "{err:?}"
    );
    let backend = ObjectStoreBackend::from_url(
        "s3://bucket/p",
        [
            ("aws_access_key_id", "AKIDEXAMPLE"),
            ("aws_secret_access_key", "TOPSECRETVALUE"),
            ("aws_region", "us-east-1"),
        ],
    )
    .unwrap();
    let shown = format!("{backend:?}");
    assert!(!shown.contains("TOPSECRETVALUE"), "{shown}");
}

/// `InMemory` that records the prefix of every listing it is asked for, and (with `slow_reads`)
/// how many reads were in flight at once.
#[derive(Debug, Default)]
struct ListingRecorder {
    inner: InMemory,
    asked: std::sync::Mutex<Vec<Option<Path>>>,
    slow_reads: std::sync::atomic::AtomicBool,
    reading: std::sync::atomic::AtomicUsize,
    most_reading: std::sync::atomic::AtomicUsize,
    /// Writes every put unconditionally, as a store that ignores If-None-Match / If-Match would.
    ignore_conditions: bool,
}

impl std::fmt::Display for ListingRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ListingRecorder({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for ListingRecorder {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.ignore_conditions {
            opts.mode = PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.slow_reads.load(SeqCst) {
            return self.inner.get_opts(location, options).await;
        }
        let now = self.reading.fetch_add(1, SeqCst) + 1;
        self.most_reading.fetch_max(now, SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        self.reading.fetch_sub(1, SeqCst);
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.asked.lock().unwrap().push(prefix.cloned());
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_asks_the_store_only_for_the_prefix_directory() {
    let store = Arc::new(ListingRecorder::default());
    let backend = ObjectStoreBackend::new(Arc::clone(&store) as Arc<dyn ObjectStore>, "leases");
    let locker = Locker::builder(backend).ttl(TTL).build().unwrap();
    let mut held = Vec::new();
    for key in ["jobs/nightly", "jobs/hourly", "jobs2/x", "other/y"] {
        held.push(locker.acquire(key).await.unwrap());
    }
    // (prefix asked by the caller, directory the store is asked to list, keys found)
    let cases: [(&str, &str, &[&str]); 5] = [
        ("jobs/", "leases/jobs", &["jobs/hourly", "jobs/nightly"]),
        ("jobs/n", "leases/jobs", &["jobs/nightly"]),
        // Not a whole segment: the store lists the parent and the key is matched as a string.
        (
            "jobs",
            "leases",
            &["jobs/hourly", "jobs/nightly", "jobs2/x"],
        ),
        (
            "",
            "leases",
            &["jobs/hourly", "jobs/nightly", "jobs2/x", "other/y"],
        ),
        ("none/", "leases/none", &[]),
    ];
    for (prefix, directory, keys) in cases {
        store.asked.lock().unwrap().clear();
        let mut found: Vec<String> = locker
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.key.as_str().to_owned())
            .collect();
        found.sort();
        assert_eq!(found, keys, "{prefix:?}");
        assert_eq!(
            *store.asked.lock().unwrap(),
            [Some(Path::from(directory))],
            "{prefix:?}"
        );
    }
    for lease in held {
        lease.release().await.unwrap();
    }
}

/// A semaphore lists its slots on every acquire: the objects of a listing are read at once, not
/// one round trip after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_reads_the_objects_concurrently() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = Arc::new(ListingRecorder::default());
    let backend = ObjectStoreBackend::new(Arc::clone(&store) as Arc<dyn ObjectStore>, "leases");
    let locker = Locker::builder(backend).ttl(TTL).build().unwrap();
    let mut held = Vec::new();
    for i in 0..8 {
        held.push(locker.acquire(format!("pool/permit-{i}")).await.unwrap());
    }
    store.slow_reads.store(true, SeqCst);
    let records = locker.list("pool/").await.unwrap();
    store.slow_reads.store(false, SeqCst);
    assert_eq!(records.len(), 8);
    assert!(records.iter().all(|r| r.is_held()));
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "still sorted by key");
    assert_eq!(
        store.most_reading.load(SeqCst),
        8,
        "all 8 reads in flight at once"
    );
    for lease in held {
        lease.release().await.unwrap();
    }
}

// FencedStore (src/fenced_store.rs) on this store: tests/common/fenced.rs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_refuses_a_paused_holder_after_its_successor_wrote() {
    let store = Arc::new(InMemory::new()) as Arc<dyn ObjectStore>;
    common::fenced::paused_holder_is_refused_after_its_successor_wrote(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_sixteen_holders_leave_only_increasing_tokens() {
    let store = Arc::new(InMemory::new()) as Arc<dyn ObjectStore>;
    common::fenced::sixteen_holders_in_succession_leave_only_increasing_tokens(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_rereads_and_redecides_after_a_concurrent_raw_writer() {
    let store = Arc::new(InMemory::new()) as Arc<dyn ObjectStore>;
    common::fenced::concurrent_raw_writer_is_reread_and_redecided(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_refuses_what_cannot_be_fenced() {
    let store = Arc::new(InMemory::new()) as Arc<dyn ObjectStore>;
    common::fenced::what_cannot_be_fenced_is_refused(store).await;
}
