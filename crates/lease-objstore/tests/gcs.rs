//! Against fake-gcs-server (`LEASE_TEST_GCS_ENDPOINT`): what the emulator allows.
//!
//! object_store's GCS store writes through the XML API (`PUT /BUCKET/OBJECT` with
//! `x-goog-if-generation-match`). fake-gcs-server does not honour that precondition on those
//! requests (it honours preconditions on its JSON-API multipart uploads, which object_store does
//! not send), so the conformance kit cannot run here: a lease store whose conditional writes are
//! ignored would let two holders in. This test pins that gap — it fails the day the emulator (or
//! object_store) changes, which is the day the kit should run on this row — and checks the rest
//! of the path that does work: URL parsing, configuration, and the requests reaching the server.

use std::sync::Arc;

use lease_objstore::conformance::require_env;
use lease_objstore::object_store::gcp::GoogleCloudStorageBuilder;
use lease_objstore::object_store::path::Path;
use lease_objstore::object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use lease_objstore::{ErrorKind, Locker, ObjectStoreBackend};

fn random_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &lease_objstore::HolderToken::generate().to_string()[..12]
    )
}

#[tokio::test]
async fn fake_gcs_server_does_not_honour_object_stores_create_precondition() {
    let Some(endpoint) = require_env("LEASE_TEST_GCS_ENDPOINT") else {
        return;
    };
    let bucket = random_name("objstore");
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/storage/v1/b?project=test"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"name":"{bucket}"}}"#))
        .send()
        .await
        .expect("fake-gcs-server answers");
    assert!(
        response.status().is_success(),
        "create bucket: {}",
        response.status()
    );

    let store: Arc<dyn ObjectStore> = Arc::new(
        GoogleCloudStorageBuilder::new()
            .with_bucket_name(&bucket)
            .with_config("google_base_url".parse().unwrap(), &endpoint)
            .with_config("google_skip_signature".parse().unwrap(), "true")
            .build()
            .unwrap(),
    );
    let path = Path::from("k");
    let create = || PutOptions::from(PutMode::Create);
    let first = store
        .put_opts(&path, PutPayload::from_static(b"1"), create())
        .await;
    let second = store
        .put_opts(&path, PutPayload::from_static(b"2"), create())
        .await;
    // A store that honoured `x-goog-if-generation-match: 0` would accept the first create and
    // refuse the second with AlreadyExists.
    let honoured = first.is_ok()
        && matches!(
            second,
            Err(lease_objstore::object_store::Error::AlreadyExists { .. })
        );
    assert!(
        !honoured,
        "fake-gcs-server now honours object_store's create precondition: run the conformance \
         kit on the objstore-gcs row (tests/s3.rs shows how) and update docs/backends/objstore.md"
    );
    eprintln!("fake-gcs-server answers: first create {first:?}; second create {second:?}");

    // Through the lease backend the gap must never become a double grant: the requests fail
    // or conflict, and the outcome is a typed error or a refusal, never a panic.
    let backend = ObjectStoreBackend::new(store, "leases");
    let locker = Locker::builder(backend).build().unwrap();
    match locker.try_acquire("job").await {
        Ok(_) => {}
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::Fatal | ErrorKind::Transient),
            "{e}"
        ),
    }
}
