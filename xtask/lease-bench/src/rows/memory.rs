//! `memory`: the protocol layer's own cost. `MemoryBackend` answers in a few hundred
//! nanoseconds, so what a `Locker` adds over a bare backend call is what shows here: options and
//! key checks, the holder deadline, the renewer registration, the guard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, HolderMetadata, HolderToken, LeaseKey, Locker,
    MemoryBackend, ReleaseRequest,
};

use super::process::thread_cpu;
use super::wrap::Recorder;
use crate::report::{Comparison, Table};
use crate::sample::{interleave, measure};
use crate::{Options, Report};

const ROW: &str = "memory";
const SERVER: &str = "MemoryBackend, one thread";
const TTL: Duration = Duration::from_secs(30);

/// Runs the row on a current-thread runtime: everything, renewer included, on one core.
pub(crate) fn run(options: &Options, report: &mut Report) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(measure_row(options, report));
}

async fn measure_row(options: &Options, report: &mut Report) {
    let plan = options.plan();
    let backend = Recorder::new(Arc::new(MemoryBackend::new()));
    let locker = Locker::builder(backend.clone()).ttl(TTL).build().unwrap();
    let meta = HolderMetadata::new("bench").unwrap();
    let count = || backend.calls();
    let bare_acquire = async |key: &LeaseKey| {
        let holder = HolderToken::generate();
        let request = AcquireRequest::new(key.clone(), holder, TTL, meta.clone());
        let out = backend.acquire(&request).await.unwrap();
        assert!(matches!(out, AcquireOutcome::Acquired(_)));
        holder
    };

    let paired = interleave(
        plan,
        async |i| {
            let key = format!("locker/{}", i % 16);
            let (lease, s) = measure(&count, locker.try_acquire(&key)).await;
            lease.unwrap().expect("free key").release().await.unwrap();
            s
        },
        async |i| {
            let key = LeaseKey::new(format!("bare/{}", i % 16)).unwrap();
            let (holder, s) = measure(&count, bare_acquire(&key)).await;
            backend
                .release(&ReleaseRequest::new(key, holder))
                .await
                .unwrap();
            s
        },
    )
    .await;
    report.comparisons.push(Comparison::new(
        ROW,
        SERVER,
        "acquire (free key)",
        "lease: Locker::try_acquire",
        "Backend::acquire",
        &paired,
    ));

    let paired = interleave(
        plan,
        async |i| {
            let key = format!("locker/{}", i % 16);
            let lease = locker.try_acquire(&key).await.unwrap().expect("free key");
            measure(&count, lease.release()).await.1
        },
        async |i| {
            let key = LeaseKey::new(format!("bare/{}", i % 16)).unwrap();
            let holder = bare_acquire(&key).await;
            let request = ReleaseRequest::new(key, holder);
            measure(&count, backend.release(&request)).await.1
        },
    )
    .await;
    report.comparisons.push(Comparison::new(
        ROW,
        SERVER,
        "release",
        "lease: Lease::release",
        "Backend::release",
        &paired,
    ));

    report
        .tables
        .push(core_overhead(options, &locker, &backend).await);
}

/// Acquire + release cycles per second on one core: bare backend calls, then through the
/// `Locker`, in alternating slices so both see the same machine. CPU is this thread's.
async fn core_overhead(options: &Options, locker: &Locker, backend: &Recorder) -> Table {
    let slice = if options.quick {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(250)
    };
    let slices = if options.quick { 2 } else { 12 };
    let meta = HolderMetadata::new("bench").unwrap();
    let key = LeaseKey::new("cycle").unwrap();
    // (cycles, wall, cpu) for bare and locker.
    let mut totals = [(0u64, Duration::ZERO, Duration::ZERO); 2];
    for _ in 0..slices {
        for (which, total) in totals.iter_mut().enumerate() {
            let (started, cpu_before) = (Instant::now(), thread_cpu());
            let mut cycles = 0u64;
            while started.elapsed() < slice {
                if which == 0 {
                    let holder = HolderToken::generate();
                    let request = AcquireRequest::new(key.clone(), holder, TTL, meta.clone());
                    backend.acquire(&request).await.unwrap();
                    backend
                        .release(&ReleaseRequest::new(key.clone(), holder))
                        .await
                        .unwrap();
                } else {
                    let lease = locker.try_acquire("cycle-locker").await.unwrap().unwrap();
                    lease.release().await.unwrap();
                }
                cycles += 1;
            }
            total.0 += cycles;
            total.1 += started.elapsed();
            total.2 += thread_cpu()
                .zip(cpu_before)
                .map_or(Duration::ZERO, |(a, b)| a.saturating_sub(b));
        }
    }
    let per_cycle = |t: &(u64, Duration, Duration)| t.2.as_secs_f64() * 1e6 / t.0.max(1) as f64;
    let mut table = Table::new(
        ROW,
        "Core overhead: acquire + release cycles on one core (current-thread runtime)",
        &[
            "path",
            "cycles / s",
            "CPU µs per cycle",
            "µs the core adds per cycle",
        ],
    );
    for (name, t) in [
        ("bare Backend::acquire + Backend::release", &totals[0]),
        ("Locker::try_acquire + Lease::release", &totals[1]),
    ] {
        let added = if std::ptr::eq(t, &totals[1]) {
            format!("{:.2}", per_cycle(&totals[1]) - per_cycle(&totals[0]))
        } else {
            "—".into()
        };
        table.row([
            name.to_owned(),
            format!("{:.0}", t.0 as f64 / t.1.as_secs_f64()),
            format!("{:.2}", per_cycle(t)),
            added,
        ]);
    }
    table.note = format!(
        "{slices} alternating slices of {} ms each; CPU from /proc/thread-self/schedstat. \
         Both paths go through the same call-counting wrapper.",
        slice.as_millis()
    );
    table
}
