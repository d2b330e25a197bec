//! The watchdog: the command's process group dies with `lease`, however `lease` ends.
//!
//! `lease` cannot run code when it is SIGKILLed (the OOM killer, `kill -9`), so the group is
//! guarded by a second, tiny process: `lease __watchdog`, started before the command. It is the
//! leader of a new process group, and the command is started into that group, so the group is
//! the watchdog's own: it needs no message to know what to kill. Its stdin is the read end of a
//! pipe whose only write end lives in `lease` (close-on-exec, so the command never inherits it).
//! When `lease` ends by any route the kernel closes that end, the watchdog reads end-of-file and
//! sends SIGKILL to its group: the command, its children and grandchildren, and itself.
//!
//! The watchdog ignores SIGINT, SIGTERM and SIGHUP (`lease` forwards those to the group for the
//! command), and says `ready` once it does, before `lease` starts the command. Nothing here is
//! Linux-only: pipes and process groups behave the same on macOS. A process that leaves the group
//! (`setsid`, `setpgid`: daemons) is out of reach; see docs/cli.md.

use std::io::{self, Read, Write};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use rustix::process::Signal;
use tokio::io::AsyncReadExt;

use crate::signals;

/// The hidden first argument that turns `lease` into the watchdog.
pub(crate) const ARG: &str = "__watchdog";

/// What the watchdog writes once its signal dispositions are in place.
const READY: &[u8] = b"ready\n";

/// A running watchdog, leader of the process group the command is started into.
pub(crate) struct Watchdog {
    process: tokio::process::Child,
    pgid: u32,
    /// Kept open while `lease` lives: its closing is the watchdog's signal.
    _alive: io::PipeWriter,
}

impl Watchdog {
    /// Starts the watchdog in a new process group and waits until it is ready.
    pub(crate) async fn start() -> io::Result<Self> {
        let (reader, writer) = io::pipe()?;
        let mut process = tokio::process::Command::new(own_executable()?)
            .arg0("lease")
            .arg(ARG)
            .stdin(Stdio::from(reader))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env_clear()
            .current_dir("/")
            .process_group(0)
            .spawn()?;
        let pgid = process
            .id()
            .ok_or_else(|| io::Error::other("the watchdog exited at once"))?;
        let mut said = [0u8; READY.len()];
        let mut out = process
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no pipe from the watchdog"))?;
        let ready = tokio::time::timeout(Duration::from_secs(10), out.read_exact(&mut said)).await;
        if !matches!(ready, Ok(Ok(_))) || said != READY {
            let _ = process.start_kill();
            let _ = process.wait().await;
            return Err(io::Error::other("the watchdog did not start"));
        }
        Ok(Self {
            process,
            pgid,
            _alive: writer,
        })
    }

    /// The process group the command must join.
    pub(crate) fn pgid(&self) -> u32 {
        self.pgid
    }

    /// Kills everything left in the group (the command's leftovers and the watchdog) and reaps
    /// the watchdog. Called when the command's main process has ended, before the release.
    pub(crate) async fn kill_group(mut self) {
        signals::to_group(self.pgid, Signal::KILL);
        let _ = self.process.wait().await;
    }
}

/// The path that re-executes this binary (on Linux `/proc/self/exe`, which works even if the file
/// was replaced or deleted since).
fn own_executable() -> io::Result<std::path::PathBuf> {
    if cfg!(target_os = "linux") {
        Ok("/proc/self/exe".into())
    } else {
        std::env::current_exe()
    }
}

/// `lease __watchdog`: waits for end-of-file on stdin, then kills its own process group.
pub(crate) fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return ExitCode::from(crate::exit::SOFTWARE),
    };
    let _entered = runtime.enter();
    // Registering a handler replaces the default action (exit) of these signals for good; the
    // handler only records them, and nobody reads the record.
    use tokio::signal::unix::{SignalKind, signal};
    let mut handlers = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        match signal(kind) {
            Ok(handler) => handlers.push(handler),
            Err(_) => return ExitCode::from(crate::exit::SOFTWARE),
        }
    }
    let mut stdout = io::stdout();
    if stdout
        .write_all(READY)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::from(crate::exit::SOFTWARE);
    }
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // `lease` is gone (or done): nothing in this group may go on without its lease.
    let _ = rustix::process::kill_process_group(rustix::process::getpgrp(), Signal::KILL);
    ExitCode::SUCCESS
}
