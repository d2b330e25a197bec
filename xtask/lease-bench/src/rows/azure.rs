//! `azure` (Azurite): each operation against the raw SDK calls it cannot do without, the seed's
//! acquire (go-azuremutex: create container, put blob, acquire lease, on every attempt; no
//! fencing; a fixed 10 s poll while waiting), then hand-off and a crowd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lease_azure::azure_core::http::policies::{Policy, PolicyResult};
use lease_azure::azure_core::http::{Context, Etag, Request, RequestContent};
use lease_azure::azure_storage_blob::models::{
    BlobClientAcquireLeaseOptions, BlobClientGetPropertiesResultHeaders,
    BlobClientSetMetadataOptions, BlockBlobClientUploadOptions,
};
use lease_azure::{
    AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY, AcquireOutcome, AcquireRequest, AzureBlobBackend,
    AzureBlobBuilder, Backend, HolderMetadata, HolderToken, LeaseKey, ReleaseOutcome,
    ReleaseRequest, RenewOutcome, RenewRequest,
};

use super::random;
use super::scale::{self, Counter};
use crate::report::Comparison;
use crate::sample::{interleave, measure};
use crate::{Options, Report};

const ROW: &str = "azure";
const TTL: Duration = Duration::from_secs(30);
const LEASE: &str = "lease-azure";
const SEED: &str = "baseline: go-azuremutex 3 calls, no fencing";
const ACQUIRE_FLOOR: &str = "lease acquire + get properties + fenced set metadata";

/// Counts requests (every try) passing through the pipeline.
#[derive(Debug, Default)]
struct Requests(AtomicU64);

// The trait is declared with an elided `Context` lifetime; spelling it out would not match.
#[allow(elided_lifetimes_in_paths)]
#[lease_azure::async_trait]
impl Policy for Requests {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        self.0.fetch_add(1, Ordering::Relaxed);
        next[0].send(ctx, request, &next[1..]).await
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

fn build(url: &str, key: &str, container: &str) -> (AzureBlobBackend, Arc<Requests>) {
    let requests = Arc::new(Requests::default());
    let backend = AzureBlobBuilder::new()
        .with_account(AZURITE_ACCOUNT)
        .with_endpoint(url)
        .with_access_key(key)
        .with_container(container)
        .with_per_try_policy(requests.clone())
        .build()
        .unwrap();
    (backend, requests)
}

/// Runs the Azure row.
pub(crate) async fn run(options: &Options, report: &mut Report) {
    let Some(url) = options.var("LEASE_TEST_AZURITE_BLOB_URL") else {
        report
            .skipped
            .push((ROW.into(), "LEASE_TEST_AZURITE_BLOB_URL is not set".into()));
        return;
    };
    let account_key = options
        .var("LEASE_TEST_AZURITE_ACCOUNT_KEY")
        .unwrap_or_else(|| AZURITE_ACCOUNT_KEY.to_owned());
    let container = format!("lease-bench-{}", random());
    let (backend, requests) = build(&url, &account_key, &container);
    backend.ensure_container().await.unwrap();
    let server = "Azurite";
    let plan = options.plan();
    let count = || requests.0.load(Ordering::Relaxed);
    let meta = HolderMetadata::new("bench").unwrap();
    let blobs = backend.container_client();
    let run = random();
    let key = |name: &str, i: usize| LeaseKey::new(format!("{run}/{name}/{}", i % 10)).unwrap();
    for i in 0..10 {
        for name in ["ops", "floor", "seed"] {
            backend.ensure_blob(&key(name, i)).await.unwrap();
        }
    }
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
    // The floor of acquire: the lease, and the fenced metadata write that mints the token.
    let raw_acquire = async |i: usize| {
        let blob = blobs.blob_client(key("floor", i).as_str());
        let id = lease_id();
        let (_, s) = measure(&count, async {
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
        (blob, id, s)
    };
    let mut rows = Vec::new();

    let paired = interleave(
        plan,
        async |i| {
            let k = key("ops", i);
            let (holder, s) = acquire(&k).await;
            release(&k, holder).await;
            s
        },
        async |i| {
            let (blob, id, s) = raw_acquire(i).await;
            blob.release_lease(id, None).await.unwrap();
            s
        },
    )
    .await;
    rows.push(("acquire (blob exists)", LEASE, ACQUIRE_FLOOR, paired));

    let paired = interleave(
        plan,
        async |i| {
            let blob = blobs.blob_client(key("seed", i).as_str());
            let id = lease_id();
            let (_, s) = measure(&count, async {
                let _ = blobs.create(None).await; // 409: it exists
                let options = BlockBlobClientUploadOptions {
                    if_none_match: Some(Etag::from("*")),
                    ..Default::default()
                };
                let _ = blob
                    .block_blob_client()
                    .upload(RequestContent::from(Vec::new()), Some(options))
                    .await; // 409: it exists
                let options = BlobClientAcquireLeaseOptions {
                    proposed_lease_id: Some(id.clone()),
                    ..Default::default()
                };
                blob.acquire_lease(30, Some(options)).await.unwrap();
            })
            .await;
            blob.release_lease(id, None).await.unwrap();
            s
        },
        async |i| {
            let (blob, id, s) = raw_acquire(i).await;
            blob.release_lease(id, None).await.unwrap();
            s
        },
    )
    .await;
    rows.push(("acquire (blob exists)", SEED, ACQUIRE_FLOOR, paired));

    let held = key("ops", 0);
    let (holder, _) = acquire(&held).await;
    let (raw_blob, raw_id, _) = raw_acquire(0).await;
    let paired = interleave(
        plan,
        async |_| {
            let request = RenewRequest::new(held.clone(), holder, TTL);
            let (out, s) = measure(&count, backend.renew(&request)).await;
            assert!(matches!(out, Ok(RenewOutcome::Renewed(_))), "{out:?}");
            s
        },
        async |_| {
            let (out, s) = measure(&count, raw_blob.renew_lease(raw_id.clone(), None)).await;
            out.unwrap();
            s
        },
    )
    .await;
    release(&held, holder).await;
    raw_blob.release_lease(raw_id, None).await.unwrap();
    rows.push(("renew", LEASE, "lease renew", paired));

    let paired = interleave(
        plan,
        async |i| {
            let k = key("ops", i);
            let (holder, _) = acquire(&k).await;
            release(&k, holder).await
        },
        async |i| {
            let blob = blobs.blob_client(key("floor", i).as_str());
            let id = lease_id();
            let options = BlobClientAcquireLeaseOptions {
                proposed_lease_id: Some(id.clone()),
                ..Default::default()
            };
            blob.acquire_lease(30, Some(options)).await.unwrap();
            let (out, s) = measure(&count, blob.release_lease(id, None)).await;
            out.unwrap();
            s
        },
    )
    .await;
    rows.push(("release", LEASE, "lease release", paired));

    for (operation, subject, floor, paired) in rows {
        report.comparisons.push(Comparison::new(
            ROW, server, operation, subject, floor, &paired,
        ));
    }
    let round_trip = report
        .comparisons
        .iter()
        .find(|c| c.backend == ROW && c.floor == "lease renew")
        .map_or(f64::NAN, |c| c.floor_samples.p50_ms);
    let connect = || {
        let (url, key, container) = (url.clone(), account_key.clone(), container.clone());
        async move {
            let (b, requests) = build(&url, &key, &container);
            let counter: Counter = Arc::new(move || requests.0.load(Ordering::Relaxed));
            (Arc::new(b) as Arc<dyn Backend>, counter)
        }
    };
    if options.wants_part("handoff") {
        scale::handoff(ROW, options, report, &connect, round_trip).await;
        if let Some(t) = report.tables.last_mut() {
            t.note.push_str(
                " The seed polls every 10 s: its hand-off averages about 5 s (not measured).",
            );
        }
    }
    if options.wants_part("crowd") {
        scale::crowd(ROW, options, report, &connect).await;
    }
}
