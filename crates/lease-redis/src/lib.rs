//! Leases (locks that expire) with fencing tokens in Redis or Valkey, on the server's clock.
//!
//! A lease on `KEY` is the string `PREFIX{KEY}` (holder token, fencing token, TTL, acquisition
//! time and holder metadata; see `docs/backends/redis.md`) with a `PX` expiry on the server's
//! clock. Its fencing counter `PREFIX{KEY}:fence` never expires and is never deleted; both keys
//! share a Redis Cluster hash slot. Every operation is one `EVALSHA` of a server-side script:
//!
//! - **acquire** sets the lease when the key is free or already ours, and bumps the counter in the
//!   same script. A missing counter (never created, flushed, evicted, lost in a restart without
//!   persistence or a failover to a lagging replica) is seeded from the server's `TIME` in
//!   microseconds, so tokens never go back to small numbers;
//! - **renew** and **release** check the holder first; release keeps the counter and publishes on
//!   the lease key's name, which waiting acquirers subscribe to;
//! - a process's renewals go in one script call per interval;
//! - a key holding something this library did not write is a
//!   [`CorruptRecord`](crate::BackendErrorKind::CorruptRecord) error and is left untouched.
//!
//! The protocol around the scripts — deadlines, renewal, retries, resolving unknown outcomes —
//! is [`lease_core`]'s, re-exported here so this crate is the only dependency a user needs.
//!
//! **What Redis can promise depends on how it is run**: without AOF (`appendfsync always`) or
//! `WAIT` for replicas, a crash or failover can forget a grant, and a second holder can be granted
//! while the first still holds; the fencing token still rises, so a resource that checks tokens
//! stays safe. `docs/backends/redis.md` lists each setting and what each failure does.
//!
//! ```no_run
//! use std::time::Duration;
//! use lease_redis::{Locker, RedisBackend};
//!
//! # #[tokio::main] async fn main() -> Result<(), lease_redis::Error> {
//! let backend = RedisBackend::connect("redis://127.0.0.1:6379/0").await?;
//! let locker = Locker::builder(backend).ttl(Duration::from_secs(15)).build()?;
//! locker
//!     .run_exclusive("reports/daily", |lease| async move {
//!         // write to the resource with `lease.fencing_token()`
//!         let _token = lease.fencing_token().get();
//!         Ok::<(), lease_redis::Error>(())
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod error;
mod notify;
mod options;
mod record;
mod redact;
mod scripts;
mod slot;
#[cfg(feature = "tls")]
mod tls;

pub use backend::{MAX_TTL, MIN_TTL, RedisBackend};
pub use options::{KeyPrefix, RedisOptions};
pub use slot::hash_slot;

pub use lease_core::*;

/// The `redis` crate this backend is built on, for [`RedisBackend::from_client`].
pub use redis;

/// The crate README's examples (shown on crates.io), compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
