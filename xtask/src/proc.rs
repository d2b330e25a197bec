//! Processes and probes: commands with a deadline, identity of a recorded pid, stopping a process
//! group, and TCP/HTTP health probes. Everything here returns within the timeout it is given.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Output of a finished command.
#[derive(Debug)]
pub(crate) struct Output {
    /// Exit status.
    pub(crate) status: ExitStatus,
    /// Standard output and error, interleaved by line.
    pub(crate) text: String,
}

impl Output {
    /// The last `n` lines, for error messages.
    pub(crate) fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Runs `cmd` with stdin closed and output captured; kills it (and its process group) after `timeout`.
pub(crate) fn run_captured(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    use std::os::unix::process::CommandExt;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        })
    })
    .collect();
    drop(tx);
    let status = match wait_deadline(&mut child, timeout)? {
        Some(status) => status,
        None => {
            kill_group(child.id(), "KILL");
            let _ = child.wait();
            bail!("{shown} did not finish within {timeout:?}");
        }
    };
    for r in readers {
        let _ = r.join();
    }
    let text: Vec<String> = rx.try_iter().collect();
    Ok(Output {
        status,
        text: text.join("\n"),
    })
}

/// Runs `cmd` to completion, echoing its output live (stdout to stdout, stderr to stderr) and capturing
/// it. No timeout: used for cargo, which has its own (nextest's slow-test timeouts).
pub(crate) fn run_streamed(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().map(|s| {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut stdout = std::io::stdout();
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                let _ = writeln!(stdout, "{line}");
                let _ = tx.send(line);
            }
        })
    });
    let err = child.stderr.take().map(|s| {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut stderr = std::io::stderr();
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                let _ = writeln!(stderr, "{line}");
                let _ = tx.send(line);
            }
        })
    });
    drop(tx);
    let status = child.wait()?;
    for h in [out, err].into_iter().flatten() {
        let _ = h.join();
    }
    let text: Vec<String> = rx.try_iter().collect();
    Ok(Output {
        status,
        text: text.join("\n"),
    })
}

/// Waits for `child` up to `timeout`; `None` if it is still running.
pub(crate) fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a signal (`TERM`, `KILL`) to the process group `pgid` with the `kill` utility.
pub(crate) fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`), and whether it is a
/// zombie. `None` when there is no such process.
pub(crate) fn proc_start_time(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Parses `/proc/PID/stat`: (start time, is zombie).
pub(crate) fn parse_stat(stat: &str) -> Option<(u64, bool)> {
    // The command name is in parentheses and may contain spaces or parentheses: split after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); start time is field 22.
    let state = *fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state == "Z" || state == "X"))
}

/// The command line of a process, arguments joined by spaces.
pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Identity of a process we started: pid, start time, and a string its command line contains.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ProcId {
    /// Process id (also its process group id: we start it as a group leader).
    pub(crate) pid: u32,
    /// Start time in clock ticks since boot; guards against pid reuse.
    pub(crate) start_time: u64,
    /// A string the command line contains (the program path).
    pub(crate) marker: String,
}

impl ProcId {
    /// Records the identity of a just-started process.
    pub(crate) fn of(pid: u32, marker: &str) -> Option<Self> {
        let (start_time, _) = proc_start_time(pid)?;
        Some(Self {
            pid,
            start_time,
            marker: marker.to_string(),
        })
    }

    /// Whether the pid still names the process we started (alive, same start time, same program).
    pub(crate) fn is_alive_and_ours(&self) -> bool {
        match proc_start_time(self.pid) {
            Some((start, zombie)) if start == self.start_time && !zombie => {
                cmdline(self.pid).is_some_and(|c| c.contains(&self.marker))
            }
            _ => false,
        }
    }

    /// Stops the process group: TERM, up to `grace` to exit, then KILL. Does nothing if the pid is no
    /// longer ours. Returns whether it was ours and running.
    pub(crate) fn stop(&self, grace: Duration) -> bool {
        if !self.is_alive_and_ours() {
            return false;
        }
        kill_group(self.pid, "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_alive_and_ours() {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if self.is_alive_and_ours() {
            kill_group(self.pid, "KILL");
            thread::sleep(Duration::from_millis(200));
        }
        true
    }
}

/// Resolves `host:port` and connects within `timeout`.
pub(crate) fn tcp_connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e).with_context(|| format!("cannot connect to {host}:{port}")),
        None => bail!("{host} resolves to no address"),
    }
}

/// GETs `path` over plain HTTP/1.1 and returns the status code; any HTTP answer counts as alive.
pub(crate) fn http_status(host: &str, port: u16, path: &str, timeout: Duration) -> Result<u16> {
    http_call(host, port, "GET", path, timeout)
}

/// Sends `method path` with an empty body over plain HTTP/1.1 and returns the status code.
pub(crate) fn http_call(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<u16> {
    let mut stream = tcp_connect(host, port, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut first = String::new();
    BufReader::new(stream)
        .read_line(&mut first)
        .with_context(|| format!("no HTTP answer from {host}:{port} within {timeout:?}"))?;
    parse_status_line(&first).with_context(|| format!("not an HTTP answer: {first:?}"))
}

/// `HTTP/1.1 200 OK` → 200.
pub(crate) fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Whether `program` can be found on PATH (or is an existing path).
pub(crate) fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_names() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some((987654, false)));
        let zombie = "7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_stat(zombie), Some((55, true)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_recognised() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        let id = ProcId::of(me, &name).unwrap();
        assert!(id.is_alive_and_ours());
        let other = ProcId {
            marker: "definitely-not-this-program".into(),
            ..id.clone()
        };
        assert!(!other.is_alive_and_ours());
        let reused = ProcId {
            start_time: id.start_time + 1,
            ..id
        };
        assert!(!reused.is_alive_and_ours());
    }

    #[test]
    fn stop_ends_a_child_group_and_leaves_strangers_alone() {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let id = ProcId::of(child.id(), "sleep").unwrap();
        // Right after exec, /proc/PID/cmdline can still read empty for a moment.
        let exec_done = Instant::now() + Duration::from_secs(2);
        while cmdline(child.id()).is_none_or(|c| c.is_empty()) && Instant::now() < exec_done {
            thread::sleep(Duration::from_millis(5));
        }
        let stranger = ProcId {
            marker: "not-sleep".into(),
            ..id.clone()
        };
        assert!(!stranger.stop(Duration::from_millis(100)));
        assert!(id.is_alive_and_ours());
        let started = Instant::now();
        assert!(id.stop(Duration::from_secs(5)));
        assert!(
            wait_deadline(&mut child, Duration::from_secs(5))
                .unwrap()
                .is_some()
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!id.is_alive_and_ours());
    }

    #[test]
    fn captured_command_times_out() {
        let started = Instant::now();
        let err =
            run_captured(Command::new("sleep").arg("30"), Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let out = run_captured(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.status.success());
        assert!(out.text.contains("out") && out.text.contains("err"));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 403 Forbidden"), Some(403));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[test]
    fn http_probe_against_a_tiny_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        });
        assert_eq!(
            http_status("127.0.0.1", port, "/", Duration::from_secs(2)).unwrap(),
            204
        );
        server.join().unwrap();
    }

    #[test]
    fn http_probe_of_a_silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        // The listener accepts (kernel backlog) but never answers.
        assert!(http_status("127.0.0.1", port, "/", Duration::from_millis(300)).is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }
}
