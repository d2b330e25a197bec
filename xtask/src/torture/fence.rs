//! The fenced resources the critical sections write to: the library's own, used as a user would.
//!
//! - [`FencedResource::Table`]: a PostgreSQL transaction per write that calls
//!   [`FenceTable::admit`] and inserts a row into the write log in the same transaction. The
//!   fence row stays locked until the commit, so the log's serial orders the admitted writes of
//!   one resource as the fence admitted them. A stale token is logged as refused (the
//!   transaction is still usable: `admit` refused without an SQL error).
//! - [`FencedResource::Store`]: an object per key on the row's own object store (under
//!   [`STORE_PREFIX`]), written through [`FencedStore`]. Each write reads the object, then puts
//!   a [`StoreRecord`] through the fenced store conditional on the version it read, so the
//!   records of one object form a chain (`chain`, `position` + 1 each write) in the order the
//!   store applied them. After the put succeeded (or was refused as stale) the write is logged
//!   in the same PostgreSQL log, with its place in the chain and the token the replaced version
//!   carried: the log's order does not matter, the chain's does.
//!
//! What the checker makes of the log is in [`super::journal`].

use std::sync::Arc;

use anyhow::{Context, Result};
use lease_objstore::object_store::path::Path as ObjectPath;
use lease_objstore::object_store::{
    self, Attribute, ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion,
};
use lease_objstore::{FENCING_TOKEN_ATTRIBUTE, FencedStore};
use lease_sql::sqlx::postgres::PgPoolOptions;
use lease_sql::sqlx::{self, PgPool, Postgres};
use lease_sql::{FenceError, FenceTable, FencingToken, StaleToken, TableName};
use serde::{Deserialize, Serialize};

use super::journal::{FinalObject, WriteRow, mono_ns};

/// Where the fenced objects live in the row's bucket (the leases are under `torture/`).
pub(crate) const STORE_PREFIX: &str = "torture-fenced";

/// How often a store write re-reads after a concurrent writer changed the object.
const STORE_ATTEMPTS: usize = 4;

/// The body of a fenced object: who wrote it, with which token, where in the object's chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoreRecord {
    /// Made by the write that created the object; a store that lost its data starts a new one.
    pub(crate) chain: String,
    /// 1 for the write that created the object, then one more per write.
    pub(crate) position: u64,
    pub(crate) token: u64,
    pub(crate) pid: u32,
    pub(crate) grant: u64,
}

/// Who writes: the grant's identity, independent of its token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writer {
    pub(crate) pid: u32,
    /// Counts the grants of one process.
    pub(crate) grant: u64,
    pub(crate) token: u64,
}

/// One row of the write log (see [`WriteRow`] for what the columns mean).
struct LogEntry<'a> {
    key: &'a str,
    chain: &'a str,
    position: Option<u64>,
    prev_token: Option<u64>,
    admitted: bool,
    writer: Writer,
    sent_at: u64,
}

/// The write log in the fence database, shared by both kinds of resource.
#[derive(Clone)]
pub(crate) struct WriteLog {
    pool: PgPool,
    fences: FenceTable,
    /// The fence table's name (lowercase: the library quotes it, the log's statements do not).
    table: String,
    insert_sql: String,
}

/// A row's fenced resource.
#[derive(Clone)]
pub(crate) enum FencedResource {
    /// `FenceTable::admit` in the fence database.
    Table(WriteLog),
    /// `FencedStore` over the row's object store; the log still goes to the fence database.
    Store(WriteLog, Arc<dyn ObjectStore>),
}

/// The write log's name, from the fence table's.
fn log_table(table: &str) -> String {
    format!("{table}_writes")
}

impl WriteLog {
    /// Connects to the fence database; `table` names the fence table (`<table>_writes` is the log).
    pub(crate) async fn connect(url: &str, table: &str, max: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max)
            // The checker needs the order of writes, not their survival of a server crash:
            // without a flush per commit the resource keeps up with hundreds of holders a second.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql("SET synchronous_commit = off")
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            })
            .connect(url)
            .await
            .context("connecting to the fence database")?;
        let log = log_table(table);
        Ok(Self {
            pool,
            fences: FenceTable::new(TableName::new(table)?),
            table: table.to_owned(),
            insert_sql: format!(
                "INSERT INTO {log} (resource, chain, position, token, prev_token, admitted, pid, \
                 grant_no, sent_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
        })
    }

    /// Creates the fence table (the library's `migrate`) and the write log.
    pub(crate) async fn create(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        self.fences.migrate::<Postgres>(&mut conn).await?;
        let log = log_table(&self.table);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {log} (seq BIGSERIAL PRIMARY KEY, resource TEXT NOT NULL, \
             chain TEXT NOT NULL, position BIGINT, token BIGINT NOT NULL, prev_token BIGINT, \
             admitted BOOLEAN NOT NULL, pid INT NOT NULL, grant_no BIGINT NOT NULL, \
             sent_at BIGINT NOT NULL)"
        )))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub(crate) async fn drop_tables(&self) -> Result<()> {
        let table = &self.table;
        let log = log_table(table);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {log}"
        )))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every logged write, in the log's order.
    pub(crate) async fn writes(&self) -> Result<Vec<WriteRow>> {
        type Row = (
            String,
            String,
            Option<i64>,
            i64,
            i64,
            Option<i64>,
            bool,
            i32,
            i64,
            i64,
        );
        let log = log_table(&self.table);
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT resource, chain, position, seq, token, prev_token, admitted, pid, grant_no, \
             sent_at FROM {log} ORDER BY seq"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(key, chain, position, seq, token, prev, admitted, pid, grant, sent_at)| {
                    WriteRow {
                        key,
                        chain,
                        // The chain's position on a store; the log's serial for the table.
                        order: position.unwrap_or(seq).unsigned_abs(),
                        token: token.unsigned_abs(),
                        prev_token: prev.map(i64::unsigned_abs),
                        admitted,
                        pid: pid.unsigned_abs(),
                        grant: grant.unsigned_abs(),
                        sent_at: sent_at.unsigned_abs(),
                    }
                },
            )
            .collect())
    }

    /// One fenced transaction: `admit`, then the log row, one commit. Returns whether admitted.
    async fn write_table(&self, key: &str, writer: Writer) -> Result<bool> {
        let sent_at = mono_ns();
        let mut tx = self.pool.begin().await?;
        let admitted = match self
            .fences
            .admit(&mut tx, key, FencingToken::new(writer.token))
            .await
        {
            Ok(()) => true,
            Err(FenceError::Stale { .. }) => false,
            // Rolled back when `tx` drops: nothing was written.
            Err(e) => return Err(e.into()),
        };
        let entry = LogEntry {
            key,
            chain: "",
            position: None,
            prev_token: None,
            admitted,
            writer,
            sent_at,
        };
        self.log(&mut *tx, &entry).await?;
        tx.commit().await?;
        Ok(admitted)
    }

    async fn log<'c, E: sqlx::PgExecutor<'c>>(&self, executor: E, e: &LogEntry<'_>) -> Result<()> {
        let big = |v: u64| i64::try_from(v).context("a value above i64::MAX");
        sqlx::query(sqlx::AssertSqlSafe(self.insert_sql.clone()))
            .bind(e.key)
            .bind(e.chain)
            .bind(e.position.map(big).transpose()?)
            .bind(big(e.writer.token)?)
            .bind(e.prev_token.map(big).transpose()?)
            .bind(e.admitted)
            .bind(i32::try_from(e.writer.pid).context("a pid above i32::MAX")?)
            .bind(big(e.writer.grant)?)
            .bind(big(e.sent_at)?)
            .execute(executor)
            .await?;
        Ok(())
    }
}

/// The object of `key` in the fenced prefix.
fn object_path(key: &str) -> ObjectPath {
    ObjectPath::from(format!("{STORE_PREFIX}/{key}"))
}

/// The token the fenced store recorded on an object (its metadata), if any and if it parses.
fn recorded_token(attributes: &object_store::Attributes) -> Option<u64> {
    attributes
        .get(&Attribute::Metadata(FENCING_TOKEN_ATTRIBUTE.into()))
        .and_then(|v| v.as_ref().parse().ok())
}

impl FencedResource {
    /// One critical-section write. Returns whether it was admitted; errors (the store or the
    /// database unreachable) are the fault schedule's doing and are not logged.
    pub(crate) async fn write(&self, key: &str, writer: Writer) -> Result<bool> {
        match self {
            FencedResource::Table(log) => log.write_table(key, writer).await,
            FencedResource::Store(log, store) => write_store(log, store, key, writer).await,
        }
    }
}

async fn write_store(
    log: &WriteLog,
    store: &Arc<dyn ObjectStore>,
    key: &str,
    writer: Writer,
) -> Result<bool> {
    let path = object_path(key);
    let fenced = FencedStore::new(store.clone(), FencingToken::new(writer.token));
    for _ in 0..STORE_ATTEMPTS {
        let sent_at = mono_ns();
        // The version this write replaces: the put is conditional on it, so the chain's positions
        // follow the order the store applied the writes.
        let (mode, chain, position, prev_token) = match store.get(&path).await {
            Ok(got) => {
                let version = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                let prev = recorded_token(&got.attributes);
                let before: StoreRecord = serde_json::from_slice(&got.bytes().await?)
                    .context("a fenced object that is not a torture record")?;
                (
                    PutMode::Update(version),
                    before.chain,
                    before.position + 1,
                    prev,
                )
            }
            Err(object_store::Error::NotFound { .. }) => (
                PutMode::Create,
                format!("{}-{}-{}", writer.pid, writer.grant, sent_at),
                1,
                None,
            ),
            Err(e) => return Err(e.into()),
        };
        let record = StoreRecord {
            chain: chain.clone(),
            position,
            token: writer.token,
            pid: writer.pid,
            grant: writer.grant,
        };
        let body = serde_json::to_vec(&record)?;
        let outcome = fenced
            .put_opts(&path, body.into(), PutOptions::from(mode))
            .await;
        let mut entry = LogEntry {
            key,
            chain: &chain,
            position: Some(position),
            prev_token,
            admitted: true,
            writer,
            sent_at,
        };
        match outcome {
            // Logged after the put: the chain's position, not the log's order, says when it landed.
            Ok(_) => {
                log.log(&log.pool, &entry).await?;
                return Ok(true);
            }
            Err(e) if StaleToken::find(&e).is_some() => {
                entry.admitted = false;
                entry.position = None;
                log.log(&log.pool, &entry).await?;
                return Ok(false);
            }
            // Another writer changed the object between the read and the put: read again.
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// The fenced objects of `keys` as the store holds them at the end of a row.
pub(crate) async fn final_objects(
    store: &Arc<dyn ObjectStore>,
    keys: &[String],
) -> Result<Vec<FinalObject>> {
    let mut objects = Vec::new();
    for key in keys {
        let got = match store.get(&object_path(key)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e).with_context(|| format!("reading the fenced object of {key}")),
        };
        let recorded = recorded_token(&got.attributes);
        let record: StoreRecord = serde_json::from_slice(&got.bytes().await?)
            .with_context(|| format!("the fenced object of {key} is not a torture record"))?;
        objects.push(FinalObject {
            key: key.clone(),
            chain: record.chain,
            position: record.position,
            token: record.token,
            recorded_token: recorded,
        });
    }
    Ok(objects)
}
