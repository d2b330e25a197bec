//! Against Azurite through object_store's Azure store (`LEASE_TEST_AZURITE_*` variables): the
//! whole conformance kit, 16 racers, a killed holder's takeover, and garbage objects.

#[path = "common/azurite.rs"]
mod azurite;
mod common;

use std::sync::Arc;

use common::{Factory, TTL};
use lease_objstore::ObjectStoreBackend;
use lease_objstore::conformance::{Harness, require_env};
use lease_objstore::object_store::ObjectStore;
use lease_objstore::object_store::azure::MicrosoftAzureBuilder;
use tokio::sync::OnceCell;

const KIT_TTL: std::time::Duration = std::time::Duration::from_secs(3);
const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (not a secret).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

struct Azurite {
    container: String,
    options: Vec<(String, String)>,
}

static SERVER: OnceCell<Option<Azurite>> = OnceCell::const_new();

async fn server() -> Option<&'static Azurite> {
    SERVER
        .get_or_init(|| async {
            let endpoint = require_env("LEASE_TEST_AZURITE_BLOB_URL")?;
            let key = std::env::var("LEASE_TEST_AZURITE_ACCOUNT_KEY")
                .ok()
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| AZURITE_KEY.to_owned());
            let container = common::random_name("objstore");
            azurite::create_container(ACCOUNT, &endpoint, &key, &container).await;
            Some(Azurite {
                container,
                options: vec![
                    ("azure_storage_account_name".into(), ACCOUNT.into()),
                    ("azure_storage_account_key".into(), key),
                    ("azure_storage_endpoint".into(), endpoint),
                    ("azure_allow_http".into(), "true".into()),
                ],
            })
        })
        .await
        .as_ref()
}

fn factory(server: &'static Azurite, prefix: &str) -> Factory {
    let url = format!("az://{}/{prefix}", server.container);
    Arc::new(move || {
        ObjectStoreBackend::from_url(
            &url,
            server.options.iter().map(|(k, v)| (k.as_str(), v.clone())),
        )
        .expect("Azure backend from URL")
    })
}

fn raw_store(server: &'static Azurite) -> Arc<dyn ObjectStore> {
    let mut builder = MicrosoftAzureBuilder::new().with_container_name(&server.container);
    for (key, value) in &server.options {
        builder = builder.with_config(key.parse().unwrap(), value);
    }
    Arc::new(builder.build().unwrap())
}

async fn harness() -> Option<Harness> {
    let server = server().await?;
    let make = factory(server, &common::random_name("kit"));
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
    let Some(server) = server().await else { return };
    common::sixteen_racers_on_a_fresh_key_one_grant(&factory(server, "race")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_is_taken_over_between_the_rule_and_one_poll_later() {
    let Some(server) = server().await else { return };
    common::killed_holder_is_taken_over_between_the_rule_and_one_poll_later(&factory(
        server, "takeover",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_objects_are_corrupt_records_and_stay_intact() {
    let Some(server) = server().await else { return };
    common::garbage_objects_are_corrupt_records_and_stay_intact(
        &factory(server, "garbage"),
        raw_store(server),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_fatal_at_once_and_not_shown() {
    let Some(server) = server().await else { return };
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let mut options = server.options.clone();
    options[1].1 = wrong.to_owned();
    let backend = ObjectStoreBackend::from_url(
        &format!("az://{}/wrong-key", server.container),
        options.iter().map(|(k, v)| (k.as_str(), v.clone())),
    )
    .unwrap();
    let locker = lease_objstore::Locker::builder(backend)
        .ttl(TTL)
        .build()
        .unwrap();
    let err = locker.try_acquire("k").await.unwrap_err();
    assert_eq!(err.kind(), lease_objstore::ErrorKind::Fatal, "{err}");
    assert!(!err.to_string().contains(wrong), "{err}");
}

// FencedStore (src/fenced_store.rs) on this store: tests/common/fenced.rs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_refuses_a_paused_holder_after_its_successor_wrote() {
    let Some(server) = server().await else { return };
    let store = raw_store(server);
    common::fenced::paused_holder_is_refused_after_its_successor_wrote(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_sixteen_holders_leave_only_increasing_tokens() {
    let Some(server) = server().await else { return };
    let store = raw_store(server);
    common::fenced::sixteen_holders_in_succession_leave_only_increasing_tokens(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_rereads_and_redecides_after_a_concurrent_raw_writer() {
    let Some(server) = server().await else { return };
    let store = raw_store(server);
    common::fenced::concurrent_raw_writer_is_reread_and_redecided(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_store_refuses_what_cannot_be_fenced() {
    let Some(server) = server().await else { return };
    let store = raw_store(server);
    common::fenced::what_cannot_be_fenced_is_refused(store).await;
}

/// Item 6 of issue 19: a missing container is fatal for every operation, inspect included (a 404
/// on read means "no lease" only when the blob, not the container, is missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_container_is_fatal_everywhere() {
    let Some(server) = server().await else { return };
    let url = format!("az://{}/p", common::random_name("no-such-container"));
    let backend = ObjectStoreBackend::from_url(
        &url,
        server.options.iter().map(|(k, v)| (k.as_str(), v.clone())),
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
    assert!(err.to_string().contains("container"), "{err}");
    let err = locker.list("").await.unwrap_err();
    assert_eq!(err.kind(), lease_objstore::ErrorKind::Fatal, "list: {err}");
    let err = locker.try_acquire("k").await.unwrap_err();
    assert_eq!(
        err.kind(),
        lease_objstore::ErrorKind::Fatal,
        "acquire: {err}"
    );
}
