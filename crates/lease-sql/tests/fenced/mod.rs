//! Fenced transactions ([`FenceTable::admit`]), written once and run by each dialect's suite
//! (`fenced_tests!(postgres)` in `tests/postgres.rs`, and so on): a holder paused past its
//! deadline is refused after its successor wrote, sixteen holders leave only increasing tokens in
//! the data, two concurrent fenced transactions serialize under every isolation level the database
//! offers, and a trigger that suppresses the fence write is an error, never a silent success,
//! while an audit trigger is harmless.
#![allow(dead_code, unreachable_pub)]

pub use std::time::Duration;

use crate::support;

pub use lease_sql::{
    AcquireOutcome, AcquireRequest, Backend, FenceError, FenceTable, FencingToken, HolderMetadata,
    HolderToken, LeaseKey, StaleToken, TableName,
};

/// The lease TTL of a holder that pauses: short, so its successor comes soon.
pub const PAUSED_TTL: Duration = Duration::from_millis(300);

/// Acquires `key` through the backend alone, waiting while it is held, with no renewals: the
/// grant of a holder whose process (renewer included) is about to freeze.
pub async fn paused_holder(backend: &dyn Backend, key: &str) -> FencingToken {
    let request = AcquireRequest::new(
        LeaseKey::new(key).unwrap(),
        HolderToken::generate(),
        PAUSED_TTL,
        HolderMetadata::new("paused").unwrap(),
    );
    loop {
        match backend.acquire(&request).await.expect("acquire") {
            AcquireOutcome::Acquired(grant) => return grant.fencing,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A small deterministic generator for the pauses (xorshift64*).
pub struct Pauses(pub u64);

impl Pauses {
    pub fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", support::random_suffix())
}

/// The body a holder writes, so the data can be compared byte for byte.
pub fn body(holder: usize, token: FencingToken) -> String {
    format!("holder {holder} wrote under token {token}")
}

/// The checks every dialect runs, given the dialect's module below: its `setup`, `begin` (a
/// transaction at an isolation level, `None` for the default), `LEVELS` to test, the data table's
/// `AUTOINC` column and insert `PARAMS`, and the `suppress` and `audit` triggers.
macro_rules! fenced_tests {
    ($dialect:ident) => {
        use crate::fenced::$dialect::{
            AUTOINC, Db, Dialect, LEVELS, PARAMS, audit, begin, setup, suppress,
        };
        use crate::fenced::*;
        type Pool = lease_sql::sqlx::Pool<Db>;

        struct Env {
            pool: Pool,
            backend: lease_sql::SqlBackend<Dialect>,
            fences: FenceTable,
            data: String,
        }

        async fn env() -> Option<Env> {
            let (pool, backend) = setup().await?;
            let data = unique("fenced_data");
            lease_sql::sqlx::raw_sql(lease_sql::sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {data} (id {AUTOINC}, token BIGINT NOT NULL, body TEXT NOT NULL)"
            )))
            .execute(&pool)
            .await
            .expect("create the data table");
            let fences = backend.fences().clone();
            Some(Env {
                pool,
                backend,
                fences,
                data,
            })
        }

        /// One fenced transaction: admit the token, then write the protected row.
        async fn fenced_write(
            env: &Env,
            token: FencingToken,
            body: &str,
        ) -> Result<(), FenceError> {
            let mut tx = env.pool.begin().await.expect("begin");
            env.fences.admit(&mut tx, "report", token).await?;
            lease_sql::sqlx::query(lease_sql::sqlx::AssertSqlSafe(format!(
                "INSERT INTO {} (token, body) VALUES ({})",
                env.data, PARAMS
            )))
            .bind(i64::try_from(token.get()).unwrap())
            .bind(body)
            .execute(&mut *tx)
            .await
            .expect("insert");
            tx.commit().await.expect("commit");
            Ok(())
        }

        /// The protected rows in the order they were written.
        async fn rows(env: &Env) -> Vec<(u64, String)> {
            let rows: Vec<(i64, String)> =
                lease_sql::sqlx::query_as(lease_sql::sqlx::AssertSqlSafe(format!(
                    "SELECT token, body FROM {} ORDER BY id",
                    env.data
                )))
                .fetch_all(&env.pool)
                .await
                .expect("read the data");
            rows.into_iter()
                .map(|(t, b)| (u64::try_from(t).unwrap(), b))
                .collect()
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn paused_holder_is_refused_after_its_successor_wrote() {
            let Some(env) = env().await else { return };
            let key = unique("job");
            let old = paused_holder(&env.backend, &key).await;
            fenced_write(&env, old, &body(0, old))
                .await
                .expect("the holder writes in time");
            // The old holder freezes; its lease expires and a successor takes the key and writes.
            let locker = lease_sql::Locker::new(env.backend.clone());
            let successor = locker.acquire(&key).await.expect("the successor acquires");
            let new = successor.fencing_token();
            assert!(new > old);
            fenced_write(&env, new, &body(1, new))
                .await
                .expect("the successor writes");
            // The old holder wakes and writes with its old token.
            let err = fenced_write(&env, old, &body(0, old)).await.unwrap_err();
            assert_eq!(err.stale_token(), Some(&StaleToken::new(old, new)), "{err}");
            assert_eq!(StaleToken::find(&err), Some(&StaleToken::new(old, new)));
            assert!(!err.is_retryable());
            assert_eq!(
                rows(&env).await,
                vec![(old.get(), body(0, old)), (new.get(), body(1, new))],
                "the successor's data is intact"
            );
            let mut conn = env.pool.acquire().await.unwrap();
            assert_eq!(
                env.fences.current::<Db>(&mut conn, "report").await.unwrap(),
                Some(new)
            );
            successor.release().await.unwrap();
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn sixteen_holders_in_succession_leave_only_increasing_tokens() {
            let Some(env) = env().await else { return };
            let env = std::sync::Arc::new(env);
            let key = unique("job");
            let locker = lease_sql::Locker::builder(env.backend.clone())
                .ttl(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut pauses = Pauses(0x9e37_79b9_7f4a_7c15);
            let mut holders = Vec::new();
            for i in 0..16 {
                let (env, key, locker) = (env.clone(), key.clone(), locker.clone());
                // Every third holder freezes past its deadline before writing; the others pause
                // briefly while holding.
                let paused = i % 3 == 1;
                let pause = Duration::from_millis(pauses.next_ms(if paused { 300 } else { 60 }));
                holders.push(tokio::spawn(async move {
                    if paused {
                        let token = paused_holder(&env.backend, &key).await;
                        tokio::time::sleep(PAUSED_TTL + pause).await;
                        (token, fenced_write(&env, token, &body(i, token)).await)
                    } else {
                        let lease = locker.acquire(&key).await.expect("acquire");
                        let token = lease.fencing_token();
                        tokio::time::sleep(pause).await;
                        let written = fenced_write(&env, token, &body(i, token)).await;
                        lease.release().await.expect("release");
                        (token, written)
                    }
                }));
            }
            let mut written = Vec::new();
            for (i, holder) in holders.into_iter().enumerate() {
                let (token, result) = holder.await.expect("holder panicked");
                match result {
                    Ok(()) => written.push((token.get(), body(i, token))),
                    Err(e) => {
                        let stale = e.stale_token().unwrap_or_else(|| panic!("{e}"));
                        assert!(stale.current() > token, "{e}");
                    }
                }
            }
            let data = rows(&env).await;
            let tokens: Vec<u64> = data.iter().map(|(t, _)| *t).collect();
            assert!(
                tokens.windows(2).all(|w| w[0] < w[1]),
                "writes out of token order: {tokens:?}"
            );
            written.sort();
            assert_eq!(data, written, "exactly the admitted writes, byte for byte");
            eprintln!("{} of 16 holders wrote; tokens {tokens:?}", data.len());
        }

        /// The newer holder's fenced transaction holds the fence row; the older one waits for it
        /// and is then refused (or, where the snapshot is older than the newer commit, fails with
        /// a retryable serialization error, and is refused when run again).
        async fn older_waits_for_newer_and_fails(level: Option<&str>) {
            let Some(env) = env().await else { return };
            let (old, new) = (FencingToken::new(5), FencingToken::new(6));
            let mut newer = begin(&env.pool, level).await;
            env.fences
                .admit(&mut newer, "report", new)
                .await
                .expect("newer admitted");

            let older_env = (
                env.pool.clone(),
                env.fences.clone(),
                level.map(str::to_owned),
                env.data.clone(),
            );
            let older = tokio::spawn(async move {
                let (pool, fences, level, data) = older_env;
                let mut tx = begin(&pool, level.as_deref()).await;
                // Read first, as applications do: where the level keeps a snapshot, it now
                // predates the newer transaction's commit.
                let _: i64 = lease_sql::sqlx::query_scalar(lease_sql::sqlx::AssertSqlSafe(
                    format!("SELECT COUNT(*) FROM {data}"),
                ))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                let result = fences.admit(&mut tx, "report", old).await;
                drop(tx);
                result
            });
            // While the newer is open, the older must be blocked on the fence row, or (SQLite, whose
            // deferred transaction already read) refused at once with a retryable error — never
            // admitted. (A loaded machine can only make it look blocked, never make it finish.)
            tokio::time::sleep(Duration::from_millis(300)).await;
            let older = if older.is_finished() {
                let early = older.await.unwrap().unwrap_err();
                assert!(early.is_retryable(), "{level:?}: did not wait: {early}");
                Err(early)
            } else {
                Ok(older)
            };
            lease_sql::sqlx::query(lease_sql::sqlx::AssertSqlSafe(format!(
                "INSERT INTO {} (token, body) VALUES ({})",
                env.data, PARAMS
            )))
            .bind(6_i64)
            .bind("newer")
            .execute(&mut *newer)
            .await
            .unwrap();
            newer.commit().await.unwrap();

            let err = match older {
                Ok(waiting) => waiting.await.unwrap().unwrap_err(),
                Err(early) => early,
            };
            eprintln!("{level:?}: the older transaction got: {err}");
            let err = if err.is_retryable() {
                assert!(err.stale_token().is_none());
                // The transaction was aborted: run it again, as the application would.
                let mut again = begin(&env.pool, level).await;
                env.fences
                    .admit(&mut again, "report", old)
                    .await
                    .unwrap_err()
            } else {
                err
            };
            assert_eq!(
                err.stale_token(),
                Some(&StaleToken::new(old, new)),
                "{level:?}: {err}"
            );
            assert_eq!(rows(&env).await, vec![(6, "newer".to_owned())]);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_fenced_transactions_serialize_under_every_isolation_level() {
            older_waits_for_newer_and_fails(None).await;
            for level in LEVELS {
                older_waits_for_newer_and_fails(Some(level)).await;
            }
        }

        #[tokio::test]
        async fn equal_token_is_admitted_and_older_refused_without_a_lease() {
            let Some(env) = env().await else { return };
            fenced_write(&env, FencingToken::new(7), "a").await.unwrap();
            fenced_write(&env, FencingToken::new(7), "b")
                .await
                .expect("same holder again");
            let err = fenced_write(&env, FencingToken::new(6), "c")
                .await
                .unwrap_err();
            assert_eq!(
                err.stale_token(),
                Some(&StaleToken::new(FencingToken::new(6), FencingToken::new(7)))
            );
            let mut tx = env.pool.begin().await.unwrap();
            let too_big = env
                .fences
                .admit(&mut tx, "report", FencingToken::new(u64::MAX))
                .await
                .unwrap_err();
            assert!(matches!(too_big, FenceError::InvalidInput(_)), "{too_big}");
            let bad_name = env
                .fences
                .admit(&mut tx, "x'; DROP TABLE t; --", FencingToken::new(8))
                .await
                .unwrap_err();
            assert!(
                matches!(bad_name, FenceError::InvalidInput(_)),
                "{bad_name}"
            );
        }

        #[tokio::test]
        async fn a_trigger_that_suppresses_the_fence_write_is_an_error_not_success() {
            let Some(env) = env().await else { return };
            fenced_write(&env, FencingToken::new(1), "first")
                .await
                .unwrap();
            for sql in suppress(env.fences.table()) {
                lease_sql::sqlx::raw_sql(lease_sql::sqlx::AssertSqlSafe(sql))
                    .execute(&env.pool)
                    .await
                    .expect("create the trigger");
            }
            let err = fenced_write(&env, FencingToken::new(2), "second")
                .await
                .unwrap_err();
            assert!(err.stale_token().is_none(), "{err}");
            assert!(!err.is_retryable(), "{err}");
            assert!(err.to_string().contains("trigger"), "{err}");
            assert_eq!(rows(&env).await, vec![(1, "first".to_owned())]);
        }

        /// A trigger that only records (an audit log) leaves fencing intact.
        #[tokio::test]
        async fn an_audit_trigger_leaves_fencing_intact() {
            let Some(env) = env().await else { return };
            let log = unique("audit");
            for sql in audit(env.fences.table(), &log) {
                lease_sql::sqlx::raw_sql(lease_sql::sqlx::AssertSqlSafe(sql))
                    .execute(&env.pool)
                    .await
                    .expect("create the audit trigger");
            }
            fenced_write(&env, FencingToken::new(3), "a").await.unwrap();
            fenced_write(&env, FencingToken::new(4), "b").await.unwrap();
            let err = fenced_write(&env, FencingToken::new(3), "c")
                .await
                .unwrap_err();
            assert!(err.stale_token().is_some(), "{err}");
            let logged: Vec<i64> = lease_sql::sqlx::query_scalar(lease_sql::sqlx::AssertSqlSafe(
                format!("SELECT token FROM {log}"),
            ))
            .fetch_all(&env.pool)
            .await
            .unwrap();
            assert_eq!(logged.first(), Some(&3));
            assert_eq!(logged.last(), Some(&4));
            assert_eq!(rows(&env).await.len(), 2);
        }
    };
}

#[cfg(feature = "postgres")]
pub mod postgres {
    use super::*;
    use lease_sql::sqlx::postgres::PgPoolOptions;
    use lease_sql::{PostgresBackend, SqlOptions};

    pub type Db = lease_sql::sqlx::Postgres;
    pub type Dialect = lease_sql::PostgresDialect;
    pub const AUTOINC: &str = "BIGSERIAL PRIMARY KEY";
    pub const PARAMS: &str = "$1, $2";
    pub const LEVELS: [&str; 3] = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"];

    pub async fn setup() -> Option<(lease_sql::sqlx::PgPool, PostgresBackend)> {
        let url = lease_core::conformance::require_env("LEASE_TEST_POSTGRES_URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .expect("connect to LEASE_TEST_POSTGRES_URL");
        let options = SqlOptions::default()
            .with_table(support::unique_table())
            .with_fence_table(TableName::new(&unique("fences")).unwrap());
        let backend = PostgresBackend::from_pool(pool.clone(), options);
        backend.migrate().await.expect("migrate");
        Some((pool, backend))
    }

    pub async fn begin(
        pool: &lease_sql::sqlx::PgPool,
        level: Option<&str>,
    ) -> lease_sql::sqlx::Transaction<'static, Db> {
        match level {
            None => pool.begin().await.unwrap(),
            Some(level) => pool
                .begin_with(lease_sql::sqlx::AssertSqlSafe(format!(
                    "BEGIN ISOLATION LEVEL {level}"
                )))
                .await
                .unwrap(),
        }
    }

    pub fn suppress(fences: &TableName) -> Vec<String> {
        let f = unique("suppress");
        vec![
            format!(
                "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$"
            ),
            format!(
                "CREATE TRIGGER {f} BEFORE UPDATE ON {fences} FOR EACH ROW EXECUTE FUNCTION {f}()"
            ),
        ]
    }

    pub fn audit(fences: &TableName, log: &str) -> Vec<String> {
        let f = unique("audit_fn");
        vec![
            format!("CREATE TABLE {log} (id BIGSERIAL PRIMARY KEY, token BIGINT)"),
            format!(
                "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN INSERT INTO {log} (token) VALUES (NEW.token); RETURN NEW; END $$"
            ),
            format!(
                "CREATE TRIGGER {f} AFTER INSERT OR UPDATE ON {fences} FOR EACH ROW EXECUTE FUNCTION {f}()"
            ),
        ]
    }
}

#[cfg(feature = "mysql")]
pub mod mysql {
    use super::*;
    use lease_sql::sqlx::mysql::MySqlPoolOptions;
    use lease_sql::{MySqlBackend, SqlOptions};

    pub type Db = lease_sql::sqlx::MySql;
    pub type Dialect = lease_sql::MySqlDialect;
    pub const AUTOINC: &str = "BIGINT AUTO_INCREMENT PRIMARY KEY";
    pub const PARAMS: &str = "?, ?";
    pub const LEVELS: [&str; 3] = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"];

    pub async fn setup() -> Option<(lease_sql::sqlx::MySqlPool, MySqlBackend)> {
        let url = lease_core::conformance::require_env("LEASE_TEST_MYSQL_URL")?;
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .expect("connect to LEASE_TEST_MYSQL_URL");
        let options = SqlOptions::default()
            .with_table(support::unique_table())
            .with_fence_table(TableName::new(&unique("fences")).unwrap());
        let backend = MySqlBackend::from_pool(pool.clone(), options);
        backend.migrate().await.expect("migrate");
        Some((pool, backend))
    }

    /// MySQL sets the level of the next transaction before it starts: both statements go as one
    /// text request.
    pub async fn begin(
        pool: &lease_sql::sqlx::MySqlPool,
        level: Option<&str>,
    ) -> lease_sql::sqlx::Transaction<'static, Db> {
        match level {
            None => pool.begin().await.unwrap(),
            Some(level) => pool
                .begin_with(lease_sql::sqlx::AssertSqlSafe(format!(
                    "SET TRANSACTION ISOLATION LEVEL {level}; START TRANSACTION"
                )))
                .await
                .unwrap(),
        }
    }

    /// MySQL triggers cannot skip a row; one can undo the change.
    pub fn suppress(fences: &TableName) -> Vec<String> {
        let t = unique("keep");
        vec![format!(
            "CREATE TRIGGER {t} BEFORE UPDATE ON {fences} FOR EACH ROW SET NEW.token = OLD.token"
        )]
    }

    pub fn audit(fences: &TableName, log: &str) -> Vec<String> {
        vec![
            format!("CREATE TABLE {log} (id BIGINT AUTO_INCREMENT PRIMARY KEY, token BIGINT)"),
            format!(
                "CREATE TRIGGER {} AFTER INSERT ON {fences} FOR EACH ROW INSERT INTO {log} (token) VALUES (NEW.token)",
                unique("audit_ins")
            ),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE ON {fences} FOR EACH ROW INSERT INTO {log} (token) VALUES (NEW.token)",
                unique("audit_upd")
            ),
        ]
    }
}

#[cfg(feature = "sqlite")]
pub mod sqlite {
    use super::*;
    use lease_sql::{SqlOptions, SqliteBackend};

    pub type Db = lease_sql::sqlx::Sqlite;
    pub type Dialect = lease_sql::SqliteDialect;
    pub const AUTOINC: &str = "INTEGER PRIMARY KEY AUTOINCREMENT";
    pub const PARAMS: &str = "?, ?";
    /// SQLite has one level (serializable).
    pub const LEVELS: [&str; 0] = [];

    pub async fn setup() -> Option<(lease_sql::sqlx::SqlitePool, SqliteBackend)> {
        let dir = std::env::var_os("LEASE_TEST_SQLITE_DIR")
            .filter(|d| !d.is_empty())
            .map_or_else(
                || std::env::temp_dir().join("lease-sql-tests"),
                std::path::PathBuf::from,
            );
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!(
            "sqlite://{}",
            dir.join(format!("fenced-{}.db", support::random_suffix()))
                .display()
        );
        let backend = SqliteBackend::connect_with(&url, SqlOptions::default())
            .await
            .expect("open the database file");
        backend.migrate().await.expect("migrate");
        Some((backend.pool().clone(), backend))
    }

    /// `BEGIN` is deferred, as sqlx sends it.
    pub async fn begin(
        pool: &lease_sql::sqlx::SqlitePool,
        _level: Option<&str>,
    ) -> lease_sql::sqlx::Transaction<'static, Db> {
        pool.begin().await.unwrap()
    }

    pub fn suppress(fences: &TableName) -> Vec<String> {
        vec![format!(
            "CREATE TRIGGER {} BEFORE UPDATE ON {fences} BEGIN SELECT RAISE(IGNORE); END",
            unique("ignore")
        )]
    }

    pub fn audit(fences: &TableName, log: &str) -> Vec<String> {
        vec![
            format!("CREATE TABLE {log} (id INTEGER PRIMARY KEY AUTOINCREMENT, token INTEGER)"),
            format!(
                "CREATE TRIGGER {} AFTER INSERT ON {fences} BEGIN INSERT INTO {log} (token) VALUES (NEW.token); END",
                unique("audit_ins")
            ),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE ON {fences} BEGIN INSERT INTO {log} (token) VALUES (NEW.token); END",
                unique("audit_upd")
            ),
        ]
    }
}
