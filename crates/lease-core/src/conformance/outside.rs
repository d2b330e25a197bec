//! Outside writers: a key's record changed behind the backend's back, and the case that checks
//! fencing survives it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{CaseResult, Harness};
use crate::error::{BackendErrorKind, Error};
use crate::key::LeaseKey;
use crate::token::FencingToken;

/// What an [`OutsideWriter`] does to a key's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutsideChange {
    /// The record is removed: a `DELETE` on the table, a deleted object or blob, a bucket
    /// lifecycle rule.
    Delete,
    /// The record is replaced by content that carries no counter the backend can read: a plain
    /// upload over an Azure lease blob (it wipes the metadata), foreign bytes in a lease object.
    Overwrite,
}

impl fmt::Display for OutsideChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delete => "delete",
            Self::Overwrite => "overwrite",
        })
    }
}

/// Whether an [`OutsideWriter`] made the change it was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutsideWrite {
    /// The record was changed.
    Done,
    /// This store has no such change (for example a SQL row always has its `fencing` column:
    /// there is nothing to overwrite it with but another counter).
    NotApplicable,
}

type WriterFn = dyn Fn(LeaseKey, OutsideChange) -> BoxFuture<'static, Result<OutsideWrite, String>>
    + Send
    + Sync;

/// Changes a key's record behind the backend's back, as another tool, a lifecycle rule or a person
/// would: given to [`Harness::with_outside_writer`](super::Harness::with_outside_writer) so the
/// kit can check that the next grant's fencing token is still higher than every earlier one.
///
/// ```
/// use lease_core::MemoryBackend;
/// use lease_core::conformance::{Harness, OutsideChange, OutsideWrite, OutsideWriter};
///
/// let backend = MemoryBackend::new();
/// let store = backend.clone();
/// let writer = OutsideWriter::new(move |key, change| {
///     let store = store.clone();
///     async move {
///         match change {
///             OutsideChange::Delete => {
///                 store.forget(&key);
///                 Ok(OutsideWrite::Done)
///             }
///             _ => Ok(OutsideWrite::NotApplicable),
///         }
///     }
/// });
/// let harness = Harness::new(backend).with_outside_writer(writer);
/// assert!(harness.outside_writer().is_some());
/// ```
#[derive(Clone)]
pub struct OutsideWriter(Arc<WriterFn>);

impl OutsideWriter {
    /// A writer that runs `change` on the record of `key`; an `Err` is a failure of the test rig.
    pub fn new<F, Fut>(change: F) -> Self
    where
        F: Fn(LeaseKey, OutsideChange) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<OutsideWrite, String>> + Send + 'static,
    {
        Self(Arc::new(move |key, what| Box::pin(change(key, what))))
    }

    /// Applies `change` to the record of `key`.
    ///
    /// # Errors
    /// The writer's own description of what failed.
    pub async fn apply(
        &self,
        key: LeaseKey,
        change: OutsideChange,
    ) -> Result<OutsideWrite, String> {
        (self.0)(key, change).await
    }
}

impl fmt::Debug for OutsideWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OutsideWriter(..)")
    }
}

/// Grants `key` through the harness locker and releases it at once; returns the token. A record
/// the backend cannot read is broken first (by an operator's explicit break) when the backend
/// can break.
async fn grant_and_release(h: &Harness, key: &LeaseKey) -> Result<FencingToken, String> {
    let locker = h.locker();
    let lease = match locker.try_acquire(key).await {
        Ok(Some(lease)) => lease,
        Ok(None) => return Err(format!("{key} should be free but is held")),
        Err(Error::Backend(e))
            if e.kind() == BackendErrorKind::CorruptRecord
                && h.backend().capabilities().can_break =>
        {
            h.backend()
                .break_lease(key)
                .await
                .map_err(|e| format!("break of the unreadable record of {key}: {e}"))?;
            locker
                .try_acquire(key)
                .await
                .map_err(|e| format!("try_acquire after the break: {e}"))?
                .ok_or_else(|| format!("{key} is held right after a break"))?
        }
        Err(e) => return Err(format!("try_acquire of {key}: {e}")),
    };
    let token = lease.fencing_token();
    lease
        .release()
        .await
        .map_err(|e| format!("release of {key}: {e}"))?;
    Ok(token)
}

/// The record deleted or overwritten behind the backend's back: the next grant's token is still
/// higher than every token issued before.
pub(crate) async fn fencing_survives_outside_changes(h: &Harness) -> CaseResult {
    let Some(writer) = h.outside_writer() else {
        eprintln!(
            "SKIPPED: fencing_survives_outside_changes: the {} harness has no outside writer \
             (Harness::with_outside_writer), so outside deletes and overwrites are not checked",
            h.backend().name()
        );
        return Ok(());
    };
    for change in [OutsideChange::Delete, OutsideChange::Overwrite] {
        let key = h.key(&format!("outside-{change}"));
        let mut highest = FencingToken::new(0);
        for _ in 0..3 {
            let token = grant_and_release(h, &key).await?;
            if token <= highest {
                return Err(format!(
                    "token {token} after {highest} before any outside change"
                ));
            }
            highest = token;
        }
        match writer.apply(key.clone(), change).await {
            Ok(OutsideWrite::Done) => {}
            Ok(OutsideWrite::NotApplicable) => {
                eprintln!(
                    "SKIPPED: fencing_survives_outside_changes: {change} does not apply to {}",
                    h.backend().name()
                );
                continue;
            }
            Err(e) => return Err(format!("the outside writer failed to {change} {key}: {e}")),
        }
        let after = grant_and_release(h, &key).await?;
        if after <= highest {
            return Err(format!(
                "after an outside {change} of {key}, the next grant got token {after}, not above \
                 {highest} issued before: the counter went back"
            ));
        }
        let next = grant_and_release(h, &key).await?;
        if next <= after {
            return Err(format!(
                "after an outside {change}, token {next} followed {after}: not rising"
            ));
        }
    }
    Ok(())
}
