//! Latency and request counts of the Azure backend on Azurite, next to the floor measured in the
//! same run and the seed library's sequence.
//!
//! - floor: the raw SDK calls the operation cannot do without: for acquire, a lease acquire, a
//!   get-properties and a fenced set-metadata; for renew and release, one lease call;
//! - lease-azure: one `Backend` call each, exactly what a `Locker` sends per attempt;
//! - seed (go-azuremutex's sequence): create container + put blob + acquire lease on every
//!   acquire attempt (no fencing), and a fixed 10 s poll while waiting;
//! - hand-off: a waiter blocked in `Locker::acquire` gets the key after the holder releases.
//!
//! Reads `LEASE_TEST_AZURITE_BLOB_URL` (and `LEASE_TEST_AZURITE_ACCOUNT_KEY`); skipped when unset.
//! `cargo xtask bench --backend azure` runs it with Azurite up; by hand:
//! `cargo bench -p lease-azure --bench azure`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lease_azure::azure_core::http::policies::{Policy, PolicyResult};
use lease_azure::azure_core::http::{Context, Etag, Request, RequestContent};
use lease_azure::azure_storage_blob::models::{
    BlobClientAcquireLeaseOptions, BlobClientGetPropertiesResultHeaders,
    BlobClientSetMetadataOptions, BlockBlobClientUploadOptions,
};
use lease_azure::{
    AcquireOutcome, AcquireRequest, AzureBlobBackend, AzureBlobBuilder, Backend, HolderMetadata,
    HolderToken, LeaseKey, Locker, ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
    RetryPolicy,
};

/// Iterations per round, and rounds (the floor and lease-azure alternate by round).
const ITERATIONS: usize = 50;
const ROUNDS: usize = 4;
const HANDOFFS: usize = 10;
const TTL: Duration = Duration::from_secs(30);

/// Counts requests (every try) passing through the pipeline.
#[derive(Debug, Default)]
struct Counter(AtomicU64);

// The trait is declared with an elided `Context` lifetime; spelling it out would not match.
#[allow(elided_lifetimes_in_paths)]
#[lease_azure::async_trait]
impl Policy for Counter {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        self.0.fetch_add(1, Ordering::SeqCst);
        next[0].send(ctx, request, &next[1..]).await
    }
}

struct Stats {
    label: String,
    p50: Duration,
    p99: Duration,
    requests: f64,
}

fn stats(label: &str, mut samples: Vec<Duration>, requests: u64) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        label: label.to_owned(),
        p50: at(0.5),
        p99: at(0.99),
        requests: requests as f64 / samples.len() as f64,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn print_group(floor: &Stats, rows: &[&Stats]) {
    for row in std::iter::once(floor).chain(rows.iter().copied()) {
        println!(
            "| {} | {:.2} | {} | {} | {:.2} |",
            row.label,
            row.requests,
            ms(row.p50),
            ms(row.p99),
            row.p50.as_secs_f64() / floor.p50.as_secs_f64()
        );
    }
}

fn random() -> String {
    HolderToken::generate().to_string()[..12].to_owned()
}

async fn timed<T>(samples: &mut Vec<Duration>, f: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    samples.push(started.elapsed());
    out
}

/// The raw SDK sequences: the floor, and the seed's acquire.
async fn raw_sequences(backend: &AzureBlobBackend, counter: &Counter, into: &mut Samples) {
    let container = backend.container_client();
    let prefix = random();
    let (mut acquire, mut renew, mut release, mut seed) = (vec![], vec![], vec![], vec![]);
    let mut requests = [0u64; 4];
    for i in 0..ITERATIONS {
        let blob = container.blob_client(&format!("floor-{prefix}/{}", i % 10));
        if i < 10 {
            backend
                .ensure_blob(&LeaseKey::new(format!("floor-{prefix}/{i}")).unwrap())
                .await
                .unwrap();
        }
        let id = lease_id();
        let before = counter.0.load(Ordering::SeqCst);
        timed(&mut acquire, async {
            let options = BlobClientAcquireLeaseOptions {
                proposed_lease_id: Some(id.clone()),
                ..Default::default()
            };
            blob.acquire_lease(30, Some(options)).await.unwrap();
            let props = blob.get_properties(None).await.unwrap();
            let etag = props.etag().unwrap().unwrap();
            let mut metadata = props.metadata().unwrap();
            metadata.insert("fence".into(), i.to_string());
            let options = BlobClientSetMetadataOptions {
                lease_id: Some(id.clone()),
                if_match: Some(etag),
                ..Default::default()
            };
            blob.set_metadata(&metadata, Some(options)).await.unwrap();
        })
        .await;
        requests[0] += counter.0.load(Ordering::SeqCst) - before;
        let before = counter.0.load(Ordering::SeqCst);
        timed(&mut renew, blob.renew_lease(id.clone(), None))
            .await
            .unwrap();
        requests[1] += counter.0.load(Ordering::SeqCst) - before;
        let before = counter.0.load(Ordering::SeqCst);
        timed(&mut release, blob.release_lease(id.clone(), None))
            .await
            .unwrap();
        requests[2] += counter.0.load(Ordering::SeqCst) - before;

        // The seed: container, blob, lease, on every attempt.
        let id = lease_id();
        let before = counter.0.load(Ordering::SeqCst);
        timed(&mut seed, async {
            let _ = container.create(None).await; // 409 when it exists
            let options = BlockBlobClientUploadOptions {
                if_none_match: Some(Etag::from("*")),
                ..Default::default()
            };
            let _ = blob
                .block_blob_client()
                .upload(RequestContent::from(Vec::new()), Some(options))
                .await; // 409 when it exists
            let options = BlobClientAcquireLeaseOptions {
                proposed_lease_id: Some(id.clone()),
                ..Default::default()
            };
            blob.acquire_lease(30, Some(options)).await.unwrap();
        })
        .await;
        requests[3] += counter.0.load(Ordering::SeqCst) - before;
        blob.release_lease(id, None).await.unwrap();
    }
    into.add(0, acquire, requests[0]);
    into.add(1, renew, requests[1]);
    into.add(2, release, requests[2]);
    into.add(3, seed, requests[3]);
}

/// Samples and request counts of every row, gathered over alternating rounds.
#[derive(Default)]
struct Samples([(Vec<Duration>, u64); 8]);

impl Samples {
    fn add(&mut self, row: usize, samples: Vec<Duration>, requests: u64) {
        self.0[row].0.extend(samples);
        self.0[row].1 += requests;
    }

    fn stats(&mut self, row: usize, label: &str) -> Stats {
        let (samples, requests) = std::mem::take(&mut self.0[row]);
        stats(label, samples, requests)
    }
}

fn lease_id() -> String {
    let hex = HolderToken::generate().to_string();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// One `Backend` call per operation, as the `Locker` sends them.
async fn lease_ops(backend: &AzureBlobBackend, counter: &Counter, into: &mut Samples) {
    let meta = HolderMetadata::new("bench").unwrap();
    let prefix = random();
    let (mut acquire, mut renew, mut release, mut first) = (vec![], vec![], vec![], vec![]);
    let mut requests = [0u64; 4];
    for i in 0..ITERATIONS {
        let key = LeaseKey::new(format!("ops-{prefix}/{}", i % 10)).unwrap();
        let holder = HolderToken::generate();
        let before = counter.0.load(Ordering::SeqCst);
        let samples = if i < 10 { &mut first } else { &mut acquire };
        let outcome = timed(
            samples,
            backend.acquire(&AcquireRequest::new(key.clone(), holder, TTL, meta.clone())),
        )
        .await
        .unwrap();
        requests[if i < 10 { 3 } else { 0 }] += counter.0.load(Ordering::SeqCst) - before;
        assert!(matches!(outcome, AcquireOutcome::Acquired(_)));
        let before = counter.0.load(Ordering::SeqCst);
        let outcome = timed(
            &mut renew,
            backend.renew(&RenewRequest::new(key.clone(), holder, TTL)),
        )
        .await
        .unwrap();
        requests[1] += counter.0.load(Ordering::SeqCst) - before;
        assert!(matches!(outcome, RenewOutcome::Renewed(_)));
        let before = counter.0.load(Ordering::SeqCst);
        let outcome = timed(
            &mut release,
            backend.release(&ReleaseRequest::new(key.clone(), holder)),
        )
        .await
        .unwrap();
        requests[2] += counter.0.load(Ordering::SeqCst) - before;
        assert_eq!(outcome, ReleaseOutcome::Released);
    }
    into.add(4, acquire, requests[0]);
    into.add(5, renew, requests[1]);
    into.add(6, release, requests[2]);
    into.add(7, first, requests[3]);
}

/// Release → a waiter blocked in `Locker::acquire` holds the key. The waiter polls with the
/// default backoff capped at 250 ms here; the seed polls every 10 s (on average 5 s).
async fn handoff(backend: Arc<AzureBlobBackend>) -> Stats {
    let retry = RetryPolicy::default().with_max_delay(Duration::from_millis(250));
    let holder = Locker::builder_shared(backend.clone())
        .ttl(TTL)
        .build()
        .unwrap();
    let waiter = Arc::new(
        Locker::builder_shared(backend)
            .ttl(TTL)
            .retry(retry)
            .build()
            .unwrap(),
    );
    let key = format!("handoff-{}", random());
    let mut samples = Vec::new();
    for _ in 0..HANDOFFS {
        let lease = holder.try_acquire(&key).await.unwrap().unwrap();
        let waiting = {
            let waiter = waiter.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let lease = waiter.acquire(&key).await.unwrap();
                (Instant::now(), lease)
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let released = Instant::now();
        lease.release().await.unwrap();
        let (got, lease) = waiting.await.unwrap();
        samples.push(got - released);
        lease.release().await.unwrap();
    }
    stats(
        "hand-off: release → waiter holds it (poll ≤ 250 ms)",
        samples,
        0,
    )
}

fn main() {
    let Ok(url) = std::env::var("LEASE_TEST_AZURITE_BLOB_URL") else {
        println!(
            "SKIPPED: LEASE_TEST_AZURITE_BLOB_URL is not set (cargo xtask bench starts Azurite)"
        );
        return;
    };
    let key = std::env::var("LEASE_TEST_AZURITE_ACCOUNT_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| lease_azure::AZURITE_ACCOUNT_KEY.to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let counter = Arc::new(Counter::default());
        let backend = Arc::new(
            AzureBlobBuilder::new()
                .with_account(lease_azure::AZURITE_ACCOUNT)
                .with_endpoint(&url)
                .with_access_key(&key)
                .with_container(format!("lease-bench-{}", random()))
                .with_per_try_policy(counter.clone())
                .build()
                .unwrap(),
        );
        backend.ensure_container().await.unwrap();
        // Warm up connections.
        let _ = raw_sequences_warmup(&backend).await;
        // Alternate rounds, so a slow phase of the machine or Azurite hits every row alike.
        let mut samples = Samples::default();
        for _ in 0..ROUNDS {
            raw_sequences(&backend, &counter, &mut samples).await;
            lease_ops(&backend, &counter, &mut samples).await;
        }
        let floor_acquire = samples.stats(
            0,
            "floor: lease acquire + get properties + fenced set metadata",
        );
        let floor_renew = samples.stats(1, "floor: lease renew");
        let floor_release = samples.stats(2, "floor: lease release");
        let seed = samples.stats(
            3,
            "seed acquire: create container + put blob + lease acquire (no fencing)",
        );
        let acquire = samples.stats(4, "lease-azure acquire (blob exists)");
        let renew = samples.stats(5, "lease-azure renew");
        let release = samples.stats(6, "lease-azure release");
        let first = samples.stats(
            7,
            "lease-azure acquire, first use of a key (creates the blob)",
        );
        let handoff = handoff(backend.clone()).await;
        println!(
            "\n### Azurite ({} iterations; requests per operation counted)\n",
            ITERATIONS * ROUNDS
        );
        println!("| operation | requests | p50 ms | p99 ms | p50 / floor |");
        println!("|---|---|---|---|---|");
        print_group(&floor_acquire, &[&acquire, &first, &seed]);
        print_group(&floor_renew, &[&renew]);
        print_group(&floor_release, &[&release]);
        println!(
            "\n| hand-off | p50 ms | p99 ms |\n|---|---|---|\n| {} | {} | {} |",
            handoff.label,
            ms(handoff.p50),
            ms(handoff.p99)
        );
    });
}

async fn raw_sequences_warmup(backend: &AzureBlobBackend) -> Option<()> {
    for _ in 0..5 {
        backend
            .inspect(&LeaseKey::new("warm-up").unwrap())
            .await
            .ok()?;
    }
    Some(())
}
