//! SQLite: one upsert per acquire on SQLite's own clock, batched renewals through `json_each`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use lease_core::{AcquireRequest, BackendError, Capabilities, LeaseKey, LeaseRecord};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection as _, Row};

use crate::backend::SqlBackend;
use crate::common::{self, DbClass, FENCING_MAX, RawRecord, base_capabilities, granted_ttl};
use crate::dialect::{
    AcquireReply, BatchLease, Dialect, ListPage, ListedRow, Renewed, RoundTrips, sealed,
};
use crate::{SqlOptions, TableName};

const NAME: &str = "sqlite";

/// SQLite's clock as whole milliseconds since the Unix epoch. `'now'` is the same instant for
/// every use within one statement.
const NOW: &str = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

/// A renewal batch (`?1`, from [`holder_keys`]) as rows of `name` and `holder`.
const HOLDER_KEYS: &str =
    "(SELECT substr(value, 33) AS name, substr(value, 1, 32) AS holder FROM json_each(?1))";

/// Leases per renewal statement: bounds how long one statement holds the database's write lock
/// (about 2 ms per thousand rows), so acquires from other connections wait that long at most.
const RENEW_CHUNK: usize = 16_384;

/// A renewal batch as a JSON array of strings, each a holder token (always 32 hex digits) followed
/// by the key: what [`HOLDER_KEYS`] splits.
fn holder_keys<'a>(leases: impl Iterator<Item = &'a BatchLease<'a>>, count: usize) -> String {
    let mut out = String::with_capacity(count * 64 + 2);
    out.push('[');
    for (i, lease) in leases.enumerate() {
        debug_assert_eq!(lease.holder.len(), 32, "a holder token is 32 hex digits");
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(&lease.holder);
        common::push_json_escaped(&mut out, lease.key);
        out.push('"');
    }
    out.push(']');
    out
}

/// The columns a read returns: holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at
/// (Unix ms), now (Unix ms).
const READ_COLUMNS: &str = "holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at";

/// Leases in a SQLite database file, shared safely by every process that opens the same file.
///
/// Expiry is decided by SQLite's clock (`julianday('now')`, millisecond resolution) in the
/// process running the statement; processes sharing a file share a host, so they share a clock.
/// The file is opened in WAL mode with `synchronous = FULL` (a fencing token must survive a power
/// loss) and a busy timeout: a write that waits longer than it for another process's write lock
/// fails with a transient error, never as "held". Every lease operation is one statement, atomic
/// under SQLite's single-writer lock.
///
/// URLs: `sqlite://relative/path.db`, `sqlite:///absolute/path.db`, `sqlite::memory:`. The file
/// is created if missing; processes opening a new file at the same moment wait for each other (up
/// to the busy timeout) instead of failing with "database is locked".
///
/// ```
/// use lease_sql::{Locker, SqliteBackend};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_sql::Error> {
/// let backend = SqliteBackend::connect("sqlite::memory:").await?;
/// backend.migrate().await?;
/// let locker = Locker::new(backend);
/// let lease = locker.try_acquire("nightly").await?.expect("free");
/// println!("fencing token {}", lease.fencing_token()); // microseconds since 1970 on a new key
/// lease.release().await?;
/// # Ok(()) }
/// ```
pub type SqliteBackend = SqlBackend<SqliteDialect>;

/// SQLite's statements for one table; see [`SqliteBackend`].
#[derive(Debug)]
pub struct SqliteDialect {
    create: String,
    acquire: String,
    read: String,
    renew: String,
    renew_many: String,
    renewed: String,
    release: String,
    break_lease: String,
    list: String,
    list_all: String,
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

fn raw_record(row: &SqliteRow, offset: usize) -> Result<RawRecord, sqlx::Error> {
    let acquired_ms: Option<i64> = row.try_get(offset + 4)?;
    let expires_ms: Option<i64> = row.try_get(offset + 5)?;
    let now_ms: i64 = row.try_get(offset + 6)?;
    Ok(RawRecord {
        holder: row.try_get(offset)?,
        holder_meta: row.try_get(offset + 1)?,
        fencing: row.try_get(offset + 2)?,
        ttl_ms: row.try_get(offset + 3)?,
        acquired_at_us: acquired_ms.and_then(|ms| ms.checked_mul(1000)),
        remaining_us: expires_ms
            .and_then(|ms| ms.checked_sub(now_ms))
            .and_then(|ms| ms.checked_mul(1000)),
    })
}

/// SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock.
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i64>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

impl sealed::Sealed for SqliteDialect {}

#[async_trait]
impl Dialect for SqliteDialect {
    type Db = sqlx::Sqlite;
    const NAME: &'static str = NAME;
    const PREPARE_IS_A_ROUND_TRIP: bool = false;

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
            // A new row (the first grant, or one after the row was deleted) starts its counter
            // from the clock in microseconds (SQLite's clock has millisecond steps), above any
            // token the key issued before.
            acquire: format!(
                "INSERT INTO {t} AS l (name, holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at)\n\
                 VALUES (?1, ?2, ?3, {NOW} * 1000, ?4, {NOW}, {NOW} + ?4)\n\
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
            read: format!("SELECT {READ_COLUMNS}, {NOW} FROM {t} WHERE name = ?1"),
            renew: format!(
                "UPDATE {t} SET ttl_ms = ?3, expires_at = {NOW} + ?3\n\
                 WHERE name = ?1 AND holder = ?2 AND typeof(expires_at) = 'integer' AND expires_at > {NOW}"
            ),
            // One TTL per statement (`?2`), and each lease as one string, its holder token's 32
            // characters then its key: `substr` splits it, where `json_extract` on a `[key, holder,
            // ttl]` triple parsed JSON three times per row and cost twice the CPU at 100,000 leases.
            // No RETURNING: the count of changed rows says whether all were renewed, and decoding
            // 100,000 returned rows cost more than the statement.
            renew_many: format!(
                "UPDATE {t} AS l SET ttl_ms = ?2, expires_at = {NOW} + ?2\n\
                 FROM {HOLDER_KEYS} AS r\n\
                 WHERE l.name = r.name AND l.holder = r.holder\n\
                 \x20 AND typeof(l.expires_at) = 'integer' AND l.expires_at > {NOW}"
            ),
            renewed: format!(
                "SELECT l.name, l.holder, l.ttl_ms FROM {HOLDER_KEYS} AS r\n\
                 JOIN {t} AS l ON l.name = r.name AND l.holder = r.holder\n\
                 WHERE typeof(l.expires_at) = 'integer' AND l.expires_at > {NOW}"
            ),
            release: format!(
                "UPDATE {t} SET holder = NULL, holder_meta = NULL, acquired_at = NULL, expires_at = NULL\n\
                 WHERE name = ?1 AND holder = ?2 AND typeof(expires_at) = 'integer' AND expires_at > {NOW}"
            ),
            break_lease: format!(
                "UPDATE {t} SET holder = NULL, holder_meta = NULL, acquired_at = NULL, expires_at = NULL\n\
                 WHERE name = ?1"
            ),
            list: format!(
                "SELECT name, {READ_COLUMNS}, {NOW} FROM {t}\n\
                 WHERE name >= ?1 AND name > ?2 AND name < ?3 ORDER BY name LIMIT ?4"
            ),
            list_all: format!(
                "SELECT name, {READ_COLUMNS}, {NOW} FROM {t}\n\
                 WHERE name >= ?1 AND name > ?2 ORDER BY name LIMIT ?3"
            ),
        }
    }

    fn capabilities(&self) -> Capabilities {
        base_capabilities()
    }

    fn create_table_sql(&self) -> &str {
        &self.create
    }

    fn classify(op: &str, error: sqlx::Error) -> BackendError {
        classify(op, error)
    }

    async fn connect(url: &str, options: &SqlOptions) -> Result<SqlitePool, lease_core::Error> {
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
        // Opening a file that another process is creating at the same moment can answer BUSY at
        // once: the switch to WAL takes a lock for which SQLite does not call the busy handler.
        // Retried (up to the busy timeout) as a write that finds the lock taken waits for it.
        let deadline = tokio::time::Instant::now() + options.busy_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            match pool.clone().connect_with(connect.clone()).await {
                Ok(pool) => return Ok(pool),
                Err(e) if is_busy(&e) && tokio::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(common::connect_error(NAME, url, e, db_class)),
            }
        }
    }

    async fn execute(
        &self,
        conn: &mut SqliteConnection,
        sql: &str,
        trips: &RoundTrips,
    ) -> Result<(), BackendError> {
        trips.add(1);
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(conn)
            .await
            .map_err(|e| classify("migrate", e))?;
        Ok(())
    }

    async fn acquire(
        &self,
        conn: &mut SqliteConnection,
        request: &AcquireRequest,
        ttl_ms: i64,
        trips: &RoundTrips,
    ) -> Result<AcquireReply, BackendError> {
        trips.add(1);
        let row = sqlx::query(AssertSqlSafe(self.acquire.as_str()))
            .bind(request.key.as_str())
            .bind(request.holder.to_string())
            .bind(request.metadata.as_str())
            .bind(ttl_ms)
            .fetch_optional(conn)
            .await
            .map_err(|e| classify("acquire", e))?;
        let Some(row) = row else {
            return Ok(AcquireReply::ReadBack);
        };
        let fencing: i64 = row.try_get(0).map_err(|e| classify("acquire", e))?;
        let granted: i64 = row.try_get(1).map_err(|e| classify("acquire", e))?;
        Ok(AcquireReply::Granted {
            fencing: common::fencing(NAME, fencing)?,
            ttl: granted_ttl(NAME, granted)?,
        })
    }

    async fn read(
        &self,
        conn: &mut SqliteConnection,
        key: &LeaseKey,
        trips: &RoundTrips,
    ) -> Result<Option<LeaseRecord>, BackendError> {
        trips.add(1);
        let row = sqlx::query(AssertSqlSafe(self.read.as_str()))
            .bind(key.as_str())
            .fetch_optional(conn)
            .await
            .map_err(|e| classify("read", e))?;
        match row {
            None => Ok(None),
            Some(row) => raw_record(&row, 0)
                .map_err(|e| classify("read", e))?
                .decode(NAME, key)
                .map(Some),
        }
    }

    async fn renew(
        &self,
        conn: &mut SqliteConnection,
        key: &str,
        holder: &str,
        ttl_ms: i64,
        trips: &RoundTrips,
    ) -> Result<bool, BackendError> {
        trips.add(1);
        let done = sqlx::query(AssertSqlSafe(self.renew.as_str()))
            .bind(key)
            .bind(holder)
            .bind(ttl_ms)
            .execute(conn)
            .await
            .map_err(|e| classify("renew", e))?;
        Ok(done.rows_affected() == 1)
    }

    /// One UPDATE per TTL and chunk of 16,384 leases, plus one SELECT for a chunk in
    /// which some were not renewed, to tell which.
    async fn renew_batch(
        &self,
        conn: &mut SqliteConnection,
        leases: &[BatchLease<'_>],
        trips: &RoundTrips,
    ) -> Result<Renewed, BackendError> {
        // Indices into `leases`, grouped by TTL.
        let mut by_ttl: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, lease) in leases.iter().enumerate() {
            by_ttl.entry(lease.ttl_ms).or_default().push(i);
        }
        let mut renewed = vec![None; leases.len()];
        for (ttl_ms, mut group) in by_ttl {
            // In key order each chunk walks the primary-key index forwards, a page at a time,
            // instead of jumping about a table larger than SQLite's page cache.
            group.sort_unstable_by_key(|&i| leases[i].key);
            for chunk in group.chunks(RENEW_CHUNK) {
                let batch = holder_keys(chunk.iter().map(|&i| &leases[i]), chunk.len());
                trips.add(1);
                let done = sqlx::query(AssertSqlSafe(self.renew_many.as_str()))
                    .bind(&batch)
                    .bind(ttl_ms)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| classify("renew_many", e))?;
                if done.rows_affected() == chunk.len() as u64 {
                    for &i in chunk {
                        renewed[i] = Some(ttl_ms);
                    }
                    continue;
                }
                // The rows still held by the requested holder and not expired after the UPDATE
                // are exactly the renewed ones: a row it skipped had expired or changed hands,
                // and our holder token is ours alone.
                trips.add(1);
                let rows = sqlx::query(AssertSqlSafe(self.renewed.as_str()))
                    .bind(&batch)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(|e| classify("renew_many", e))?;
                let rows = common::renewed_columns(&rows).map_err(|e| classify("renew_many", e))?;
                let in_chunk = common::renewed_from_rows(chunk.iter().map(|&i| &leases[i]), rows);
                for (&i, ttl) in chunk.iter().zip(in_chunk) {
                    renewed[i] = ttl;
                }
            }
        }
        Ok(renewed)
    }

    async fn release(
        &self,
        conn: &mut SqliteConnection,
        key: &str,
        holder: &str,
        trips: &RoundTrips,
    ) -> Result<bool, BackendError> {
        trips.add(1);
        let done = sqlx::query(AssertSqlSafe(self.release.as_str()))
            .bind(key)
            .bind(holder)
            .execute(conn)
            .await
            .map_err(|e| classify("release", e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn break_lease(
        &self,
        conn: &mut SqliteConnection,
        key: &LeaseKey,
        trips: &RoundTrips,
    ) -> Result<Option<LeaseRecord>, BackendError> {
        // Read and clear under one write lock (BEGIN IMMEDIATE), so the record returned is the one
        // that was broken: BEGIN, SELECT, UPDATE, COMMIT.
        trips.add(1);
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| classify("break", e))?;
        trips.add(1);
        let row = sqlx::query(AssertSqlSafe(self.read.as_str()))
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| classify("break", e))?;
        let Some(row) = row else {
            trips.add(1);
            tx.rollback().await.map_err(|e| classify("break", e))?;
            return Ok(None);
        };
        let before = raw_record(&row, 0)
            .map_err(|e| classify("break", e))
            .and_then(|raw| raw.decode(NAME, key));
        trips.add(1);
        sqlx::query(AssertSqlSafe(self.break_lease.as_str()))
            .bind(key.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("break", e))?;
        trips.add(1);
        tx.commit().await.map_err(|e| classify("break", e))?;
        before.map(Some)
    }

    async fn list_page(
        &self,
        conn: &mut SqliteConnection,
        page: ListPage<'_>,
        trips: &RoundTrips,
    ) -> Result<Vec<ListedRow>, BackendError> {
        trips.add(1);
        let query = match page.until {
            Some(until) => sqlx::query(AssertSqlSafe(self.list.as_str()))
                .bind(page.from)
                .bind(page.after)
                .bind(until),
            None => sqlx::query(AssertSqlSafe(self.list_all.as_str()))
                .bind(page.from)
                .bind(page.after),
        };
        let rows = query
            .bind(page.limit)
            .fetch_all(conn)
            .await
            .map_err(|e| classify("list", e))?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get(0).map_err(|e| classify("list", e))?;
                let raw = raw_record(row, 1).map_err(|e| classify("list", e));
                common::decode_listed(NAME, name, raw)
            })
            .collect()
    }
}
