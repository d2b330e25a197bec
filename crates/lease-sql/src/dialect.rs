//! What differs between databases — SQL text, how one statement's reply is read, error numbers —
//! behind [`Dialect`]. Everything else (constructors, validation, read-back, batching, error
//! fan-out, round-trip counting, the [`Backend`](lease_core::Backend) glue) is written once in
//! [`SqlBackend`](crate::SqlBackend), which is generic over it, the way sqlx keeps driver
//! specifics behind its `Database` trait.
//!
//! The trait is sealed: the three dialects live in this crate. A fourth is one file that builds
//! its statements for a table and runs each as one statement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lease_core::{AcquireRequest, BackendError, Capabilities, FencingToken, LeaseKey, LeaseRecord};

use crate::{SqlOptions, TableName};

pub(crate) mod sealed {
    /// Keeps [`Dialect`](super::Dialect) implementable only in this crate.
    #[allow(unreachable_pub)]
    pub trait Sealed {}
}

/// A connection of dialect `D`'s database.
pub type Connection<D> = <<D as Dialect>::Db as sqlx::Database>::Connection;

/// Counts the requests a backend sent and waited for: statements, `BEGIN`/`COMMIT`, and (over a
/// network) each server-side prepare that the first use of a statement on a pooled connection
/// costs.
#[derive(Debug, Default)]
pub struct RoundTrips(AtomicU64);

impl RoundTrips {
    /// Adds `n` round trips.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The round trips so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one acquire statement reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcquireReply {
    /// The key is granted to the requester with this token and stored TTL.
    Granted {
        /// The token minted (or kept, for a re-acquire) by the statement.
        fencing: FencingToken,
        /// The TTL the row now stores.
        ttl: Duration,
    },
    /// Not granted, or a reply that cannot be trusted: the row is read back to decide.
    ReadBack,
}

/// One lease of a batched renewal. Each `(key, holder)` pair appears once in a batch.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BatchLease<'a> {
    /// The lease key.
    pub key: &'a str,
    /// The holder token, as stored.
    pub holder: String,
    /// The TTL to grant, in milliseconds.
    pub ttl_ms: i64,
}

/// What a batched renewal did to each lease of the batch, in the batch's order: the TTL (ms) the
/// row now stores where it was renewed, `None` where it was not.
pub type Renewed = Vec<Option<i64>>;

/// One SQL dialect: its statements for one table and how to run each.
///
/// Every method that takes a connection sends one statement (a few for the administrative
/// `break_lease` on dialects without a single-statement form) and adds what it sent to `trips`.
#[async_trait]
pub trait Dialect: sealed::Sealed + Send + Sync + Sized + 'static {
    /// The sqlx database.
    type Db: sqlx::Database + sqlx::database::HasStatementCache + crate::FencedDatabase;

    /// The backend's name in errors and tracing spans.
    const NAME: &'static str;

    /// Whether preparing a statement costs a round trip (a server; not in-process SQLite).
    const PREPARE_IS_A_ROUND_TRIP: bool;

    /// Builds the statements for `table`.
    fn new(table: &TableName) -> Self;

    /// The statements for `options.table`, with whatever else of `options` the dialect uses
    /// (PostgreSQL: the [`Pooler`](crate::Pooler)). The default is [`Dialect::new`].
    fn from_options(options: &SqlOptions) -> Self {
        Self::new(&options.table)
    }

    /// What the backend supports.
    fn capabilities(&self) -> Capabilities;

    /// The `CREATE TABLE IF NOT EXISTS` statement.
    fn create_table_sql(&self) -> &str;

    /// Classifies a sqlx error from operation `op`.
    fn classify(op: &str, error: sqlx::Error) -> BackendError;

    /// Opens a pool for `url` with `options`.
    async fn connect(
        url: &str,
        options: &SqlOptions,
    ) -> Result<sqlx::Pool<Self::Db>, lease_core::Error>;

    /// Checks that an existing table can be used (run by `connect` and `migrate`).
    async fn check_table(
        &self,
        conn: &mut Connection<Self>,
        trips: &RoundTrips,
    ) -> Result<(), lease_core::Error> {
        let _ = (conn, trips);
        Ok(())
    }

    /// Runs `sql` (schema statements).
    async fn execute(
        &self,
        conn: &mut Connection<Self>,
        sql: &str,
        trips: &RoundTrips,
    ) -> Result<(), BackendError>;

    /// The acquire statement: insert, take over a free or expired row, or re-acquire our own.
    async fn acquire(
        &self,
        conn: &mut Connection<Self>,
        request: &AcquireRequest,
        ttl_ms: i64,
        trips: &RoundTrips,
    ) -> Result<AcquireReply, BackendError>;

    /// Reads one row.
    async fn read(
        &self,
        conn: &mut Connection<Self>,
        key: &LeaseKey,
        trips: &RoundTrips,
    ) -> Result<Option<LeaseRecord>, BackendError>;

    /// Renews one grant still in force; whether it was.
    async fn renew(
        &self,
        conn: &mut Connection<Self>,
        key: &str,
        holder: &str,
        ttl_ms: i64,
        trips: &RoundTrips,
    ) -> Result<bool, BackendError>;

    /// Renews a batch of distinct grants.
    async fn renew_batch(
        &self,
        conn: &mut Connection<Self>,
        leases: &[BatchLease<'_>],
        trips: &RoundTrips,
    ) -> Result<Renewed, BackendError>;

    /// Releases one grant still in force; whether it was.
    async fn release(
        &self,
        conn: &mut Connection<Self>,
        key: &str,
        holder: &str,
        trips: &RoundTrips,
    ) -> Result<bool, BackendError>;

    /// Frees the row whoever holds it; the row as it was.
    async fn break_lease(
        &self,
        conn: &mut Connection<Self>,
        key: &LeaseKey,
        trips: &RoundTrips,
    ) -> Result<Option<LeaseRecord>, BackendError>;

    /// Up to `limit` rows with `after < name`, `name >= from` and (when given) `name < until`,
    /// sorted by name in byte order. A row whose columns cannot be decoded is listed as
    /// [`LeaseRecord::unreadable`]; only a failed query fails the page.
    async fn list_page(
        &self,
        conn: &mut Connection<Self>,
        page: ListPage<'_>,
        trips: &RoundTrips,
    ) -> Result<Vec<ListedRow>, BackendError>;

    /// Called when an acquire found the key held, before the row is read back.
    fn contended(&self, pool: &sqlx::Pool<Self::Db>, key: &LeaseKey) {
        let _ = (pool, key);
    }

    /// Waits until `key` may have changed or `max_wait` passes (default: sleeps).
    async fn wait_for_change(
        &self,
        pool: &sqlx::Pool<Self::Db>,
        key: &LeaseKey,
        max_wait: Duration,
    ) -> Result<(), BackendError> {
        let _ = (pool, key);
        tokio::time::sleep(max_wait).await;
        Ok(())
    }
}

/// One page of a listing: the key range and where the previous page ended.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ListPage<'a> {
    /// The smallest name in range (the prefix).
    pub from: &'a str,
    /// The first name past the range (the prefix's successor), or none for every name.
    pub until: Option<&'a str>,
    /// The last name of the previous page (`""` for the first).
    pub after: &'a str,
    /// At most this many rows.
    pub limit: i64,
}

/// One row of a listing page ([`Dialect::list_page`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListedRow {
    /// The row's name: the next page starts after it.
    pub name: String,
    /// The row's record ([`LeaseRecord::unreadable`] when its columns cannot be decoded), or
    /// `None` when the name is not a lease key (not a lease row: the listing skips it).
    pub record: Option<LeaseRecord>,
}
