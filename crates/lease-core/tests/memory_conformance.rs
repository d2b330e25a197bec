//! The whole conformance kit against `MemoryBackend`.

use std::time::Duration;

use lease_core::MemoryBackend;
use lease_core::conformance::{Harness, OutsideChange, OutsideWrite, OutsideWriter};

async fn harness() -> Option<Harness> {
    let backend = MemoryBackend::new();
    let store = backend.clone();
    // The in-process store has no record format to overwrite: forgetting the key is the change.
    let writer = OutsideWriter::new(move |key, change| {
        let store = store.clone();
        async move {
            match change {
                OutsideChange::Delete => {
                    store.forget(&key);
                    Ok(OutsideWrite::Done)
                }
                _ => Ok(OutsideWrite::NotApplicable),
            }
        }
    });
    Some(
        // Clones share the store: what two users of one in-process store see.
        Harness::new(backend.clone())
            .with_peer(backend)
            .with_ttl(Duration::from_millis(400))
            .with_outside_writer(writer),
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
