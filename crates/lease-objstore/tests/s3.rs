//! Against an S3 server (moto in `cargo xtask test`; `LEASE_TEST_S3_*` variables): the whole
//! conformance kit, 16 racers on a fresh key, a killed holder's takeover, and garbage objects.
//! Requests are signed by object_store (moto accepts any signature; it answered an unsigned
//! `If-None-Match` PUT with 403 once).

mod common;

use std::sync::Arc;

use common::{Factory, TTL};
use lease_objstore::ObjectStoreBackend;
use lease_objstore::conformance::{Harness, require_env};
use lease_objstore::object_store::ObjectStore;
use lease_objstore::object_store::aws::AmazonS3Builder;
use tokio::sync::OnceCell;

const KIT_TTL: std::time::Duration = std::time::Duration::from_secs(3);

struct S3 {
    bucket: String,
    options: Vec<(String, String)>,
}

static SERVER: OnceCell<Option<S3>> = OnceCell::const_new();

/// The server's options, and a bucket for this test process (created once).
async fn server() -> Option<&'static S3> {
    SERVER
        .get_or_init(|| async {
            let endpoint = require_env("LEASE_TEST_S3_ENDPOINT")?;
            let var = |name: &str, default: &str| {
                std::env::var(name).unwrap_or_else(|_| default.to_owned())
            };
            let bucket = common::random_name("lease-objstore");
            // moto creates buckets on an unsigned PUT.
            let response = reqwest::Client::new()
                .put(format!("{endpoint}/{bucket}"))
                .send()
                .await
                .expect("the S3 server answers");
            assert!(
                response.status().is_success(),
                "create bucket: {}",
                response.status()
            );
            Some(S3 {
                bucket,
                options: vec![
                    ("aws_endpoint".into(), endpoint),
                    ("aws_allow_http".into(), "true".into()),
                    (
                        "aws_access_key_id".into(),
                        var("LEASE_TEST_S3_ACCESS_KEY_ID", "test"),
                    ),
                    (
                        "aws_secret_access_key".into(),
                        var("LEASE_TEST_S3_SECRET_ACCESS_KEY", "test"),
                    ),
                    (
                        "aws_region".into(),
                        var("LEASE_TEST_S3_REGION", "us-east-1"),
                    ),
                ],
            })
        })
        .await
        .as_ref()
}

fn factory(s3: &'static S3, prefix: &str) -> Factory {
    let url = format!("s3://{}/{prefix}", s3.bucket);
    Arc::new(move || {
        ObjectStoreBackend::from_url(
            &url,
            s3.options.iter().map(|(k, v)| (k.as_str(), v.clone())),
        )
        .expect("S3 backend from URL")
    })
}

fn raw_store(s3: &'static S3) -> Arc<dyn ObjectStore> {
    let mut builder = AmazonS3Builder::new().with_bucket_name(&s3.bucket);
    for (key, value) in &s3.options {
        builder = builder.with_config(key.parse().unwrap(), value);
    }
    Arc::new(builder.build().unwrap())
}

async fn harness() -> Option<Harness> {
    let s3 = server().await?;
    let make = factory(s3, &common::random_name("kit"));
    // A TTL that covers moto's latency while every case of the kit runs at once on two cores.
    let backend = make();
    let writer = common::outside_writer(&backend);
    Some(
        // A second backend on the same store (its own observations): a second process.
        Harness::new(backend)
            .with_peer(make())
            .with_ttl(KIT_TTL)
            .with_outside_writer(writer),
    )
}

lease_objstore::conformance_tests!(harness);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_racers_on_a_fresh_key_one_grant() {
    let Some(s3) = server().await else { return };
    common::sixteen_racers_on_a_fresh_key_one_grant(&factory(s3, "race")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_is_taken_over_between_the_rule_and_one_poll_later() {
    let Some(s3) = server().await else { return };
    common::killed_holder_is_taken_over_between_the_rule_and_one_poll_later(&factory(
        s3, "takeover",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_objects_are_corrupt_records_and_stay_intact() {
    let Some(s3) = server().await else { return };
    common::garbage_objects_are_corrupt_records_and_stay_intact(
        &factory(s3, "garbage"),
        raw_store(s3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_replaces_garbage_with_a_counter_above_the_clock() {
    let Some(s3) = server().await else { return };
    common::break_replaces_garbage_with_a_counter_above_the_clock(
        &factory(s3, "garbage"),
        raw_store(s3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_fast_as_fatal_or_the_server_accepts_them() {
    // moto accepts any signature, so this only checks that a missing bucket is fatal, at once.
    let Some(s3) = server().await else { return };
    let url = format!("s3://{}/p", common::random_name("no-such-bucket"));
    let backend = ObjectStoreBackend::from_url(
        &url,
        s3.options.iter().map(|(k, v)| (k.as_str(), v.clone())),
    )
    .unwrap();
    let locker = lease_objstore::Locker::builder(backend)
        .ttl(TTL)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = locker.try_acquire("k").await.unwrap_err();
    assert_eq!(err.kind(), lease_objstore::ErrorKind::Fatal, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

// FencedStore (src/fenced_store.rs) on this store: tests/common/fenced.rs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_refuses_a_paused_holder_after_its_successor_wrote() {
    let Some(s3) = server().await else { return };
    let store = raw_store(s3);
    common::fenced::paused_holder_is_refused_after_its_successor_wrote(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_sixteen_holders_leave_only_increasing_tokens() {
    let Some(s3) = server().await else { return };
    let store = raw_store(s3);
    common::fenced::sixteen_holders_in_succession_leave_only_increasing_tokens(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_rereads_and_redecides_after_a_concurrent_raw_writer() {
    let Some(s3) = server().await else { return };
    let store = raw_store(s3);
    common::fenced::concurrent_raw_writer_is_reread_and_redecided(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_refuses_what_cannot_be_fenced() {
    let Some(s3) = server().await else { return };
    let store = raw_store(s3);
    common::fenced::what_cannot_be_fenced_is_refused(store).await;
}

/// Item 6 of issue 19: a missing bucket is fatal for every operation, inspect and list included
/// (a 404 on read is "no lease" only when the object, not the bucket, is missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_fatal_everywhere() {
    let Some(s3) = server().await else { return };
    let url = format!("s3://{}/p", common::random_name("no-such-bucket"));
    let backend = ObjectStoreBackend::from_url(
        &url,
        s3.options.iter().map(|(k, v)| (k.as_str(), v.clone())),
    )
    .unwrap();
    let locker = lease_objstore::Locker::builder(backend)
        .ttl(TTL)
        .build()
        .unwrap();
    let err = locker.inspect("k").await.unwrap_err();
    assert_eq!(
        err.kind(),
        lease_objstore::ErrorKind::Fatal,
        "inspect: {err}"
    );
    assert!(err.to_string().contains("bucket"), "{err}");
    let err = locker.list("").await.unwrap_err();
    assert_eq!(err.kind(), lease_objstore::ErrorKind::Fatal, "list: {err}");
    let err = locker.try_acquire("k").await.unwrap_err();
    assert_eq!(
        err.kind(),
        lease_objstore::ErrorKind::Fatal,
        "acquire: {err}"
    );
}
