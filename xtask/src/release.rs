//! Release readiness: `cargo package` for every published crate, and `cargo deny`.
//!
//! `cargo xtask package` packages every crate and builds each one from its own tarball (cargo's
//! verify step: what crates.io users will compile); `cargo xtask test` runs the quick form
//! (`--no-verify`: the manifests, READMEs and file lists) and `cargo deny check licenses bans
//! sources`. The advisory database is a git repository on GitHub, which CI cannot reach, so
//! advisories are left to the hosted workflow's cargo-deny job.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::conformance::cargo;
use crate::{proc, services};

/// The cargo-deny the rig installs (`cargo install --locked`: about 5 minutes on 2 busy cores).
pub(crate) const CARGO_DENY_VERSION: &str = "0.20.2";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What `cargo deny check` checks here (advisories need the database from GitHub).
pub(crate) const DENY_CHECKS: &[&str] = &["licenses", "bans", "sources"];

/// `cargo package` arguments: every workspace crate but xtask and its benchmark harness (never
/// published).
pub(crate) fn package_args(verify: bool) -> Vec<&'static str> {
    let mut args = vec![
        "package",
        "--workspace",
        "--exclude",
        "xtask",
        "--exclude",
        "lease-bench",
    ];
    // The check is about what gets packaged and whether it builds, not about git state: a
    // developer's uncommitted edits are packaged as they are.
    args.push("--allow-dirty");
    if !verify {
        args.push("--no-verify");
    }
    args
}

/// `cargo xtask package`: every crate packaged and built from its tarball.
pub(crate) fn cmd_package() -> Result<bool> {
    let args = package_args(true);
    eprintln!("xtask: ==> cargo {}", args.join(" "));
    let out = proc::run_streamed(cargo().args(&args))?;
    Ok(out.status.success())
}

/// The `cargo-deny` binary: one of the pinned version on `PATH`, or installed with
/// `cargo install --locked` into `target/rig/tools/` (kept there, like the rig's other tools).
pub(crate) fn install_cargo_deny() -> Result<PathBuf> {
    let reports_pinned = |bin: &std::path::Path| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DENY_VERSION))
    };
    let on_path = PathBuf::from("cargo-deny");
    if proc::on_path("cargo-deny") && reports_pinned(&on_path) {
        return Ok(on_path);
    }
    let root = services::target_dir().join("rig/tools");
    let bin = root.join("bin/cargo-deny");
    if bin.exists() && reports_pinned(&bin) {
        return Ok(bin);
    }
    let build = root.join("build");
    eprintln!(
        "xtask: cargo install --locked cargo-deny@{CARGO_DENY_VERSION} (a few minutes, once)"
    );
    let out = proc::run_captured(
        cargo()
            .args(["install", "--locked", "--quiet", "--root"])
            .arg(&root)
            .arg(format!("cargo-deny@{CARGO_DENY_VERSION}"))
            // Its own build directory: the workspace's stays unlocked for the other steps.
            .env("CARGO_TARGET_DIR", &build),
        INSTALL_TIMEOUT,
    )?;
    let _ = fs::remove_dir_all(&build);
    if !out.status.success() || !bin.exists() {
        bail!("cargo install cargo-deny failed: {}", out.tail(5));
    }
    Ok(bin)
}

/// `cargo deny check licenses bans sources` arguments for the binary itself.
pub(crate) fn deny_args() -> Vec<&'static str> {
    let mut args = vec!["check"];
    args.extend_from_slice(DENY_CHECKS);
    args
}

/// Runs cargo-deny; `Ok(false)` when a check fails.
pub(crate) fn run_deny() -> Result<bool> {
    let bin = install_cargo_deny().context("cannot install cargo-deny")?;
    let mut cmd = Command::new(&bin);
    cmd.args(deny_args())
        .current_dir(services::workspace_root());
    eprintln!(
        "xtask: ==> cargo deny {} (advisories: the database is on GitHub, out of CI's reach)",
        deny_args().join(" ")
    );
    Ok(proc::run_streamed(&mut cmd)?.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_leaves_out_xtask_and_verifies_unless_told() {
        let verify = package_args(true);
        assert!(verify.windows(2).any(|w| w == ["--exclude", "xtask"]));
        assert!(verify.windows(2).any(|w| w == ["--exclude", "lease-bench"]));
        assert!(!verify.contains(&"--no-verify"));
        assert!(package_args(false).contains(&"--no-verify"));
    }

    #[test]
    fn deny_checks_everything_but_advisories() {
        assert_eq!(deny_args(), ["check", "licenses", "bans", "sources"]);
    }

    #[test]
    fn deny_toml_gives_a_reason_for_every_skipped_duplicate() {
        let text = fs::read_to_string(services::workspace_root().join("deny.toml")).unwrap();
        assert!(text.contains("multiple-versions = \"deny\""));
        let skips: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("{ crate = "))
            .collect();
        assert!(!skips.is_empty());
        for skip in skips {
            assert!(skip.contains("reason = \""), "no reason: {skip}");
        }
    }
}
