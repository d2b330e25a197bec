//! The conformance kit: the contract as executable tests, for every backend to run against itself.
//!
//! A backend crate adds `lease-core = { features = ["conformance"] }` (and `tokio` with `macros`
//! and `rt-multi-thread`) to its dev-dependencies and writes one test file:
//!
//! ```no_run
//! use lease_core::conformance::Harness;
//! use lease_core::MemoryBackend;
//!
//! async fn harness() -> Option<Harness> {
//!     // Return None to skip (for example when the server's URL is not configured):
//!     // let url = lease_core::conformance::require_env("LEASE_TEST_POSTGRES_URL")?;
//!     Some(Harness::new(MemoryBackend::new()))
//! }
//!
//! lease_core::conformance_tests!(harness);
//! # fn main() {}
//! ```
//!
//! The macro expands to one `#[tokio::test]` per case in [`CASES`], so a failure names the broken
//! rule. [`run_all`] runs every case in one call, for custom runners. Cases use keys under a random
//! per-harness prefix, so runs never see each other's records.
//!
//! [`FaultyBackend`] wraps any backend to inject latency, transient errors, lost responses and
//! dropped renewals; the cases use it to check that the protocol resolves unknown outcomes.

mod cases;
mod faulty;
mod observed;
mod outside;
mod semaphore;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use faulty::{FaultyBackend, Op};
pub use outside::{OutsideChange, OutsideWrite, OutsideWriter};

use crate::backend::Backend;
use crate::key::LeaseKey;
use crate::locker::Locker;
use crate::options::RetryPolicy;
use crate::token::{HolderMetadata, HolderToken};

/// What the cases run against: a backend, the TTL to use, and a key prefix unique to this run.
#[derive(Clone, Debug)]
pub struct Harness {
    backend: Arc<dyn Backend>,
    /// A second instance on the same store, as a second process would have.
    peer: Option<Arc<dyn Backend>>,
    ttl: Duration,
    prefix: String,
    outside: Option<OutsideWriter>,
}

impl Harness {
    /// A harness for `backend`, with TTL `max(1 s, the backend's minimum)` and a random prefix.
    pub fn new(backend: impl Backend) -> Self {
        Self::from_shared(Arc::new(backend))
    }

    /// A harness for a shared backend.
    pub fn from_shared(backend: Arc<dyn Backend>) -> Self {
        let ttl = Duration::from_secs(1).max(backend.capabilities().min_ttl);
        let random = HolderToken::generate().to_string();
        Self {
            backend,
            peer: None,
            ttl,
            prefix: format!("conformance-{}", &random[..12]),
            outside: None,
        }
    }

    /// Adds a second backend instance on the same store (built from the same URL, or a clone of
    /// an in-process store where that is what two processes would share), as a second process
    /// would have. Cases that need two instances (one's create meeting the other's object, say)
    /// use it; without one they pass with a loud `SKIPPED` line.
    pub fn with_peer(self, peer: impl Backend) -> Self {
        self.with_peer_shared(Arc::new(peer))
    }

    /// [`Harness::with_peer`] for a shared backend.
    pub fn with_peer_shared(mut self, peer: Arc<dyn Backend>) -> Self {
        self.peer = Some(peer);
        self
    }

    /// The second instance, if the harness has one.
    pub fn peer(&self) -> Option<&Arc<dyn Backend>> {
        self.peer.as_ref()
    }

    /// Sets the TTL the cases use (within the backend's range). Expiry cases wait about this long.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the key prefix (it must form valid keys with `/case-name` appended).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Gives the cases a way to change a key's record behind the backend's back, as another tool,
    /// a lifecycle rule or a person would (see [`OutsideWriter`]). Without one, the case that
    /// needs it prints a `SKIPPED` line.
    pub fn with_outside_writer(mut self, writer: OutsideWriter) -> Self {
        self.outside = Some(writer);
        self
    }

    /// The outside writer, when the harness has one.
    pub fn outside_writer(&self) -> Option<&OutsideWriter> {
        self.outside.as_ref()
    }

    /// The backend under test.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The TTL the cases use.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A key unique to this harness: `prefix/name`.
    ///
    /// # Panics
    /// If the prefix and name do not form a valid key (a bug in the test, not the backend).
    pub fn key(&self, name: &str) -> LeaseKey {
        #[allow(clippy::expect_used)]
        LeaseKey::new(format!("{}/{name}", self.prefix)).expect("harness prefix forms valid keys")
    }

    /// A locker on the backend under test, with the harness TTL and fast polling.
    pub fn locker(&self) -> Locker {
        self.locker_on(Arc::clone(&self.backend), "conformance")
    }

    /// A locker on `backend` (for example a [`FaultyBackend`] around the one under test), with the
    /// harness TTL, fast polling and `name` as metadata.
    ///
    /// # Panics
    /// If the harness TTL is outside the backend's range.
    pub fn locker_on(&self, backend: Arc<dyn Backend>, name: &str) -> Locker {
        let retry = RetryPolicy::default()
            .with_initial_delay(Duration::from_millis(5))
            .with_max_delay((self.ttl / 10).max(Duration::from_millis(10)));
        #[allow(clippy::expect_used)]
        Locker::builder_shared(backend)
            .ttl(self.ttl)
            .retry(retry)
            .metadata(HolderMetadata::from_stored_lossy(name))
            .build()
            .expect("the harness TTL must be within the backend's range")
    }

    /// A [`FaultyBackend`] around the backend under test.
    pub fn faulty(&self) -> FaultyBackend {
        FaultyBackend::new(Arc::clone(&self.backend))
    }
}

/// A broken rule, with what was observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The case that failed.
    pub case: &'static str,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance case `{}` failed: {}",
            self.case, self.message
        )
    }
}

impl std::error::Error for Failure {}

/// A case's body: `Err(message)` when the rule is broken.
pub type CaseResult = Result<(), String>;

type CaseFn = for<'a> fn(&'a Harness) -> Pin<Box<dyn Future<Output = CaseResult> + Send + 'a>>;

/// One conformance case: a name and the rule it checks.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name (also the name of its generated test).
    pub name: &'static str,
    /// The rule, in words.
    pub checks: &'static str,
    run: CaseFn,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

macro_rules! cases {
    ($($name:ident: $checks:literal,)*) => {
        /// Every case, in the order [`run_all`] runs them.
        pub const CASES: &[Case] = &[
            $(Case { name: stringify!($name), checks: $checks, run: |h| Box::pin(cases::$name(h)) },)*
        ];

        /// Expands to one `#[tokio::test]` per conformance case, each calling `$harness().await`
        /// (an `async fn() -> Option<Harness>`; `None` skips) and failing with the broken rule.
        #[macro_export]
        macro_rules! conformance_tests {
            ($harness:path) => {
                $crate::__conformance_tests_inner!($harness; $($name)*);
            };
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests_inner {
    ($harness:path; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(harness) = $harness().await else {
                    return;
                };
                if let Err(failure) = $crate::conformance::run_case(stringify!($name), &harness).await {
                    panic!("{failure}");
                }
            }
        )*
    };
}

cases! {
    acquire_free_key: "a free key is granted with a fencing token, a deadline in the future and a readable record",
    held_key_reports_holder: "a second acquire while held is refused, naming the holder where the backend knows it",
    release_lets_next_in_with_higher_token: "after release another holder gets the key at once with a higher token",
    renew_extends_the_grant: "renewal extends the grant past its first TTL; background renewal keeps a lease held",
    stale_grant_cannot_renew_or_release: "renew and release with a stale or foreign holder token are refused and leave the new holder alone",
    reacquire_by_same_holder_is_idempotent: "acquiring again with the same holder token returns the same fencing token",
    stopped_holder_is_taken_over_after_ttl: "a holder that stops renewing is taken over after the TTL (not before), with a higher token",
    lost_acquire_response_is_resolved: "an acquire that landed but whose response was lost is found by reading back",
    lost_renew_response_is_tolerated: "a renewal whose response was lost does not lose the lease",
    lost_release_response_is_resolved: "a release whose response was lost is confirmed and frees the key",
    fencing_never_resets: "fencing tokens only rise across release, expiry, takeover and break cycles",
    contenders_never_overlap: "N contenders by M rounds never overlap in the critical section and see rising tokens",
    lost_signal_fires_before_next_grant: "a cut-off holder's lost signal fires before anyone else is granted the key",
    inspect_reports_holder: "inspect shows the holder, its metadata, the token and the TTL without acquiring",
    many_independent_keys: "many keys are held at once, by one locker or many, and stay held across renewals",
    break_frees_the_key: "an administrative break frees the key, keeps the counter, and the old holder learns of it",
    election_hands_over_leadership: "one leader at a time; resigning hands over to the next candidate; observe reports it",
    reacquire_extends_the_expiry: "acquiring again with the same holder token extends the store's expiry to a full TTL from then",
    renewal_reports_the_ttl_it_granted: "a renewal reports the TTL the store granted: the key is not taken over before it runs out",
    renew_after_release_is_not_held: "renew and release after a release answer NotHeld and leave the key free",
    slow_responses_never_stretch_the_deadline: "answers delayed after the store applied the call never push the holder deadline past send + window, and the next grant comes after it",
    panicking_backend_call_ends_the_lease: "a backend call that panics during renewal ends the lease as lost (signalled), and renewal goes on for other leases",
    observed_takeover_waits_for_the_rule: "an ObservedExpiry backend never takes over before its declared rule's wait has passed since the holder's grant was answered",
    observed_renewal_restarts_the_observation: "an ObservedExpiry backend restarts the observation when the holder renews: no takeover before the rule's wait after the renewal",
    semaphore_admits_exactly_n: "a semaphore of N permits grants N permits on distinct slots to N lockers and refuses the next; a release lets one more in",
    semaphore_contenders_never_exceed_n: "contenders from several lockers never hold more than N permits by local deadline; each slot's tokens rise in grant order",
    semaphore_lost_permit_signalled_before_regrant: "a cut-off permit holder's lost signal fires before its slot is granted to anyone else, with a higher token",
    semaphore_refuses_mixed_permit_counts: "where the backend can list, a semaphore refuses to hold a permit beside live holders using another permit count, with a typed error naming both",
    fencing_survives_outside_changes: "a record deleted or overwritten behind the backend's back (another tool, a lifecycle rule, a person): the next grant's token is still above every earlier one",
    invalid_input_is_typed: "invalid keys and TTLs give typed errors: the locker checks before reaching the store, and the backend refuses a TTL outside its range",
    fencing_survives_idle_records: "the fencing counter outlives any idle time: a record is never collected, so tokens never restart",
    batch_renewal_answers_in_order: "renew_many answers each request in the order asked, whatever the key order",
    fractional_ttls_are_granted_as_reported: "at a fractional TTL, acquire, renew and renew_many each keep the key for at least the TTL they report, counted from the send",
    observed_observation_starts_at_the_response: "an ObservedExpiry backend starts observing a version at the response of the read that returned it, never at its send (checked with a second instance reading across a renewal)",
    a_second_instance_never_overwrites_a_grant: "a second backend instance on the same store (a second process) is refused a key the first holds, however little it knows of it",
}

/// Runs the case named `name` against `harness`.
///
/// # Errors
/// A [`Failure`] describing the broken rule, or an unknown case name.
pub async fn run_case(name: &str, harness: &Harness) -> Result<(), Failure> {
    let Some(case) = CASES.iter().find(|c| c.name == name) else {
        return Err(Failure {
            case: "unknown",
            message: format!("no conformance case is named {name:?}"),
        });
    };
    tracing::info!(
        case = case.name,
        backend = harness.backend.name(),
        "conformance case"
    );
    (case.run)(harness).await.map_err(|message| Failure {
        case: case.name,
        message,
    })
}

/// Runs every case in turn and returns the failures (empty when the backend conforms).
pub async fn run_all(harness: &Harness) -> Vec<Failure> {
    let mut failures = Vec::new();
    for case in CASES {
        if let Err(f) = run_case(case.name, harness).await {
            failures.push(f);
        }
    }
    failures
}

/// Reads the environment variable `name` that points a backend's tests at a server.
///
/// Returns `None` after printing a loud `SKIPPED` line when it is unset — unless `LEASE_TEST_REQUIRE`
/// is `1` (as `cargo xtask test` sets it in CI), in which case a missing server is a failure.
///
/// # Panics
/// When the variable is unset and `LEASE_TEST_REQUIRE=1`.
pub fn require_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            let required = std::env::var("LEASE_TEST_REQUIRE").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{name} is not set and LEASE_TEST_REQUIRE=1: the server for this test must be available"
            );
            eprintln!(
                "SKIPPED: {name} is not set; run `cargo xtask test` to start the test servers"
            );
            None
        }
    }
}
