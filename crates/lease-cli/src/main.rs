//! `lease`: run any command under a distributed lease (a lock that expires) with a fencing token,
//! on storage a team already runs. See `docs/cli.md`.

/// Writes one line to stderr. A closed stderr is ignored: never a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod admin;
mod demo;
mod doctor;
mod duration;
mod exec;
mod exit;
#[cfg(test)]
mod fuzz_inputs;
mod observe;
mod output;
mod signals;
mod store;
mod tooling;
mod waiting;
mod watchdog;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use lease_core::{Backend, HolderMetadata, Locker, LockerBuilder, RetryPolicy};

use crate::exit::CliError;
use crate::store::{Access, StoreUrl};

/// Run commands under distributed leases (locks that expire), with fencing tokens.
///
/// The store is a URL: sqlite://PATH, postgres://…, mysql://…, azblob://ACCOUNT/CONTAINER,
/// s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, memory:// (this process only).
/// file:// is refused (no conditional update on local files).
/// Without --store or LEASE_STORE, leases live in a SQLite file in your state directory
/// ($XDG_STATE_HOME/lease/leases.db, else ~/.local/state/lease/leases.db).
#[derive(Parser, Debug)]
#[command(
    name = "lease",
    version,
    long_version = tooling::LONG_VERSION,
    after_help = exit::TABLE,
    max_term_width = 100
)]
struct Cli {
    /// Where leases are stored (passwords and keys in it are never printed).
    #[arg(
        long,
        env = "LEASE_STORE",
        global = true,
        value_name = "URL",
        hide_env_values = true
    )]
    store: Option<String>,

    /// More output on stderr: -v progress and the waiting line without a terminal, -vv debug logs.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// How log lines (-v, LEASE_LOG) are written: text, or one JSON object per line.
    #[arg(
        long,
        value_enum,
        default_value_t,
        global = true,
        value_name = "FORMAT"
    )]
    log_format: observe::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Acquire a lease, run a command while holding it, release it when the command exits.
    ///
    /// The command gets LEASE_NAME, LEASE_FENCING_TOKEN and LEASE_HOLDER in its environment and
    /// runs in its own process group. `lease` exits with the command's status. If the lease is
    /// lost, the command's group gets SIGTERM, then SIGKILL after --kill-after, and `lease` exits
    /// with 75. SIGINT, SIGTERM and SIGHUP sent to `lease` are forwarded to the command. If
    /// `lease` itself dies, even by SIGKILL, the command's whole process group is killed.
    #[command(after_help = exit::TABLE)]
    Exec(ExecArgs),
    /// Run a command only while this process is the leader of NAME.
    ///
    /// Campaigns until elected, runs the command, and stops it (as exec does) if leadership is
    /// lost. With --restart, campaigns again after the command exits or leadership is lost.
    #[command(after_help = exit::TABLE)]
    Elect(ElectArgs),
    /// Show who holds a lease, since when, its fencing token and expiry.
    Status(StatusArgs),
    /// List every lease whose name starts with PREFIX: holder, fencing token, state, expiry.
    List(ListArgs),
    /// Print a line each time the holder of a lease changes.
    Watch(WatchArgs),
    /// Force-release a lease whoever holds it (admin). The holder finds out at its next renewal.
    Break(BreakArgs),
    /// Several contenders in this process take turns on one lease: a first look.
    Demo(DemoArgs),
    /// Check a store end to end before relying on it: reach, login, table or bucket, that
    /// conditional writes are really honoured, the clock model, round-trip times.
    ///
    /// Writes only under the lease name prefix `lease-doctor/` (SQL: creates the lease table if it
    /// is missing). Exits 0 when the store is fit for leases, else with the code of the first
    /// failed check.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script: `lease completions bash > /etc/bash_completion.d/lease`.
    Completions(tooling::CompletionsArgs),
    /// Print the man page (roff): `lease man > ~/.local/share/man/man1/lease.1`.
    Man,
}

/// Options of the lease itself.
#[derive(Args, Clone, Debug)]
pub(crate) struct LockerOptionsArgs {
    /// How long a grant lasts without renewal; renewed every third of it while held.
    #[arg(long, default_value = "30s", value_parser = duration::parse, value_name = "DURATION")]
    ttl: Duration,
    /// Identity stored with the lease and shown to others [default: HOSTNAME pid=PID].
    #[arg(long, value_name = "TEXT")]
    holder: Option<String>,
}

impl LockerOptionsArgs {
    /// A locker builder with these options on `backend`.
    pub(crate) fn builder(&self, backend: Arc<dyn Backend>) -> LockerBuilder {
        Locker::builder_shared(backend)
            .ttl(self.ttl)
            // Waiters poll at most every half second (plus jitter).
            .retry(RetryPolicy::default().with_max_delay(Duration::from_millis(500)))
    }

    /// Refuses a TTL the backend cannot grant, or too short for a round trip, in one line
    /// naming the smallest (or largest) TTL that works.
    pub(crate) fn check_ttl(&self, backend: &Arc<dyn Backend>) -> Result<(), CliError> {
        let caps = backend.capabilities();
        let given = duration::short(self.ttl);
        if self.ttl > caps.max_ttl {
            return Err(CliError::usage(format!(
                "--ttl {given} is too long: the longest TTL this store grants is {}",
                duration::days_or_short(caps.max_ttl)
            )));
        }
        let works = |ttl: Duration| {
            ttl >= caps.min_ttl && self.builder(Arc::clone(backend)).ttl(ttl).build().is_ok()
        };
        if works(self.ttl) {
            return Ok(());
        }
        // The smallest whole number of milliseconds that works: longer TTLs only widen the window.
        let (mut low, mut high) = (
            0u64,
            u64::try_from(caps.max_ttl.as_millis()).unwrap_or(u64::MAX),
        );
        if !works(Duration::from_millis(high)) {
            return self
                .builder(Arc::clone(backend))
                .build()
                .map(drop)
                .map_err(|e| CliError::usage(e.to_string()));
        }
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if works(Duration::from_millis(mid)) {
                high = mid;
            } else {
                low = mid;
            }
        }
        Err(CliError::usage(format!(
            "--ttl {given} is too short to cover a round trip to the store: the smallest TTL that works is {}",
            duration::short(Duration::from_millis(high))
        )))
    }

    fn locker(&self, backend: Arc<dyn Backend>) -> Result<Locker, CliError> {
        self.check_ttl(&backend)?;
        let mut builder = self.builder(backend);
        if let Some(holder) = &self.holder {
            builder = builder.metadata(
                HolderMetadata::new(holder.clone()).map_err(|e| CliError::usage(e.to_string()))?,
            );
        }
        builder.build().map_err(|e| CliError::usage(e.to_string()))
    }
}

/// The command to run.
#[derive(Args, Clone, Debug)]
struct ChildArgs {
    /// After a lost lease: how long the command has to exit after SIGTERM before SIGKILL
    /// [default: half the safety margin, so the kill lands before the store can grant the key
    /// to anyone else]
    #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
    kill_after: Option<Duration>,
    /// The command and its arguments (put them after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// The lease name: ASCII letters, digits and _ - . / : @ (up to 200 bytes).
    name: String,
    #[command(flatten)]
    lease: LockerOptionsArgs,
    /// Wait as long as it takes for the lease (the default).
    #[arg(long, conflicts_with_all = ["no_wait", "timeout"])]
    wait: bool,
    /// Do not wait: if the lease is held, exit at once with 73.
    #[arg(long, conflicts_with = "timeout")]
    no_wait: bool,
    /// Wait at most this long, then exit with 74.
    #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Let up to N commands hold NAME at once (a counting semaphore, like `consul lock -n`).
    /// Every process must use the same N: a different one exits with 78. The command also gets
    /// LEASE_PERMIT (its slot, 0..N) and LEASE_PERMITS; its fencing token is per slot.
    #[arg(short = 'n', long = "permits", value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(lease_core::Semaphore::MAX_PERMITS)))]
    permits: Option<u32>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464) while running.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    child: ChildArgs,
}

#[derive(Args, Debug)]
struct ElectArgs {
    /// The election's name (a lease name).
    name: String,
    #[command(flatten)]
    lease: LockerOptionsArgs,
    /// Campaign again after the command exits or leadership is lost (until interrupted).
    #[arg(long)]
    restart: bool,
    /// With --restart: the pause before campaigning again.
    #[arg(long, default_value = "1s", value_parser = duration::parse, value_name = "DURATION")]
    restart_delay: Duration,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464) while running.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    child: ChildArgs,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The lease name.
    name: String,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Only leases whose name starts with this (all leases without it).
    #[arg(default_value = "")]
    prefix: String,
    /// Print one JSON object per lease (the same fields as `status --json`), one per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct WatchArgs {
    /// The lease name.
    name: String,
    /// How often to look (stores that notify on release are faster).
    #[arg(long, default_value = "1s", value_parser = duration::parse_positive, value_name = "DURATION")]
    interval: Duration,
    /// Stop after printing this many changes (the first line, the current holder, counts).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Print one JSON object per change.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct BreakArgs {
    /// The lease name.
    name: String,
    /// Do not ask for confirmation (required when stdin or stderr is not a terminal).
    #[arg(long, short)]
    yes: bool,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// How many contenders take turns.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    contenders: u32,
    /// How many turns in all before the demo ends.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    rounds: u32,
    /// About how long each turn holds the lease.
    #[arg(long, default_value = "400ms", value_parser = duration::parse, value_name = "DURATION")]
    hold: Duration,
    /// The lease the contenders share.
    #[arg(long, default_value = "lease-demo")]
    name: String,
    #[command(flatten)]
    lease: LockerOptionsArgs,
}

/// Turns a clap error into one line on stderr (help and version go out whole).
fn parse_args() -> Result<Cli, u8> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    Err(exit::OK)
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    Err(exit::USAGE)
                }
                _ => {
                    say!(
                        "lease: {} (see 'lease --help')",
                        store::redact_words(&one_line_usage(&e.render().to_string()))
                    );
                    Err(exit::USAGE)
                }
            }
        }
    }
}

/// clap's message on one line: "the following required arguments were not provided:" keeps the
/// names listed under it.
fn one_line_usage(rendered: &str) -> String {
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"));
    let first = lines.next().unwrap_or("invalid arguments");
    let mut text = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    let rest: Vec<&str> = lines.filter(|l| !l.starts_with("tip:")).collect();
    if !rest.is_empty() {
        text.push(' ');
        text.push_str(&rest.join(", "));
    }
    // clap's suggestions come after a blank line: "tip: a similar subcommand exists: 'exec'".
    for tip in rendered
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("tip: "))
    {
        match tip.rsplit_once("exists: ") {
            Some((_, similar)) => text.push_str(&format!("; did you mean {similar}?")),
            None => text.push_str(&format!("; {tip}")),
        }
    }
    text
}

/// Checks what can be checked before connecting: the lease name, the TTL.
fn precheck(command: &Command) -> Result<(), CliError> {
    let memory: Arc<dyn Backend> = Arc::new(lease_core::MemoryBackend::new());
    match command {
        Command::Exec(args) => {
            checked_name(&args.name)?;
            args.lease.check_ttl(&memory)
        }
        Command::Elect(args) => {
            checked_name(&args.name)?;
            args.lease.check_ttl(&memory)
        }
        Command::Demo(args) => {
            checked_name(&args.name)?;
            args.lease.check_ttl(&memory)
        }
        Command::Status(StatusArgs { name, .. })
        | Command::Watch(WatchArgs { name, .. })
        | Command::Break(BreakArgs { name, .. }) => checked_name(name).map(drop),
        Command::List(_) | Command::Doctor(_) | Command::Completions(_) | Command::Man => Ok(()),
    }
}

async fn run(cli: Cli, url: &StoreUrl, store_env: exec::ChildStoreEnv) -> Result<u8, CliError> {
    precheck(&cli.command)?;
    if let Command::Exec(ExecArgs {
        metrics_addr: Some(addr),
        ..
    })
    | Command::Elect(ElectArgs {
        metrics_addr: Some(addr),
        ..
    }) = &cli.command
    {
        observe::serve_metrics(*addr)?;
    }
    if let Command::Watch(WatchArgs { count: Some(0), .. }) = cli.command {
        return Ok(exit::OK);
    }
    let access = match cli.command {
        Command::Status(_) | Command::Watch(_) | Command::List(_) => Access::ReadOnly,
        // Doctor connects step by step itself, timing each.
        Command::Doctor(args) => return doctor::run(url, &args).await,
        Command::Completions(_) | Command::Man => return Ok(exit::OK),
        _ => Access::ReadWrite,
    };
    let backend = store::connect(url, access).await?;
    let shown = url.redacted();
    match cli.command {
        Command::Exec(args) => {
            let mode = match (args.no_wait, args.timeout) {
                (true, _) => exec::WaitMode::NoWait,
                (false, Some(t)) if t.is_zero() => exec::WaitMode::OneAttempt,
                (false, Some(t)) => exec::WaitMode::Timeout(t),
                (false, None) => exec::WaitMode::Forever,
            };
            let mut runner = runner(
                backend,
                &args.name,
                &args.lease,
                args.child,
                store_env,
                cli.verbose,
            )?;
            runner.permits = args.permits;
            runner.exec(mode).await
        }
        Command::Elect(args) => {
            runner(
                backend,
                &args.name,
                &args.lease,
                args.child,
                store_env,
                cli.verbose,
            )?
            .elect(args.restart, args.restart_delay)
            .await
        }
        Command::Status(args) => {
            let locker = Locker::from_shared(backend);
            admin::status(&locker, &checked_name(&args.name)?, url, args.json).await
        }
        Command::List(args) => {
            let locker = Locker::from_shared(backend);
            admin::list(&locker, &args.prefix, url, args.json).await
        }
        Command::Watch(args) => {
            let locker = Locker::from_shared(backend);
            let name = checked_name(&args.name)?;
            admin::watch(&locker, &name, args.interval, args.count, args.json, url).await
        }
        Command::Break(args) => {
            let locker = Locker::from_shared(backend);
            admin::break_lease(&locker, &checked_name(&args.name)?, args.yes).await
        }
        Command::Demo(args) => {
            let demo = demo::Demo {
                backend,
                store: shown,
                name: checked_name(&args.name)?,
                contenders: args.contenders,
                rounds: args.rounds,
                hold: args.hold,
                locker_options: args.lease,
            };
            demo.run().await
        }
        // Answered before connecting (above, and in main).
        Command::Doctor(_) | Command::Completions(_) | Command::Man => Ok(exit::OK),
    }
}

/// Validates a lease name up front, so a bad one is a usage error before anything runs.
/// What `exec` and `elect` both run with: the locker, the checked name and the command.
fn runner(
    backend: Arc<dyn Backend>,
    name: &str,
    lease: &LockerOptionsArgs,
    child: ChildArgs,
    store_env: exec::ChildStoreEnv,
    verbose: u8,
) -> Result<exec::Runner, CliError> {
    let locker = lease.locker(backend)?;
    // The holder deadline comes a safety margin before the store's earliest expiry: a SIGKILL
    // sent within that margin lands while the key is still ours.
    let kill_after = child
        .kill_after
        .unwrap_or(locker.options().safety_margin / 2);
    Ok(exec::Runner {
        locker,
        name: checked_name(name)?,
        child: exec::ChildSpec {
            command: child.command,
            kill_after,
            store_env,
        },
        verbose,
        permits: None,
    })
}

fn checked_name(name: &str) -> Result<String, CliError> {
    lease_core::LeaseKey::new(name)
        .map(|k| k.as_str().to_owned())
        .map_err(|e| CliError::usage(format!("lease name {name:?}: {}", e.reason())))
}

/// `LEASE_STORE` for the command: without its secrets (see docs/cli.md).
fn child_store_env() -> exec::ChildStoreEnv {
    match std::env::var("LEASE_STORE") {
        Ok(url) => match store::without_secrets(&url) {
            Some(clean) => exec::ChildStoreEnv::Set(clean),
            None => exec::ChildStoreEnv::Keep,
        },
        // Not set, or not Unicode (then it cannot be checked for secrets: leave it out).
        Err(std::env::VarError::NotPresent) => exec::ChildStoreEnv::Keep,
        Err(std::env::VarError::NotUnicode(_)) => exec::ChildStoreEnv::Remove,
    }
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == watchdog::ARG)
    {
        return watchdog::main();
    }
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    observe::init_tracing(cli.verbose, cli.log_format);
    // Generated from the clap definitions; they need no store.
    match &cli.command {
        Command::Completions(args) => return ExitCode::from(tooling::completions(args.shell)),
        Command::Man => return ExitCode::from(tooling::man()),
        _ => {}
    }
    let url = match cli
        .store
        .clone()
        .map_or_else(store::default_store_url, Ok)
        .and_then(|u| StoreUrl::parse(&u))
    {
        Ok(url) => url,
        Err(e) => {
            say!("lease: {e}");
            return ExitCode::from(e.code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("lease: cannot start the runtime: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let result = runtime.block_on(run(cli, &url, child_store_env()));
    // Give spawned best-effort work (a release on drop) a moment, but never hang on exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Missing AWS credentials are a configuration error, whatever the probe said.
            let e = match store::explain_missing_aws_credentials(&url, &e.message, |var| {
                std::env::var_os(var).is_some_and(|v| !v.is_empty())
            }) {
                Some(message) => CliError::new(exit::CONFIG, message),
                None => e,
            };
            // An empty message: the error was already said, or stdout was closed (quiet, as cat).
            if !e.message.is_empty() {
                say!("lease: {}", url.scrub(&exit::strip_locations(&e.message)));
            }
            ExitCode::from(e.code)
        }
    }
}
