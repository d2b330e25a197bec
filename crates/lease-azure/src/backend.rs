//! [`AzureBlobBackend`]: one Azure blob lease per key, with a fencing counter in the blob's
//! metadata. Every method is one attempt; the protocol around it lives in `lease-core`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::http::{Etag, RequestContent};
use azure_storage_blob::models::BlobClientSetMetadataOptions;
use azure_storage_blob::models::{
    BlobClientAcquireLeaseOptions, BlobClientBreakLeaseOptions, BlobClientGetPropertiesOptions,
    BlobClientGetPropertiesResultHeaders, BlobContainerClientListBlobsOptions,
    BlockBlobClientUploadOptions, LeaseState, ListBlobsIncludeItem,
};
use azure_storage_blob::{BlobClient, BlobContainerClient};
use futures_util::TryStreamExt as _;
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, ClockModel, FencingToken,
    Grant, HolderToken, LeaseKey, LeaseRecord, RecordState, ReleaseOutcome, ReleaseRequest,
    RenewOutcome, RenewRequest,
};

use crate::error::{Failure, Meaning, NAME};
use crate::fencing::{self, FenceRecord, lease_id};

/// The shortest lease Azure grants.
pub const MIN_TTL: Duration = Duration::from_secs(15);
/// The longest fixed lease Azure grants (longer ones are infinite, which this crate never asks for:
/// a crashed holder's infinite lease never ends).
pub const MAX_TTL: Duration = Duration::from_secs(60);

/// How the backend authenticates (shown in `Debug`, never the secret itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthKind {
    SharedKey,
    Sas,
    TokenCredential,
}

/// A lease store on Azure Blob Storage (or Azurite): one blob per key in one container.
///
/// Build it with [`AzureBlobBuilder`](crate::AzureBlobBuilder), [`AzureBlobBackend::from_url`],
/// [`AzureBlobBackend::from_connection_string`] or [`AzureBlobBackend::azurite`].
///
/// Requests per operation (Azure bills and throttles per request):
///
/// | operation | requests |
/// |---|---|
/// | acquire (blob exists) | 3: lease acquire, get properties, fenced set metadata |
/// | acquire (first use of a key) | 5: + put blob (`If-None-Match: *`) and a second lease acquire; +1 to create a missing container |
/// | acquire (held by another) | 2: lease acquire (409), get properties (to name the holder) |
/// | renew | 1 (lease renew) |
/// | release | 1 (lease release) |
/// | inspect | 1, or 2 while leased (the second confirms the lease id is the recorded holder's) |
/// | break | inspect + 1 |
/// | list | 1 per 5,000 blobs |
pub struct AzureBlobBackend {
    pub(crate) container: BlobContainerClient,
    pub(crate) account: String,
    pub(crate) container_name: String,
    pub(crate) prefix: String,
    pub(crate) auth: AuthKind,
    /// Lease durations granted to this process's holders: Azure's renew answer does not say.
    pub(crate) granted: Mutex<HashMap<HolderToken, Duration>>,
}

/// Entries kept in the granted-duration cache before it is cleared (misses cost one read).
const GRANTED_CACHE_LIMIT: usize = 100_000;

impl fmt::Debug for AzureBlobBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobBackend")
            .field("account", &self.account)
            .field("container", &self.container_name)
            .field("prefix", &self.prefix)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// The blob's properties that matter here.
struct Properties {
    etag: Option<Etag>,
    metadata: HashMap<String, String>,
    lease_state: Option<LeaseState>,
    last_modified: Option<SystemTime>,
}

impl AzureBlobBackend {
    /// The SDK client of the lease container, with this backend's credentials (for operations of
    /// your own on the same container; changing the lease blobs' metadata breaks fencing).
    pub fn container_client(&self) -> &BlobContainerClient {
        &self.container
    }

    /// The container the lease blobs live in.
    pub fn container_name(&self) -> &str {
        &self.container_name
    }

    /// The prefix put before every key to name its blob (empty, or ending with `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The storage account.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The name of the blob that holds `key`'s lease.
    pub fn blob_name(&self, key: &LeaseKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    /// Creates the container unless it exists. Acquire does this by itself on first use; call it
    /// to fail early on bad credentials.
    ///
    /// # Errors
    /// A fatal [`BackendError`] for authentication or permission failures, transient otherwise.
    pub async fn ensure_container(&self) -> Result<(), BackendError> {
        match self.container.create(None).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let failure = Failure::from_sdk("create container", &e);
                if failure.meaning == Meaning::AlreadyExists {
                    Ok(())
                } else {
                    Err(failure.into_backend_error())
                }
            }
        }
    }

    /// Creates `key`'s lease blob (empty) unless a blob of that name exists, creating the
    /// container when missing. An existing blob, with whatever content, is never overwritten
    /// (`If-None-Match: *`). Acquire does this by itself on first use.
    ///
    /// # Errors
    /// A fatal [`BackendError`] for authentication or permission failures, transient otherwise.
    pub async fn ensure_blob(&self, key: &LeaseKey) -> Result<(), BackendError> {
        self.create_blob(&self.blob(key))
            .await
            .map_err(Failure::into_backend_error)
    }

    fn blob(&self, key: &LeaseKey) -> BlobClient {
        self.container.blob_client(&self.blob_name(key))
    }

    /// Lease duration in whole seconds for `ttl`, refused outside Azure's range before any request.
    fn lease_seconds(ttl: Duration) -> Result<i32, BackendError> {
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(BackendError::fatal(
                NAME,
                format!("TTL {ttl:?} is outside Azure's lease range 15 s..=60 s"),
            ));
        }
        // Azure counts whole seconds; rounding down never promises more than the store grants.
        Ok(ttl.as_secs() as i32)
    }

    fn remember(&self, holder: HolderToken, ttl: Duration) {
        let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        if granted.len() >= GRANTED_CACHE_LIMIT {
            granted.clear();
        }
        granted.insert(holder, ttl);
    }

    fn forget(&self, holder: &HolderToken) {
        self.granted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(holder);
    }

    async fn acquire_lease(&self, blob: &BlobClient, secs: i32, id: &str) -> Result<(), Failure> {
        let options = BlobClientAcquireLeaseOptions {
            proposed_lease_id: Some(id.to_owned()),
            ..Default::default()
        };
        blob.acquire_lease(secs, Some(options))
            .await
            .map(drop)
            .map_err(|e| Failure::from_sdk("acquire lease", &e))
    }

    async fn release_lease(&self, blob: &BlobClient, id: &str) -> Result<(), Failure> {
        blob.release_lease(id.to_owned(), None)
            .await
            .map(drop)
            .map_err(|e| Failure::from_sdk("release lease", &e))
    }

    /// Gets the blob's properties; `Ok(None)` when it does not exist. With `lease_id`, the read
    /// succeeds only while that lease is the active one (otherwise a `NotHeld` failure).
    async fn properties(
        &self,
        blob: &BlobClient,
        lease_id: Option<String>,
    ) -> Result<Option<Properties>, Failure> {
        let options = BlobClientGetPropertiesOptions {
            lease_id,
            ..Default::default()
        };
        let response = match blob.get_properties(Some(options)).await {
            Ok(response) => response,
            Err(e) => {
                let failure = Failure::from_sdk("get properties", &e);
                return match failure.meaning {
                    Meaning::BlobMissing | Meaning::ContainerMissing => Ok(None),
                    _ => Err(failure),
                };
            }
        };
        let bad = |what: &str, e: azure_core::Error| {
            Failure::new(
                Meaning::Transient,
                format!(
                    "get properties: unreadable {what} header: {}",
                    crate::error::redact(&e.to_string())
                ),
            )
        };
        Ok(Some(Properties {
            etag: response.etag().map_err(|e| bad("etag", e))?,
            metadata: response.metadata().map_err(|e| bad("metadata", e))?,
            lease_state: response.lease_state().map_err(|e| bad("lease state", e))?,
            last_modified: response
                .last_modified()
                .map_err(|e| bad("last-modified", e))?
                .map(SystemTime::from),
        }))
    }

    /// Creates an empty blob unless one exists (`If-None-Match: *`: someone's content is never
    /// overwritten), creating the container first when it is missing.
    async fn create_blob(&self, blob: &BlobClient) -> Result<(), Failure> {
        for attempt in 0..2 {
            let options = BlockBlobClientUploadOptions {
                if_none_match: Some(Etag::from("*")),
                ..Default::default()
            };
            let result = blob
                .block_blob_client()
                .upload(RequestContent::from(Vec::new()), Some(options))
                .await;
            let failure = match result {
                Ok(_) => return Ok(()),
                Err(e) => Failure::from_sdk("create blob", &e),
            };
            match failure.meaning {
                // Exists (or leased by someone, which fails the same precondition): fine.
                Meaning::AlreadyExists | Meaning::Changed | Meaning::NotHeld => return Ok(()),
                Meaning::ContainerMissing if attempt == 0 => {
                    self.ensure_container()
                        .await
                        .map_err(|e| Failure::new(meaning_of_kind(&e), e.message().to_owned()))?;
                }
                _ => return Err(failure),
            }
        }
        Err(Failure::new(
            Meaning::Transient,
            "create blob: the container vanished again after it was created",
        ))
    }

    /// Releases a lease we cannot hand out (its fencing write failed); errors are ignored because
    /// the lease expires by itself and the caller already reports the failure.
    async fn give_back(&self, blob: &BlobClient, holder: &HolderToken, id: &str) {
        self.forget(holder);
        if let Err(e) = self.release_lease(blob, id).await {
            tracing::debug!(
                error = e.message(),
                "releasing an unfenced lease failed; it will expire"
            );
        }
    }

    /// The fencing step of acquire: read, then bump the counter under our lease id and `If-Match`.
    async fn fence(
        &self,
        blob: &BlobClient,
        request: &AcquireRequest,
        ttl: Duration,
        id: &str,
    ) -> Result<AcquireOutcome, BackendError> {
        let holder = request.holder;
        let props = match self.properties(blob, None).await {
            Ok(Some(props)) => props,
            Ok(None) => {
                return Err(BackendError::transient(
                    NAME,
                    "the lease blob vanished while it was being fenced",
                ));
            }
            Err(failure) => {
                self.give_back(blob, &holder, id).await;
                return Err(failure.into_backend_error());
            }
        };
        let stored = match fencing::decode(&props.metadata) {
            Ok(stored) => stored,
            Err(e) => {
                self.give_back(blob, &holder, id).await;
                return Err(BackendError::corrupt_record(
                    NAME,
                    format!("{}: {e}", self.blob_name(&request.key)),
                ));
            }
        };
        if let Some(stored) = &stored
            && stored.holder == holder
        {
            // An earlier attempt with this holder token already bumped: same grant, same token.
            self.remember(holder, ttl);
            return Ok(AcquireOutcome::Acquired(Grant::new(stored.fencing, ttl)));
        }
        // A blob without our record (new, or rewritten by someone else: any upload, metadata
        // replacement, copy or version restore while no lease is active wipes it) starts its
        // counter from the clock, above every token the key issued before: the later of ours and
        // the blob's Last-Modified (Azure's clock, whole seconds) rounded up.
        let next = match &stored {
            None => Some(FencingToken::from_clock(props.last_modified).get()),
            Some(stored) => stored.fencing.get().checked_add(1),
        };
        let Some(next) = next else {
            self.give_back(blob, &holder, id).await;
            return Err(BackendError::fatal(
                NAME,
                format!(
                    "{}: the fencing counter is exhausted (u64::MAX)",
                    self.blob_name(&request.key)
                ),
            ));
        };
        let Some(etag) = props.etag else {
            self.give_back(blob, &holder, id).await;
            return Err(BackendError::transient(
                NAME,
                "get properties returned no ETag",
            ));
        };
        let record = FenceRecord {
            fencing: FencingToken::new(next),
            holder,
            ttl,
            owner: request.metadata.clone(),
        };
        let metadata = fencing::encode(&props.metadata, &record);
        let options = BlobClientSetMetadataOptions {
            lease_id: Some(id.to_owned()),
            if_match: Some(etag),
            ..Default::default()
        };
        match blob.set_metadata(&metadata, Some(options)).await {
            Ok(_) => {
                self.remember(holder, ttl);
                Ok(AcquireOutcome::Acquired(Grant::new(record.fencing, ttl)))
            }
            Err(e) => {
                let failure = Failure::from_sdk("write fencing metadata", &e);
                // Never hand out a lease without its token. If this write did land after all
                // (a lost response), the next attempt with this holder token finds its own bump.
                self.give_back(blob, &holder, id).await;
                let kind = if failure.meaning == Meaning::Fatal {
                    lease_core::BackendErrorKind::Fatal
                } else {
                    lease_core::BackendErrorKind::Transient
                };
                Err(BackendError::new(kind, NAME, failure.message().to_owned()))
            }
        }
    }

    /// Removes our unreadable metadata entries from a blob whose lease was just broken, on the
    /// ETag read (a concurrent change makes the break report a transient error: try again).
    async fn clear_unreadable_record(
        &self,
        blob: &BlobClient,
        key: &LeaseKey,
    ) -> Result<Option<LeaseRecord>, BackendError> {
        let Some(props) = self
            .properties(blob, None)
            .await
            .map_err(Failure::into_backend_error)?
        else {
            return Ok(None);
        };
        if fencing::decode(&props.metadata).is_ok() {
            // Someone rewrote it meanwhile; it reads now.
            return self.record_from(Some(blob), key, &props).await.map(Some);
        }
        let options = BlobClientSetMetadataOptions {
            if_match: props.etag,
            ..Default::default()
        };
        let kept = fencing::without_ours(&props.metadata);
        match blob.set_metadata(&kept, Some(options)).await {
            Ok(_) => Ok(Some(LeaseRecord::free(key.clone(), FencingToken::new(0)))),
            Err(e) => {
                let failure = Failure::from_sdk("clear an unreadable fencing record", &e);
                Err(match failure.meaning {
                    Meaning::Fatal => failure.into_backend_error(),
                    _ => BackendError::transient(
                        NAME,
                        format!(
                            "{} changed while its unreadable record was being cleared; try again: {}",
                            self.blob_name(key),
                            failure.message()
                        ),
                    ),
                })
            }
        }
    }

    /// The record to report when another lease is active: the stored holder, unless that is the
    /// asking holder (its lease is evidently not the active one).
    async fn held_record(
        &self,
        blob: &BlobClient,
        key: &LeaseKey,
        asking: &HolderToken,
    ) -> Option<LeaseRecord> {
        let props = self.properties(blob, None).await.ok()??;
        let stored = fencing::decode(&props.metadata).ok()?;
        let record = match stored {
            Some(stored) if stored.holder != *asking => with_details(
                LeaseRecord::held(key.clone(), stored.holder, stored.fencing),
                &stored,
                props.last_modified,
            ),
            Some(stored) => {
                LeaseRecord::free(key.clone(), stored.fencing).with_state(RecordState::Held)
            }
            None => {
                LeaseRecord::free(key.clone(), FencingToken::new(0)).with_state(RecordState::Held)
            }
        };
        Some(record)
    }

    /// The duration Azure renews `holder`'s lease to: the one it was acquired with.
    async fn granted_ttl(&self, blob: &BlobClient, holder: &HolderToken) -> Duration {
        let cached = self
            .granted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(holder)
            .copied();
        if let Some(ttl) = cached {
            return ttl;
        }
        // Acquired by another process or backend instance: the stored record says.
        match self.properties(blob, None).await {
            Ok(Some(props)) => match fencing::decode(&props.metadata) {
                Ok(Some(stored)) if stored.holder == *holder => {
                    self.remember(*holder, stored.ttl);
                    stored.ttl
                }
                // Never claim more than Azure certainly granted.
                _ => MIN_TTL,
            },
            _ => MIN_TTL,
        }
    }

    /// Builds the record for a blob from its properties; `verify` confirms a leased blob's
    /// recorded holder with a lease-conditioned read (one more request).
    async fn record_from(
        &self,
        blob: Option<&BlobClient>,
        key: &LeaseKey,
        props: &Properties,
    ) -> Result<LeaseRecord, BackendError> {
        let stored = fencing::decode(&props.metadata).map_err(|e| {
            BackendError::corrupt_record(NAME, format!("{}: {e}", self.blob_name(key)))
        })?;
        let fencing = stored.as_ref().map_or(FencingToken::new(0), |s| s.fencing);
        let record = match (props.lease_state, &stored) {
            (Some(LeaseState::Leased | LeaseState::Breaking), Some(stored)) => {
                let confirmed = match blob {
                    None => true,
                    Some(blob) => match self.properties(blob, Some(lease_id(&stored.holder))).await
                    {
                        Ok(_) => true,
                        Err(f) if f.meaning == Meaning::NotHeld => false,
                        Err(f) => return Err(f.into_backend_error()),
                    },
                };
                if confirmed {
                    with_details(
                        LeaseRecord::held(key.clone(), stored.holder, fencing),
                        stored,
                        props.last_modified,
                    )
                } else {
                    // Leased by someone who has not (yet) written a fencing record.
                    LeaseRecord::free(key.clone(), fencing).with_state(RecordState::Held)
                }
            }
            (Some(LeaseState::Leased | LeaseState::Breaking), None) => {
                LeaseRecord::free(key.clone(), fencing).with_state(RecordState::Held)
            }
            (Some(LeaseState::Expired), Some(stored)) => with_details(
                LeaseRecord::held(key.clone(), stored.holder, fencing),
                stored,
                props.last_modified,
            )
            .with_state(RecordState::Expired),
            _ => LeaseRecord::free(key.clone(), fencing),
        };
        Ok(record)
    }
}

fn with_details(
    record: LeaseRecord,
    stored: &FenceRecord,
    acquired_at: Option<SystemTime>,
) -> LeaseRecord {
    let record = record
        .with_metadata(stored.owner.clone())
        .with_ttl(stored.ttl);
    match acquired_at {
        Some(at) => record.with_acquired_at(at),
        None => record,
    }
}

fn meaning_of_kind(e: &BackendError) -> Meaning {
    if e.is_transient() {
        Meaning::Transient
    } else {
        Meaning::Fatal
    }
}

#[async_trait]
impl Backend for AzureBlobBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(MIN_TTL, MAX_TTL, ClockModel::StoreClock)
            .with_break(true)
            .with_takeover_tolerance(Duration::from_secs(1))
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        let secs = Self::lease_seconds(request.ttl)?;
        let ttl = Duration::from_secs(secs as u64);
        let blob = self.blob(&request.key);
        let id = lease_id(&request.holder);
        let first = self.acquire_lease(&blob, secs, &id).await;
        let acquired = match first {
            Ok(()) => Ok(()),
            Err(f) if matches!(f.meaning, Meaning::BlobMissing | Meaning::ContainerMissing) => {
                self.create_blob(&blob)
                    .await
                    .map_err(Failure::into_backend_error)?;
                self.acquire_lease(&blob, secs, &id).await
            }
            Err(f) => Err(f),
        };
        match acquired {
            Ok(()) => self.fence(&blob, request, ttl, &id).await,
            Err(f) if f.meaning == Meaning::Held => Ok(AcquireOutcome::Held(
                self.held_record(&blob, &request.key, &request.holder)
                    .await
                    .map(Box::new),
            )),
            Err(f) if f.meaning == Meaning::BlobMissing => Err(BackendError::transient(
                NAME,
                "the lease blob was deleted while acquiring",
            )),
            Err(f) => Err(f.into_backend_error()),
        }
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        // Azure renews to the acquired duration whatever is asked; still refuse what no lease
        // could have been granted, as acquire does.
        Self::lease_seconds(request.ttl)?;
        let blob = self.blob(&request.key);
        let result = blob
            .renew_lease(lease_id(&request.holder), None)
            .await
            .map_err(|e| Failure::from_sdk("renew lease", &e));
        match result {
            Ok(_) => Ok(RenewOutcome::Renewed(
                self.granted_ttl(&blob, &request.holder).await,
            )),
            Err(f) if is_gone(f.meaning) => Ok(RenewOutcome::NotHeld),
            Err(f) => Err(f.into_backend_error()),
        }
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        let blob = self.blob(&request.key);
        match self.release_lease(&blob, &lease_id(&request.holder)).await {
            Ok(()) => {
                self.forget(&request.holder);
                Ok(ReleaseOutcome::Released)
            }
            Err(f) if is_gone(f.meaning) => Ok(ReleaseOutcome::NotHeld),
            Err(f) => Err(f.into_backend_error()),
        }
    }

    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let blob = self.blob(key);
        let Some(props) = self
            .properties(&blob, None)
            .await
            .map_err(Failure::into_backend_error)?
        else {
            return Ok(None);
        };
        self.record_from(Some(&blob), key, &props).await.map(Some)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(format!("{}{prefix}", self.prefix)),
            include: Some(vec![ListBlobsIncludeItem::Metadata]),
            ..Default::default()
        };
        let mut pages = self
            .container
            .list_blobs(Some(options))
            .map_err(|e| Failure::from_sdk("list blobs", &e).into_backend_error())?
            .into_pages();
        let mut records = Vec::new();
        loop {
            let page = match pages.try_next().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(e) => {
                    let failure = Failure::from_sdk("list blobs", &e);
                    if failure.meaning == Meaning::ContainerMissing {
                        return Ok(Vec::new());
                    }
                    return Err(failure.into_backend_error());
                }
            };
            let body = page.into_model().map_err(|e| {
                BackendError::transient(
                    NAME,
                    format!(
                        "list blobs: unreadable answer: {}",
                        crate::error::redact(&e.to_string())
                    ),
                )
            })?;
            for item in body.blob_items {
                let Some(name) = item.name else { continue };
                // Blobs whose names are not keys are not lease records (someone else's data).
                let Some(key) = name
                    .strip_prefix(&self.prefix)
                    .and_then(|k| LeaseKey::new(k).ok())
                else {
                    continue;
                };
                let properties = item.properties.unwrap_or_default();
                let props = Properties {
                    etag: None,
                    metadata: item.metadata.and_then(|m| m.values).unwrap_or_default(),
                    lease_state: properties.lease_state,
                    last_modified: properties.last_modified.map(SystemTime::from),
                };
                // Without a blob client nothing is fetched: the only failure is a fencing
                // record we cannot decode, reported in its place instead of failing the list.
                let read = self.record_from(None, &key, &props).await;
                records.push(LeaseRecord::listed(key, read)?);
            }
        }
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(records)
    }

    /// Breaks the blob's lease at once. A blob whose fencing record cannot be read also loses our
    /// (unreadable) metadata entries, someone else's kept: its next grant then starts the counter
    /// from the clock, above any token it can have reached. Such a blob is reported as free with
    /// token 0 (no counter).
    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let before = match self.inspect(key).await {
            Ok(Some(before)) => Some(before),
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == lease_core::BackendErrorKind::CorruptRecord => {
                tracing::warn!(key = %key, error = %e,
                    "break clears an unreadable fencing record; the counter restarts from the clock");
                None
            }
            Err(e) => return Err(e),
        };
        let blob = self.blob(key);
        let options = BlobClientBreakLeaseOptions {
            break_period: Some(0),
            ..Default::default()
        };
        if let Err(e) = blob.break_lease(Some(options)).await {
            let failure = Failure::from_sdk("break lease", &e);
            match failure.meaning {
                Meaning::NotHeld => {}
                Meaning::BlobMissing | Meaning::ContainerMissing => return Ok(None),
                _ => return Err(failure.into_backend_error()),
            }
        }
        match before {
            Some(before) => Ok(Some(before)),
            None => self.clear_unreadable_record(&blob, key).await,
        }
    }
}

/// Our lease is not there: another id, no lease, or no blob at all.
fn is_gone(meaning: Meaning) -> bool {
    matches!(
        meaning,
        Meaning::NotHeld | Meaning::BlobMissing | Meaning::ContainerMissing
    )
}
