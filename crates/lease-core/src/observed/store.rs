//! What a store with conditional writes implements: read, create-if-absent, update-if-unchanged.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::BackendError;
use crate::key::LeaseKey;
use crate::token::{FencingToken, HolderMetadata, HolderToken};

/// What one lease object holds, whatever its encoding on the store.
///
/// Built with [`StoredLease::held`] or [`StoredLease::free`] and the `with_*` methods; a store's
/// decoder fills in what it read.
///
/// ```
/// use std::time::Duration;
/// use lease_core::{FencingToken, HolderToken};
/// use lease_core::observed::StoredLease;
/// let lease = StoredLease::held(HolderToken::generate(), FencingToken::new(4), Duration::from_secs(30));
/// assert!(!lease.is_free());
/// let free = StoredLease::free(FencingToken::new(4)).with_revision(9);
/// assert!(free.is_free());
/// assert_eq!(free.revision, 9);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredLease {
    /// The holder token of the grant in force; `None` when the lease is free.
    pub holder: Option<HolderToken>,
    /// Who holds it, for display.
    pub metadata: Option<HolderMetadata>,
    /// The last fencing token issued for the key (kept when the lease is freed).
    pub fencing: FencingToken,
    /// The TTL of the grant in force (`None` when free).
    pub ttl: Option<Duration>,
    /// When the grant was made, on the granting process's wall clock: for display only.
    pub acquired_at: Option<SystemTime>,
    /// How many times the object has been written. Every write stores one more than the object it
    /// replaces, so no write repeats an earlier object's bytes: stores whose version is a hash of
    /// the content (S3 ETags) still show a new version for every renewal.
    pub revision: u64,
}

impl StoredLease {
    /// A lease held by `holder` for `ttl`, with the last issued token `fencing`, acquired now,
    /// revision 1.
    pub fn held(holder: HolderToken, fencing: FencingToken, ttl: Duration) -> Self {
        Self {
            holder: Some(holder),
            metadata: None,
            fencing,
            ttl: Some(ttl),
            acquired_at: Some(SystemTime::now()),
            revision: 1,
        }
    }

    /// A lease nobody holds, keeping the last issued token `fencing`, revision 1.
    pub fn free(fencing: FencingToken) -> Self {
        Self {
            holder: None,
            metadata: None,
            fencing,
            ttl: None,
            acquired_at: None,
            revision: 1,
        }
    }

    /// Sets the holder's metadata.
    pub fn with_metadata(mut self, metadata: HolderMetadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets (or clears) when the grant was made.
    pub fn with_acquired_at(mut self, at: Option<SystemTime>) -> Self {
        self.acquired_at = at;
        self
    }

    /// Sets the write count.
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.revision = revision;
        self
    }

    /// Whether nobody holds the lease.
    pub fn is_free(&self) -> bool {
        self.holder.is_none()
    }

    /// The same grant for a fresh `ttl`, as the next revision.
    pub(crate) fn renewed(&self, ttl: Duration) -> Self {
        let mut next = self.clone();
        next.ttl = Some(ttl);
        next.revision = self.revision.wrapping_add(1);
        next
    }

    /// The freed lease (counter kept), as the next revision.
    pub(crate) fn released(&self) -> Self {
        Self::free(self.fencing).with_revision(self.revision.wrapping_add(1))
    }
}

/// The answer to [`ConditionalStore::read`].
#[derive(Debug)]
pub enum ReadOutcome<V> {
    /// No object for the key.
    Absent,
    /// The object, its version, and what it says.
    Found {
        /// The version to make a conditional write on.
        version: V,
        /// The decoded lease.
        lease: StoredLease,
    },
    /// An object this store cannot decode (garbage, another format, too large). Nothing is ever
    /// written over it except by an explicit break.
    Corrupt {
        /// Its version (a break writes conditionally on it).
        version: V,
        /// A [`CorruptRecord`](crate::BackendErrorKind::CorruptRecord) error naming the object.
        error: BackendError,
    },
}

/// The answer to a conditional write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome<V> {
    /// Written; the new version.
    Written(V),
    /// The condition failed: the object already exists (create) or has another version (update).
    Conflict,
}

/// A store with conditional writes and no clock, such as an object store: the small trait
/// [`ObservedExpiryBackend`](super::ObservedExpiryBackend) turns into a lease
/// [`Backend`](crate::Backend).
///
/// Rules for implementations:
///
/// - every method is **one attempt**: no retries of a conditional write inside (a retried write
///   whose first attempt landed would come back as [`WriteOutcome::Conflict`], a lost race that was
///   in fact won). A failure whose outcome is unknown is a
///   [`Transient`](crate::BackendErrorKind::Transient) error.
/// - a version identifies one write: after any successful write the object's version differs from
///   every version it had before (ETags, generations, counters all do; a content hash does because
///   every write's [`StoredLease::revision`] differs).
/// - an object that cannot be decoded is [`ReadOutcome::Corrupt`], never a panic or a guess.
///
/// See [`InMemoryConditionalStore`](super::InMemoryConditionalStore) for a complete example.
#[async_trait]
pub trait ConditionalStore: Send + Sync + fmt::Debug + 'static {
    /// The version a conditional write checks (an ETag, a generation number, a counter).
    type Version: Clone + Eq + Send + Sync + fmt::Debug + 'static;

    /// A short name for logs and errors, such as `"s3"`.
    fn name(&self) -> &'static str;

    /// The shortest and longest TTL this store accepts.
    fn ttl_range(&self) -> (Duration, Duration);

    /// Reads the object of `key`.
    async fn read(&self, key: &LeaseKey) -> Result<ReadOutcome<Self::Version>, BackendError>;

    /// Writes `lease` as the object of `key` only if there is no such object.
    async fn create(
        &self,
        key: &LeaseKey,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<Self::Version>, BackendError>;

    /// Replaces the object of `key` with `lease` only if its version is still `expected`.
    async fn update(
        &self,
        key: &LeaseKey,
        expected: &Self::Version,
        lease: &StoredLease,
    ) -> Result<WriteOutcome<Self::Version>, BackendError>;

    /// Reads every object whose key starts with `prefix` (`""`: all). The default reports
    /// [`Unsupported`](crate::BackendErrorKind::Unsupported).
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<(LeaseKey, ReadOutcome<Self::Version>)>, BackendError> {
        let _ = prefix;
        Err(BackendError::unsupported(self.name(), "list"))
    }
}
