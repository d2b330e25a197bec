//! Three workers contend for one lease on the in-process `MemoryBackend`; each takes its turn,
//! with fencing tokens rising. Run with `cargo run -p lease-core --example quickstart`.

use std::time::Duration;

use lease_core::{Fence, Locker, MemoryBackend};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lease_core::Error> {
    let store = MemoryBackend::new();
    let fence = std::sync::Arc::new(Fence::new());
    let mut workers = Vec::new();
    for id in 0..3 {
        let locker = Locker::builder(store.clone())
            .ttl(Duration::from_secs(2))
            .build()?;
        let fence = fence.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..2 {
                locker
                    .run_exclusive("quickstart", |lease| {
                        let fence = fence.clone();
                        async move {
                            fence
                                .admit(lease.fencing_token())
                                .expect("tokens only rise");
                            println!(
                                "worker {id} holds the lease, fencing token {}",
                                lease.fencing_token()
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<(), lease_core::Error>(())
                        }
                    })
                    .await?;
            }
            Ok::<(), lease_core::Error>(())
        }));
    }
    for worker in workers {
        worker.await.expect("worker panicked")?;
    }
    println!(
        "highest fencing token: {}",
        fence.highest().map_or(0, |t| t.get())
    );
    Ok(())
}
