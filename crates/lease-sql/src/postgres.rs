//! PostgreSQL: one upsert per acquire on `clock_timestamp()`, batched renewals through `unnest`,
//! waiters woken by `LISTEN/NOTIFY`.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lease_core::{AcquireRequest, BackendError, Capabilities, KeyWakeups, LeaseKey, LeaseRecord};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::task::JoinHandle;

use crate::backend::SqlBackend;
use crate::common::{self, DbClass, FENCING_MAX, RawRecord, base_capabilities, granted_ttl};
use crate::dialect::{
    AcquireReply, BatchLease, Dialect, ListPage, ListedRow, Renewed, RoundTrips, sealed,
};
use crate::{SqlOptions, TableName};

const NAME: &str = "postgres";

/// Leases in a PostgreSQL table (PostgreSQL 12 or later).
///
/// Expiry is decided by the server's `clock_timestamp()`. Every lease operation is one statement
/// in autocommit on the pool, so it works whether or not the caller has a transaction open
/// elsewhere and never holds row locks between calls. Releases and breaks `NOTIFY` a channel that
/// [`Backend::wait_for_change`](crate::Backend::wait_for_change) listens on (on a connection of
/// its own, outside the pool), so a waiting [`Locker::acquire`](crate::Locker::acquire) gets the
/// key about one round trip after its release.
///
/// ```no_run
/// use lease_sql::{Locker, PostgresBackend};
/// # #[tokio::main] async fn main() -> Result<(), lease_sql::Error> {
/// let backend = PostgresBackend::connect("postgres://app@db.internal/app").await?;
/// backend.migrate().await?;
/// let locker = Locker::new(backend);
/// let lease = locker.acquire("billing/run").await?;
/// println!("fencing token {}", lease.fencing_token());
/// lease.release().await?;
/// # Ok(()) }
/// ```
pub type PostgresBackend = SqlBackend<PostgresDialect>;

/// PostgreSQL's statements for one table, and its `LISTEN` state; see [`PostgresBackend`].
pub struct PostgresDialect {
    create: String,
    acquire: String,
    read: String,
    renew: String,
    renew_many: String,
    release: String,
    break_lease: String,
    list: String,
    list_all: String,
    channel: String,
    notifier: Arc<KeyWakeups>,
    listener_task: Mutex<Option<JoinHandle<()>>>,
    /// Behind a transaction pooler: no cached statements, each one in `BEGIN`/`COMMIT`.
    pooled: bool,
    /// Behind a transaction pooler: where `LISTEN` connects (none: waiters poll).
    listen_direct: Option<PgConnectOptions>,
}

impl Drop for PostgresDialect {
    fn drop(&mut self) {
        if let Some(task) = self.listener_task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PostgresDialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDialect")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// The first fencing token of a row: microseconds since the Unix epoch on the server's clock
/// (`n.now`, the statement's one `clock_timestamp()`), so a row deleted behind the backend's back
/// restarts above every token it issued (docs/protocol.md, "Where the counter starts").
const FIRST_TOKEN: &str = "floor(extract(epoch FROM n.now) * 1000000)::bigint";

/// The columns a read returns, in order: holder, holder_meta, fencing, ttl_ms, acquired_at (µs
/// since the epoch), remaining (µs until expiry on the server's clock).
fn read_columns(prefix: &str) -> String {
    format!(
        "{p}holder, {p}holder_meta, {p}fencing, {p}ttl_ms, \
         (extract(epoch FROM {p}acquired_at) * 1000000)::bigint, \
         (extract(epoch FROM ({p}expires_at - clock_timestamp())) * 1000000)::bigint",
        p = prefix
    )
}

fn db_class(e: &dyn sqlx::error::DatabaseError) -> DbClass {
    let code = e.code().map(|c| c.into_owned()).unwrap_or_default();
    match code.as_str() {
        // serialization failure, deadlock, lock not available, query canceled (statement timeout),
        // admin shutdown, crash shutdown, cannot connect now, too many connections
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "53300" => {
            DbClass::Transient
        }
        // read-only transaction (a primary being demoted during a failover: a retry may reach the
        // new primary), statement completion unknown (the outcome is unknown: the core reads back)
        "25006" | "40003" => DbClass::Transient,
        // numeric value out of range: the fencing counter of a foreign row cannot be bumped
        "22003" => DbClass::Corrupt,
        // connection exceptions, insufficient resources
        c if c.starts_with("08") || c.starts_with("53") => DbClass::Transient,
        _ => DbClass::Fatal,
    }
}

fn raw_record(row: &PgRow, offset: usize) -> Result<RawRecord, sqlx::Error> {
    Ok(RawRecord {
        holder: row.try_get(offset)?,
        holder_meta: row.try_get(offset + 1)?,
        fencing: row.try_get(offset + 2)?,
        ttl_ms: row.try_get(offset + 3)?,
        acquired_at_us: row.try_get(offset + 4)?,
        remaining_us: row.try_get(offset + 5)?,
    })
}

/// The NOTIFY channel for a table: `lease_` plus the table name, cut to PostgreSQL's 63 bytes.
/// (Two long table names that share a prefix share a channel; that only causes spurious wake-ups.)
fn channel_for(table: &TableName) -> String {
    let mut channel = format!("lease_{}", table.as_str());
    channel.truncate(63);
    channel
}

fn classify(op: &str, e: sqlx::Error) -> BackendError {
    common::classify(NAME, op, e, db_class)
}

impl sealed::Sealed for PostgresDialect {}

#[async_trait]
impl Dialect for PostgresDialect {
    type Db = sqlx::Postgres;
    const NAME: &'static str = NAME;
    const PREPARE_IS_A_ROUND_TRIP: bool = true;

    fn new(table: &TableName) -> Self {
        let t = table.quoted('"');
        // Names compare in byte order ("C"): keys are ASCII, and a prefix listing is then an
        // index range scan.
        let c = "COLLATE \"C\"";
        Self {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n\
                 \x20   name        TEXT {c} PRIMARY KEY,\n\
                 \x20   holder      TEXT,\n\
                 \x20   holder_meta TEXT,\n\
                 \x20   fencing     BIGINT NOT NULL,\n\
                 \x20   ttl_ms      BIGINT,\n\
                 \x20   acquired_at TIMESTAMPTZ,\n\
                 \x20   expires_at  TIMESTAMPTZ\n\
                 )"
            ),
            // `now` is computed once (the sub-select) and reaches the conflict branch as
            // EXCLUDED.acquired_at, so every comparison in the statement uses the same instant.
            // A new row (the first grant, or one after the row was deleted) starts its counter
            // from the server's clock in microseconds, above any token the key issued before.
            acquire: format!(
                "INSERT INTO {t} AS l (name, holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at)\n\
                 SELECT $1, $2, $3, {FIRST_TOKEN}, $4::bigint, n.now, n.now + $4::bigint * interval '1 millisecond'\n\
                 FROM (SELECT clock_timestamp() AS now) AS n\n\
                 ON CONFLICT (name) DO UPDATE SET\n\
                 \x20   fencing = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > EXCLUDED.acquired_at\n\
                 \x20                 THEN l.fencing ELSE l.fencing + 1 END,\n\
                 \x20   acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > EXCLUDED.acquired_at\n\
                 \x20                 THEN l.acquired_at ELSE EXCLUDED.acquired_at END,\n\
                 \x20   holder = EXCLUDED.holder,\n\
                 \x20   holder_meta = EXCLUDED.holder_meta,\n\
                 \x20   ttl_ms = EXCLUDED.ttl_ms,\n\
                 \x20   expires_at = EXCLUDED.expires_at\n\
                 WHERE l.fencing >= 0 AND l.fencing < {FENCING_MAX}\n\
                 \x20 AND (l.holder IS NULL OR l.expires_at <= EXCLUDED.acquired_at OR l.holder = EXCLUDED.holder)\n\
                 RETURNING l.fencing, l.ttl_ms"
            ),
            read: format!("SELECT {} FROM {t} WHERE name = $1", read_columns("")),
            renew: format!(
                "UPDATE {t} SET ttl_ms = $3, expires_at = clock_timestamp() + $3 * interval '1 millisecond'\n\
                 WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()"
            ),
            renew_many: format!(
                "UPDATE {t} AS l SET ttl_ms = r.ttl, expires_at = clock_timestamp() + r.ttl * interval '1 millisecond'\n\
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(name, holder, ttl)\n\
                 WHERE l.name = r.name AND l.holder = r.holder AND l.expires_at > clock_timestamp()\n\
                 RETURNING l.name, l.holder, l.ttl_ms"
            ),
            release: format!(
                "WITH released AS (\n\
                 \x20   UPDATE {t} SET holder = NULL, holder_meta = NULL, acquired_at = NULL, expires_at = NULL\n\
                 \x20   WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()\n\
                 \x20   RETURNING name)\n\
                 SELECT count(pg_notify($3, name)) FROM released"
            ),
            // The sub-select locks the row and carries its old values to RETURNING.
            break_lease: format!(
                "WITH old AS (SELECT * FROM {t} WHERE name = $1 FOR UPDATE),\n\
                 broken AS (\n\
                 \x20   UPDATE {t} AS l SET holder = NULL, holder_meta = NULL, acquired_at = NULL, expires_at = NULL\n\
                 \x20   FROM old WHERE l.name = old.name RETURNING l.name)\n\
                 SELECT {}, (SELECT count(pg_notify($2, name)) FROM broken) FROM old",
                read_columns("old.")
            ),
            list: format!(
                "SELECT name, {} FROM {t}\n\
                 WHERE name {c} >= $1 AND name {c} > $2 AND name {c} < $3\n\
                 ORDER BY name {c} LIMIT $4",
                read_columns("")
            ),
            list_all: format!(
                "SELECT name, {} FROM {t}\n\
                 WHERE name {c} >= $1 AND name {c} > $2\n\
                 ORDER BY name {c} LIMIT $3",
                read_columns("")
            ),
            channel: channel_for(table),
            notifier: Arc::new(KeyWakeups::default()),
            listener_task: Mutex::new(None),
            pooled: false,
            listen_direct: None,
        }
    }

    fn from_options(options: &SqlOptions) -> Self {
        let mut dialect = Self::new(&options.table);
        dialect.pooled = options.pooler.is_transaction();
        // `Pooler::transaction_listening_on` parsed it already.
        dialect.listen_direct = options
            .pooler
            .listen_url()
            .and_then(|url| PgConnectOptions::from_str(url).ok());
        dialect
    }

    fn capabilities(&self) -> Capabilities {
        base_capabilities().with_notifies_waiters(self.can_listen())
    }

    fn create_table_sql(&self) -> &str {
        &self.create
    }

    fn classify(op: &str, error: sqlx::Error) -> BackendError {
        classify(op, error)
    }

    async fn connect(url: &str, options: &SqlOptions) -> Result<PgPool, lease_core::Error> {
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| common::connect_error(NAME, url, e, db_class))?;
        if options.pooler.is_transaction() {
            // Statements are unnamed then (`persistent(false)`); no cache either, in case a
            // caller's query on this pool forgets.
            connect = connect.statement_cache_capacity(0);
        }
        PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| common::connect_error(NAME, url, e, db_class))
    }

    async fn execute(
        &self,
        conn: &mut PgConnection,
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
        conn: &mut PgConnection,
        request: &AcquireRequest,
        ttl_ms: i64,
        trips: &RoundTrips,
    ) -> Result<AcquireReply, BackendError> {
        trips.add(1);
        let row = self
            .one(conn, trips, async |conn| {
                sqlx::query(AssertSqlSafe(self.acquire.as_str()))
                    .persistent(self.persistent())
                    .bind(request.key.as_str())
                    .bind(request.holder.to_string())
                    .bind(request.metadata.as_str())
                    .bind(ttl_ms)
                    .fetch_optional(conn)
                    .await
            })
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
        conn: &mut PgConnection,
        key: &LeaseKey,
        trips: &RoundTrips,
    ) -> Result<Option<LeaseRecord>, BackendError> {
        trips.add(1);
        let row = self
            .one(conn, trips, async |conn| {
                sqlx::query(AssertSqlSafe(self.read.as_str()))
                    .persistent(self.persistent())
                    .bind(key.as_str())
                    .fetch_optional(conn)
                    .await
            })
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
        conn: &mut PgConnection,
        key: &str,
        holder: &str,
        ttl_ms: i64,
        trips: &RoundTrips,
    ) -> Result<bool, BackendError> {
        trips.add(1);
        let done = self
            .one(conn, trips, async |conn| {
                sqlx::query(AssertSqlSafe(self.renew.as_str()))
                    .persistent(self.persistent())
                    .bind(key)
                    .bind(holder)
                    .bind(ttl_ms)
                    .execute(conn)
                    .await
            })
            .await
            .map_err(|e| classify("renew", e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn renew_batch(
        &self,
        conn: &mut PgConnection,
        leases: &[BatchLease<'_>],
        trips: &RoundTrips,
    ) -> Result<Renewed, BackendError> {
        let names: Vec<&str> = leases.iter().map(|l| l.key).collect();
        let holders: Vec<&str> = leases.iter().map(|l| l.holder.as_str()).collect();
        let ttls: Vec<i64> = leases.iter().map(|l| l.ttl_ms).collect();
        trips.add(1);
        let rows = self
            .one(conn, trips, async |conn| {
                sqlx::query(AssertSqlSafe(self.renew_many.as_str()))
                    .persistent(self.persistent())
                    .bind(&names)
                    .bind(&holders)
                    .bind(&ttls)
                    .fetch_all(conn)
                    .await
            })
            .await
            .map_err(|e| classify("renew_many", e))?;
        let rows = common::renewed_columns(&rows).map_err(|e| classify("renew_many", e))?;
        Ok(common::renewed_from_rows(leases.iter(), rows))
    }

    async fn release(
        &self,
        conn: &mut PgConnection,
        key: &str,
        holder: &str,
        trips: &RoundTrips,
    ) -> Result<bool, BackendError> {
        trips.add(1);
        let released: i64 = self
            .one(conn, trips, async |conn| {
                sqlx::query_scalar(AssertSqlSafe(self.release.as_str()))
                    .persistent(self.persistent())
                    .bind(key)
                    .bind(holder)
                    .bind(&self.channel)
                    .fetch_one(conn)
                    .await
            })
            .await
            .map_err(|e| classify("release", e))?;
        Ok(released == 1)
    }

    async fn break_lease(
        &self,
        conn: &mut PgConnection,
        key: &LeaseKey,
        trips: &RoundTrips,
    ) -> Result<Option<LeaseRecord>, BackendError> {
        trips.add(1);
        let row = self
            .one(conn, trips, async |conn| {
                sqlx::query(AssertSqlSafe(self.break_lease.as_str()))
                    .persistent(self.persistent())
                    .bind(key.as_str())
                    .bind(&self.channel)
                    .fetch_optional(conn)
                    .await
            })
            .await
            .map_err(|e| classify("break", e))?;
        match row {
            None => Ok(None),
            Some(row) => raw_record(&row, 0)
                .map_err(|e| classify("break", e))?
                .decode(NAME, key)
                .map(Some),
        }
    }

    async fn list_page(
        &self,
        conn: &mut PgConnection,
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
        let query = query.bind(page.limit).persistent(self.persistent());
        let rows = self
            .one(conn, trips, async |conn| query.fetch_all(conn).await)
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

    fn contended(&self, pool: &PgPool, key: &LeaseKey) {
        if !self.can_listen() {
            return;
        }
        self.ensure_listener(pool);
        self.notifier.saw_held(key.as_str());
    }

    async fn wait_for_change(
        &self,
        pool: &PgPool,
        key: &LeaseKey,
        max_wait: Duration,
    ) -> Result<(), BackendError> {
        if !self.can_listen() {
            // Behind a transaction pooler without a direct URL: plain polling.
            tokio::time::sleep(max_wait).await;
            return Ok(());
        }
        self.ensure_listener(pool);
        self.notifier.wait(key.as_str(), max_wait).await;
        Ok(())
    }
}

impl PostgresDialect {
    /// Whether waiters can `LISTEN`: always on a direct connection; behind a transaction pooler
    /// only with a direct URL (`LISTEN` through the pooler would land on a server connection
    /// that is handed to someone else after the statement).
    fn can_listen(&self) -> bool {
        !self.pooled || self.listen_direct.is_some()
    }

    /// Whether statements are prepared once per connection and cached (not behind a
    /// transaction pooler, where a named statement would outlive the server connection's
    /// hand-over to another client).
    fn persistent(&self) -> bool {
        !self.pooled
    }

    /// Runs one statement. Behind a transaction pooler it runs inside `BEGIN`/`COMMIT`: sqlx
    /// parses a statement and binds it in two exchanges, each ending in a `Sync`, and between
    /// them an idle server connection may be handed to another client — whose unnamed
    /// statement ours would then be bound to. Inside a transaction the pooler keeps the server
    /// connection ours until `COMMIT`. Costs three more round trips (counted).
    async fn one<T>(
        &self,
        conn: &mut PgConnection,
        trips: &RoundTrips,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        if !self.pooled {
            return statement(conn).await;
        }
        trips.add(3);
        let mut tx = sqlx::Connection::begin(conn).await?;
        match statement(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Starts the shared listener task if it is not running.
    fn ensure_listener(&self, pool: &PgPool) {
        let mut task = self.listener_task.lock().unwrap_or_else(|e| e.into_inner());
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        // LISTEN keeps its connection for as long as it runs, so it gets a connection of its
        // own, outside the operations pool: a pool of one would otherwise be taken for good.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(
                self.listen_direct
                    .clone()
                    .unwrap_or_else(|| (*pool.connect_options()).clone()),
            );
        let channel = self.channel.clone();
        let notifier = Arc::clone(&self.notifier);
        *task = Some(tokio::spawn(listen(listen_pool, channel, notifier)));
    }
}

/// The listener loop on its own one-connection `pool` (not the operations pool):
/// `LISTEN lease_<table>`, each notification's payload is a key whose waiters are woken.
async fn listen(pool: PgPool, channel: String, notifier: Arc<KeyWakeups>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                listener.ignore_pool_close_event(true);
                listener
            }
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN connection failed; waiters poll");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::debug!(error = %e, "LISTEN failed; waiters poll");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        notifier.set_listening(true);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => notifier.wake(notification.payload()),
                Ok(None) => {
                    // The connection was lost (and is re-established by the next call):
                    // notifications may have been missed, so wake everyone to re-check.
                    notifier.wake_all();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN connection failed; waiters poll");
                    notifier.set_listening(false);
                    notifier.wake_all();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}
