//! `cargo xtask torture`: many contenders in several processes on a few keys, through the real
//! backends, with faults on a schedule; every critical section is written to a fenced resource
//! (a PostgreSQL table written with `WHERE fence < $token`) and to a journal with the lease's
//! local deadline. The checker reads both and counts violations; any violation fails the run.
//!
//! Faults: through the [fault proxy](crate::proxy) in front of network stores (latency and
//! jitter, every connection cut, one direction black-holed, connections closed after N bytes,
//! new connections refused, answers stalled past the TTL); a worker frozen with SIGSTOP past the
//! TTL and resumed; a worker killed with SIGKILL (and replaced); renew responses delayed past
//! the deadline and answers lost inside a worker (SIGUSR1/SIGUSR2 to its fault-injecting
//! backend wrapper).

mod journal;
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

pub(crate) use worker::{WorkerArgs, main as worker_main};

/// Backends the torture rig knows, in the order it runs them.
pub(crate) const BACKENDS: &[&str] = &["memory", "sqlite", "postgres", "mysql"];

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
    /// Worker processes per backend (the memory backend runs in one process).
    #[arg(long, default_value_t = 2)]
    pub(crate) processes: u32,
    /// Contenders per process.
    #[arg(long, default_value_t = 16)]
    pub(crate) contenders: u32,
    /// Lease TTL in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub(crate) ttl_ms: u64,
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
    /// Lease table, dropped at the end.
    table: String,
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
    // --quick: sized so that the four backends give over 10,000 acquisitions in a few minutes
    // (PostgreSQL flushes every lease statement and reconnects its listener after each cut).
    let quick_size = |backend: &str| match backend {
        "memory" => 4_000,
        "sqlite" => 3_000,
        "mysql" => 2_000,
        _ => 1_500,
    };
    let run_id = format!(
        "{}_{}",
        std::process::id(),
        mono_ns() / 1_000_000 % 1_000_000
    );
    let dir = crate::services::target_dir().join("torture").join(&run_id);
    std::fs::create_dir_all(&dir)?;
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
    let mut per: Vec<Counts> = Vec::new();
    let mut ok = true;
    for backend in &backends {
        let per_backend = args.acquisitions.unwrap_or(if args.quick {
            quick_size(backend)
        } else {
            100_000
        });
        eprintln!(
            "torture: {backend}: {per_backend} acquisitions, seed {}",
            args.seed
        );
        let started = std::time::Instant::now();
        let result = rt.block_on(run_backend(backend, args, per_backend, &run_id, &dir));
        match result {
            Ok(counts) => {
                eprintln!(
                    "torture: {backend}: {} acquisitions, {} violations in {:.0?}",
                    counts.acquisitions,
                    counts.violations(),
                    started.elapsed()
                );
                if counts.violations() > 0 {
                    ok = false;
                }
                all.add(&counts);
                per.push(counts);
            }
            Err(e) => {
                eprintln!("torture: {backend}: FAILED: {e:#}");
                ok = false;
                per.push(Counts::default());
            }
        }
    }
    let labels = Counts::default().rows();
    for (i, (label, _, violation)) in labels.iter().enumerate() {
        let mut row = vec![if *violation {
            format!("{label} (must be 0)")
        } else {
            label.to_string()
        }];
        row.extend(per.iter().map(|c| c.rows()[i].1.to_string()));
        table.row(row);
    }
    println!(
        "\ntorture (seed {}, journals in {}):\n{}",
        args.seed,
        dir.display(),
        table.render()
    );
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
    let store = worker::connect_store(target.backend, url, &target.table).await?;
    // The concrete types migrate; the trait object does not know how.
    match target.backend {
        "postgres" => {
            let b = lease_sql::PostgresBackend::connect_with(
                url,
                lease_sql::SqlOptions::default()
                    .with_table(lease_sql::TableName::new(&target.table)?),
            )
            .await?;
            b.migrate().await?;
        }
        "mysql" => {
            let b = lease_sql::MySqlBackend::connect_with(
                url,
                lease_sql::SqlOptions::default()
                    .with_table(lease_sql::TableName::new(&target.table)?),
            )
            .await?;
            b.migrate().await?;
        }
        "sqlite" => {
            let b = lease_sql::SqliteBackend::connect_with(
                url,
                lease_sql::SqlOptions::default()
                    .with_table(lease_sql::TableName::new(&target.table)?),
            )
            .await?;
            b.migrate().await?;
        }
        _ => {}
    }
    drop(store);
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
        _ => {}
    }
}

async fn run_backend(
    backend: &'static str,
    args: &TortureArgs,
    acquisitions: u64,
    run_id: &str,
    dir: &Path,
) -> Result<Counts> {
    let fence_table = format!("torture_fence_{run_id}_{backend}");
    let target = Target {
        backend,
        url: match backend {
            "postgres" => Some(postgres_url()),
            "mysql" => Some(mysql_url()),
            "sqlite" => Some(format!(
                "sqlite://{}",
                dir.join(format!("{backend}.db")).display()
            )),
            _ => None,
        },
        table: format!("torture_leases_{run_id}"),
    };
    let fence_url = postgres_url();
    let resource = worker::FencedResource::connect(&fence_url, &fence_table, 4).await?;
    resource.create(&fence_table, args.keys).await?;
    let outcome = async {
        prepare_store(&target).await?;
        let result = if backend == "memory" {
            run_in_process(args, acquisitions, &fence_url, &fence_table, dir).await
        } else {
            run_processes(&target, args, acquisitions, &fence_url, &fence_table, dir).await
        };
        let (entries, mut facts) = result?;
        facts.writes = resource.writes(&fence_table).await?;
        Ok::<_, anyhow::Error>(journal::check(&entries, &facts))
    }
    .await;
    let _ = resource.drop_tables(&fence_table).await;
    drop_store(&target).await;
    outcome
}

fn time_limit(args: &TortureArgs, acquisitions: u64) -> Duration {
    if args.quick {
        // CI's budget: whatever count was reached by then is reported.
        return Duration::from_secs(75);
    }
    // Generous: tens to hundreds of acquisitions a second is typical; the limit stops a hang.
    Duration::from_secs(120 + acquisitions / 20)
}

/// Time between two faults of the schedule.
fn fault_period(args: &TortureArgs) -> Duration {
    let ttl = Duration::from_millis(args.ttl_ms);
    if args.quick { ttl * 2 } else { ttl }
}

/// The memory backend lives in one process: its contenders run here, with in-process faults.
async fn run_in_process(
    args: &TortureArgs,
    acquisitions: u64,
    fence_url: &str,
    fence_table: &str,
    dir: &Path,
) -> Result<(Vec<Entry>, RunFacts)> {
    let ttl = Duration::from_millis(args.ttl_ms);
    let faulty = FaultyBackend::new(Arc::new(MemoryBackend::new()));
    let journal_path = dir.join("memory.jsonl");
    let contenders = args.contenders * args.processes.max(2);
    let contest = Arc::new(worker::Contest {
        locker: worker::locker_for(Arc::new(faulty.clone()), ttl)?,
        resource: worker::FencedResource::connect(fence_url, fence_table, 16).await?,
        journal: Mutex::new(JournalWriter::create(&journal_path)?),
        keys: args.keys,
        ttl,
        quota: acquisitions,
        taken: AtomicU64::new(0),
        acquire_errors: AtomicU64::new(0),
        stop_at: tokio::time::Instant::now() + time_limit(args, acquisitions),
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
        tokio::time::sleep(fault_period(args)).await;
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

#[allow(clippy::too_many_arguments)]
fn spawn_worker(
    target: &Target,
    store_url: &str,
    args: &TortureArgs,
    quota: u64,
    fence_url: &str,
    fence_table: &str,
    dir: &Path,
    n: usize,
    limit: Duration,
) -> Result<Proc> {
    let journal = dir.join(format!("{}-{n}.jsonl", target.backend));
    let log = std::fs::File::create(dir.join(format!("{}-{n}.log", target.backend)))?;
    let child = Command::new(std::env::current_exe()?)
        .arg("torture-worker")
        .args(["--backend", target.backend])
        .args(["--store-url", store_url])
        .args(["--table", &target.table])
        .args(["--fence-url", fence_url])
        .args(["--fence-table", fence_table])
        .args(["--keys", &args.keys.to_string()])
        .args(["--contenders", &args.contenders.to_string()])
        .args(["--acquisitions", &quota.to_string()])
        .args(["--ttl-ms", &args.ttl_ms.to_string()])
        .arg("--journal")
        .arg(&journal)
        .args(["--seed", &(args.seed * 7919 + n as u64).to_string()])
        .args(["--time-limit-s", &limit.as_secs().to_string()])
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

fn grants_in(path: &Path) -> u64 {
    let mut entries = Vec::new();
    let _ = journal::read_journal(path, &mut entries);
    entries
        .iter()
        .filter(|e| matches!(e, Entry::Grant { .. }))
        .count() as u64
}

async fn run_processes(
    target: &Target,
    args: &TortureArgs,
    acquisitions: u64,
    fence_url: &str,
    fence_table: &str,
    dir: &Path,
) -> Result<(Vec<Entry>, RunFacts)> {
    let ttl = Duration::from_millis(args.ttl_ms);
    let limit = time_limit(args, acquisitions);
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
    let processes = args.processes.max(2) as u64;
    let mut procs = Vec::new();
    let mut finished: Vec<PathBuf> = Vec::new();
    let mut spawned = 0;
    for i in 0..processes {
        let quota = acquisitions / processes + u64::from(i < acquisitions % processes);
        procs.push(spawn_worker(
            target,
            &store_url,
            args,
            quota,
            fence_url,
            fence_table,
            dir,
            spawned,
            limit,
        )?);
        spawned += 1;
    }
    let mut facts = RunFacts::default();
    let schedule = Fault::schedule(proxy.is_some(), true);
    let mut rng = args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next_fault = tokio::time::Instant::now() + ttl;
    let mut fault_index = args.seed as usize;
    // (pid, resume at)
    let mut frozen: Vec<(u32, tokio::time::Instant, u64)> = Vec::new();
    let mut reset_proxy_at: Option<(tokio::time::Instant, bool)> = None;
    let hard_stop = tokio::time::Instant::now() + limit + Duration::from_secs(60);
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
        next_fault = now + fault_period(args);
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
                procs.push(spawn_worker(
                    target,
                    &store_url,
                    args,
                    left,
                    fence_url,
                    fence_table,
                    dir,
                    spawned,
                    limit,
                )?);
                spawned += 1;
            }
            (Fault::DelayRenewals, _) if !victim_frozen => signal(procs[victim].pid, Signal::USR1),
            (Fault::LoseAnswers, _) if !victim_frozen => signal(procs[victim].pid, Signal::USR2),
            _ => continue,
        }
        facts.faults_injected += 1;
    }
    if let Some(p) = proxy {
        let s = p.stats();
        eprintln!(
            "torture: {}: proxy: {} connections, {} refused, {} cut, {} closed after N bytes",
            target.backend, s.accepted, s.refused, s.cut, s.closed_after_bytes
        );
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
