//! Fencing on the resource side: the in-process [`Fence`] and [`StaleToken`], the one error every
//! fenced resource of this workspace returns when it refuses an older token.

use std::sync::Mutex;

use crate::token::FencingToken;

/// Guards a resource inside one process: every write presents its lease's fencing token, and the
/// fence refuses tokens older than the newest it has admitted.
///
/// This is the in-memory form of the check a real resource does (`lease-sql`'s fence table,
/// `lease-objstore`'s fenced store, a SQL `WHERE fence <= $token` of your own). The same holder
/// may write many times with its token; once a newer holder has written, the older one is refused.
///
/// ```
/// use lease_core::{Fence, FencingToken};
/// let fence = Fence::new();
/// fence.admit(FencingToken::new(5))?;
/// fence.admit(FencingToken::new(5))?; // the same holder again
/// fence.admit(FencingToken::new(6))?; // a newer holder
/// let stale = fence.admit(FencingToken::new(5)).unwrap_err(); // the old holder is fenced off
/// assert_eq!((stale.presented(), stale.current()), (FencingToken::new(5), FencingToken::new(6)));
/// # Ok::<(), lease_core::StaleToken>(())
/// ```
#[derive(Debug, Default)]
pub struct Fence {
    highest: Mutex<Option<FencingToken>>,
}

/// A write refused because the resource already recorded a newer fencing token: the writer's lease
/// was lost (expired, broken) and a newer holder has written since.
///
/// Every fenced resource in this workspace refuses with this one type — the in-process [`Fence`],
/// `lease-sql`'s fence table, `lease-objstore`'s fenced store — directly or as the source of its
/// own error, so application code handles it once with [`StaleToken::find`]. It is final: the
/// same token will be refused again, so stop the work rather than retry it.
///
/// ```
/// use lease_core::{FencingToken, StaleToken};
/// let stale = StaleToken::new(FencingToken::new(4), FencingToken::new(7));
/// // Wrapped in any error chain (an application error, `object_store::Error`, `anyhow`)…
/// let wrapped: Box<dyn std::error::Error + Send + Sync> = Box::new(stale);
/// // …it is found again by walking the chain.
/// assert_eq!(StaleToken::find(wrapped.as_ref()), Some(&stale));
/// assert_eq!(stale.to_string(), "fencing token 4 is stale: the resource already recorded token 7");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fencing token {presented} is stale: the resource already recorded token {current}")]
#[non_exhaustive]
pub struct StaleToken {
    presented: FencingToken,
    current: FencingToken,
}

impl StaleToken {
    /// `presented` was refused because the resource holds `current` (newer).
    pub const fn new(presented: FencingToken, current: FencingToken) -> Self {
        Self { presented, current }
    }

    /// The token that was refused.
    pub const fn presented(&self) -> FencingToken {
        self.presented
    }

    /// The newer token the resource had recorded when it refused.
    pub const fn current(&self) -> FencingToken {
        self.current
    }

    /// The `StaleToken` in `error` or anywhere in its chain of sources, if there is one.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a StaleToken> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(stale) = error.downcast_ref::<StaleToken>() {
                return Some(stale);
            }
            next = error.source();
        }
        None
    }
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
            Some(h) if token < h => Err(StaleToken::new(token, h)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] StaleToken);

    #[test]
    fn stale_token_is_found_deep_in_a_chain_and_not_invented() {
        let stale = StaleToken::new(FencingToken::new(1), FencingToken::new(2));
        let outer = Outer(Middle(stale));
        assert_eq!(StaleToken::find(&outer), Some(&stale));
        let unrelated = crate::InvalidInput::new("key", "empty");
        assert_eq!(StaleToken::find(&unrelated), None);
    }

    #[test]
    fn fence_refuses_only_older_tokens() {
        let fence = Fence::new();
        fence.admit(FencingToken::new(3)).unwrap();
        fence.admit(FencingToken::new(3)).unwrap();
        let err = fence.admit(FencingToken::new(2)).unwrap_err();
        assert_eq!(err.presented(), FencingToken::new(2));
        assert_eq!(err.current(), FencingToken::new(3));
        assert_eq!(fence.highest(), Some(FencingToken::new(3)));
    }
}
