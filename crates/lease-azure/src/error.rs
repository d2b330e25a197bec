//! Azure Storage failures, classified once: what each service error means to the lease protocol.
//!
//! Messages carry the operation, the HTTP status and the service's error code only. URLs (which
//! carry SAS signatures) and the SDK's error text are never copied in without redaction.

use azure_core::error::ErrorKind as SdkKind;
use lease_core::{BackendError, BackendErrorKind};

/// The backend's name in errors and logs.
pub(crate) const NAME: &str = "azure";

/// What a failed request means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Meaning {
    /// Another lease is active on the blob (acquire).
    Held,
    /// Our lease is not the active one (renew, release, a lease-conditioned write).
    NotHeld,
    /// The blob does not exist.
    BlobMissing,
    /// The container does not exist.
    ContainerMissing,
    /// The blob or container already exists (a create with `If-None-Match: *`).
    AlreadyExists,
    /// An `If-Match` condition failed: the blob changed since it was read.
    Changed,
    /// Authentication, permissions, configuration: retrying cannot help.
    Fatal,
    /// Overload, timeouts, dropped connections: may pass; the outcome may be unknown.
    Transient,
}

/// The service error codes that decide the meaning, then the status for everything else.
const CODES: &[(&str, Meaning)] = &[
    ("LeaseAlreadyPresent", Meaning::Held),
    ("LeaseIsBreakingAndCannotBeAcquired", Meaning::Held),
    ("LeaseIdMismatchWithLeaseOperation", Meaning::NotHeld),
    ("LeaseIdMismatchWithBlobOperation", Meaning::NotHeld),
    ("LeaseNotPresentWithLeaseOperation", Meaning::NotHeld),
    ("LeaseNotPresentWithBlobOperation", Meaning::NotHeld),
    ("LeaseIdMissing", Meaning::NotHeld),
    ("LeaseLost", Meaning::NotHeld),
    ("LeaseIsBrokenAndCannotBeRenewed", Meaning::NotHeld),
    ("LeaseIsBreakingAndCannotBeExtended", Meaning::NotHeld),
    ("LeaseIsBreakingAndCannotBeChanged", Meaning::NotHeld),
    ("BlobNotFound", Meaning::BlobMissing),
    ("ContainerNotFound", Meaning::ContainerMissing),
    ("BlobAlreadyExists", Meaning::AlreadyExists),
    ("ContainerAlreadyExists", Meaning::AlreadyExists),
    ("ConditionNotMet", Meaning::Changed),
    ("ContainerBeingDeleted", Meaning::Transient),
    ("ServerBusy", Meaning::Transient),
    ("OperationTimedOut", Meaning::Transient),
    ("InternalError", Meaning::Transient),
];

/// Classifies an HTTP status and service error code.
pub(crate) fn meaning_of(status: u16, code: Option<&str>) -> Meaning {
    if let Some(code) = code
        && let Some((_, meaning)) = CODES.iter().find(|(c, _)| *c == code)
    {
        return *meaning;
    }
    match status {
        // A HEAD has no body, so a missing blob may come without a code.
        404 => Meaning::BlobMissing,
        412 => Meaning::Changed,
        408 | 429 | 500..=599 => Meaning::Transient,
        // 400 (a bad header: a bug or a proxy), 401/403 (credentials, clock skew, permissions),
        // 405, 409 and 412 with unknown codes: the same request fails the same way again.
        _ => Meaning::Fatal,
    }
}

/// A failed SDK call: its meaning and a message safe to show.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) meaning: Meaning,
    message: String,
}

impl Failure {
    /// Classifies an SDK error from operation `op` (for the message).
    pub(crate) fn from_sdk(op: &str, error: &azure_core::Error) -> Self {
        match error.kind() {
            SdkKind::HttpResponse {
                status, error_code, ..
            } => {
                let status = u16::from(*status);
                let code = error_code.as_deref();
                let meaning = meaning_of(status, code);
                let hint = if status == 403 {
                    " (check the account key or SAS, its permissions and expiry, and the clock)"
                } else {
                    ""
                };
                Self {
                    meaning,
                    message: format!(
                        "{op}: HTTP {status} {}{hint}",
                        code.unwrap_or("(no error code)")
                    ),
                }
            }
            // A token could not be obtained (Entra ID): misconfigured credentials do not heal.
            SdkKind::Credential => Self {
                meaning: Meaning::Fatal,
                message: format!("{op}: credential error: {}", redact(&error.to_string())),
            },
            _ => Self {
                meaning: Meaning::Transient,
                message: format!("{op}: {}", redact(&error.to_string())),
            },
        }
    }

    /// A failure of our own making (for example an unreadable record).
    pub(crate) fn new(meaning: Meaning, message: impl Into<String>) -> Self {
        Self {
            meaning,
            message: message.into(),
        }
    }

    /// The message (already redacted).
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// As a `BackendError`. Meanings the caller did not handle become fatal or transient.
    pub(crate) fn into_backend_error(self) -> BackendError {
        let kind = match self.meaning {
            Meaning::Transient | Meaning::Changed | Meaning::Held | Meaning::NotHeld => {
                BackendErrorKind::Transient
            }
            Meaning::Fatal
            | Meaning::BlobMissing
            | Meaning::ContainerMissing
            | Meaning::AlreadyExists => BackendErrorKind::Fatal,
        };
        BackendError::new(kind, NAME, self.message)
    }
}

/// Removes SAS signatures (`sig=...`) and any `Authorization`-like values from text the SDK or
/// the HTTP client produced (their errors can quote the request URL).
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = find_ci(rest, "sig=") {
        out.push_str(&rest[..pos + 4]);
        out.push_str("REDACTED");
        let after = &rest[pos + 4..];
        let end = after
            .find(|c: char| c == '&' || c == ')' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        use Meaning::*;
        let cases = [
            (409, Some("LeaseAlreadyPresent"), Held),
            (409, Some("LeaseIdMismatchWithLeaseOperation"), NotHeld),
            (409, Some("LeaseNotPresentWithLeaseOperation"), NotHeld),
            (412, Some("LeaseIdMismatchWithBlobOperation"), NotHeld),
            (412, Some("LeaseNotPresentWithBlobOperation"), NotHeld),
            (412, Some("LeaseLost"), NotHeld),
            (409, Some("LeaseIsBrokenAndCannotBeRenewed"), NotHeld),
            (412, Some("ConditionNotMet"), Changed),
            (404, Some("BlobNotFound"), BlobMissing),
            (404, Some("ContainerNotFound"), ContainerMissing),
            (404, None, BlobMissing),
            (409, Some("BlobAlreadyExists"), AlreadyExists),
            (403, Some("AuthenticationFailed"), Fatal),
            (403, Some("AuthorizationPermissionMismatch"), Fatal),
            (400, Some("InvalidHeaderValue"), Fatal),
            (408, None, Transient),
            (500, Some("InternalError"), Transient),
            (503, Some("ServerBusy"), Transient),
            (502, None, Transient),
        ];
        for (status, code, want) in cases {
            assert_eq!(meaning_of(status, code), want, "{status} {code:?}");
        }
    }

    #[test]
    fn signatures_are_redacted() {
        let text = "error sending request for url (https://a.blob.core.windows.net/c/k?sv=2024&SIG=abc%2Bdef&se=1): timed out";
        let clean = redact(text);
        assert!(!clean.contains("abc"), "{clean}");
        assert!(clean.contains("SIG=REDACTED&se=1"), "{clean}");
        assert_eq!(redact("sig=x"), "sig=REDACTED");
        assert_eq!(redact("nothing here"), "nothing here");
    }

    #[test]
    fn kinds_follow_the_meaning() {
        let fatal = Failure::new(Meaning::Fatal, "x").into_backend_error();
        assert_eq!(fatal.kind(), BackendErrorKind::Fatal);
        let transient = Failure::new(Meaning::Transient, "x").into_backend_error();
        assert_eq!(transient.kind(), BackendErrorKind::Transient);
    }
}
