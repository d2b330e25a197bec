//! `cargo xtask test`: everything CI checks, in order, with a summary table and a closing
//! `N passed, N failed, N skipped` line.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::conformance::{self, Outcome};
use crate::nextest::{self, Counts};
use crate::rig::{self, ModeRequest, Rig};
use crate::services::Server;
use crate::table::{self, Table};
use crate::{env, proc};

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StepResult {
    Ok,
    Warn(String),
    Failed(String),
    Skipped(String),
    NotBuilt(String),
}

#[derive(Debug, Clone)]
struct Step {
    name: String,
    result: StepResult,
    counts: Option<Counts>,
    duration: Duration,
}

impl Step {
    fn failed(&self, ci: bool) -> bool {
        match self.result {
            StepResult::Failed(_) => true,
            StepResult::Skipped(_) => ci,
            _ => false,
        }
    }

    fn text(&self, ci: bool) -> String {
        match &self.result {
            StepResult::Ok => "ok".into(),
            StepResult::Warn(w) => format!("ok (warning: {w})"),
            StepResult::Failed(w) => format!("FAILED ({w})"),
            StepResult::Skipped(w) if ci => format!("FAILED: skipped in CI ({w})"),
            StepResult::Skipped(w) => format!("SKIPPED ({w})"),
            StepResult::NotBuilt(w) => format!("not built yet ({w})"),
        }
    }
}

/// Runs a cargo command, echoing it; counts tests with `count` if given.
fn cargo_step(name: &str, args: &[&str], count: Option<fn(&str) -> Option<Counts>>) -> Step {
    let started = Instant::now();
    eprintln!("\nxtask: ==> {name}: cargo {}", args.join(" "));
    let mut cmd = conformance::cargo();
    cmd.args(args).env_remove(env::REQUIRE);
    let (result, counts) = match proc::run_streamed(&mut cmd) {
        Err(e) => (StepResult::Failed(format!("{e:#}")), None),
        Ok(out) => {
            let counts = count.and_then(|f| f(&out.text));
            let result = if out.status.success() {
                StepResult::Ok
            } else {
                match counts {
                    Some(c) if c.failed > 0 => StepResult::Failed(format!("{} failed", c.failed)),
                    None if out.text.contains("could not compile") => {
                        StepResult::Failed("build failed".into())
                    }
                    _ => StepResult::Failed(format!("exit {}", out.status.code().unwrap_or(-1))),
                }
            };
            (result, counts)
        }
    };
    Step {
        name: name.into(),
        result,
        counts,
        duration: started.elapsed(),
    }
}

/// The rig's variables for the torture step, without the endpoints of the servers the torture
/// rig starts (and restarts mid-run) itself: Azurite and S3. The rig's own are in memory and
/// belong to this process, so the torture run could not restart them; a server from the user's
/// environment (`user_set`) is passed on and used without restarts.
fn torture_env(
    rig_env: Vec<(String, String)>,
    user_set: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    let own = [
        env::var_for(Server::Azurite),
        env::var_for(Server::S3),
        env::var_for(Server::Redis),
    ];
    rig_env
        .into_iter()
        .filter(|(k, _)| !own.contains(&k.as_str()) || user_set(k))
        .collect()
}

/// `cargo xtask torture --quick [extra]` against the rig's servers (docs/safety.md).
fn torture_step(rig: &Rig, extra: &[&str]) -> Step {
    let started = Instant::now();
    let name = ["torture --quick"]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("\nxtask: ==> torture: cargo xtask {name}");
    let result = std::env::current_exe()
        .map_err(anyhow::Error::from)
        .and_then(|exe| {
            let mut cmd = std::process::Command::new(exe);
            cmd.args(["torture", "--quick"])
                .args(extra)
                .envs(torture_env(rig.env(), |k| env::user_value(k).is_some()));
            proc::run_streamed(&mut cmd)
        });
    Step {
        name,
        result: match result {
            Ok(out) if out.status.success() => StepResult::Ok,
            Ok(_) => StepResult::Failed("violations or errors: see its table".into()),
            Err(e) => StepResult::Failed(format!("{e:#}")),
        },
        counts: None,
        duration: started.elapsed(),
    }
}

/// `cargo deny check licenses bans sources` (release.rs says why not advisories).
fn deny_step() -> Step {
    let started = Instant::now();
    let result = match crate::release::run_deny() {
        Ok(true) => StepResult::Ok,
        Ok(false) => StepResult::Failed("see its report".into()),
        Err(e) => StepResult::Failed(format!("{e:#}")),
    };
    Step {
        name: format!("deny ({})", crate::release::DENY_CHECKS.join(", ")),
        result,
        counts: None,
        duration: started.elapsed(),
    }
}

/// `cargo xtask bench --quick` against this run's servers: every benchmark row still runs.
fn bench_step(rig: &Rig) -> Step {
    let started = Instant::now();
    eprintln!("\nxtask: ==> bench: cargo xtask bench --quick");
    let result = std::env::current_exe()
        .map_err(anyhow::Error::from)
        .and_then(|exe| {
            let mut cmd = std::process::Command::new(exe);
            cmd.args(["bench", "--quick"]).envs(rig.env());
            proc::run_streamed(&mut cmd)
        });
    Step {
        name: "bench --quick".into(),
        result: match result {
            Ok(out) if out.status.success() => StepResult::Ok,
            Ok(_) => StepResult::Failed("a row failed or was skipped: see its table".into()),
            Err(e) => StepResult::Failed(format!("{e:#}")),
        },
        counts: None,
        duration: started.elapsed(),
    }
}

fn render(steps: &[Step], ci: bool) -> String {
    let mut t = Table::new(["step", "result", "tests", "time"]);
    for s in steps {
        t.row([
            s.name.clone(),
            s.text(ci),
            s.counts.map_or_else(|| "-".into(), |c| c.to_string()),
            table::duration(s.duration),
        ]);
    }
    t.render()
}

fn total(steps: &[Step]) -> Counts {
    let mut c = Counts::default();
    for s in steps.iter().filter_map(|s| s.counts) {
        c.add(s);
    }
    c
}

/// `cargo xtask test`.
pub(crate) fn cmd(mode: ModeRequest) -> Result<bool> {
    let ci = env::in_ci();
    let all_started = Instant::now();
    let plan = conformance::plan(&[])?;
    let workspace_filter = crate::backends::workspace_filter(
        plan.iter()
            .filter(|(_, exists)| exists.is_ok())
            .map(|(b, _)| *b),
    );
    let mut steps = vec![
        cargo_step("fmt", &["fmt", "--all", "--", "--check"], None),
        cargo_step(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
            None,
        ),
        // Rustdoc on every public item, with no broken links or warnings.
        cargo_step(
            "docs",
            &[
                "--config",
                "build.rustdocflags=[\"-D\", \"warnings\"]",
                "doc",
                "--no-deps",
                "--workspace",
                "--all-features",
            ],
            None,
        ),
        // `--workspace` includes xtask (not a default member), so the rig's own tests run here.
        // Backend suites are left to their conformance rows, which give them their servers.
        cargo_step(
            "workspace tests",
            &[
                "nextest",
                "run",
                "--workspace",
                "--no-tests=warn",
                "--no-fail-fast",
                "-E",
                &workspace_filter,
            ],
            Some(nextest::parse_nextest_summary),
        ),
        // Property tests of inputs in packages whose other suites run in backend rows only.
        cargo_step(
            "fuzz (proptest)",
            &[
                "nextest",
                "run",
                "-p",
                "lease-sql",
                "--test",
                "fuzz_table_names",
            ],
            Some(nextest::parse_nextest_summary),
        ),
        cargo_step(
            "doc tests",
            &["test", "--workspace", "--doc"],
            Some(nextest::parse_libtest_results),
        ),
        // Manifests, READMEs and file lists of the published crates; `cargo xtask package` (run
        // by the hosted workflow) also builds each from its tarball.
        cargo_step(
            "package (no verify)",
            &crate::release::package_args(false),
            None,
        ),
        deny_step(),
    ];

    // Servers: every local one (so the rig itself is exercised on every run), or in containers mode
    // only those the existing suites need.
    let needed = conformance::needed_servers(&plan);
    let containers = rig::use_containers(mode);
    let wanted: BTreeSet<Server> = if containers {
        needed.clone()
    } else {
        Server::ALL.iter().copied().collect()
    };
    let up_started = Instant::now();
    let rig = Rig::up(containers, &wanted)?;
    let needed_failures: Vec<String> = rig
        .failures()
        .iter()
        .filter(|(s, _)| needed.contains(s))
        .map(|(s, _)| s.name().to_string())
        .collect();
    let other_failures: Vec<String> = rig
        .failures()
        .iter()
        .filter(|(s, _)| !needed.contains(s))
        .map(|(s, why)| format!("{}: {why}", s.name()))
        .collect();
    let up_result = if !needed_failures.is_empty() {
        // The rows that need them report it (and fail in CI).
        StepResult::Warn(format!("could not start {}", needed_failures.join(", ")))
    } else if !other_failures.is_empty() {
        StepResult::Warn(format!(
            "no suite needs it yet: {}",
            other_failures.join("; ")
        ))
    } else {
        StepResult::Ok
    };
    steps.push(Step {
        name: format!(
            "services up ({})",
            if containers { "containers" } else { "local" }
        ),
        result: up_result,
        counts: None,
        duration: up_started.elapsed(),
    });

    let mut results = Vec::new();
    for (b, exists) in &plan {
        let r = conformance::run_row(b, exists, &rig);
        steps.push(Step {
            name: format!("conformance {}", r.backend),
            result: match &r.outcome {
                Outcome::Passed => StepResult::Ok,
                Outcome::Failed(w) => StepResult::Failed(w.clone()),
                Outcome::Skipped(w) => StepResult::Skipped(w.clone()),
                Outcome::NotBuilt(w) => StepResult::NotBuilt(w.clone()),
            },
            counts: r.counts,
            duration: r.duration,
        });
        results.push(r);
    }

    steps.push(torture_step(&rig, &[]));
    // The semaphore row (docs/semaphore.md): 3 permits, 16 contenders in 2 processes, on SQLite.
    steps.push(torture_step(
        &rig,
        &["--backend", "sqlite", "--semaphore", "3"],
    ));
    steps.push(bench_step(&rig));

    let down_started = Instant::now();
    let down = rig.down();
    steps.push(Step {
        name: "services down".into(),
        result: match down {
            Ok(()) => StepResult::Ok,
            Err(e) => StepResult::Failed(format!("{e:#}")),
        },
        counts: None,
        duration: down_started.elapsed(),
    });

    println!("\nconformance:\n{}", conformance::render(&results, ci));
    println!(
        "summary ({}{}):\n{}",
        if ci { "CI, " } else { "" },
        table::duration(all_started.elapsed()),
        render(&steps, ci)
    );
    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| s.failed(ci))
        .map(|s| s.name.as_str())
        .collect();
    if failed.is_empty() {
        println!("xtask test: ok");
    } else {
        println!("xtask test: FAILED ({})", failed.join(", "));
    }
    let c = total(&steps);
    println!(
        "{} passed, {} failed, {} skipped",
        c.passed, c.failed, c.skipped
    );
    Ok(failed.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torture_starts_its_own_azurite_and_moto_unless_the_user_named_them() {
        let rig_env = vec![
            (env::POSTGRES_URL.to_string(), "postgres://x".to_string()),
            (env::S3_ENDPOINT.to_string(), "http://127.0.0.1:5000".into()),
            (env::S3_REGION.to_string(), "us-east-1".into()),
            (
                env::AZURITE_BLOB_URL.to_string(),
                "http://127.0.0.1:10000/a".into(),
            ),
        ];
        let names = |v: Vec<(String, String)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            names(torture_env(rig_env.clone(), |_| false)),
            [env::POSTGRES_URL, env::S3_REGION]
        );
        assert_eq!(
            names(torture_env(rig_env, |k| k == env::S3_ENDPOINT)),
            [env::POSTGRES_URL, env::S3_ENDPOINT, env::S3_REGION]
        );
    }

    fn step(name: &str, result: StepResult, counts: Option<Counts>) -> Step {
        Step {
            name: name.into(),
            result,
            counts,
            duration: Duration::from_secs(3),
        }
    }

    #[test]
    fn summary_marks_failures_and_skips() {
        let steps = vec![
            step("fmt", StepResult::Ok, None),
            step(
                "workspace tests",
                StepResult::Ok,
                Some(Counts {
                    passed: 40,
                    failed: 0,
                    skipped: 2,
                }),
            ),
            step(
                "conformance postgres",
                StepResult::Skipped("postgres unavailable".into()),
                None,
            ),
            step(
                "conformance cli",
                StepResult::NotBuilt("no package".into()),
                None,
            ),
            step(
                "conformance memory",
                StepResult::Failed("1 failed".into()),
                Some(Counts {
                    passed: 9,
                    failed: 1,
                    skipped: 0,
                }),
            ),
        ];
        let local = render(&steps, false);
        assert!(local.contains("SKIPPED (postgres unavailable)"));
        assert!(local.contains("not built yet (no package)"));
        let failed_local: Vec<_> = steps
            .iter()
            .filter(|s| s.failed(false))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(failed_local, vec!["conformance memory"]);
        let failed_ci: Vec<_> = steps
            .iter()
            .filter(|s| s.failed(true))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            failed_ci,
            vec!["conformance postgres", "conformance memory"]
        );
        assert_eq!(
            total(&steps),
            Counts {
                passed: 49,
                failed: 1,
                skipped: 2
            }
        );
    }
}
