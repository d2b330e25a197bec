//! `cargo xtask conformance`: each backend's suite against its servers, as a table.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::backends::{BACKENDS, Backend, Workspace};
use crate::nextest::{self, Counts};
use crate::rig::{self, ModeRequest, Rig};
use crate::services::Server;
use crate::table::{self, Table};
use crate::{env, proc, services};

/// How a suite ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It ran and passed.
    Passed,
    /// It ran and failed (or did not build).
    Failed(String),
    /// It did not run because its package or test target does not exist yet. Never a failure.
    NotBuilt(String),
    /// It did not run (or ran no test) for a reason that is a failure in CI.
    Skipped(String),
}

impl Outcome {
    /// Whether it fails the run (`ci`: skips count as failures).
    pub(crate) fn is_failure(&self, ci: bool) -> bool {
        match self {
            Outcome::Failed(_) => true,
            Outcome::Skipped(_) => ci,
            Outcome::Passed | Outcome::NotBuilt(_) => false,
        }
    }

    /// Short text for tables.
    pub(crate) fn text(&self, ci: bool) -> String {
        match self {
            Outcome::Passed => "passed".into(),
            Outcome::Failed(why) => format!("FAILED ({why})"),
            Outcome::NotBuilt(why) => format!("not built yet ({why})"),
            Outcome::Skipped(why) if ci => format!("FAILED: skipped in CI ({why})"),
            Outcome::Skipped(why) => format!("SKIPPED ({why})"),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub(crate) struct RowResult {
    /// Backend name.
    pub(crate) backend: &'static str,
    /// The servers it ran against.
    pub(crate) server: String,
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// Test counts, when it ran.
    pub(crate) counts: Option<Counts>,
    /// Wall-clock time.
    pub(crate) duration: Duration,
}

/// The selected rows with whether their suite exists.
pub(crate) fn plan(requested: &[String]) -> Result<Vec<(&'static Backend, Result<(), String>)>> {
    let names: Vec<&'static str> = BACKENDS.iter().map(|b| b.name).collect();
    let selected = env::parse_selection(requested, &names)?;
    let workspace = Workspace::load();
    Ok(BACKENDS
        .iter()
        .filter(|b| selected.contains(&b.name))
        .map(|b| {
            let exists = match &workspace {
                Ok(ws) => ws.suite_exists(b),
                Err(e) => Err(format!("{e:#}")),
            };
            (b, exists)
        })
        .collect())
}

/// Whether `cargo metadata` itself failed (then every row "does not exist", which is a failure).
pub(crate) fn metadata_error(plan: &[(&Backend, Result<(), String>)]) -> Option<String> {
    plan.iter().find_map(|(_, r)| {
        r.as_ref()
            .err()
            .filter(|e| e.starts_with("cargo metadata"))
            .cloned()
    })
}

/// Servers needed by the rows whose suites exist.
pub(crate) fn needed_servers(plan: &[(&Backend, Result<(), String>)]) -> BTreeSet<Server> {
    plan.iter()
        .filter(|(_, exists)| exists.is_ok())
        .flat_map(|(b, _)| b.servers())
        .collect()
}

fn server_column(b: &Backend, rig: &Rig) -> String {
    let mut parts: Vec<String> = Vec::new();
    for s in b.needs {
        parts.push(rig.endpoint(*s).map_or_else(
            || format!("{} (unavailable)", s.name()),
            |e| e.describe.clone(),
        ));
    }
    for s in b.optional {
        if let Some(e) = rig.endpoint(*s) {
            parts.push(format!("+ {}", e.describe));
        }
    }
    if parts.is_empty() {
        "in-process".into()
    } else {
        parts.join("; ")
    }
}

/// Runs one row's suite.
pub(crate) fn run_row(b: &'static Backend, exists: &Result<(), String>, rig: &Rig) -> RowResult {
    let started = Instant::now();
    let server = if exists.is_ok() {
        server_column(b, rig)
    } else {
        let names: Vec<&str> = b.needs.iter().map(|s| s.name()).collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join(", ")
        }
    };
    let done = |outcome, counts| RowResult {
        backend: b.name,
        server: server.clone(),
        outcome,
        counts,
        duration: started.elapsed(),
    };
    if let Err(why) = exists {
        if why.starts_with("cargo metadata") {
            return done(Outcome::Failed(why.clone()), None);
        }
        return done(Outcome::NotBuilt(why.clone()), None);
    }
    if let Some(missing) = b.needs.iter().find(|s| rig.endpoint(**s).is_none()) {
        let why = rig.failure(*missing).unwrap_or("not started");
        return done(
            Outcome::Skipped(format!("{} unavailable: {why}", missing.name())),
            None,
        );
    }
    eprintln!(
        "\nxtask: ==> {} : cargo {}",
        b.name,
        b.nextest_args().join(" ")
    );
    let mut cmd = cargo();
    cmd.args(b.nextest_args())
        .args(["--no-tests=warn", "--no-fail-fast"])
        .envs(rig.env());
    let output = match proc::run_streamed(&mut cmd) {
        Ok(o) => o,
        Err(e) => return done(Outcome::Failed(format!("{e:#}")), None),
    };
    let counts = nextest::parse_nextest_summary(&output.text);
    let outcome = match (output.status.success(), counts) {
        (true, Some(c)) if c.ran() == 0 => Outcome::Skipped("the suite ran no test".into()),
        (true, _) => Outcome::Passed,
        (false, Some(c)) if c.failed > 0 => Outcome::Failed(format!("{} failed", c.failed)),
        (false, None) if output.text.contains("could not compile") => {
            Outcome::Failed("build failed".into())
        }
        (false, _) => Outcome::Failed(format!("cargo nextest exited with {}", output.status)),
    };
    done(outcome, counts)
}

/// A `cargo` command run from the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(services::workspace_root());
    cmd
}

/// Renders the result table.
pub(crate) fn render(results: &[RowResult], ci: bool) -> String {
    let mut t = Table::new(["backend", "server", "result", "tests", "time"]);
    for r in results {
        t.row([
            r.backend.to_string(),
            r.server.clone(),
            r.outcome.text(ci),
            r.counts.map_or_else(|| "-".to_string(), |c| c.to_string()),
            table::duration(r.duration),
        ]);
    }
    let mut out = t.render();
    let skipped: Vec<&RowResult> = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Skipped(_)))
        .collect();
    if !skipped.is_empty() && !ci {
        let names: Vec<&str> = skipped.iter().map(|r| r.backend).collect();
        out.push_str(&format!(
            "\n!!!!!!!! SKIPPED: {} did not really run ({}). With CI=true this fails the run. !!!!!!!!\n",
            if names.len() == 1 { "1 backend suite" } else { "some backend suites" },
            names.join(", ")
        ));
    }
    out
}

/// Total counts of the rows that ran.
pub(crate) fn total(results: &[RowResult]) -> Counts {
    let mut c = Counts::default();
    for r in results {
        if let Some(rc) = r.counts {
            c.add(rc);
        }
    }
    c
}

/// `cargo xtask conformance`.
pub(crate) fn cmd(requested: &[String], mode: ModeRequest) -> Result<bool> {
    let ci = env::in_ci();
    let plan = plan(requested)?;
    if let Some(err) = metadata_error(&plan) {
        eprintln!("xtask: {err}");
    }
    let needed = needed_servers(&plan);
    let containers = !needed.is_empty() && rig::use_containers(mode);
    let rig = Rig::up(containers, &needed)?;
    let results: Vec<RowResult> = plan
        .iter()
        .map(|(b, exists)| run_row(b, exists, &rig))
        .collect();
    rig.down()?;
    println!("\n{}", render(&results, ci));
    let c = total(&results);
    let failed = results.iter().any(|r| r.outcome.is_failure(ci));
    println!(
        "{} passed, {} failed, {} skipped",
        c.passed, c.failed, c.skipped
    );
    Ok(!failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(backend: &'static str, outcome: Outcome, counts: Option<Counts>) -> RowResult {
        RowResult {
            backend,
            server: "x".into(),
            outcome,
            counts,
            duration: Duration::from_millis(1500),
        }
    }

    #[test]
    fn skips_fail_only_in_ci() {
        let skip = Outcome::Skipped("postgres unavailable".into());
        assert!(!skip.is_failure(false));
        assert!(skip.is_failure(true));
        assert!(!Outcome::NotBuilt("no package".into()).is_failure(true));
        assert!(Outcome::Failed("1 failed".into()).is_failure(false));
    }

    #[test]
    fn table_shows_skips_loudly() {
        let results = vec![
            row(
                "memory",
                Outcome::Passed,
                Some(Counts {
                    passed: 12,
                    failed: 0,
                    skipped: 1,
                }),
            ),
            row(
                "postgres",
                Outcome::Skipped("postgres unavailable: refused".into()),
                None,
            ),
            row(
                "cli",
                Outcome::NotBuilt("no package lease-cli".into()),
                None,
            ),
        ];
        let local = render(&results, false);
        assert!(local.contains("SKIPPED (postgres unavailable: refused)"));
        assert!(local.contains("!!!!!!!! SKIPPED"));
        assert!(local.contains("not built yet (no package lease-cli)"));
        assert!(local.contains("12 passed, 0 failed, 1 skipped"));
        let ci = render(&results, true);
        assert!(ci.contains("FAILED: skipped in CI"));
        assert!(!ci.contains("!!!!!!!!"));
        assert_eq!(
            total(&results),
            Counts {
                passed: 12,
                failed: 0,
                skipped: 1
            }
        );
    }

    #[test]
    fn needed_servers_come_from_existing_suites_only() {
        let pg = BACKENDS.iter().find(|b| b.name == "postgres").unwrap();
        let sqlite = BACKENDS.iter().find(|b| b.name == "sqlite").unwrap();
        let az = BACKENDS.iter().find(|b| b.name == "azure").unwrap();
        let plan = vec![
            (pg, Ok(())),
            (sqlite, Ok(())),
            (az, Err("no test target".to_string())),
        ];
        let needed: Vec<Server> = needed_servers(&plan).into_iter().collect();
        assert_eq!(needed, vec![Server::Postgres, Server::Sqlite]);
    }
}
