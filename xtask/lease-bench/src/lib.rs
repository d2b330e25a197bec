//! Benchmarks of every `lease` backend, in one harness.
//!
//! Each operation's samples are taken *interleaved* with its floor's (the raw request the
//! operation cannot do without, on the same server and connection kind): operation, floor,
//! floor, operation, … after a warm-up. A slow phase of the machine then lands on both, and the
//! ratio of medians comes with a 95 % bootstrap interval over the pairs, so a noisy run shows as
//! a wide interval instead of a wrong number. The seed libraries' request sequences run as
//! baselines in the same run. Besides the comparisons: hand-off, takeover, the cost of holding
//! many leases, and the protocol layer's own overhead on `MemoryBackend`.
//!
//! `cargo xtask bench` starts the servers and runs the `lease-bench` binary on a release build;
//! `cargo xtask bench --quick` runs every row with a handful of samples (inside `cargo xtask test`,
//! to check the rows still run, never their timings). Servers come from the `LEASE_TEST_*`
//! variables of docs/testing.md; a row whose server is not configured is reported as not run.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let options = lease_bench::Options::quick();
//! let report = lease_bench::run(&options);
//! std::fs::write("bench.md", report.markdown())?;
//! # Ok(())
//! # }
//! ```

pub mod report;
mod rows;
pub mod sample;
pub mod stats;
pub mod svg;

use std::time::{SystemTime, UNIX_EPOCH};

pub use report::{Comparison, Report, Table};
pub use sample::{Paired, Plan, Sample, interleave};

/// The rows `run` knows, in the order it runs them.
pub const ROWS: &[&str] = &[
    "memory",
    "objstore-memory",
    "sqlite",
    "postgres",
    "mysql",
    "azure",
    "objstore-s3",
    "objstore-azure",
];

/// What to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Few samples and small scales: checks the rows run.
    pub quick: bool,
    /// Rows to run (names of [`ROWS`]); empty: all.
    pub rows: Vec<String>,
    /// The largest number of leases one process holds in the holding measurement (full run:
    /// 1, 100, 10,000 and 100,000, those up to this).
    pub max_held: usize,
    /// `LEASE_TEST_*` variables, looked up here before the process environment (a caller that
    /// runs the bench in-process cannot set its own environment safely).
    pub vars: Vec<(String, String)>,
    /// Bytes live on the heap right now, from a counting global allocator (the `lease-bench`
    /// binary installs one): the holding measurement then reports the heap held per lease beside
    /// the resident-set growth. `None`: that column shows "—".
    pub heap_bytes: Option<fn() -> usize>,
    /// Which measurements of a row with a `Locker` to run besides its comparisons (which give the
    /// round-trip floor): any of `handoff`, `crowd`, `holding`; empty: all.
    pub parts: Vec<String>,
    /// The renew intervals the 100,000-lease holding measurement runs at (full run only; default
    /// the realistic one, 10 s: the default TTL of 30 s renewed every TTL / 3).
    pub large_intervals: Vec<std::time::Duration>,
}

impl Options {
    /// Every row, full sample counts.
    pub fn full() -> Options {
        Options {
            quick: false,
            rows: Vec::new(),
            max_held: 100_000,
            vars: Vec::new(),
            heap_bytes: None,
            parts: Vec::new(),
            large_intervals: vec![std::time::Duration::from_secs(10)],
        }
    }

    /// Every row, a handful of samples each.
    pub fn quick() -> Options {
        Options {
            quick: true,
            rows: Vec::new(),
            max_held: 100_000,
            vars: Vec::new(),
            heap_bytes: None,
            parts: Vec::new(),
            large_intervals: vec![std::time::Duration::from_secs(10)],
        }
    }

    /// Only these rows.
    pub fn with_rows(mut self, rows: impl IntoIterator<Item = impl Into<String>>) -> Options {
        self.rows = rows.into_iter().map(Into::into).collect();
        self
    }

    /// With these variables (taking precedence over the environment).
    pub fn with_vars(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Options {
        self.vars.extend(vars);
        self
    }

    /// A variable from [`Options::vars`], else from the environment; `None` when unset or empty.
    pub fn var(&self, name: &str) -> Option<String> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
    }

    fn wants(&self, row: &str) -> bool {
        self.rows.is_empty() || self.rows.iter().any(|r| r == row)
    }

    /// Whether the measurement `part` (`handoff`, `crowd`, `holding`) is to run.
    pub fn wants_part(&self, part: &str) -> bool {
        self.parts.is_empty() || self.parts.iter().any(|p| p == part)
    }

    /// The sampling plan.
    pub fn plan(&self) -> Plan {
        if self.quick { Plan::QUICK } else { Plan::FULL }
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Runs the selected rows and returns what they measured. Rows whose server is not configured
/// are listed in [`Report::skipped`]; a row that fails panics (a bench that half-ran must not
/// look like a result).
pub fn run(options: &Options) -> Report {
    run_with(options, |_| {})
}

/// [`run`], calling `after_row` with the report so far after each row (to keep partial results
/// of a long run).
pub fn run_with(options: &Options, mut after_row: impl FnMut(&Report)) -> Report {
    let plan = options.plan();
    let mut report = Report {
        meta: report::Meta {
            quick: options.quick,
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
            samples: plan.samples,
            warmup: plan.warmup,
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            load: vec![load()],
        },
        ..Report::default()
    };
    if options.wants("memory") {
        rows::memory::run(options, &mut report);
        after_row(&report);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        for row in ROWS.iter().filter(|r| **r != "memory" && options.wants(r)) {
            eprintln!("lease-bench: {row}");
            rows::run(row, options, &mut report).await;
            after_row(&report);
        }
    });
    report.meta.load.push(load());
    report
}

/// Writes `results.json`, `report.md` and `latency.svg` into `dir` (created if missing).
pub fn write(report: &Report, dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("results.json"), json)?;
    std::fs::write(dir.join("report.md"), report.markdown())?;
    std::fs::write(dir.join("latency.svg"), svg::render(report))
}
