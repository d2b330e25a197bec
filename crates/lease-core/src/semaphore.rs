//! Counting semaphores: at most N holders of one name at once, each permit fenced on its own.
//!
//! A semaphore of N permits is N slot leases, `NAME/permit-0` … `NAME/permit-{N-1}`, taken
//! through an ordinary [`Locker`]. So every backend has semaphores without code of its own, and a
//! permit is a [`Lease`]: renewed, with a deadline, a lost signal and its own fencing token (the
//! slot's counter). Exclusion per slot gives "at most N holders"; see `docs/semaphore.md` for the
//! design, its cost in requests and how to fence a resource per permit.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{LeaseRecord, RecordState};
use crate::error::{BackendErrorKind, Error, InvalidInput, LostReason};
use crate::key::LeaseKey;
use crate::lease::{Lease, LeaseHandle};
use crate::locker::Locker;
use crate::token::{FencingToken, HolderMetadata, HolderToken};

/// What separates a semaphore's name from a slot number in a slot key: `NAME/permit-3`.
const SLOT_INFIX: &str = "/permit-";

/// The word holder metadata ends with, before the permit count: `host pid=7 permits=3`.
const PERMITS_TAG: &str = "permits=";

/// The options of a [`Semaphore`].
///
/// ```
/// use lease_core::SemaphoreOptions;
/// let options = SemaphoreOptions::new(4).with_permit_count_check(false);
/// assert_eq!(options.permits, 4);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SemaphoreOptions {
    /// How many holders at once: 1 ..= [`Semaphore::MAX_PERMITS`].
    pub permits: u32,
    /// After each grant, list the semaphore's slots and refuse the permit (with
    /// [`Error::PermitCountMismatch`]) if a live holder declared another permit count. Costs one
    /// `list` per acquisition; on by default. Turn it off only where every process is certain to
    /// use the same count. Backends that cannot list skip it (see `docs/semaphore.md`).
    pub check_permit_count: bool,
}

impl SemaphoreOptions {
    /// `permits` permits, with the permit-count check on.
    pub fn new(permits: u32) -> Self {
        Self {
            permits,
            check_permit_count: true,
        }
    }

    /// Sets [`SemaphoreOptions::check_permit_count`].
    pub fn with_permit_count_check(mut self, yes: bool) -> Self {
        self.check_permit_count = yes;
        self
    }
}

/// Whether the backend can list, learnt from the first `list` call.
const LIST_UNKNOWN: u8 = 0;
const LIST_YES: u8 = 1;
const LIST_NO: u8 = 2;

/// A counting semaphore: at most [`Semaphore::permits`] holders of its name at once, across every
/// process using the same store, each [`Permit`] a fenced, renewed lease on a slot.
///
/// ```
/// use lease_core::{Locker, MemoryBackend, Semaphore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
/// let locker = Locker::new(MemoryBackend::new());
/// let pool = Semaphore::new(&locker, "licences", 2)?;
/// let a = pool.acquire().await?;
/// let b = pool.try_acquire().await?.expect("a second permit is free");
/// assert!(pool.try_acquire().await?.is_none(), "only two at once");
/// assert_ne!(a.slot(), b.slot());
/// // Fence the resource per permit: (slot, token) pairs only rise for each slot.
/// println!("permit {} with fencing token {}", a.slot(), a.fencing_token());
/// a.release().await?;
/// b.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    inner: Arc<SemaphoreInner>,
}

struct SemaphoreInner {
    /// The caller's locker with `permits=N` appended to its metadata.
    locker: Locker,
    name: LeaseKey,
    options: SemaphoreOptions,
    /// `NAME/permit-0` … `NAME/permit-{N-1}`.
    slots: Vec<LeaseKey>,
    /// `NAME/permit-`: lists every slot (and only slots of this name, after parsing).
    prefix: String,
    list: AtomicU8,
}

/// What one round of attempts found, when it found no permit.
#[derive(Default)]
struct Full {
    /// The slots seen held (all of them, when the backend cannot list).
    held: Vec<u32>,
    /// The soonest a held slot's grant runs out on the store's clock, when known.
    soonest_expiry: Option<Duration>,
    /// One of the holders seen, for [`Error::Timeout`].
    holder: Option<Box<LeaseRecord>>,
}

impl Semaphore {
    /// The largest number of permits a semaphore may have (each permit is one record).
    pub const MAX_PERMITS: u32 = 1000;

    /// A semaphore called `name` with `permits` permits, taken through `locker` (its backend, TTL,
    /// renewal and retry options; its metadata with `permits=N` appended).
    ///
    /// # Errors
    /// [`InvalidInput`] for a bad name, a name too long for its slot keys, or a permit count
    /// outside 1 ..= [`Semaphore::MAX_PERMITS`].
    pub fn new(locker: &Locker, name: impl AsRef<str>, permits: u32) -> Result<Self, InvalidInput> {
        Self::with_options(locker, name, SemaphoreOptions::new(permits))
    }

    /// A semaphore with explicit [`SemaphoreOptions`].
    ///
    /// # Errors
    /// As [`Semaphore::new`].
    pub fn with_options(
        locker: &Locker,
        name: impl AsRef<str>,
        options: SemaphoreOptions,
    ) -> Result<Self, InvalidInput> {
        let name = LeaseKey::new(name.as_ref())?;
        if !(1..=Self::MAX_PERMITS).contains(&options.permits) {
            return Err(InvalidInput::new(
                "permits",
                format!("{} is outside 1..={}", options.permits, Self::MAX_PERMITS),
            ));
        }
        let slots = (0..options.permits)
            .map(|slot| slot_key(&name, slot))
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = tagged_metadata(locker.metadata(), options.permits);
        Ok(Self {
            inner: Arc::new(SemaphoreInner {
                locker: locker.with_metadata(metadata),
                prefix: format!("{name}{SLOT_INFIX}"),
                name,
                options,
                slots,
                list: AtomicU8::new(LIST_UNKNOWN),
            }),
        })
    }

    /// The semaphore's name.
    pub fn name(&self) -> &LeaseKey {
        &self.inner.name
    }

    /// How many permits it has.
    pub fn permits(&self) -> u32 {
        self.inner.options.permits
    }

    /// The key of permit `slot`: `NAME/permit-{slot}`, or `None` when `slot` is not below
    /// [`Semaphore::permits`].
    pub fn slot_key(&self, slot: u32) -> Option<&LeaseKey> {
        self.inner.slots.get(slot as usize)
    }

    /// Takes a free permit if there is one; `Ok(None)` when all are held.
    ///
    /// With a backend that can list, this reads every slot in one request and tries only free or
    /// expired ones, in random order; otherwise it tries the slots one by one from a random start.
    ///
    /// # Errors
    /// [`Error::PermitCountMismatch`] when a live holder uses another permit count;
    /// [`Error::Backend`] when the store failed and no permit was granted.
    pub async fn try_acquire(&self) -> Result<Option<Permit>, Error> {
        match self.round().await? {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => Ok(None),
        }
    }

    /// Takes a permit, waiting as long as it takes. Waiting wakes when a slot is released (on
    /// backends that notify, such as PostgreSQL) or a holder's grant runs out, and otherwise polls
    /// with the locker's backoff. Cancel by dropping the future.
    ///
    /// # Errors
    /// [`Error::PermitCountMismatch`] as for [`Semaphore::try_acquire`]; [`Error::Backend`] for
    /// a fatal backend failure (transient ones are retried).
    pub async fn acquire(&self) -> Result<Permit, Error> {
        self.wait(&mut Full::default(), &mut None).await
    }

    /// Takes a permit, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] (naming the semaphore, one holder seen and the last error) when the time
    /// runs out; otherwise as [`Semaphore::acquire`].
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Permit, Error> {
        let started = Instant::now();
        let mut seen = Full::default();
        let mut last_error = None;
        match tokio::time::timeout(timeout, self.wait(&mut seen, &mut last_error)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                key: self.inner.name.clone(),
                waited: started.elapsed(),
                holder: seen.holder,
                last_error: last_error.map(Box::new),
            }),
        }
    }

    /// Takes a permit, waiting until one is free or `cancel` is cancelled.
    ///
    /// # Errors
    /// [`Error::Cancelled`] when `cancel` fires first; otherwise as [`Semaphore::acquire`].
    pub async fn acquire_cancellable(&self, cancel: &CancellationToken) -> Result<Permit, Error> {
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(Error::Cancelled { key: self.inner.name.clone() }),
            result = self.acquire() => result,
        }
    }

    /// Waits for a permit, runs `work` while holding it, and releases it.
    ///
    /// As [`Locker::run_exclusive`]: if the permit is lost while `work` runs, `work` is dropped and
    /// [`Error::Lost`] is returned; work that finished after the holder deadline is reported as
    /// lost too.
    ///
    /// ```
    /// use lease_core::{Locker, MemoryBackend, Semaphore};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
    /// let pool = Semaphore::new(&Locker::new(MemoryBackend::new()), "workers", 3)?;
    /// let slot = pool
    ///     .run_with_permit(|permit| async move { Ok::<_, lease_core::Error>(permit.slot()) })
    ///     .await?;
    /// assert!(slot < 3);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The work's own error; [`Error::Lost`] as above; otherwise as [`Semaphore::acquire`].
    pub async fn run_with_permit<F, Fut, T, E>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(PermitHandle) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let permit = self.acquire().await?;
        let lost = permit.lost();
        let work = work(permit.handle());
        tokio::select! {
            biased;
            reason = lost => Err(Error::Lost {
                key: permit.key().clone(),
                fencing: permit.fencing_token(),
                reason,
            }.into()),
            output = work => {
                if !permit.is_held() {
                    let (key, fencing) = (permit.key().clone(), permit.fencing_token());
                    let reason = match permit.release().await {
                        Err(Error::Lost { reason, .. }) => reason,
                        _ => LostReason::DeadlineExpired,
                    };
                    return Err(Error::Lost { key, fencing, reason }.into());
                }
                if let Err(e) = permit.release().await {
                    tracing::warn!(error = %e, "release after work under a permit failed");
                }
                output
            }
        }
    }

    /// Who holds which permit, without acquiring: one entry per slot record found, sorted by slot.
    ///
    /// With a backend that can list, this is one request and includes slots at or above
    /// [`Semaphore::permits`] held by processes that use a larger count; otherwise each of this
    /// semaphore's slots is read in turn.
    ///
    /// A slot record that cannot be decoded is listed with
    /// [`RecordState::Unreadable`](crate::RecordState::Unreadable) (acquiring treats that slot as
    /// taken); without `list`, reading it fails the call.
    ///
    /// # Errors
    /// [`Error::Backend`] when the store failed.
    pub async fn inspect(&self) -> Result<Vec<PermitRecord>, Error> {
        if let Some(records) = self.list_slots().await? {
            return Ok(records);
        }
        let mut found = Vec::new();
        for key in &self.inner.slots {
            if let Some(record) = self.inner.locker.inspect(key).await? {
                found.extend(PermitRecord::from_record(record));
            }
        }
        Ok(found)
    }

    /// Waits until every background release of a dropped [`Permit`] has finished, as
    /// [`Locker::drain`] does for leases (permits are renewed and released by a locker of the
    /// semaphore's own).
    pub async fn drain(&self) {
        self.inner.locker.drain().await;
    }

    /// Lists the semaphore's slot records in one request; `None` when the backend cannot list.
    async fn list_slots(&self) -> Result<Option<Vec<PermitRecord>>, Error> {
        if self.inner.list.load(Ordering::Relaxed) == LIST_NO {
            return Ok(None);
        }
        match self.inner.locker.list(&self.inner.prefix).await {
            Ok(records) => {
                self.inner.list.store(LIST_YES, Ordering::Relaxed);
                let name = &self.inner.name;
                let mut permits: Vec<PermitRecord> = records
                    .into_iter()
                    .filter_map(PermitRecord::from_record)
                    .filter(|p| &p.name == name)
                    .collect();
                permits.sort_by_key(|p| p.slot);
                Ok(Some(permits))
            }
            Err(Error::Backend(e)) if e.kind() == BackendErrorKind::Unsupported => {
                self.inner.list.store(LIST_NO, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The first live holder in `records` that declares a permit count other than ours.
    fn mismatch(&self, records: &[PermitRecord]) -> Option<Error> {
        let ours = self.permits();
        records
            .iter()
            .filter(|p| p.record.state == RecordState::Held)
            .find_map(|p| p.declared_permits.filter(|theirs| *theirs != ours))
            .map(|theirs| Error::PermitCountMismatch {
                name: self.inner.name.clone(),
                ours,
                theirs,
            })
    }

    /// One round: the slots worth trying, each tried once. `Ok(Err(full))` when none was granted.
    async fn round(&self) -> Result<Result<Permit, Full>, Error> {
        let permits = self.permits();
        let mut full = Full::default();
        let candidates = match self.list_slots().await? {
            Some(records) => {
                if let Some(mismatch) = self.mismatch(&records) {
                    return Err(mismatch);
                }
                let mut held = vec![false; permits as usize];
                for p in records.iter().filter(|p| p.slot < permits) {
                    // A slot whose record cannot be read may well be held: it is never tried
                    // (acquiring it would fail anyway) and counts as taken.
                    if p.record.state == RecordState::Unreadable {
                        held[p.slot as usize] = true;
                        full.held.push(p.slot);
                    }
                    if p.record.state == RecordState::Held {
                        held[p.slot as usize] = true;
                        full.held.push(p.slot);
                        if let Some(left) = p.record.expires_in {
                            full.soonest_expiry =
                                Some(full.soonest_expiry.map_or(left, |s| s.min(left)));
                        }
                        if full.holder.is_none() {
                            full.holder = Some(Box::new(p.record.clone()));
                        }
                    }
                }
                let mut free: Vec<u32> = (0..permits).filter(|s| !held[*s as usize]).collect();
                shuffle(&mut free);
                free
            }
            None => {
                let start = random_below(permits);
                full.held = (0..permits).collect();
                (0..permits).map(|i| (start + i) % permits).collect()
            }
        };
        let mut first_error = None;
        for slot in candidates {
            let key = &self.inner.slots[slot as usize];
            match self.inner.locker.acquire_now(key).await {
                Ok(lease) => return self.verify(lease, slot).await.map(Ok),
                Err(Error::Held { holder, .. }) => {
                    if let Some(left) = holder.as_ref().and_then(|r| r.expires_in) {
                        full.soonest_expiry =
                            Some(full.soonest_expiry.map_or(left, |s| s.min(left)));
                    }
                    if holder.is_some() {
                        full.holder = holder;
                    }
                    if !full.held.contains(&slot) {
                        full.held.push(slot);
                    }
                }
                Err(Error::Backend(e)) if e.is_transient() => {
                    first_error.get_or_insert(Error::Backend(e));
                }
                Err(e) => return Err(e),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(Err(full)),
        }
    }

    /// After a grant: refuses it if a live holder declares another permit count. Of two holders
    /// with different counts, the later one's list sees the earlier one's grant, so they never
    /// both keep their permits.
    async fn verify(&self, lease: Lease, slot: u32) -> Result<Permit, Error> {
        let permit = Permit {
            lease,
            slot,
            permits: self.permits(),
        };
        if !self.inner.options.check_permit_count {
            return Ok(permit);
        }
        let records = match self.list_slots().await {
            Ok(Some(records)) => records,
            Ok(None) => return Ok(permit),
            Err(e) => {
                // Unchecked permits are not handed out: give it back and let the caller retry.
                let _ = permit.release().await;
                return Err(e);
            }
        };
        match self.mismatch(&records) {
            None => Ok(permit),
            Some(mismatch) => {
                let _ = permit.release().await;
                Err(mismatch)
            }
        }
    }

    /// Rounds until a permit is granted. `seen` and `last_error` are kept up to date for a
    /// timeout report.
    async fn wait(
        &self,
        seen: &mut Full,
        last_error: &mut Option<crate::BackendError>,
    ) -> Result<Permit, Error> {
        let retry = &self.inner.locker.options().retry;
        let mut delays = retry.delays();
        loop {
            let delay = delays.next().unwrap_or(retry.max_delay);
            match self.round().await {
                Ok(Ok(permit)) => return Ok(permit),
                Ok(Err(full)) => {
                    *last_error = None;
                    let wait = full
                        .soonest_expiry
                        .map_or(delay, |left| delay.min(left + Duration::from_millis(5)));
                    self.wait_for_release(&full.held, wait).await;
                    if full.holder.is_some() {
                        seen.holder = full.holder;
                    }
                }
                Err(Error::Backend(e)) if e.is_transient() => {
                    tracing::warn!(semaphore = %self.inner.name, error = %e,
                        retry_in_ms = delay.as_millis() as u64, "acquiring a permit failed; retrying");
                    *last_error = Some(e);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until one of the `held` slots may have been released, or `max_wait` passes: the
    /// backend's change notification on each slot at once (a plain sleep where it has none).
    async fn wait_for_release(&self, held: &[u32], max_wait: Duration) {
        let backend = self.inner.locker.backend();
        if held.is_empty() || !backend.capabilities().notifies_waiters {
            tokio::time::sleep(max_wait).await;
            return;
        }
        let waits = held.iter().map(|slot| {
            let key = &self.inner.slots[*slot as usize];
            Box::pin(backend.wait_for_change(key, max_wait))
        });
        let (result, _, _) = futures_util::future::select_all(waits).await;
        if let Err(e) = result {
            tracing::debug!(semaphore = %self.inner.name, error = %e, "wait for change failed; polling");
            tokio::time::sleep(max_wait).await;
        }
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.inner.name)
            .field("options", &self.inner.options)
            .field("locker", &self.inner.locker)
            .finish()
    }
}

/// A held permit of a [`Semaphore`]: a lease on one slot, renewed in the background, with its own
/// fencing token. Dropping it releases it in the background.
#[must_use = "dropping a Permit releases it at once; bind it for as long as the work runs"]
pub struct Permit {
    lease: Lease,
    slot: u32,
    permits: u32,
}

impl Permit {
    /// Which slot this permit is, `0 .. permits`. Fence per slot: a resource keeps the highest
    /// token seen for each slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// How many permits the semaphore has.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// The slot's key, `NAME/permit-{slot}`.
    pub fn key(&self) -> &LeaseKey {
        self.lease.key()
    }

    /// The fencing token of this grant of the slot: higher than every earlier grant of the same
    /// slot (tokens of different slots are not comparable).
    pub fn fencing_token(&self) -> FencingToken {
        self.lease.fencing_token()
    }

    /// The holder token of this grant.
    pub fn holder_token(&self) -> HolderToken {
        self.lease.holder_token()
    }

    /// The holder deadline, as [`Lease::deadline`].
    pub fn deadline(&self) -> Instant {
        self.lease.deadline()
    }

    /// Whether the permit is still held.
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// Resolves when the permit stops being held, before the slot can be granted to anyone else.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.lease.lost()
    }

    /// A token cancelled when the permit stops being held.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.lease.cancellation_token()
    }

    /// A cheap, cloneable view for the tasks doing the work.
    pub fn handle(&self) -> PermitHandle {
        PermitHandle {
            lease: self.lease.handle(),
            slot: self.slot,
        }
    }

    /// Frees the slot (its fencing counter is kept).
    ///
    /// # Errors
    /// As [`Lease::release`].
    pub async fn release(self) -> Result<(), Error> {
        self.lease.release().await
    }

    /// The slot lease itself.
    pub fn into_lease(self) -> Lease {
        self.lease
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("slot", &self.slot)
            .field("permits", &self.permits)
            .field("lease", &self.lease)
            .finish()
    }
}

/// A cloneable view of a [`Permit`]; it cannot release, and dropping it does nothing.
#[derive(Clone, Debug)]
pub struct PermitHandle {
    lease: LeaseHandle,
    slot: u32,
}

impl PermitHandle {
    /// Which slot the permit is.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The slot's key.
    pub fn key(&self) -> &LeaseKey {
        self.lease.key()
    }

    /// The fencing token of the grant.
    pub fn fencing_token(&self) -> FencingToken {
        self.lease.fencing_token()
    }

    /// The current holder deadline.
    pub fn deadline(&self) -> Instant {
        self.lease.deadline()
    }

    /// Whether the permit is still held.
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// Resolves when the permit stops being held.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.lease.lost()
    }

    /// A child token cancelled when the permit stops being held.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.lease.cancellation_token()
    }
}

/// A slot record of a semaphore, as read by [`Semaphore::inspect`] or recognised in a listing.
///
/// ```
/// use lease_core::{FencingToken, HolderMetadata, HolderToken, LeaseKey, LeaseRecord, PermitRecord};
/// let record = LeaseRecord::held(LeaseKey::new("pool/permit-2")?, HolderToken::generate(), FencingToken::new(9))
///     .with_metadata(HolderMetadata::new("web-1 pid=4 permits=3")?);
/// let permit = PermitRecord::from_record(record).expect("a slot key");
/// assert_eq!((permit.name.as_str(), permit.slot, permit.declared_permits), ("pool", 2, Some(3)));
/// # Ok::<(), lease_core::InvalidInput>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PermitRecord {
    /// The semaphore's name.
    pub name: LeaseKey,
    /// The slot number.
    pub slot: u32,
    /// The permit count the holder declared in its metadata, when it did.
    pub declared_permits: Option<u32>,
    /// The slot's record.
    pub record: LeaseRecord,
}

impl PermitRecord {
    /// Recognises a slot record by its key (`NAME/permit-{slot}`, the slot in plain decimal);
    /// `None` for any other key.
    pub fn from_record(record: LeaseRecord) -> Option<Self> {
        let (name, slot) = parse_slot_key(record.key.as_str())?;
        let declared_permits = record
            .metadata
            .as_ref()
            .and_then(|m| declared_permits(m.as_str()));
        Some(Self {
            name,
            slot,
            declared_permits,
            record,
        })
    }
}

/// `NAME/permit-{slot}`.
fn slot_key(name: &LeaseKey, slot: u32) -> Result<LeaseKey, InvalidInput> {
    LeaseKey::new(format!("{name}{SLOT_INFIX}{slot}")).map_err(|e| {
        InvalidInput::new(
            "semaphore name",
            format!("its slot keys are invalid: {}", e.reason()),
        )
    })
}

/// The name and slot of a slot key; `None` unless the slot is canonical decimal (no sign, no
/// leading zero), so every slot has exactly one key.
fn parse_slot_key(key: &str) -> Option<(LeaseKey, u32)> {
    let (name, digits) = key.rsplit_once(SLOT_INFIX)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    let slot: u32 = digits.parse().ok()?;
    Some((LeaseKey::new(name).ok()?, slot))
}

/// The caller's metadata with ` permits=N` appended, trimmed so the whole fits
/// [`HolderMetadata::MAX_LEN`].
fn tagged_metadata(base: &HolderMetadata, permits: u32) -> HolderMetadata {
    let tag = format!("{PERMITS_TAG}{permits}");
    let room = HolderMetadata::MAX_LEN - tag.len() - 1;
    let mut base = base.as_str().to_owned();
    if base.len() > room {
        let mut end = room;
        while !base.is_char_boundary(end) {
            end -= 1;
        }
        base.truncate(end);
    }
    let joined = if base.is_empty() {
        tag
    } else {
        format!("{base} {tag}")
    };
    HolderMetadata::from_stored_lossy(&joined)
}

/// The permit count at the end of holder metadata (`… permits=3`), if there is one.
fn declared_permits(metadata: &str) -> Option<u32> {
    let last = metadata.rsplit(' ').next()?;
    let digits = last.strip_prefix(PERMITS_TAG)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A random number below `bound` (> 0), from the OS's random source (spreading contenders is all
/// it is for; a failed source falls back to 0).
fn random_below(bound: u32) -> u32 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0;
    }
    (u64::from_le_bytes(bytes) % u64::from(bound)) as u32
}

/// Shuffles `items` (Fisher–Yates).
fn shuffle(items: &mut [u32]) {
    for i in (1..items.len()).rev() {
        let j = random_below(i as u32 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_parse_back_only_in_canonical_form() {
        let name = LeaseKey::new("jobs/pool").unwrap();
        let key = slot_key(&name, 12).unwrap();
        assert_eq!(key.as_str(), "jobs/pool/permit-12");
        assert_eq!(parse_slot_key(key.as_str()), Some((name, 12)));
        for other in [
            "jobs/pool/permit-",
            "jobs/pool/permit-012",
            "jobs/pool/permit-+1",
            "jobs/pool/permit-1x",
            "jobs/pool/permit-99999999999",
            "jobs/pool",
        ] {
            assert_eq!(parse_slot_key(other), None, "{other}");
        }
        // A semaphore whose name itself looks like a slot: the last infix decides.
        assert_eq!(
            parse_slot_key("a/permit-0/permit-1"),
            Some((LeaseKey::new("a/permit-0").unwrap(), 1))
        );
    }

    #[test]
    fn metadata_carries_the_permit_count_within_the_limit() {
        let tagged = tagged_metadata(&HolderMetadata::new("web-1 pid=7").unwrap(), 3);
        assert_eq!(tagged.as_str(), "web-1 pid=7 permits=3");
        assert_eq!(declared_permits(tagged.as_str()), Some(3));
        let long = HolderMetadata::new("é".repeat(256)).unwrap();
        let tagged = tagged_metadata(&long, 1000);
        assert!(tagged.as_str().len() <= HolderMetadata::MAX_LEN);
        assert_eq!(declared_permits(tagged.as_str()), Some(1000));
        assert_eq!(
            declared_permits(tagged_metadata(&HolderMetadata::default(), 5).as_str()),
            Some(5)
        );
        assert_eq!(declared_permits("web-1 pid=7"), None);
        assert_eq!(declared_permits("permits=-1"), None);
        assert_eq!(declared_permits("permits=99999999999"), None);
    }

    #[test]
    fn shuffle_keeps_every_slot() {
        let mut items: Vec<u32> = (0..50).collect();
        shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert!((0..1000).all(|_| random_below(7) < 7));
    }
}
