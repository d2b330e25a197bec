//! Writing to stdout without panicking when it is closed (`lease status --json | true`).

use std::fmt::Display;
use std::io::{self, Write};

use crate::exit::{self, CliError};

/// Writes one line to stdout. A closed pipe ends the subcommand quietly, as it ends `cat`
/// (exit 141, 128 + SIGPIPE, and no message); any other write failure is an error.
pub(crate) fn line(text: impl Display) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| write_error(&e))
}

/// The error for a failed write to stdout.
pub(crate) fn write_error(e: &io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::new(exit::SIGNAL_BASE + 13, String::new())
    } else {
        CliError::new(exit::SOFTWARE, format!("cannot write to stdout: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_quiet_and_other_failures_are_said() {
        let quiet = write_error(&io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(quiet.code, 141);
        assert!(quiet.message.is_empty());
        let loud = write_error(&io::Error::other("disk full"));
        assert_eq!(loud.code, exit::SOFTWARE);
        assert!(loud.message.contains("disk full"));
    }
}
