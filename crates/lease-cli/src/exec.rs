//! `lease exec` and `lease elect`: run a command while holding a lease.

use std::cell::Cell;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use lease_core::{BackendError, Error, Lease, Locker, Permit, Semaphore};
use rustix::process::Signal;
use tokio::process::Command;

use crate::exit::{self, CliError};
use crate::signals::{self, Signals};
use crate::waiting;
use crate::watchdog::Watchdog;

/// How long `lease` waits for the store to confirm a release after the command ended.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A release (or resignation) that gets [`RELEASE_WAIT`] to be confirmed. The lease already
/// counts as not held once the release is sent, so giving up early only leaves the key to free
/// itself at its TTL.
async fn within_release_wait(
    backend: &'static str,
    release: impl std::future::Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    match tokio::time::timeout(RELEASE_WAIT, release).await {
        Ok(result) => result,
        Err(_) => Err(Error::Backend(BackendError::transient(
            backend,
            format!(
                "no answer from the store within {}",
                crate::duration::short(RELEASE_WAIT)
            ),
        ))),
    }
}

/// How `exec` waits for a held lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitMode {
    /// Until it is free.
    Forever,
    /// Not at all.
    NoWait,
    /// `--timeout 0`: one attempt, which takes a free lease; a held one is a timeout.
    OneAttempt,
    /// At most this long.
    Timeout(Duration),
}

/// The command to run and how to stop it.
#[derive(Clone, Debug)]
pub(crate) struct ChildSpec {
    pub(crate) command: Vec<OsString>,
    pub(crate) kill_after: Duration,
    /// What the command gets as `LEASE_STORE`.
    pub(crate) store_env: ChildStoreEnv,
}

/// What becomes of `LEASE_STORE` in the command's environment: it may hold a password.
#[derive(Clone, Debug)]
pub(crate) enum ChildStoreEnv {
    /// Passed on as it is (it holds no secret, or is not set).
    Keep,
    /// Replaced by this URL (the same store without its secrets).
    Set(String),
    /// Removed.
    Remove,
}

/// How a supervised command ended.
#[derive(Debug)]
enum ChildEnd {
    /// It exited by itself (or after a forwarded signal) with this code.
    Exited { code: u8, interrupted: bool },
    /// The lease was lost; the command was terminated.
    Lost,
}

/// Everything `exec` and `elect` share.
pub(crate) struct Runner {
    pub(crate) locker: Locker,
    pub(crate) name: String,
    pub(crate) child: ChildSpec,
    pub(crate) verbose: u8,
    /// `exec -n N`: hold one of N permits of the name instead of the name itself.
    pub(crate) permits: Option<u32>,
}

impl Runner {
    /// Waits (bounded) for the locker's background releases, before the process exits.
    async fn drain(&self) {
        let bound = self.locker.options().ttl;
        let _ = tokio::time::timeout(bound, self.locker.drain()).await;
    }

    fn note(&self, message: &str) {
        if self.verbose > 0 {
            say!("lease: {message}");
        }
    }

    /// `lease exec`.
    pub(crate) async fn exec(&self, mode: WaitMode) -> Result<u8, CliError> {
        let mut signals = Signals::new()
            .map_err(|e| CliError::new(exit::SOFTWARE, format!("cannot catch signals: {e}")))?;
        if let Some(permits) = self.permits {
            return self.exec_permit(permits, mode, &mut signals).await;
        }
        let lease = match mode {
            WaitMode::NoWait => match self.locker.try_acquire(&self.name).await {
                Ok(Some(lease)) => lease,
                Ok(None) => return Err(self.held_error().await),
                Err(e) => return Err(CliError::from_lease(&e)),
            },
            WaitMode::OneAttempt => match self.locker.try_acquire(&self.name).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    let detail = self.holder_detail().await.map(|d| format!("; {d}"));
                    return Err(CliError::new(
                        exit::TIMEOUT,
                        format!(
                            "gave up waiting for lease {} after 0s (one attempt){}",
                            self.name,
                            detail.unwrap_or_default()
                        ),
                    ));
                }
                Err(e) => return Err(CliError::from_lease(&e)),
            },
            WaitMode::Forever | WaitMode::Timeout(_) => {
                let acquire = async {
                    match mode {
                        WaitMode::Timeout(t) => self.locker.acquire_timeout(&self.name, t).await,
                        _ => self.locker.acquire(&self.name).await,
                    }
                };
                match self.wait_showing("lease", acquire, &mut signals).await {
                    Ok(lease) => lease,
                    Err(e) => {
                        // An attempt abandoned mid-flight is released in the background: let that
                        // finish before the process exits, or the grant lingers for a TTL.
                        self.drain().await;
                        return Err(e);
                    }
                }
            }
        };
        self.note(&format!(
            "acquired {} (fencing token {})",
            self.name,
            lease.fencing_token()
        ));
        let end = match self.supervise(&lease, &[], &mut signals).await {
            Ok(end) => end,
            Err(e) => {
                // The command could not be started: give the lease back now (a release on drop
                // might not finish before this process exits).
                let _ = lease.release().await;
                return Err(e);
            }
        };
        self.finish(lease, end).await
    }

    /// `lease exec -n N`: as `exec`, holding one of N permits of the name (a slot lease).
    async fn exec_permit(
        &self,
        permits: u32,
        mode: WaitMode,
        signals: &mut Signals,
    ) -> Result<u8, CliError> {
        let semaphore = Semaphore::new(&self.locker, &self.name, permits).map_err(|e| {
            CliError::usage(format!("lease name {:?} with -n {permits}: {e}", self.name))
        })?;
        let all_held = || format!("all {permits} permits of {} are held", self.name);
        let permit: Permit = match mode {
            WaitMode::NoWait => match semaphore.try_acquire().await {
                Ok(Some(permit)) => permit,
                Ok(None) => return Err(CliError::new(exit::HELD, all_held())),
                Err(e) => return Err(CliError::from_lease(&e)),
            },
            WaitMode::OneAttempt => match semaphore.try_acquire().await {
                Ok(Some(permit)) => permit,
                Ok(None) => {
                    return Err(CliError::new(
                        exit::TIMEOUT,
                        format!("gave up after 0s (one attempt): {}", all_held()),
                    ));
                }
                Err(e) => return Err(CliError::from_lease(&e)),
            },
            WaitMode::Forever | WaitMode::Timeout(_) => {
                let acquire = async {
                    match mode {
                        WaitMode::Timeout(t) => semaphore.acquire_timeout(t).await,
                        _ => semaphore.acquire().await,
                    }
                };
                self.note(&format!(
                    "waiting for one of {permits} permits of {}",
                    self.name
                ));
                match self.wait_showing("a permit of", acquire, signals).await {
                    Ok(permit) => permit,
                    Err(e) => {
                        let bound = self.locker.options().ttl;
                        let _ = tokio::time::timeout(bound, semaphore.drain()).await;
                        return Err(e);
                    }
                }
            }
        };
        let slot = permit.slot();
        self.note(&format!(
            "acquired permit {slot} of {permits} of {} (fencing token {})",
            self.name,
            permit.fencing_token()
        ));
        let lease = permit.into_lease();
        let env = [
            ("LEASE_PERMIT", slot.to_string()),
            ("LEASE_PERMITS", permits.to_string()),
        ];
        let end = match self.supervise(&lease, &env, signals).await {
            Ok(end) => end,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e);
            }
        };
        self.finish(lease, end).await
    }

    /// `lease elect`.
    pub(crate) async fn elect(
        &self,
        restart: bool,
        restart_delay: Duration,
    ) -> Result<u8, CliError> {
        let mut signals = Signals::new()
            .map_err(|e| CliError::new(exit::SOFTWARE, format!("cannot catch signals: {e}")))?;
        let election = self
            .locker
            .election(&self.name)
            .map_err(|e| CliError::usage(e.to_string()))?;
        loop {
            let leadership = match self
                .wait_showing("leadership of", election.campaign(), &mut signals)
                .await
            {
                Ok(leadership) => leadership,
                Err(e) => {
                    self.drain().await;
                    return Err(e);
                }
            };
            self.note(&format!(
                "leader of {} (fencing token {})",
                self.name,
                leadership.fencing_token()
            ));
            let end = match self.supervise(leadership.lease(), &[], &mut signals).await {
                Ok(end) => end,
                Err(e) => {
                    let _ = leadership.resign().await;
                    return Err(e);
                }
            };
            let again = restart
                && !matches!(
                    end,
                    ChildEnd::Exited {
                        interrupted: true,
                        ..
                    }
                );
            let lost = matches!(end, ChildEnd::Lost);
            // Resign (release) first so another candidate can take over while we pause.
            let code = match within_release_wait(self.locker.backend().name(), leadership.resign())
                .await
            {
                Ok(()) => match end {
                    ChildEnd::Exited { code, .. } => code,
                    ChildEnd::Lost => exit::LOST,
                },
                Err(e) => self.after_release_error(e, &end),
            };
            if !again {
                return Ok(code);
            }
            self.note(&format!(
                "{} ended ({}); campaigning again in {}",
                if lost { "leadership" } else { "the command" },
                if lost {
                    "lost".to_owned()
                } else {
                    format!("status {code}")
                },
                crate::duration::short(restart_delay)
            ));
            tokio::select! {
                () = tokio::time::sleep(restart_delay) => {}
                sig = signals.recv() => return Ok(exit::SIGNAL_BASE + sig.as_raw() as u8),
            }
        }
    }

    /// Waits for `acquire`, showing the status line, and stopping on SIGINT/SIGTERM/SIGHUP.
    async fn wait_showing<T>(
        &self,
        what: &str,
        acquire: impl Future<Output = Result<T, Error>>,
        signals: &mut Signals,
    ) -> Result<T, CliError> {
        let printed = Cell::new(false);
        let display = match self.permits {
            // The status line reads NAME's own record; a semaphore's permits are other records.
            Some(_) => waiting::Display::Off,
            None => waiting::Display::choose(self.verbose),
        };
        let outcome = tokio::select! {
            r = acquire => Ok(r),
            sig = signals.recv() => Err(sig),
            () = waiting::show(&self.locker, &self.name, what, display, &printed) => unreachable!("the status line never ends"),
        };
        waiting::clear(&printed);
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(Error::Timeout { waited, holder, .. })) => {
                let by = holder
                    .filter(|r| r.is_held())
                    .map(|r| format!("; {}", waiting::describe(&r, std::time::SystemTime::now())))
                    .unwrap_or_default();
                Err(CliError::new(
                    exit::TIMEOUT,
                    format!(
                        "gave up waiting for {what} {} after {}{by}",
                        self.name,
                        crate::duration::short(waited)
                    ),
                ))
            }
            Ok(Err(e)) => Err(CliError::from_lease(&e)),
            Err(sig) => Err(CliError::new(
                exit::SIGNAL_BASE + sig.as_raw() as u8,
                format!(
                    "interrupted by {} while waiting for {what} {}",
                    signals::name(sig),
                    self.name
                ),
            )),
        }
    }

    /// Who holds the lease, when that can be read.
    async fn holder_detail(&self) -> Option<String> {
        match self.locker.inspect(&self.name).await {
            Ok(Some(record)) if record.is_held() => {
                Some(waiting::describe(&record, std::time::SystemTime::now()))
            }
            _ => None,
        }
    }

    /// The `--no-wait` error, naming the holder when it can be read.
    async fn held_error(&self) -> CliError {
        let detail = self
            .holder_detail()
            .await
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        CliError::new(
            exit::HELD,
            format!("lease {} is held by someone else{detail}", self.name),
        )
    }

    /// Runs the command while `lease` is held. On loss: SIGTERM to its process group, then
    /// SIGKILL after `kill_after`. Signals to `lease` are forwarded to the group. However the
    /// command ends, whatever is left of its group is killed before this returns (and so before
    /// the release); if `lease` itself dies, the watchdog kills the group.
    async fn supervise(
        &self,
        lease: &Lease,
        extra_env: &[(&str, String)],
        signals: &mut Signals,
    ) -> Result<ChildEnd, CliError> {
        let (program, args) = self
            .child
            .command
            .split_first()
            .ok_or_else(|| CliError::usage("no command given"))?;
        let watchdog = Watchdog::start().await.map_err(|e| {
            CliError::new(
                exit::SOFTWARE,
                format!("cannot start the watchdog that stops the command with lease: {e}"),
            )
        })?;
        let group = watchdog.pgid();
        let Ok(group_id) = i32::try_from(group) else {
            watchdog.kill_group().await;
            return Err(CliError::new(
                exit::SOFTWARE,
                format!("process group {group} is out of range"),
            ));
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .env("LEASE_NAME", &self.name)
            .env("LEASE_FENCING_TOKEN", lease.fencing_token().to_string())
            .env("LEASE_HOLDER", self.holder_label(lease))
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            // The watchdog's process group, so the whole command (a shell and its children) can
            // be signalled at once, dies with `lease`, and a terminal's Ctrl-C reaches it
            // through us only.
            .process_group(group_id);
        match &self.child.store_env {
            ChildStoreEnv::Keep => {}
            ChildStoreEnv::Set(url) => {
                command.env("LEASE_STORE", url);
            }
            ChildStoreEnv::Remove => {
                command.env_remove("LEASE_STORE");
            }
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                watchdog.kill_group().await;
                let code = match e.kind() {
                    std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                    _ => exit::CANNOT_EXECUTE,
                };
                return Err(CliError::new(
                    code,
                    format!("cannot run {}: {e}", program.to_string_lossy()),
                ));
            }
        };
        let end = self.run_child(&mut child, group, lease, signals).await;
        watchdog.kill_group().await;
        end
    }

    async fn run_child(
        &self,
        child: &mut tokio::process::Child,
        group: u32,
        lease: &Lease,
        signals: &mut Signals,
    ) -> Result<ChildEnd, CliError> {
        let lost = lease.lost();
        tokio::pin!(lost);
        let mut interrupted = false;
        loop {
            tokio::select! {
                biased;
                status = child.wait() => {
                    let status = status.map_err(|e| CliError::new(exit::SOFTWARE, format!("waiting for the command failed: {e}")))?;
                    let code = match (status.code(), status.signal()) {
                        (Some(code), _) => (code & 0xff) as u8,
                        (None, Some(sig)) => exit::SIGNAL_BASE.saturating_add(sig as u8),
                        (None, None) => exit::SOFTWARE,
                    };
                    return Ok(ChildEnd::Exited { code, interrupted });
                }
                reason = &mut lost => {
                    say!(
                        "lease: lost lease {} (fencing token {}): {reason}; sending SIGTERM to the command",
                        self.name, lease.fencing_token()
                    );
                    signals::to_group(group, Signal::TERM);
                    if tokio::time::timeout(self.child.kill_after, child.wait()).await.is_err() {
                        say!(
                            "lease: the command did not exit within {}; sending SIGKILL",
                            crate::duration::short(self.child.kill_after)
                        );
                        signals::to_group(group, Signal::KILL);
                        let _ = child.wait().await;
                    }
                    return Ok(ChildEnd::Lost);
                }
                sig = signals.recv() => {
                    self.note(&format!("forwarding {} to the command", signals::name(sig)));
                    signals::to_group(group, sig);
                    interrupted = true;
                }
            }
        }
    }

    /// What the command sees in `LEASE_HOLDER`: the holder metadata, or the holder token.
    fn holder_label(&self, lease: &Lease) -> String {
        let meta = self.locker.metadata().as_str();
        if meta.is_empty() {
            lease.holder_token().to_string()
        } else {
            meta.to_owned()
        }
    }

    /// Releases after the command ended and picks the exit code. The release waits at most
    /// [`RELEASE_WAIT`]: the command is over and the lease already counts as not held, so a store
    /// that does not answer only delays the next holder until the TTL runs out — never the exit of
    /// `lease` (Ctrl-C while the store is down would otherwise wait for the lease's deadline).
    async fn finish(&self, lease: Lease, end: ChildEnd) -> Result<u8, CliError> {
        match within_release_wait(self.locker.backend().name(), lease.release()).await {
            Ok(()) => match end {
                ChildEnd::Exited { code, .. } => Ok(code),
                ChildEnd::Lost => Ok(exit::LOST),
            },
            Err(e) => Ok(self.after_release_error(e, &end)),
        }
    }

    fn after_release_error(&self, e: Error, end: &ChildEnd) -> u8 {
        match (e, end) {
            (_, ChildEnd::Lost) => exit::LOST,
            (Error::Lost { reason, .. }, ChildEnd::Exited { code, .. }) => {
                say!(
                    "lease: the command exited with status {code}, but lease {} had been lost before it did ({reason})",
                    self.name
                );
                exit::LOST
            }
            (e, ChildEnd::Exited { code, .. }) => {
                // The work finished under the lease; the key frees itself when its TTL runs out.
                say!(
                    "lease: warning: releasing {} failed ({}); it frees itself when its TTL runs out",
                    self.name,
                    crate::exit::one_line_chain(&e)
                );
                *code
            }
        }
    }
}
