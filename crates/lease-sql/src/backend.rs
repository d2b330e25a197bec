//! [`SqlBackend`]: the [`Backend`] glue written once for every [`Dialect`].

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, Grant, LeaseKey,
    LeaseRecord, ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};
use sqlx::Connection as _;
use sqlx::pool::PoolConnection;

use crate::common::{self, checked_ttl};
use crate::dialect::{AcquireReply, Connection, Dialect, ListPage, RoundTrips};
use crate::{FenceTable, SqlOptions, TableName};

/// Rows per statement when listing (each page is one statement; [`Backend::list`] reads pages
/// until the prefix is exhausted).
pub(crate) const LIST_PAGE: i64 = 1000;

/// Leases in a SQL table, for the dialect `D` ([`PostgresBackend`](crate::PostgresBackend),
/// [`MySqlBackend`](crate::MySqlBackend), [`SqliteBackend`](crate::SqliteBackend)).
///
/// Every operation takes a connection from the pool and runs in autocommit, so it never joins a
/// caller's transaction and holds no row lock between calls. Cloning is cheap and shares the pool.
pub struct SqlBackend<D: Dialect> {
    inner: Arc<Inner<D>>,
}

struct Inner<D: Dialect> {
    pool: sqlx::Pool<D::Db>,
    table: TableName,
    dialect: D,
    trips: RoundTrips,
    fences: FenceTable,
}

impl<D: Dialect> Clone for SqlBackend<D> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// A pooled connection that, when dropped, counts the prepares its statements cost.
struct Counted<'a, D: Dialect> {
    conn: PoolConnection<D::Db>,
    cached_before: usize,
    trips: &'a RoundTrips,
}

impl<D: Dialect> Deref for Counted<'_, D> {
    type Target = Connection<D>;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl<D: Dialect> DerefMut for Counted<'_, D> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl<D: Dialect> Drop for Counted<'_, D> {
    fn drop(&mut self) {
        if D::PREPARE_IS_A_ROUND_TRIP {
            let prepared = self
                .conn
                .cached_statements_size()
                .saturating_sub(self.cached_before);
            self.trips.add(prepared as u64);
        }
    }
}

impl<D: Dialect> SqlBackend<D> {
    /// Connects a pool of [`SqlOptions::default`] size to `url` and checks the table, if it
    /// exists, can be used.
    ///
    /// URLs: `postgres://user:password@host:5432/database?sslmode=…`,
    /// `mysql://user:password@host:3306/database`, `sqlite://relative/path.db`,
    /// `sqlite:///absolute/path.db` or `sqlite::memory:` (a SQLite file is created if missing).
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a URL that cannot be parsed;
    /// [`Error::Backend`](crate::Error::Backend) when the server cannot be reached (transient),
    /// refuses the login or database (fatal), or the table cannot be used (fatal: on MySQL, an
    /// `UPDATE` trigger). Messages never contain the password.
    pub async fn connect(url: &str) -> Result<Self, lease_core::Error> {
        Self::connect_with(url, SqlOptions::default()).await
    }

    /// Like [`SqlBackend::connect`], with options.
    ///
    /// # Errors
    /// As [`SqlBackend::connect`].
    pub async fn connect_with(url: &str, options: SqlOptions) -> Result<Self, lease_core::Error> {
        let pool = D::connect(url, &options).await?;
        let backend = Self::from_pool(pool, options);
        let mut conn = backend.conn("connect").await?;
        backend
            .inner
            .dialect
            .check_table(&mut conn, &backend.inner.trips)
            .await?;
        drop(conn);
        Ok(backend)
    }

    /// Uses an existing pool (no check of the table; [`SqlBackend::migrate`] does it). For SQLite
    /// files shared by several processes, open them with WAL and a busy timeout as `connect`
    /// does.
    pub fn from_pool(pool: sqlx::Pool<D::Db>, options: SqlOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                dialect: D::from_options(&options),
                fences: FenceTable::new(options.fence_table),
                table: options.table,
                trips: RoundTrips::default(),
            }),
        }
    }

    /// The `CREATE TABLE IF NOT EXISTS` statements [`SqlBackend::migrate`] runs (the lease table,
    /// then the [`FenceTable`]), separated by `;`, for teams that manage schema with their own
    /// migration tool.
    pub fn create_table_sql(&self) -> String {
        format!(
            "{};\n{}",
            self.inner.dialect.create_table_sql(),
            self.inner.fences.create_table_sql::<D::Db>()
        )
    }

    /// The fence table for fenced transactions ([`SqlOptions::fence_table`]).
    pub fn fences(&self) -> &FenceTable {
        &self.inner.fences
    }

    /// Creates the lease table and the [`FenceTable`] if they do not exist (idempotent) and checks
    /// that the lease table can be used. A schema in a table name must exist.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend), fatal when the role may not create tables or the
    /// table cannot be used (on MySQL, an `UPDATE` trigger).
    pub async fn migrate(&self) -> Result<(), lease_core::Error> {
        let dialect = &self.inner.dialect;
        let mut conn = self.conn("migrate").await?;
        let fences = self.inner.fences.create_table_sql::<D::Db>();
        for create in [dialect.create_table_sql(), fences.as_str()] {
            // Processes starting together race on `CREATE … IF NOT EXISTS`: PostgreSQL lets one of
            // them fail (a duplicate key in its catalog) while the other creates the table. Tried
            // again, it finds the table; any other failure fails the same way again.
            if dialect
                .execute(&mut conn, create, &self.inner.trips)
                .await
                .is_err()
            {
                dialect
                    .execute(&mut conn, create, &self.inner.trips)
                    .await?;
            }
        }
        dialect.check_table(&mut conn, &self.inner.trips).await
    }

    /// The pool operations run on.
    pub fn pool(&self) -> &sqlx::Pool<D::Db> {
        &self.inner.pool
    }

    /// The lease table.
    pub fn table(&self) -> &TableName {
        &self.inner.table
    }

    /// The dialect: the statements this backend runs.
    pub fn dialect(&self) -> &D {
        &self.inner.dialect
    }

    /// How many requests this backend has sent and waited for (a metric; tests and the
    /// benchmark count round trips with it): every statement, `BEGIN` and `COMMIT`/`ROLLBACK` of
    /// the few multi-statement operations, and over a network each server-side prepare the first
    /// use of a statement on a pooled connection costs. PostgreSQL's `LISTEN` connection is not
    /// counted. On SQLite, which runs in-process, these are statements.
    pub fn round_trips(&self) -> u64 {
        self.inner.trips.get()
    }

    /// The former name of [`SqlBackend::round_trips`].
    #[deprecated(note = "counts round trips: use round_trips()")]
    pub fn statements_sent(&self) -> u64 {
        self.round_trips()
    }

    async fn conn(&self, op: &str) -> Result<Counted<'_, D>, BackendError> {
        let conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(|e| D::classify(op, e))?;
        Ok(Counted {
            cached_before: conn.cached_statements_size(),
            conn,
            trips: &self.inner.trips,
        })
    }

    async fn read(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let mut conn = self.conn("read").await?;
        self.inner
            .dialect
            .read(&mut conn, key, &self.inner.trips)
            .await
    }
}

#[async_trait]
impl<D: Dialect> Backend for SqlBackend<D> {
    fn name(&self) -> &'static str {
        D::NAME
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.dialect.capabilities()
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        let ttl = checked_ttl(D::NAME, request.ttl)?;
        let reply = {
            let mut conn = self.conn("acquire").await?;
            self.inner
                .dialect
                .acquire(&mut conn, request, ttl, &self.inner.trips)
                .await?
        };
        match reply {
            AcquireReply::Granted { fencing, ttl } => {
                Ok(AcquireOutcome::Acquired(Grant::new(fencing, ttl)))
            }
            AcquireReply::ReadBack => {
                self.inner.dialect.contended(&self.inner.pool, &request.key);
                let record = self.read(&request.key).await?;
                common::outcome_from_record(D::NAME, &request.holder, record)
            }
        }
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        let ttl = checked_ttl(D::NAME, request.ttl)?;
        let mut conn = self.conn("renew").await?;
        let renewed = self
            .inner
            .dialect
            .renew(
                &mut conn,
                request.key.as_str(),
                &request.holder.to_string(),
                ttl,
                &self.inner.trips,
            )
            .await?;
        Ok(if renewed {
            RenewOutcome::Renewed(Duration::from_millis(ttl.unsigned_abs()))
        } else {
            RenewOutcome::NotHeld
        })
    }

    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        let (leases, slots) = common::distinct_leases(requests);
        let renewed = if leases.is_empty() {
            Ok(Default::default())
        } else {
            match self.conn("renew_many").await {
                Ok(mut conn) => {
                    self.inner
                        .dialect
                        .renew_batch(&mut conn, &leases, &self.inner.trips)
                        .await
                }
                Err(e) => Err(e),
            }
        };
        match renewed {
            Ok(renewed) => common::renew_results(D::NAME, requests, &slots, &renewed),
            Err(e) => requests
                .iter()
                .map(|_| Err(BackendError::new(e.kind(), D::NAME, e.message().to_owned())))
                .collect(),
        }
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        let mut conn = self.conn("release").await?;
        let released = self
            .inner
            .dialect
            .release(
                &mut conn,
                request.key.as_str(),
                &request.holder.to_string(),
                &self.inner.trips,
            )
            .await?;
        Ok(if released {
            ReleaseOutcome::Released
        } else {
            ReleaseOutcome::NotHeld
        })
    }

    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.read(key).await
    }

    /// Every record whose key starts with `prefix`, sorted by key in byte order, read in pages of
    /// 1,000 rows (one index range scan each); each page is read at its own instant. The result
    /// is as large as the prefix's share of the table.
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        LeaseKey::check_prefix(prefix).map_err(|e| BackendError::invalid_input(D::NAME, e))?;
        let until = common::prefix_successor(prefix);
        let mut out: Vec<LeaseRecord> = Vec::new();
        let mut after: Option<String> = None;
        let mut conn = self.conn("list").await?;
        loop {
            let page = ListPage {
                from: prefix,
                until: until.as_deref(),
                after: after.as_deref().unwrap_or(""),
                limit: LIST_PAGE,
            };
            let rows = self
                .inner
                .dialect
                .list_page(&mut conn, page, &self.inner.trips)
                .await?;
            let full = rows.len() as i64 == LIST_PAGE;
            // Skipped rows (names that are not keys) still move the page on.
            after = rows.last().map(|row| row.name.clone()).or(after);
            out.extend(rows.into_iter().filter_map(|row| row.record));
            if !full {
                return Ok(out);
            }
        }
    }

    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let mut conn = self.conn("break").await?;
        self.inner
            .dialect
            .break_lease(&mut conn, key, &self.inner.trips)
            .await
    }

    async fn wait_for_change(
        &self,
        key: &LeaseKey,
        max_wait: Duration,
    ) -> Result<(), BackendError> {
        self.inner
            .dialect
            .wait_for_change(&self.inner.pool, key, max_wait)
            .await
    }
}

impl<D: Dialect> fmt::Debug for SqlBackend<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlBackend")
            .field("dialect", &D::NAME)
            .field("table", &self.inner.table)
            .field("pool_size", &self.inner.pool.size())
            .finish_non_exhaustive()
    }
}
