//! [`connect`]: one entry point that picks the dialect from the URL's scheme.

use std::time::Duration;

use async_trait::async_trait;
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, InvalidInput, LeaseKey,
    LeaseRecord, ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};

use crate::SqlOptions;
#[cfg(feature = "mysql")]
use crate::mysql::MySqlBackend;
#[cfg(feature = "postgres")]
use crate::postgres::PostgresBackend;
#[cfg(feature = "sqlite")]
use crate::sqlite::SqliteBackend;

/// A backend for whichever database a URL names; see [`connect`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnySqlBackend {
    /// `postgres://` or `postgresql://`.
    #[cfg(feature = "postgres")]
    Postgres(PostgresBackend),
    /// `mysql://` or `mariadb://`.
    #[cfg(feature = "mysql")]
    MySql(MySqlBackend),
    /// `sqlite:`.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteBackend),
}

/// Runs `$body` with `$b` bound to the backend inside whichever variant `$self` is.
macro_rules! each {
    ($self:expr, $b:ident => $body:expr) => {
        match $self {
            #[cfg(feature = "postgres")]
            AnySqlBackend::Postgres($b) => $body,
            #[cfg(feature = "mysql")]
            AnySqlBackend::MySql($b) => $body,
            #[cfg(feature = "sqlite")]
            AnySqlBackend::Sqlite($b) => $body,
        }
    };
}

/// Connects to the database `url` names, choosing the dialect from its scheme: `postgres://` or
/// `postgresql://` (feature `postgres`), `mysql://` or `mariadb://` (feature `mysql`), `sqlite:`
/// (feature `sqlite`, the default). Then call [`AnySqlBackend::migrate`] once, or create the
/// table with your migration tool.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_sql::Error> {
/// let backend = lease_sql::connect("sqlite::memory:").await?;
/// backend.migrate().await?;
/// let locker = lease_sql::Locker::new(backend);
/// let lease = locker.try_acquire("reports/daily").await?.expect("free");
/// println!("fencing token {}", lease.fencing_token()); // microseconds since 1970 on a new key
/// lease.release().await?;
///
/// let err = lease_sql::connect("redis://:hunter2@cache").await.unwrap_err();
/// assert_eq!(err.kind(), lease_sql::ErrorKind::InvalidInput);
/// assert!(!err.to_string().contains("hunter2"));
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for an unknown scheme, a scheme whose
/// feature is not enabled, or a URL the driver cannot parse; otherwise as the dialect's
/// `connect`. Messages never contain the password.
pub async fn connect(url: &str) -> Result<AnySqlBackend, lease_core::Error> {
    connect_with(url, SqlOptions::default()).await
}

/// Like [`connect`], with options.
///
/// # Errors
/// As [`connect`].
pub async fn connect_with(
    url: &str,
    options: SqlOptions,
) -> Result<AnySqlBackend, lease_core::Error> {
    let _ = &options;
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+'))
        .ok_or_else(|| {
            InvalidInput::new(
                "database url",
                "expected postgres://…, mysql://…, mariadb://… or sqlite:…",
            )
        })?;
    let disabled = |feature: &str| {
        InvalidInput::new(
            "database url",
            format!("`{scheme}:` URLs need lease-sql's `{feature}` feature, which is not enabled"),
        )
    };
    match scheme.as_str() {
        "postgres" | "postgresql" => {
            #[cfg(feature = "postgres")]
            return Ok(AnySqlBackend::Postgres(
                PostgresBackend::connect_with(url, options).await?,
            ));
            #[cfg(not(feature = "postgres"))]
            return Err(disabled("postgres").into());
        }
        "mysql" | "mariadb" => {
            #[cfg(feature = "mysql")]
            {
                let url = match url.strip_prefix("mariadb:") {
                    Some(rest) => format!("mysql:{rest}"),
                    None => url.to_owned(),
                };
                return Ok(AnySqlBackend::MySql(
                    MySqlBackend::connect_with(&url, options).await?,
                ));
            }
            #[cfg(not(feature = "mysql"))]
            return Err(disabled("mysql").into());
        }
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            return Ok(AnySqlBackend::Sqlite(
                SqliteBackend::connect_with(url, options).await?,
            ));
            #[cfg(not(feature = "sqlite"))]
            return Err(disabled("sqlite").into());
        }
        other => {
            let _ = disabled;
            Err(InvalidInput::new(
                "database url",
                format!(
                    "unknown scheme `{other}:`; expected postgres://…, mysql://…, mariadb://… or sqlite:…"
                ),
            )
            .into())
        }
    }
}

impl AnySqlBackend {
    /// Creates the lease table if it does not exist; see the dialect's `migrate`.
    ///
    /// # Errors
    /// As the dialect's `migrate`.
    pub async fn migrate(&self) -> Result<(), lease_core::Error> {
        each!(self, b => b.migrate().await)
    }

    /// The `CREATE TABLE IF NOT EXISTS` statement [`AnySqlBackend::migrate`] runs.
    pub fn create_table_sql(&self) -> String {
        each!(self, b => b.create_table_sql())
    }

    /// The lease table.
    pub fn table(&self) -> &crate::TableName {
        each!(self, b => b.table())
    }

    /// Requests sent and waited for; see [`SqlBackend::round_trips`](crate::SqlBackend::round_trips).
    pub fn round_trips(&self) -> u64 {
        each!(self, b => b.round_trips())
    }
}

#[async_trait]
impl Backend for AnySqlBackend {
    fn name(&self) -> &'static str {
        each!(self, b => b.name())
    }
    fn capabilities(&self) -> Capabilities {
        each!(self, b => b.capabilities())
    }
    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        each!(self, b => b.acquire(request).await)
    }
    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        each!(self, b => b.renew(request).await)
    }
    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        each!(self, b => b.renew_many(requests).await)
    }
    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        each!(self, b => b.release(request).await)
    }
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        each!(self, b => b.inspect(key).await)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        each!(self, b => b.list(prefix).await)
    }
    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        each!(self, b => b.break_lease(key).await)
    }
    async fn wait_for_change(
        &self,
        key: &LeaseKey,
        max_wait: Duration,
    ) -> Result<(), BackendError> {
        each!(self, b => b.wait_for_change(key, max_wait).await)
    }
}
