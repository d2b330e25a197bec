//! Signals `lease` catches while it supervises a command, and sending signals to the command.

use std::io;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::signal::unix::{SignalKind, signal};

/// SIGINT, SIGTERM and SIGHUP sent to `lease`. Once created, these no longer end `lease`: it
/// forwards them to the command (or stops waiting) instead.
pub(crate) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal received.
    pub(crate) async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::INT,
            _ = self.term.recv() => Signal::TERM,
            _ = self.hup.recv() => Signal::HUP,
        }
    }
}

/// Sends `signal` to the process group led by `pid`. A group that is already gone is not an error.
pub(crate) fn to_group(pid: u32, signal: Signal) {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    match kill_process_group(pid, signal) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::SRCH => {}
        Err(e) => {
            tracing::warn!(pid = pid.as_raw_nonzero().get(), error = %e, "could not signal the command")
        }
    }
}

/// A signal's usual name, for messages.
pub(crate) fn name(signal: Signal) -> &'static str {
    match signal {
        Signal::INT => "SIGINT",
        Signal::TERM => "SIGTERM",
        Signal::HUP => "SIGHUP",
        Signal::KILL => "SIGKILL",
        _ => "a signal",
    }
}
