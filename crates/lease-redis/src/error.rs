//! Redis failures, classified once: what each one means to the lease protocol.

use lease_core::{BackendError, BackendErrorKind};
use redis::{ErrorKind, RedisError};

/// The backend's name in errors and logs.
pub(crate) const NAME: &str = "redis";

/// The error code the scripts answer when a key holds something this library did not write.
pub(crate) const CORRUPT_CODE: &str = "LEASECORRUPT";

/// Server error codes and their class. Everything not listed is fatal: the same request fails the
/// same way again.
const CODES: &[(&str, BackendErrorKind)] = &[
    (CORRUPT_CODE, BackendErrorKind::CorruptRecord),
    // Someone else's data at our key, met by a command rather than by a script's check.
    ("WRONGTYPE", BackendErrorKind::CorruptRecord),
    // A replica (a primary demoted in a failover): the next try may reach the new primary.
    ("READONLY", BackendErrorKind::Transient),
    // Loading the dataset after a restart.
    ("LOADING", BackendErrorKind::Transient),
    // Cluster: a multi-key request during resharding, a failover, a partition.
    ("TRYAGAIN", BackendErrorKind::Transient),
    ("CLUSTERDOWN", BackendErrorKind::Transient),
    ("MASTERDOWN", BackendErrorKind::Transient),
    ("ASK", BackendErrorKind::Transient),
    // Another (slow) script is running; `maxmemory` reached with `noeviction`.
    ("BUSY", BackendErrorKind::Transient),
    ("OOM", BackendErrorKind::Transient),
    // `MOVED`: this node does not serve the key's slot. With a single-node connection no retry
    // reaches the right node, so it is fatal with a hint (see `docs/backends/redis.md`).
    ("MOVED", BackendErrorKind::Fatal),
    ("NOAUTH", BackendErrorKind::Fatal),
    ("WRONGPASS", BackendErrorKind::Fatal),
    ("NOPERM", BackendErrorKind::Fatal),
];

/// The class of a server error code.
pub(crate) fn class_of_code(code: &str) -> BackendErrorKind {
    CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(BackendErrorKind::Fatal, |(_, kind)| *kind)
}

/// Classifies a failed call of operation `op`. Messages carry Redis's error text, which never
/// contains the password (the URL is not quoted by the client's errors).
pub(crate) fn classify(op: &str, error: RedisError) -> BackendError {
    let kind = match error.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => BackendErrorKind::Fatal,
        // The request may or may not have been applied: the protocol reads back.
        _ if error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal() =>
        {
            BackendErrorKind::Transient
        }
        ErrorKind::Io => BackendErrorKind::Transient,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => BackendErrorKind::CorruptRecord,
        // Error replies of the server (known to the client or not): by their code.
        _ => error.code().map_or(BackendErrorKind::Fatal, class_of_code),
    };
    let hint = match error.code() {
        Some("MOVED") => {
            " (this node is part of a Redis Cluster and does not serve the key's slot; \
             lease-redis connects to one node: see docs/backends/redis.md)"
        }
        Some("NOAUTH" | "WRONGPASS") => " (check the user name and password in the URL)",
        _ => "",
    };
    let detail = match error.code() {
        Some(CORRUPT_CODE) => error.detail().unwrap_or_default().to_owned(),
        _ => error.to_string(),
    };
    BackendError::new(kind, NAME, format!("{op}: {detail}{hint}")).with_source(error)
}

/// An answer of an unexpected shape (a script and client out of step, or a proxy in between).
pub(crate) fn unexpected(op: &str, what: impl std::fmt::Display) -> BackendError {
    BackendError::fatal(
        NAME,
        format!("{op}: unexpected answer from the server: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        use BackendErrorKind::*;
        for (code, want) in [
            ("LEASECORRUPT", CorruptRecord),
            ("WRONGTYPE", CorruptRecord),
            ("READONLY", Transient),
            ("LOADING", Transient),
            ("TRYAGAIN", Transient),
            ("CLUSTERDOWN", Transient),
            ("OOM", Transient),
            ("BUSY", Transient),
            ("MOVED", Fatal),
            ("NOAUTH", Fatal),
            ("WRONGPASS", Fatal),
            ("NOPERM", Fatal),
            ("ERR", Fatal),
            ("SOMETHINGNEW", Fatal),
        ] {
            assert_eq!(class_of_code(code), want, "{code}");
        }
    }

    #[test]
    fn client_side_failures() {
        let reset = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert_eq!(classify("renew", reset).kind(), BackendErrorKind::Transient);
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "denied"));
        assert_eq!(classify("connect", auth).kind(), BackendErrorKind::Fatal);
        let parse = RedisError::from((ErrorKind::UnexpectedReturnType, "not a number"));
        assert_eq!(
            classify("read", parse).kind(),
            BackendErrorKind::CorruptRecord
        );
    }
}
