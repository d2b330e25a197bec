//! `cargo xtask bench`: `cargo bench` for backend rows that declare a bench target, with their servers up.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::Result;

use crate::backends::{BACKENDS, Workspace};
use crate::rig::Rig;
use crate::table::{self, Table};
use crate::{conformance, env, proc};

/// `cargo xtask bench`.
pub(crate) fn cmd(requested: &[String]) -> Result<bool> {
    let names: Vec<&'static str> = BACKENDS
        .iter()
        .filter(|b| b.bench.is_some())
        .map(|b| b.name)
        .collect();
    let selected = env::parse_selection(requested, &names)?;
    let workspace = Workspace::load()?;
    let rows: Vec<_> = BACKENDS
        .iter()
        .filter(|b| selected.contains(&b.name))
        .map(|b| (b, workspace.bench_exists(b)))
        .collect();
    let needed: BTreeSet<_> = rows
        .iter()
        .filter(|(_, e)| e.is_ok())
        .flat_map(|(b, _)| b.servers())
        .collect();
    let rig = Rig::up(false, &needed)?;
    let mut t = Table::new(["backend", "bench", "result", "time"]);
    let mut ok = true;
    for (b, exists) in &rows {
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
            let args = b.bench_args().expect("row has a bench");
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
