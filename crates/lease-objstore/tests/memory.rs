//! object_store's `InMemory` store: the whole conformance kit, the race / takeover /
//! garbage checks, URL parsing, and the stores that cannot hold leases.

mod common;

use std::sync::Arc;

use common::{Factory, TTL};
use lease_objstore::conformance::Harness;
use lease_objstore::object_store::ObjectStore;
use lease_objstore::object_store::memory::InMemory;
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
    Some(Harness::new(make()).with_ttl(TTL))
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
