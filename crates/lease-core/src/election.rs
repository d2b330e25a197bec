//! Leader election over any backend: one lease key, many candidates.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use crate::backend::LeaseRecord;
use crate::error::{Error, LostReason};
use crate::key::LeaseKey;
use crate::lease::Lease;
use crate::locker::Locker;
use crate::token::{FencingToken, HolderToken};

/// A leader election on one key. Candidates [`campaign`](Election::campaign); the winner holds the
/// key's lease (renewed in the background) until it [`resign`](Leadership::resign)s or loses it.
///
/// ```
/// use lease_core::{Locker, MemoryBackend};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
/// let store = MemoryBackend::new();
/// let election = Locker::new(store.clone()).election("scheduler")?;
/// let leadership = election.campaign().await?;
/// let leader = election.leader().await?.expect("someone leads");
/// assert_eq!(leader.fencing, leadership.fencing_token());
/// leadership.resign().await?;
/// assert!(election.leader().await?.is_none());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Election {
    locker: Locker,
    key: LeaseKey,
}

impl Election {
    pub(crate) fn new(locker: Locker, key: LeaseKey) -> Result<Self, crate::InvalidInput> {
        Ok(Self { locker, key })
    }

    /// The election's key.
    pub fn key(&self) -> &LeaseKey {
        &self.key
    }

    /// Waits until this candidate is the leader. Cancel by dropping the future.
    ///
    /// # Errors
    /// As [`Locker::acquire`].
    pub async fn campaign(&self) -> Result<Leadership, Error> {
        let wait = self.locker.wait_for(&self.key, None);
        let lease = crate::observe::acquire(self.locker.backend().name(), &self.key, wait).await?;
        Ok(Leadership { lease })
    }

    /// Becomes leader only if nobody is; `Ok(None)` otherwise.
    ///
    /// # Errors
    /// As [`Locker::try_acquire`].
    pub async fn try_campaign(&self) -> Result<Option<Leadership>, Error> {
        Ok(self
            .locker
            .try_acquire(&self.key)
            .await?
            .map(|lease| Leadership { lease }))
    }

    /// The current leader's record, if a grant is in force.
    ///
    /// # Errors
    /// As [`Locker::inspect`].
    pub async fn leader(&self) -> Result<Option<LeaseRecord>, Error> {
        Ok(self
            .locker
            .inspect(&self.key)
            .await?
            .filter(LeaseRecord::is_held))
    }

    /// A stream of leader changes: the current leader (or `None`) at once, then an item each time
    /// the leader changes (a new grant, or no leader). Reads the record once every `poll`, never
    /// more often (a backend whose change notifications return at once cannot make it spin).
    /// Backend errors are yielded as items; the stream goes on.
    pub fn observe(
        &self,
        poll: Duration,
    ) -> impl Stream<Item = Result<Option<LeaseRecord>, Error>> + Send + 'static {
        struct State {
            election: Election,
            last: Option<Option<(HolderToken, FencingToken)>>,
            /// When the record was last read.
            last_read: Option<tokio::time::Instant>,
        }
        let start = State {
            election: self.clone(),
            last: None,
            last_read: None,
        };
        futures_util::stream::unfold(start, move |mut state| async move {
            loop {
                if let Some(at) = state.last_read {
                    tokio::time::sleep(poll.saturating_sub(at.elapsed())).await;
                }
                state.last_read = Some(tokio::time::Instant::now());
                match state.election.leader().await {
                    Ok(leader) => {
                        let identity = leader.as_ref().and_then(|r| Some((r.holder?, r.fencing)));
                        if state.last.as_ref() != Some(&identity) {
                            state.last = Some(identity);
                            return Some((Ok(leader), state));
                        }
                    }
                    Err(e) => return Some((Err(e), state)),
                }
            }
        })
    }
}

/// This process's leadership: the lease on the election key.
pub struct Leadership {
    lease: Lease,
}

impl Leadership {
    /// The fencing token of this term: pass it with every leader action.
    pub fn fencing_token(&self) -> FencingToken {
        self.lease.fencing_token()
    }

    /// Whether this process is still the leader.
    pub fn is_leader(&self) -> bool {
        self.lease.is_held()
    }

    /// Resolves when leadership is lost.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        self.lease.lost()
    }

    /// A token cancelled when leadership is lost.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.lease.cancellation_token()
    }

    /// The underlying lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Steps down, releasing the key so another candidate can win at once.
    ///
    /// # Errors
    /// As [`Lease::release`].
    pub async fn resign(self) -> Result<(), Error> {
        self.lease.release().await
    }
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("lease", &self.lease)
            .finish()
    }
}
