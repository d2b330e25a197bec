//! `cargo xtask torture`: many contenders in several processes on a few keys, through the real
//! backends, with faults on a schedule; every critical section writes to a fenced resource
//! through the library's own fences, and to a journal with the lease's local deadline. The
//! checker reads both and counts violations; any violation fails the run.
//!
//! The fenced resource ([`fence`]): on the `objstore-s3` row an object per key in the row's own
//! bucket, written through `lease_objstore::FencedStore` (through the fault proxy, like the
//! leases); on every other row a PostgreSQL transaction per write that calls
//! `lease_sql::FenceTable::admit` (the table made by its `migrate`) and inserts a row into a write
//! log before committing. A stale-token refusal is logged as refused. `admit` admits a token equal
//! to the recorded one (the same holder writing again), so the fence no longer proves by itself
//! that a grant's first write was the only grant with its token; the checker does, from the data.
//!
//! What the checker counts from the write log and the store ([`journal`]), per resource (key, and
//! the object's chain on the store) in the order the resource applied the writes (the log's
//! serial, taken while `admit`'s row lock is held, for the table; the place in the object's chain
//! of conditional puts for the store):
//! - *stale writes admitted*: an admitted write whose token is below one admitted before it, or
//!   below the token the store had recorded on the version it replaced, or a second write landing
//!   on one version of an object;
//! - *writes of a second grant admitted under one token*: an admitted write of another grant
//!   (pid and the process's grant count) than the first one admitted with that token;
//! - *fenced objects at the end behind the write log*: an object read at the end whose token is
//!   below one the log says landed on its chain, whose place is before a logged one, or whose
//!   recorded token (metadata) is not its writer's (body).
//!
//! Besides the journal's own: overlapping holders, fencing regressions, late loss signals and,
//! with `--semaphore`, more holders than permits.
//!
//! Faults: through the [fault proxy](crate::proxy) in front of network stores (latency and
//! jitter, every connection cut, one direction black-holed, connections closed after N bytes,
//! new connections refused, answers stalled past the TTL); a worker frozen with SIGSTOP past the
//! TTL and resumed; a worker killed with SIGKILL (and replaced); renew responses delayed past
//! the deadline and answers lost inside a worker (SIGUSR1/SIGUSR2 to its fault-injecting
//! backend wrapper); and for the servers the run starts itself (Azurite, moto, Redis), a real restart
//! of the server mid-run ([`servers`]).

mod fence;
mod journal;
mod plan;
mod servers;
mod worker;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lease_core::MemoryBackend;
use lease_core::conformance::{FaultyBackend, Op};
use lease_sql::sqlx;
use rustix::process::{Pid, Signal, kill_process};
use tokio::sync::Mutex;

use crate::proxy::{FaultProxy, Faults};
use crate::table::Table;
use journal::{Counts, Entry, JournalWriter, RunFacts, mono_ns};
use plan::RowPlan;
use servers::{OwnedServer, StoreServer};

pub(crate) use worker::{WorkerArgs, main as worker_main};

/// The copy of this binary the workers of a run are started from (in the run's directory).
const WORKER_EXE: &str = "xtask-worker";

/// Backends the torture rig knows, in the order it runs them.
pub(crate) const BACKENDS: &[&str] = &[
    "memory",
    "sqlite",
    "postgres",
    "mysql",
    "objstore-s3",
    "azure",
    "redis",
];

/// `cargo xtask torture` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TortureArgs {
    /// Backends (comma separated); default: every one that exists.
    #[arg(long, value_delimiter = ',')]
    pub(crate) backend: Vec<String>,
    /// Acquisitions per backend (default 100,000; with --quick 1,500 to 4,000 by backend).
    #[arg(long)]
    pub(crate) acquisitions: Option<u64>,
    /// The CI size: a few thousand acquisitions per backend, under a minute or so each.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Seed of the fault schedule and the contenders' choices.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Keys contended for.
    #[arg(long, default_value_t = 8)]
    pub(crate) keys: u32,
    /// Contend for the permits of one semaphore of N permits instead of mutexes on --keys keys
    /// (the checker then also counts moments with more than N holders across the slots).
    #[arg(long, value_name = "N")]
    pub(crate) semaphore: Option<u32>,
    /// Worker processes per backend (the memory backend runs in one process).
    #[arg(long, default_value_t = 2)]
    pub(crate) processes: u32,
    /// Contenders per process.
    #[arg(long, default_value_t = 16)]
    pub(crate) contenders: u32,
    /// Lease TTL in milliseconds (default 2,000; Azure 15,000, its minimum).
    #[arg(long)]
    pub(crate) ttl_ms: Option<u64>,
    /// Stop each row after this many seconds whatever its count (default: 120 s plus a second
    /// per 20 acquisitions, per 8 on Azure; with --quick about a minute).
    #[arg(long)]
    pub(crate) time_limit_s: Option<u64>,
}

fn postgres_url() -> String {
    std::env::var(crate::env::POSTGRES_URL)
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn mysql_url() -> String {
    std::env::var(crate::env::MYSQL_URL)
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// `host:port` of a URL like `scheme://user@host:port/db`, and the URL with it replaced.
fn split_host_port(url: &str) -> Option<(String, String, String)> {
    let after_scheme = url.find("://")? + 3;
    let rest = &url[after_scheme..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_start..];
    host_port.contains(':').then(|| {
        (
            url[..after_scheme + host_start].to_string(),
            host_port.to_string(),
            url[after_scheme + authority_end..].to_string(),
        )
    })
}

/// Per-backend plan: where the store is, whether the proxy fronts it.
struct Target {
    backend: &'static str,
    /// The URL the store really has (None: in process).
    url: Option<String>,
    /// Lease table (SQL), bucket (S3) or container (Azure); dropped at the end where it can be.
    table: String,
    plan: RowPlan,
}

/// How a row ended.
enum RowOutcome {
    Ran(Counts),
    /// Its server could not be had: a failure in CI, loudly reported elsewhere.
    Skipped(String),
    Failed(String),
}

impl RowOutcome {
    fn failed(&self, ci: bool) -> bool {
        match self {
            RowOutcome::Ran(c) => c.violations() > 0,
            RowOutcome::Skipped(_) => ci,
            RowOutcome::Failed(_) => true,
        }
    }

    fn text(&self, ci: bool) -> String {
        match self {
            RowOutcome::Ran(c) if c.violations() == 0 => "ok".into(),
            RowOutcome::Ran(c) => format!("FAILED ({} violations)", c.violations()),
            RowOutcome::Skipped(why) if ci => format!("FAILED: skipped in CI ({why})"),
            RowOutcome::Skipped(why) => format!("SKIPPED ({why})"),
            RowOutcome::Failed(why) => format!("FAILED ({why})"),
        }
    }
}

/// The server a row's store runs on, when the rig can start it itself.
fn server_kind(backend: &str) -> Option<servers::Kind> {
    match backend {
        "objstore-s3" => Some(servers::Kind::Moto),
        "azure" => Some(servers::Kind::Azurite),
        "redis" => Some(servers::Kind::Redis),
        _ => None,
    }
}

/// `cargo xtask torture`.
pub(crate) fn cmd(args: &TortureArgs) -> Result<bool> {
    let backends: Vec<&'static str> = if args.backend.is_empty() {
        BACKENDS.to_vec()
    } else {
        let mut v = Vec::new();
        for b in &args.backend {
            match BACKENDS.iter().find(|k| **k == b.as_str()) {
                Some(k) => v.push(*k),
                None => bail!(
                    "torture: unknown backend {b:?} (known: {})",
                    BACKENDS.join(", ")
                ),
            }
        }
        v
    };
    let ci = crate::env::in_ci();
    let run_id = format!(
        "{}_{}",
        std::process::id(),
        mono_ns() / 1_000_000 % 1_000_000
    );
    let dir = crate::services::target_dir().join("torture").join(&run_id);
    std::fs::create_dir_all(&dir)?;
    // Workers start from a copy of this binary: a build during an hour-long run replaces
    // target/debug/xtask, and a replacement worker started from that path then fails to start
    // (a long PostgreSQL run ended that way at about 65,000 acquisitions).
    std::fs::copy(std::env::current_exe()?, dir.join(WORKER_EXE))
        .context("copying this binary for the workers")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut all = Counts::default();
    let mut table = Table::new(
        std::iter::once("count".to_string())
            .chain(backends.iter().map(|b| b.to_string()))
            .collect::<Vec<_>>(),
    );
    let mut outcomes: Vec<RowOutcome> = Vec::new();
    for backend in &backends {
        let plan = RowPlan::new(backend, args);
        eprintln!(
            "torture: {backend}: {} acquisitions, TTL {:?}, a fault every {:?}, seed {}",
            plan.acquisitions, plan.ttl, plan.fault_period, args.seed
        );
        // Object-store and Azure names: lowercase letters, digits and hyphens.
        let bucket = format!("torture-{}", run_id.replace('_', "-"));
        let mut server = None;
        if let Some(kind) = server_kind(backend) {
            let instance = format!("torture_{run_id}_{}", backend.replace('-', "_"));
            match servers::provide(kind, &dir.join(backend), &instance, &bucket) {
                Ok(s) => {
                    eprintln!("torture: {backend}: {}", s.describe());
                    server = Some(s);
                }
                Err(e) => {
                    let why = format!("no {} server: {e:#}", kind.name());
                    eprintln!("torture: {backend}: SKIPPED: {why}");
                    outcomes.push(RowOutcome::Skipped(why));
                    continue;
                }
            }
        }
        let started = std::time::Instant::now();
        let result = rt.block_on(run_backend(
            backend,
            args,
            plan,
            &mut server,
            &bucket,
            &run_id,
            &dir,
        ));
        // Stops a server of our own (and waits for it) before the next row.
        drop(server);
        match result {
            Ok(counts) => {
                eprintln!(
                    "torture: {backend}: {} acquisitions, {} violations in {:.0?}",
                    counts.acquisitions,
                    counts.violations(),
                    started.elapsed()
                );
                all.add(&counts);
                outcomes.push(RowOutcome::Ran(counts));
            }
            Err(e) => {
                eprintln!("torture: {backend}: FAILED: {e:#}");
                outcomes.push(RowOutcome::Failed(format!("{e:#}")));
            }
        }
    }
    let mut result_row = vec!["result".to_string()];
    result_row.extend(outcomes.iter().map(|o| o.text(ci)));
    table.row(result_row);
    let labels = Counts::default().rows();
    for (i, (label, _, violation)) in labels.iter().enumerate() {
        let mut row = vec![if *violation {
            format!("{label} (must be 0)")
        } else {
            label.to_string()
        }];
        row.extend(outcomes.iter().map(|o| match o {
            RowOutcome::Ran(c) => c.rows()[i].1.to_string(),
            _ => "-".into(),
        }));
        table.row(row);
    }
    let ok = !outcomes.iter().any(|o| o.failed(ci));
    let _ = std::fs::remove_file(dir.join(WORKER_EXE));
    println!(
        "\ntorture (seed {}, journals in {}):\n{}",
        args.seed,
        dir.display(),
        table.render()
    );
    let skipped: Vec<&str> = backends
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, RowOutcome::Skipped(_)))
        .map(|(b, _)| *b)
        .collect();
    if !skipped.is_empty() && !ci {
        println!(
            "!!!!!!!! SKIPPED: torture did not run for {} (no server). With CI=true this fails the run. !!!!!!!!",
            skipped.join(", ")
        );
    }
    if all.store_data_losses + all.store_lease_losses > 0 {
        println!(
            "torture: NOTE: after {} restart(s) the store had lost its data (fencing counters \
             started again) and after {} it had forgotten its active leases (counters kept): \
             {} overlaps/regressions across those are the store's and are not counted as \
             violations (docs/safety.md)",
            all.store_data_losses, all.store_lease_losses, all.across_data_loss
        );
    }
    println!(
        "torture: {} acquisitions, {} faults injected, {} violations: {}",
        all.acquisitions,
        all.faults_injected,
        all.violations(),
        if ok { "ok" } else { "FAILED" }
    );
    if ok {
        // Journals are only worth keeping to debug a failure.
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ok)
}

/// One running worker process.
struct Proc {
    child: Child,
    pid: u32,
    quota: u64,
    journal: PathBuf,
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = kill_process(pid, sig);
    }
}

/// The faults of the schedule, in the order they rotate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Latency,
    CutAll,
    StallAnswers,
    BlackholeUpstream,
    CloseAfterBytes,
    RefuseNew,
    Pause,
    Kill,
    DelayRenewals,
    LoseAnswers,
}

impl Fault {
    fn schedule(proxy: bool, processes: bool) -> Vec<Fault> {
        let mut v = Vec::new();
        if proxy {
            v.extend([
                Fault::Latency,
                Fault::CutAll,
                Fault::StallAnswers,
                Fault::BlackholeUpstream,
                Fault::CloseAfterBytes,
                Fault::RefuseNew,
            ]);
        }
        if processes {
            v.extend([Fault::Pause, Fault::Kill]);
        }
        v.extend([Fault::DelayRenewals, Fault::LoseAnswers]);
        v
    }
}

async fn prepare_store(target: &Target) -> Result<()> {
    let Some(url) = &target.url else {
        return Ok(());
    };
    let options = || -> Result<lease_sql::SqlOptions> {
        Ok(lease_sql::SqlOptions::default().with_table(lease_sql::TableName::new(&target.table)?))
    };
    // The SQL backends migrate (the trait object does not know how); the URL picks the dialect.
    match target.backend {
        "postgres" | "mysql" | "sqlite" => {
            lease_sql::connect_with(url, options()?)
                .await?
                .migrate()
                .await?;
        }
        // The container, before 32 contenders race to make it on their first acquire.
        "azure" => {
            worker::azure_backend(url, &target.table)?
                .ensure_container()
                .await
                .context("creating the lease container")?;
        }
        // The bucket was made with the server (moto) or is the user's to make.
        _ => {}
    }
    Ok(())
}

async fn drop_store(target: &Target) {
    let Some(url) = &target.url else { return };
    let sql = format!("DROP TABLE IF EXISTS {}", target.table);
    match target.backend {
        "postgres" => {
            if let Ok(pool) = sqlx::PgPool::connect(url).await {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
            }
        }
        "mysql" => {
            if let Ok(pool) = sqlx::MySqlPool::connect(url).await {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
            }
        }
        // Buckets and containers go with the server the run started (and its directory).
        _ => {}
    }
}

async fn run_backend(
    backend: &'static str,
    args: &TortureArgs,
    plan: RowPlan,
    server: &mut Option<StoreServer>,
    bucket: &str,
    run_id: &str,
    dir: &Path,
) -> Result<Counts> {
    let fence_table = format!("torture_fence_{run_id}_{}", backend.replace('-', "_"));
    let target = Target {
        backend,
        url: match backend {
            "postgres" => Some(postgres_url()),
            "mysql" => Some(mysql_url()),
            "sqlite" => Some(format!(
                "sqlite://{}",
                dir.join(format!("{backend}.db")).display()
            )),
            _ => server.as_ref().map(StoreServer::url),
        },
        table: match backend {
            "objstore-s3" | "azure" => bucket.to_string(),
            _ => format!("torture_leases_{run_id}"),
        },
        plan,
    };
    let fence_url = postgres_url();
    let log = fence::WriteLog::connect(&fence_url, &fence_table, 4).await?;
    log.create().await?;
    let outcome = async {
        prepare_store(&target).await?;
        let result = if backend == "memory" {
            run_in_process(&target, args, &fence_url, &fence_table, dir).await
        } else {
            let mut owned = match server.take() {
                Some(StoreServer::Owned(s)) => Some(s),
                other => {
                    *server = other;
                    None
                }
            };
            let result =
                run_processes(&target, args, &mut owned, &fence_url, &fence_table, dir).await;
            if let Some(s) = owned {
                *server = Some(StoreServer::Owned(s));
            }
            result
        };
        let (entries, mut facts) = result?;
        facts.writes = log.writes().await?;
        // The object-store row's fenced objects as the store holds them now (read directly, not
        // through the proxy, which is gone).
        if let ("objstore-s3", Some(url)) = (backend, &target.url) {
            let store = worker::s3_backend(url, &target.table)?
                .leases()
                .store()
                .clone();
            let keys = worker::contended_keys(args.keys, args.semaphore);
            facts.final_objects = fence::final_objects(&store, &keys).await?;
        }
        facts.ttl_ns = target.plan.ttl.as_nanos() as u64;
        facts.permits = args.semaphore;
        Ok::<_, anyhow::Error>(journal::check(&entries, &facts))
    }
    .await;
    let _ = log.drop_tables().await;
    drop_store(&target).await;
    outcome
}

/// The memory backend lives in one process: its contenders run here, with in-process faults.
async fn run_in_process(
    target: &Target,
    args: &TortureArgs,
    fence_url: &str,
    fence_table: &str,
    dir: &Path,
) -> Result<(Vec<Entry>, RunFacts)> {
    let plan = &target.plan;
    let ttl = plan.ttl;
    let faulty = FaultyBackend::new(Arc::new(MemoryBackend::new()));
    let journal_path = dir.join("memory.jsonl");
    let contenders = args.contenders * args.processes.max(2);
    let locker = worker::locker_for(Arc::new(faulty.clone()), ttl)?;
    let contest = Arc::new(worker::Contest {
        semaphore: worker::semaphore_for(&locker, args.semaphore)?,
        locker,
        resource: fence::FencedResource::Table(
            fence::WriteLog::connect(fence_url, fence_table, 16).await?,
        ),
        grants: AtomicU64::new(0),
        journal: Mutex::new(JournalWriter::create(&journal_path)?),
        keys: args.keys,
        ttl,
        quota: plan.acquisitions,
        taken: AtomicU64::new(0),
        acquire_errors: AtomicU64::new(0),
        stop_at: tokio::time::Instant::now() + plan.time_limit,
    });
    let run = {
        let contest = contest.clone();
        let seed = args.seed;
        tokio::spawn(async move { worker::run_contenders(&contest, contenders, seed).await })
    };
    let mut facts = RunFacts::default();
    let schedule = Fault::schedule(false, false);
    let mut i = args.seed as usize;
    while !run.is_finished() {
        tokio::time::sleep(plan.fault_period).await;
        match schedule[i % schedule.len()] {
            Fault::DelayRenewals => {
                faulty.delay_responses(Op::Renew, ttl + ttl / 4);
                tokio::time::sleep(ttl * 2).await;
                faulty.delay_responses(Op::Renew, Duration::ZERO);
            }
            _ => {
                faulty.lose_next_response(Op::Acquire, 5);
                faulty.lose_next_response(Op::Renew, 5);
                faulty.lose_next_response(Op::Release, 5);
            }
        }
        facts.faults_injected += 1;
        i += 1;
    }
    run.await?;
    let mut entries = Vec::new();
    journal::read_journal(&journal_path, &mut entries)?;
    Ok((entries, facts))
}

/// What every worker of a row is started with.
struct Spawner<'a> {
    target: &'a Target,
    args: &'a TortureArgs,
    store_url: String,
    fence_url: &'a str,
    fence_table: &'a str,
    dir: &'a Path,
    /// The row's time limit: a replacement started late gets only what is left of it (with the
    /// whole limit again it ran past the coordinator's hard stop and was reported as hung).
    row_ends: tokio::time::Instant,
}

impl Spawner<'_> {
    fn spawn(&self, quota: u64, n: usize) -> Result<Proc> {
        let Spawner {
            target,
            args,
            store_url,
            fence_url,
            fence_table,
            dir,
            row_ends,
        } = self;
        let left = row_ends
            .saturating_duration_since(tokio::time::Instant::now())
            .as_secs()
            .max(1);
        let journal = dir.join(format!("{}-{n}.jsonl", target.backend));
        let log = std::fs::File::create(dir.join(format!("{}-{n}.log", target.backend)))?;
        let child = Command::new(dir.join(WORKER_EXE))
            .arg("torture-worker")
            .args(["--backend", target.backend])
            .args(["--store-url", store_url])
            .args(["--table", &target.table])
            .args(["--fence-url", fence_url])
            .args(["--fence-table", fence_table])
            .args(["--keys", &args.keys.to_string()])
            .args(
                args.semaphore
                    .map(|n| vec!["--semaphore".to_owned(), n.to_string()])
                    .unwrap_or_default(),
            )
            .args(["--contenders", &args.contenders.to_string()])
            .args(["--acquisitions", &quota.to_string()])
            .args(["--ttl-ms", &target.plan.ttl.as_millis().to_string()])
            .arg("--journal")
            .arg(&journal)
            .args(["--seed", &(args.seed * 7919 + n as u64).to_string()])
            .args(["--time-limit-s", &left.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a torture worker")?;
        Ok(Proc {
            pid: child.id(),
            child,
            quota,
            journal,
        })
    }
}

fn grants_in(path: &Path) -> u64 {
    let mut entries = Vec::new();
    let _ = journal::read_journal(path, &mut entries);
    entries
        .iter()
        .filter(|e| matches!(e, Entry::Grant { .. }))
        .count() as u64
}

/// A restart of the row's own server, running on a blocking thread (it waits for the server).
type Restarting = tokio::task::JoinHandle<(OwnedServer, Result<servers::Restart>)>;

/// Takes back the server from a finished restart and records what happened, including whether
/// the probe lease taken just before it survived.
async fn finish_restart(
    backend: &str,
    restarting: Restarting,
    probe: Option<servers::LeaseProbe>,
    owned: &mut Option<OwnedServer>,
    facts: &mut RunFacts,
) -> Result<()> {
    let (server, result) = restarting.await?;
    *owned = Some(server);
    let restart = result?;
    facts.server_restarts += 1;
    let down = Duration::from_nanos(restart.up_ns.saturating_sub(restart.down_ns));
    if let Some(probe) = probe {
        match probe.survived().await {
            Ok(true) => {}
            Ok(false) => {
                facts.lease_losses.push((restart.down_ns, restart.up_ns));
                eprintln!(
                    "torture: {backend}: STORE FORGOT ITS LEASES: after the restart ({down:.1?} \
                     down) a lease taken just before reads as expired (Azurite reloads lease \
                     expiry times as strings); counters are kept, so tokens must still rise — \
                     overlaps across it are reported apart, not as library violations"
                );
                return Ok(());
            }
            Err(e) => eprintln!(
                "torture: {backend}: could not read the probe lease after the restart ({e:#}): \
                 overlaps across this restart count as violations"
            ),
        }
    }
    if restart.lost_data {
        facts.data_losses.push((restart.down_ns, restart.up_ns));
        eprintln!(
            "torture: {backend}: STORE LOST DATA: the server came back empty after {down:.1?} \
             (the bucket was gone; the run made it again): every lock object and fencing counter \
             is lost, and tokens restart from the clock (above the earlier ones unless clocks \
             disagree) — reported as \"store lost data: fencing reset after restart\", not as a \
             library violation"
        );
    } else {
        eprintln!(
            "torture: {backend}: server restarted ({down:.1?} down); its data is on disk, so \
             its fencing counters must have survived"
        );
    }
    Ok(())
}

/// A probe lease for checking that leases survive a restart (three tries: the server is busy).
async fn take_probe(backend: &str, url: &str, container: &str) -> Option<servers::LeaseProbe> {
    let mut last = None;
    for _ in 0..3 {
        match servers::LeaseProbe::take(url, container).await {
            Ok(probe) => return Some(probe),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(e) = last {
        eprintln!(
            "torture: {backend}: could not take the probe lease ({e:#}): overlaps across this \
             restart count as violations"
        );
    }
    None
}

async fn run_processes(
    target: &Target,
    args: &TortureArgs,
    owned: &mut Option<OwnedServer>,
    fence_url: &str,
    fence_table: &str,
    dir: &Path,
) -> Result<(Vec<Entry>, RunFacts)> {
    let plan = &target.plan;
    let ttl = plan.ttl;
    // Network stores get the proxy in front of them.
    let proxy = match target.url.as_deref().and_then(split_host_port) {
        Some((_, host_port, _)) if target.backend != "sqlite" => {
            let upstream = tokio::net::lookup_host(&host_port)
                .await?
                .next()
                .context("resolving the store's address")?;
            Some(FaultProxy::start(upstream, args.seed).await?)
        }
        _ => None,
    };
    let store_url = match (&proxy, target.url.as_deref().and_then(split_host_port)) {
        (Some(p), Some((head, _, tail))) => format!("{head}{}{tail}", p.addr()),
        _ => target.url.clone().unwrap_or_default(),
    };
    let row_started = tokio::time::Instant::now();
    let spawner = Spawner {
        target,
        args,
        store_url,
        fence_url,
        fence_table,
        dir,
        row_ends: row_started + plan.time_limit,
    };
    let processes = args.processes.max(2) as u64;
    let acquisitions = plan.acquisitions;
    let mut procs = Vec::new();
    let mut finished: Vec<PathBuf> = Vec::new();
    let mut spawned = 0;
    for i in 0..processes {
        let quota = acquisitions / processes + u64::from(i < acquisitions % processes);
        procs.push(spawner.spawn(quota, spawned)?);
        spawned += 1;
    }
    let mut facts = RunFacts::default();
    let schedule = Fault::schedule(proxy.is_some(), true);
    let mut rng = args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next_fault = row_started + ttl.min(plan.fault_period);
    let mut next_restart = owned.is_some().then(|| row_started + plan.first_restart);
    let mut restarting: Option<(Restarting, Option<servers::LeaseProbe>)> = None;
    let mut restart_error: Option<anyhow::Error> = None;
    let mut fault_index = args.seed as usize;
    // (pid, resume at)
    let mut frozen: Vec<(u32, tokio::time::Instant, u64)> = Vec::new();
    let mut reset_proxy_at: Option<(tokio::time::Instant, bool)> = None;
    let hard_stop = row_started + plan.time_limit + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = tokio::time::Instant::now();
        // Resume frozen workers on time.
        frozen.retain(|&(pid, at, stopped_ns)| {
            if now >= at {
                signal(pid, Signal::CONT);
                facts
                    .paused
                    .entry(pid)
                    .or_default()
                    .push((stopped_ns, mono_ns()));
                false
            } else {
                true
            }
        });
        if let (Some(p), Some((at, cut))) = (&proxy, reset_proxy_at)
            && now >= at
        {
            p.set(Faults::default());
            if cut {
                p.cut_all();
            }
            reset_proxy_at = None;
        }
        if restarting.as_ref().is_some_and(|(r, _)| r.is_finished())
            && let Some((r, probe)) = restarting.take()
            && let Err(e) = finish_restart(target.backend, r, probe, owned, &mut facts).await
        {
            // The store is not serving the run any more: stop now rather than at the time limit.
            eprintln!(
                "torture: {}: RESTART FAILED: {e:#}; stopping the row",
                target.backend
            );
            restart_error.get_or_insert(e);
            for p in &mut procs {
                signal(p.pid, Signal::CONT);
                let _ = p.child.kill();
            }
        }
        // A real restart of the store's server, when the run owns it.
        if next_restart.is_some_and(|at| now >= at)
            && restarting.is_none()
            && restart_error.is_none()
            && let Some(mut server) = owned.take()
        {
            let probe = match (target.backend, &target.url) {
                ("azure", Some(url)) => take_probe(target.backend, url, &target.table).await,
                _ => None,
            };
            let bucket = target.table.clone();
            let handle = tokio::task::spawn_blocking(move || {
                let result = server.restart(&bucket);
                (server, result)
            });
            restarting = Some((handle, probe));
            next_restart = Some(now + plan.restart_gap(facts.server_restarts as u32 + 1));
            facts.faults_injected += 1;
        }
        // Reap finished workers.
        let mut i = 0;
        while i < procs.len() {
            if procs[i].child.try_wait()?.is_some() && !facts.killed_at.contains_key(&procs[i].pid)
            {
                let p = procs.remove(i);
                finished.push(p.journal);
            } else {
                i += 1;
            }
        }
        if procs.is_empty() {
            break;
        }
        if now >= hard_stop {
            // A worker that does not stop is a liveness problem, reported here; its journal is
            // still checked (its open grants end when it was killed or at their deadline).
            for mut p in procs.drain(..) {
                signal(p.pid, Signal::CONT);
                let _ = p.child.kill();
                let _ = p.child.wait();
                facts.killed_at.insert(p.pid, mono_ns());
                eprintln!(
                    "torture: {}: WARNING: worker {} still running {:?} after its time limit; killed",
                    target.backend,
                    p.pid,
                    Duration::from_secs(60)
                );
                finished.push(p.journal);
            }
            break;
        }
        if now < next_fault {
            continue;
        }
        next_fault = now + plan.fault_period;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let fault = schedule[fault_index % schedule.len()];
        fault_index += 1;
        let victim = (rng % procs.len() as u64) as usize;
        let victim_frozen = frozen.iter().any(|f| f.0 == procs[victim].pid);
        match (fault, &proxy) {
            (Fault::Latency, Some(p)) => {
                p.set(Faults {
                    upstream_latency: Duration::from_millis(10),
                    downstream_latency: Duration::from_millis(10),
                    jitter: Duration::from_millis(80),
                    ..Faults::default()
                });
                reset_proxy_at = Some((now + ttl, false));
            }
            (Fault::CutAll, Some(p)) => p.cut_all(),
            (Fault::StallAnswers, Some(p)) => {
                p.set(Faults {
                    downstream_latency: ttl + ttl / 4,
                    ..Faults::default()
                });
                reset_proxy_at = Some((now + ttl / 2, false));
            }
            (Fault::BlackholeUpstream, Some(p)) => {
                p.set(Faults {
                    blackhole_upstream: true,
                    ..Faults::default()
                });
                reset_proxy_at = Some((now + ttl / 4, true));
            }
            (Fault::CloseAfterBytes, Some(p)) => {
                p.set(Faults {
                    close_after_bytes: Some(200 + rng % 4000),
                    ..Faults::default()
                });
                p.cut_all();
                reset_proxy_at = Some((now + ttl / 2, false));
            }
            (Fault::RefuseNew, Some(p)) => {
                p.set(Faults {
                    refuse_new: true,
                    ..Faults::default()
                });
                p.cut_all();
                reset_proxy_at = Some((now + ttl / 4, false));
            }
            (Fault::Pause, _) if !victim_frozen => {
                let pid = procs[victim].pid;
                signal(pid, Signal::STOP);
                frozen.push((pid, now + ttl + ttl / 2, mono_ns()));
            }
            (Fault::Kill, _) if !victim_frozen => {
                let mut p = procs.remove(victim);
                let _ = p.child.kill();
                let _ = p.child.wait();
                facts.killed_at.insert(p.pid, mono_ns());
                let left = p.quota.saturating_sub(grants_in(&p.journal));
                finished.push(p.journal);
                procs.push(spawner.spawn(left, spawned)?);
                spawned += 1;
            }
            (Fault::DelayRenewals, _) if !victim_frozen => signal(procs[victim].pid, Signal::USR1),
            (Fault::LoseAnswers, _) if !victim_frozen => signal(procs[victim].pid, Signal::USR2),
            _ => continue,
        }
        facts.faults_injected += 1;
    }
    if let Some((r, probe)) = restarting.take()
        && let Err(e) = finish_restart(target.backend, r, probe, owned, &mut facts).await
    {
        restart_error.get_or_insert(e);
    }
    if let Some(p) = proxy {
        let s = p.stats();
        eprintln!(
            "torture: {}: proxy: {} connections, {} refused, {} cut, {} closed after N bytes",
            target.backend, s.accepted, s.refused, s.cut, s.closed_after_bytes
        );
    }
    if let Some(e) = restart_error {
        return Err(e.context("restarting the store's server"));
    }
    let mut entries = Vec::new();
    for path in &finished {
        journal::read_journal(path, &mut entries)?;
    }
    Ok((entries, facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_without_its_server_fails_in_ci_and_is_skipped_loudly_elsewhere() {
        let skipped = RowOutcome::Skipped("Azurite could not be started: no npm".into());
        assert!(skipped.failed(true));
        assert!(!skipped.failed(false));
        assert_eq!(
            skipped.text(false),
            "SKIPPED (Azurite could not be started: no npm)"
        );
        assert!(skipped.text(true).starts_with("FAILED: skipped in CI"));
        let clean = RowOutcome::Ran(Counts {
            acquisitions: 10,
            across_data_loss: 3,
            ..Counts::default()
        });
        assert!(
            !clean.failed(true),
            "a store's data loss is not a violation"
        );
        let violated = RowOutcome::Ran(Counts {
            fencing_regressions: 1,
            ..Counts::default()
        });
        assert!(violated.failed(false));
        assert!(RowOutcome::Failed("restart".into()).failed(false));
    }

    #[test]
    fn only_the_object_store_and_azure_rows_have_servers_of_their_own() {
        assert_eq!(server_kind("objstore-s3"), Some(servers::Kind::Moto));
        assert_eq!(server_kind("azure"), Some(servers::Kind::Azurite));
        for sql in ["memory", "sqlite", "postgres", "mysql"] {
            assert_eq!(server_kind(sql), None);
        }
    }

    #[test]
    fn host_port_is_found_and_replaced() {
        let (head, hp, tail) = split_host_port("postgres://postgres@127.0.0.1:5432/test").unwrap();
        assert_eq!(
            (head.as_str(), hp.as_str(), tail.as_str()),
            ("postgres://postgres@", "127.0.0.1:5432", "/test")
        );
        let (head, hp, tail) = split_host_port("mysql://127.0.0.1:3306").unwrap();
        assert_eq!(
            (head.as_str(), hp.as_str(), tail.as_str()),
            ("mysql://", "127.0.0.1:3306", "")
        );
        assert!(split_host_port("sqlite:///tmp/x.db").is_none());
    }
}
