//! SQLite: one upsert per acquire on SQLite's own clock, batched renewals through `json_each`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, Grant, LeaseKey,
    LeaseRecord, ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};

use crate::common::{
    self, DbClass, FENCING_MAX, RawRecord, SqlOptions, Stats, TableName, base_capabilities,
    granted_ttl,
};

const NAME: &str = "sqlite";

/// SQLite's clock as whole milliseconds since the Unix epoch. `'now'` is the same instant for
/// every use within one statement.
const NOW: &str = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

/// Leases in a SQLite database file, shared safely by every process that opens the same file.
///
/// Expiry is decided by SQLite's clock (`julianday('now')`, millisecond resolution) in the
/// process running the statement; processes sharing a file share a host, so they share a clock.
/// The file is opened in WAL mode with `synchronous = FULL` (a fencing token must survive a power
/// loss) and a busy timeout: a write that waits longer than it for another process's write lock
/// fails with a transient error, never as "held". Every operation is one statement, atomic under
/// SQLite's single-writer lock.
///
/// URLs: `sqlite://relative/path.db`, `sqlite:///absolute/path.db`, `sqlite::memory:`. The file
/// is created if missing.
///
/// ```
/// use lease_sql::{Locker, SqliteBackend};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_sql::Error> {
/// let backend = SqliteBackend::connect("sqlite::memory:").await?;
/// backend.migrate().await?;
/// let locker = Locker::new(backend);
/// let lease = locker.try_acquire("nightly").await?.expect("free");
/// assert_eq!(lease.fencing_token().get(), 1);
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    table: TableName,
    sql: Statements,
    stats: Stats,
}

struct Statements {
    create: String,
    acquire: String,
    read: String,
    renew: String,
    renew_many: String,
    release: String,
    break_lease: String,
}

impl Statements {
    fn new(table: &TableName) -> Self {
        let t = table.quoted('"');
        Self {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n\
                 \x20   name        TEXT NOT NULL PRIMARY KEY,\n\
                 \x20   holder      TEXT,\n\
                 \x20   holder_meta TEXT,\n\
                 \x20   fencing     INTEGER NOT NULL,\n\
                 \x20   ttl_ms      INTEGER,\n\
                 \x20   acquired_at INTEGER, -- Unix milliseconds, SQLite's clock\n\
                 \x20   expires_at  INTEGER  -- Unix milliseconds, SQLite's clock\n\
                 )"
            ),
            acquire: format!(
                "INSERT INTO {t} AS l (name, holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at)\n\
                 VALUES (?1, ?2, ?3, 1, ?4, {NOW}, {NOW} + ?4)\n\
                 ON CONFLICT (name) DO UPDATE SET\n\
                 \x20   fencing = CASE WHEN l.holder = excluded.holder AND l.expires_at > excluded.acquired_at\n\
                 \x20                 THEN l.fencing ELSE l.fencing + 1 END,\n\
                 \x20   acquired_at = CASE WHEN l.holder = excluded.holder AND l.expires_at > excluded.acquired_at\n\
                 \x20                 THEN l.acquired_at ELSE excluded.acquired_at END,\n\
                 \x20   holder = excluded.holder,\n\
                 \x20   holder_meta = excluded.holder_meta,\n\
                 \x20   ttl_ms = excluded.ttl_ms,\n\
                 \x20   expires_at = excluded.expires_at\n\
                 WHERE typeof(l.fencing) = 'integer' AND l.fencing >= 0 AND l.fencing < {FENCING_MAX}\n\
                 \x20 AND (l.holder IS NULL\n\
                 \x20      OR (typeof(l.expires_at) = 'integer' AND l.expires_at <= excluded.acquired_at)\n\
                 \x20      OR l.holder = excluded.holder)\n\
                 RETURNING fencing, ttl_ms"
            ),
            read: format!(
                "SELECT holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at, {NOW}\n\
                 FROM {t} WHERE name = ?1"
            ),
            renew: format!(
                "UPDATE {t} SET ttl_ms = ?3, expires_at = {NOW} + ?3\n\
                 WHERE name = ?1 AND holder = ?2 AND typeof(expires_at) = 'integer' AND expires_at > {NOW}"
            ),
            renew_many: format!(
                "UPDATE {t} AS l SET ttl_ms = r.ttl, expires_at = {NOW} + r.ttl\n\
                 FROM (SELECT json_extract(value, '$[0]') AS name, json_extract(value, '$[1]') AS holder,\n\
                 \x20            json_extract(value, '$[2]') AS ttl FROM json_each(?1)) AS r\n\
                 WHERE l.name = r.name AND l.holder = r.holder\n\
                 \x20 AND typeof(l.expires_at) = 'integer' AND l.expires_at > {NOW}\n\
                 RETURNING name, holder, ttl_ms"
            ),
            release: format!(
                "UPDATE {t} SET holder = NULL, holder_meta = NULL, acquired_at = NULL, expires_at = NULL\n\
                 WHERE name = ?1 AND holder = ?2 AND typeof(expires_at) = 'integer' AND expires_at > {NOW}"
            ),
            break_lease: format!(
                "UPDATE {t} SET holder = NULL, holder_meta = NULL, acquired_at = NULL, expires_at = NULL\n\
                 WHERE name = ?1"
            ),
        }
    }
}

fn db_class(e: &dyn sqlx::error::DatabaseError) -> DbClass {
    let code: i64 = e.code().and_then(|c| c.parse().ok()).unwrap_or_default();
    match code & 0xff {
        // BUSY, LOCKED (another connection or process holds the lock), IOERR, NOMEM, PROTOCOL
        5 | 6 | 10 | 7 | 15 => DbClass::Transient,
        // TOOBIG, MISMATCH: a value in the row is not what this library writes
        18 | 20 => DbClass::Corrupt,
        _ => DbClass::Fatal,
    }
}

fn classify(op: &str, e: sqlx::Error) -> BackendError {
    common::classify(NAME, op, e, db_class)
}

fn raw_record(row: &SqliteRow) -> Result<RawRecord, sqlx::Error> {
    let acquired_ms: Option<i64> = row.try_get(4)?;
    let expires_ms: Option<i64> = row.try_get(5)?;
    let now_ms: i64 = row.try_get(6)?;
    Ok(RawRecord {
        holder: row.try_get(0)?,
        holder_meta: row.try_get(1)?,
        fencing: row.try_get(2)?,
        ttl_ms: row.try_get(3)?,
        acquired_at_us: acquired_ms.and_then(|ms| ms.checked_mul(1000)),
        remaining_us: expires_ms
            .and_then(|ms| ms.checked_sub(now_ms))
            .and_then(|ms| ms.checked_mul(1000)),
    })
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

impl SqliteBackend {
    /// Opens (creating if missing) the database at `url`: `sqlite://relative/path.db`,
    /// `sqlite:///absolute/path.db` or `sqlite::memory:`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a URL that cannot be parsed;
    /// [`Error::Backend`](crate::Error::Backend) when the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, lease_core::Error> {
        Self::connect_with(url, SqlOptions::default()).await
    }

    /// Like [`SqliteBackend::connect`], with options.
    ///
    /// # Errors
    /// As [`SqliteBackend::connect`].
    pub async fn connect_with(url: &str, options: SqlOptions) -> Result<Self, lease_core::Error> {
        let memory = is_in_memory(url);
        let mut connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| common::connect_error(NAME, url, e, db_class))?
            .create_if_missing(true)
            .busy_timeout(options.busy_timeout)
            .synchronous(SqliteSynchronous::Full);
        if !memory {
            connect = connect.journal_mode(SqliteJournalMode::Wal);
        }
        let mut pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { options.max_connections })
            .acquire_timeout(options.acquire_timeout);
        if memory {
            // The database lives as long as a connection to it: keep the only one open.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool
            .connect_with(connect)
            .await
            .map_err(|e| common::connect_error(NAME, url, e, db_class))?;
        Ok(Self::from_pool(pool, options))
    }

    /// Uses an existing pool. For several processes sharing a file, open it with WAL and a busy
    /// timeout as [`SqliteBackend::connect`] does.
    pub fn from_pool(pool: SqlitePool, options: SqlOptions) -> Self {
        let sql = Statements::new(&options.table);
        Self {
            inner: Arc::new(Inner {
                pool,
                table: options.table,
                sql,
                stats: Stats::default(),
            }),
        }
    }

    /// The `CREATE TABLE IF NOT EXISTS` statement [`SqliteBackend::migrate`] runs.
    pub fn create_table_sql(&self) -> String {
        self.inner.sql.create.clone()
    }

    /// Creates the lease table if it does not exist (idempotent).
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the file is read-only or locked too long.
    pub async fn migrate(&self) -> Result<(), lease_core::Error> {
        self.inner.stats.statement();
        sqlx::query(AssertSqlSafe(self.inner.sql.create.as_str()))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| classify("migrate", e))?;
        Ok(())
    }

    /// The pool operations run on.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// The lease table.
    pub fn table(&self) -> &TableName {
        &self.inner.table
    }

    /// How many SQL statements this backend has sent (a metric; tests use it to count round
    /// trips).
    pub fn statements_sent(&self) -> u64 {
        self.inner.stats.statements()
    }

    async fn read(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.inner.stats.statement();
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.read.as_str()))
            .bind(key.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| classify("read", e))?;
        match row {
            None => Ok(None),
            Some(row) => raw_record(&row)
                .map_err(|e| classify("read", e))?
                .decode(NAME, key)
                .map(Some),
        }
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        base_capabilities()
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.inner.stats.statement();
        let ttl = common::checked_ttl(NAME, request.ttl)?;
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.acquire.as_str()))
            .bind(request.key.as_str())
            .bind(request.holder.to_string())
            .bind(request.metadata.as_str())
            .bind(ttl)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| classify("acquire", e))?;
        if let Some(row) = row {
            let fencing: i64 = row.try_get(0).map_err(|e| classify("acquire", e))?;
            let granted: i64 = row.try_get(1).map_err(|e| classify("acquire", e))?;
            return Ok(AcquireOutcome::Acquired(Grant::new(
                common::fencing(NAME, fencing)?,
                granted_ttl(NAME, granted)?,
            )));
        }
        let record = self.read(&request.key).await?;
        common::outcome_from_record(NAME, &request.holder, record)
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.inner.stats.statement();
        let ttl = common::checked_ttl(NAME, request.ttl)?;
        let done = sqlx::query(AssertSqlSafe(self.inner.sql.renew.as_str()))
            .bind(request.key.as_str())
            .bind(request.holder.to_string())
            .bind(ttl)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| classify("renew", e))?;
        Ok(if done.rows_affected() == 1 {
            RenewOutcome::Renewed(Duration::from_millis(ttl as u64))
        } else {
            RenewOutcome::NotHeld
        })
    }

    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        if requests.is_empty() {
            return Vec::new();
        }
        let batch = common::json_batch(&common::distinct_leases(requests));
        self.inner.stats.statement();
        let rows = sqlx::query(AssertSqlSafe(self.inner.sql.renew_many.as_str()))
            .bind(batch)
            .fetch_all(&self.inner.pool)
            .await;
        let renewed: Result<HashMap<(String, String), i64>, sqlx::Error> = rows.and_then(|rows| {
            rows.iter()
                .map(|row| Ok(((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?)))
                .collect()
        });
        match renewed {
            Ok(renewed) => common::renew_results(NAME, requests, &renewed),
            Err(e) => {
                let e = classify("renew_many", e);
                requests
                    .iter()
                    .map(|_| Err(BackendError::new(e.kind(), NAME, e.message().to_owned())))
                    .collect()
            }
        }
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.inner.stats.statement();
        let done = sqlx::query(AssertSqlSafe(self.inner.sql.release.as_str()))
            .bind(request.key.as_str())
            .bind(request.holder.to_string())
            .execute(&self.inner.pool)
            .await
            .map_err(|e| classify("release", e))?;
        Ok(if done.rows_affected() == 1 {
            ReleaseOutcome::Released
        } else {
            ReleaseOutcome::NotHeld
        })
    }

    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.read(key).await
    }

    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        // Read and clear under one write lock (BEGIN IMMEDIATE), so the record returned is the one
        // that was broken.
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| classify("break", e))?;
        self.inner.stats.statement();
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.read.as_str()))
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| classify("break", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let before = raw_record(&row)
            .map_err(|e| classify("break", e))
            .and_then(|raw| raw.decode(NAME, key));
        self.inner.stats.statement();
        sqlx::query(AssertSqlSafe(self.inner.sql.break_lease.as_str()))
            .bind(key.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("break", e))?;
        tx.commit().await.map_err(|e| classify("break", e))?;
        before.map(Some)
    }
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("table", &self.inner.table)
            .field("pool_size", &self.inner.pool.size())
            .finish_non_exhaustive()
    }
}
