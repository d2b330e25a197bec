//! [`Pooler`]: what stands between lease-sql and PostgreSQL, and what that allows.

use lease_core::InvalidInput;

/// The connection pooler between lease-sql and a PostgreSQL server (ignored by MySQL and
/// SQLite). Set it with [`SqlOptions::with_pooler`](crate::SqlOptions::with_pooler).
///
/// - [`Pooler::none`] (the default): direct connections, or PgBouncer in `session` mode. Statements
///   are prepared once per connection and cached; waiters `LISTEN` on a connection of their own.
/// - [`Pooler::transaction`]: PgBouncer (1.18 and later) in `transaction` mode, or another
///   pooler that hands a server connection to a client only for one transaction. Session state
///   does not survive between transactions there, so every operation runs as `BEGIN`, one
///   unnamed (never cached) statement, `COMMIT` — the server connection stays the same for those
///   four round trips, and no prepared statement outlives them. `LISTEN` cannot work through
///   such a pooler: give [`Pooler::transaction_listening_on`] a URL that reaches the server
///   directly and waiters are woken at release, or waiters poll (a contended acquire then
///   learns of a release only at its next retry).
///
/// ```
/// use lease_sql::{Pooler, SqlOptions};
/// let polling = SqlOptions::default().with_pooler(Pooler::transaction());
/// assert!(polling.pooler.is_transaction());
/// let woken = Pooler::transaction_listening_on("postgres://app:secret@db-primary:5432/app")?;
/// assert!(!format!("{woken:?}").contains("secret"));
/// # Ok::<(), lease_sql::InvalidInput>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pooler {
    transaction: bool,
    listen_url: Option<String>,
}

impl Pooler {
    /// No pooler, or one in session mode.
    pub fn none() -> Self {
        Self::default()
    }

    /// A pooler in transaction mode; waiters poll.
    pub fn transaction() -> Self {
        Self {
            transaction: true,
            listen_url: None,
        }
    }

    /// A pooler in transaction mode, with `LISTEN` on a connection to `direct_url`, which must
    /// reach the same server without the pooler (one extra connection per backend, held while
    /// anyone waits).
    ///
    /// # Errors
    /// [`InvalidInput`] when `direct_url` is not a `postgres://` or `postgresql://` URL.
    pub fn transaction_listening_on(direct_url: impl Into<String>) -> Result<Self, InvalidInput> {
        let url = direct_url.into();
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
            return Err(InvalidInput::new(
                "listen url",
                "expected a postgres:// URL that reaches the server without the pooler",
            ));
        }
        #[cfg(feature = "postgres")]
        if <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&url).is_err() {
            return Err(InvalidInput::new(
                "listen url",
                "the PostgreSQL driver cannot parse this URL",
            ));
        }
        Ok(Self {
            transaction: true,
            listen_url: Some(url),
        })
    }

    /// Whether operations must not rely on session state (transaction pooling).
    pub fn is_transaction(&self) -> bool {
        self.transaction
    }

    /// The direct URL waiters `LISTEN` on, when transaction pooling is on and one was given.
    pub fn listen_url(&self) -> Option<&str> {
        self.listen_url.as_deref()
    }
}

impl std::fmt::Debug for Pooler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The listen URL may carry a password: only say whether there is one.
        f.debug_struct("Pooler")
            .field("transaction", &self.transaction)
            .field(
                "listen_url",
                &self.listen_url.as_ref().map(|_| "<direct url>"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_url_must_be_postgres_and_never_shows_in_debug() {
        assert!(!Pooler::default().is_transaction());
        assert_eq!(Pooler::transaction().listen_url(), None);
        let err = Pooler::transaction_listening_on("mysql://root:pw@db/x").unwrap_err();
        assert_eq!(err.field(), "listen url");
        assert!(!err.to_string().contains("pw"));
        let pooler = Pooler::transaction_listening_on("postgres://u:hunter2@db:5432/app").unwrap();
        assert!(pooler.is_transaction());
        assert_eq!(
            pooler.listen_url(),
            Some("postgres://u:hunter2@db:5432/app")
        );
        assert!(!format!("{pooler:?}").contains("hunter2"));
    }
}
