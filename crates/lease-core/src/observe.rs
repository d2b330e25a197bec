//! Spans and metrics of each acquire call and each lease's life, kept here so the protocol's code
//! says one line per event (see docs/observability.md for what is emitted).
//!
//! An acquire call runs in an `acquire` span; the lease it grants gets a `lease` span (a child of
//! it) that lives until the lease is released or lost, and its renewals and its release are
//! recorded in that span, so a tracing exporter shows one lease as one trace. Backend requests are
//! `backend_call` spans inside them (see `locker::traced`). No field holds a secret: the holder
//! token (which can release the lease) is never recorded.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use crate::backend::RenewOutcome;
use crate::error::{BackendError, Error, LostReason};
use crate::key::LeaseKey;
use crate::lease::Lease;
use crate::metrics::{LeaseLabels, lost_reason};
use crate::token::FencingToken;

/// The outcome label of an acquire call.
fn outcome(result: &Result<Lease, Error>) -> &'static str {
    match result {
        Ok(_) => "acquired",
        Err(Error::Held { .. }) => "held",
        Err(Error::Timeout { .. }) => "timeout",
        Err(Error::Cancelled { .. }) => "cancelled",
        Err(_) => "error",
    }
}

/// One acquire call in flight; if it is dropped before it ends, it ended as `cancelled`.
struct AcquireCall {
    span: Span,
    labels: LeaseLabels,
    started: Instant,
    ended: bool,
}

impl AcquireCall {
    fn end(&mut self, outcome: &'static str, fencing: Option<FencingToken>) {
        self.ended = true;
        let elapsed = self.started.elapsed();
        self.labels.acquire_ended(outcome, elapsed);
        self.span.record("outcome", outcome);
        self.span.record("latency_ms", elapsed.as_secs_f64() * 1e3);
        if let Some(fencing) = fencing {
            self.span.record("fencing_token", fencing.get());
        }
    }
}

impl Drop for AcquireCall {
    fn drop(&mut self) {
        if !self.ended {
            self.end("cancelled", None);
        }
    }
}

/// Runs the acquire call `call` for `key` in an `acquire` span, and records how it ended and how
/// long it took.
pub(crate) async fn acquire(
    backend: &'static str,
    key: &LeaseKey,
    call: impl Future<Output = Result<Lease, Error>>,
) -> Result<Lease, Error> {
    let span = tracing::info_span!(
        "acquire",
        key = %key,
        backend,
        outcome = Empty,
        fencing_token = Empty,
        latency_ms = Empty
    );
    let mut observed = AcquireCall {
        span: span.clone(),
        labels: LeaseLabels::new(backend, key),
        started: Instant::now(),
        ended: false,
    };
    let result = call.instrument(span).await;
    observed.end(
        outcome(&result),
        result.as_ref().ok().map(Lease::fencing_token),
    );
    result
}

/// Counts a caller waiting for a key (the waiters gauge) until it is dropped.
pub(crate) struct Waiting(LeaseLabels);

impl Waiting {
    pub(crate) fn start(backend: &'static str, key: &LeaseKey) -> Self {
        let labels = LeaseLabels::new(backend, key);
        labels.waiting(1.0);
        Self(labels)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting(-1.0);
    }
}

/// The span and metric labels of one held lease, from grant to release or loss.
#[derive(Debug)]
pub(crate) struct LeaseObserver {
    span: Span,
    labels: LeaseLabels,
}

impl LeaseObserver {
    /// A lease on `key` was granted with `fencing`: opens its span, counts it as held.
    pub(crate) fn granted(backend: &'static str, key: &LeaseKey, fencing: FencingToken) -> Self {
        let span = tracing::info_span!(
            "lease",
            key = %key,
            backend,
            fencing_token = fencing.get(),
            outcome = Empty
        );
        let labels = LeaseLabels::new(backend, key);
        labels.granted();
        Self { span, labels }
    }

    /// The lease's span, for work done on its behalf (its release).
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// A renewal was confirmed with `slack` left before the deadline it replaced.
    pub(crate) fn renewed(&self, slack: Duration) {
        self.labels.renewed(slack);
        let slack_ms = slack.as_secs_f64() * 1e3;
        tracing::debug!(parent: &self.span, slack_ms, "renewal confirmed");
    }

    /// The answer to one renewal of this lease: failures are counted (a confirmation is recorded
    /// by [`LeaseObserver::renewed`] once the deadline is extended).
    pub(crate) fn renewal_answered(&self, result: &Result<RenewOutcome, BackendError>) {
        match result {
            Ok(RenewOutcome::Renewed(_)) => {}
            Ok(RenewOutcome::NotHeld) => {
                self.labels.renewal_failed(None);
                tracing::debug!(parent: &self.span, "renewal answered: not held");
            }
            Err(e) => {
                self.labels.renewal_failed(Some(e));
                tracing::debug!(parent: &self.span, error = %e, "renewal failed");
            }
        }
    }

    /// The lease stopped being held (called once), for `reason`. A release sent after the
    /// deadline had already passed counts as a loss by deadline: the lease was lost before.
    pub(crate) fn stopped(&self, reason: LostReason, past_deadline: bool) {
        let reason = match reason {
            LostReason::Released if past_deadline => LostReason::DeadlineExpired,
            other => other,
        };
        self.labels.stopped(reason);
        let outcome = lost_reason(reason).unwrap_or("released");
        self.span.record("outcome", outcome);
        tracing::debug!(parent: &self.span, outcome, "lease ended");
    }
}
