//! `lease` on Redis (`redis://`), against the server named by `LEASE_TEST_REDIS_URL`
//! (`cargo xtask test` sets it). Skipped when unset, unless `LEASE_TEST_REQUIRE=1`.

mod support;

use std::time::Duration;

use support::{lease, run, unique};

fn redis_url() -> Option<String> {
    match std::env::var("LEASE_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("LEASE_TEST_REQUIRE").as_deref() != Ok("1"),
                "LEASE_TEST_REDIS_URL is not set and LEASE_TEST_REQUIRE=1"
            );
            eprintln!("SKIPPED: LEASE_TEST_REDIS_URL is not set");
            None
        }
    }
}

#[test]
fn exec_runs_under_a_redis_lease_with_rising_tokens() {
    let Some(store) = redis_url() else { return };
    let state = tempfile::tempdir().unwrap();
    let name = unique("redis-exec");
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let out = run(lease(state.path())
            .args(["exec", &name, "--store", &store, "--", "sh", "-c"])
            .arg("echo \"$LEASE_NAME $LEASE_FENCING_TOKEN\""));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (printed_name, token) = stdout.trim().split_once(' ').unwrap();
        assert_eq!(printed_name, name);
        tokens.push(token.parse::<u64>().unwrap());
    }
    assert!(tokens[1] > tokens[0], "{tokens:?}");
    // `status` reads it back: free, keeping the last token.
    let out = run(lease(state.path()).args(["status", &name, "--store", &store, "--json"]));
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(status["state"], "free", "{status}");
    assert_eq!(status["fencing_token"], tokens[1], "{status}");
}

#[test]
fn sigkill_of_lease_kills_the_command_group_on_redis() {
    let Some(store) = redis_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    support::sigkill_of_lease_kills_the_command_group(
        || lease(dir.path()),
        &store,
        dir.path(),
        Duration::from_secs(2),
    );
}

#[test]
fn redis_store_errors_are_typed_and_keep_passwords_secret() {
    let state = tempfile::tempdir().unwrap();
    let out = run(lease(state.path()).args(["exec", "k", "--store", "redis://", "--", "true"]));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let Some(store) = redis_url() else { return };
    // The test server has no password: one sent anyway is refused, and not echoed.
    let Some((_, host)) = store.split_once("://") else {
        panic!("{store}")
    };
    let with_password = format!("redis://:hunter2-secret@{host}");
    let out = run(lease(state.path()).args(["exec", "k", "--store", &with_password, "--", "true"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("hunter2-secret"),
        "the password leaked: {stderr}"
    );
}
