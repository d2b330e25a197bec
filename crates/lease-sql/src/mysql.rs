//! MySQL 8 / MariaDB 10.6+: one `INSERT … ON DUPLICATE KEY UPDATE` per acquire that reports the
//! minted fencing token through `LAST_INSERT_ID(expr)` in the same reply; expiry on
//! `UTC_TIMESTAMP(6)`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use lease_core::{AcquireRequest, BackendError, Capabilities, FencingToken, LeaseKey, LeaseRecord};
use sqlx::mysql::{
    MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlRow,
};
use sqlx::{AssertSqlSafe, Connection as _, Row};

use crate::backend::SqlBackend;
use crate::common::{self, DbClass, FENCING_MAX, RawRecord, base_capabilities};
use crate::dialect::{
    AcquireReply, BatchLease, Dialect, ListPage, ListedRow, Renewed, RoundTrips, sealed,
};
use crate::{SqlOptions, TableName};

const NAME: &str = "mysql";

/// What `LAST_INSERT_ID` is set to when the key is held by someone else (never a fencing token:
/// those fit a signed BIGINT).
const HELD_SENTINEL: u64 = u64::MAX;

/// The first fencing token of a row: microseconds since the Unix epoch on the server's clock
/// (`UTC_TIMESTAMP(6)` is fixed for the statement; `TIMESTAMPDIFF` from the epoch does not depend
/// on the session time zone), so a row deleted behind the backend's back restarts above every
/// token it issued (docs/protocol.md, "Where the counter starts").
const FIRST_TOKEN: &str = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))";

/// Leases per batched renewal statement: bounds its one JSON parameter to about 1.5 MB, well
/// under the server's default `max_allowed_packet` (16 MB on MariaDB 10.11, 64 MB on MySQL 8).
const RENEW_CHUNK: usize = 16_384;

/// The leases of a batched renewal as a derived table, from one JSON parameter
/// `[[name, holder, ttl_ms], …]`. Its columns have the table's character set and collation, so the
/// join below is a primary-key lookup per lease (`eq_ref`): the statement reads, and locks, only
/// the rows it renews — never other holders' rows — and its text is the same for every batch
/// size (one server-side prepared statement per connection).
const BATCH: &str = "JSON_TABLE(?, '$[*]' COLUMNS (\
     name VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin PATH '$[0]', \
     holder VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin PATH '$[1]', \
     ttl BIGINT PATH '$[2]')) AS r";

/// The take-over condition, on the row's values before the update: free, expired, or ours.
const TAKE: &str = "(fencing >= 0 AND (holder IS NULL OR expires_at <= UTC_TIMESTAMP(6) OR holder = VALUES(holder)))";
/// The same holder whose grant is still in force: an idempotent re-acquire.
const SAME: &str = "(holder = VALUES(holder) AND expires_at > UTC_TIMESTAMP(6))";

const READ_COLUMNS: &str = "holder, holder_meta, fencing, ttl_ms, \
     TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', acquired_at), \
     TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at)";

const CLEAR: &str = "holder = NULL, holder_meta = NULL, acquired_at = NULL, expires_at = NULL";

/// Leases in a MySQL 8 or MariaDB 10.6+ (InnoDB) table.
///
/// Expiry is decided by the server's `UTC_TIMESTAMP(6)`. Acquire is a single
/// `INSERT … ON DUPLICATE KEY UPDATE` whose reply carries the new fencing token (through
/// `LAST_INSERT_ID(expr)`), so the uncontended path is one round trip; a reply outside the expected
/// set (as an `UPDATE` trigger causes) is resolved by reading the row back, and `connect` and
/// `migrate` refuse a table with `UPDATE` triggers. Renew and release are one owner-checked
/// `UPDATE` each. Every operation runs in autocommit on the pool.
///
/// ```no_run
/// use lease_sql::{Locker, MySqlBackend};
/// # #[tokio::main] async fn main() -> Result<(), lease_sql::Error> {
/// let backend = MySqlBackend::connect("mysql://app:secret@db.internal:3306/app").await?;
/// backend.migrate().await?;
/// let lease = Locker::new(backend).acquire("import/daily").await?;
/// lease.release().await?;
/// # Ok(()) }
/// ```
pub type MySqlBackend = SqlBackend<MySqlDialect>;

/// MySQL's and MariaDB's statements for one table; see [`MySqlBackend`].
#[derive(Debug)]
pub struct MySqlDialect {
    schema: Option<String>,
    table: String,
    create: String,
    acquire: String,
    read: String,
    read_for_update: String,
    renew: String,
    renew_many: String,
    renewed: String,
    release: String,
    break_lease: String,
    list: String,
    list_all: String,
}

fn db_class(e: &dyn sqlx::error::DatabaseError) -> DbClass {
    let Some(e) = e.try_downcast_ref::<MySqlDatabaseError>() else {
        return DbClass::Fatal;
    };
    match e.number() {
        // lock wait timeout, deadlock, too many connections, server shutdown, query interrupted,
        // network read/write errors, connection killed (MariaDB), max execution time (MySQL
        // 3024, MariaDB 1969), server gone away / lost during query
        1205 | 1213 | 1040 | 1053 | 1317 | 1158..=1161 | 1927 | 3024 | 1969 | 2006 | 2013 => {
            DbClass::Transient
        }
        // BIGINT out of range: the fencing counter of the row cannot be bumped
        1690 => DbClass::Corrupt,
        _ => DbClass::Fatal,
    }
}

fn classify(op: &str, e: sqlx::Error) -> BackendError {
    common::classify(NAME, op, e, db_class)
}

fn raw_record(row: &MySqlRow, offset: usize) -> Result<RawRecord, sqlx::Error> {
    Ok(RawRecord {
        holder: row.try_get(offset)?,
        holder_meta: row.try_get(offset + 1)?,
        fencing: row.try_get(offset + 2)?,
        ttl_ms: row.try_get(offset + 3)?,
        acquired_at_us: row.try_get(offset + 4)?,
        remaining_us: row.try_get(offset + 5)?,
    })
}

impl sealed::Sealed for MySqlDialect {}

#[async_trait]
impl Dialect for MySqlDialect {
    type Db = sqlx::MySql;
    const NAME: &'static str = NAME;
    const PREPARE_IS_A_ROUND_TRIP: bool = true;

    fn new(table: &TableName) -> Self {
        let t = table.quoted('`');
        Self {
            schema: table.schema().map(str::to_owned),
            table: table.table().to_owned(),
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n\
                 \x20   name        VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,\n\
                 \x20   holder      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,\n\
                 \x20   holder_meta VARCHAR(512) CHARACTER SET utf8mb4 NULL,\n\
                 \x20   fencing     BIGINT NOT NULL,\n\
                 \x20   ttl_ms      BIGINT NULL,\n\
                 \x20   acquired_at DATETIME(6) NULL,\n\
                 \x20   expires_at  DATETIME(6) NULL,\n\
                 \x20   PRIMARY KEY (name)\n\
                 ) ENGINE = InnoDB"
            ),
            // `LAST_INSERT_ID(first token)` in VALUES makes an insert report its token, so a reply
            // of 0 is never a valid answer (an UPDATE trigger resets what the update branch
            // reports to 0). A new row (the first grant, or one after the row was deleted) starts
            // its counter from the server's clock in microseconds, above any earlier token.
            // ON DUPLICATE KEY UPDATE assigns left to right and later expressions see earlier
            // assignments, so every column that TAKE or SAME reads (fencing, holder, expires_at)
            // is assigned only after the expressions that need its old value, and each
            // re-evaluation of TAKE gives the same answer (see docs/backends/sql.md).
            acquire: format!(
                "INSERT INTO {t} (name, holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at)\n\
                 VALUES (?, ?, ?, LAST_INSERT_ID({FIRST_TOKEN}), ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)\n\
                 ON DUPLICATE KEY UPDATE\n\
                 \x20   fencing = IF({TAKE}, LAST_INSERT_ID(IF({SAME}, fencing, fencing + 1)),\n\
                 \x20                IF(LAST_INSERT_ID({HELD_SENTINEL}) > 0, fencing, fencing)),\n\
                 \x20   acquired_at = IF({TAKE}, IF({SAME}, acquired_at, VALUES(acquired_at)), acquired_at),\n\
                 \x20   holder_meta = IF({TAKE}, VALUES(holder_meta), holder_meta),\n\
                 \x20   ttl_ms = IF({TAKE}, VALUES(ttl_ms), ttl_ms),\n\
                 \x20   holder = IF({TAKE}, VALUES(holder), holder),\n\
                 \x20   expires_at = IF({TAKE}, VALUES(expires_at), expires_at)"
            ),
            read: format!("SELECT {READ_COLUMNS} FROM {t} WHERE name = ?"),
            read_for_update: format!("SELECT {READ_COLUMNS} FROM {t} WHERE name = ? FOR UPDATE"),
            renew: format!(
                "UPDATE {t} SET ttl_ms = ?, expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND\n\
                 WHERE name = ? AND holder = ? AND expires_at > UTC_TIMESTAMP(6)"
            ),
            // STRAIGHT_JOIN: the JSON rows drive, the table is probed by primary key.
            renew_many: format!(
                "UPDATE {BATCH} STRAIGHT_JOIN {t} AS l ON l.name = r.name AND l.holder = r.holder\n\
                 SET l.ttl_ms = r.ttl, l.expires_at = UTC_TIMESTAMP(6) + INTERVAL r.ttl * 1000 MICROSECOND\n\
                 WHERE l.expires_at > UTC_TIMESTAMP(6)"
            ),
            renewed: format!(
                "SELECT l.name, l.holder, l.ttl_ms FROM {BATCH} STRAIGHT_JOIN {t} AS l\n\
                 \x20   ON l.name = r.name AND l.holder = r.holder\n\
                 WHERE l.expires_at > UTC_TIMESTAMP(6)"
            ),
            release: format!(
                "UPDATE {t} SET {CLEAR}\n\
                 WHERE name = ? AND holder = ? AND expires_at > UTC_TIMESTAMP(6)"
            ),
            break_lease: format!("UPDATE {t} SET {CLEAR} WHERE name = ?"),
            list: format!(
                "SELECT name, {READ_COLUMNS} FROM {t}\n\
                 WHERE name >= ? AND name > ? AND name < ? ORDER BY name LIMIT ?"
            ),
            list_all: format!(
                "SELECT name, {READ_COLUMNS} FROM {t} WHERE name >= ? AND name > ? ORDER BY name LIMIT ?"
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

    async fn connect(url: &str, options: &SqlOptions) -> Result<MySqlPool, lease_core::Error> {
        let connect = MySqlConnectOptions::from_str(url)
            .map_err(|e| common::connect_error(NAME, url, e, db_class))?;
        MySqlPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| common::connect_error(NAME, url, e, db_class))
    }

    /// Refuses a lease table with `UPDATE` triggers: under one, the server reports 0 where the
    /// acquire statement set `LAST_INSERT_ID` to the new token, so every acquire would need a
    /// second round trip to read its row back (the backend does that rather than trust such a
    /// reply), and a trigger that writes the row could break exclusion outright.
    async fn check_table(
        &self,
        conn: &mut MySqlConnection,
        trips: &RoundTrips,
    ) -> Result<(), lease_core::Error> {
        trips.add(1);
        let triggers: Option<String> = sqlx::query_scalar(
            "SELECT GROUP_CONCAT(TRIGGER_NAME ORDER BY TRIGGER_NAME SEPARATOR ', ') \
             FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = COALESCE(?, DATABASE()) AND EVENT_OBJECT_TABLE = ? \
             AND EVENT_MANIPULATION = 'UPDATE'",
        )
        .bind(self.schema.as_deref())
        .bind(self.table.as_str())
        .fetch_one(conn)
        .await
        .map_err(|e| classify("check triggers", e))?;
        match triggers {
            None => Ok(()),
            Some(names) => Err(lease_core::Error::Backend(BackendError::fatal(
                NAME,
                format!(
                    "the lease table {} has UPDATE trigger(s) {names}: an UPDATE trigger hides \
                     the token the acquire statement reports and may rewrite lease rows; \
                     drop the trigger(s) or give the leases a table of their own",
                    match &self.schema {
                        Some(schema) => format!("{schema}.{}", self.table),
                        None => self.table.clone(),
                    }
                ),
            ))),
        }
    }

    async fn execute(
        &self,
        conn: &mut MySqlConnection,
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
        conn: &mut MySqlConnection,
        request: &AcquireRequest,
        ttl_ms: i64,
        trips: &RoundTrips,
    ) -> Result<AcquireReply, BackendError> {
        trips.add(1);
        let done = sqlx::query(AssertSqlSafe(self.acquire.as_str()))
            .bind(request.key.as_str())
            .bind(request.holder.to_string())
            .bind(request.metadata.as_str())
            .bind(ttl_ms)
            .bind(ttl_ms * 1000)
            .execute(conn)
            .await
            .map_err(|e| classify("acquire", e))?;
        let ttl = Duration::from_millis(ttl_ms.unsigned_abs());
        // Inserted: 1 row, LAST_INSERT_ID = the first token (from VALUES). Taken over or
        // re-acquired: 2 rows (the client asks for found rows, so an untouched row counts 1),
        // LAST_INSERT_ID = the token. Held: LAST_INSERT_ID = the sentinel (the untouched row
        // counts 1). Anything else (an UPDATE trigger makes it 0) is not trusted: the row read
        // back says whether this holder token got the key.
        Ok(match (done.rows_affected(), done.last_insert_id()) {
            (1 | 2, token) if (1..=FENCING_MAX as u64).contains(&token) => AcquireReply::Granted {
                fencing: FencingToken::new(token),
                ttl,
            },
            (_, HELD_SENTINEL) => AcquireReply::ReadBack,
            (rows, id) => {
                tracing::debug!(
                    rows,
                    last_insert_id = id,
                    "acquire: unexpected reply, resolved by reading the row back"
                );
                AcquireReply::ReadBack
            }
        })
    }

    async fn read(
        &self,
        conn: &mut MySqlConnection,
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
        conn: &mut MySqlConnection,
        key: &str,
        holder: &str,
        ttl_ms: i64,
        trips: &RoundTrips,
    ) -> Result<bool, BackendError> {
        trips.add(1);
        let done = sqlx::query(AssertSqlSafe(self.renew.as_str()))
            .bind(ttl_ms)
            .bind(ttl_ms * 1000)
            .bind(key)
            .bind(holder)
            .execute(conn)
            .await
            .map_err(|e| classify("renew", e))?;
        Ok(done.rows_affected() == 1)
    }

    /// One UPDATE per chunk of 16,384 leases, plus one SELECT for a chunk in which some
    /// were not renewed (to tell which: no `RETURNING` on MySQL's `UPDATE`).
    async fn renew_batch(
        &self,
        conn: &mut MySqlConnection,
        leases: &[BatchLease<'_>],
        trips: &RoundTrips,
    ) -> Result<Renewed, BackendError> {
        let mut renewed = Vec::with_capacity(leases.len());
        for chunk in leases.chunks(RENEW_CHUNK) {
            let batch = common::json_batch(chunk);
            trips.add(1);
            let done = sqlx::query(AssertSqlSafe(self.renew_many.as_str()))
                .bind(&batch)
                .execute(&mut *conn)
                .await
                .map_err(|e| classify("renew_many", e))?;
            if done.rows_affected() == chunk.len() as u64 {
                renewed.extend(chunk.iter().map(|l| Some(l.ttl_ms)));
                continue;
            }
            // The rows still held by the requested holder after the UPDATE are exactly the
            // renewed ones (the others had expired or changed hands).
            trips.add(1);
            let rows = sqlx::query(AssertSqlSafe(self.renewed.as_str()))
                .bind(&batch)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| classify("renew_many", e))?;
            let rows = common::renewed_columns(&rows).map_err(|e| classify("renew_many", e))?;
            renewed.extend(common::renewed_from_rows(chunk.iter(), rows));
        }
        Ok(renewed)
    }

    async fn release(
        &self,
        conn: &mut MySqlConnection,
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

    /// An administrative operation: a short transaction that locks the row, reads it, frees it
    /// (BEGIN, SELECT … FOR UPDATE, UPDATE, COMMIT).
    async fn break_lease(
        &self,
        conn: &mut MySqlConnection,
        key: &LeaseKey,
        trips: &RoundTrips,
    ) -> Result<Option<LeaseRecord>, BackendError> {
        trips.add(1);
        let mut tx = conn.begin().await.map_err(|e| classify("break", e))?;
        trips.add(1);
        let row = sqlx::query(AssertSqlSafe(self.read_for_update.as_str()))
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
        conn: &mut MySqlConnection,
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
