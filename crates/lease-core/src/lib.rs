//! Distributed leases (locks that expire) with fencing tokens: the protocol, once.
//!
//! `lease-core` holds everything that does not depend on the store: the [`Locker`] that acquires,
//! waits, renews and releases; the [`Lease`] guard with its deadline and lost signal; leader
//! [`Election`]; counting [`Semaphore`]s; fencing ([`FencingToken`], [`Fence`]); the small [`Backend`] trait a store
//! implements; the in-process [`MemoryBackend`]; and, behind the `conformance` feature, the test kit
//! every backend runs against itself.
//!
//! # The contract
//!
//! 1. **Exclusion**: at any instant at most one holder believes it holds a key.
//! 2. **Fencing**: every grant carries a token strictly greater than every token issued before for
//!    that key; the counter survives release and expiry.
//! 3. **Holder deadline**: a holder's deadline is the instant its acquire or renew *request was
//!    sent*, plus the TTL, minus a clock-drift allowance and a safety margin. When it passes without
//!    a confirmed renewal, the lease is lost — before any other holder can be granted the key.
//! 4. **Owner-checked mutations**: renew and release succeed only for the current grant.
//! 5. **Unknown outcomes are resolved, not guessed**, by reading the record back.
//! 6. **Errors are typed** ([`Error`], [`ErrorKind`]).
//!
//! See `docs/protocol.md` for the state machine and the safety argument.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use lease_core::{Locker, MemoryBackend};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
//! let locker = Locker::builder(MemoryBackend::new()).ttl(Duration::from_secs(15)).build()?;
//! if let Some(lease) = locker.try_acquire("daily-export").await? {
//!     let token = lease.fencing_token();
//!     // write to the resource with `token`; stop if `lease.lost()` resolves
//!     lease.release().await?;
//! }
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod election;
mod error;
mod fence;
mod key;
mod lease;
mod locker;
mod memory;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod observe;
pub mod observed;
mod options;
mod renewer;
mod semaphore;
mod token;
mod wakeups;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use backend::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, ClockModel, Grant, LeaseRecord,
    RecordState, ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};
pub use election::{Election, Leadership};
pub use error::{BackendError, BackendErrorKind, Error, ErrorKind, InvalidInput, LostReason};
pub use fence::{Fence, StaleToken};
pub use key::LeaseKey;
pub use lease::{Lease, LeaseHandle};
pub use locker::{Locker, LockerBuilder};
pub use memory::MemoryBackend;
pub use options::{LockerOptions, MIN_HOLDER_WINDOW, MIN_SAFETY_ALLOWANCE, RetryPolicy};
pub use semaphore::{Permit, PermitHandle, PermitRecord, Semaphore, SemaphoreOptions};
pub use token::{FencingToken, HolderMetadata, HolderToken};
pub use wakeups::KeyWakeups;

/// Re-exported so backends and users name the same types.
pub use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;

/// The crate README's examples (shown on crates.io), compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
