//! Latency and requests per operation on real servers (moto S3 from `LEASE_TEST_S3_*`, Azurite
//! from `LEASE_TEST_AZURITE_*`), next to the floor measured in the same run (one raw conditional
//! PUT; a raw GET + conditional PUT for a takeover) and the seed's sequence (objsync: GET +
//! conditional PUT for every acquire). Requests are counted by a wrapper around the store.
//!
//! `cargo xtask bench objstore-s3` runs it; by hand: `cargo bench -p lease-objstore --bench objstore`
//! with the servers' variables set (`eval "$(cargo xtask services env)"`).

#[path = "../tests/common/azurite.rs"]
mod azurite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lease_objstore::object_store::path::Path;
use lease_objstore::object_store::{
    GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use lease_objstore::observed::{
    ConditionalStore, ObservationRule, ObservedExpiryBackend, ReadOutcome, StoredLease,
    WriteOutcome,
};
use lease_objstore::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, HolderMetadata, HolderToken, LeaseKey,
    ObjectStoreBackend, ObjectStoreLeases, ReleaseRequest, RenewRequest, async_trait,
};

const ITERATIONS: usize = 100;
const TTL: Duration = Duration::from_secs(30);

/// Counts the requests the backend sends.
#[derive(Debug, Clone)]
struct Counted {
    inner: ObjectStoreLeases,
    requests: Arc<AtomicU64>,
}

impl Counted {
    fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ConditionalStore for Counted {
    type Version = UpdateVersion;
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn ttl_range(&self) -> (Duration, Duration) {
        self.inner.ttl_range()
    }
    async fn read(&self, key: &LeaseKey) -> Result<ReadOutcome<UpdateVersion>, BackendError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.read(key).await
    }
    async fn create(
        &self,
        key: &LeaseKey,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<UpdateVersion>, BackendError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.create(key, lease).await
    }
    async fn update(
        &self,
        key: &LeaseKey,
        expected: &UpdateVersion,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<UpdateVersion>, BackendError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.update(key, expected, lease).await
    }
}

struct Row {
    op: &'static str,
    requests: f64,
    samples: Vec<Duration>,
}

fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn key(name: &str, i: usize) -> LeaseKey {
    LeaseKey::new(format!("bench/{name}-{i}")).unwrap()
}

fn request(key: &LeaseKey, holder: HolderToken) -> AcquireRequest {
    AcquireRequest::new(
        key.clone(),
        holder,
        TTL,
        HolderMetadata::from_stored_lossy("bench"),
    )
}

async fn run(label: &str, url: &str, options: &[(String, String)]) {
    let opts = || options.iter().map(|(k, v)| (k.as_str(), v.clone()));
    let leases = ObjectStoreBackend::from_url(url, opts())
        .unwrap()
        .leases()
        .clone();
    let store: Arc<dyn ObjectStore> = Arc::clone(leases.store());
    let requests = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: leases.clone(),
        requests: Arc::clone(&requests),
    };
    // Takeovers need the rule's wait; a zero rule measures the operation itself (GET + PUT).
    let instant = ObservationRule::new(0.0, Duration::ZERO).unwrap();
    let backend = ObservedExpiryBackend::with_rule(counted.clone(), instant);
    let contender = ObservedExpiryBackend::with_rule(counted.clone(), instant);
    let run_id = &HolderToken::generate().to_string()[..8];
    let mut rows: Vec<Row> = Vec::new();
    let mut holders = Vec::new();

    let mut measure = |op: &'static str, samples: Vec<Duration>, before: u64, after: u64| {
        rows.push(Row {
            op,
            requests: (after - before) as f64 / samples.len() as f64,
            samples,
        });
    };

    // acquire, fresh key
    let (mut s, before) = (Vec::new(), counted.count());
    for i in 0..ITERATIONS {
        let holder = HolderToken::generate();
        let k = key(&format!("{run_id}-fresh"), i);
        let t = Instant::now();
        let out = backend.acquire(&request(&k, holder)).await.unwrap();
        s.push(t.elapsed());
        assert!(matches!(out, AcquireOutcome::Acquired(_)));
        holders.push((k, holder));
    }
    measure("acquire (fresh key)", s, before, counted.count());
    // renew
    let (mut s, before) = (Vec::new(), counted.count());
    for (k, holder) in &holders {
        let t = Instant::now();
        backend
            .renew(&RenewRequest::new(k.clone(), *holder, TTL))
            .await
            .unwrap();
        s.push(t.elapsed());
    }
    measure("renew", s, before, counted.count());
    // takeover: holders granted for the shortest TTL stop; the contender observes every lease,
    // waits out the rule (zero drift and margin: just the TTL), then each takeover is measured.
    let short = Duration::from_millis(100);
    let mut abandoned = Vec::new();
    for i in 0..ITERATIONS {
        let k = key(&format!("{run_id}-takeover"), i);
        let req = AcquireRequest::new(
            k.clone(),
            HolderToken::generate(),
            short,
            HolderMetadata::from_stored_lossy("bench"),
        );
        assert!(matches!(
            backend.acquire(&req).await.unwrap(),
            AcquireOutcome::Acquired(_)
        ));
        abandoned.push(k);
    }
    for k in &abandoned {
        contender.inspect(k).await.unwrap();
    }
    tokio::time::sleep(short + Duration::from_millis(50)).await;
    let (mut s, before) = (Vec::new(), counted.count());
    let mut taken = Vec::new();
    for k in &abandoned {
        let holder = HolderToken::generate();
        let t = Instant::now();
        let out = contender.acquire(&request(k, holder)).await.unwrap();
        s.push(t.elapsed());
        assert!(matches!(out, AcquireOutcome::Acquired(_)), "{out:?}");
        taken.push((k.clone(), holder));
    }
    measure("acquire (takeover)", s, before, counted.count());
    // release
    let (mut s, before) = (Vec::new(), counted.count());
    for (k, holder) in &taken {
        let t = Instant::now();
        contender
            .release(&ReleaseRequest::new(k.clone(), *holder))
            .await
            .unwrap();
        s.push(t.elapsed());
    }
    measure("release", s, before, counted.count());

    // Floors: raw requests on the same store, same run.
    let body = || {
        PutPayload::from_static(br#"{"format":"lease-objstore/1","holder":null,"metadata":null,"fencing":1,"ttl_ms":null,"acquired_at_ms":null,"revision":1}"#)
    };
    let mut create_floor = Vec::new();
    let mut versions = Vec::new();
    for i in 0..ITERATIONS {
        let path = Path::from(format!("floor/{run_id}/{i}"));
        let t = Instant::now();
        let r = store
            .put_opts(&path, body(), PutOptions::from(PutMode::Create))
            .await
            .unwrap();
        create_floor.push(t.elapsed());
        versions.push((
            path,
            UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            },
        ));
    }
    let mut update_floor = Vec::new();
    let mut get_update_floor = Vec::new();
    for (path, version) in &mut versions {
        let t = Instant::now();
        let r = store
            .put_opts(
                path,
                body(),
                PutOptions::from(PutMode::Update(version.clone())),
            )
            .await
            .unwrap();
        update_floor.push(t.elapsed());
        let t = Instant::now();
        let got = store.get_opts(path, GetOptions::default()).await.unwrap();
        let v = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let _ = got.bytes().await.unwrap();
        store
            .put_opts(path, body(), PutOptions::from(PutMode::Update(v)))
            .await
            .unwrap();
        get_update_floor.push(t.elapsed());
        let _ = r;
    }
    // The seed's acquire (objsync): GET, then a conditional PUT, for every acquire.
    let mut seed = Vec::new();
    for i in 0..ITERATIONS {
        let path = Path::from(format!("seed/{run_id}/{i}"));
        let t = Instant::now();
        let _ = store.get_opts(&path, GetOptions::default()).await;
        store
            .put_opts(&path, body(), PutOptions::from(PutMode::Create))
            .await
            .unwrap();
        seed.push(t.elapsed());
    }
    let mut create_floor_p = create_floor.clone();
    let mut update_floor_p = update_floor.clone();
    let mut gu_p = get_update_floor.clone();
    let mut seed_p = seed.clone();
    let floors = [
        (
            "acquire (fresh key)",
            quantile(&mut create_floor_p, 0.5),
            "conditional PUT (create)",
        ),
        (
            "renew",
            quantile(&mut update_floor_p, 0.5),
            "conditional PUT (update)",
        ),
        (
            "acquire (takeover)",
            quantile(&mut gu_p, 0.5),
            "GET + conditional PUT",
        ),
        (
            "release",
            quantile(&mut update_floor_p, 0.5),
            "conditional PUT (update)",
        ),
    ];
    let seed_p50 = quantile(&mut seed_p, 0.5);
    println!("\n### {label} ({ITERATIONS} iterations per row; ms)\n");
    println!(
        "| operation | requests | p50 | p99 | floor | floor p50 | ratio p50 | seed (GET + PUT) p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in &mut rows {
        let (_, floor, what) = floors.iter().find(|f| f.0 == row.op).unwrap();
        let p50 = quantile(&mut row.samples, 0.5);
        let p99 = quantile(&mut row.samples, 0.99);
        let seed_col = if row.op.starts_with("acquire") {
            ms(seed_p50)
        } else {
            "-".into()
        };
        println!(
            "| {} | {:.2} | {} | {} | {what} | {} | {:.2} | {seed_col} |",
            row.op,
            row.requests,
            ms(p50),
            ms(p99),
            ms(*floor),
            p50.as_secs_f64() / floor.as_secs_f64()
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(endpoint) = std::env::var("LEASE_TEST_S3_ENDPOINT") {
        let bucket = format!("lease-bench-{}", &HolderToken::generate().to_string()[..8]);
        reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .unwrap();
        let var = |n: &str, d: &str| std::env::var(n).unwrap_or_else(|_| d.to_owned());
        let options = vec![
            ("aws_endpoint".to_owned(), endpoint),
            ("aws_allow_http".to_owned(), "true".to_owned()),
            (
                "aws_access_key_id".to_owned(),
                var("LEASE_TEST_S3_ACCESS_KEY_ID", "test"),
            ),
            (
                "aws_secret_access_key".to_owned(),
                var("LEASE_TEST_S3_SECRET_ACCESS_KEY", "test"),
            ),
            (
                "aws_region".to_owned(),
                var("LEASE_TEST_S3_REGION", "us-east-1"),
            ),
        ];
        run("moto S3", &format!("s3://{bucket}/b"), &options).await;
    } else {
        eprintln!("SKIPPED moto: LEASE_TEST_S3_ENDPOINT is not set");
    }
    if let Ok(endpoint) = std::env::var("LEASE_TEST_AZURITE_BLOB_URL") {
        let key = std::env::var("LEASE_TEST_AZURITE_ACCOUNT_KEY")
            .unwrap_or_else(|_| AZURITE_KEY.to_owned());
        let container = format!("bench-{}", &HolderToken::generate().to_string()[..8]);
        azurite::create_container(ACCOUNT, &endpoint, &key, &container).await;
        let options = vec![
            ("azure_storage_account_name".to_owned(), ACCOUNT.to_owned()),
            ("azure_storage_account_key".to_owned(), key),
            ("azure_storage_endpoint".to_owned(), endpoint),
            ("azure_allow_http".to_owned(), "true".to_owned()),
        ];
        run(
            "Azurite (object_store's Azure store)",
            &format!("az://{container}/b"),
            &options,
        )
        .await;
    } else {
        eprintln!("SKIPPED Azurite: LEASE_TEST_AZURITE_BLOB_URL is not set");
    }
}

const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (not a secret).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
