//! What the metrics cost: acquire + release, and one renewal per held lease, on `MemoryBackend`
//! (so the protocol's own work, not a store's round trip, is what is measured).
//!
//! Build it both ways and compare (docs/observability.md has the numbers):
//!
//! ```text
//! cargo bench -p lease-core --bench metrics_cost                      # feature off
//! cargo bench -p lease-core --bench metrics_cost --features metrics   # on, Prometheus recorder
//! LEASE_BENCH_NO_RECORDER=1 cargo bench -p lease-core --bench metrics_cost --features metrics
//! ```
//!
//! Each figure is the fastest of 15 rounds (on a shared, loaded machine the fastest round is the
//! one least disturbed by other work) and, in brackets, the median.

use std::time::{Duration, Instant};

use lease_core::{Locker, MemoryBackend};

const ACQUIRES_PER_ROUND: u32 = 5_000;
const LEASES: usize = 10_000;
const ROUNDS: usize = 15;
const TTL: Duration = Duration::from_secs(30);

/// The fastest and the median of `xs`, formatted.
fn summary(mut xs: Vec<f64>) -> String {
    xs.sort_by(f64::total_cmp);
    format!("{:.0} ns ({:.0})", xs[0], xs[xs.len() / 2])
}

/// Installs the exporter's recorder (what `lease --metrics-addr` uses), unless asked not to.
/// Returns what renders the scrape text, to check the metrics were really recorded.
#[cfg(feature = "metrics")]
fn install() -> (
    &'static str,
    Option<metrics_exporter_prometheus::PrometheusHandle>,
) {
    if std::env::var_os("LEASE_BENCH_NO_RECORDER").is_some() {
        return ("on, no recorder", None);
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("install the recorder");
    ("on, Prometheus recorder", Some(handle))
}

fn main() {
    #[cfg(feature = "metrics")]
    let (mode, handle) = install();
    #[cfg(not(feature = "metrics"))]
    let mode = "off";

    // The paused clock makes renewals due exactly when the bench says, with no real waiting.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (acquire_ns, renew_ns) = runtime.block_on(async {
        let locker = Locker::builder(MemoryBackend::new())
            .ttl(TTL)
            .build()
            .unwrap();
        let mut acquire = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..ACQUIRES_PER_ROUND {
                let lease = locker.acquire_now("bench").await.unwrap();
                lease.release().await.unwrap();
            }
            acquire.push(started.elapsed().as_nanos() as f64 / f64::from(ACQUIRES_PER_ROUND));
        }

        let mut held = Vec::with_capacity(LEASES);
        for i in 0..LEASES {
            held.push(locker.acquire_now(format!("held-{i}")).await.unwrap());
        }
        let interval = locker.options().renew_interval;
        let mut renew = Vec::new();
        for _ in 0..ROUNDS {
            // The renewal task renews every lease in one batch at the interval; the extra
            // millisecond lets it finish before the clock moves on.
            let started = Instant::now();
            tokio::time::sleep(interval + Duration::from_millis(1)).await;
            renew.push(started.elapsed().as_nanos() as f64 / LEASES as f64);
        }
        assert!(held.iter().all(|lease| lease.is_held()));
        (summary(acquire), summary(renew))
    });

    #[cfg(feature = "metrics")]
    if let Some(handle) = handle {
        let text = handle.render();
        let renewals = format!(
            "lease_renewals_total{{backend=\"memory\"}} {}",
            ROUNDS * LEASES
        );
        assert!(text.contains(&renewals), "renewals not recorded:\n{text}");
    }
    println!("metrics {mode}: acquire+release {acquire_ns}, renewal {renew_ns} per lease");
}
