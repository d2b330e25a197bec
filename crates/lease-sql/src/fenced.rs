//! Fenced transactions: the fencing token checked where the work lands, in the same database
//! transaction as the work.
//!
//! A [`FenceTable`] keeps one row per protected resource: `(resource, token)`, the newest fencing
//! token that wrote to it. [`FenceTable::admit`] runs one statement inside the caller's own
//! transaction that records the caller's token for a resource if it is at least the recorded one,
//! and otherwise refuses with [`FenceError::Stale`] naming both tokens. The row it writes stays
//! locked until the transaction ends, so two holders' fenced transactions on one resource
//! serialize: the older token waits for the newer one and is then refused, and whatever else the
//! transaction wrote commits only under a token that was current.
//!
//! The lease itself may live anywhere — this database, another one, Redis, a bucket: the token is
//! just a number. Writes that do not go through a fenced transaction are not protected.
//!
//! | database | statement | lock held to commit |
//! |---|---|---|
//! | PostgreSQL | `INSERT … ON CONFLICT (resource) DO UPDATE … WHERE f.token <= EXCLUDED.token RETURNING token` | the fence row (also when refused) |
//! | MySQL 8 / MariaDB | `INSERT … ON DUPLICATE KEY UPDATE token = GREATEST(token, ?)`, then `SELECT … FOR UPDATE` | the fence row (InnoDB exclusive record lock) |
//! | SQLite | as PostgreSQL | the database's write lock: every writer waits |

use std::fmt;

use async_trait::async_trait;
use lease_core::{BackendError, FencingToken, InvalidInput, LeaseKey, StaleToken};
use sqlx::{AssertSqlSafe, Row};

use crate::TableName;

/// The table of fencing tokens per protected resource, and the fenced write into it.
///
/// [`SqlBackend::migrate`](crate::SqlBackend::migrate) creates it (named by
/// [`SqlOptions::fence_table`](crate::SqlOptions::fence_table), `lease_fences` by default) and
/// [`SqlBackend::fences`](crate::SqlBackend::fences) returns it; when the leases live elsewhere,
/// create it with [`FenceTable::migrate`] or your migration tool ([`FenceTable::create_table_sql`]).
///
/// ```no_run
/// use lease_sql::{FenceTable, FencingToken, sqlx};
/// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// // The token comes from the lease (`lease.fencing_token()`), or from `lease exec`:
/// let token: FencingToken = std::env::var("LEASE_FENCING_TOKEN")?.parse()?;
/// let fences = FenceTable::default();
/// let mut tx = pool.begin().await?;
/// fences.admit(&mut tx, "reports/daily", token).await?; // refused if a newer holder wrote
/// sqlx::query("INSERT INTO reports (day, total) VALUES (current_date, 42)")
///     .execute(&mut *tx)
///     .await?;
/// tx.commit().await?; // commits only under a current token
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FenceTable {
    table: TableName,
}

impl FenceTable {
    /// The default table name, `lease_fences`.
    pub const DEFAULT_NAME: &'static str = "lease_fences";

    /// The fence table `table`.
    pub fn new(table: TableName) -> Self {
        Self { table }
    }

    /// The table's name.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The `CREATE TABLE IF NOT EXISTS` statement for database `DB`, for teams that manage schema
    /// with their own migration tool.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// use lease_sql::{FenceTable, sqlx::Sqlite};
    /// let sql = FenceTable::default().create_table_sql::<Sqlite>();
    /// assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS \"lease_fences\""));
    /// # }
    /// ```
    pub fn create_table_sql<DB: FencedDatabase>(&self) -> String {
        DB::create_sql(&self.table)
    }

    /// Creates the table if it does not exist (idempotent). A schema in the name must exist.
    ///
    /// # Errors
    /// [`FenceError::Backend`], fatal when the role may not create tables.
    pub async fn migrate<DB: FencedDatabase>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<(), FenceError> {
        DB::execute(conn, &DB::create_sql(&self.table)).await?;
        Ok(())
    }

    /// Records `token` as the newest writer of `resource`, in `tx`, unless a newer token was
    /// recorded before; an equal token (the same holder writing again) is admitted.
    ///
    /// The fence row stays locked until `tx` commits or rolls back, so a fenced transaction of
    /// another holder on the same resource waits for this one. Call it before (or together with)
    /// the writes it protects, and commit promptly: a holder that commits after its lease was lost
    /// but before its successor's `admit` still lands, exactly as if it had finished in time — the
    /// successor then writes over it. On SQLite the lock is the database's write lock, so every
    /// other writer waits.
    ///
    /// It takes a [`sqlx::Transaction`] so it cannot run in autocommit, where the lock would end
    /// with the statement. Isolation: any level works. On PostgreSQL under `REPEATABLE READ` or
    /// `SERIALIZABLE`, a fence row changed by a transaction that committed after this one's
    /// snapshot fails with a serialization error ([`FenceError::is_retryable`]), never with a false
    /// "stale"; MySQL and MariaDB read the newest committed row whatever the level; SQLite is
    /// serializable.
    ///
    /// # Errors
    /// - [`FenceError::Stale`] when a newer token was recorded for `resource`: the lease was lost
    ///   and a newer holder wrote. Roll back and stop; retrying with the same token fails again.
    /// - [`FenceError::InvalidInput`] for a resource that is not a valid lease key, or a token
    ///   above `i64::MAX` (what a `BIGINT` holds).
    /// - [`FenceError::Backend`]: transient for a serialization failure, a deadlock, a lock or
    ///   busy timeout or a lost connection — the transaction is aborted; roll back and run it again
    ///   — and fatal when the table is missing or a trigger on it changed or suppressed the write.
    pub async fn admit<DB: FencedDatabase>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        resource: &str,
        token: FencingToken,
    ) -> Result<(), FenceError> {
        let resource = check_resource(resource)?;
        let value = i64::try_from(token.get()).map_err(|_| {
            InvalidInput::new(
                "fencing token",
                format!("{token} is larger than a BIGINT holds ({})", i64::MAX),
            )
        })?;
        let conn: &mut DB::Connection = tx;
        let recorded = match DB::record(conn, &self.table, resource.as_str(), value).await? {
            Recorded::Written(stored) if stored == value => return Ok(()),
            // Written, but not our token: a trigger changed it (never "stale": it was written).
            Recorded::Written(stored) => {
                return Err(suppressed(
                    DB::BACKEND,
                    &self.table,
                    &resource,
                    token,
                    Some(stored),
                ));
            }
            Recorded::ReadBack => DB::read(conn, &self.table, resource.as_str(), true).await?,
        };
        decide(DB::BACKEND, &self.table, &resource, token, value, recorded)
    }

    /// The token recorded for `resource`, if any (a plain read: in a transaction it sees that
    /// transaction's snapshot).
    ///
    /// # Errors
    /// As [`FenceTable::admit`], without `Stale`.
    pub async fn current<DB: FencedDatabase>(
        &self,
        conn: &mut DB::Connection,
        resource: &str,
    ) -> Result<Option<FencingToken>, FenceError> {
        let resource = check_resource(resource)?;
        DB::read(conn, &self.table, resource.as_str(), false)
            .await?
            .map(|value| stored_token::<DB>(&self.table, &resource, value))
            .transpose()
    }
}

impl Default for FenceTable {
    fn default() -> Self {
        Self::new(TableName::new(Self::DEFAULT_NAME).unwrap_or_default())
    }
}

impl fmt::Debug for FenceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FenceTable({:?})", self.table.as_str())
    }
}

fn check_resource(resource: &str) -> Result<LeaseKey, InvalidInput> {
    LeaseKey::new(resource).map_err(|e| InvalidInput::new("resource", e.reason().to_owned()))
}

fn stored_token<DB: FencedDatabase>(
    table: &TableName,
    resource: &LeaseKey,
    value: i64,
) -> Result<FencingToken, FenceError> {
    u64::try_from(value).map(FencingToken::new).map_err(|_| {
        FenceError::Backend(BackendError::corrupt_record(
            DB::BACKEND,
            format!("the fence row of {resource} in {table} holds {value}, a negative token"),
        ))
    })
}

/// The outcome from the token the row holds after the fenced statement (read back, locked).
fn decide(
    backend: &'static str,
    table: &TableName,
    resource: &LeaseKey,
    token: FencingToken,
    value: i64,
    recorded: Option<i64>,
) -> Result<(), FenceError> {
    match recorded {
        Some(stored) if stored == value => Ok(()),
        Some(stored) if stored > value => Err(FenceError::Stale {
            resource: resource.to_string(),
            stale: StaleToken::new(token, FencingToken::new(stored.unsigned_abs())),
        }),
        other => Err(suppressed(backend, table, resource, token, other)),
    }
}

/// The statement reported success that did not land as asked (a lower token, another token, no
/// row). Only a trigger or rule on the table does that; carrying on would write unfenced.
fn suppressed(
    backend: &'static str,
    table: &TableName,
    resource: &LeaseKey,
    token: FencingToken,
    stored: Option<i64>,
) -> FenceError {
    FenceError::Backend(BackendError::fatal(
        backend,
        format!(
            "the fence row of {resource} in {table} holds {} after recording token {token}: \
             a trigger or rule on the table changed or suppressed the write",
            stored.map_or_else(|| "nothing".to_owned(), |v| v.to_string())
        ),
    ))
}

/// Why [`FenceTable::admit`] refused.
///
/// Application code that handles stale tokens from several kinds of resource can use
/// [`StaleToken::find`] on any error chain instead of matching this type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// A newer token was recorded for the resource: the lease was lost and a newer holder wrote.
    #[error(
        "the fence of resource {resource} refused token {}: token {} was recorded",
        stale.presented(),
        stale.current()
    )]
    Stale {
        /// The resource.
        resource: String,
        /// The refused and the recorded token.
        #[source]
        stale: StaleToken,
    },
    /// The resource or the token cannot be stored.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// The database failed; [`BackendError::kind`] says whether running the transaction again may
    /// help.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl FenceError {
    /// The refused and the recorded token, when the error is a stale token.
    pub fn stale_token(&self) -> Option<&StaleToken> {
        match self {
            Self::Stale { stale, .. } => Some(stale),
            _ => None,
        }
    }

    /// Whether rolling back and running the whole transaction again may succeed: a serialization
    /// failure, a deadlock, a lock or busy timeout, a lost connection. Never for a stale token.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Backend(e) if e.kind() == lease_core::BackendErrorKind::Transient)
    }
}

/// What the fenced statement reported.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The statement wrote the row, which now holds this token.
    Written(i64),
    /// Not written, or the dialect cannot tell: read the (locked) row to decide.
    ReadBack,
}

mod sealed {
    #[allow(unreachable_pub)]
    pub trait Sealed {}
}

/// A database [`FenceTable`] works on: `sqlx::Postgres`, `sqlx::MySql` (MySQL 8 and MariaDB)
/// and `sqlx::Sqlite`, each behind its cargo feature. Sealed.
#[async_trait]
pub trait FencedDatabase: sqlx::Database + sealed::Sealed {
    /// The backend's name in errors.
    const BACKEND: &'static str;

    #[doc(hidden)]
    fn create_sql(table: &TableName) -> String;

    #[doc(hidden)]
    async fn execute(conn: &mut Self::Connection, sql: &str) -> Result<(), BackendError>;

    #[doc(hidden)]
    async fn record(
        conn: &mut Self::Connection,
        table: &TableName,
        resource: &str,
        token: i64,
    ) -> Result<Recorded, BackendError>;

    /// Reads the token of `resource`; `locked` after [`FencedDatabase::record`], in its
    /// transaction.
    #[doc(hidden)]
    async fn read(
        conn: &mut Self::Connection,
        table: &TableName,
        resource: &str,
        locked: bool,
    ) -> Result<Option<i64>, BackendError>;
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::dialect::Dialect;
    use sqlx::postgres::PgConnection;

    impl sealed::Sealed for sqlx::Postgres {}

    fn classify(op: &str, e: sqlx::Error) -> BackendError {
        crate::PostgresDialect::classify(op, e)
    }

    #[async_trait]
    impl FencedDatabase for sqlx::Postgres {
        const BACKEND: &'static str = "postgres";

        fn create_sql(table: &TableName) -> String {
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n\
                 \x20   resource TEXT COLLATE \"C\" PRIMARY KEY,\n\
                 \x20   token    BIGINT NOT NULL\n\
                 )",
                table.quoted('"')
            )
        }

        async fn execute(conn: &mut PgConnection, sql: &str) -> Result<(), BackendError> {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(conn)
                .await
                .map_err(|e| classify("migrate fence table", e))?;
            Ok(())
        }

        // A conflicting row is locked before the WHERE is evaluated and stays locked when the
        // WHERE refuses, so the read-back after a refusal sees the row the refusal saw.
        async fn record(
            conn: &mut PgConnection,
            table: &TableName,
            resource: &str,
            token: i64,
        ) -> Result<Recorded, BackendError> {
            let sql = format!(
                "INSERT INTO {} AS f (resource, token) VALUES ($1, $2)\n\
                 ON CONFLICT (resource) DO UPDATE SET token = EXCLUDED.token\n\
                 WHERE f.token <= EXCLUDED.token\n\
                 RETURNING f.token",
                table.quoted('"')
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(resource)
                .bind(token)
                .fetch_optional(conn)
                .await
                .map_err(|e| classify("fence", e))?;
            match row {
                Some(row) => Ok(Recorded::Written(
                    row.try_get(0).map_err(|e| classify("fence", e))?,
                )),
                None => Ok(Recorded::ReadBack),
            }
        }

        async fn read(
            conn: &mut PgConnection,
            table: &TableName,
            resource: &str,
            _locked: bool,
        ) -> Result<Option<i64>, BackendError> {
            let sql = format!(
                "SELECT token FROM {} WHERE resource = $1",
                table.quoted('"')
            );
            sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(resource)
                .fetch_optional(conn)
                .await
                .map_err(|e| classify("read fence", e))
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use crate::dialect::Dialect;
    use sqlx::mysql::MySqlConnection;

    impl sealed::Sealed for sqlx::MySql {}

    fn classify(op: &str, e: sqlx::Error) -> BackendError {
        crate::MySqlDialect::classify(op, e)
    }

    #[async_trait]
    impl FencedDatabase for sqlx::MySql {
        const BACKEND: &'static str = "mysql";

        fn create_sql(table: &TableName) -> String {
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n\
                 \x20   resource VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,\n\
                 \x20   token    BIGINT NOT NULL,\n\
                 \x20   PRIMARY KEY (resource)\n\
                 ) ENGINE = InnoDB",
                table.quoted('`')
            )
        }

        async fn execute(conn: &mut MySqlConnection, sql: &str) -> Result<(), BackendError> {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(conn)
                .await
                .map_err(|e| classify("migrate fence table", e))?;
            Ok(())
        }

        // No RETURNING in MySQL 8 (MariaDB 10.5+ has it; one form serves both), and
        // the affected-rows count cannot tell "kept an equal token" from "kept a newer one", so
        // the locked row is read back: the upsert holds its exclusive record lock, and a locking
        // read sees the newest committed row even under REPEATABLE READ, where a plain SELECT
        // would see the snapshot. GREATEST avoids VALUES(), deprecated in MySQL 8.0.20.
        async fn record(
            conn: &mut MySqlConnection,
            table: &TableName,
            resource: &str,
            token: i64,
        ) -> Result<Recorded, BackendError> {
            let sql = format!(
                "INSERT INTO {} (resource, token) VALUES (?, ?)\n\
                 ON DUPLICATE KEY UPDATE token = GREATEST(token, ?)",
                table.quoted('`')
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(resource)
                .bind(token)
                .bind(token)
                .execute(conn)
                .await
                .map_err(|e| classify("fence", e))?;
            Ok(Recorded::ReadBack)
        }

        async fn read(
            conn: &mut MySqlConnection,
            table: &TableName,
            resource: &str,
            locked: bool,
        ) -> Result<Option<i64>, BackendError> {
            let sql = format!(
                "SELECT token FROM {} WHERE resource = ?{}",
                table.quoted('`'),
                if locked { " FOR UPDATE" } else { "" }
            );
            sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(resource)
                .fetch_optional(conn)
                .await
                .map_err(|e| classify("read fence", e))
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use crate::dialect::Dialect;
    use sqlx::sqlite::SqliteConnection;

    impl sealed::Sealed for sqlx::Sqlite {}

    fn classify(op: &str, e: sqlx::Error) -> BackendError {
        crate::SqliteDialect::classify(op, e)
    }

    #[async_trait]
    impl FencedDatabase for sqlx::Sqlite {
        const BACKEND: &'static str = "sqlite";

        fn create_sql(table: &TableName) -> String {
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\n\
                 \x20   resource TEXT NOT NULL PRIMARY KEY,\n\
                 \x20   token    INTEGER NOT NULL\n\
                 )",
                table.quoted('"')
            )
        }

        async fn execute(conn: &mut SqliteConnection, sql: &str) -> Result<(), BackendError> {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(conn)
                .await
                .map_err(|e| classify("migrate fence table", e))?;
            Ok(())
        }

        // The write takes the database's write lock (a deferred transaction that has only read
        // takes it here), held to commit; a writer that cannot get it waits the busy timeout,
        // and one whose snapshot is older than the last commit fails at once (SQLITE_BUSY):
        // transient either way.
        async fn record(
            conn: &mut SqliteConnection,
            table: &TableName,
            resource: &str,
            token: i64,
        ) -> Result<Recorded, BackendError> {
            let sql = format!(
                "INSERT INTO {} AS f (resource, token) VALUES (?1, ?2)\n\
                 ON CONFLICT (resource) DO UPDATE SET token = excluded.token\n\
                 WHERE f.token <= excluded.token\n\
                 RETURNING token",
                table.quoted('"')
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(resource)
                .bind(token)
                .fetch_optional(conn)
                .await
                .map_err(|e| classify("fence", e))?;
            match row {
                Some(row) => Ok(Recorded::Written(
                    row.try_get(0).map_err(|e| classify("fence", e))?,
                )),
                None => Ok(Recorded::ReadBack),
            }
        }

        async fn read(
            conn: &mut SqliteConnection,
            table: &TableName,
            resource: &str,
            _locked: bool,
        ) -> Result<Option<i64>, BackendError> {
            let sql = format!(
                "SELECT token FROM {} WHERE resource = ?1",
                table.quoted('"')
            );
            sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(resource)
                .fetch_optional(conn)
                .await
                .map_err(|e| classify("read fence", e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LeaseKey {
        LeaseKey::new("r").unwrap()
    }

    #[test]
    fn decides_from_the_row_after_the_statement() {
        let t = TableName::default();
        let five = FencingToken::new(5);
        assert!(decide("t", &t, &key(), five, 5, Some(5)).is_ok());
        let stale = decide("t", &t, &key(), five, 5, Some(9)).unwrap_err();
        assert_eq!(
            stale.stale_token(),
            Some(&StaleToken::new(five, FencingToken::new(9)))
        );
        assert!(!stale.is_retryable());
        for suppressed in [Some(4), None] {
            let err = decide("t", &t, &key(), five, 5, suppressed).unwrap_err();
            assert!(err.stale_token().is_none(), "{err}");
            assert!(!err.is_retryable(), "{err}");
        }
    }
}
