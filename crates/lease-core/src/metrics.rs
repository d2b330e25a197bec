//! Metrics through the [`metrics`](https://docs.rs/metrics/0.24) facade (cargo feature `metrics`).
//!
//! Every [`Locker`](crate::Locker) emits the same set, whatever its backend, to whichever recorder
//! the process installed (Prometheus, OpenTelemetry, StatsD… see the `metrics` crate). Without a
//! recorder the calls do nothing; without the feature they are not compiled in at all.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | [`ACQUIRES_TOTAL`] | counter | `backend`, `outcome` | acquire calls by how they ended |
//! | [`ACQUIRE_DURATION_SECONDS`] | histogram | `backend`, `outcome` | how long each acquire call took, waiting included |
//! | [`BACKEND_REQUEST_DURATION_SECONDS`] | histogram | `backend`, `op` | latency of each request to the store |
//! | [`BACKEND_ERRORS_TOTAL`] | counter | `backend`, `op`, `class` | failed requests to the store |
//! | [`RENEWALS_TOTAL`] | counter | `backend` | confirmed renewals |
//! | [`RENEWAL_FAILURES_TOTAL`] | counter | `backend`, `class` | renewals that failed (retried while the deadline allows) |
//! | [`RENEWAL_SLACK_SECONDS`] | histogram | `backend` | time left before the holder deadline when a renewal was confirmed |
//! | [`LOST_TOTAL`] | counter | `backend`, `reason` | leases lost while held |
//! | [`HELD`] | gauge | `backend` | leases held by this process now |
//! | [`WAITERS`] | gauge | `backend` | acquire calls waiting for a key now |
//!
//! Label values: `outcome` is `acquired`, `held` (a non-waiting call found the key taken),
//! `timeout`, `cancelled` (by the caller's token, or the future was dropped) or `error`; `op` is
//! `acquire`, `renew_many`, `release`, `inspect`, `list` or `break`; `class` is `transient`, `fatal`,
//! `corrupt_record` or `unsupported` (and, for renewal failures, `not_held`); `reason` is
//! `deadline_expired`, `not_held` or `fatal_backend_error`.
//!
//! The lease key is not a label unless [`set_key_label`] turns it on (the number of keys may be
//! unbounded); it then labels every metric above except the two `backend_` ones.
//!
//! ```
//! use lease_core::{Locker, MemoryBackend};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lease_core::Error> {
//! // Install any recorder first (here none: the calls then cost an atomic load each).
//! lease_core::metrics::describe();
//! let locker = Locker::new(MemoryBackend::new());
//! let lease = locker.acquire("nightly-export").await?; // lease_acquires_total{outcome="acquired"} += 1
//! lease.release().await?;
//! # Ok(()) }
//! ```

#[cfg(feature = "metrics")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[cfg(feature = "metrics")]
use ::metrics::{
    Label, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

#[cfg(feature = "metrics")]
use crate::error::BackendErrorKind;
use crate::error::{BackendError, LostReason};
use crate::key::LeaseKey;

#[cfg(feature = "metrics")]
/// Counter: acquire calls, by `backend` and `outcome`.
pub const ACQUIRES_TOTAL: &str = "lease_acquires_total";
#[cfg(feature = "metrics")]
/// Histogram (seconds): duration of acquire calls, waiting included, by `backend` and `outcome`.
pub const ACQUIRE_DURATION_SECONDS: &str = "lease_acquire_duration_seconds";
#[cfg(feature = "metrics")]
/// Histogram (seconds): latency of each store request, by `backend` and `op`.
pub const BACKEND_REQUEST_DURATION_SECONDS: &str = "lease_backend_request_duration_seconds";
#[cfg(feature = "metrics")]
/// Counter: failed store requests, by `backend`, `op` and `class`.
pub const BACKEND_ERRORS_TOTAL: &str = "lease_backend_errors_total";
#[cfg(feature = "metrics")]
/// Counter: confirmed renewals, by `backend`.
pub const RENEWALS_TOTAL: &str = "lease_renewals_total";
#[cfg(feature = "metrics")]
/// Counter: failed renewals, by `backend` and `class`.
pub const RENEWAL_FAILURES_TOTAL: &str = "lease_renewal_failures_total";
#[cfg(feature = "metrics")]
/// Histogram (seconds): time left before the holder deadline when a renewal was confirmed, by
/// `backend`. Its low tail is the warning before a loss.
pub const RENEWAL_SLACK_SECONDS: &str = "lease_renewal_slack_seconds";
#[cfg(feature = "metrics")]
/// Counter: leases lost while held, by `backend` and `reason`.
pub const LOST_TOTAL: &str = "lease_lost_total";
#[cfg(feature = "metrics")]
/// Gauge: leases held by this process, by `backend`.
pub const HELD: &str = "lease_held";
#[cfg(feature = "metrics")]
/// Gauge: acquire calls waiting for a key, by `backend`.
pub const WAITERS: &str = "lease_waiters";

#[cfg(feature = "metrics")]
static KEY_LABEL: AtomicBool = AtomicBool::new(false);

#[cfg(feature = "metrics")]
/// Adds the lease key as a `key` label to the per-lease metrics (acquires, renewals, slack, losses,
/// held, waiters) of leases taken from now on. Off by default: turn it on only when the set of
/// keys is small and fixed, since every key makes a new time series.
pub fn set_key_label(enabled: bool) {
    KEY_LABEL.store(enabled, Ordering::Relaxed);
}

#[cfg(feature = "metrics")]
/// Registers the description and unit of every metric above with the installed recorder (an
/// exporter shows them as `# HELP` lines). Optional; call it once after installing the recorder.
pub fn describe() {
    {
        describe_counter!(ACQUIRES_TOTAL, "Acquire calls, by how they ended.");
        describe_histogram!(
            ACQUIRE_DURATION_SECONDS,
            Unit::Seconds,
            "Duration of acquire calls, waiting included."
        );
        describe_histogram!(
            BACKEND_REQUEST_DURATION_SECONDS,
            Unit::Seconds,
            "Latency of each request to the lease store."
        );
        describe_counter!(BACKEND_ERRORS_TOTAL, "Failed requests to the lease store.");
        describe_counter!(RENEWALS_TOTAL, "Confirmed lease renewals.");
        describe_counter!(RENEWAL_FAILURES_TOTAL, "Failed lease renewals.");
        describe_histogram!(
            RENEWAL_SLACK_SECONDS,
            Unit::Seconds,
            "Time left before the holder deadline when a renewal was confirmed."
        );
        describe_counter!(LOST_TOTAL, "Leases lost while held, by reason.");
        describe_gauge!(HELD, "Leases held by this process.");
        describe_gauge!(WAITERS, "Acquire calls waiting for a lease.");
    }
}

/// The label value of an error class.
#[cfg(feature = "metrics")]
fn class(kind: BackendErrorKind) -> &'static str {
    match kind {
        BackendErrorKind::Transient => "transient",
        BackendErrorKind::Fatal => "fatal",
        BackendErrorKind::CorruptRecord => "corrupt_record",
        BackendErrorKind::Unsupported => "unsupported",
    }
}

/// The label value of a loss reason; `None` for a release, which is not a loss.
pub(crate) fn lost_reason(reason: LostReason) -> Option<&'static str> {
    match reason {
        LostReason::DeadlineExpired => Some("deadline_expired"),
        LostReason::NotHeld => Some("not_held"),
        LostReason::FatalBackendError => Some("fatal_backend_error"),
        LostReason::Released => None,
    }
}

/// The labels of one lease or one acquire call: the backend, and the key when opted in.
#[derive(Clone, Debug)]
pub(crate) struct LeaseLabels {
    #[cfg(feature = "metrics")]
    labels: Vec<Label>,
}

impl LeaseLabels {
    #[inline]
    pub(crate) fn new(backend: &'static str, key: &LeaseKey) -> Self {
        #[cfg(feature = "metrics")]
        {
            let mut labels = vec![Label::from_static_parts("backend", backend)];
            if KEY_LABEL.load(Ordering::Relaxed) {
                labels.push(Label::new("key", key.as_str().to_owned()));
            }
            Self { labels }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (backend, key);
            Self {}
        }
    }

    #[cfg(feature = "metrics")]
    fn with(&self, name: &'static str, value: &'static str) -> Vec<Label> {
        let mut labels = self.labels.clone();
        labels.push(Label::from_static_parts(name, value));
        labels
    }

    /// An acquire call ended with `outcome` after `elapsed`.
    #[inline]
    pub(crate) fn acquire_ended(&self, outcome: &'static str, elapsed: Duration) {
        #[cfg(feature = "metrics")]
        {
            counter!(ACQUIRES_TOTAL, self.with("outcome", outcome)).increment(1);
            histogram!(ACQUIRE_DURATION_SECONDS, self.with("outcome", outcome))
                .record(elapsed.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (outcome, elapsed);
    }

    /// A caller started (`+1`) or stopped (`-1`) waiting for a key.
    #[inline]
    pub(crate) fn waiting(&self, delta: f64) {
        #[cfg(feature = "metrics")]
        gauge!(WAITERS, self.labels.clone()).increment(delta);
        #[cfg(not(feature = "metrics"))]
        let _ = delta;
    }

    /// A lease was granted: one more held.
    #[inline]
    pub(crate) fn granted(&self) {
        #[cfg(feature = "metrics")]
        gauge!(HELD, self.labels.clone()).increment(1.0);
    }

    /// A renewal was confirmed with `slack` left before the old deadline.
    #[inline]
    pub(crate) fn renewed(&self, slack: Duration) {
        #[cfg(feature = "metrics")]
        {
            counter!(RENEWALS_TOTAL, self.labels.clone()).increment(1);
            histogram!(RENEWAL_SLACK_SECONDS, self.labels.clone()).record(slack.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = slack;
    }

    /// A renewal failed: the store answered "not held" (`error` is `None`) or with `error`.
    #[inline]
    pub(crate) fn renewal_failed(&self, error: Option<&BackendError>) {
        #[cfg(feature = "metrics")]
        {
            let class = error.map_or("not_held", |e| class(e.kind()));
            counter!(RENEWAL_FAILURES_TOTAL, self.with("class", class)).increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = error;
    }

    /// The lease stopped being held (called once per lease), for `reason`.
    #[inline]
    pub(crate) fn stopped(&self, reason: LostReason) {
        #[cfg(feature = "metrics")]
        {
            gauge!(HELD, self.labels.clone()).decrement(1.0);
            if let Some(reason) = lost_reason(reason) {
                counter!(LOST_TOTAL, self.with("reason", reason)).increment(1);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = reason;
    }
}

/// One request to the store (`op`) took `elapsed` and failed with `error`, if it did.
#[inline]
pub(crate) fn backend_request(
    backend: &'static str,
    op: &'static str,
    elapsed: Duration,
    error: Option<&BackendError>,
) {
    #[cfg(feature = "metrics")]
    {
        histogram!(BACKEND_REQUEST_DURATION_SECONDS, "backend" => backend, "op" => op)
            .record(elapsed.as_secs_f64());
        if let Some(e) = error {
            counter!(BACKEND_ERRORS_TOTAL, "backend" => backend, "op" => op, "class" => class(e.kind()))
                .increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, op, elapsed, error);
}

/// One batch renewal took `elapsed`; each failed result counts as an error of `renew_many`.
#[inline]
pub(crate) fn renew_batch<T>(
    backend: &'static str,
    elapsed: Duration,
    results: &[Result<T, BackendError>],
) {
    #[cfg(feature = "metrics")]
    {
        histogram!(BACKEND_REQUEST_DURATION_SECONDS, "backend" => backend, "op" => "renew_many")
            .record(elapsed.as_secs_f64());
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            counter!(BACKEND_ERRORS_TOTAL, "backend" => backend, "op" => "renew_many", "class" => class(e.kind()))
                .increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, elapsed, results);
}
