//! object_store's errors mapped to `BackendError` kinds: one table.
//!
//! | object_store error | during | kind |
//! |---|---|---|
//! | `Precondition` (412), `NotFound` | conditional update | conflict: someone else wrote first |
//! | `AlreadyExists` (412 / 304, Azure's 409 `BlobAlreadyExists`) | create | conflict: the object exists |
//! | `AlreadyExists` from HTTP 409 `ConditionalRequestConflict` (S3), or any 409 on update | write | transient: retry |
//! | `PermissionDenied` (403), `Unauthenticated` (401) | any | fatal, at once |
//! | `NotImplemented`, `NotSupported`, `UnknownConfigurationKey`, `InvalidPath` | any | fatal |
//! | HTTP 301 (S3: the bucket is in another region) | any | fatal, naming the region setting |
//! | HTTP 400 `RequestTimeout` (S3: the body was not sent in time) | any | transient |
//! | HTTP 400, 404 (a missing bucket), 405, other 4xx except 408 / 429 | any | fatal |
//! | 5xx, 408, 429, timeouts, connection errors, anything else | any | transient (outcome unknown) |
//!
//! Messages are the store's own, with every URL's query string removed (it may carry a SAS
//! signature); the source error is not attached for the same reason.

use lease_core::BackendError;
use object_store::Error;

/// What a failed write means.
#[derive(Debug)]
pub(crate) enum WriteFailure {
    /// The condition did not hold: someone else's write is there.
    Conflict,
    /// Anything else.
    Failed(BackendError),
}

/// The HTTP status behind an object_store error, read from its message: object_store 0.14 keeps
/// the status in a private type, and its message reads "… status code: 409 Conflict …".
fn status(error: &Error) -> Option<u16> {
    let text = error.to_string();
    let (_, after) = text.split_once("status code: ")?;
    after.get(..3)?.parse().ok()
}

/// A `NotFound` whose cause is a missing bucket or container, not a missing object: fatal
/// (nothing can ever be stored there), whichever operation met it. S3 names it `NoSuchBucket`,
/// Azure `ContainerNotFound`; GCS answers a missing bucket's object read like a missing object.
pub(crate) fn missing_container(store: &'static str, error: &Error) -> Option<BackendError> {
    let message = redact(&error.to_string());
    let named = [
        "NoSuchBucket",
        "ContainerNotFound",
        "The specified bucket does not exist",
    ];
    named.iter().any(|n| message.contains(n)).then(|| {
        BackendError::fatal(
            store,
            format!("the bucket or container does not exist (create it first): {message}"),
        )
    })
}

/// A failed read or list.
pub(crate) fn classify(store: &'static str, error: &Error) -> BackendError {
    let message = redact(&error.to_string());
    if status(error) == Some(301) {
        // S3 answers a request sent to another region's endpoint with 301 (and no Location):
        // retrying the same endpoint can never succeed.
        return BackendError::fatal(
            store,
            format!(
                "the bucket is in another region than the one configured (HTTP 301): set the \
                 bucket's region (aws_region / AWS_REGION): {message}"
            ),
        );
    }
    if status(error) == Some(400) && message.contains("RequestTimeout") {
        // S3's 400 RequestTimeout: the request body was not sent in time. Nothing was written
        // and a retry may pass.
        return BackendError::transient(store, message);
    }
    let fatal = match error {
        Error::PermissionDenied { .. } | Error::Unauthenticated { .. } => {
            return BackendError::fatal(
                store,
                format!("access denied (check the credentials and their permissions): {message}"),
            );
        }
        Error::NotImplemented { .. }
        | Error::NotSupported { .. }
        | Error::UnknownConfigurationKey { .. }
        | Error::InvalidPath { .. } => true,
        _ => match status(error) {
            Some(408 | 429) => false,
            Some(code) => (400..500).contains(&code),
            None => false,
        },
    };
    if fatal {
        BackendError::fatal(store, message)
    } else {
        BackendError::transient(store, message)
    }
}

/// A failed conditional write (`create` tells `AlreadyExists` from the rest).
pub(crate) fn classify_write(store: &'static str, error: &Error, create: bool) -> WriteFailure {
    match error {
        // S3 answers 409 ConditionalRequestConflict when conditional writes race; object_store
        // reports it as AlreadyExists. Nothing was written: try again.
        Error::AlreadyExists { .. }
            if status(error) == Some(409)
                && (!create || error.to_string().contains("ConditionalRequestConflict")) =>
        {
            WriteFailure::Failed(BackendError::transient(
                store,
                format!(
                    "conflicting concurrent conditional write (409); try again: {}",
                    redact(&error.to_string())
                ),
            ))
        }
        Error::AlreadyExists { .. } if create => WriteFailure::Conflict,
        Error::Precondition { .. } | Error::NotFound { .. } if !create => WriteFailure::Conflict,
        Error::Precondition { .. } if create => WriteFailure::Conflict,
        Error::NotImplemented { .. } => WriteFailure::Failed(BackendError::fatal(
            store,
            format!(
                "this store cannot do the conditional writes leases need (PutMode::{}): {}",
                if create { "Create" } else { "Update" },
                redact(&error.to_string())
            ),
        )),
        _ => WriteFailure::Failed(classify(store, error)),
    }
}

/// Removes the query string of every URL in `message` (SAS signatures live there).
pub(crate) fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("://") {
        let (before, url) = rest.split_at(at);
        out.push_str(before);
        let end = url
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(url.len());
        let (whole, after) = url.split_at(end);
        match whole.split_once('?') {
            Some((base, _)) => {
                out.push_str(base);
                out.push_str("?<redacted>");
            }
            None => out.push_str(whole),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_redacted() {
        let m = "error sending request for url (https://acct.blob.core.windows.net/c/k?sv=2024&sig=SECRET): timed out";
        let r = redact(m);
        assert!(!r.contains("SECRET"), "{r}");
        assert!(
            r.contains("https://acct.blob.core.windows.net/c/k?<redacted>): timed out"),
            "{r}"
        );
        assert_eq!(redact("no url here"), "no url here");
    }

    #[test]
    fn the_table() {
        let path = || "k".to_owned();
        let source = || -> Box<dyn std::error::Error + Send + Sync> { "x".into() };
        let pre = Error::Precondition {
            path: path(),
            source: source(),
        };
        assert!(matches!(
            classify_write("s3", &pre, false),
            WriteFailure::Conflict
        ));
        let exists = Error::AlreadyExists {
            path: path(),
            source: source(),
        };
        assert!(matches!(
            classify_write("s3", &exists, true),
            WriteFailure::Conflict
        ));
        let denied = Error::PermissionDenied {
            path: path(),
            source: source(),
        };
        match classify_write("s3", &denied, false) {
            WriteFailure::Failed(e) => assert_eq!(e.kind(), lease_core::BackendErrorKind::Fatal),
            other => panic!("{other:?}"),
        }
        let unimplemented = Error::NotImplemented {
            operation: "put".into(),
            implementer: "local".into(),
        };
        match classify_write("file", &unimplemented, false) {
            WriteFailure::Failed(e) => {
                assert_eq!(e.kind(), lease_core::BackendErrorKind::Fatal);
                assert!(e.message().contains("PutMode::Update"));
            }
            other => panic!("{other:?}"),
        }
        let generic = Error::Generic {
            store: "S3",
            source: source(),
        };
        assert!(classify("s3", &generic).is_transient());
        let status =
            |text: &str| -> Box<dyn std::error::Error + Send + Sync> { text.to_owned().into() };
        let conflict = Error::AlreadyExists {
            path: path(),
            source: status(
                "Server returned non-2xx status code: 409 Conflict: <Code>ConditionalRequestConflict</Code>",
            ),
        };
        for create in [true, false] {
            match classify_write("s3", &conflict, create) {
                WriteFailure::Failed(e) => assert!(e.is_transient()),
                other => panic!("{other:?}"),
            }
        }
        let azure_exists = Error::AlreadyExists {
            path: path(),
            source: status(
                "Server returned non-2xx status code: 409 Conflict: <Code>BlobAlreadyExists</Code>",
            ),
        };
        assert!(matches!(
            classify_write("azure", &azure_exists, true),
            WriteFailure::Conflict
        ));
        let no_bucket = Error::Generic {
            store: "S3",
            source: status("Server returned non-2xx status code: 404 Not Found: NoSuchBucket"),
        };
        assert!(!classify("s3", &no_bucket).is_transient());
        // Item 6 of issue 19: a read's 404 for a missing bucket is not "no lease".
        let no_bucket_read = Error::NotFound {
            path: path(),
            source: status(
                "Server returned non-2xx status code: 404 Not Found: <Code>NoSuchBucket</Code>",
            ),
        };
        let e = missing_container("s3", &no_bucket_read).expect("a missing bucket");
        assert_eq!(e.kind(), lease_core::BackendErrorKind::Fatal);
        let no_key = Error::NotFound {
            path: path(),
            source: status(
                "Server returned non-2xx status code: 404 Not Found: <Code>NoSuchKey</Code>",
            ),
        };
        assert!(missing_container("s3", &no_key).is_none());
        // Item 7 of issue 19, as AWS documents them.
        let moved = Error::Generic {
            store: "S3",
            source: status("Server returned non-2xx status code: 301 Moved Permanently: "),
        };
        let e = classify("s3", &moved);
        assert_eq!(e.kind(), lease_core::BackendErrorKind::Fatal, "{e}");
        assert!(e.message().contains("region"), "{e}");
        let slow_body = Error::Generic {
            store: "S3",
            source: status(
                "Server returned non-2xx status code: 400 Bad Request: <Error><Code>RequestTimeout</Code></Error>",
            ),
        };
        assert!(classify("s3", &slow_body).is_transient());
        match classify_write("s3", &slow_body, false) {
            WriteFailure::Failed(e) => assert!(e.is_transient(), "{e}"),
            other => panic!("{other:?}"),
        }
        let busy = Error::Generic {
            store: "S3",
            source: status("Server returned non-2xx status code: 503 Service Unavailable"),
        };
        assert!(classify("s3", &busy).is_transient());
    }
}
