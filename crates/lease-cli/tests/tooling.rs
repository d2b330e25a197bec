//! `lease` as an installed tool: completions that load in the shell, the man page, `--version`
//! with the stores compiled in, "did you mean" on a mistyped subcommand, and the message for an
//! `s3://` store without AWS credentials. No server needed.

mod support;

use std::process::Command;

const CONFIG: i32 = 78;
const USAGE: i32 = 64;

fn lease(state: &tempfile::TempDir) -> Command {
    let mut cmd = support::lease(state.path());
    for (var, _) in std::env::vars() {
        if var.starts_with("AWS_") {
            cmd.env_remove(var);
        }
    }
    cmd
}

#[test]
fn bash_completions_load_in_bash() {
    let state = tempfile::tempdir().unwrap();
    let out = support::run(lease(&state).args(["completions", "bash"]));
    assert!(out.status.success());
    let script = state.path().join("lease.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let shown = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p lease",
            script.display()
        ))
        .output()
        .expect("bash");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.starts_with("complete ") && shown.trim_end().ends_with(" lease"),
        "complete -p lease: {shown:?}"
    );
    // The script knows the subcommands.
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["exec", "status", "doctor", "completions"] {
        assert!(text.contains(sub), "no {sub} in the bash completions");
    }
}

#[test]
fn zsh_and_fish_completions_and_only_those_shells() {
    let state = tempfile::tempdir().unwrap();
    for (shell, marker) in [("zsh", "#compdef lease"), ("fish", "complete -c lease")] {
        let out = support::run(lease(&state).args(["completions", shell]));
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(marker),
            "{shell}"
        );
    }
    let out = support::run(lease(&state).args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(USAGE));
}

#[test]
fn the_man_page_is_roff_for_section_1() {
    let state = tempfile::tempdir().unwrap();
    let out = support::run(lease(&state).arg("man"));
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH lease 1"),
        "{}",
        &page[..page.len().min(300)]
    );
    assert!(page.contains("doctor") && page.contains("exec"));
}

#[test]
fn version_lists_the_stores_compiled_in() {
    let state = tempfile::tempdir().unwrap();
    let out = support::run(lease(&state).arg("--version"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("lease {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for scheme in [
        "sqlite", "postgres", "mysql", "azblob", "s3", "gs", "az", "memory",
    ] {
        assert!(text.contains(&format!("\n  {scheme} ")), "{scheme}: {text}");
    }
}

#[test]
fn a_mistyped_subcommand_gets_a_suggestion() {
    let state = tempfile::tempdir().unwrap();
    let out = support::run(lease(&state).args(["exce", "job", "--", "true"]));
    assert_eq!(out.status.code(), Some(USAGE));
    let lines = support::stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("did you mean 'exec'?"), "{lines:?}");
}

#[test]
fn an_s3_store_without_credentials_says_where_they_are_looked_for() {
    let state = tempfile::tempdir().unwrap();
    // A metadata service that refuses at once, as off EC2 (the real one's address may hang).
    let out = support::run(
        lease(&state)
            .args(["status", "job", "--store", "s3://some-bucket/leases"])
            .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1"),
    );
    assert_eq!(out.status.code(), Some(CONFIG));
    let lines = support::stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("lease: no AWS credentials found for s3://some-bucket/leases"),
        "{lines:?}"
    );
    assert!(lines[0].contains("AWS_ACCESS_KEY_ID"));
    assert!(!lines[0].contains("/latest/api/token"), "{lines:?}");
}
