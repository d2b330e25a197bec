//! `lease` on object storage (`s3://`) through lease-objstore, against the moto S3 server named by
//! `LEASE_TEST_S3_ENDPOINT` (`cargo xtask test` sets it). Credentials and endpoint reach the
//! binary the way a user sets them: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint.
//! Skipped when unset, unless `LEASE_TEST_REQUIRE=1`.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::unique;

const USAGE: i32 = 64;

fn endpoint() -> Option<String> {
    match std::env::var("LEASE_TEST_S3_ENDPOINT") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("LEASE_TEST_REQUIRE").as_deref() != Ok("1"),
                "LEASE_TEST_S3_ENDPOINT is not set and LEASE_TEST_REQUIRE=1"
            );
            eprintln!("SKIPPED: LEASE_TEST_S3_ENDPOINT is not set");
            None
        }
    }
}

/// Creates a bucket with one plain HTTP request (moto creates buckets on an unsigned PUT).
fn create_bucket(endpoint: &str, bucket: &str) {
    let authority = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "create bucket: {response}"
    );
}

/// The binary with only the variables this test means it to see.
fn lease(state: &std::path::Path, endpoint: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lease"));
    for (var, _) in std::env::vars() {
        if var.starts_with("AWS_") || var.starts_with("LEASE_") && !var.starts_with("LEASE_TEST") {
            cmd.env_remove(var);
        }
    }
    cmd.env("XDG_STATE_HOME", state.join("xdg"))
        .env("HOME", state.join("home"))
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "secret-that-must-not-leak")
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn exec_runs_under_an_s3_lease_with_rising_tokens() {
    let Some(endpoint) = endpoint() else {
        return;
    };
    let bucket = unique("lease-cli").to_ascii_lowercase();
    create_bucket(&endpoint, &bucket);
    let state = tempfile::tempdir().unwrap();
    let store = format!("s3://{bucket}/cli/tests");
    let name = unique("exec");
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let out = lease(state.path(), &endpoint)
            .args(["exec", &name, "--store", &store, "--", "sh", "-c"])
            .arg("echo \"$LEASE_NAME $LEASE_FENCING_TOKEN\"")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("secret-that-must-not-leak"), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (printed_name, token) = stdout.trim().split_once(' ').unwrap();
        assert_eq!(printed_name, name);
        tokens.push(token.parse::<u64>().unwrap());
    }
    assert_eq!(
        tokens[1],
        tokens[0] + 1,
        "release keeps the counter: {tokens:?}"
    );

    // Held by a running exec: a second one with --no-wait is refused.
    let mut holder = lease(state.path(), &endpoint)
        .args(["exec", &name, "--store", &store, "--", "sleep", "5"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = lease(state.path(), &endpoint)
        .args(["exec", &name, "--store", &store, "--no-wait", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a held key was granted twice");
    holder.kill().unwrap();
    let _ = holder.wait();
}

#[test]
fn sigkill_of_lease_kills_the_command_group_on_s3() {
    let Some(endpoint) = endpoint() else {
        return;
    };
    let bucket = unique("sigkill").to_ascii_lowercase();
    create_bucket(&endpoint, &bucket);
    let dir = tempfile::tempdir().unwrap();
    support::sigkill_of_lease_kills_the_command_group(
        || lease(dir.path(), &endpoint),
        &format!("s3://{bucket}/cli/tests"),
        dir.path(),
        Duration::from_secs(2),
    );
}

#[test]
fn list_on_s3() {
    let Some(endpoint) = endpoint() else {
        return;
    };
    let bucket = unique("list").to_ascii_lowercase();
    create_bucket(&endpoint, &bucket);
    let dir = tempfile::tempdir().unwrap();
    support::list_shows_leases_under_a_prefix(
        || lease(dir.path(), &endpoint),
        &format!("s3://{bucket}/cli/tests"),
        dir.path(),
        true,
    );
}

#[test]
fn file_stores_are_refused_as_usage_errors() {
    let state = tempfile::tempdir().unwrap();
    let out = lease(state.path(), "http://127.0.0.1:9")
        .args(["exec", "k", "--store", "file:///tmp/leases", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(USAGE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sqlite:///"));
}
