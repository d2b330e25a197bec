//! Fenced leases on object storage — S3 (and S3-compatible stores), Azure Blob Storage, Google
//! Cloud Storage, or in memory — through [`object_store`], with no clock synchronisation.
//!
//! One small JSON document per key (see [`document`]) holds the holder token, the fencing counter
//! and the TTL. Every change is one conditional write: `PutMode::Create` for a key's first grant,
//! `PutMode::Update` on the version just read for everything after. Objects are never deleted by
//! the backend, and a key whose object is gone (deleted by hand or by a lifecycle rule) starts
//! again from the clock in microseconds, so fencing tokens only rise. Nothing on the store can tell that a lease expired, so expiry is
//! *observed*: a contender takes an abandoned lease over only after it has seen the same version
//! unchanged for `TTL × (1 + max drift) + margin` on its own monotonic clock (the rule of
//! [`lease_core::observed`]). A contender that arrives cold waits about one TTL before taking
//! over; a released lease is taken at once.
//!
//! ```
//! use std::time::Duration;
//! use lease_objstore::{Locker, ObjectStoreBackend};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // s3://bucket/prefix, az://container/prefix and gs://bucket/prefix work the same way, with
//! // credentials from the environment (AWS_*, AZURE_*, GOOGLE_* variables).
//! let backend = ObjectStoreBackend::from_url("memory:///leases", [("unused", ""); 0])?;
//! let locker = Locker::builder(backend).ttl(Duration::from_secs(30)).build()?;
//! let lease = locker.try_acquire("reports/daily").await?.expect("a fresh key is free");
//! // Pass the token with every write to the protected resource; stop when lease.lost() fires.
//! // A new key's first token is the clock in microseconds; each grant after adds one.
//! let token = lease.fencing_token();
//! assert!(token.get() > 1_000_000_000_000_000);
//! lease.release().await?;
//! # Ok(()) }
//! ```
//!
//! See `docs/backends/objstore.md` for the format, the rule's cost, and notes per provider.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod builder;
pub mod document;
mod error;
mod fenced_store;

pub use backend::{ObjectStoreBackend, ObjectStoreLeases};
pub use builder::BuildError;
pub use fenced_store::{FENCING_TOKEN_ATTRIBUTE, FencedStore, FencedStoreError};
pub use lease_core::*;
pub use object_store;

/// The crate README's examples (shown on crates.io), compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
