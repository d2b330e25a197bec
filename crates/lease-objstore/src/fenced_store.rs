//! [`FencedStore`]: an [`ObjectStore`] whose every write is conditional and carries a fencing
//! token, refusing to write over an object recorded under a newer one.

use std::fmt;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lease_core::{FencingToken, StaleToken};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, UpdateVersion,
};

/// The object metadata name that holds the fencing token of an object's last writer
/// (`x-amz-meta-leasefencingtoken` on S3, `x-ms-meta-leasefencingtoken` on Azure,
/// `x-goog-meta-leasefencingtoken` on GCS). Letters only: Azure metadata names must be C#
/// identifiers (no `-`), and some proxies drop header names with `_`.
pub const FENCING_TOKEN_ATTRIBUTE: &str = "leasefencingtoken";

/// How many times a put re-reads and re-decides after a concurrent write changed the object
/// before giving up with [`FencedStoreError::Contended`].
const MAX_ATTEMPTS: usize = 8;

const STORE: &str = "FencedStore";

/// Writes to an [`ObjectStore`] with one fencing token: every put is conditional on the version
/// it read (create-if-absent, or update-if-unchanged) and records the token in the object's
/// metadata ([`FENCING_TOKEN_ATTRIBUTE`]); a put over an object recorded under a newer token is
/// refused with [`StaleToken`].
///
/// Make one per lease (`FencedStore::new(store, lease.fencing_token())`) and write through it.
/// Reads and listings pass through. A put whose conditional write loses to a concurrent writer
/// reads the object again and decides again (stale, unfenced, or write on the new version); it
/// never retries blindly. What cannot be made conditional is refused with
/// [`object_store::Error::NotSupported`] rather than done unfenced: deletes (no store offers a
/// conditional delete through `object_store`), multipart uploads (no precondition on completion),
/// copies and renames (they carry the source's metadata, not this token).
///
/// Objects that carry no token were written around the fence (or before it was adopted); they
/// are refused unless [`FencedStore::adopt_unfenced`] says otherwise. A store or proxy that drops
/// user metadata then fails loudly instead of letting an old token through.
///
/// Needs conditional puts: S3 (and compatible stores with `If-Match`), Azure Blob, GCS (whose
/// updates are conditional on the generation, which the read supplies as the version) and
/// `InMemory`. `LocalFileSystem` has no conditional update and fails with `NotImplemented`.
///
/// Errors: refusals are `object_store::Error::Generic` (store `FencedStore`) or `NotSupported`
/// whose source is a [`FencedStoreError`]; find the stale token in any error chain with
/// [`StaleToken::find`].
///
/// ```
/// use std::sync::Arc;
/// use lease_objstore::object_store::{memory::InMemory, path::Path, ObjectStoreExt};
/// use lease_objstore::{FencedStore, FencingToken, StaleToken};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bucket = Arc::new(InMemory::new());
/// let report = Path::from("reports/daily.csv");
/// let successor = FencedStore::new(bucket.clone(), FencingToken::new(8));
/// successor.put(&report, "day,total\n".into()).await?;
///
/// let stale = FencedStore::new(bucket.clone(), FencingToken::new(7)); // a holder that lost its lease
/// let err = stale.put(&report, "overwrite".into()).await.unwrap_err();
/// assert_eq!(StaleToken::find(&err).map(|s| s.current()), Some(FencingToken::new(8)));
/// assert_eq!(bucket.get(&report).await?.bytes().await?, "day,total\n");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FencedStore<S> {
    inner: S,
    token: FencingToken,
    adopt_unfenced: bool,
}

impl<S: ObjectStore> FencedStore<S> {
    /// Writes to `inner` with `token`.
    pub fn new(inner: S, token: FencingToken) -> Self {
        Self {
            inner,
            token,
            adopt_unfenced: false,
        }
    }

    /// Whether a put may write over an object that carries no fencing token (default `false`:
    /// refused with [`FencedStoreError::Unfenced`]). Turn it on to take over objects written
    /// before fencing was adopted; it also admits writes over anything a raw writer puts there.
    #[must_use]
    pub fn adopt_unfenced(mut self, adopt: bool) -> Self {
        self.adopt_unfenced = adopt;
        self
    }

    /// The token this store writes with.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The token recorded on the object at `location`: `None` when there is no object,
    /// `Some(None)` when it carries no token.
    ///
    /// # Errors
    /// The store's errors, and [`FencedStoreError::CorruptToken`] for a token that does not parse.
    pub async fn recorded_token(
        &self,
        location: &Path,
    ) -> object_store::Result<Option<Option<FencingToken>>> {
        Ok(self.read(location).await?.map(|(_, token)| token))
    }

    /// The object's version and recorded token, or `None` when absent.
    async fn read(
        &self,
        location: &Path,
    ) -> object_store::Result<Option<(UpdateVersion, Option<FencingToken>)>> {
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let result = match self.inner.get_opts(location, head).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let token = match result
            .attributes
            .get(&Attribute::Metadata(FENCING_TOKEN_ATTRIBUTE.into()))
        {
            None => None,
            Some(value) => Some(value.as_ref().parse::<FencingToken>().map_err(|_| {
                refusal(FencedStoreError::CorruptToken {
                    path: location.to_string(),
                    value: value.as_ref().chars().take(40).collect(),
                })
            })?),
        };
        Ok(Some((version, token)))
    }

    /// Whether this token may write over an object that recorded `recorded`.
    fn check(&self, location: &Path, recorded: Option<FencingToken>) -> object_store::Result<()> {
        match recorded {
            Some(current) if current > self.token => Err(refusal(FencedStoreError::Stale {
                path: location.to_string(),
                stale: StaleToken::new(self.token, current),
            })),
            Some(_) => Ok(()),
            None if self.adopt_unfenced => Ok(()),
            None => Err(refusal(FencedStoreError::Unfenced {
                path: location.to_string(),
            })),
        }
    }
}

/// A refusal as the error an [`ObjectStore`] returns.
fn refusal(error: FencedStoreError) -> object_store::Error {
    match error {
        FencedStoreError::NotFenceable { .. } => object_store::Error::NotSupported {
            source: Box::new(error),
        },
        _ => object_store::Error::Generic {
            store: STORE,
            source: Box::new(error),
        },
    }
}

fn not_fenceable(operation: &'static str) -> object_store::Error {
    refusal(FencedStoreError::NotFenceable { operation })
}

/// Why a [`FencedStore`] refused, as the source of the `object_store::Error` it returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FencedStoreError {
    /// The object records a newer token: the lease was lost and a newer holder wrote.
    #[error(
        "the object {path} refused token {}: token {} was recorded",
        stale.presented(),
        stale.current()
    )]
    Stale {
        /// The object.
        path: String,
        /// The refused and the recorded token.
        #[source]
        stale: StaleToken,
    },
    /// The object carries no token: it was written around the fence. See
    /// [`FencedStore::adopt_unfenced`].
    #[error(
        "the object {path} carries no fencing token (written without the fence, or its metadata \
         was dropped): refusing to write over it"
    )]
    Unfenced {
        /// The object.
        path: String,
    },
    /// The token metadata of the object does not parse.
    #[error("the object {path} carries the fencing token {value:?}, which is not a token")]
    CorruptToken {
        /// The object.
        path: String,
        /// The value (its first 40 characters).
        value: String,
    },
    /// The operation cannot be made conditional on this store, so it is not done.
    #[error("{operation} cannot be fenced (no precondition covers it): not done")]
    NotFenceable {
        /// The operation (`delete`, `put_multipart`, `copy`, `rename`).
        operation: &'static str,
    },
    /// Concurrent writers changed the object on every attempt.
    #[error("the object {path} changed under every one of {attempts} conditional writes")]
    Contended {
        /// The object.
        path: String,
        /// The attempts made (each after a fresh read).
        attempts: usize,
    },
}

impl<S: fmt::Display> fmt::Display for FencedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FencedStore({}, token {})", self.inner, self.token)
    }
}

impl<S: fmt::Debug> fmt::Debug for FencedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FencedStore")
            .field("inner", &self.inner)
            .field("token", &self.token)
            .field("adopt_unfenced", &self.adopt_unfenced)
            .finish()
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FencedStore<S> {
    /// Writes conditionally with the token. `PutMode::Overwrite` (the default) means "whatever
    /// version is there, if its token is not newer"; `Create` and `Update(version)` keep their
    /// meaning and add the token check.
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let PutOptions {
            mode,
            tags,
            mut attributes,
            extensions,
        } = opts;
        attributes.insert(
            Attribute::Metadata(FENCING_TOKEN_ATTRIBUTE.into()),
            AttributeValue::from(self.token.to_string()),
        );
        let put = |mode: PutMode| {
            let opts = PutOptions {
                mode,
                tags: tags.clone(),
                attributes: attributes.clone(),
                extensions: extensions.clone(),
            };
            self.inner.put_opts(location, payload.clone(), opts)
        };
        match mode {
            PutMode::Create => match put(PutMode::Create).await {
                // Say "stale" when the object that won is a newer holder's.
                Err(e @ object_store::Error::AlreadyExists { .. }) => {
                    match self.read(location).await? {
                        Some((_, recorded)) => self.check(location, recorded).and(Err(e)),
                        None => Err(e),
                    }
                }
                other => other,
            },
            PutMode::Update(expected) => {
                // The token check is about the version the caller read: if it is still there, its
                // token decides; if not, the store would refuse the update anyway.
                match self.read(location).await? {
                    Some((current, recorded)) if same_version(&current, &expected) => {
                        self.check(location, recorded)?;
                    }
                    _ => {}
                }
                put(PutMode::Update(expected)).await
            }
            PutMode::Overwrite => {
                for _ in 0..MAX_ATTEMPTS {
                    let mode = match self.read(location).await? {
                        None => PutMode::Create,
                        Some((version, recorded)) => {
                            self.check(location, recorded)?;
                            PutMode::Update(version)
                        }
                    };
                    match put(mode).await {
                        // Someone wrote between the read and the put: read again and decide again.
                        Err(
                            object_store::Error::AlreadyExists { .. }
                            | object_store::Error::Precondition { .. },
                        ) => {}
                        other => return other,
                    }
                }
                Err(refusal(FencedStoreError::Contended {
                    path: location.to_string(),
                    attempts: MAX_ATTEMPTS,
                }))
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(not_fenceable("put_multipart"))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations
            .map(|location| location.and_then(|_| Err(not_fenceable("delete"))))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(not_fenceable("copy"))
    }

    async fn rename_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: RenameOptions,
    ) -> object_store::Result<()> {
        Err(not_fenceable("rename"))
    }
}

/// Whether a read version is the one a caller named (an e-tag or a version id must match; one
/// given on one side only is not compared).
fn same_version(read: &UpdateVersion, expected: &UpdateVersion) -> bool {
    let matches = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    (expected.e_tag.is_some() || expected.version.is_some())
        && matches(&read.e_tag, &expected.e_tag)
        && matches(&read.version, &expected.version)
}
