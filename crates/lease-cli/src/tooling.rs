//! What makes `lease` install like a tool: shell completions, the man page and the long
//! `--version`, all generated from the clap definitions in `main.rs`.

use std::io::Write as _;

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::exit;

/// `lease --version`: the version and the stores this build can use (every backend is always
/// compiled into the `lease` binary). A test checks it names every scheme `store.rs` accepts.
pub(crate) const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nstores compiled in:",
    "\n  sqlite    SQLite (bundled), the default store",
    "\n  postgres  PostgreSQL (LISTEN/NOTIFY wake-ups)",
    "\n  mysql     MySQL 8 and MariaDB (also mariadb://)",
    "\n  azblob    Azure Blob Storage leases",
    "\n  s3        S3 and S3-compatible object storage (conditional writes)",
    "\n  gs        Google Cloud Storage",
    "\n  az        Azure Blob Storage as object storage",
    "\n  redis     Redis and Valkey (server-side scripts, publish wake-ups)",
    "\n  rediss    Redis over TLS",
    "\n  redis+unix Redis over a Unix socket",
    "\n  memory    this process only (tests, demos)",
);

/// `lease completions SHELL`.
#[derive(clap::Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub(crate) shell: CompletionShell,
}

/// Shells `lease completions` writes scripts for.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum CompletionShell {
    /// bash (load with `source <(lease completions bash)`).
    Bash,
    /// zsh (save as `_lease` on `$fpath`).
    Zsh,
    /// fish (save as `~/.config/fish/completions/lease.fish`).
    Fish,
}

/// Writes the completion script for `shell` to stdout.
pub(crate) fn completions(shell: CompletionShell) -> u8 {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut crate::Cli::command(), "lease", &mut out);
    write_stdout(&out)
}

/// Writes the man page (roff) to stdout.
pub(crate) fn man() -> u8 {
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(crate::Cli::command()).render(&mut out) {
        say!("lease: cannot render the man page: {e}");
        return exit::SOFTWARE;
    }
    write_stdout(&out)
}

/// A closed stdout (`lease man | head`) is quiet, as for `cat`.
fn write_stdout(bytes: &[u8]) -> u8 {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            say!("lease: cannot write to stdout: {e}");
            exit::SOFTWARE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_version_names_every_store_scheme() {
        for scheme in crate::store::KNOWN_SCHEMES.split(", ") {
            if scheme == "file" {
                continue; // refused: no conditional update on local files
            }
            assert!(
                LONG_VERSION.contains(&format!("\n  {scheme} ")),
                "lease --version does not list {scheme}"
            );
        }
    }

    #[test]
    fn the_clap_definitions_are_consistent() {
        crate::Cli::command().debug_assert();
    }
}
