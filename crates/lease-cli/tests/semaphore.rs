//! `lease exec -n N`: a counting semaphore across processes, with `status` and `list` showing the
//! permits. SQLite always runs; PostgreSQL and MariaDB when `LEASE_TEST_POSTGRES_URL` /
//! `LEASE_TEST_MYSQL_URL` are set (with `LEASE_TEST_REQUIRE=1` a missing one fails).

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use support::*;

const HELD: i32 = 73;
const CONFIG: i32 = 78;

/// 8 `lease exec -n 3` at once; each command appends `start NANOS SLOT TOKEN` and `end NANOS SLOT
/// TOKEN` to one file. From the file: never more than 3 commands running, never two on one
/// slot, each slot's tokens rising, and more than one running at some point (it is not a mutex).
fn at_most_three_of_eight(store: &str, dir: &Path) {
    let name = unique("sem");
    let log = dir.join(format!("{name}.log"));
    let script = format!(
        "echo \"start $(date +%s%N) $LEASE_PERMIT $LEASE_FENCING_TOKEN $LEASE_PERMITS\" >> '{log}'; sleep 1; \
         echo \"end $(date +%s%N) $LEASE_PERMIT $LEASE_FENCING_TOKEN $LEASE_PERMITS\" >> '{log}'",
        log = log.display()
    );
    let children: Vec<Child> = (0..8)
        .map(|_| {
            lease(dir)
                .args([
                    "--store", store, "exec", &name, "-n", "3", "--ttl", "10s", "--", "sh", "-c",
                    &script,
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
            "exec -n 3 failed: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    // (nanos, is_start, slot, token)
    let mut events: Vec<(u128, bool, u32, u64)> = text
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 5, "bad line {line:?} in\n{text}");
            assert_eq!(f[4], "3", "LEASE_PERMITS in\n{text}");
            (
                f[1].parse().unwrap(),
                f[0] == "start",
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(events.len(), 16, "{text}");
    // At equal instants an end comes first: a command that ended may be followed at once.
    events.sort_by_key(|e| (e.0, e.1));
    let mut running = 0i32;
    let mut most = 0;
    let mut on_slot: HashMap<u32, u64> = HashMap::new();
    let mut last_token: HashMap<u32, u64> = HashMap::new();
    for (_, start, slot, token) in &events {
        assert!(*slot < 3, "slot {slot} with -n 3:\n{text}");
        if *start {
            running += 1;
            most = most.max(running);
            assert!(
                on_slot.insert(*slot, *token).is_none(),
                "two commands on slot {slot} at once:\n{text}"
            );
            let last = last_token.insert(*slot, *token).unwrap_or(0);
            assert!(*token > last, "slot {slot}'s tokens did not rise:\n{text}");
        } else {
            running -= 1;
            assert_eq!(on_slot.remove(slot), Some(*token), "unmatched end:\n{text}");
        }
    }
    assert!(most <= 3, "{most} commands ran at once with -n 3:\n{text}");
    assert!(
        most >= 2,
        "never more than one at once: -n 3 acted as a mutex:\n{text}"
    );
}

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
fn eight_execs_with_three_permits_on_sqlite_never_run_more_than_three() {
    let dir = tempfile::tempdir().unwrap();
    at_most_three_of_eight(&sqlite_url(dir.path()), dir.path());
}

#[test]
fn eight_execs_with_three_permits_on_postgres_never_run_more_than_three() {
    let Some(url) = server_url("LEASE_TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    at_most_three_of_eight(&url, dir.path());
}

#[test]
fn eight_execs_with_three_permits_on_mariadb_never_run_more_than_three() {
    let Some(url) = server_url("LEASE_TEST_MYSQL_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    at_most_three_of_eight(&url, dir.path());
}

#[test]
fn full_semaphores_are_held_another_count_is_refused_and_status_shows_permits() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let name = unique("full");
    let stop = dir.path().join("stop");
    let holders: Vec<Child> = (0..2)
        .map(|i| {
            let started = dir.path().join(format!("started-{i}"));
            let script = format!(
                "echo $LEASE_PERMIT > '{}'; while [ ! -e '{}' ]; do sleep 0.05; done",
                started.display(),
                stop.display()
            );
            lease(dir.path())
                .args(["--store", &store, "exec", &name, "-n", "2", "--ttl", "10s"])
                .args([
                    "--holder",
                    &format!("holder-{i}"),
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut holders = holders;
    let mut slots: Vec<String> = (0..2)
        .map(|i| {
            let started = dir.path().join(format!("started-{i}"));
            wait_while_running(&started, &mut holders, Duration::from_secs(20))
                .trim()
                .to_owned()
        })
        .collect();
    slots.sort();
    assert_eq!(slots, ["0", "1"]);

    let out = run(lease(dir.path()).args([
        "--store",
        &store,
        "exec",
        &name,
        "-n",
        "2",
        "--no-wait",
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(HELD), "{:?}", stderr_lines(&out));
    assert!(
        stderr_lines(&out)[0].contains("all 2 permits"),
        "{:?}",
        stderr_lines(&out)
    );

    let out = run(lease(dir.path()).args([
        "--store",
        &store,
        "exec",
        &name,
        "-n",
        "3",
        "--no-wait",
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(CONFIG), "{:?}", stderr_lines(&out));
    let line = &stderr_lines(&out)[0];
    assert!(
        line.contains("2 permits") && line.contains("3 here"),
        "{line}"
    );

    let out = run(lease(dir.path()).args(["--store", &store, "status", &name]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("semaphore, 2 permit(s) held of 2"), "{text}");
    assert!(
        text.contains("permit 0: held by holder-0") || text.contains("permit 0: held by holder-1"),
        "{text}"
    );

    let out = run(lease(dir.path()).args(["--store", &store, "status", &name, "--json"]));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let permits = value["permits"].as_array().expect("a permits array");
    assert_eq!(permits.len(), 2, "{value}");
    assert!(
        permits.iter().all(|p| p["held"] == true
            && p["declared_permits"] == 2
            && p["semaphore"] == name.as_str()),
        "{value}"
    );

    let out = run(lease(dir.path()).args(["--store", &store, "list", &name]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "{name}/permit-1 (permit 1 of semaphore {name}): held by"
        )),
        "{text}"
    );

    std::fs::write(&stop, "").unwrap();
    for child in holders {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Once the 2-permit holders are gone, another count is accepted.
    let out = run(lease(dir.path()).args([
        "--store",
        &store,
        "exec",
        &name,
        "-n",
        "3",
        "--no-wait",
        "--",
        "true",
    ]));
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
}

#[test]
fn a_bad_permit_count_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    for n in ["0", "1001", "x"] {
        let out =
            run(lease(dir.path()).args(["--store", &store, "exec", "job", "-n", n, "--", "true"]));
        assert_eq!(
            out.status.code(),
            Some(64),
            "-n {n}: {:?}",
            stderr_lines(&out)
        );
        assert_eq!(stderr_lines(&out).len(), 1, "{:?}", stderr_lines(&out));
    }
}

/// [`wait_for_file`], but a holder that exits first fails the test at once with what it wrote
/// to stderr (a holder that could not start says why, instead of a timeout saying nothing).
fn wait_while_running(path: &std::path::Path, holders: &mut [Child], limit: Duration) -> String {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if path.exists() {
            return wait_for_file(path, limit.saturating_sub(start.elapsed()));
        }
        for child in holders.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    std::io::Read::read_to_string(&mut pipe, &mut stderr).ok();
                }
                panic!("a holder exited ({status}) before starting: {stderr}");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for_file(path, Duration::ZERO)
}
