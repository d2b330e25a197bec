//! `lease demo`: a few contenders in this process take turns on one lease, live.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lease_core::{Backend, CancellationToken, Fence, FencingToken, HolderMetadata, Locker};
use tokio::time::Instant;

use crate::exit::{self, CliError};
use crate::output;

/// Settings of one demo run.
pub(crate) struct Demo {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) store: String,
    pub(crate) name: String,
    pub(crate) contenders: u32,
    pub(crate) rounds: u32,
    pub(crate) hold: Duration,
    pub(crate) locker_options: crate::LockerOptionsArgs,
}

struct Shared {
    started: Instant,
    remaining: AtomicU32,
    inside: AtomicBool,
    overlaps: AtomicU32,
    tokens: Mutex<Vec<FencingToken>>,
    fence: Fence,
    done: CancellationToken,
}

impl Shared {
    fn say(&self, text: &str) -> Result<(), CliError> {
        output::line(format!(
            "[{:>6.2}s] {text}",
            self.started.elapsed().as_secs_f64()
        ))
    }
}

/// A pseudo-random pause of 0–`max`, varied per call (good enough to shuffle turns).
fn jitter(max: Duration, salt: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let x = nanos
        .wrapping_mul(2_654_435_761)
        .wrapping_add(salt.wrapping_mul(40_503))
        % 1000;
    max.mul_f64(f64::from(x) / 1000.0)
}

impl Demo {
    pub(crate) async fn run(self) -> Result<u8, CliError> {
        let shared = Arc::new(Shared {
            started: Instant::now(),
            remaining: AtomicU32::new(self.rounds),
            inside: AtomicBool::new(false),
            overlaps: AtomicU32::new(0),
            tokens: Mutex::new(Vec::new()),
            fence: Fence::new(),
            done: CancellationToken::new(),
        });
        output::line(format!(
            "{} contenders take turns on lease {:?} in {} for {} rounds.",
            self.contenders, self.name, self.store, self.rounds
        ))?;
        output::line(
            "Each holder writes to a fenced resource with its fencing token; tokens only go up.\n",
        )?;
        let mut tasks = Vec::new();
        for i in 0..self.contenders {
            let metadata =
                HolderMetadata::new(format!("demo contender-{i} pid={}", std::process::id()))
                    .map_err(|e| CliError::usage(e.to_string()))?;
            let locker = self
                .locker_options
                .builder(Arc::clone(&self.backend))
                .metadata(metadata)
                .build()
                .map_err(|e| CliError::usage(e.to_string()))?;
            let shared = Arc::clone(&shared);
            let name = self.name.clone();
            let hold = self.hold;
            tasks.push(tokio::spawn(async move {
                let done = shared.done.clone();
                let result = contender(i, locker, name, hold, shared).await;
                if result.is_err() {
                    // Stop the others too (a closed stdout, a store failure).
                    done.cancel();
                }
                result
            }));
        }
        let mut failure = None;
        for task in tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    shared.done.cancel();
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    shared.done.cancel();
                    failure.get_or_insert(CliError::new(exit::SOFTWARE, e.to_string()));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let tokens = shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let increasing = tokens.windows(2).all(|w| w[0] < w[1]);
        let overlaps = shared.overlaps.load(Ordering::SeqCst);
        if let (Some(first), Some(last)) = (tokens.first(), tokens.last()) {
            // A holder that paused too long comes back with an old token: the fence refuses it.
            let stale = *first;
            let refused = shared.fence.admit(stale).is_err();
            output::line("")?;
            output::line(format!(
                "A late write with the old token {stale} is {} by the fence (newest admitted: {last}).",
                if refused { "refused" } else { "ACCEPTED (bug)" }
            ))?;
            output::line(format!(
                "{} turns; fencing tokens {first} → {last}, strictly increasing: {}; overlapping holders: {overlaps}.",
                tokens.len(),
                if increasing { "yes" } else { "NO" },
            ))?;
            if !refused && tokens.len() > 1 {
                return Err(CliError::new(
                    exit::SOFTWARE,
                    "the fence accepted a stale token",
                ));
            }
        }
        if !increasing || overlaps > 0 {
            return Err(CliError::new(
                exit::SOFTWARE,
                "the demo saw a safety violation",
            ));
        }
        Ok(exit::OK)
    }
}

async fn contender(
    i: u32,
    locker: Locker,
    name: String,
    hold: Duration,
    shared: Arc<Shared>,
) -> Result<(), CliError> {
    let me = format!("contender-{i}");
    loop {
        let lease = match locker.acquire_cancellable(&name, &shared.done).await {
            Ok(lease) => lease,
            Err(e) if e.kind() == lease_core::ErrorKind::Cancelled => return Ok(()),
            Err(e) => return Err(CliError::from_lease(&e)),
        };
        // Claim a round; if none are left, give the lease back and stop.
        let claimed = shared
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
            .is_ok();
        if !claimed {
            let _ = lease.release().await;
            shared.done.cancel();
            return Ok(());
        }
        if shared.inside.swap(true, Ordering::SeqCst) {
            shared.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let token = lease.fencing_token();
        shared
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(token);
        let write = match shared.fence.admit(token) {
            Ok(()) => "write accepted",
            Err(_) => "write REFUSED",
        };
        let said = shared.say(&format!(
            "{me} holds {name}  fencing token {token:>4}  ({write})"
        ));
        if let Err(e) = said {
            shared.inside.store(false, Ordering::SeqCst);
            let _ = lease.release().await;
            return Err(e);
        }
        tokio::time::sleep(hold / 2 + jitter(hold, i)).await;
        shared.inside.store(false, Ordering::SeqCst);
        let said = if lease.is_held() {
            shared.say(&format!("{me} releases"))
        } else {
            Ok(())
        };
        if let Err(e) = lease.release().await {
            shared.say(&format!("{me} could not release cleanly: {e}"))?;
        }
        said?;
        // Give the others a chance before queueing again.
        tokio::time::sleep(jitter(hold / 2, i + 7)).await;
    }
}
