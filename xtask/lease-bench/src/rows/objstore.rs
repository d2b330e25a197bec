//! `objstore-memory`, `objstore-s3` (moto), `objstore-azure` (Azurite through object_store's
//! Azure store): each operation against the raw requests it cannot do without, and the seed's
//! acquire (objsync: a GET, then a conditional PUT, on every acquire).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lease_objstore::object_store::memory::InMemory;
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
    ObjectStoreBackend, ObjectStoreLeases, ReleaseOutcome, ReleaseRequest, RenewOutcome,
    RenewRequest, async_trait,
};

use super::random;
use crate::report::Comparison;
use crate::sample::{interleave, measure, timed};
use crate::{Options, Report};

const TTL: Duration = Duration::from_secs(30);
const LEASE: &str = "lease-objstore";
const SEED: &str = "baseline: objsync GET + conditional PUT";

/// Counts the requests the backend sends (one per `ConditionalStore` call).
#[derive(Debug, Clone)]
struct Counted {
    inner: ObjectStoreLeases,
    requests: Arc<AtomicU64>,
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
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.read(key).await
    }
    async fn create(
        &self,
        key: &LeaseKey,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<UpdateVersion>, BackendError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.create(key, lease).await
    }
    async fn update(
        &self,
        key: &LeaseKey,
        expected: &UpdateVersion,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<UpdateVersion>, BackendError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.update(key, expected, lease).await
    }
}

use lease_azure::AZURITE_ACCOUNT;

/// The row's store URL and options, or why it cannot run.
async fn store(row: &str, options: &Options) -> Result<(ObjectStoreBackend, String), String> {
    let run = random();
    match row {
        "objstore-memory" => Ok((
            ObjectStoreBackend::new(Arc::new(InMemory::new()), "leases"),
            "object_store InMemory".into(),
        )),
        "objstore-s3" => {
            let endpoint = options
                .var("LEASE_TEST_S3_ENDPOINT")
                .ok_or("LEASE_TEST_S3_ENDPOINT is not set")?;
            let bucket = format!("lease-bench-{run}");
            // moto accepts an unsigned bucket creation.
            reqwest::Client::new()
                .put(format!("{endpoint}/{bucket}"))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("cannot create bucket {bucket}: {e}"))?;
            let var = |n: &str, d: &str| options.var(n).unwrap_or_else(|| d.to_owned());
            let config = [
                ("aws_endpoint", endpoint),
                ("aws_allow_http", "true".into()),
                (
                    "aws_access_key_id",
                    var("LEASE_TEST_S3_ACCESS_KEY_ID", "test"),
                ),
                (
                    "aws_secret_access_key",
                    var("LEASE_TEST_S3_SECRET_ACCESS_KEY", "test"),
                ),
                ("aws_region", var("LEASE_TEST_S3_REGION", "us-east-1")),
            ];
            let backend = ObjectStoreBackend::from_url(&format!("s3://{bucket}/b"), config)
                .map_err(|e| e.to_string())?;
            Ok((backend, "moto S3".into()))
        }
        _ => {
            let endpoint = options
                .var("LEASE_TEST_AZURITE_BLOB_URL")
                .ok_or("LEASE_TEST_AZURITE_BLOB_URL is not set")?;
            let key = options
                .var("LEASE_TEST_AZURITE_ACCOUNT_KEY")
                .unwrap_or_else(|| lease_azure::AZURITE_ACCOUNT_KEY.to_owned());
            let container = format!("objbench-{run}");
            // lease-azure creates the container (object_store cannot).
            lease_azure::AzureBlobBuilder::new()
                .with_account(AZURITE_ACCOUNT)
                .with_endpoint(&endpoint)
                .with_access_key(&key)
                .with_container(&container)
                .build()
                .map_err(|e| e.to_string())?
                .ensure_container()
                .await
                .map_err(|e| e.to_string())?;
            let config = [
                ("azure_storage_account_name", AZURITE_ACCOUNT.to_owned()),
                ("azure_storage_account_key", key),
                ("azure_storage_endpoint", endpoint),
                ("azure_allow_http", "true".into()),
            ];
            let backend = ObjectStoreBackend::from_url(&format!("az://{container}/b"), config)
                .map_err(|e| e.to_string())?;
            Ok((backend, "Azurite, object_store's Azure store".into()))
        }
    }
}

fn body() -> PutPayload {
    PutPayload::from_static(
        br#"{"format":"lease-objstore/1","holder":null,"metadata":null,"fencing":1,"ttl_ms":null,"acquired_at_ms":null,"revision":1}"#,
    )
}

fn version(e_tag: Option<String>, version: Option<String>) -> UpdateVersion {
    UpdateVersion { e_tag, version }
}

/// Runs one object-store row.
pub(crate) async fn run(row: &str, options: &Options, report: &mut Report) {
    let (backend, server) = match store(row, options).await {
        Ok(s) => s,
        Err(why) => {
            report.skipped.push((row.to_owned(), why));
            return;
        }
    };
    let plan = options.plan();
    let leases = backend.leases().clone();
    let raw: Arc<dyn ObjectStore> = Arc::clone(leases.store());
    let requests = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: leases,
        requests: Arc::clone(&requests),
    };
    // No takeover is measured here, so the rule's wait never applies; zero keeps it out anyway.
    let rule = ObservationRule::new(0.0, Duration::ZERO).unwrap();
    let backend = ObservedExpiryBackend::with_rule(counted, rule);
    let count = || requests.load(Ordering::Relaxed);
    let run = random();
    let meta = HolderMetadata::new("bench").unwrap();
    let key = |name: &str, i: usize| LeaseKey::new(format!("{run}/{name}/{i}")).unwrap();
    let acquire = async |k: &LeaseKey| {
        let holder = HolderToken::generate();
        let request = AcquireRequest::new(k.clone(), holder, TTL, meta.clone());
        let (out, s) = measure(&count, backend.acquire(&request)).await;
        assert!(matches!(out, Ok(AcquireOutcome::Acquired(_))), "{out:?}");
        (holder, s)
    };
    let release = async |k: &LeaseKey, holder: HolderToken| {
        let request = ReleaseRequest::new(k.clone(), holder);
        let (out, s) = measure(&count, backend.release(&request)).await;
        assert!(matches!(out, Ok(ReleaseOutcome::Released)), "{out:?}");
        s
    };
    let path = |name: &str, i: usize| Path::from(format!("raw/{run}/{name}/{i}"));
    let put = async |p: &Path, mode: PutMode| {
        let r = raw
            .put_opts(p, body(), PutOptions::from(mode))
            .await
            .unwrap_or_else(|e| panic!("raw PUT {p}: {e}"));
        version(r.e_tag, r.version)
    };
    let get = async |p: &Path| {
        let got = raw.get_opts(p, GetOptions::default()).await;
        match got {
            Ok(got) => {
                let v = version(got.meta.e_tag.clone(), got.meta.version.clone());
                let _ = got.bytes().await.unwrap();
                Some(v)
            }
            Err(lease_objstore::object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("raw GET {p}: {e}"),
        }
    };
    // Two comparisons use this floor: a counter keeps every created path fresh.
    let created = std::cell::Cell::new(0);
    let create_floor = async |_: usize| {
        created.set(created.get() + 1);
        let p = path("create", created.get());
        timed(1, put(&p, PutMode::Create)).await.1
    };
    let mut reports = Vec::new();

    let paired = interleave(
        plan,
        async |i| acquire(&key("fresh", i)).await.1,
        create_floor,
    )
    .await;
    reports.push((
        "acquire (fresh key)",
        LEASE,
        "conditional PUT (create)",
        paired,
    ));

    let paired = interleave(
        plan,
        async |i| {
            let p = path("seed", i);
            let call = async {
                assert!(get(&p).await.is_none());
                put(&p, PutMode::Create).await
            };
            timed(2, call).await.1
        },
        create_floor,
    )
    .await;
    reports.push((
        "acquire (fresh key)",
        SEED,
        "conditional PUT (create)",
        paired,
    ));

    // One raw object updated over and over: the floor of renew and release.
    let updated = path("update", 0);
    let mut current = put(&updated, PutMode::Create).await;
    let mut update_floor = async |_: usize| {
        let (v, s) = timed(1, put(&updated, PutMode::Update(current.clone()))).await;
        current = v;
        s
    };

    let held = key("renew", 0);
    let (holder, _) = acquire(&held).await;
    let paired = interleave(
        plan,
        async |_| {
            let request = RenewRequest::new(held.clone(), holder, TTL);
            let (out, s) = measure(&count, backend.renew(&request)).await;
            assert!(matches!(out, Ok(RenewOutcome::Renewed(_))), "{out:?}");
            s
        },
        &mut update_floor,
    )
    .await;
    release(&held, holder).await;
    reports.push(("renew", LEASE, "conditional PUT (update)", paired));

    let paired = interleave(
        plan,
        async |i| {
            let k = key("release", i % 10);
            let (holder, _) = acquire(&k).await;
            release(&k, holder).await
        },
        &mut update_floor,
    )
    .await;
    reports.push(("release", LEASE, "conditional PUT (update)", paired));

    // A free key that existed before (released): the backend reads, then updates.
    let paired = interleave(
        plan,
        async |i| {
            let k = key("release", i % 10);
            let (holder, s) = acquire(&k).await;
            release(&k, holder).await;
            s
        },
        async |_| {
            let call = async {
                let v = get(&updated).await.expect("exists");
                put(&updated, PutMode::Update(v)).await
            };
            let (v, s) = timed(2, call).await;
            current = v;
            s
        },
    )
    .await;
    reports.push((
        "acquire (released key)",
        LEASE,
        "GET + conditional PUT (update)",
        paired,
    ));

    for (operation, subject, floor, paired) in reports {
        report.comparisons.push(Comparison::new(
            row, &server, operation, subject, floor, &paired,
        ));
    }
}
