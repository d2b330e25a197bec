//! `lease-bench [--quick] [--rows a,b] [--max-leases N] [--out DIR]`: runs the rows and writes `results.json`,
//! `report.md` and `latency.svg` into DIR (default `target/bench`), after every row.
//! `lease-bench merge DIR... --out DIR` merges the results of several runs into one report.

use std::path::PathBuf;
use std::process::ExitCode;

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
