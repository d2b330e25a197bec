//! URLs, options and the environment → an [`ObjectStoreBackend`].

use std::sync::Arc;

use lease_core::observed::ObservationRule;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreScheme};
use url::Url;

use crate::backend::{ObjectStoreBackend, ObjectStoreLeases};
use crate::error::redact;

/// Why a backend could not be built from a URL. Messages never contain secrets (query strings of
/// URLs are removed; option values are never shown).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The text is not a URL.
    #[error("invalid object store URL '{url}': {reason}")]
    InvalidUrl {
        /// The URL, without its query string.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The scheme names a store that cannot hold leases safely, or that this build leaves out.
    #[error("{0}")]
    Unsupported(String),
    /// An option key the store does not know.
    #[error("unknown option '{key}' for a {store} store")]
    UnknownOption {
        /// The store kind.
        store: &'static str,
        /// The key.
        key: String,
    },
    /// The store's own builder refused the configuration (missing region, bad endpoint…).
    #[error("could not configure the {store} store: {message}")]
    Store {
        /// The store kind.
        store: &'static str,
        /// object_store's message, redacted.
        message: String,
    },
}

/// The retry setting for stores built here: none. A conditional PUT retried after its first
/// attempt landed answers "precondition failed", which would read as a lost race; the protocol
/// retries (and resolves unknown outcomes by reading back) itself.
#[cfg(any(feature = "aws", feature = "azure", feature = "gcp"))]
fn no_retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 0,
        ..object_store::RetryConfig::default()
    }
}

/// The short name of a store, from its `Display` ("AmazonS3(bucket)" → "s3").
pub(crate) fn store_name(store: &dyn ObjectStore) -> &'static str {
    let shown = store.to_string();
    for (starts, name) in [
        ("AmazonS3", "s3"),
        ("MicrosoftAzure", "azure-blob"),
        ("GoogleCloudStorage", "gcs"),
        ("InMemory", "object-memory"),
        ("LocalFileSystem", "local-files"),
    ] {
        if shown.starts_with(starts) {
            return name;
        }
    }
    "object-store"
}

macro_rules! configure {
    ($builder:expr, $key_type:ty, $store:literal, $options:expr) => {{
        let mut builder = $builder;
        for (key, value) in $options {
            let key = key.as_ref();
            let parsed: $key_type =
                key.to_ascii_lowercase()
                    .parse()
                    .map_err(|_| BuildError::UnknownOption {
                        store: $store,
                        key: key.to_owned(),
                    })?;
            builder = builder.with_config(parsed, value.into());
        }
        builder
    }};
}

impl ObjectStoreBackend {
    /// Leases as objects under `prefix` in `store`, with the default [`ObservationRule`].
    ///
    /// `store` must support `PutMode::Create` and `PutMode::Update` (S3, Azure, GCS, `InMemory`
    /// do; `LocalFileSystem` does not, and every lease operation then fails with a fatal error
    /// saying so). **Turn off its retries** (`RetryConfig { max_retries: 0, .. }` on the builder):
    /// a conditional write retried after its first attempt landed comes back as "precondition
    /// failed", and a release then reports `NotHeld` for a lease it did free.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lease_objstore::{Locker, ObjectStoreBackend};
    /// use object_store::memory::InMemory;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_objstore::Error> {
    /// let backend = ObjectStoreBackend::new(Arc::new(InMemory::new()), "leases");
    /// assert_eq!(backend.leases().path(&"jobs/a".parse()?).as_ref(), "leases/jobs/a");
    /// let lease = Locker::new(backend).try_acquire("jobs/a").await?.expect("free");
    /// assert!(lease.is_held());
    /// # lease.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        let name = store_name(store.as_ref());
        let leases = ObjectStoreLeases::new(store, Path::from(prefix), name);
        Self::from_leases(leases, ObservationRule::default())
    }

    /// A backend for the store at `url`, configured by `options` and the environment, the way
    /// object_store's builders read them, with retries off.
    ///
    /// | URL | store | environment read |
    /// |---|---|---|
    /// | `s3://BUCKET[/PREFIX]` | Amazon S3 or compatible (feature `aws`) | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`), `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint, and the rest of object_store's `AWS_*` keys |
    /// | `az://CONTAINER[/PREFIX]`, `abfs://…`, `azure://…` | Azure Blob Storage (feature `azure`) | `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_KEY`, `AZURE_STORAGE_USE_EMULATOR=true` for Azurite, other `AZURE_*` keys |
    /// | `gs://BUCKET[/PREFIX]` | Google Cloud Storage (feature `gcp`) | `GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`, `GOOGLE_BASE_URL`, other `GOOGLE_*` keys |
    /// | `memory:///[PREFIX]` | object_store's `InMemory` (this process only) | — |
    ///
    /// `options` are object_store configuration keys (`("aws_region", "eu-west-1")`, …); they
    /// override the environment. `file://` is refused: the local file store cannot do conditional
    /// updates (use `sqlite://` through `lease-sql` for a local lease store).
    ///
    /// ```
    /// use lease_objstore::ObjectStoreBackend;
    /// let backend = ObjectStoreBackend::from_url("memory:///leases", [("unused", "x"); 0])?;
    /// assert_eq!(backend.leases().prefix().as_ref(), "leases");
    /// let err = ObjectStoreBackend::from_url("file:///tmp/leases", [("unused", "x"); 0]).unwrap_err();
    /// assert!(err.to_string().contains("conditional"));
    /// # Ok::<(), lease_objstore::BuildError>(())
    /// ```
    ///
    /// # Errors
    /// [`BuildError`]: an invalid URL, an unsupported or disabled scheme, an unknown option, or a
    /// configuration the store's builder refuses.
    pub fn from_url<I, K, V>(url: &str, options: I) -> Result<Self, BuildError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let shown = redact(url);
        let parsed = Url::parse(url).map_err(|e| BuildError::InvalidUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let (scheme, prefix) =
            ObjectStoreScheme::parse(&parsed).map_err(|e| BuildError::InvalidUrl {
                url: shown.clone(),
                reason: redact(&e.to_string()),
            })?;
        let options: Vec<(K, V)> = options.into_iter().collect();
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Memory => {
                if let Some((key, _)) = options.first() {
                    return Err(BuildError::UnknownOption {
                        store: "memory",
                        key: key.as_ref().to_owned(),
                    });
                }
                Arc::new(object_store::memory::InMemory::new())
            }
            #[cfg(feature = "aws")]
            ObjectStoreScheme::AmazonS3 => {
                use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                let builder = AmazonS3Builder::from_env().with_url(url);
                let builder = configure!(builder, AmazonS3ConfigKey, "s3", options);
                Arc::new(builder.with_retry(no_retries()).build().map_err(|e| {
                    BuildError::Store {
                        store: "s3",
                        message: redact(&e.to_string()),
                    }
                })?)
            }
            #[cfg(feature = "azure")]
            ObjectStoreScheme::MicrosoftAzure => {
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                let builder = MicrosoftAzureBuilder::from_env().with_url(url);
                let builder = configure!(builder, AzureConfigKey, "azure", options);
                Arc::new(builder.with_retry(no_retries()).build().map_err(|e| {
                    BuildError::Store {
                        store: "azure",
                        message: redact(&e.to_string()),
                    }
                })?)
            }
            #[cfg(feature = "gcp")]
            ObjectStoreScheme::GoogleCloudStorage => {
                use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                let builder = GoogleCloudStorageBuilder::from_env().with_url(url);
                let builder = configure!(builder, GoogleConfigKey, "gcs", options);
                Arc::new(builder.with_retry(no_retries()).build().map_err(|e| {
                    BuildError::Store {
                        store: "gcs",
                        message: redact(&e.to_string()),
                    }
                })?)
            }
            ObjectStoreScheme::Local => {
                return Err(BuildError::Unsupported(format!(
                    "'{shown}': the local file store cannot hold leases: object_store's \
                     LocalFileSystem has no conditional update (PutMode::Update), and an \
                     unconditional write would let two holders in; use sqlite:// for a local \
                     lease store"
                )));
            }
            other => {
                return Err(BuildError::Unsupported(format!(
                    "'{shown}': {other:?} stores are not available for leases in this build \
                     (lease-objstore's features: aws for s3://, azure for az://, gcp for gs://; \
                     plain http(s) stores have no conditional writes)"
                )));
            }
        };
        Ok(Self::new(store, prefix.as_ref()))
    }
}
