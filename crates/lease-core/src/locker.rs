//! The protocol: acquiring, waiting, running work under a lease.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{AcquireOutcome, AcquireRequest, Backend, LeaseRecord, ReleaseRequest};
use crate::election::Election;
use crate::error::{BackendError, Error, InvalidInput};
use crate::key::LeaseKey;
use crate::lease::{Lease, LeaseHandle, LeaseState};
use crate::observe;
use crate::options::{LockerOptions, RetryPolicy};
use crate::renewer::Renewer;
use crate::token::{FencingToken, HolderMetadata, HolderToken};

/// Takes leases on one backend with one set of options. Cheap to clone (clones share the backend,
/// the options and the renewal task).
///
/// ```
/// use std::time::Duration;
/// use lease_core::{Locker, MemoryBackend};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
/// let locker = Locker::builder(MemoryBackend::new())
///     .ttl(Duration::from_secs(10))
///     .build()?;
/// let report = locker
///     .run_exclusive("nightly-report", |lease| async move {
///         // ... do the work, passing lease.fencing_token() to the resource ...
///         Ok::<_, lease_core::Error>(lease.fencing_token().get())
///     })
///     .await?;
/// assert!(report > 0); // a new key's first token is the clock in microseconds
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Locker {
    inner: Arc<LockerInner>,
}

pub(crate) struct LockerInner {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) options: LockerOptions,
    pub(crate) metadata: HolderMetadata,
    pub(crate) renewer: Renewer,
    /// Background releases (dropped leases, abandoned acquires), so [`Locker::drain`] can wait.
    pub(crate) background: tokio_util::task::TaskTracker,
}

impl LockerInner {
    /// Runs `task` in the background on the current runtime, if there is one; it is tracked so
    /// [`Locker::drain`] can wait for it. Without a runtime (dropped during shutdown) it is skipped.
    pub(crate) fn spawn_background(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.background.spawn_on(task, &runtime);
        }
    }
}

/// Builds a [`Locker`] with options checked against the backend's capabilities.
///
/// ```
/// use std::time::Duration;
/// use lease_core::{HolderMetadata, Locker, MemoryBackend, RetryPolicy};
/// let locker = Locker::builder(MemoryBackend::new())
///     .ttl(Duration::from_secs(20))
///     .renew_interval(Duration::from_secs(5))
///     .safety_margin(Duration::from_millis(500))
///     .retry(RetryPolicy::default().with_max_delay(Duration::from_secs(2)))
///     .metadata(HolderMetadata::new("billing-worker-3")?)
///     .build()?;
/// assert_eq!(locker.options().ttl, Duration::from_secs(20));
/// assert!(Locker::builder(MemoryBackend::new()).ttl(Duration::ZERO).build().is_err());
/// # Ok::<(), lease_core::InvalidInput>(())
/// ```
#[must_use]
pub struct LockerBuilder {
    backend: Arc<dyn Backend>,
    ttl: Option<Duration>,
    renew_interval: Option<Duration>,
    safety_margin: Option<Duration>,
    max_clock_drift: Option<f64>,
    retry: Option<RetryPolicy>,
    metadata: Option<HolderMetadata>,
}

impl LockerBuilder {
    /// Sets the TTL of every grant and renewal (default 30 s, clamped into the backend's range).
    /// The renew interval and safety margin default from it unless set.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets how often held leases are renewed (default `ttl / 3`).
    pub fn renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = Some(interval);
        self
    }

    /// Sets the safety margin subtracted from every holder deadline (default `min(ttl / 10, 1 s)`).
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = Some(margin);
        self
    }

    /// Sets the assumed bound on clock-rate difference with the store (default 0.001).
    pub fn max_clock_drift(mut self, drift: f64) -> Self {
        self.max_clock_drift = Some(drift);
        self
    }

    /// Sets the backoff used while waiting and between renewal retries.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sets the identity stored with every grant (default `hostname pid=N`).
    pub fn metadata(mut self, metadata: HolderMetadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Checks the options against the backend and builds the locker.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the offending option: a TTL outside the backend's range, a renew
    /// interval not shorter than the holder window, a margin that leaves no window, a bad retry
    /// policy.
    pub fn build(self) -> Result<Locker, InvalidInput> {
        let caps = self.backend.capabilities();
        let ttl = self.ttl.unwrap_or_else(|| default_ttl(&caps));
        let mut options = LockerOptions::for_ttl(ttl);
        if let Some(v) = self.renew_interval {
            options.renew_interval = v;
        }
        if let Some(v) = self.safety_margin {
            options.safety_margin = v;
        }
        if let Some(v) = self.max_clock_drift {
            options.max_clock_drift = v;
        }
        if let Some(v) = self.retry {
            options.retry = v;
        }
        options.validate(&caps)?;
        let metadata = self.metadata.unwrap_or_else(HolderMetadata::this_process);
        Ok(Locker::assemble(self.backend, options, metadata))
    }
}

/// 30 s, clamped into the backend's TTL range.
fn default_ttl(caps: &crate::backend::Capabilities) -> Duration {
    Duration::from_secs(30).clamp(caps.min_ttl, caps.max_ttl)
}

/// What a wait saw last, for [`Error::Timeout`].
#[derive(Default)]
pub(crate) struct WaitReport {
    holder: Option<Box<LeaseRecord>>,
    error: Option<BackendError>,
}

/// The result of one acquire attempt.
enum Attempt {
    Acquired(Lease),
    Held(Option<Box<LeaseRecord>>),
    /// A grant of ours was found but could not be used safely, and a release was sent for its
    /// holder token. That release may land at any later time (a stalled request, an answer that
    /// timed out), so the holder token is spent: acquiring with it again could hand out a lease
    /// that the late release then frees behind its holder's back.
    GivenBack(BackendError),
}

/// Frees a grant that may have landed although we never learned of it (the acquire future was
/// dropped mid-request, or the request failed ambiguously and we gave up). Owner-checked by the
/// holder token, so it can never disturb anyone else.
struct PendingGrant<'a> {
    inner: &'a Arc<LockerInner>,
    key: &'a LeaseKey,
    holder: HolderToken,
    armed: bool,
}

impl Drop for PendingGrant<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let inner = Arc::clone(self.inner);
        let request = ReleaseRequest::new(self.key.clone(), self.holder);
        self.inner.spawn_background(async move {
            let bound = inner.options.ttl;
            let _ = tokio::time::timeout(bound, inner.backend.release(&request)).await;
        });
    }
}

impl Locker {
    /// A locker on `backend` with default options (TTL 30 s clamped into the backend's range,
    /// renewal every TTL/3).
    pub fn new(backend: impl Backend) -> Self {
        Self::from_shared(Arc::new(backend))
    }

    /// A locker with default options on a shared backend (chosen at run time, say).
    pub fn from_shared(backend: Arc<dyn Backend>) -> Self {
        // The defaults are valid for any TTL, so no validation is needed here.
        let options = LockerOptions::for_ttl(default_ttl(&backend.capabilities()));
        Self::assemble(backend, options, HolderMetadata::this_process())
    }

    fn assemble(
        backend: Arc<dyn Backend>,
        options: LockerOptions,
        metadata: HolderMetadata,
    ) -> Self {
        let renewer = Renewer::new(Arc::clone(&backend), options.clone());
        Self {
            inner: Arc::new(LockerInner {
                backend,
                options,
                metadata,
                renewer,
                background: tokio_util::task::TaskTracker::new(),
            }),
        }
    }

    /// Waits until every background release this locker (or a clone) has started — for leases
    /// that were dropped instead of released, and for acquires abandoned while their outcome was
    /// unknown — has finished. Call it before the process exits, so those releases are not cut off
    /// (each is bounded by the TTL).
    ///
    /// ```
    /// use lease_core::{Locker, MemoryBackend};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
    /// let locker = Locker::new(MemoryBackend::new());
    /// drop(locker.try_acquire("job").await?); // released in the background
    /// locker.drain().await;                      // ... and now surely done
    /// assert!(!locker.inspect("job").await?.expect("record kept").is_held());
    /// # Ok(()) }
    /// ```
    pub async fn drain(&self) {
        let tracker = &self.inner.background;
        tracker.close();
        tracker.wait().await;
        tracker.reopen();
    }

    /// Starts building a locker on `backend` with custom options.
    pub fn builder(backend: impl Backend) -> LockerBuilder {
        Self::builder_shared(Arc::new(backend))
    }

    /// Starts building a locker on a shared backend.
    pub fn builder_shared(backend: Arc<dyn Backend>) -> LockerBuilder {
        LockerBuilder {
            backend,
            ttl: None,
            renew_interval: None,
            safety_margin: None,
            max_clock_drift: None,
            retry: None,
            metadata: None,
        }
    }

    /// The options in force.
    pub fn options(&self) -> &LockerOptions {
        &self.inner.options
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The identity stored with this locker's grants.
    pub fn metadata(&self) -> &HolderMetadata {
        &self.inner.metadata
    }

    /// How many leases taken through this locker (or its clones) are being renewed right now.
    pub fn held_count(&self) -> usize {
        self.inner.renewer.len()
    }

    /// Tries once to take `key`; `Ok(None)` if someone else holds it.
    ///
    /// A failure whose outcome is unknown (a timeout, a dropped connection) is resolved by reading
    /// the record back: if our holder token is there, the lease is ours.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad key, [`Error::Backend`] when the store failed.
    pub async fn try_acquire(&self, key: impl AsRef<str>) -> Result<Option<Lease>, Error> {
        match self.acquire_now(key).await {
            Ok(lease) => Ok(Some(lease)),
            Err(Error::Held { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Tries once to take `key`, like [`Locker::try_acquire`], but reports a held key as
    /// [`Error::Held`] naming the current holder (metadata, fencing token, remaining time) where
    /// the backend returned it.
    ///
    /// ```
    /// use lease_core::{Error, Locker, MemoryBackend};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
    /// let store = MemoryBackend::new();
    /// let _held = Locker::new(store.clone()).acquire_now("deploy").await?;
    /// match Locker::new(store).acquire_now("deploy").await {
    ///     Err(Error::Held { holder: Some(record), .. }) => println!("held by {:?}", record.metadata),
    ///     other => panic!("expected Held, got {other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Held`] when someone else holds the key; otherwise as [`Locker::try_acquire`].
    pub async fn acquire_now(&self, key: impl AsRef<str>) -> Result<Lease, Error> {
        let key = LeaseKey::new(key.as_ref())?;
        observe::acquire(self.inner.backend.name(), &key, self.acquire_once(&key)).await
    }

    /// One attempt for [`Locker::acquire_now`].
    async fn acquire_once(&self, key: &LeaseKey) -> Result<Lease, Error> {
        let mut pending = self.pending(key);
        match self.attempt(key, pending.holder, None).await {
            Ok(Attempt::Acquired(lease)) => {
                pending.armed = false;
                Ok(lease)
            }
            Ok(Attempt::Held(holder)) => {
                pending.armed = false;
                Err(Error::Held {
                    key: key.clone(),
                    holder,
                })
            }
            Ok(Attempt::GivenBack(e)) => Err(e.into()),
            Err(e) => Err(e),
        }
    }

    /// Takes `key`, waiting as long as it takes. Cancel by dropping the future (a grant that lands
    /// meanwhile is released in the background).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad key; [`Error::Backend`] for a fatal backend failure
    /// (transient ones are retried with backoff).
    pub async fn acquire(&self, key: impl AsRef<str>) -> Result<Lease, Error> {
        let key = LeaseKey::new(key.as_ref())?;
        observe::acquire(self.inner.backend.name(), &key, self.wait_for(&key, None)).await
    }

    /// Takes `key`, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] (with the last holder seen) when the time runs out; otherwise as
    /// [`Locker::acquire`].
    pub async fn acquire_timeout(
        &self,
        key: impl AsRef<str>,
        timeout: Duration,
    ) -> Result<Lease, Error> {
        let key = LeaseKey::new(key.as_ref())?;
        let started = Instant::now();
        let mut seen = WaitReport::default();
        let wait = async {
            match tokio::time::timeout(timeout, self.wait_for(&key, Some(&mut seen))).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout {
                    key: key.clone(),
                    waited: started.elapsed(),
                    holder: seen.holder,
                    last_error: seen.error.map(Box::new),
                }),
            }
        };
        observe::acquire(self.inner.backend.name(), &key, wait).await
    }

    /// Takes `key`, waiting until it is free or `cancel` is cancelled.
    ///
    /// # Errors
    /// [`Error::Cancelled`] when `cancel` fires first; otherwise as [`Locker::acquire`].
    pub async fn acquire_cancellable(
        &self,
        key: impl AsRef<str>,
        cancel: &CancellationToken,
    ) -> Result<Lease, Error> {
        let key = LeaseKey::new(key.as_ref())?;
        let wait = async {
            tokio::select! {
                biased;
                () = cancel.cancelled() => Err(Error::Cancelled { key: key.clone() }),
                result = self.wait_for(&key, None) => result,
            }
        };
        observe::acquire(self.inner.backend.name(), &key, wait).await
    }

    /// Waits for `key`, runs `work` while holding it, and releases it.
    ///
    /// `work` returns `Result<T, E>`, where `E` can hold this crate's [`Error`] (your own error
    /// type with a `From<lease_core::Error>` impl, or [`Error`] itself), so both the work's errors
    /// and the lease's reach the caller through one `?`.
    ///
    /// If the lease is lost while `work` runs, `work` is dropped (cancelled at its next await point)
    /// and [`Error::Lost`] is returned, so the caller knows the work did not finish under the lease.
    /// Work that finished, but only after the holder deadline had passed, is reported as lost too.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lease_core::{Locker, MemoryBackend};
    ///
    /// #[derive(Debug)]
    /// enum ExportError { Lease(lease_core::Error), Disk(String) }
    /// impl From<lease_core::Error> for ExportError {
    ///     fn from(e: lease_core::Error) -> Self { ExportError::Lease(e) }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), ExportError> {
    /// let locker = Locker::builder(MemoryBackend::new()).ttl(Duration::from_secs(10)).build()
    ///     .map_err(lease_core::Error::from)?;
    /// let rows = locker
    ///     .run_exclusive("nightly-export", |lease| async move {
    ///         if lease.fencing_token().get() == 0 { return Err(ExportError::Disk("full".into())); }
    ///         Ok(42)
    ///     })
    ///     .await?;
    /// assert_eq!(rows, 42);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The work's own error; [`Error::Lost`] as above; otherwise as [`Locker::acquire`].
    pub async fn run_exclusive<F, Fut, T, E>(&self, key: impl AsRef<str>, work: F) -> Result<T, E>
    where
        F: FnOnce(LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let lease = self.acquire(key).await?;
        let lost = lease.lost();
        let work = work(lease.handle());
        tokio::select! {
            biased;
            reason = lost => Err(Error::Lost {
                key: lease.key().clone(),
                fencing: lease.fencing_token(),
                reason,
            }.into()),
            output = work => {
                if !lease.is_held() {
                    // Finished, but not provably within the lease: report it as lost.
                    let (key, fencing) = (lease.key().clone(), lease.fencing_token());
                    let reason = match lease.release().await {
                        Err(Error::Lost { reason, .. }) => reason,
                        _ => crate::LostReason::DeadlineExpired,
                    };
                    return Err(Error::Lost { key, fencing, reason }.into());
                }
                if let Err(e) = lease.release().await {
                    // The work finished under the lease; a failed release only delays the next
                    // holder until the TTL runs out.
                    tracing::warn!(error = %e, "release after exclusive work failed");
                }
                output
            }
        }
    }

    /// Lists the records of every key starting with `prefix` (`""` for all), sorted by key,
    /// without acquiring anything: holder, fencing token, state, timing.
    ///
    /// A record the backend cannot decode is listed in its place with
    /// [`RecordState::Unreadable`](crate::RecordState::Unreadable) and the reason in
    /// [`LeaseRecord::unreadable`]; treat it as taken. Only a store failure fails the listing.
    ///
    /// ```
    /// use lease_core::{Locker, MemoryBackend};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
    /// let locker = Locker::new(MemoryBackend::new());
    /// let _a = locker.acquire("jobs/a").await?;
    /// let _b = locker.acquire("jobs/b").await?;
    /// let _other = locker.acquire("other").await?;
    /// let jobs = locker.list("jobs/").await?;
    /// assert_eq!(jobs.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["jobs/a", "jobs/b"]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a prefix with characters keys cannot have; [`Error::Backend`]
    /// with kind `Unsupported` if the backend cannot list, or when the store failed.
    pub async fn list(&self, prefix: impl AsRef<str>) -> Result<Vec<LeaseRecord>, Error> {
        let prefix = prefix.as_ref();
        LeaseKey::check_prefix(prefix)?;
        let bound = self.inner.options.ttl;
        let backend = &*self.inner.backend;
        let span = tracing::debug_span!(
            "backend_call",
            backend = backend.name(),
            op = "list",
            prefix
        );
        use tracing::Instrument as _;
        let started = Instant::now();
        let result = match tokio::time::timeout(bound, backend.list(prefix))
            .instrument(span)
            .await
        {
            Ok(result) => result,
            Err(_) => Err(BackendError::transient(backend.name(), "list timed out")),
        };
        crate::metrics::backend_request(
            backend.name(),
            "list",
            started.elapsed(),
            result.as_ref().err(),
        );
        Ok(result?)
    }

    /// Reads the record of `key` without acquiring it: holder metadata, fencing token, timing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad key, [`Error::Backend`] when the store failed or the record
    /// is unreadable.
    pub async fn inspect(&self, key: impl AsRef<str>) -> Result<Option<LeaseRecord>, Error> {
        let key = LeaseKey::new(key.as_ref())?;
        let bound = self.inner.options.ttl;
        let backend = &*self.inner.backend;
        Ok(traced(
            backend,
            "inspect",
            &key,
            tokio::time::timeout(bound, backend.inspect(&key)),
        )
        .await?)
    }

    /// Administrative force-release of `key`, whoever holds it. Returns the record as it was.
    ///
    /// The holder learns of it at its next renewal; until then only fencing tokens protect the
    /// resource. Use it to clear a holder known to be dead, not as a way to take a lease.
    ///
    /// # Errors
    /// [`Error::Backend`] with kind `Unsupported` if the backend cannot break leases.
    pub async fn break_lease(&self, key: impl AsRef<str>) -> Result<Option<LeaseRecord>, Error> {
        let key = LeaseKey::new(key.as_ref())?;
        let bound = self.inner.options.ttl;
        let backend = &*self.inner.backend;
        Ok(traced(
            backend,
            "break",
            &key,
            tokio::time::timeout(bound, backend.break_lease(&key)),
        )
        .await?)
    }

    /// A leader election on `key` among all lockers using it.
    ///
    /// # Errors
    /// [`InvalidInput`] for a bad key.
    pub fn election(&self, key: impl AsRef<str>) -> Result<Election, InvalidInput> {
        Election::new(self.clone(), LeaseKey::new(key.as_ref())?)
    }

    /// For [`Semaphore`](crate::Semaphore) (the one crate-internal hook it uses): a locker on the
    /// same backend with the same options whose grants carry `metadata` (the permit count).
    pub(crate) fn with_metadata(&self, metadata: HolderMetadata) -> Locker {
        Self::assemble(
            Arc::clone(&self.inner.backend),
            self.inner.options.clone(),
            metadata,
        )
    }

    fn pending<'a>(&'a self, key: &'a LeaseKey) -> PendingGrant<'a> {
        PendingGrant {
            inner: &self.inner,
            key,
            holder: HolderToken::generate(),
            armed: true,
        }
    }

    /// Polls (or waits for change notifications) until `key` is ours. Transient failures are
    /// retried with backoff; fatal ones are returned.
    pub(crate) async fn wait_for(
        &self,
        key: &LeaseKey,
        mut report: Option<&mut WaitReport>,
    ) -> Result<Lease, Error> {
        let _waiting = observe::Waiting::start(self.inner.backend.name(), key);
        // One holder token for every attempt: a grant that landed unseen is found again by the
        // next attempt (acquire is idempotent per holder token).
        let mut pending = self.pending(key);
        let mut delays = self.inner.options.retry.delays();
        // When the first attempt whose outcome is unknown was sent. Its write may still land
        // later: keep the background release armed until we hold the key. A grant of ours found
        // later may come from it, so its deadline counts from then. (Attempts answered "held by
        // another" did not land, so they do not count.)
        let mut first_uncertain: Option<Instant> = None;
        loop {
            pending.armed = true;
            let delay = delays.next().unwrap_or(self.inner.options.retry.max_delay);
            let sent = Instant::now();
            match self.attempt(key, pending.holder, first_uncertain).await {
                Ok(Attempt::Acquired(lease)) => {
                    pending.armed = false;
                    return Ok(lease);
                }
                Ok(Attempt::Held(record)) => {
                    pending.armed = first_uncertain.is_some();
                    // Wake up early when the holder's expiry is due before the next poll. The
                    // time left comes from the store (any value, even a hostile one): saturate.
                    let wait = record
                        .as_ref()
                        .and_then(|r| r.expires_in)
                        .map_or(delay, |left| {
                            delay.min(left.saturating_add(Duration::from_millis(5)))
                        });
                    if let Some(report) = report.as_deref_mut() {
                        report.holder = record;
                        report.error = None;
                    }
                    let backend = &*self.inner.backend;
                    if let Err(e) = backend.wait_for_change(key, wait).await {
                        tracing::debug!(key = %key, error = %e, "wait for change failed; polling");
                        tokio::time::sleep(wait).await;
                    }
                }
                Ok(Attempt::GivenBack(e)) => {
                    // The spent token's release is sent; its other attempts, if any still land,
                    // hold the key until their TTL at worst. A new token starts afresh.
                    pending.armed = false;
                    pending = self.pending(key);
                    first_uncertain = None;
                    tracing::warn!(key = %key, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "acquire gave a grant back; retrying with a new holder token");
                    if let Some(report) = report.as_deref_mut() {
                        report.error = Some(e);
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(Error::Backend(e)) if e.is_transient() => {
                    first_uncertain.get_or_insert(sent);
                    tracing::warn!(key = %key, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "acquire failed; retrying");
                    if let Some(report) = report.as_deref_mut() {
                        report.error = Some(e);
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One acquire attempt with holder token `holder`, resolving unknown outcomes by reading back.
    ///
    /// `first_uncertain` is when the first earlier attempt with this holder token whose outcome
    /// is unknown was sent, if there was one. A grant found by reading back (or reported as
    /// already ours) may come from that attempt, so its deadline counts from then: the only
    /// instant known to be before the store applied it. A grant this attempt is answered with
    /// counts from this attempt's own send instant: acquiring again with the same holder token
    /// renews the store's expiry (a backend rule the conformance kit checks).
    async fn attempt(
        &self,
        key: &LeaseKey,
        holder: HolderToken,
        first_uncertain: Option<Instant>,
    ) -> Result<Attempt, Error> {
        let inner = &self.inner;
        let backend = &*inner.backend;
        let request = AcquireRequest::new(
            key.clone(),
            holder,
            inner.options.ttl,
            inner.metadata.clone(),
        );
        // A grant is useless once its holder window has passed, so nothing waits longer; the
        // acquire itself gets half of it, so a hung request leaves time to read the record back.
        let window = inner.options.holder_window(inner.options.ttl);
        let sent = Instant::now();
        let earliest = first_uncertain.map_or(sent, |t| t.min(sent));
        let result = traced(
            backend,
            "acquire",
            key,
            tokio::time::timeout(window / 2, backend.acquire(&request)),
        )
        .await;
        match result {
            Ok(AcquireOutcome::Acquired(grant)) => {
                let ttl = grant.ttl.min(inner.options.ttl);
                self.grant(key, holder, grant.fencing, ttl, sent).await
            }
            Ok(AcquireOutcome::Held(Some(record))) if record.is_held_by(&holder) => {
                self.grant_read_back(key, holder, &record, earliest).await
            }
            Ok(AcquireOutcome::Held(record)) => Ok(Attempt::Held(record)),
            Err(e) if e.is_transient() => {
                // Unknown outcome: did our write land? Read it back.
                let remaining = (sent + window).saturating_duration_since(Instant::now());
                let read = traced(
                    backend,
                    "inspect",
                    key,
                    tokio::time::timeout(remaining, backend.inspect(key)),
                )
                .await;
                match read {
                    Ok(Some(record)) if record.is_held_by(&holder) => {
                        tracing::info!(key = %key, "acquire outcome was unknown; read back: it landed");
                        self.grant_read_back(key, holder, &record, earliest).await
                    }
                    _ => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A grant of ours found in a record read back (by inspect, or in a "held" answer): the store
    /// applied it at some point after `earliest`. Its deadline counts from `earliest` with the TTL
    /// the record states (capped at the TTL asked for) — never a TTL assumed longer. A record that
    /// does not state its TTL is given back: its `expires_in` is an estimate (a store may round it
    /// up), and a deadline is never derived from an estimate.
    async fn grant_read_back(
        &self,
        key: &LeaseKey,
        holder: HolderToken,
        record: &LeaseRecord,
        earliest: Instant,
    ) -> Result<Attempt, Error> {
        let requested = self.inner.options.ttl;
        if let Some(ttl) = record.ttl {
            return self
                .grant(key, holder, record.fencing, ttl.min(requested), earliest)
                .await;
        }
        self.give_back(key, holder).await;
        Ok(Attempt::GivenBack(BackendError::transient(
            self.inner.backend.name(),
            "a grant read back did not state its TTL; given back",
        )))
    }

    /// Frees a grant of ours that we will not use (owner-checked, bounded by the TTL).
    async fn give_back(&self, key: &LeaseKey, holder: HolderToken) {
        let request = ReleaseRequest::new(key.clone(), holder);
        let backend = &*self.inner.backend;
        let _ = tokio::time::timeout(self.inner.options.ttl, backend.release(&request)).await;
    }

    /// Turns a confirmed grant into a held, renewed [`Lease`].
    async fn grant(
        &self,
        key: &LeaseKey,
        holder: HolderToken,
        fencing: FencingToken,
        ttl: Duration,
        sent: Instant,
    ) -> Result<Attempt, Error> {
        let deadline = sent + self.inner.options.holder_window(ttl);
        if deadline <= Instant::now() {
            // The answer came too late to be safe to act on; give the grant back.
            self.give_back(key, holder).await;
            return Ok(Attempt::GivenBack(BackendError::transient(
                self.inner.backend.name(),
                "the grant arrived after its holder deadline",
            )));
        }
        let state = Arc::new(LeaseState::new(
            key.clone(),
            holder,
            fencing,
            deadline,
            self.inner.backend.name(),
        ));
        let id = self.inner.renewer.add(Arc::clone(&state), sent);
        Ok(Attempt::Acquired(Lease::new(
            state,
            Arc::clone(&self.inner),
            id,
        )))
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("backend", &self.inner.backend)
            .field("options", &self.inner.options)
            .field("metadata", &self.inner.metadata)
            .finish()
    }
}

/// Runs one backend call with a timeout, logging backend, operation, key, outcome and latency.
/// A timeout becomes a transient error (its outcome is unknown).
pub(crate) async fn traced<T: fmt::Debug>(
    backend: &dyn Backend,
    op: &'static str,
    key: &LeaseKey,
    call: impl Future<Output = Result<Result<T, BackendError>, tokio::time::error::Elapsed>>,
) -> Result<T, BackendError> {
    use tracing::Instrument as _;
    let span = tracing::debug_span!("backend_call", backend = backend.name(), op, key = %key);
    let started = Instant::now();
    let result = match call.instrument(span.clone()).await {
        Ok(result) => result,
        Err(_) => Err(BackendError::transient(
            backend.name(),
            format!("{op} timed out; outcome unknown"),
        )),
    };
    crate::metrics::backend_request(backend.name(), op, started.elapsed(), result.as_ref().err());
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let _entered = span.enter();
    match &result {
        Ok(outcome) => {
            tracing::debug!(backend = backend.name(), op, key = %key, latency_ms, ?outcome, "backend call")
        }
        Err(error) => {
            tracing::debug!(backend = backend.name(), op, key = %key, latency_ms, %error, "backend call failed")
        }
    }
    result
}
