//! Leases (locks that expire) with fencing tokens in PostgreSQL, MySQL/MariaDB or SQLite, on the
//! database server's own clock.
//!
//! One row per key holds the holder token, the holder's metadata, the fencing counter (never
//! reset, never decremented: releases keep the row) and the expiry computed by the server. Acquire
//! is one statement that inserts the row or takes it over when it is free or expired, bumping the
//! fencing counter in the same atomic step; renew and release are one owner-checked statement
//! each; a process's renewals are batched into one statement per interval. The protocol around
//! them — deadlines, renewal, retries, resolving unknown outcomes — is [`lease_core`]'s, re-exported
//! here so this crate is the only dependency a user needs.
//!
//! [`connect`] picks the dialect from the URL (`postgres://`, `mysql://`, `mariadb://`,
//! `sqlite:`); each backend also has its own `connect`, `connect_with` and `from_pool`. They are
//! all [`SqlBackend`], written once over a [`dialect::Dialect`] that holds a database's SQL.
//!
//! | backend | feature | expiry clock | wake-ups |
//! |---|---|---|---|
//! | [`PostgresBackend`] | `postgres` | `clock_timestamp()` | `LISTEN/NOTIFY` |
//! | [`MySqlBackend`] | `mysql` | `UTC_TIMESTAMP(6)` | polling |
//! | [`SqliteBackend`] | `sqlite` (default) | `julianday('now')` | polling |
//!
//! Behind PgBouncer in transaction mode, set [`Pooler::transaction`] (or
//! [`Pooler::transaction_listening_on`] to keep `LISTEN` wake-ups) with
//! [`SqlOptions::with_pooler`].
//!
//! See `docs/backends/sql.md` for the schema, every statement, the clock model and how to fence a
//! table with the token.
//!
//! ```no_run
//! # async fn example() -> Result<(), lease_sql::Error> {
//! use lease_sql::Locker;
//! let backend = lease_sql::connect("postgres://app@db/app").await?;
//! backend.migrate().await?;
//! let locker = Locker::new(backend);
//! locker
//!     .run_exclusive("reports/daily", |lease| async move {
//!         // UPDATE reports SET …, fence = $1 WHERE id = … AND fence <= $1
//!         let _token = lease.fencing_token().get();
//!         Ok::<(), lease_sql::Error>(())
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod common;
mod connect;
pub mod dialect;
mod fenced;
#[cfg(feature = "mysql")]
mod mysql;
mod pooler;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use backend::SqlBackend;
pub use common::{SqlOptions, TableName};
pub use connect::{AnySqlBackend, connect, connect_with};
pub use fenced::{FenceError, FenceTable, FencedDatabase};
#[cfg(feature = "mysql")]
pub use mysql::{MySqlBackend, MySqlDialect};
pub use pooler::Pooler;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresBackend, PostgresDialect};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteBackend, SqliteDialect};

pub use lease_core::*;

/// The `sqlx` this crate is built on, for building pools passed to `from_pool`.
pub use sqlx;

/// The crate README's examples (shown on crates.io), compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
