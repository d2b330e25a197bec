//! The real `lease` binary, run as separate processes against real stores.
//!
//! SQLite tests always run. The PostgreSQL and MariaDB variants run when `LEASE_TEST_POSTGRES_URL`
//! / `LEASE_TEST_MYSQL_URL` are set (`cargo xtask test` sets them); with `LEASE_TEST_REQUIRE=1` a
//! missing variable fails the test instead of skipping it.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const USAGE: i32 = 64;
const UNAVAILABLE: i32 = 69;
const HELD: i32 = 73;
const TIMEOUT: i32 = 74;
const LOST: i32 = 75;

// ---------------------------------------------------------------------------------------------
// Mutual exclusion and fencing across processes, per store.

/// 8 `lease exec` processes at once; each command appends `start T` / `end T` with its fencing
/// token. No two commands may overlap, and the tokens must strictly increase.
fn no_overlap(store: &str, dir: &Path) {
    let name = unique("overlap");
    let log = dir.join(format!("{name}.log"));
    let script = format!(
        "echo \"start $LEASE_FENCING_TOKEN\" >> '{log}'; sleep 0.1; echo \"end $LEASE_FENCING_TOKEN\" >> '{log}'",
        log = log.display()
    );
    let children: Vec<Child> = (0..8)
        .map(|_| {
            lease(dir)
                .args([
                    "--store", store, "exec", &name, "--ttl", "10s", "--", "sh", "-c", &script,
                ])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "exec failed: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 16, "{text}");
    let mut last = 0u64;
    for pair in lines.chunks(2) {
        let start: u64 = pair[0]
            .strip_prefix("start ")
            .expect(&text)
            .parse()
            .unwrap();
        let end: u64 = pair[1].strip_prefix("end ").expect(&text).parse().unwrap();
        assert_eq!(start, end, "overlap or interleaving:\n{text}");
        assert!(start > last, "tokens not strictly increasing:\n{text}");
        last = start;
    }
}

#[test]
fn eight_concurrent_execs_on_sqlite_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    no_overlap(&sqlite_url(dir.path()), dir.path());
}

/// The server URL from `var`, or `None` (with a loud SKIPPED) when unset and not required.
fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let required = std::env::var("LEASE_TEST_REQUIRE").is_ok_and(|v| v == "1");
            assert!(!required, "{var} is not set and LEASE_TEST_REQUIRE=1");
            eprintln!("SKIPPED: {var} is not set; this test did not run");
            None
        }
    }
}

#[test]
fn eight_concurrent_execs_on_postgres_never_overlap() {
    let Some(url) = server_url("LEASE_TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    no_overlap(&url, dir.path());
}

#[test]
fn eight_concurrent_execs_on_mariadb_never_overlap() {
    let Some(url) = server_url("LEASE_TEST_MYSQL_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    no_overlap(&url, dir.path());
}

// ---------------------------------------------------------------------------------------------
// Expiry, loss and signals.

#[test]
fn sigkill_of_lease_kills_the_command_group_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    sigkill_of_lease_kills_the_command_group(
        || lease(dir.path()),
        &sqlite_url(dir.path()),
        dir.path(),
        Duration::from_secs(2),
    );
}

#[test]
fn sigkill_of_lease_kills_the_command_group_on_postgres() {
    let Some(url) = server_url("LEASE_TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    sigkill_of_lease_kills_the_command_group(
        || lease(dir.path()),
        &url,
        dir.path(),
        Duration::from_secs(2),
    );
}

#[test]
fn sigkill_of_lease_kills_the_command_group_on_mariadb() {
    let Some(url) = server_url("LEASE_TEST_MYSQL_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    sigkill_of_lease_kills_the_command_group(
        || lease(dir.path()),
        &url,
        dir.path(),
        Duration::from_secs(2),
    );
}

/// Background processes the command leaves behind are killed before the lease is released: the
/// next holder never runs beside them.
#[test]
fn leftovers_of_the_command_are_killed_before_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("leftover");
    let journal = dir.path().join("journal");
    let script = format!("(sleep 0.3; echo late >> '{}') & exit 0", journal.display());
    let out =
        run(lease(dir.path()).args(["--store", &store, "exec", &name, "--", "sh", "-c", &script]));
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !journal.exists(),
        "a leftover of the command ran after the release"
    );
}

#[test]
fn no_wait_on_a_held_lease_exits_with_the_held_code_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("nowait");
    let ready = dir.path().join("ready");
    let script = format!("echo up > '{}'; exec sleep 30", ready.display());
    let mut holder = lease(dir.path())
        .args([
            "--store",
            &store,
            "exec",
            &name,
            "--holder",
            "the-holder",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    wait_for_file(&ready, Duration::from_secs(10));
    let started = Instant::now();
    let out =
        run(lease(dir.path()).args(["--store", &store, "exec", &name, "--no-wait", "--", "true"]));
    assert_eq!(out.status.code(), Some(HELD), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let err = stderr_lines(&out);
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("held by the-holder"), "{err:?}");

    // --timeout gives up with its own code; silent while waiting when stderr is not a terminal.
    let args = [
        "--store",
        &store,
        "exec",
        &name,
        "--timeout",
        "800ms",
        "--",
        "true",
    ];
    let out = run(lease(dir.path()).args(args));
    assert_eq!(out.status.code(), Some(TIMEOUT), "{out:?}");
    let err = stderr_lines(&out);
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("gave up waiting for lease"), "{err:?}");
    assert!(err[0].contains("held by the-holder"), "{err:?}");
    // With -v, the waiting line shows who holds it.
    let out = run(lease(dir.path()).arg("-v").args(args));
    assert_eq!(out.status.code(), Some(TIMEOUT), "{out:?}");
    let err = stderr_lines(&out);
    let expected = format!("lease: waiting for lease {name}: held by the-holder since ");
    assert!(err[0].starts_with(&expected), "{err:?}");
    // Tokens are the clock in microseconds on a new key (docs/protocol.md).
    assert!(err[0].contains(", expires in ~"), "{err:?}");
    assert!(token_after(&err[0], "fencing token ").is_some(), "{err:?}");

    // status shows the holder.
    let out = run(lease(dir.path()).args(["--store", &store, "status", &name, "--json"]));
    assert!(out.status.success());
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"holder\":\"the-holder\""), "{json}");
    assert!(json.contains("\"state\":\"held\""), "{json}");

    // SIGTERM is forwarded to the command (sleep dies of it) and the lease released.
    signal(holder.id(), "-TERM");
    let status = wait_with_limit(&mut holder, Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + 15));
    let out = run(lease(dir.path()).args(["--store", &store, "status", &name, "--json"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"state\":\"free\""));
}

#[test]
fn signals_are_forwarded_and_the_lease_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("sigint");
    let ready = dir.path().join("ready");
    let log = dir.path().join("log");
    let script = format!(
        "trap 'echo INT >> \"{log}\"; exit 3' INT; echo up > '{ready}'; while :; do sleep 0.05; done",
        log = log.display(),
        ready = ready.display()
    );
    let mut holder = lease(dir.path())
        .args([
            "--store", &store, "exec", &name, "--ttl", "30s", "--", "sh", "-c", &script,
        ])
        .spawn()
        .unwrap();
    wait_for_file(&ready, Duration::from_secs(10));
    signal(holder.id(), "-INT");
    let status = wait_with_limit(&mut holder, Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(3),
        "lease should exit with the command's status"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "INT\n");
    // Released, not left to expire (the TTL is 30 s).
    let out =
        run(lease(dir.path()).args(["--store", &store, "exec", &name, "--no-wait", "--", "true"]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_broken_lease_is_lost_and_the_command_terminated() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("lost");
    let ready = dir.path().join("ready");
    let log = dir.path().join("log");
    let script = format!(
        "trap 'echo TERM >> \"{log}\"; exit 0' TERM; echo up > '{ready}'; while :; do sleep 0.05; done",
        log = log.display(),
        ready = ready.display()
    );
    let mut holder = lease(dir.path())
        .args([
            "--store",
            &store,
            "exec",
            &name,
            "--ttl",
            "2s",
            "--kill-after",
            "5s",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&ready, Duration::from_secs(10));
    // Two renewals go by; the holder must still be running.
    std::thread::sleep(Duration::from_millis(1600));
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder stopped before the break"
    );
    assert!(!log.exists(), "the command was signalled before the break");

    let out = run(lease(dir.path()).args(["--store", &store, "break", &name, "--yes"]));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("broke lease"),
        "{out:?}"
    );
    let broke = Instant::now();
    let status = wait_with_limit(&mut holder, Duration::from_secs(10));
    assert_eq!(status.code(), Some(LOST));
    // It noticed at a renewal: within about a renew interval (2s/3), with slack for slow machines.
    assert!(
        broke.elapsed() < Duration::from_secs(5),
        "{:?}",
        broke.elapsed()
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "TERM\n");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut holder.stderr.take().unwrap(), &mut err).unwrap();
    // One line from lease, and no log line before it (the command's shell may add its own).
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("lease:")).collect();
    assert_eq!(ours.len(), 1, "{err}");
    assert!(ours[0].starts_with("lease: lost lease"), "{err}");
    assert!(!err.contains("ERROR") && !err.contains("WARN"), "{err}");
}

#[test]
fn a_command_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("kill");
    let ready = dir.path().join("ready");
    let script = format!(
        "trap '' TERM; echo up > '{}'; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut holder = lease(dir.path())
        .args([
            "--store",
            &store,
            "exec",
            &name,
            "--ttl",
            "2s",
            "--kill-after",
            "500ms",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    wait_for_file(&ready, Duration::from_secs(10));
    let out = run(lease(dir.path()).args(["--store", &store, "break", &name, "--yes"]));
    assert!(out.status.success(), "{out:?}");
    let status = wait_with_limit(&mut holder, Duration::from_secs(10));
    assert_eq!(status.code(), Some(LOST));
}

#[test]
fn by_default_a_command_ignoring_sigterm_is_killed_within_the_safety_margin() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("kill-default");
    let ready = dir.path().join("ready");
    let script = format!(
        "trap '' TERM; echo up > '{}'; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut holder = lease(dir.path())
        .args([
            "--store", &store, "exec", &name, "--ttl", "2s", "--", "sh", "-c", &script,
        ])
        .spawn()
        .unwrap();
    wait_for_file(&ready, Duration::from_secs(10));
    let out = run(lease(dir.path()).args(["--store", &store, "break", &name, "--yes"]));
    assert!(out.status.success(), "{out:?}");
    let broken = std::time::Instant::now();
    // The loss is seen at the next renewal (TTL/3), then SIGKILL follows within half the 200 ms
    // margin: far sooner than any fixed grace period of seconds.
    let status = wait_with_limit(&mut holder, Duration::from_secs(10));
    assert_eq!(status.code(), Some(LOST));
    let took = broken.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "the command ignoring SIGTERM ran {took:?} after the break"
    );
}

// ---------------------------------------------------------------------------------------------
// Usage errors: one line, code 64.

fn assert_usage_error(args: &[&str], expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = run(lease(dir.path()).args(args));
    let err = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(USAGE), "{args:?}: {err:?}");
    assert_eq!(err.len(), 1, "{args:?}: expected one line, got {err:?}");
    assert!(err[0].starts_with("lease: "), "{err:?}");
    assert!(
        err[0].contains(expect),
        "{args:?}: {err:?} lacks {expect:?}"
    );
}

#[test]
fn a_bad_store_url_is_a_one_line_usage_error() {
    assert_usage_error(
        &["--store", "not a url", "status", "x"],
        "invalid store URL 'not a url'",
    );
    assert_usage_error(
        &["--store", "postgres://app:hunter2@db:54x2/l", "status", "x"],
        "app:***@db",
    );
    let dir = tempfile::tempdir().unwrap();
    let out =
        run(lease(dir.path()).args(["--store", "postgres://app:hunter2@db:54x2/l", "status", "x"]));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

#[test]
fn a_bad_duration_is_a_one_line_usage_error() {
    assert_usage_error(
        &[
            "--store",
            "memory://",
            "exec",
            "x",
            "--ttl",
            "5x",
            "--",
            "true",
        ],
        "--ttl",
    );
    assert_usage_error(
        &[
            "--store",
            "memory://",
            "exec",
            "x",
            "--timeout",
            "soon",
            "--",
            "true",
        ],
        "--timeout",
    );
    assert_usage_error(
        &[
            "--store",
            "memory://",
            "exec",
            "x",
            "--ttl",
            "0s",
            "--",
            "true",
        ],
        "smallest TTL that works",
    );
}

#[test]
fn an_unknown_scheme_is_a_one_line_usage_error() {
    assert_usage_error(
        &["--store", "etcd://u:pw@cache/0", "status", "x"],
        "unknown store scheme 'etcd://'",
    );
}

#[test]
fn a_file_store_is_refused_as_unsafe() {
    assert_usage_error(
        &["--store", "file:///tmp/leases", "status", "x"],
        "local files have no conditional update",
    );
}

#[test]
fn other_usage_errors() {
    assert_usage_error(
        &["--store", "memory://", "exec", "bad name", "--", "true"],
        "lease name",
    );
    // Missing arguments are named.
    assert_usage_error(&["--store", "memory://", "exec", "x"], "<COMMAND>");
    assert_usage_error(&["--store", "memory://", "status", "--json"], "<NAME>");
    assert_usage_error(
        &[
            "--store",
            "memory://",
            "exec",
            "x",
            "--no-wait",
            "--timeout",
            "1s",
            "--",
            "true",
        ],
        "cannot be used with",
    );
    // No terminal to confirm on, no --yes.
    assert_usage_error(&["--store", "memory://", "break", "x"], "--yes");
}

#[test]
fn an_unreachable_server_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "postgres://u:pw@127.0.0.1:1/db",
        "mysql://u:pw@127.0.0.1:1/db",
    ] {
        let started = Instant::now();
        let out = run(lease(dir.path()).args(["--store", url, "status", "x"]));
        let took = started.elapsed();
        let err = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(UNAVAILABLE), "{err:?}");
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].contains("u:***@127.0.0.1:1"), "{err:?}");
        // The cause, not the pool's "timed out", and without waiting out the pool's 5 s.
        assert!(err[0].contains("Connection refused"), "{err:?}");
        assert!(took < Duration::from_secs(4), "{url}: {took:?}");
    }
}

#[test]
fn bad_ttls_are_refused_at_once_naming_what_works() {
    for (ttl, expect) in [
        ("1ms", "the smallest TTL that works is 56ms"),
        ("0", "the smallest TTL that works is 56ms"),
        ("10years", "the longest TTL this store grants is 365d"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_url(dir.path());
        let started = Instant::now();
        let out =
            run(lease(dir.path())
                .args(["--store", &store, "exec", "job", "--ttl", ttl, "--", "true"]));
        let err = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(USAGE), "{ttl}: {err:?}");
        assert_eq!(err.len(), 1, "{ttl}: {err:?}");
        assert!(err[0].contains(expect), "{ttl}: {err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{ttl}: {:?}",
            started.elapsed()
        );
        assert!(
            !dir.path().join("leases.db").exists(),
            "{ttl}: the store was touched"
        );
    }
}

/// The writing end of a pipe whose reading end is already closed: every write fails (`EPIPE`).
fn pipe_without_reader() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer.into()
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let out = run(lease(dir.path()).args(["--store", &store, "exec", "job", "--", "true"]));
    assert!(out.status.success());
    // `lease status job --json | true`: the reader is gone before anything is written. The
    // pipe's reading end is closed before `lease` starts (closing it after the spawn would race
    // with the write on a loaded machine, which then lands in the pipe's buffer).
    let out = lease(dir.path())
        .args(["--store", &store, "status", "job", "--json"])
        .stdout(pipe_without_reader())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A closed stderr: the error has nowhere to go, and that is no reason to panic.
    let status = lease(dir.path())
        .args(["--store", "etcd://nowhere", "status", "job"])
        .stdout(Stdio::null())
        .stderr(pipe_without_reader())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(USAGE));
    // `lease demo | head -1`: several tasks write.
    let mut child = lease(dir.path())
        .args(["--store", "memory://", "demo", "--hold", "20ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("contenders"), "{first}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn read_only_commands_never_create_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent-dir/x.db");
    let store = format!("sqlite://{}", missing.display());
    for args in [
        vec!["status", "job"],
        vec!["watch", "job", "--count", "1"],
        vec!["list"],
    ] {
        let out = run(lease(dir.path()).args(["--store", &store]).args(&args));
        let err = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {err:?}");
        assert_eq!(err.len(), 1, "{args:?}: {err:?}");
        assert!(err[0].contains("does not exist"), "{args:?}: {err:?}");
    }
    assert!(!dir.path().join("nonexistent-dir").exists());
    // An existing database without the table: said, and not created.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let store = format!("sqlite://{}", empty.display());
    for _ in 0..2 {
        let out = run(lease(dir.path()).args(["--store", &store, "status", "job"]));
        let err = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(78), "{err:?}");
        assert!(err[0].contains("no leases table"), "{err:?}");
    }
}

#[test]
fn a_server_database_without_the_table_is_not_changed_by_status() {
    let Some(url) = server_url("LEASE_TEST_POSTGRES_URL") else {
        return;
    };
    // A search path naming a schema that does not exist: the unqualified table is nowhere.
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = format!(
        "{url}{sep}options=-csearch_path%3D{}",
        unique("none").replace('-', "_")
    );
    let dir = tempfile::tempdir().unwrap();
    let out = run(lease(dir.path()).args(["--store", &store, "status", "job", "--json"]));
    let err = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(78), "{err:?}");
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("no leases table"), "{err:?}");
    assert!(!err[0].contains(" at line "), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Exit statuses, environment, default store.

#[test]
fn the_command_status_and_environment_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("status");
    let out = run(lease(dir.path()).args([
        "--store",
        &store,
        "exec",
        &name,
        "--holder",
        "me@host",
        "--",
        "sh",
        "-c",
        "echo \"$LEASE_NAME|$LEASE_FENCING_TOKEN|$LEASE_HOLDER\"; exit 7",
    ]));
    assert_eq!(out.status.code(), Some(7));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let parts: Vec<&str> = printed.split('|').collect();
    assert_eq!(
        (parts[0], parts[2]),
        (name.as_str(), "me@host"),
        "{printed}"
    );
    assert!(parts[1].parse::<u64>().is_ok_and(|t| t > 0), "{printed}");
    let out = run(lease(dir.path()).args([
        "--store",
        &store,
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ]));
    assert_eq!(out.status.code(), Some(128 + 15));
    let out = run(lease(dir.path()).args([
        "--store",
        &store,
        "exec",
        &name,
        "--",
        "/nonexistent/command",
    ]));
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(stderr_lines(&out).len(), 1);
    // Each run got a new token; the counter survived every release.
    let out = run(lease(dir.path()).args(["--store", &store, "status", &name, "--json"]));
    let json = String::from_utf8_lossy(&out.stdout);
    let first: u64 = parts[1].parse().unwrap();
    let expected = format!("\"fencing_token\":{}", first + 2);
    assert!(json.contains(&expected), "{json}");
    assert!(json.contains("\"state\":\"free\""), "{json}");
}

#[test]
fn the_default_store_is_a_sqlite_file_in_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("default");
    let out = run(lease(dir.path()).args(["exec", &name, "--", "true"]));
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("xdg/lease/leases.db").is_file());
    // Without XDG_STATE_HOME: ~/.local/state/lease.
    let out = run(lease(dir.path())
        .env_remove("XDG_STATE_HOME")
        .args(["exec", &name, "--", "true"]));
    assert!(out.status.success(), "{out:?}");
    assert!(
        dir.path()
            .join("home/.local/state/lease/leases.db")
            .is_file()
    );
    // LEASE_STORE picks another one.
    let other = dir.path().join("other.db");
    let out = run(lease(dir.path())
        .env("LEASE_STORE", format!("sqlite://{}", other.display()))
        .args(["exec", &name, "--", "true"]));
    assert!(out.status.success(), "{out:?}");
    assert!(other.is_file());
}

// ---------------------------------------------------------------------------------------------
// watch, elect, demo.

#[test]
fn watch_prints_holder_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("watch");
    // watch never creates the store: make it first.
    let out = run(lease(dir.path()).args(["--store", &store, "exec", "other", "--", "true"]));
    assert!(out.status.success(), "{out:?}");
    let mut watcher = lease(dir.path())
        .args([
            "--store",
            &store,
            "watch",
            &name,
            "--interval",
            "100ms",
            "--count",
            "3",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.ends_with(&format!("{name}: never acquired on this store")),
        "{first}"
    );
    let out = run(lease(dir.path()).args([
        "--store", &store, "exec", &name, "--holder", "watched", "--", "sleep", "1",
    ]));
    assert!(out.status.success());
    let second = lines.next().unwrap().unwrap();
    assert!(second.contains("held by watched"), "{second}");
    let token = token_after(&second, "fencing token ").expect("a token");
    let third = lines.next().unwrap().unwrap();
    assert!(
        third.ends_with(&format!("free (last fencing token {token})")),
        "{third}"
    );
    assert!(wait_with_limit(&mut watcher, Duration::from_secs(5)).success());
}

/// `watch --json` and `status --json` print one shape: a released lease is "free" with its token.
#[test]
fn watch_and_status_print_the_same_json() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("json");
    let out = run(lease(dir.path()).args(["--store", &store, "exec", &name, "--", "true"]));
    assert!(out.status.success(), "{out:?}");
    let status = run(lease(dir.path()).args(["--store", &store, "status", &name, "--json"]));
    let watch =
        run(lease(dir.path()).args(["--store", &store, "watch", &name, "--json", "--count", "1"]));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let mut watch: serde_json::Value = serde_json::from_slice(&watch.stdout).unwrap();
    assert!(watch["observed_at"].is_string(), "{watch}");
    watch.as_object_mut().unwrap().remove("observed_at");
    assert_eq!(watch, status);
    assert_eq!(status["state"], "free");
    assert!(
        status["fencing_token"].as_u64().is_some_and(|t| t > 0),
        "{status}"
    );
    // --count 0 prints nothing.
    let out = run(lease(dir.path()).args(["--store", &store, "watch", &name, "--count", "0"]));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// `--timeout 0` makes one attempt: it takes a free lease and gives up at once on a held one.
#[test]
fn timeout_zero_makes_one_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("timeout0");
    let args = ["--store", &store, "exec", &name, "--timeout", "0", "--"];
    let out = run(lease(dir.path())
        .args(args)
        .args(["sh", "-c", "echo $LEASE_FENCING_TOKEN"]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.trim().parse::<u64>().is_ok_and(|t| t > 0),
        "{printed}"
    );
    let ready = dir.path().join("ready");
    let script = format!("echo up > '{}'; exec sleep 30", ready.display());
    let mut holder = lease(dir.path())
        .args(["--store", &store, "exec", &name, "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    wait_for_file(&ready, Duration::from_secs(10));
    let started = Instant::now();
    let out = run(lease(dir.path()).args(args).arg("true"));
    signal(holder.id(), "-TERM");
    wait_with_limit(&mut holder, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(TIMEOUT), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A password in LEASE_STORE does not reach the command; the rest of the URL does.
#[test]
fn the_command_gets_lease_store_without_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let out = run(lease(dir.path())
        .env(
            "LEASE_STORE",
            "postgres://app:hunter2@db.internal/ops?sslmode=require&password=pw99",
        )
        .args([
            "--store",
            &store,
            "exec",
            "job",
            "--",
            "sh",
            "-c",
            "echo \"$LEASE_STORE\"",
        ]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "postgres://app@db.internal/ops?sslmode=require"
    );
}

#[test]
fn list_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    list_shows_leases_under_a_prefix(
        || lease(dir.path()),
        &sqlite_url(dir.path()),
        dir.path(),
        true,
    );
}

/// A row the store holds but cannot decode (a negative fencing token) is listed as unreadable,
/// with its reason and no fencing token, beside the readable leases: it does not fail the list.
#[test]
fn list_reports_an_unreadable_row_beside_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let prefix = format!("{}/", unique("unreadable"));
    let good = format!("{prefix}good");
    let bad = format!("{prefix}bad");
    let out = run(lease(dir.path()).args(["--store", &store, "exec", &good, "--", "true"]));
    assert!(out.status.success(), "{out:?}");
    // Written behind the library's back, into the table `exec` created.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use lease_sql::sqlx::{self, AssertSqlSafe};
        let backend = lease_sql::SqliteBackend::connect(&store).await.unwrap();
        let table = backend.table().as_str();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (name, holder, holder_meta, fencing, ttl_ms, acquired_at, expires_at)
             VALUES (?, NULL, NULL, -7, NULL, NULL, NULL)"
        )))
        .bind(&bad)
        .execute(backend.pool())
        .await
        .unwrap();
    });

    let text = run(lease(dir.path()).args(["--store", &store, "list", &prefix]));
    assert!(
        text.status.success(),
        "one bad row must not fail the list: {text:?}"
    );
    let text = String::from_utf8_lossy(&text.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with(&format!("{bad}: unreadable, treated as taken: "))
            && lines[0].contains("negative"),
        "{text}"
    );
    assert!(lines[1].starts_with(&format!("{good}: free")), "{text}");

    let json = run(lease(dir.path()).args(["--store", &store, "list", &prefix, "--json"]));
    assert!(json.status.success(), "{json:?}");
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["name"], bad.as_str());
    assert_eq!(records[0]["state"], "unreadable");
    assert_eq!(records[0]["held"], false);
    assert!(records[0]["fencing_token"].is_null(), "{records:?}");
    assert!(
        records[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("negative")),
        "{records:?}"
    );
    assert_eq!(records[1]["name"], good.as_str());
    assert_eq!(records[1]["state"], "free");
    assert!(records[1]["reason"].is_null(), "{records:?}");
    assert!(records[1]["fencing_token"].as_u64().is_some_and(|t| t > 0));

    // Reading that one key still fails as a corrupt record (exit code 65).
    let status = run(lease(dir.path()).args(["--store", &store, "status", &bad]));
    assert_eq!(status.status.code(), Some(65), "{status:?}");
}

#[test]
fn list_on_postgres() {
    let Some(url) = server_url("LEASE_TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    list_shows_leases_under_a_prefix(|| lease(dir.path()), &url, dir.path(), true);
}

#[test]
fn list_on_mariadb() {
    let Some(url) = server_url("LEASE_TEST_MYSQL_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    list_shows_leases_under_a_prefix(|| lease(dir.path()), &url, dir.path(), true);
}

#[test]
fn elect_runs_one_leader_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("elect");
    let log = dir.path().join("log");
    let script = format!(
        "echo \"start $LEASE_FENCING_TOKEN\" >> '{log}'; sleep 0.3; echo \"end $LEASE_FENCING_TOKEN\" >> '{log}'",
        log = log.display()
    );
    let children: Vec<Child> = (0..3)
        .map(|_| {
            lease(dir.path())
                .args([
                    "--store", &store, "elect", &name, "--ttl", "5s", "--", "sh", "-c", &script,
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(wait_with_limit(&mut child, Duration::from_secs(30)).success());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let tokens: Vec<&str> = text.lines().collect();
    assert_eq!(tokens.len(), 6, "{text}");
    for pair in tokens.chunks(2) {
        assert_eq!(pair[0].replace("start", "end"), pair[1], "{text}");
    }
}

#[test]
fn elect_restart_campaigns_again_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("restart");
    let log = dir.path().join("log");
    let script = format!(
        "echo $LEASE_FENCING_TOKEN >> '{}'; sleep 0.1",
        log.display()
    );
    let mut child = lease(dir.path())
        .args([
            "--store",
            &store,
            "elect",
            &name,
            "--restart",
            "--restart-delay",
            "50ms",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "fewer than 3 terms"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(child.id(), "-TERM");
    let status = wait_with_limit(&mut child, Duration::from_secs(10));
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let tokens: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{text}");
}

fn demo_tokens(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.split("fencing token").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn demo_ends_by_itself_with_rising_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for store in ["memory://".to_owned(), sqlite_url(dir.path())] {
        let out =
            run(lease(dir.path())
                .args(["--store", &store, "demo", "--rounds", "6", "--hold", "50ms"]));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{store}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tokens = demo_tokens(&stdout);
        assert_eq!(tokens.len(), 6, "{stdout}");
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{stdout}");
        assert!(stdout.contains("strictly increasing: yes"), "{stdout}");
        assert!(stdout.contains("is refused by the fence"), "{stdout}");
    }
}

#[test]
fn elect_stops_the_command_on_lost_leadership_and_campaigns_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("elect-lost");
    let log = dir.path().join("log");
    let script = format!(
        "trap 'echo \"term $LEASE_FENCING_TOKEN\" >> \"{log}\"; exit 0' TERM; \
         echo \"lead $LEASE_FENCING_TOKEN\" >> '{log}'; while :; do sleep 0.05; done",
        log = log.display()
    );
    let mut child = lease(dir.path())
        .args([
            "--store",
            &store,
            "elect",
            &name,
            "--ttl",
            "2s",
            "--restart",
            "--restart-delay",
            "100ms",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    wait_for_file(&log, Duration::from_secs(10));
    let out = run(lease(dir.path()).args(["--store", &store, "break", &name, "--yes"]));
    assert!(out.status.success(), "{out:?}");
    let start = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.lines().count() >= 3 {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no second term: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    signal(child.id(), "-TERM");
    wait_with_limit(&mut child, Duration::from_secs(10));
    let lines: Vec<&str> = lines.lines().take(3).collect();
    let first = lines[0].strip_prefix("lead ").expect("lead line");
    let first: u64 = first.parse().unwrap();
    assert_eq!(lines[1], format!("term {first}"), "{lines:?}");
    assert_eq!(lines[2], format!("lead {}", first + 1), "{lines:?}");
}

/// On a terminal, the waiting line fits the width with the token and expiry whole, is refreshed
/// in place, and is erased when Ctrl-C ends the wait (run under `script`, which gives `lease` a
/// pseudo-terminal).
#[test]
fn the_waiting_line_fits_and_is_cleared_on_ctrl_c() {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "util-linux `script` is needed for this test"
        );
        eprintln!("SKIPPED: no `script` command; this test did not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("tty");
    let ready = dir.path().join("ready");
    let script = format!("echo up > '{}'; exec sleep 30", ready.display());
    let long_holder = "a-very-long-holder-name-on-a-build-machine.example.internal pid=1234";
    let mut holder = lease(dir.path())
        .args([
            "--store",
            &store,
            "exec",
            &name,
            "--holder",
            long_holder,
            "--",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    wait_for_file(&ready, Duration::from_secs(10));
    let pid_file = dir.path().join("waiter.pid");
    let inner = format!(
        "sh -c 'echo $$ > {pid}; stty cols 80; exec {lease} --store {store} exec {name} -- true'",
        pid = pid_file.display(),
        lease = env!("CARGO_BIN_EXE_lease"),
    );
    let session = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = wait_for_file(&pid_file, Duration::from_secs(10));
    // The line appears after 300 ms and is refreshed every second (slow machines: at least once).
    std::thread::sleep(Duration::from_millis(2000));
    signal(pid.trim().parse().unwrap(), "-INT");
    let out = session.wait_with_output().unwrap();
    signal(holder.id(), "-TERM");
    wait_with_limit(&mut holder, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    let frames: Vec<&str> = text.split("\r\x1b[2K").filter(|f| !f.is_empty()).collect();
    assert!(frames.len() >= 2, "{text:?}");
    let (last, drawn) = frames.split_last().unwrap();
    for frame in drawn {
        assert!(frame.chars().count() < 80, "{frame:?}");
        assert!(frame.starts_with("lease: waiting "), "{frame:?}");
        // With a 16-digit token (the clock in µs) the holder may be left out to fit.
        assert!(frame.contains("held"), "{frame:?}");
        let tail = frame.rsplit_once(", expires in ~").map(|(_, t)| t);
        assert!(
            tail.is_some_and(|t| t.ends_with('s') && t[..t.len() - 1].parse::<u32>().is_ok()),
            "{frame:?}"
        );
    }
    // Erased before the last message: nothing of the line is left on the screen.
    assert!(last.starts_with("lease: interrupted by SIGINT"), "{text:?}");
}

/// A store that stops answering after the command ended holds `lease` up for at most the release
/// wait (5 s, plus one SQLite busy timeout), not until the lease's deadline (54 s here): the
/// command's status comes back with one warning, and the key frees itself at its TTL.
#[test]
fn an_unanswered_release_does_not_keep_lease_waiting_for_the_deadline() {
    use lease_sql::sqlx::{Connection, Executor, sqlite::SqliteConnection};
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let started = dir.path().join("started");
    let locked = dir.path().join("locked");
    let script = format!(
        "echo up > '{}'; while [ ! -e '{}' ]; do sleep 0.05; done",
        started.display(),
        locked.display()
    );
    let mut child = lease(dir.path())
        .args([
            "--store", &store, "exec", "job", "--ttl", "60s", "--", "sh", "-c", &script,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&started, Duration::from_secs(10));
    // Another process's exclusive transaction: every statement of `lease` now waits and fails.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut blocker = runtime.block_on(async {
        let mut conn = SqliteConnection::connect(&store).await.unwrap();
        conn.execute("BEGIN EXCLUSIVE").await.unwrap();
        conn
    });
    std::fs::write(&locked, "").unwrap();
    let command_ended = Instant::now();
    let status = wait_with_limit(&mut child, Duration::from_secs(30));
    let waited = command_ended.elapsed();
    runtime.block_on(async { blocker.execute("ROLLBACK").await.unwrap() });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(waited < Duration::from_secs(15), "{waited:?}: {stderr}");
    assert!(stderr.contains("releasing job failed"), "{stderr}");
    // The store that did not answer is named, not "lease".
    assert!(stderr.contains("sqlite backend: "), "{stderr}");
    assert!(
        stderr.contains("frees itself when its TTL runs out"),
        "{stderr}"
    );
}

#[test]
fn a_mariadb_database_without_the_table_is_not_changed_by_status() {
    use lease_sql::sqlx::{AssertSqlSafe, Connection, Executor, mysql::MySqlConnection};
    let Some(url) = server_url("LEASE_TEST_MYSQL_URL") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let database = unique("empty").replace('-', "_");
    let sql = |statement: String| {
        runtime.block_on(async {
            let mut conn = MySqlConnection::connect(&url).await.unwrap();
            // Test-made identifiers only (`unique` gives letters, digits and `_`).
            conn.execute(AssertSqlSafe(statement)).await.unwrap();
        })
    };
    sql(format!("CREATE DATABASE {database}"));
    let (base, _) = url.rsplit_once('/').unwrap();
    let store = format!("{base}/{database}");
    let dir = tempfile::tempdir().unwrap();
    let out = run(lease(dir.path()).args(["--store", &store, "list"]));
    let tables = runtime.block_on(async {
        let mut conn = MySqlConnection::connect(&store).await.unwrap();
        let rows = conn.fetch_all("SHOW TABLES").await.unwrap();
        rows.len()
    });
    sql(format!("DROP DATABASE {database}"));
    let err = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(78), "{err:?}");
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("no leases table"), "{err:?}");
    assert_eq!(tables, 0, "list created a table");
}

/// The number that follows `marker` in `line` (a fencing token in the CLI's messages).
fn token_after(line: &str, marker: &str) -> Option<u64> {
    let (_, rest) = line.split_once(marker)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
