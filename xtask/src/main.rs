//! `cargo xtask`: the lease workspace's test rig.
//!
//! Subcommands:
//! - `services up|down|status|env`: local test servers (PostgreSQL, MariaDB, Azurite, moto, fake-gcs-server,
//!   PgBouncer),
//! - `conformance`: every backend's suite against its servers, as a table,
//! - `test`: fmt + clippy + workspace tests + doc tests + package + deny + conformance, with a summary,
//! - `bench`: backend benchmarks with their servers up,
//! - `package`: `cargo package` of every published crate, each built from its tarball,
//! - `deny`: `cargo deny check licenses bans sources`,
//! - `torture`: contenders in several processes on every backend, with faults (docs/safety.md).
//!
//! See `docs/testing.md` for what it installs and where.

mod backends;
mod bench;
mod conformance;
mod containers;
mod docker;
mod env;
mod nextest;
mod ports;
mod proc;
mod proxy;
mod release;
mod rig;
mod services;
mod table;
mod testcmd;
mod torture;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Test rig of the lease workspace",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start, stop or list the local test servers.
    Services {
        #[command(subcommand)]
        action: ServicesAction,
    },
    /// Run each backend's test suite against its servers and print a table.
    Conformance(ConformanceArgs),
    /// fmt, clippy, workspace tests, doc tests, then conformance for every backend; summary at the end.
    Test(ModeArgs),
    /// Run backend benchmarks (rows that declare a bench target) with their servers up.
    Bench(BenchArgs),
    /// `cargo package` every published crate and build each from its tarball (cargo's verify step).
    Package,
    /// `cargo deny check licenses bans sources`, installing the pinned cargo-deny when missing.
    Deny,
    /// Contenders in several processes on every backend, with faults; counts violations.
    Torture(torture::TortureArgs),
    /// One torture worker process (started by `torture`).
    #[command(hide = true)]
    TortureWorker(torture::WorkerArgs),
}

#[derive(Debug, Subcommand)]
enum ServicesAction {
    /// Start (or reuse) every local server and record them under target/rig/.
    Up {
        /// Only these servers (comma separated: postgres,mysql,sqlite,azurite,s3,gcs,pgbouncer).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Stop what `up` started and drop its databases.
    Down {
        /// Also clean up leftovers of crashed `conformance`/`test` runs.
        #[arg(long)]
        all: bool,
    },
    /// Show the recorded servers and whether they answer.
    Status,
    /// Print `export LEASE_TEST_...=...` lines for the servers of `up` (use with `eval`).
    Env,
}

/// Where the servers come from.
#[derive(Debug, Args, Clone, Copy)]
struct ModeArgs {
    /// Use testcontainers (PostgreSQL, MySQL 8, MinIO, Azurite images); needs a Docker daemon.
    #[arg(long, conflicts_with = "local")]
    containers: bool,
    /// Use local servers even when a Docker daemon answers.
    #[arg(long)]
    local: bool,
}

impl ModeArgs {
    fn mode(self) -> rig::ModeRequest {
        if self.containers {
            rig::ModeRequest::Containers
        } else if self.local {
            rig::ModeRequest::Local
        } else {
            rig::ModeRequest::Auto
        }
    }
}

#[derive(Debug, Args)]
struct ConformanceArgs {
    /// Only these backends (comma separated); default: every row of the backend table.
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
    #[command(flatten)]
    mode: ModeArgs,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Only these backends (comma separated); default: every row that declares a bench.
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
    /// A handful of samples per row in a debug build: checks the rows run, not their timings.
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Services { action } => match action {
            ServicesAction::Up { only } => services::cmd_up(&only),
            ServicesAction::Down { all } => services::cmd_down(all),
            ServicesAction::Status => services::cmd_status(),
            ServicesAction::Env => services::cmd_env(),
        },
        Command::Conformance(args) => conformance::cmd(&args.backend, args.mode.mode()),
        Command::Test(mode) => testcmd::cmd(mode.mode()),
        Command::Bench(args) => bench::cmd(&args.backend, args.quick),
        Command::Package => release::cmd_package(),
        Command::Deny => release::run_deny(),
        Command::Torture(args) => torture::cmd(&args),
        Command::TortureWorker(args) => torture::worker_main(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
