//! The backend trait: one attempt of each primitive operation on one store.
//!
//! A backend answers exactly one question per method: "how do I do this one conditional write (or
//! read) on my store?". Everything else — deadlines, the renewal loop, retries with backoff,
//! resolving lost responses, the lost-lease signal, waiting for a held key — lives once, in
//! [`Locker`](crate::Locker). A backend must not retry conditional writes on its own: a retried write
//! whose first attempt landed would look like "lost the race" (see `docs/protocol.md`).

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::BackendError;
use crate::key::LeaseKey;
use crate::token::{FencingToken, HolderMetadata, HolderToken};

/// One store that can grant leases. Implement this to add a backend; prove it with
/// `lease_core::conformance` (feature `conformance`).
///
/// Rules every implementation follows (the conformance kit checks them):
///
/// - **acquire** grants the key when it has no holder, or its holder's expiry has passed *on the
///   store's clock* (or, for [`ClockModel::ObservedExpiry`], the contender has observed the same
///   record unchanged for a full TTL), and in the same atomic step stores the request's holder token
///   and a fencing token one greater than the last one ever issued for the key. Acquiring with the
///   holder token that already holds the key succeeds again with the *same* fencing token and extends
///   the expiry (so a retried acquire is idempotent).
/// - **renew** extends the expiry only if the stored holder token is the request's and the grant has
///   not been released or taken over; otherwise it answers [`RenewOutcome::NotHeld`].
/// - **release** frees the key only if the stored holder token is the request's, and keeps the
///   fencing counter (records are never deleted); otherwise [`ReleaseOutcome::NotHeld`], leaving the
///   record untouched.
/// - **inspect** reads the record without changing it.
/// - every method is **one attempt**: no internal retries of conditional writes. Failures whose
///   outcome is unknown (a timeout after sending, a dropped connection) are reported as
///   [`BackendErrorKind::Transient`](crate::BackendErrorKind::Transient); the protocol then reads the
///   record back.
/// - a stored record that cannot be understood is a
///   [`BackendErrorKind::CorruptRecord`](crate::BackendErrorKind::CorruptRecord) error, never a panic.
/// - `Debug` output, errors and logs never contain secrets.
///
/// ```
/// use lease_core::{Backend, Locker, MemoryBackend};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
/// // Any backend goes behind a Locker; MemoryBackend is the in-process one.
/// let backend = MemoryBackend::new();
/// assert_eq!(backend.name(), "memory");
/// let locker = Locker::new(backend);
/// let lease = locker.try_acquire("reports").await?.expect("the key is free");
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and errors, such as `"postgres"`.
    fn name(&self) -> &'static str;

    /// What the protocol needs to know about this backend.
    fn capabilities(&self) -> Capabilities;

    /// One attempt to acquire `request.key` for `request.holder` for `request.ttl`.
    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError>;

    /// One attempt to extend the grant held by `request.holder` by `request.ttl` from now.
    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError>;

    /// Renews several grants, ideally in one round trip. Returns one result per request, in the
    /// order of the requests (the kit checks it: an answer for the wrong lease could extend a holder
    /// that lost its grant). Each reported TTL is what the store applied, as for `renew`.
    ///
    /// The default calls [`Backend::renew`] for each request in turn; backends that can batch
    /// (one SQL statement for all of a process's leases) override it and set
    /// [`Capabilities::batch_renew`].
    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            results.push(self.renew(request).await);
        }
        results
    }

    /// One attempt to free the grant held by `request.holder`, keeping the fencing counter.
    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError>;

    /// Reads the record of `key`, if the store has one.
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError>;

    /// Lists the records whose key starts with `prefix` (`""` lists every record), sorted by key.
    ///
    /// A record that cannot be decoded (a corrupt or foreign lease object, blob, value or row) does
    /// not fail the listing: it is returned in its place as [`LeaseRecord::unreadable`], with the
    /// reason ([`LeaseRecord::listed`] makes that choice for one record). The listing fails whole
    /// only when the store itself fails (network, auth, a missing table or bucket).
    ///
    /// [`Locker::list`](crate::Locker::list) checks the prefix (the key character set) before
    /// calling this. A backend may bound how many records one call returns; it says so in its docs.
    /// The default reports [`BackendErrorKind::Unsupported`](crate::BackendErrorKind::Unsupported).
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        let _ = prefix;
        Err(BackendError::unsupported(self.name(), "list"))
    }

    /// Administrative force-release: frees the key whoever holds it, keeping the fencing counter.
    /// Returns the record as it was before, if there was one.
    ///
    /// The holder is not told directly; it finds out at its next renewal and its deadline protects the
    /// resource meanwhile only if the resource checks fencing tokens. The default reports
    /// [`BackendErrorKind::Unsupported`](crate::BackendErrorKind::Unsupported).
    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let _ = key;
        Err(BackendError::unsupported(self.name(), "break"))
    }

    /// Waits until `key` may have changed (a release, a break), or `max_wait` passes, whichever
    /// comes first. Spurious early returns are allowed.
    ///
    /// The default sleeps for `max_wait` (plain polling). Backends with change notifications
    /// (PostgreSQL `LISTEN/NOTIFY`, [`MemoryBackend`](crate::MemoryBackend)) override it and set
    /// [`Capabilities::notifies_waiters`].
    async fn wait_for_change(
        &self,
        key: &LeaseKey,
        max_wait: Duration,
    ) -> Result<(), BackendError> {
        let _ = key;
        tokio::time::sleep(max_wait).await;
        Ok(())
    }
}

/// Whose clock decides that a grant has expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClockModel {
    /// The store compares the expiry with its own clock (a database server, the Azure service, the
    /// process for [`MemoryBackend`](crate::MemoryBackend)). Only clock *rate* matters to safety.
    StoreClock,
    /// Nobody's wall clock: a contender takes over only after it has itself observed the same record
    /// version unchanged for a full TTL on its monotonic clock (the Kubernetes and DynamoDB lock
    /// client rule). Takeover can take up to about twice the TTL.
    ObservedExpiry,
}

/// What the protocol needs to know about a backend.
///
/// ```
/// use std::time::Duration;
/// use lease_core::{Capabilities, ClockModel};
/// let caps = Capabilities::new(Duration::from_secs(15), Duration::from_secs(60), ClockModel::StoreClock)
///     .with_takeover_tolerance(Duration::from_secs(1));
/// assert!(caps.check_ttl(Duration::from_secs(10)).is_err());
/// assert!(caps.check_ttl(Duration::from_secs(30)).is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The shortest TTL the store accepts.
    pub min_ttl: Duration,
    /// The longest TTL the store accepts.
    pub max_ttl: Duration,
    /// Whose clock decides expiry.
    pub clock: ClockModel,
    /// [`Backend::wait_for_change`] returns on a release instead of only sleeping.
    pub notifies_waiters: bool,
    /// [`Backend::renew_many`] takes one round trip for the whole batch.
    pub batch_renew: bool,
    /// [`Backend::break_lease`] is implemented.
    pub can_break: bool,
    /// How long after a stopped holder's TTL another contender can at most have to wait, beyond the
    /// TTL itself, because of the store's time granularity (the conformance kit allows this much).
    pub takeover_tolerance: Duration,
    /// For [`ClockModel::ObservedExpiry`]: the rule contenders follow before taking over (the
    /// conformance kit checks that no takeover comes earlier). `None` for other clock models.
    pub observation: Option<crate::observed::ObservationRule>,
}

impl Capabilities {
    /// Capabilities with the given TTL range and clock model, and no optional features.
    pub fn new(min_ttl: Duration, max_ttl: Duration, clock: ClockModel) -> Self {
        Self {
            min_ttl,
            max_ttl,
            clock,
            notifies_waiters: false,
            batch_renew: false,
            can_break: false,
            takeover_tolerance: Duration::from_millis(500),
            observation: None,
        }
    }

    /// Declares that [`Backend::wait_for_change`] is notified on release.
    pub fn with_notifies_waiters(mut self, yes: bool) -> Self {
        self.notifies_waiters = yes;
        self
    }

    /// Declares that [`Backend::renew_many`] is one round trip.
    pub fn with_batch_renew(mut self, yes: bool) -> Self {
        self.batch_renew = yes;
        self
    }

    /// Declares that [`Backend::break_lease`] is implemented.
    pub fn with_break(mut self, yes: bool) -> Self {
        self.can_break = yes;
        self
    }

    /// Sets [`Capabilities::takeover_tolerance`].
    pub fn with_takeover_tolerance(mut self, tolerance: Duration) -> Self {
        self.takeover_tolerance = tolerance;
        self
    }

    /// Declares the [`ObservationRule`](crate::observed::ObservationRule) of an
    /// [`ClockModel::ObservedExpiry`] backend.
    pub fn with_observation(mut self, rule: crate::observed::ObservationRule) -> Self {
        self.observation = Some(rule);
        self
    }

    /// Checks that `ttl` is within the store's range.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::InvalidInput) for the field `ttl`.
    pub fn check_ttl(&self, ttl: Duration) -> Result<(), crate::InvalidInput> {
        if ttl < self.min_ttl || ttl > self.max_ttl {
            return Err(crate::InvalidInput::new(
                "ttl",
                format!(
                    "{ttl:?} is outside this backend's range {:?}..={:?}",
                    self.min_ttl, self.max_ttl
                ),
            ));
        }
        Ok(())
    }
}

/// A request to acquire a key; see [`Backend::acquire`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AcquireRequest {
    /// The key.
    pub key: LeaseKey,
    /// The holder token the client generated for this grant.
    pub holder: HolderToken,
    /// How long the grant lasts from when the store applies it.
    pub ttl: Duration,
    /// Who is asking, stored for [`Backend::inspect`].
    pub metadata: HolderMetadata,
}

impl AcquireRequest {
    /// A request for `key` by `holder` for `ttl`.
    pub fn new(
        key: LeaseKey,
        holder: HolderToken,
        ttl: Duration,
        metadata: HolderMetadata,
    ) -> Self {
        Self {
            key,
            holder,
            ttl,
            metadata,
        }
    }
}

/// A request to extend a grant; see [`Backend::renew`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RenewRequest {
    /// The key.
    pub key: LeaseKey,
    /// The holder token of the grant to extend.
    pub holder: HolderToken,
    /// The new expiry, counted from when the store applies the renewal.
    pub ttl: Duration,
}

impl RenewRequest {
    /// A request to extend `holder`'s grant of `key` to `ttl` from now.
    pub fn new(key: LeaseKey, holder: HolderToken, ttl: Duration) -> Self {
        Self { key, holder, ttl }
    }
}

/// A request to free a grant; see [`Backend::release`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReleaseRequest {
    /// The key.
    pub key: LeaseKey,
    /// The holder token of the grant to free.
    pub holder: HolderToken,
}

impl ReleaseRequest {
    /// A request to free `holder`'s grant of `key`.
    pub fn new(key: LeaseKey, holder: HolderToken) -> Self {
        Self { key, holder }
    }
}

/// A successful acquisition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Grant {
    /// The fencing token minted with this grant.
    pub fencing: FencingToken,
    /// The TTL the store actually granted (a store may round the requested TTL).
    pub ttl: Duration,
}

impl Grant {
    /// A grant with `fencing` for `ttl`.
    pub fn new(fencing: FencingToken, ttl: Duration) -> Self {
        Self { fencing, ttl }
    }
}

/// The answer to [`Backend::acquire`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AcquireOutcome {
    /// The key is ours.
    Acquired(Grant),
    /// Someone else holds the key; their record, when the store returned it.
    Held(Option<Box<LeaseRecord>>),
}

/// The answer to [`Backend::renew`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RenewOutcome {
    /// Extended; the TTL the store granted, counted from when it applied the renewal.
    Renewed(Duration),
    /// The grant is not ours any more (released, broken, or expired and taken).
    NotHeld,
}

/// The answer to [`Backend::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseOutcome {
    /// Freed.
    Released,
    /// The grant was not ours (already released, broken, or expired and taken); nothing changed.
    NotHeld,
}

/// The state of a stored record, as the store sees it when read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordState {
    /// A holder's grant is in force.
    Held,
    /// Released (or never granted, but with a fencing counter kept).
    Free,
    /// The holder's expiry has passed; the next acquire takes it over.
    Expired,
    /// The stored record could not be decoded (corrupt, foreign, or from an unknown format); only
    /// [`Backend::list`] reports it, with the reason in [`LeaseRecord::unreadable`].
    ///
    /// Nothing is known about it: treat it as taken, never as free. Acquiring its key fails with a
    /// [`CorruptRecord`](crate::BackendErrorKind::CorruptRecord) error until an administrator
    /// breaks it.
    Unreadable,
}

/// A lease record as stored: who holds the key (if anyone), the last fencing token issued, timing.
///
/// Built by backends with [`LeaseRecord::held`] or [`LeaseRecord::free`] and the `with_*` methods,
/// or [`LeaseRecord::unreadable`] for a record a listing found but could not decode.
///
/// ```
/// use std::time::Duration;
/// use lease_core::{FencingToken, HolderToken, LeaseKey, LeaseRecord, RecordState};
/// let me = HolderToken::generate();
/// let record = LeaseRecord::held(LeaseKey::new("k")?, me, FencingToken::new(3))
///     .with_ttl(Duration::from_secs(30));
/// assert!(record.is_held_by(&me));
/// assert_eq!(record.state, RecordState::Held);
/// # Ok::<(), lease_core::InvalidInput>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseRecord {
    /// The key.
    pub key: LeaseKey,
    /// Held, free, expired or unreadable.
    pub state: RecordState,
    /// The holder token of the last grant, when there is one.
    pub holder: Option<HolderToken>,
    /// The holder's metadata, when there is a holder.
    pub metadata: Option<HolderMetadata>,
    /// The last fencing token issued for the key. For an [`RecordState::Unreadable`] record it is
    /// `FencingToken::new(0)`, a placeholder: the real counter is unknown, never use it.
    pub fencing: FencingToken,
    /// When the current grant was acquired (store's wall clock, for display only).
    pub acquired_at: Option<SystemTime>,
    /// The TTL of the current grant. A held record states it: a grant of ours found by reading back
    /// (after an unknown outcome) is kept only for this TTL, and given back when it is missing.
    pub ttl: Option<Duration>,
    /// How long the current grant had left when the record was read, by the store's clock
    /// (an estimate for display and wake-ups; never used for safety).
    pub expires_in: Option<Duration>,
    /// Why the record could not be decoded, for a [`RecordState::Unreadable`] record (`None` for
    /// every other state). Never contains secrets; it may quote a short part of what was stored.
    pub unreadable: Option<String>,
}

impl LeaseRecord {
    /// A record held by `holder` with the last issued token `fencing`.
    pub fn held(key: LeaseKey, holder: HolderToken, fencing: FencingToken) -> Self {
        Self {
            key,
            state: RecordState::Held,
            holder: Some(holder),
            metadata: None,
            fencing,
            acquired_at: None,
            ttl: None,
            expires_in: None,
            unreadable: None,
        }
    }

    /// A record nobody holds, keeping the last issued token `fencing`.
    pub fn free(key: LeaseKey, fencing: FencingToken) -> Self {
        Self {
            key,
            state: RecordState::Free,
            holder: None,
            metadata: None,
            fencing,
            acquired_at: None,
            ttl: None,
            expires_in: None,
            unreadable: None,
        }
    }

    /// A record found under `key` that could not be decoded, and `why` (a
    /// [`CorruptRecord`](crate::BackendErrorKind::CorruptRecord) error's message, say).
    ///
    /// It has no holder, no timing and no trustworthy fencing token: `fencing` is
    /// `FencingToken::new(0)` and must not be used.
    ///
    /// ```
    /// use lease_core::{FencingToken, LeaseKey, LeaseRecord, RecordState};
    /// let record = LeaseRecord::unreadable(LeaseKey::new("jobs/x")?, "not a lease document");
    /// assert_eq!(record.state, RecordState::Unreadable);
    /// assert_eq!(record.unreadable.as_deref(), Some("not a lease document"));
    /// assert!(record.holder.is_none() && !record.is_held());
    /// assert_eq!(record.fencing, FencingToken::new(0));
    /// # Ok::<(), lease_core::InvalidInput>(())
    /// ```
    pub fn unreadable(key: LeaseKey, why: impl Into<String>) -> Self {
        Self {
            key,
            state: RecordState::Unreadable,
            holder: None,
            metadata: None,
            fencing: FencingToken::new(0),
            acquired_at: None,
            ttl: None,
            expires_in: None,
            unreadable: Some(why.into()),
        }
    }

    /// Whether the record could not be decoded ([`RecordState::Unreadable`]): treat it as taken.
    pub fn is_unreadable(&self) -> bool {
        self.state == RecordState::Unreadable
    }

    /// What [`Backend::list`] puts in `key`'s place after reading its record: the record, or
    /// [`LeaseRecord::unreadable`] with the error's message when the stored record cannot be
    /// decoded ([`CorruptRecord`](crate::BackendErrorKind::CorruptRecord)). Any other error is the
    /// store failing, returned to fail the whole listing.
    ///
    /// ```
    /// use lease_core::{BackendError, BackendErrorKind, LeaseKey, LeaseRecord, RecordState};
    /// let key = LeaseKey::new("jobs/x")?;
    /// let corrupt = BackendError::new(BackendErrorKind::CorruptRecord, "mine", "not a lease");
    /// let listed = LeaseRecord::listed(key.clone(), Err(corrupt)).unwrap();
    /// assert_eq!(listed.state, RecordState::Unreadable);
    /// let down = BackendError::transient("mine", "connection refused");
    /// assert!(LeaseRecord::listed(key, Err(down)).is_err());
    /// # Ok::<(), lease_core::InvalidInput>(())
    /// ```
    ///
    /// # Errors
    /// `read`'s error when it is not a corrupt record.
    pub fn listed(
        key: LeaseKey,
        read: Result<LeaseRecord, BackendError>,
    ) -> Result<LeaseRecord, BackendError> {
        match read {
            Err(e) if e.kind() == crate::BackendErrorKind::CorruptRecord => {
                Ok(Self::unreadable(key, e.message()))
            }
            read => read,
        }
    }

    /// Sets the state (for example [`RecordState::Expired`]).
    pub fn with_state(mut self, state: RecordState) -> Self {
        self.state = state;
        self
    }

    /// Sets the holder's metadata.
    pub fn with_metadata(mut self, metadata: HolderMetadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets when the grant was acquired.
    pub fn with_acquired_at(mut self, at: SystemTime) -> Self {
        self.acquired_at = Some(at);
        self
    }

    /// Sets the grant's TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the remaining time on the store's clock.
    pub fn with_expires_in(mut self, remaining: Duration) -> Self {
        self.expires_in = Some(remaining);
        self
    }

    /// Whether `holder`'s grant is the one in force.
    pub fn is_held_by(&self, holder: &HolderToken) -> bool {
        self.state == RecordState::Held && self.holder.as_ref() == Some(holder)
    }

    /// Whether some grant is in force.
    pub fn is_held(&self) -> bool {
        self.state == RecordState::Held
    }
}
