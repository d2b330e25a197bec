//! Helpers shared by the CLI test files: the binary with a clean environment, waiting for files
//! and processes, and the store-independent checks every store's CLI tests run (another store's
//! test file calls them with its own URL and `lease` command builder).
// Each test file uses the helpers it needs; the others would warn as unused.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A lease name no other test (or earlier run on a shared server) uses.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "test-{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The binary with a clean environment: no LEASE_STORE, and a private state directory.
pub(crate) fn lease(state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lease"));
    cmd.env_remove("LEASE_STORE")
        .env_remove("LEASE_LOG")
        .env("XDG_STATE_HOME", state.join("xdg"))
        .env("HOME", state.join("home"))
        .stdin(Stdio::null());
    cmd
}

pub(crate) fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("leases.db").display())
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run lease")
}

pub(crate) fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `path` exists and is not empty.
pub(crate) fn wait_for_file(path: &Path, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a child with a limit, killing it if it overruns.
pub(crate) fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// Kills a leftover process group (a command whose `lease` was SIGKILLed keeps running).
pub(crate) fn kill_group(pgid: &str) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", pgid.trim())])
        .status();
}

/// The process group of `pid` (field 5 of /proc/PID/stat, after the parenthesised name).
pub(crate) fn pgid_of(pid: &str) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap();
    let after_name = stat.rsplit_once(')').unwrap().1;
    after_name.split_whitespace().nth(2).unwrap().to_owned()
}

/// Processes of group `pgid` that are still alive (zombies waiting to be reaped do not count).
pub(crate) fn live_members(pgid: &str) -> Vec<String> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(2) == Some(&pgid)
            && fields.first() != Some(&"Z")
            && fields.first() != Some(&"X")
        {
            live.push(stat);
        }
    }
    live
}

/// `lease` SIGKILLed while its command runs a shell with working grandchildren: within 1 s nothing
/// of the command's process group is left, and the next holder, after the TTL, never overlaps the
/// first one's work (the journal has no line of the first holder after the second one starts).
/// `ttl` is the lease's TTL: 2 s where the store allows it (Azure's shortest is 15 s).
pub(crate) fn sigkill_of_lease_kills_the_command_group(
    lease: impl Fn() -> Command,
    store: &str,
    dir: &Path,
    ttl: Duration,
) {
    let ttl_arg = format!("{}ms", ttl.as_millis());
    let name = unique("sigkill");
    let info = dir.join(format!("{name}.pid"));
    let journal = dir.join(format!("{name}.journal"));
    let script = format!(
        "echo \"start $LEASE_FENCING_TOKEN\" >> '{j}'; \
         (while :; do echo \"work $LEASE_FENCING_TOKEN\" >> '{j}'; sleep 0.02; done) & \
         sleep 30 & echo $$ > '{info}'; wait",
        j = journal.display(),
        info = info.display()
    );
    let mut first = lease()
        .args([
            "--store", store, "exec", &name, "--ttl", &ttl_arg, "--", "sh", "-c", &script,
        ])
        .spawn()
        .unwrap();
    let pgid = pgid_of(&wait_for_file(&info, Duration::from_secs(10)));
    assert!(!live_members(&pgid).is_empty());
    // Let it renew at least once (every ttl/3), so the takeover waits for a renewed grant to run
    // out.
    std::thread::sleep(ttl * 2 / 5);
    first.kill().unwrap(); // SIGKILL: lease can neither release nor signal anything.
    let killed = Instant::now();
    first.wait().unwrap();
    while !live_members(&pgid).is_empty() {
        if killed.elapsed() > Duration::from_secs(1) {
            kill_group(&pgid);
            panic!(
                "the command outlived lease by 1 s: {:?}",
                live_members(&pgid)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = format!(
        "echo \"start $LEASE_FENCING_TOKEN\" >> '{j}'; sleep 0.3; echo \"end $LEASE_FENCING_TOKEN\" >> '{j}'",
        j = journal.display()
    );
    let out = run(lease().args([
        "--store", store, "exec", &name, "--ttl", &ttl_arg, "--", "sh", "-c", &second,
    ]));
    let waited = killed.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first_token = lines[0].strip_prefix("start ").expect(&text);
    let second_start = lines.iter().rposition(|l| l.starts_with("start ")).unwrap();
    assert!(second_start > 0, "{text}");
    let second_token = lines[second_start].strip_prefix("start ").unwrap();
    assert!(
        second_token.parse::<u64>().unwrap() > first_token.parse::<u64>().unwrap(),
        "{text}"
    );
    assert!(
        lines[second_start..]
            .iter()
            .all(|l| !l.starts_with("work ")),
        "the first holder's work went on under the second holder:\n{text}"
    );
    assert_eq!(
        lines.last(),
        Some(&format!("end {second_token}").as_str()),
        "{text}"
    );
    // The last renewal was at most a renew interval (ttl/3) before the kill.
    assert!(waited >= ttl * 3 / 5, "taken over too early: {waited:?}");
    assert!(
        waited < ttl * 2 + Duration::from_secs(11),
        "took too long: {waited:?}"
    );
}

/// `lease list PREFIX`: the leases under the prefix, sorted, with holder, token and state.
/// `reports_expiry`: whether the store tells how long a lease has left (Azure's blob leases do
/// not; their `expires_in_ms` must then be null, never a guess).
pub(crate) fn list_shows_leases_under_a_prefix(
    lease: impl Fn() -> Command,
    store: &str,
    dir: &Path,
    reports_expiry: bool,
) {
    let prefix = format!("{}/", unique("list"));
    for (suffix, holder) in [("b", "holder-b"), ("a", "holder-a")] {
        let name = format!("{prefix}{suffix}");
        let out = run(lease().args([
            "--store", store, "exec", &name, "--holder", holder, "--", "true",
        ]));
        assert!(out.status.success(), "{out:?}");
    }
    let ready = dir.join(format!("{}ready", prefix.replace('/', "-")));
    let script = format!("echo up > '{}'; exec sleep 30", ready.display());
    let held = format!("{prefix}c");
    let mut holder = lease()
        .args([
            "--store", store, "exec", &held, "--holder", "holder-c", "--", "sh", "-c", &script,
        ])
        .spawn()
        .unwrap();
    wait_for_file(&ready, Duration::from_secs(10));
    let text = run(lease().args(["--store", store, "list", &prefix]));
    let json = run(lease().args(["--store", store, "list", &prefix, "--json"]));
    signal(holder.id(), "-TERM");
    wait_with_limit(&mut holder, Duration::from_secs(10));
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with(&format!("{prefix}a: free (last fencing token ")),
        "{text}"
    );
    assert!(lines[1].starts_with(&format!("{prefix}b: free")), "{text}");
    assert!(
        lines[2].starts_with(&format!("{prefix}c: held by holder-c since")),
        "{text}"
    );
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2]["state"], "held");
    assert_eq!(records[2]["holder"], "holder-c");
    assert!(
        records[2]["fencing_token"].as_u64().is_some_and(|t| t > 0),
        "{records:?}"
    );
    if reports_expiry {
        assert!(
            records[2]["expires_in_ms"].as_u64().is_some(),
            "{records:?}"
        );
    } else {
        assert!(records[2]["expires_in_ms"].is_null(), "{records:?}");
    }
    assert_eq!(records[0]["name"], format!("{prefix}a"));
}
