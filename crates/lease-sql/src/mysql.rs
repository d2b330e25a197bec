//! MySQL 8 / MariaDB 10.6+: one `INSERT … ON DUPLICATE KEY UPDATE` per acquire that reports the
//! minted fencing token through `LAST_INSERT_ID(expr)` in the same reply; expiry on
//! `UTC_TIMESTAMP(6)`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, FencingToken, Grant,
    LeaseKey, LeaseRecord, ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{AssertSqlSafe, Row};

use crate::common::{
    self, BatchLease, DbClass, FENCING_MAX, RawRecord, SqlOptions, Stats, TableName,
    base_capabilities,
};

const NAME: &str = "mysql";

/// What `LAST_INSERT_ID` is set to when the key is held by someone else (never a fencing token:
/// those fit a signed BIGINT).
const HELD_SENTINEL: u64 = u64::MAX;

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

/// Leases in a MySQL 8 or MariaDB 10.6+ (InnoDB) table.
///
/// Expiry is decided by the server's `UTC_TIMESTAMP(6)`. Acquire is a single
/// `INSERT … ON DUPLICATE KEY UPDATE` whose reply carries the new fencing token (through
/// `LAST_INSERT_ID(expr)`), so the uncontended path is one round trip; renew and release are one
/// owner-checked `UPDATE` each. Every operation runs in autocommit on the pool.
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
#[derive(Clone)]
pub struct MySqlBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: MySqlPool,
    table: TableName,
    sql: Statements,
    stats: Stats,
}

struct Statements {
    create: String,
    acquire: String,
    read: String,
    read_for_update: String,
    renew: String,
    renew_many: String,
    renewed: String,
    release: String,
    break_lease: String,
}

/// The take-over condition, on the row's values before the update: free, expired, or ours.
const TAKE: &str = "(fencing >= 0 AND (holder IS NULL OR expires_at <= UTC_TIMESTAMP(6) OR holder = VALUES(holder)))";
/// The same holder whose grant is still in force: an idempotent re-acquire.
const SAME: &str = "(holder = VALUES(holder) AND expires_at > UTC_TIMESTAMP(6))";

const READ_COLUMNS: &str = "holder, holder_meta, fencing, ttl_ms, \
     TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', acquired_at), \
     TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at)";

const CLEAR: &str = "holder = NULL, holder_meta = NULL, acquired_at = NULL, expires_at = NULL";

impl Statements {
    fn new(t: &str) -> Self {
        Self {
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
            // `LAST_INSERT_ID(1)` in VALUES makes an insert report 1, so a reply of 0 is never a
            // valid answer (an UPDATE trigger resets what the update branch reports to 0).
            // ON DUPLICATE KEY UPDATE assigns left to right and later expressions see earlier
            // assignments, so every column that TAKE or SAME reads (fencing, holder, expires_at)
            // is assigned only after the expressions that need its old value, and each
            // re-evaluation of TAKE gives the same answer (see docs/backends/sql.md).
            acquire: format!(
                "INSERT INTO {t} (name, holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at)\n\
                 VALUES (?, ?, ?, LAST_INSERT_ID(1), ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)\n\
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
        }
    }
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

fn raw_record(row: &MySqlRow) -> Result<RawRecord, sqlx::Error> {
    Ok(RawRecord {
        holder: row.try_get(0)?,
        holder_meta: row.try_get(1)?,
        fencing: row.try_get(2)?,
        ttl_ms: row.try_get(3)?,
        acquired_at_us: row.try_get(4)?,
        remaining_us: row.try_get(5)?,
    })
}

impl MySqlBackend {
    /// Connects a pool to `url` (`mysql://user:password@host:3306/database`) and checks that the
    /// lease table, if it exists, has no `UPDATE` triggers.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a URL that cannot be parsed;
    /// [`Error::Backend`](crate::Error::Backend) when the server cannot be reached (transient),
    /// refuses the login or database (fatal), or the table has an `UPDATE` trigger (fatal).
    /// Messages never contain the password.
    pub async fn connect(url: &str) -> Result<Self, lease_core::Error> {
        Self::connect_with(url, SqlOptions::default()).await
    }

    /// Like [`MySqlBackend::connect`], with options.
    ///
    /// # Errors
    /// As [`MySqlBackend::connect`].
    pub async fn connect_with(url: &str, options: SqlOptions) -> Result<Self, lease_core::Error> {
        let connect = MySqlConnectOptions::from_str(url)
            .map_err(|e| common::connect_error(NAME, url, e, db_class))?;
        let pool = MySqlPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| common::connect_error(NAME, url, e, db_class))?;
        let backend = Self::from_pool(pool, options);
        backend.check_no_update_triggers().await?;
        Ok(backend)
    }

    /// Uses an existing pool; operations run in autocommit on connections taken from it.
    pub fn from_pool(pool: MySqlPool, options: SqlOptions) -> Self {
        let quoted = options.table.quoted('`');
        Self {
            inner: Arc::new(Inner {
                pool,
                sql: Statements::new(&quoted),
                table: options.table,
                stats: Stats::default(),
            }),
        }
    }

    /// The `CREATE TABLE IF NOT EXISTS` statement [`MySqlBackend::migrate`] runs.
    pub fn create_table_sql(&self) -> String {
        self.inner.sql.create.clone()
    }

    /// Creates the lease table if it does not exist (idempotent) and checks that it has no
    /// `UPDATE` triggers.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend), fatal when the user may not create tables or the
    /// table has an `UPDATE` trigger.
    pub async fn migrate(&self) -> Result<(), lease_core::Error> {
        self.inner.stats.statement();
        sqlx::query(AssertSqlSafe(self.inner.sql.create.as_str()))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| classify("migrate", e))?;
        self.check_no_update_triggers().await
    }

    /// Refuses a lease table with `UPDATE` triggers: under one, the server reports 0 where the
    /// acquire statement set `LAST_INSERT_ID` to the new token, so every acquire would need a
    /// second round trip to read its row back (the backend does that rather than trust such a
    /// reply), and a trigger that writes the row could break exclusion outright.
    async fn check_no_update_triggers(&self) -> Result<(), lease_core::Error> {
        self.inner.stats.statement();
        let triggers: Option<String> = sqlx::query_scalar(
            "SELECT GROUP_CONCAT(TRIGGER_NAME ORDER BY TRIGGER_NAME SEPARATOR ', ') \
             FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = COALESCE(?, DATABASE()) AND EVENT_OBJECT_TABLE = ? \
             AND EVENT_MANIPULATION = 'UPDATE'",
        )
        .bind(self.inner.table.schema())
        .bind(self.inner.table.table())
        .fetch_one(&self.inner.pool)
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
                    self.inner.table
                ),
            ))),
        }
    }

    /// The pool operations run on.
    pub fn pool(&self) -> &MySqlPool {
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

    /// Renews one chunk of distinct leases: one UPDATE, plus one SELECT only when some of them
    /// were not renewed (to tell which). Returns the renewed `(name, holder)` pairs with the TTL
    /// each has stored.
    async fn renew_chunk(
        &self,
        chunk: &[BatchLease<'_>],
    ) -> Result<HashMap<(String, String), i64>, BackendError> {
        let batch = common::json_batch(chunk);
        self.inner.stats.statement();
        let done = sqlx::query(AssertSqlSafe(self.inner.sql.renew_many.as_str()))
            .bind(&batch)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| classify("renew_many", e))?;
        if done.rows_affected() == chunk.len() as u64 {
            return Ok(chunk
                .iter()
                .map(|l| ((l.key.to_owned(), l.holder.clone()), l.ttl_ms))
                .collect());
        }
        // Some were not renewed: the rows still held by the requested holder after the UPDATE
        // are exactly the renewed ones (the others had expired or changed hands).
        self.inner.stats.statement();
        let rows = sqlx::query(AssertSqlSafe(self.inner.sql.renewed.as_str()))
            .bind(&batch)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| classify("renew_many", e))?;
        rows.iter()
            .map(|row| Ok(((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?)))
            .collect::<Result<HashMap<_, _>, sqlx::Error>>()
            .map_err(|e| classify("renew_many", e))
    }
}

#[async_trait]
impl Backend for MySqlBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        base_capabilities()
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.inner.stats.statement();
        let ttl = common::checked_ttl(NAME, request.ttl)?;
        let done = sqlx::query(AssertSqlSafe(self.inner.sql.acquire.as_str()))
            .bind(request.key.as_str())
            .bind(request.holder.to_string())
            .bind(request.metadata.as_str())
            .bind(ttl)
            .bind(ttl * 1000)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| classify("acquire", e))?;
        let granted = Duration::from_millis(ttl as u64);
        // Inserted: 1 row, LAST_INSERT_ID 1 (from VALUES). Taken over or re-acquired: 2 rows (the
        // client asks for found rows, so an untouched row counts 1), LAST_INSERT_ID = the token.
        // Held: LAST_INSERT_ID = the sentinel. Anything else (an UPDATE trigger makes it 0) is
        // not trusted: the row read back says whether this holder token got the key.
        let (rows, id) = (done.rows_affected(), done.last_insert_id());
        match (rows, id) {
            (1, 1) => {
                return Ok(AcquireOutcome::Acquired(Grant::new(
                    FencingToken::new(1),
                    granted,
                )));
            }
            (2, token) if (1..=FENCING_MAX as u64).contains(&token) => {
                return Ok(AcquireOutcome::Acquired(Grant::new(
                    FencingToken::new(token),
                    granted,
                )));
            }
            (_, HELD_SENTINEL) => {}
            (rows, id) => {
                tracing::debug!(
                    rows,
                    last_insert_id = id,
                    "acquire: unexpected reply, resolved by reading the row back"
                );
            }
        }
        let record = self.read(&request.key).await?;
        common::outcome_from_record(NAME, &request.holder, record)
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.inner.stats.statement();
        let ttl = common::checked_ttl(NAME, request.ttl)?;
        let done = sqlx::query(AssertSqlSafe(self.inner.sql.renew.as_str()))
            .bind(ttl)
            .bind(ttl * 1000)
            .bind(request.key.as_str())
            .bind(request.holder.to_string())
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
        let leases = common::distinct_leases(requests);
        let mut renewed = HashMap::with_capacity(leases.len());
        for chunk in leases.chunks(RENEW_CHUNK) {
            match self.renew_chunk(chunk).await {
                Ok(done) => renewed.extend(done),
                Err(e) => {
                    return requests
                        .iter()
                        .map(|_| Err(BackendError::new(e.kind(), NAME, e.message().to_owned())))
                        .collect();
                }
            }
        }
        common::renew_results(NAME, requests, &renewed)
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
        // An administrative operation: a short transaction that locks the row, reads it, frees it.
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(|e| classify("break", e))?;
        self.inner.stats.statement();
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.read_for_update.as_str()))
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

impl fmt::Debug for MySqlBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlBackend")
            .field("table", &self.inner.table)
            .field("pool_size", &self.inner.pool.size())
            .finish_non_exhaustive()
    }
}
