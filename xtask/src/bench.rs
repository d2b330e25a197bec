//! `cargo xtask bench`: every benchmark row of `lease-bench` (operations interleaved with their
//! floors, hand-off, crowd, holding, core overhead) with its servers up, plus any backend row
//! that still declares a `cargo bench` target of its own.
//!
//! - full run: `cargo run --release -p lease-bench` (a release build; minutes),
//! - `--quick`: the same rows with a handful of samples, run inside this process (lease-bench is
//!   linked into xtask, so `cargo xtask test` compiles nothing for it twice); it checks that the
//!   rows still run, never their timings.
//!
//! Results go to `target/bench/` (`--quick`: `target/bench/quick/`): `results.json`, `report.md`
//! and `latency.svg`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::backends::{BACKENDS, Workspace};
use crate::rig::Rig;
use crate::services::{self, Server};
use crate::table::{self, Table};
use crate::{conformance, env, proc};

/// The servers a lease-bench row needs.
fn servers(row: &str) -> &'static [Server] {
    match row {
        "postgres" => &[Server::Postgres],
        "mysql" => &[Server::Mysql],
        "sqlite" => &[Server::Sqlite],
        "azure" | "objstore-azure" => &[Server::Azurite],
        "objstore-s3" => &[Server::S3],
        _ => &[],
    }
}

/// Where results are written.
fn out_dir(quick: bool) -> PathBuf {
    let dir = services::target_dir().join("bench");
    if quick { dir.join("quick") } else { dir }
}

/// `cargo xtask bench [--backend ...] [--quick]`.
pub(crate) fn cmd(requested: &[String], quick: bool) -> Result<bool> {
    // Rows of the harness, then backend rows with a bench target of their own.
    let legacy: Vec<_> = BACKENDS
        .iter()
        .filter(|b| b.bench.is_some() && !lease_bench::ROWS.contains(&b.name))
        .collect();
    let names: Vec<&'static str> = lease_bench::ROWS
        .iter()
        .copied()
        .chain(legacy.iter().map(|b| b.name))
        .collect();
    let selected = env::parse_selection(requested, &names)?;
    let rows: Vec<&'static str> = lease_bench::ROWS
        .iter()
        .copied()
        .filter(|r| selected.contains(r))
        .collect();
    let workspace = Workspace::load()?;
    let legacy: Vec<_> = legacy
        .into_iter()
        .filter(|b| selected.contains(&b.name))
        .map(|b| (b, workspace.bench_exists(b)))
        .collect();
    let needed: BTreeSet<Server> = rows
        .iter()
        .flat_map(|r| servers(r).iter().copied())
        .chain(
            legacy
                .iter()
                .filter(|(_, e)| e.is_ok())
                .flat_map(|(b, _)| b.servers()),
        )
        .collect();
    let rig = Rig::up(false, &needed)?;
    let mut t = Table::new(["backend", "bench", "result", "time"]);
    let mut ok = true;

    if !rows.is_empty() {
        let started = Instant::now();
        let out = out_dir(quick);
        let outcome = if quick {
            run_in_process(&rows, &rig, &out)
        } else {
            run_release(&rows, &rig, &out)
        };
        let elapsed = table::duration(started.elapsed());
        match outcome {
            Ok(report) => {
                for row in &rows {
                    let result = match report.skipped.iter().find(|(r, _)| r == row) {
                        Some((_, why)) => {
                            ok &= !env::in_ci();
                            format!("SKIPPED ({why})")
                        }
                        None => "ok".to_string(),
                    };
                    t.row([
                        row.to_string(),
                        "lease-bench".into(),
                        result,
                        elapsed.clone(),
                    ]);
                }
                println!("{}", report.markdown());
                eprintln!("xtask: bench results in {}", out.display());
            }
            Err(e) => {
                ok = false;
                t.row([
                    rows.join(","),
                    "lease-bench".into(),
                    format!("FAILED ({e:#})"),
                    elapsed,
                ]);
            }
        }
    }

    for (b, exists) in &legacy {
        let started = Instant::now();
        let bench = b.bench.unwrap_or("-");
        let result = if let Err(why) = exists {
            format!("not built yet ({why})")
        } else if let Some(missing) = b.needs.iter().find(|s| rig.endpoint(**s).is_none()) {
            ok &= !env::in_ci();
            format!(
                "SKIPPED ({} unavailable: {})",
                missing.name(),
                rig.failure(*missing).unwrap_or("not started")
            )
        } else {
            let mut args = b.bench_args().expect("row has a bench");
            if quick {
                // Checks that the bench runs, not its timings: the test profile's build (the one
                // the suites already made) instead of a second, optimised build of everything.
                args.extend(["--profile".into(), "test".into()]);
            }
            eprintln!("\nxtask: ==> {} : cargo {}", b.name, args.join(" "));
            let mut cmd = conformance::cargo();
            cmd.args(&args).envs(rig.env());
            match proc::run_streamed(&mut cmd) {
                Ok(out) if out.status.success() => "ok".to_string(),
                Ok(out) => {
                    ok = false;
                    format!("FAILED (exit {})", out.status.code().unwrap_or(-1))
                }
                Err(e) => {
                    ok = false;
                    format!("FAILED ({e:#})")
                }
            }
        };
        t.row([
            b.name.to_string(),
            bench.to_string(),
            result,
            table::duration(started.elapsed()),
        ]);
    }
    rig.down()?;
    println!("\n{}", t.render());
    Ok(ok)
}

/// `--quick`: the harness in this process. A row that fails panics; that is caught and reported.
fn run_in_process(rows: &[&str], rig: &Rig, out: &Path) -> Result<lease_bench::Report> {
    let options = lease_bench::Options::quick()
        .with_rows(rows.iter().copied())
        .with_vars(rig.env());
    let report = std::panic::catch_unwind(|| lease_bench::run(&options))
        .map_err(|_| anyhow::anyhow!("a row panicked: see its message above"))?;
    lease_bench::write(&report, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(report)
}

/// The full run: the release build of the `lease-bench` binary.
fn run_release(rows: &[&str], rig: &Rig, out: &Path) -> Result<lease_bench::Report> {
    let mut cmd = conformance::cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "lease-bench", "--"])
        .args(["--rows", &rows.join(",")])
        .arg("--out")
        .arg(out)
        .envs(rig.env());
    eprintln!("\nxtask: ==> lease-bench (release): {cmd:?}");
    let status = proc::run_streamed(&mut cmd)?;
    anyhow::ensure!(
        status.status.success(),
        "lease-bench exited with {}",
        status.status
    );
    let json = std::fs::read_to_string(out.join("results.json"))
        .with_context(|| format!("reading {}", out.join("results.json").display()))?;
    serde_json::from_str(&json).context("parsing results.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_harness_row_but_the_in_process_ones_brings_its_server_up() {
        for row in lease_bench::ROWS {
            let in_process = matches!(*row, "memory" | "objstore-memory");
            assert_eq!(servers(row).is_empty(), in_process, "{row}");
        }
    }
}
