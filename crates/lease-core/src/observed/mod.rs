//! Observed expiry: leases on stores that have conditional writes but no clock (object storage).
//!
//! An object store can do "write only if absent" and "write only if the version is still the one
//! I read", but it cannot say "this lease expired": nothing on the store compares times. So a
//! contender decides expiry by itself, on its own monotonic clock, by the rule of
//! [`ObservationRule`]:
//!
//! > A contender's observation of a record version starts when the **response** of the first read
//! > that returned that version arrived (never when that read was sent). It may write a takeover,
//! > conditional on that version, only after `TTL × (1 + max_drift) + margin` has passed on its own
//! > monotonic clock with the version unchanged.
//!
//! The holder keeps the usual deadline, counted from the instant its write was *sent*
//! ([`Locker`](crate::Locker) does that for every backend). `docs/protocol.md` gives the safety
//! argument.
//!
//! The rule is written here once. A store implements the small [`ConditionalStore`] trait (read,
//! create-if-absent, update-if-version-matches) and wraps itself in [`ObservedExpiryBackend`],
//! which is the [`Backend`](crate::Backend): it keeps the observations, mints fencing tokens, and
//! caches its own last write so that renew and release cost one conditional write each.
//!
//! ```
//! use lease_core::observed::{InMemoryConditionalStore, ObservedExpiryBackend};
//! use lease_core::{Backend, ClockModel, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
//! let backend = ObservedExpiryBackend::new(InMemoryConditionalStore::new());
//! assert_eq!(backend.capabilities().clock, ClockModel::ObservedExpiry);
//! let locker = Locker::new(backend);
//! let lease = locker.try_acquire("nightly").await?.expect("a fresh key is free");
//! assert!(lease.fencing_token().get() > 1_000_000_000_000_000, "a new key's first token comes from the clock (µs)");
//! lease.release().await?;
//! # Ok(()) }
//! ```

mod backend;
mod memory;
mod rule;
mod store;

pub use backend::{KEY_CACHE_LIMIT, ObservedExpiryBackend, RENEW_CONCURRENCY};
pub use memory::{InMemoryConditionalStore, StoreCalls};
pub use rule::ObservationRule;
pub use store::{ConditionalStore, ReadOutcome, StoredLease, WriteOutcome};
