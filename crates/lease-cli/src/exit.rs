//! Exit codes and the error type every subcommand returns.

use std::fmt;

use lease_core::{Error, ErrorKind};

/// The command's own work succeeded (for `exec` and `elect`: the child's status is used instead).
pub(crate) const OK: u8 = 0;
/// `break`: the answer to the confirmation question was not yes.
pub(crate) const DECLINED: u8 = 1;
/// Bad usage: an unknown option, a bad duration, a bad lease name, a bad or unsupported store URL,
/// or `break` without `--yes` and without a terminal to ask on (sysexits `EX_USAGE`).
pub(crate) const USAGE: u8 = 64;
/// A stored record could not be understood (sysexits `EX_DATAERR`).
pub(crate) const CORRUPT: u8 = 65;
/// The store could not be reached, or kept failing with transient errors (sysexits `EX_UNAVAILABLE`).
pub(crate) const UNAVAILABLE: u8 = 69;
/// An internal error of `lease` itself, such as a failure to wait for the child (sysexits `EX_SOFTWARE`).
pub(crate) const SOFTWARE: u8 = 70;
/// `--no-wait` and the lease is held by someone else.
pub(crate) const HELD: u8 = 73;
/// `--timeout` ran out while the lease was held by someone else.
pub(crate) const TIMEOUT: u8 = 74;
/// The lease was lost while the command ran (the command was terminated).
pub(crate) const LOST: u8 = 75;
/// The store refused the request in a way retrying cannot fix: authentication, permissions, missing
/// schema, an operation the backend does not support (sysexits `EX_CONFIG`).
pub(crate) const CONFIG: u8 = 78;
/// The command was found but could not be executed (the shell convention).
pub(crate) const CANNOT_EXECUTE: u8 = 126;
/// The command was not found (the shell convention).
pub(crate) const NOT_FOUND: u8 = 127;
/// Added to a signal number when the child (or `lease` while waiting) was ended by that signal.
pub(crate) const SIGNAL_BASE: u8 = 128;

/// The exit-code table shown at the end of `lease --help`.
pub(crate) const TABLE: &str = "\
Exit status:
  0        success (exec/elect: the command's own status is passed through)
  1-125    exec/elect: the command's exit status; break: not confirmed
  64       usage error: bad option, duration, lease name or store URL
  65       a stored lease record could not be understood
  69       the store is unreachable or keeps failing (transient errors)
  70       internal error in lease itself
  73       --no-wait: the lease is held by someone else
  74       --timeout: gave up waiting for the lease
  75       the lease was lost while the command ran (it was sent SIGTERM, then SIGKILL)
  78       the store refused: authentication, permissions, schema, unsupported operation;
           exec -n: a live holder of NAME uses another N
  126/127  the command could not be executed / was not found
  128+N    the command (or lease while waiting) was ended by signal N";

/// The exit code for a library error of class `kind`.
pub(crate) fn code_for(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Held => HELD,
        ErrorKind::Timeout => TIMEOUT,
        ErrorKind::Lost => LOST,
        ErrorKind::Cancelled => SIGNAL_BASE + 2,
        ErrorKind::InvalidInput => USAGE,
        ErrorKind::Transient => UNAVAILABLE,
        ErrorKind::Fatal | ErrorKind::Unsupported => CONFIG,
        ErrorKind::CorruptRecord => CORRUPT,
        ErrorKind::PermitCountMismatch => CONFIG,
        // `ErrorKind` is non-exhaustive: a class added later is reported as an internal error
        // until it gets its own code.
        _ => SOFTWARE,
    }
}

/// A failure of a subcommand: the one-line message to print (already redacted) and the exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl CliError {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    /// A library error, with its code from [`code_for`]. The message is made one line (a
    /// backend's error chain is joined with `: `).
    pub(crate) fn from_lease(error: &Error) -> Self {
        Self::new(code_for(error.kind()), one_line_chain(error))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// `error: source: source…` on one line, without repeating a source already in the message.
pub(crate) fn one_line_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    strip_locations(&text.replace(['\n', '\r'], " "))
}

/// Removes the server source locations PostgreSQL errors carry (`… at line 768`): they name a
/// line in the server's C code, not anything of the user's.
pub(crate) fn strip_locations(text: &str) -> String {
    const MARK: &str = " at line ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        let after = &rest[i + MARK.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let ends = after[digits..].is_empty() || after[digits..].starts_with([':', ';', ')', ',']);
        out.push_str(&rest[..i]);
        if digits == 0 || !ends {
            out.push_str(MARK);
        }
        rest = &after[if digits > 0 && ends { digits } else { 0 }..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_core::{BackendError, InvalidInput, LeaseKey};
    use std::collections::HashSet;

    #[test]
    fn every_error_class_has_its_code() {
        assert_eq!(code_for(ErrorKind::Held), 73);
        assert_eq!(code_for(ErrorKind::Timeout), 74);
        assert_eq!(code_for(ErrorKind::Lost), 75);
        assert_eq!(code_for(ErrorKind::InvalidInput), 64);
        assert_eq!(code_for(ErrorKind::Transient), 69);
        assert_eq!(code_for(ErrorKind::Fatal), 78);
        assert_eq!(code_for(ErrorKind::Unsupported), 78);
        assert_eq!(code_for(ErrorKind::CorruptRecord), 65);
        assert_eq!(code_for(ErrorKind::PermitCountMismatch), 78);
        assert_eq!(code_for(ErrorKind::Cancelled), 130);
    }

    #[test]
    fn lease_outcome_codes_are_distinct_and_clear_of_child_conventions() {
        let codes = [
            USAGE,
            CORRUPT,
            UNAVAILABLE,
            SOFTWARE,
            HELD,
            TIMEOUT,
            LOST,
            CONFIG,
        ];
        let unique: HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
        for code in codes {
            assert!(code > 1 && code < CANNOT_EXECUTE, "{code}");
            assert!(
                TABLE.contains(&format!("  {code} ")),
                "{code} missing from the table"
            );
        }
    }

    #[test]
    fn library_errors_map_through_their_kind() {
        let key = LeaseKey::new("k").unwrap();
        let held = Error::Held { key, holder: None };
        assert_eq!(CliError::from_lease(&held).code, HELD);
        let fatal: Error = BackendError::fatal("postgres", "password authentication failed").into();
        assert_eq!(CliError::from_lease(&fatal).code, CONFIG);
        let transient: Error = BackendError::transient("mysql", "connection refused").into();
        let e = CliError::from_lease(&transient);
        assert_eq!(e.code, UNAVAILABLE);
        assert_eq!(e.message, "mysql backend: connection refused");
        let invalid: Error = InvalidInput::new("key", "must not be empty").into();
        assert_eq!(CliError::from_lease(&invalid).code, USAGE);
    }

    #[test]
    fn server_line_numbers_are_stripped() {
        assert_eq!(
            strip_locations(
                "postgres backend: acquire: relation \"leases\" does not exist at line 768"
            ),
            "postgres backend: acquire: relation \"leases\" does not exist"
        );
        assert_eq!(strip_locations("a at line 12: b at line 3; c"), "a: b; c");
        assert_eq!(strip_locations("stop at line 4b"), "stop at line 4b");
        assert_eq!(
            strip_locations("wait at line please"),
            "wait at line please"
        );
    }

    #[test]
    fn chains_are_joined_on_one_line() {
        let inner = std::io::Error::other("line one\nline two");
        let err: Error = BackendError::transient("sqlite", "open failed")
            .with_source(inner)
            .into();
        let text = one_line_chain(&err);
        assert_eq!(text, "sqlite backend: open failed: line one line two");
    }
}
