//! A torture worker: contenders taking leases through the real backend, each critical section
//! written to the fenced resource and the journal.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use lease_core::conformance::{FaultyBackend, Op};
use lease_core::{Backend, Error, Lease, Locker, MemoryBackend, RetryPolicy, Semaphore};
use lease_sql::{MySqlBackend, PostgresBackend, SqlOptions, SqliteBackend, TableName};
use tokio::sync::Mutex;

use super::fence::{FencedResource, WriteLog, Writer};
use super::journal::{Entry, JournalWriter, instant_ns, mono_ns};

/// What one worker process does (passed on its command line).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WorkerArgs {
    /// A row of [`super::BACKENDS`].
    #[arg(long)]
    pub(crate) backend: String,
    /// Where the lease store is (through the fault proxy for network stores).
    #[arg(long, default_value = "")]
    pub(crate) store_url: String,
    /// Lease table (SQL backends), bucket (S3) or container (Azure).
    #[arg(long, default_value = "leases")]
    pub(crate) table: String,
    /// PostgreSQL database of the fence table and the write log (never through the proxy).
    #[arg(long)]
    pub(crate) fence_url: String,
    /// Fence table (`FenceTable`) and its write log are `<fence_table>` and
    /// `<fence_table>_writes`.
    #[arg(long)]
    pub(crate) fence_table: String,
    #[arg(long)]
    pub(crate) keys: u32,
    /// Take permits of one semaphore of N permits instead of mutexes on `keys` keys.
    #[arg(long)]
    pub(crate) semaphore: Option<u32>,
    #[arg(long)]
    pub(crate) contenders: u32,
    /// Stop after this many acquisitions (by all contenders of this worker).
    #[arg(long)]
    pub(crate) acquisitions: u64,
    #[arg(long)]
    pub(crate) ttl_ms: u64,
    #[arg(long)]
    pub(crate) journal: PathBuf,
    #[arg(long)]
    pub(crate) seed: u64,
    /// Give up after this long whatever the count.
    #[arg(long)]
    pub(crate) time_limit_s: u64,
}

pub(crate) fn key_name(k: u32) -> String {
    format!("torture/key-{k}")
}

/// The semaphore of a `--semaphore` run.
pub(crate) const SEMAPHORE_NAME: &str = "torture/semaphore";

/// The keys the contenders take: `keys` mutex keys, or the slots of an N-permit semaphore.
pub(crate) fn contended_keys(keys: u32, semaphore: Option<u32>) -> Vec<String> {
    match semaphore {
        Some(n) => (0..n)
            .map(|slot| format!("{SEMAPHORE_NAME}/permit-{slot}"))
            .collect(),
        None => (0..keys).map(key_name).collect(),
    }
}

/// The semaphore of a `--semaphore N` run, on `locker`.
pub(crate) fn semaphore_for(locker: &Locker, permits: Option<u32>) -> Result<Option<Semaphore>> {
    permits
        .map(|n| Semaphore::new(locker, SEMAPHORE_NAME, n).map_err(Into::into))
        .transpose()
}

/// Connects the lease store named by `backend`.
pub(crate) async fn connect_store(
    backend: &str,
    url: &str,
    table: &str,
) -> Result<Arc<dyn Backend>> {
    let options = || -> Result<SqlOptions> {
        Ok(SqlOptions::default()
            .with_table(TableName::new(table)?)
            .with_max_connections(24)
            .with_acquire_timeout(Duration::from_secs(1)))
    };
    Ok(match backend {
        "memory" => Arc::new(MemoryBackend::new()),
        "postgres" => Arc::new(PostgresBackend::connect_with(url, options()?).await?),
        "mysql" => Arc::new(MySqlBackend::connect_with(url, options()?).await?),
        "sqlite" => Arc::new(SqliteBackend::connect_with(url, options()?).await?),
        "objstore-s3" => Arc::new(s3_backend(url, table)?),
        "azure" => Arc::new(azure_backend(url, table)?),
        // The run's table name is the key prefix: letters, digits and `_`.
        "redis" => Arc::new(
            lease_redis::RedisBackend::connect_with(
                url,
                lease_redis::RedisOptions::default()
                    .with_prefix(lease_redis::KeyPrefix::new(format!("{table}:"))?),
            )
            .await?,
        ),
        other => bail!("torture: unknown backend {other:?}"),
    })
}

/// The resource a row's critical sections write to: `FencedStore` on the row's own object store
/// for the object-store row, `FenceTable::admit` in the fence database for every other row.
pub(crate) fn fenced_resource(
    backend: &str,
    store_url: &str,
    table: &str,
    log: WriteLog,
) -> Result<FencedResource> {
    Ok(match backend {
        "objstore-s3" => {
            FencedResource::Store(log, s3_backend(store_url, table)?.leases().store().clone())
        }
        _ => FencedResource::Table(log),
    })
}

/// Leases as objects under `torture/` in `bucket` on the S3 server at `endpoint` (moto accepts
/// any credentials; others come from the `LEASE_TEST_S3_*` variables).
pub(crate) fn s3_backend(
    endpoint: &str,
    bucket: &str,
) -> Result<lease_objstore::ObjectStoreBackend> {
    let var = |name: &str, default: &str| {
        crate::env::user_value(name).unwrap_or_else(|| default.to_owned())
    };
    let options = [
        ("aws_endpoint", endpoint.to_owned()),
        ("aws_allow_http", "true".to_owned()),
        (
            "aws_access_key_id",
            var(crate::env::S3_ACCESS_KEY_ID, "test"),
        ),
        (
            "aws_secret_access_key",
            var(crate::env::S3_SECRET_ACCESS_KEY, "test"),
        ),
        (
            "aws_region",
            var(crate::env::S3_REGION, crate::env::DEFAULT_S3_REGION),
        ),
    ];
    Ok(lease_objstore::ObjectStoreBackend::from_url(
        &format!("s3://{bucket}/torture"),
        options,
    )?)
}

/// Blob leases in `container` on the Azurite endpoint `endpoint` (`http://HOST:PORT/ACCOUNT`),
/// with the key from `LEASE_TEST_AZURITE_ACCOUNT_KEY` or Azurite's published one.
pub(crate) fn azure_backend(
    endpoint: &str,
    container: &str,
) -> Result<lease_azure::AzureBlobBackend> {
    let key = crate::env::user_value(crate::env::AZURITE_ACCOUNT_KEY)
        .unwrap_or_else(|| lease_azure::AZURITE_ACCOUNT_KEY.to_owned());
    Ok(lease_azure::AzureBlobBuilder::new()
        .with_account(lease_azure::AZURITE_ACCOUNT)
        .with_endpoint(endpoint)
        .with_access_key(key)
        .with_container(container)
        .build()?)
}

/// A small deterministic generator per contender.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Shared by the contenders of one worker.
pub(crate) struct Contest {
    pub(crate) locker: Locker,
    /// `--semaphore`: contenders take its permits (slot leases) instead of mutex keys.
    pub(crate) semaphore: Option<Semaphore>,
    pub(crate) resource: FencedResource,
    /// Grants taken by this process so far: with the pid, a grant's identity in the write log.
    pub(crate) grants: AtomicU64,
    pub(crate) journal: Mutex<JournalWriter>,
    pub(crate) keys: u32,
    pub(crate) ttl: Duration,
    pub(crate) quota: u64,
    pub(crate) taken: AtomicU64,
    pub(crate) acquire_errors: AtomicU64,
    pub(crate) stop_at: tokio::time::Instant,
}

pub(crate) fn locker_for(backend: Arc<dyn Backend>, ttl: Duration) -> Result<Locker> {
    Ok(Locker::builder_shared(backend)
        .ttl(ttl)
        // Fast hand-off: waiters poll often (most of these backends have no wake-up).
        .retry(
            RetryPolicy::default()
                .with_initial_delay(Duration::from_millis(5))
                .with_max_delay(Duration::from_millis(100)),
        )
        .build()?)
}

/// One contender: acquire a random key, do the critical section, release; until the quota.
pub(crate) async fn contend(contest: Arc<Contest>, seed: u64) {
    let mut rng = Rng(seed);
    let pid = std::process::id();
    while contest.taken.load(Ordering::Relaxed) < contest.quota
        && tokio::time::Instant::now() < contest.stop_at
    {
        // Long enough to outwait a killed holder's TTL (Azure's is 15 s).
        let wait = Duration::from_secs(10).max(contest.ttl * 2);
        let acquired = match &contest.semaphore {
            Some(semaphore) => semaphore
                .acquire_timeout(wait)
                .await
                .map(|permit| (permit.key().to_string(), permit.into_lease())),
            None => {
                let key = key_name(rng.below(u64::from(contest.keys)) as u32);
                contest
                    .locker
                    .acquire_timeout(&key, wait)
                    .await
                    .map(|lease| (key, lease))
            }
        };
        let (key, lease) = match acquired {
            Ok(acquired) => acquired,
            Err(_) => {
                contest.acquire_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        contest.taken.fetch_add(1, Ordering::Relaxed);
        critical_section(&contest, lease, &key, pid, &mut rng).await;
    }
}

async fn critical_section(contest: &Contest, lease: Lease, key: &str, pid: u32, rng: &mut Rng) {
    let token = lease.fencing_token().get();
    let at = mono_ns();
    contest.journal.lock().await.write(&Entry::Grant {
        key: key.to_string(),
        token,
        pid,
        at,
        deadline: instant_ns(lease.deadline()),
    });
    let signalled = Arc::new(std::sync::Mutex::new(None));
    let watcher = {
        let lost = lease.lost();
        let signalled = signalled.clone();
        tokio::spawn(async move {
            lost.await;
            *signalled.lock().unwrap_or_else(|e| e.into_inner()) = Some(mono_ns());
        })
    };
    // Most critical sections check the lease before each write, as a careful user does; some
    // write the second time without looking (a process that was paused in between): the fence
    // is what must stop those.
    let careless = rng.below(10) == 0;
    let writer = Writer {
        pid,
        grant: contest.grants.fetch_add(1, Ordering::Relaxed),
        token,
    };
    if lease.is_held() {
        let _ = contest.resource.write(key, writer).await;
    }
    // Mostly short; a few across several renewals (rare: waiters queue behind them).
    let hold = match rng.below(500) {
        0 => contest.ttl + contest.ttl / 5,
        1..=50 => Duration::from_millis(10 + rng.below(40)),
        _ => Duration::from_millis(rng.below(4)),
    };
    // Hold in slices, noting each renewal's new deadline (the checker needs it if this worker
    // is killed while holding).
    let mut noted = instant_ns(lease.deadline());
    let hold_until = tokio::time::Instant::now() + hold;
    while tokio::time::Instant::now() < hold_until {
        tokio::time::sleep_until(hold_until.min(tokio::time::Instant::now() + contest.ttl / 8))
            .await;
        let deadline = instant_ns(lease.deadline());
        if deadline > noted + 1_000_000 {
            noted = deadline;
            contest.journal.lock().await.write(&Entry::Deadline {
                key: key.to_string(),
                token,
                pid,
                deadline,
            });
        }
    }
    if careless || lease.is_held() {
        let _ = contest.resource.write(key, writer).await;
    }
    let now = mono_ns();
    let deadline = instant_ns(lease.deadline());
    let end = now.min(deadline);
    // Journal the end before releasing: once the release lands the key goes to the next holder,
    // and a worker killed before it wrote this line would look as if it held on until the kill.
    let journal_end = |lost: bool, signalled: Option<u64>| Entry::End {
        key: key.to_string(),
        token,
        pid,
        end,
        lost,
        signalled,
    };
    let early = journal_end(deadline <= now, None);
    contest.journal.lock().await.write(&early);
    // A lease still ours when its release began was not lost while held: a loss `release()`
    // reports after that (an attempt whose answer was lost, then a newer grant found in the
    // record: docs/protocol.md) came when this holder had already stopped, and its signal, which
    // fires only then, is no late signal. A loss while held (deadline passed, or the renewal told
    // `NotHeld`) has made the lease not held before the release, and is counted as before.
    let held_at_release = lease.is_held();
    let released = lease.release().await;
    let lost = !held_at_release && (matches!(&released, Err(e) if e.is_lost()) || deadline <= now);
    if lost {
        // Give the signal a moment to be recorded if it fired just now.
        tokio::task::yield_now().await;
    }
    watcher.abort();
    let signalled = *signalled.lock().unwrap_or_else(|e| e.into_inner());
    // The final word on this grant (the checker keeps the last `End`).
    let last = journal_end(lost, signalled);
    contest.journal.lock().await.write(&last);
}

/// Faults the worker injects into its own backend on signal (for stores the proxy cannot sit in
/// front of, and for delaying renew responses past the deadline on every store).
pub(crate) fn spawn_signal_faults(faulty: FaultyBackend, ttl: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut usr1), Ok(mut usr2)) = (
            signal(SignalKind::user_defined1()),
            signal(SignalKind::user_defined2()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    // Renew responses arrive after the deadline they would have extended.
                    faulty.delay_responses(Op::Renew, ttl + ttl / 4);
                    tokio::time::sleep(ttl * 2).await;
                    faulty.delay_responses(Op::Renew, Duration::ZERO);
                }
                _ = usr2.recv() => {
                    // Ambiguous outcomes: the writes land, their answers are lost.
                    faulty.lose_next_response(Op::Acquire, 5);
                    faulty.lose_next_response(Op::Renew, 5);
                    faulty.lose_next_response(Op::Release, 5);
                }
            }
        }
    });
}

/// Entry point of `cargo xtask torture-worker` (a process the coordinator starts).
pub(crate) fn main(args: WorkerArgs) -> Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ttl = Duration::from_millis(args.ttl_ms);
        let store = connect_store(&args.backend, &args.store_url, &args.table).await?;
        let faulty = FaultyBackend::new(store);
        spawn_signal_faults(faulty.clone(), ttl);
        let locker = locker_for(Arc::new(faulty), ttl)?;
        let contest = Arc::new(Contest {
            semaphore: semaphore_for(&locker, args.semaphore)?,
            locker,
            resource: fenced_resource(
                &args.backend,
                &args.store_url,
                &args.table,
                WriteLog::connect(&args.fence_url, &args.fence_table, args.contenders.min(16))
                    .await?,
            )?,
            grants: AtomicU64::new(0),
            journal: Mutex::new(JournalWriter::create(&args.journal)?),
            keys: args.keys,
            ttl,
            quota: args.acquisitions,
            taken: AtomicU64::new(0),
            acquire_errors: AtomicU64::new(0),
            stop_at: tokio::time::Instant::now() + Duration::from_secs(args.time_limit_s),
        });
        run_contenders(&contest, args.contenders, args.seed).await;
        Ok(true)
    })
}

/// Runs `contenders` contenders to the quota, then drains and writes the totals.
pub(crate) async fn run_contenders(contest: &Arc<Contest>, contenders: u32, seed: u64) {
    let tasks: Vec<_> = (0..contenders)
        .map(|i| {
            tokio::spawn(contend(
                contest.clone(),
                seed.wrapping_mul(1_000_003).wrapping_add(u64::from(i)),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    contest.locker.drain().await;
    if let Some(semaphore) = &contest.semaphore {
        semaphore.drain().await;
    }
    contest.journal.lock().await.write(&Entry::Totals {
        pid: std::process::id(),
        acquire_errors: contest.acquire_errors.load(Ordering::Relaxed),
    });
}

/// `Error::is_lost` without depending on how lease-core spells it.
trait IsLost {
    fn is_lost(&self) -> bool;
}

impl IsLost for Error {
    fn is_lost(&self) -> bool {
        matches!(self, Error::Lost { .. })
    }
}
