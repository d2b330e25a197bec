//! The [`ConditionalStore`] over an `object_store` store, and [`ObjectStoreBackend`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lease_core::observed::{
    ConditionalStore, ObservationRule, ObservedExpiryBackend, ReadOutcome, StoredLease,
    WriteOutcome,
};
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, LeaseKey, LeaseRecord,
    ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use crate::document::{self, MAX_DOCUMENT_BYTES};
use crate::error::{WriteFailure, classify, classify_write};

/// Lease objects under a prefix of an `object_store` store: one attempt of one request per call.
#[derive(Clone)]
pub struct ObjectStoreLeases {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    name: &'static str,
    /// Set once the store has shown that it refuses the conditional writes it must refuse.
    conditions_checked: Arc<tokio::sync::OnceCell<()>>,
}

impl fmt::Debug for ObjectStoreLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // object_store's stores print their configuration with credentials redacted.
        f.debug_struct("ObjectStoreLeases")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .finish()
    }
}

impl ObjectStoreLeases {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, prefix: Path, name: &'static str) -> Self {
        Self {
            store,
            prefix,
            name,
            conditions_checked: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// Checks once per instance, before its first write, that the store refuses the conditional
    /// writes it must refuse, by behaviour rather than by name: on a probe object next to the
    /// leases (`prefix/.lease-probe-<random>`, not a key, deleted afterwards) it creates, updates
    /// on the version it got, then expects a second create and an update on that now stale
    /// version to be refused. A store that ignores `If-None-Match` / `If-Match` (some
    /// S3-compatible stores and emulators) would grant a key to every contender; one without
    /// conditional updates (`LocalFileSystem`, wrapped or not) could never renew or release.
    /// Either is a fatal error; a transient failure is reported and the check runs again on the
    /// next write.
    async fn check_conditions(&self) -> Result<(), BackendError> {
        self.conditions_checked
            .get_or_try_init(|| self.probe_conditions())
            .await
            .map(|_| ())
    }

    async fn probe_conditions(&self) -> Result<(), BackendError> {
        let random = lease_core::HolderToken::generate().to_string();
        let probe: Path = self
            .prefix
            .parts()
            .chain(std::iter::once(
                format!(".lease-probe-{}", &random[..16]).as_str().into(),
            ))
            .collect();
        let result = self.probe_at(&probe).await;
        if let Err(e) = self.store.delete(&probe).await {
            tracing::debug!(object = %probe, error = %e, "could not delete the conditional-write probe");
        }
        result
    }

    async fn probe_at(&self, probe: &Path) -> Result<(), BackendError> {
        let ignored = |what: &str| {
            BackendError::fatal(
                self.name,
                format!(
                    "this store ignored a conditional write ({what} succeeded on the probe object \
                     {probe}): it would grant a lease to every contender; use a store that honours \
                     If-None-Match and If-Match (or S3's conditional-put setting)"
                ),
            )
        };
        // Each write's bytes differ: an S3 ETag is a hash of the content, and a rewrite with the
        // same bytes would leave the "stale" version current.
        let put = |mode: PutMode, step: &'static [u8]| {
            self.store
                .put_opts(probe, PutPayload::from_static(step), PutOptions::from(mode))
        };
        let first = put(PutMode::Create, b"lease-objstore conditional write probe 1")
            .await
            .map_err(|e| self.write_error(&e, true))?;
        let stale = UpdateVersion {
            e_tag: first.e_tag,
            version: first.version,
        };
        if stale.e_tag.is_none() && stale.version.is_none() {
            return Err(BackendError::fatal(
                self.name,
                "the store returned neither an ETag nor a version: conditional updates are impossible",
            ));
        }
        put(
            PutMode::Update(stale.clone()),
            b"lease-objstore conditional write probe 2",
        )
        .await
        .map_err(|e| self.write_error(&e, false))?;
        match put(PutMode::Create, b"lease-objstore conditional write probe 3").await {
            Ok(_) => return Err(ignored("a create over an existing object")),
            Err(e) => match classify_write(self.name, &e, true) {
                WriteFailure::Conflict => {}
                WriteFailure::Failed(error) => return Err(error),
            },
        }
        match put(
            PutMode::Update(stale),
            b"lease-objstore conditional write probe 4",
        )
        .await
        {
            Ok(_) => Err(ignored("an update on a stale version")),
            Err(e) => match classify_write(self.name, &e, false) {
                WriteFailure::Conflict => Ok(()),
                WriteFailure::Failed(error) => Err(error),
            },
        }
    }

    /// A probe write that failed: a conflict here means the probe raced with itself (transient).
    fn write_error(&self, error: &object_store::Error, create: bool) -> BackendError {
        match classify_write(self.name, error, create) {
            WriteFailure::Conflict => BackendError::transient(
                self.name,
                "the conditional-write probe object changed while it was checked; try again",
            ),
            WriteFailure::Failed(e) => e,
        }
    }

    /// The object that holds `key`'s lease: `prefix/key`.
    pub fn path(&self, key: &LeaseKey) -> Path {
        // Key characters are all valid path characters and keys have no empty, `.` or `..`
        // segments, so every key maps to exactly one object and back.
        self.prefix
            .parts()
            .chain(Path::from(key.as_str()).parts())
            .collect()
    }

    /// The key of the object at `path`, if it is under the prefix and a valid key.
    fn key_of(&self, path: &Path) -> Option<LeaseKey> {
        let rest: Vec<_> = path.prefix_match(&self.prefix)?.collect();
        let joined = rest
            .iter()
            .map(|p| p.as_ref())
            .collect::<Vec<_>>()
            .join("/");
        LeaseKey::new(joined).ok()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix keys live under.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    fn corrupt(&self, path: &Path, why: impl fmt::Display) -> BackendError {
        BackendError::corrupt_record(
            self.name,
            format!("object {path} is not a lease document: {why}"),
        )
    }

    async fn read_path(&self, path: &Path) -> Result<ReadOutcome<UpdateVersion>, BackendError> {
        let result = match self.store.get_opts(path, GetOptions::default()).await {
            Ok(result) => result,
            Err(e @ object_store::Error::NotFound { .. }) => {
                return match crate::error::missing_container(self.name, &e) {
                    Some(fatal) => Err(fatal),
                    None => Ok(ReadOutcome::Absent),
                };
            }
            Err(e) => return Err(classify(self.name, &e)),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        if result.meta.size > MAX_DOCUMENT_BYTES {
            // Dropping the body unread: a huge object is never downloaded.
            let error = self.corrupt(path, document::too_large(result.meta.size));
            return Ok(ReadOutcome::Corrupt { version, error });
        }
        let bytes = result.bytes().await.map_err(|e| classify(self.name, &e))?;
        Ok(match document::decode(&bytes) {
            Ok(lease) => ReadOutcome::Found { version, lease },
            Err(why) => ReadOutcome::Corrupt {
                version,
                error: self.corrupt(path, why),
            },
        })
    }

    async fn put(
        &self,
        key: &LeaseKey,
        mode: PutMode,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<UpdateVersion>, BackendError> {
        let create = matches!(mode, PutMode::Create);
        // Before anything is written: a store that ignores conditions, or cannot update
        // conditionally (LocalFileSystem, wrapped or not), must never grant.
        self.check_conditions().await?;
        let payload = PutPayload::from(document::encode(lease));
        let options = PutOptions::from(mode);
        match self.store.put_opts(&self.path(key), payload, options).await {
            Ok(result) => Ok(WriteOutcome::Written(UpdateVersion {
                e_tag: result.e_tag,
                version: result.version,
            })),
            Err(e) => match classify_write(self.name, &e, create) {
                WriteFailure::Conflict => Ok(WriteOutcome::Conflict),
                WriteFailure::Failed(error) => Err(error),
            },
        }
    }
}

#[async_trait]
impl ConditionalStore for ObjectStoreLeases {
    type Version = UpdateVersion;

    fn name(&self) -> &'static str {
        self.name
    }

    fn ttl_range(&self) -> (Duration, Duration) {
        // Whole milliseconds are stored; a day is far beyond any sensible lease.
        (Duration::from_millis(100), Duration::from_secs(24 * 3600))
    }

    async fn read(&self, key: &LeaseKey) -> Result<ReadOutcome<UpdateVersion>, BackendError> {
        self.read_path(&self.path(key)).await
    }

    async fn create(
        &self,
        key: &LeaseKey,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<UpdateVersion>, BackendError> {
        self.put(key, PutMode::Create, lease).await
    }

    async fn update(
        &self,
        key: &LeaseKey,
        expected: &UpdateVersion,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<UpdateVersion>, BackendError> {
        if expected.e_tag.is_none() && expected.version.is_none() {
            return Err(BackendError::fatal(
                self.name,
                "the store returned neither an ETag nor a version: conditional updates are impossible",
            ));
        }
        self.put(key, PutMode::Update(expected.clone()), lease)
            .await
    }

    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<(LeaseKey, ReadOutcome<UpdateVersion>)>, BackendError> {
        // The store lists by whole path segments, so only the part of `prefix` up to its last
        // `/` narrows the listing; the rest is matched below, as a string prefix of the key.
        let directory = prefix.rfind('/').map_or("", |end| &prefix[..end]);
        let under: Path = self
            .prefix
            .parts()
            .chain(Path::from(directory).parts())
            .collect();
        let mut listing = self.store.list(Some(&under));
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| classify(self.name, &e))?;
            let Some(key) = self.key_of(&meta.location) else {
                // An object whose name is not a key (not ours): we list leases only.
                tracing::debug!(object = %meta.location, "not a lease key; skipped");
                continue;
            };
            if key.as_str().starts_with(prefix) {
                found.push(key);
            }
        }
        // The objects are read concurrently (in listing order), so a listing costs about two
        // round trips rather than one per object (a semaphore lists its slots on every acquire).
        futures_util::stream::iter(found)
            .map(|key| async move {
                let outcome = self.read(&key).await?;
                Ok((key, outcome))
            })
            .buffered(LIST_READ_CONCURRENCY)
            .collect::<Vec<Result<_, BackendError>>>()
            .await
            .into_iter()
            .collect()
    }
}

/// How many objects a listing reads at once.
const LIST_READ_CONCURRENCY: usize = 16;

/// Leases on an object store: [`ObservedExpiryBackend`] over [`ObjectStoreLeases`].
///
/// Built with [`ObjectStoreBackend::new`] (any store you configured) or
/// [`ObjectStoreBackend::from_url`](crate::ObjectStoreBackend::from_url). Share one per process:
/// it keeps the observations that decide when an abandoned lease may be taken over.
pub struct ObjectStoreBackend {
    inner: ObservedExpiryBackend<ObjectStoreLeases>,
}

impl fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl ObjectStoreBackend {
    pub(crate) fn from_leases(leases: ObjectStoreLeases, rule: ObservationRule) -> Self {
        Self {
            inner: ObservedExpiryBackend::with_rule(leases, rule),
        }
    }

    /// The same backend with another [`ObservationRule`].
    pub fn with_rule(self, rule: ObservationRule) -> Self {
        let leases = self.inner.store().clone();
        Self::from_leases(leases, rule)
    }

    /// The lease objects (for example to find the object of a key with
    /// [`ObjectStoreLeases::path`]).
    pub fn leases(&self) -> &ObjectStoreLeases {
        self.inner.store()
    }
}

#[async_trait]
impl Backend for ObjectStoreBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.inner.acquire(request).await
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.inner.renew(request).await
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.inner.release(request).await
    }

    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.inspect(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        self.inner.list(prefix).await
    }

    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.break_lease(key).await
    }
}
