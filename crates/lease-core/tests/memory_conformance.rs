//! The whole conformance kit against `MemoryBackend`.

use std::time::Duration;

use lease_core::MemoryBackend;
use lease_core::conformance::Harness;

async fn harness() -> Option<Harness> {
    // Clones share the store: what two users of one in-process store see.
    let store = MemoryBackend::new();
    Some(
        Harness::new(store.clone())
            .with_peer(store)
            .with_ttl(Duration::from_millis(400)),
    )
}

lease_core::conformance_tests!(harness);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_reports_no_failures() {
    let failures = lease_core::conformance::run_all(&harness().await.unwrap()).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn unknown_case_is_an_error() {
    let h = harness().await.unwrap();
    let err = lease_core::conformance::run_case("no_such_case", &h)
        .await
        .unwrap_err();
    assert!(err.message.contains("no_such_case"));
}
