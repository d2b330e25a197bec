//! An in-process fence: admits only non-decreasing fencing tokens.

use std::sync::Mutex;

use crate::token::FencingToken;

/// Guards a resource inside one process: every write presents its lease's fencing token, and the
/// fence refuses tokens older than the newest it has admitted.
///
/// This is the in-memory form of the check a real resource does (a SQL `WHERE fence <= $token`, an
/// `If-Match` on the resource's own object). The same holder may write many times with its token;
/// once a newer holder has written, the older one is refused.
///
/// ```
/// use lease_core::{Fence, FencingToken};
/// let fence = Fence::new();
/// fence.admit(FencingToken::new(5))?;
/// fence.admit(FencingToken::new(5))?; // the same holder again
/// fence.admit(FencingToken::new(6))?; // a newer holder
/// assert!(fence.admit(FencingToken::new(5)).is_err()); // the old holder is fenced off
/// # Ok::<(), lease_core::StaleToken>(())
/// ```
#[derive(Debug, Default)]
pub struct Fence {
    highest: Mutex<Option<FencingToken>>,
}

/// A token older than one the fence already admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fencing token {presented} is older than {highest}, already admitted")]
pub struct StaleToken {
    /// The token that was refused.
    pub presented: FencingToken,
    /// The newest token admitted so far.
    pub highest: FencingToken,
}

impl Fence {
    /// A fence that has admitted nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits `token` if it is at least the newest admitted so far.
    ///
    /// # Errors
    /// [`StaleToken`] when a newer token was admitted before.
    pub fn admit(&self, token: FencingToken) -> Result<(), StaleToken> {
        let mut highest = self.highest.lock().unwrap_or_else(|e| e.into_inner());
        match *highest {
            Some(h) if token < h => Err(StaleToken {
                presented: token,
                highest: h,
            }),
            _ => {
                *highest = Some(token);
                Ok(())
            }
        }
    }

    /// The newest token admitted so far.
    pub fn highest(&self) -> Option<FencingToken> {
        *self.highest.lock().unwrap_or_else(|e| e.into_inner())
    }
}
