//! Measurements that need a `Locker`: hand-off with its breakdown, a crowd of waiters on one key,
//! and the cost of holding many leases in one process. Shared by every row with a store that can
//! open a second connection ("process").

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lease_core::{Backend, Locker, RetryPolicy};

use super::process::{Cpu, rss_bytes};
use super::random;
use super::wrap::{Call, Kind, Recorder};
use crate::report::{Table, ms};
use crate::stats::{as_ms, quantile};
use crate::{Options, Report};

/// Requests sent so far by one backend instance.
pub(crate) type Counter = Arc<dyn Fn() -> u64 + Send + Sync>;

const TTL: Duration = Duration::from_secs(30);

fn p(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    quantile(&v, q)
}

/// What one hand-off's logs say.
#[derive(Debug, Clone, Copy, Default)]
struct Breakdown {
    total: f64,
    release: f64,
    notified: f64,
    wake: f64,
    acquire: f64,
    guard: f64,
    attempts: f64,
}

fn first_after(log: &[Call], kind: Kind, after: Instant, ok: bool) -> Option<Call> {
    log.iter()
        .filter(|c| c.kind == kind && c.ended >= after && (!ok || c.ok > 0))
        .min_by_key(|c| c.ended)
        .copied()
}

fn since(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        as_ms(later - earlier)
    } else {
        -as_ms(earlier - later)
    }
}

/// Release → next holder, `n` times: a holder (its own connection, like another process)
/// releases while a waiter is blocked in `Locker::acquire`, after a pause that lets a polling
/// waiter's backoff grow as it would in practice.
pub(crate) async fn handoff<F, Fut>(
    row: &str,
    options: &Options,
    report: &mut Report,
    connect: &F,
    round_trip_ms: f64,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = (Arc<dyn Backend>, Counter)>,
{
    let n = if options.quick { 3 } else { 40 };
    let pause = Duration::from_millis(if options.quick { 60 } else { 300 });
    let (holder_store, _) = connect().await;
    let (waiter_store, _) = connect().await;
    let notifies = waiter_store.capabilities().notifies_waiters;
    let mut variants = vec![(
        if notifies {
            "change notification"
        } else {
            "polling (default backoff, cap 1 s)"
        },
        false,
    )];
    if notifies {
        variants.push(("polling only (notifications hidden)", true));
    }
    let mut table = Table::new(
        row,
        &format!(
            "Hand-off: release sent → next holder's grant confirmed ({n} hand-offs; ms, p50 unless said)"
        ),
        &[
            "waiter wakes on",
            "total p50",
            "total p99",
            "in round trips",
            "release (sent → confirmed)",
            "release sent → waiter's wait returns",
            "wait returns → acquire sent",
            "acquire (sent → confirmed)",
            "confirmed → acquire() returns",
            "acquire attempts",
        ],
    );
    for (name, polling) in variants {
        let hold = Recorder::new(Arc::clone(&holder_store));
        let mut wait = Recorder::new(Arc::clone(&waiter_store));
        if polling {
            wait = wait.polling_only();
        }
        let holder = Locker::builder(hold.clone()).ttl(TTL).build().unwrap();
        let waiter = Locker::builder(wait.clone())
            .ttl(TTL)
            .retry(RetryPolicy::default())
            .build()
            .unwrap();
        let key = format!("handoff-{}", random());
        let mut rows = Vec::new();
        for _ in 0..n {
            let lease = holder.try_acquire(&key).await.unwrap().expect("free key");
            hold.clear_log();
            wait.clear_log();
            let waiting = tokio::spawn({
                let (waiter, key) = (waiter.clone(), key.clone());
                async move {
                    let lease = waiter.acquire(&key).await.unwrap();
                    (Instant::now(), lease)
                }
            });
            tokio::time::sleep(pause).await;
            let released = Instant::now();
            lease.release().await.unwrap();
            let (granted, lease) = waiting.await.unwrap();
            let (hl, wl) = (hold.log(), wait.log());
            let release = first_after(&hl, Kind::Release, released, false);
            let grant = first_after(&wl, Kind::Acquire, released, true);
            let woke = grant.and_then(|g| {
                wl.iter()
                    .filter(|c| c.kind == Kind::Wait && c.ended >= released && c.ended <= g.started)
                    .max_by_key(|c| c.ended)
                    .copied()
            });
            let attempts = wl
                .iter()
                .filter(|c| c.kind == Kind::Acquire && c.ended >= released)
                .count();
            rows.push(Breakdown {
                total: since(granted, released),
                release: release.map_or(f64::NAN, |r| since(r.ended, r.started)),
                notified: woke.map_or(f64::NAN, |w| since(w.ended, released)),
                wake: match (woke, grant) {
                    (Some(w), Some(g)) => since(g.started, w.ended),
                    _ => f64::NAN,
                },
                acquire: grant.map_or(f64::NAN, |g| since(g.ended, g.started)),
                guard: grant.map_or(f64::NAN, |g| since(granted, g.ended)),
                attempts: attempts as f64,
            });
            lease.release().await.unwrap();
        }
        let col = |f: fn(&Breakdown) -> f64| rows.iter().map(f).collect::<Vec<_>>();
        let total = col(|b| b.total);
        table.row([
            name.to_owned(),
            ms(p(&total, 0.5)),
            ms(p(&total, 0.99)),
            format!("{:.1}", p(&total, 0.5) / round_trip_ms),
            ms(p(&col(|b| b.release), 0.5)),
            ms(p(&col(|b| b.notified), 0.5)),
            ms(p(&col(|b| b.wake), 0.5)),
            ms(p(&col(|b| b.acquire), 0.5)),
            ms(p(&col(|b| b.guard), 0.5)),
            format!("{:.1}", col(|b| b.attempts).iter().sum::<f64>() / n as f64),
        ]);
    }
    table.note = format!(
        "Holder and waiter use separate connections (two backends). A round trip is the floor's \
         p50 measured above ({} ms). The columns after the totals are medians of each part \
         separately, so they need not add up to the total's median. \"release sent → waiter's \
         wait returns\" is when the waiter's `wait_for_change` returned (a notification, or the end \
         of a poll sleep when the backend has none).",
        ms(round_trip_ms)
    );
    report.tables.push(table);
}

/// A crowd on one key: `waiters` tasks spread over `processes` backends (each with its own pool
/// and, where there is one, its own notification listener), each taking the key, holding it
/// briefly and queueing again, until `handoffs` grants happened.
pub(crate) async fn crowd<F, Fut>(row: &str, options: &Options, report: &mut Report, connect: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (Arc<dyn Backend>, Counter)>,
{
    let (first, first_counter) = connect().await;
    // Waiters that poll wait up to the backoff cap per hand-off: fewer hand-offs keep the run short.
    let notifies = first.capabilities().notifies_waiters;
    let (processes, waiters, handoffs) = match (options.quick, notifies) {
        (true, _) => (2, 6, 12),
        (false, true) => (4, 100, 400),
        (false, false) => (4, 100, 100),
    };
    let hold_for = Duration::from_millis(2);
    let key = format!("crowd-{}", random());
    let mut lockers = vec![Locker::builder_shared(first).ttl(TTL).build().unwrap()];
    let mut counters = vec![first_counter];
    for _ in 1..processes {
        let (backend, counter) = connect().await;
        lockers.push(Locker::builder_shared(backend).ttl(TTL).build().unwrap());
        counters.push(counter);
    }
    let requests = || counters.iter().map(|c| c()).sum::<u64>();
    // (when, waiter, granted?) — a grant, or a release about to be sent.
    let events: Arc<Mutex<Vec<(Instant, usize, bool)>>> = Arc::default();
    let grants = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (started, before) = (Instant::now(), requests());
    let tasks: Vec<_> = (0..waiters)
        .map(|w| {
            let locker = lockers[w % processes].clone();
            let (events, grants, stop, key) =
                (events.clone(), grants.clone(), stop.clone(), key.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let lease = locker.acquire(&key).await.unwrap();
                    events.lock().unwrap().push((Instant::now(), w, true));
                    tokio::time::sleep(hold_for).await;
                    if grants.fetch_add(1, Ordering::Relaxed) + 1 >= handoffs {
                        stop.store(true, Ordering::Relaxed);
                    }
                    events.lock().unwrap().push((Instant::now(), w, false));
                    lease.release().await.unwrap();
                    // Other work before queueing again, so the releaser does not simply
                    // barge back in ahead of everyone it just woke.
                    tokio::time::sleep(hold_for).await;
                }
            })
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let sent = requests() - before;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut events = events.lock().unwrap().clone();
    events.sort_by_key(|e| e.0);
    // Hand-off latency: each grant after a release, from that release being sent.
    let mut latencies = Vec::new();
    let mut last_release: Option<Instant> = None;
    // Starvation: grants to others between two grants of one waiter (or since the start).
    let mut since_own: HashMap<usize, usize> = (0..waiters).map(|w| (w, 0)).collect();
    let mut worst = 0usize;
    let mut grant_count = 0usize;
    for (at, w, granted) in &events {
        if *granted {
            grant_count += 1;
            if let Some(r) = last_release.take() {
                latencies.push(since(*at, r));
            }
            for (other, n) in since_own.iter_mut() {
                if other == w {
                    worst = worst.max(*n);
                    *n = 0;
                } else {
                    *n += 1;
                }
            }
        } else {
            last_release = Some(*at);
        }
    }
    // A waiter still waiting at the end counts what it has waited so far.
    let still = since_own.values().copied().max().unwrap_or(0);
    let never = (0..waiters)
        .filter(|w| !events.iter().any(|e| e.1 == *w && e.2))
        .count();
    let mut table = Table::new(
        row,
        &format!(
            "Crowd: {waiters} waiters on one key across {processes} backends (\"processes\"), each holding it {} ms and queueing again {} ms after its release, {grant_count} grants",
            hold_for.as_millis(),
            hold_for.as_millis()
        ),
        &[
            "hand-off p50 ms",
            "hand-off p99 ms",
            "store requests / s",
            "requests per hand-off",
            "most grants to others between two of one waiter's",
            "waiters never granted",
        ],
    );
    table.row([
        ms(p(&latencies, 0.5)),
        ms(p(&latencies, 0.99)),
        format!("{:.0}", sent as f64 / elapsed.as_secs_f64()),
        format!("{:.1}", sent as f64 / grant_count.max(1) as f64),
        format!("{} (still waiting at the end: {still})", worst.max(still)),
        never.to_string(),
    ]);
    table.note = "Waiters use the default retry policy. Requests count every request of all the \
                  backends (acquire attempts, releases, renewals). The starvation column \
                  sets the case for fair (queued) waiting: with FIFO order it would be at most \
                  the number of waiters minus one."
        .into();
    report.tables.push(table);
}

/// One holding measurement.
struct Holding {
    leases: usize,
    interval: Duration,
    acquire_all: Duration,
    window: Duration,
    batches: usize,
    /// The longest renewal call that ended in the window.
    longest_batch: Option<Duration>,
    requests: u64,
    renewed: usize,
    /// Acquires that failed (the store did not answer in time), out of `leases`.
    failed: usize,
    cpu: Option<Duration>,
    rss_delta: Option<i64>,
    /// Growth of the live heap (Rust allocations) since before the leases were taken: the least
    /// and the most seen during the window (between renewal batches, and with one in flight).
    heap_delta: Option<(i64, i64)>,
    lost: usize,
}

/// Holds `n` leases on one `Locker` and measures, over a window of steady state, the renewal
/// calls, statements and renewed rows per second, this process's CPU time and the growth of its
/// resident memory and (with `heap_bytes`) of its live heap since before the leases were taken.
async fn hold(
    backend: Arc<dyn Backend>,
    counter: &Counter,
    n: usize,
    (interval, ttl, window): (Duration, Duration, Duration),
    heap_bytes: Option<fn() -> usize>,
) -> Holding {
    const CONCURRENCY: usize = 64;
    let log = Recorder::new(backend);
    let locker = Locker::builder(log.clone())
        .ttl(ttl)
        .renew_interval(interval)
        .build()
        .unwrap();
    let rss_before = rss_bytes();
    let heap_before = heap_bytes.map(|live| live());
    let prefix = format!("held-{}", random());
    let started = Instant::now();
    let leases: Vec<_> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (locker, key) = (locker.clone(), format!("{prefix}/{i}"));
            async move { locker.try_acquire(&key).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let acquire_all = started.elapsed();
    log.clear_log();
    // A store too slow to answer an acquire within half the holder window (SQLite's single
    // writer behind a renewal batch, say) fails it: counted and shown, not a reason to stop.
    let mut failed = 0;
    let mut leases: Vec<_> = leases
        .into_iter()
        .filter_map(|l| match l {
            Ok(lease) => Some(lease.expect("a fresh key is free")),
            Err(e) => {
                if failed == 0 {
                    eprintln!("lease-bench: holding {n}: an acquire failed: {e}");
                }
                failed += 1;
                None
            }
        })
        .collect();
    // Collected in place into the results' larger buffer: keep only what the guards take.
    leases.shrink_to_fit();
    // Steady state: wait for a renewal that starts after every lease was taken, then half an
    // interval more, so the window holds whole intervals between batches.
    let acquired = Instant::now();
    let give_up = acquired + interval * 3 + Duration::from_secs(10);
    while !log
        .log()
        .iter()
        .any(|c| c.kind == Kind::Renew && c.started > acquired)
        && Instant::now() < give_up
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(interval / 2).await;
    log.clear_log();
    let (from, requests_before, cpu_before) = (Instant::now(), counter(), Cpu::now());
    // The heap is sampled through the window: its least value is what stays between renewal
    // batches, its most what a batch in flight adds.
    let mut heap_seen: Option<(usize, usize)> = None;
    let end = from + window;
    while Instant::now() < end {
        if let Some(live) = heap_bytes.map(|live| live()) {
            let (least, most) = heap_seen.unwrap_or((live, live));
            heap_seen = Some((least.min(live), most.max(live)));
        }
        tokio::time::sleep(
            Duration::from_millis(50).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    let (to, requests_after, cpu_after) = (Instant::now(), counter(), Cpu::now());
    let rss_holding = rss_bytes();
    let logged = log.log();
    let calls: Vec<Call> = logged
        .iter()
        .filter(|c| c.kind == Kind::Renew && c.started >= from && c.started < to)
        .copied()
        .collect();
    // Calls are logged when they end: a batch still in flight at the end of the window is not
    // among them.
    let longest_batch = logged
        .iter()
        .filter(|c| c.kind == Kind::Renew && c.ended >= from && c.ended < to)
        .map(|c| c.ended - c.started)
        .max();
    let lost = leases.iter().filter(|l| !l.is_held()).count();
    futures_util::stream::iter(leases)
        .map(|lease| lease.release())
        .buffer_unordered(CONCURRENCY)
        .for_each(|_| async {})
        .await;
    Holding {
        leases: n,
        interval,
        acquire_all,
        window: to - from,
        batches: calls.len(),
        longest_batch,
        requests: requests_after - requests_before,
        renewed: calls.iter().map(|c| c.ok).sum(),
        failed,
        cpu: cpu_before.zip(cpu_after).map(|(a, b)| a.until(&b)),
        rss_delta: rss_before
            .zip(rss_holding)
            .map(|(a, b)| b as i64 - a as i64),
        heap_delta: heap_before.zip(heap_seen).map(|(before, (least, most))| {
            (least as i64 - before as i64, most as i64 - before as i64)
        }),
        lost,
    }
}

/// Leases held by one process: 1, 100 and 10,000 renewed every second, and 100,000 at each of
/// [`Options::large_intervals`] (default: the default TTL's, 30 s renewed every 10 s); `--quick`
/// only the first two, briefly.
pub(crate) async fn holding<F, Fut>(row: &str, options: &Options, report: &mut Report, connect: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (Arc<dyn Backend>, Counter)>,
{
    let second = Duration::from_secs(1);
    let configs: Vec<(usize, Duration, Duration, Duration)> = if options.quick {
        vec![
            (1, second, 6 * second, second),
            (100, second, 6 * second, second),
        ]
    } else {
        let mut configs = vec![
            (1, second, 6 * second, 3 * second),
            (100, second, 6 * second, 3 * second),
            (10_000, second, 6 * second, 3 * second),
        ];
        // TTL three intervals (the default ratio); the window two intervals, at least 3 s.
        configs.extend(options.large_intervals.iter().map(|&interval| {
            (
                100_000,
                interval,
                3 * interval,
                (2 * interval).max(3 * second),
            )
        }));
        configs
    };
    let mut table = Table::new(
        row,
        "Leases held by one process (one Locker, one connection pool)",
        &[
            "leases",
            "renew every",
            "acquire all, s",
            "renew calls / s",
            "longest renew call, s",
            "statements / s",
            "rows renewed / s",
            "CPU, % of a core",
            "heap per lease, bytes (batch in flight)",
            "RSS growth, KiB",
            "RSS per lease, bytes",
            "lost",
            "acquires failed",
        ],
    );
    for (n, interval, ttl, window) in configs.into_iter().filter(|c| c.0 <= options.max_held) {
        let (backend, counter) = connect().await;
        let h = hold(
            backend,
            &counter,
            n,
            (interval, ttl, window),
            options.heap_bytes,
        )
        .await;
        let secs = h.window.as_secs_f64();
        let cpu = h.cpu.map_or("—".to_owned(), |c| {
            format!("{:.2}", c.as_secs_f64() / secs * 100.0)
        });
        // Below a thousand leases the growth is allocator and page noise, not a per-lease cost.
        let (rss, per_lease) = h.rss_delta.map_or(("—".to_owned(), "—".to_owned()), |d| {
            let per = if h.leases >= 1000 {
                format!("{}", d / h.leases as i64)
            } else {
                "—".to_owned()
            };
            (format!("{}", d / 1024), per)
        });
        let heap = match h.heap_delta {
            Some((least, most)) if h.leases >= 1000 => {
                let n = h.leases as i64;
                format!("{} ({})", least / n, most / n)
            }
            _ => "—".to_owned(),
        };
        table.row([
            h.leases.to_string(),
            format!("{} s", h.interval.as_secs()),
            format!("{:.1}", h.acquire_all.as_secs_f64()),
            format!("{:.2}", h.batches as f64 / secs),
            h.longest_batch
                .map_or("—".to_owned(), |d| format!("{:.2}", d.as_secs_f64())),
            format!("{:.2}", h.requests as f64 / secs),
            format!("{:.0}", h.renewed as f64 / secs),
            cpu,
            heap,
            rss,
            per_lease,
            h.lost.to_string(),
            h.failed.to_string(),
        ]);
    }
    table.note = format!(
        "CPU and resident memory are this whole process's (the bench, the locker, its renewer and \
         the driver; for SQLite also the database engine, which runs in-process); a database \
         server's own CPU is not counted. Heap per lease is the growth of the bytes live on the \
         Rust heap (counted by the bench binary's global allocator) since before the leases were \
         taken, divided by their number: the least seen during the window (between renewal \
         batches), and in brackets the most (a batch in flight, with the driver's buffers). It \
         counts everything allocated from Rust: the lease guards ({} bytes each, in the bench's \
         Vec), lease-core's per-lease state, and the backend and driver; it does not count \
         allocator overhead nor C allocations (SQLite's page cache), which the resident set \
         does. The window starts half an interval after the first renewal that follows the last \
         acquisition.",
        std::mem::size_of::<lease_core::Lease>()
    );
    report.tables.push(table);
}
