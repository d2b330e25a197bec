//! Errors, classified so callers (and the protocol itself) know what to do with them.

use std::fmt;
use std::time::Duration;

use crate::backend::LeaseRecord;
use crate::key::LeaseKey;
use crate::token::FencingToken;

/// Everything a [`Locker`](crate::Locker) operation can fail with.
///
/// Match on the variant, or use [`Error::kind`] for a coarse class.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is held by another holder (from operations that do not wait).
    #[error("lease {key} is held by another holder{}", holder_suffix(.holder.as_deref()))]
    Held {
        /// The key.
        key: LeaseKey,
        /// The current holder, when the backend could tell.
        holder: Option<Box<LeaseRecord>>,
    },
    /// Waiting for the key took longer than the caller allowed.
    #[error("timed out after {waited:?} waiting for lease {key}{}{}", holder_suffix(.holder.as_deref()), error_suffix(.last_error.as_deref()))]
    Timeout {
        /// The key.
        key: LeaseKey,
        /// How long the caller waited.
        waited: Duration,
        /// The holder seen last, when known.
        holder: Option<Box<LeaseRecord>>,
        /// The last backend error met while waiting (retried, since it was transient), if the
        /// wait ended while the store was failing: tells "held all along" from "store down".
        last_error: Option<Box<BackendError>>,
    },
    /// A lease this process held is no longer held (its work must stop).
    #[error("lease {key} (fencing token {fencing}) was lost: {reason}")]
    Lost {
        /// The key.
        key: LeaseKey,
        /// The fencing token of the lost grant.
        fencing: FencingToken,
        /// Why it was lost.
        reason: LostReason,
    },
    /// Waiting was cancelled through the caller's cancellation token.
    #[error("waiting for lease {key} was cancelled")]
    Cancelled {
        /// The key.
        key: LeaseKey,
    },
    /// A [`Semaphore`](crate::Semaphore) is in use elsewhere with a different number of permits;
    /// this process refused to hold a permit beside those holders (see `docs/semaphore.md`).
    #[error(
        "semaphore {name} has {theirs} permits in a live holder's record but {ours} here; refusing to mix permit counts"
    )]
    PermitCountMismatch {
        /// The semaphore's name.
        name: LeaseKey,
        /// The permit count this process uses.
        ours: u32,
        /// The permit count a live holder declared.
        theirs: u32,
    },
    /// The caller passed something invalid (a key, a TTL, an option, a table name…).
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// The backend failed; see [`BackendError::kind`] for whether retrying can help.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

fn error_suffix(error: Option<&BackendError>) -> String {
    error.map_or_else(String::new, |e| format!("; last error: {e}"))
}

fn holder_suffix(holder: Option<&LeaseRecord>) -> String {
    match holder {
        Some(record) => {
            let who = record.metadata.as_ref().map_or("", |m| m.as_str());
            format!(" ({who}, fencing token {})", record.fencing)
        }
        None => String::new(),
    }
}

/// A coarse class of [`Error`], for deciding what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Held by another holder.
    Held,
    /// Timed out waiting.
    Timeout,
    /// A held lease was lost.
    Lost,
    /// Cancelled by the caller.
    Cancelled,
    /// Invalid input; retrying the same call fails the same way.
    InvalidInput,
    /// A backend failure that may pass (network, overload, deadlock victim): retry with backoff.
    Transient,
    /// A backend failure that will not pass by itself (auth, configuration, missing table).
    Fatal,
    /// The stored record is not one this library wrote or can read (corrupt or foreign data).
    CorruptRecord,
    /// The backend does not support the operation.
    Unsupported,
    /// A semaphore is used with different permit counts at once.
    PermitCountMismatch,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Held { .. } => ErrorKind::Held,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Lost { .. } => ErrorKind::Lost,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::PermitCountMismatch { .. } => ErrorKind::PermitCountMismatch,
            Error::Backend(e) => match e.kind() {
                BackendErrorKind::Transient => ErrorKind::Transient,
                BackendErrorKind::Fatal => ErrorKind::Fatal,
                BackendErrorKind::CorruptRecord => ErrorKind::CorruptRecord,
                BackendErrorKind::Unsupported => ErrorKind::Unsupported,
            },
        }
    }

    /// Whether the same call may succeed later without any change by the caller.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Held | ErrorKind::Timeout | ErrorKind::Transient
        )
    }
}

/// Why a held lease was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// The holder deadline passed without a confirmed renewal (renewals failed or were too slow).
    DeadlineExpired,
    /// The backend said the grant is no longer ours (it expired there and was taken, or was broken).
    NotHeld,
    /// The backend failed in a way retrying cannot fix (for example the credentials were revoked).
    FatalBackendError,
    /// The lease was released or dropped by this process.
    Released,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LostReason::DeadlineExpired => "the deadline passed without a confirmed renewal",
            LostReason::NotHeld => "the backend reports it is no longer held by us",
            LostReason::FatalBackendError => "renewal failed with a non-retryable backend error",
            LostReason::Released => "it was released",
        })
    }
}

/// An input was rejected before anything was sent to a backend.
///
/// ```
/// use lease_core::LeaseKey;
/// let err = LeaseKey::new("").unwrap_err();
/// assert_eq!(err.field(), "key");
/// assert_eq!(err.to_string(), "invalid key: must not be empty");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    field: &'static str,
    reason: String,
}

impl InvalidInput {
    /// An error about `field` (for example `"key"`, `"ttl"`, `"table name"`).
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }

    /// Which input was invalid.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why, in words.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// The class of a [`BackendError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// May pass by itself; the protocol retries it with backoff within the lease's deadline.
    ///
    /// Also used for requests whose outcome is unknown (timeouts, dropped connections): the protocol
    /// then resolves the outcome by reading the record back.
    Transient,
    /// Will not pass by itself (authentication, permissions, configuration, missing schema). Never
    /// retried.
    Fatal,
    /// The stored record cannot be understood (written by something else, or corrupted).
    CorruptRecord,
    /// The backend does not implement the operation.
    Unsupported,
}

/// A failure reported by a backend.
///
/// Backends build these with [`BackendError::transient`], [`BackendError::fatal`],
/// [`BackendError::corrupt_record`] or [`BackendError::unsupported`], attaching the underlying error
/// with [`BackendError::with_source`]. Messages must never contain secrets (keys, passwords, SAS
/// tokens).
///
/// ```
/// use lease_core::{BackendError, BackendErrorKind};
/// let err = BackendError::transient("postgres", "connection reset");
/// assert_eq!(err.kind(), BackendErrorKind::Transient);
/// assert_eq!(err.to_string(), "postgres backend: connection reset");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{backend} backend: {message}")]
pub struct BackendError {
    kind: BackendErrorKind,
    backend: &'static str,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// An error of the given kind.
    pub fn new(kind: BackendErrorKind, backend: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// A failure that may pass by itself (or whose outcome is unknown).
    pub fn transient(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Transient, backend, message)
    }

    /// A failure that will not pass by itself.
    pub fn fatal(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Fatal, backend, message)
    }

    /// A stored record that cannot be understood.
    pub fn corrupt_record(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::CorruptRecord, backend, message)
    }

    /// A request this backend refuses as invalid (a TTL outside its range, say): fatal, since
    /// sending it again cannot help.
    pub fn invalid_input(backend: &'static str, invalid: crate::InvalidInput) -> Self {
        Self::fatal(backend, invalid.to_string())
    }

    /// An operation the backend does not implement.
    pub fn unsupported(backend: &'static str, operation: &str) -> Self {
        Self::new(
            BackendErrorKind::Unsupported,
            backend,
            format!("{operation} is not supported by this backend"),
        )
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The class of the error.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }

    /// The backend's name, as in [`Backend::name`](crate::Backend::name).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The message, without the backend's name.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the protocol may retry the call.
    pub fn is_transient(&self) -> bool {
        self.kind == BackendErrorKind::Transient
    }
}
