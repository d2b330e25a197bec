//! `lease-bench [--quick] [--rows a,b] [--out DIR]`: runs the rows and writes `results.json`,
//! `report.md` and `latency.svg` into DIR (default `target/bench`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut options = lease_bench::Options::full();
    let mut out = PathBuf::from("target/bench");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--rows" => {
                let rows = args.next().unwrap_or_default();
                options = options.with_rows(rows.split(',').filter(|r| !r.is_empty()));
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
    let report = lease_bench::run(&options);
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
