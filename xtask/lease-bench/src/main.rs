//! `lease-bench [--quick] [--rows a,b] [--parts handoff,crowd,holding] [--max-leases N]
//! [--large-intervals 10,1] [--out DIR]`: runs the rows and writes `results.json`, `report.md` and
//! `latency.svg` into DIR (default `target/bench`), after every row. `--parts` picks the
//! measurements that need a `Locker` (the comparisons always run: they give the round-trip floor);
//! `--large-intervals` the renew intervals, in seconds, of the 100,000-lease holding measurement.
//! `lease-bench merge DIR... --out DIR` merges the results of several runs into one report.

use std::path::PathBuf;
use std::process::ExitCode;

/// Counts the bytes live on the heap, so the holding measurement can tell what the lease library
/// keeps per lease apart from the process's resident set (allocator pages, a C library's own
/// allocations such as SQLite's page cache, which do not come through here).
#[allow(unsafe_code)] // `GlobalAlloc` is an unsafe trait; every call is forwarded to `System` as is.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// `System`, counting the bytes asked for that are not yet freed (the allocator's own
    /// bookkeeping and rounding are not counted).
    pub(crate) struct Counting;

    static LIVE: AtomicUsize = AtomicUsize::new(0);

    // SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
    // adds bookkeeping on a successful result, so `System`'s guarantees carry over.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller upholds `alloc`'s contract, passed on unchanged.
            let ptr = unsafe { System.alloc(layout) };
            if !ptr.is_null() {
                LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            }
            ptr
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as `alloc`.
            let ptr = unsafe { System.alloc_zeroed(layout) };
            if !ptr.is_null() {
                LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            }
            ptr
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
            unsafe { System.dealloc(ptr, layout) };
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
            let new = unsafe { System.realloc(ptr, layout, new_size) };
            if !new.is_null() {
                LIVE.fetch_add(new_size, Ordering::Relaxed);
                LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            }
            new
        }
    }

    /// Bytes allocated through Rust's global allocator and not yet freed.
    pub(crate) fn live_bytes() -> usize {
        LIVE.load(Ordering::Relaxed)
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// `lease-bench merge DIR... --out DIR`: one report from the `results.json` of several runs.
fn merge(args: Vec<String>) -> ExitCode {
    let (mut merged, mut out): (Option<lease_bench::Report>, Option<PathBuf>) = (None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--out" {
            out = args.next().map(PathBuf::from);
            continue;
        }
        let path = PathBuf::from(arg).join("results.json");
        let report: lease_bench::Report = match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|j| serde_json::from_str(&j).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("lease-bench: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        match &mut merged {
            None => merged = Some(report),
            Some(m) => m.merge(report),
        }
    }
    let (Some(report), Some(out)) = (merged, out) else {
        eprintln!("lease-bench: merge DIR... --out DIR");
        return ExitCode::FAILURE;
    };
    match lease_bench::write(&report, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lease-bench: cannot write {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if std::env::args().nth(1).as_deref() == Some("merge") {
        return merge(args.skip(1).collect());
    }
    let mut options = lease_bench::Options::full();
    options.heap_bytes = Some(counting::live_bytes);
    let mut out = PathBuf::from("target/bench");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--rows" => {
                let rows = args.next().unwrap_or_default();
                options = options.with_rows(rows.split(',').filter(|r| !r.is_empty()));
            }
            "--max-leases" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => options.max_held = n,
                None => {
                    eprintln!("lease-bench: --max-leases needs a number");
                    return ExitCode::FAILURE;
                }
            },
            "--parts" => {
                let parts = args.next().unwrap_or_default();
                options.parts = parts
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            "--large-intervals" => {
                let secs: Option<Vec<std::time::Duration>> = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.parse().ok().map(std::time::Duration::from_secs))
                    .collect();
                match secs {
                    Some(secs) if !secs.is_empty() => options.large_intervals = secs,
                    _ => {
                        eprintln!("lease-bench: --large-intervals needs seconds, e.g. 10,1");
                        return ExitCode::FAILURE;
                    }
                }
            }
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => {
                eprintln!(
                    "lease-bench: unknown argument {other:?}; rows: {:?}",
                    lease_bench::ROWS
                );
                return ExitCode::FAILURE;
            }
        }
    }
    // Partial results after each row, so a long run that is stopped keeps what it measured.
    let report = lease_bench::run_with(&options, |partial| {
        if let Err(e) = lease_bench::write(partial, &out) {
            eprintln!("lease-bench: cannot write {}: {e}", out.display());
        }
    });
    match lease_bench::write(&report, &out) {
        Ok(()) => {
            println!("{}", report.markdown());
            eprintln!("lease-bench: wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lease-bench: cannot write {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
