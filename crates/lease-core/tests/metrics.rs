//! The metrics every locker emits (feature `metrics`), recorded by `metrics-util`'s
//! `DebuggingRecorder` on the paused clock and compared whole: each test states every series the
//! scenario must produce, with exact counts and histogram samples, so a missing, extra or
//! misplaced call fails it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lease_core::conformance::{FaultyBackend, Op};
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, BackendErrorKind, CancellationToken,
    Capabilities, Error, LeaseKey, LeaseRecord, Locker, LostReason, MemoryBackend, ReleaseOutcome,
    ReleaseRequest, RenewOutcome, RenewRequest, RetryPolicy,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const TTL: Duration = Duration::from_secs(3);

/// A recorded value, with histogram samples sorted (their order is not part of the contract).
#[derive(Debug, PartialEq)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

/// `name{label=value,…}` (labels sorted) → value.
type Series = BTreeMap<String, Value>;

fn series(snapshotter: &Snapshotter) -> Series {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let mut labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
            let value = match value {
                DebugValue::Counter(n) => Value::Counter(n),
                DebugValue::Gauge(g) => Value::Gauge(g.into_inner()),
                DebugValue::Histogram(samples) => {
                    let mut samples: Vec<f64> =
                        samples.into_iter().map(|s| s.into_inner()).collect();
                    samples.sort_by(f64::total_cmp);
                    Value::Histogram(samples)
                }
            };
            (name, value)
        })
        .collect()
}

/// Runs `scenario` on a paused current-thread runtime with a fresh recorder in force, and returns
/// everything recorded. The scenario gets the snapshotter for looks at gauges mid-way.
fn record<F: Future<Output = ()>>(scenario: impl FnOnce(Snapshotter) -> F) -> Series {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let inner = snapshotter.clone();
    metrics::with_local_recorder(&recorder, || runtime.block_on(scenario(inner)));
    series(&snapshotter)
}

fn expect(entries: &[(&str, Value)]) -> Series {
    let mut expected = Series::new();
    for (name, value) in entries {
        let value = match value {
            Value::Counter(n) => Value::Counter(*n),
            Value::Gauge(g) => Value::Gauge(*g),
            Value::Histogram(s) => Value::Histogram(s.clone()),
        };
        assert!(
            expected.insert((*name).to_owned(), value).is_none(),
            "{name} twice"
        );
    }
    expected
}

fn zeros(n: u64) -> Value {
    Value::Histogram(vec![0.0; n as usize])
}

fn locker_on(backend: impl Backend) -> Locker {
    Locker::builder(backend)
        .ttl(TTL)
        .retry(
            RetryPolicy::default()
                .with_jitter(false)
                .with_factor(1.0)
                .with_initial_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_millis(200)),
        )
        .build()
        .unwrap()
}

/// Time left before the deadline at each regular renewal: the holder window minus the interval.
fn regular_slack(locker: &Locker) -> f64 {
    let options = locker.options();
    (options.holder_window(TTL) - options.renew_interval).as_secs_f64()
}

#[test]
fn an_uncontended_acquire_renew_release_records_exactly_its_calls() {
    let mut slack = 0.0;
    let recorded = record(|_| async {
        let locker = locker_on(MemoryBackend::new());
        slack = regular_slack(&locker);
        let lease = locker.acquire("job").await.unwrap();
        // Renewals at 1 s and 2 s (every TTL/3).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        lease.release().await.unwrap();
    });
    let expected = expect(&[
        (
            "lease_acquires_total{backend=memory,outcome=acquired}",
            Value::Counter(1),
        ),
        (
            "lease_acquire_duration_seconds{backend=memory,outcome=acquired}",
            zeros(1),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=acquire}",
            zeros(1),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=renew_many}",
            zeros(2),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=release}",
            zeros(1),
        ),
        ("lease_renewals_total{backend=memory}", Value::Counter(2)),
        (
            "lease_renewal_slack_seconds{backend=memory}",
            Value::Histogram(vec![slack, slack]),
        ),
        ("lease_held{backend=memory}", Value::Gauge(0.0)),
        ("lease_waiters{backend=memory}", Value::Gauge(0.0)),
    ]);
    assert_eq!(recorded, expected);
    assert!(slack > 1.6 && slack < 1.7, "{slack}");
}

#[test]
fn the_held_and_waiters_gauges_count_what_is_happening_now() {
    let mut during = Series::new();
    let during_ref = &mut during;
    record(|snapshotter| async move {
        let store = MemoryBackend::new();
        let holder = locker_on(store.clone());
        let _lease = holder.acquire_now("job").await.unwrap();
        let waiter = locker_on(store);
        let waiting = tokio::spawn(async move { waiter.acquire("job").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        *during_ref = series(&snapshotter);
        waiting.abort();
    });
    assert_eq!(
        during.get("lease_held{backend=memory}"),
        Some(&Value::Gauge(1.0))
    );
    assert_eq!(
        during.get("lease_waiters{backend=memory}"),
        Some(&Value::Gauge(1.0))
    );
}

#[test]
fn a_contended_acquire_records_its_wait() {
    let recorded = record(|_| async {
        let store = MemoryBackend::new();
        let first = locker_on(store.clone());
        let lease = first.acquire_now("job").await.unwrap();
        // Polls far apart: the second waiter is woken by the release, not by a poll.
        let second = Locker::builder(store)
            .ttl(TTL)
            .retry(
                RetryPolicy::default()
                    .with_jitter(false)
                    .with_initial_delay(Duration::from_secs(10))
                    .with_max_delay(Duration::from_secs(10)),
            )
            .build()
            .unwrap();
        let waiting = tokio::spawn(async move {
            let lease = second.acquire("job").await.unwrap();
            lease.release().await.unwrap();
        });
        // One renewal (at 1 s) before the release.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        lease.release().await.unwrap();
        waiting.await.unwrap();
    });
    let mut slack = 0.0;
    record(|_| async { slack = regular_slack(&locker_on(MemoryBackend::new())) });
    let expected = expect(&[
        (
            "lease_acquires_total{backend=memory,outcome=acquired}",
            Value::Counter(2),
        ),
        (
            "lease_acquire_duration_seconds{backend=memory,outcome=acquired}",
            Value::Histogram(vec![0.0, 1.5]),
        ),
        // The first holder's grant; the waiter's "held" answer and its grant after the wake-up.
        (
            "lease_backend_request_duration_seconds{backend=memory,op=acquire}",
            zeros(3),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=renew_many}",
            zeros(1),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=release}",
            zeros(2),
        ),
        ("lease_renewals_total{backend=memory}", Value::Counter(1)),
        (
            "lease_renewal_slack_seconds{backend=memory}",
            Value::Histogram(vec![slack]),
        ),
        ("lease_held{backend=memory}", Value::Gauge(0.0)),
        ("lease_waiters{backend=memory}", Value::Gauge(0.0)),
    ]);
    assert_eq!(recorded, expected);
}

#[test]
fn held_timeout_and_cancelled_outcomes_are_counted_with_their_durations() {
    let recorded = record(|_| async {
        let store = MemoryBackend::new();
        let _lease = locker_on(store.clone()).acquire_now("job").await.unwrap();
        let other = locker_on(store);
        assert!(other.try_acquire("job").await.unwrap().is_none());
        let timeout = other
            .acquire_timeout("job", Duration::from_millis(700))
            .await;
        assert!(matches!(timeout, Err(Error::Timeout { .. })), "{timeout:?}");
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            canceller.cancel();
        });
        let cancelled = other.acquire_cancellable("job", &cancel).await;
        assert!(
            matches!(cancelled, Err(Error::Cancelled { .. })),
            "{cancelled:?}"
        );
        // A dropped acquire future counts as cancelled too.
        let dropped = tokio::time::timeout(Duration::from_millis(100), other.acquire("job")).await;
        assert!(dropped.is_err());
    });
    let count = |name: &str| match recorded.get(name) {
        Some(Value::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    };
    let samples = |name: &str| match recorded.get(name) {
        Some(Value::Histogram(s)) => s.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(
        count("lease_acquires_total{backend=memory,outcome=acquired}"),
        1
    );
    assert_eq!(
        count("lease_acquires_total{backend=memory,outcome=held}"),
        1
    );
    assert_eq!(
        count("lease_acquires_total{backend=memory,outcome=timeout}"),
        1
    );
    assert_eq!(
        count("lease_acquires_total{backend=memory,outcome=cancelled}"),
        2
    );
    assert_eq!(
        samples("lease_acquire_duration_seconds{backend=memory,outcome=held}"),
        [0.0]
    );
    assert_eq!(
        samples("lease_acquire_duration_seconds{backend=memory,outcome=timeout}"),
        [0.7]
    );
    assert_eq!(
        samples("lease_acquire_duration_seconds{backend=memory,outcome=cancelled}"),
        [0.1, 0.3]
    );
    assert_eq!(
        recorded.get("lease_waiters{backend=memory}"),
        Some(&Value::Gauge(0.0))
    );
    // The one lease was dropped at the end of the scenario.
    assert_eq!(
        recorded.get("lease_held{backend=memory}"),
        Some(&Value::Gauge(0.0))
    );
    assert!(
        !recorded
            .keys()
            .any(|k| k.starts_with("lease_backend_errors_total"))
    );
}

#[test]
fn a_loss_by_deadline_counts_the_failed_renewals_and_the_loss() {
    let mut renewals_sent = 0;
    let recorded = record(|_| async {
        let faulty = FaultyBackend::new(Arc::new(MemoryBackend::new()));
        let locker = locker_on(faulty.clone());
        let lease = locker.acquire_now("job").await.unwrap();
        faulty.drop_renewals(true);
        assert_eq!(lease.lost().await, LostReason::DeadlineExpired);
        renewals_sent = faulty.calls(Op::Renew);
        std::mem::forget(lease); // no release: only the loss is under test
    });
    assert!(renewals_sent >= 2, "{renewals_sent}");
    let expected = expect(&[
        (
            "lease_acquires_total{backend=memory,outcome=acquired}",
            Value::Counter(1),
        ),
        (
            "lease_acquire_duration_seconds{backend=memory,outcome=acquired}",
            zeros(1),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=acquire}",
            zeros(1),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=renew_many}",
            zeros(renewals_sent),
        ),
        (
            "lease_backend_errors_total{backend=memory,class=transient,op=renew_many}",
            Value::Counter(renewals_sent),
        ),
        (
            "lease_renewal_failures_total{backend=memory,class=transient}",
            Value::Counter(renewals_sent),
        ),
        (
            "lease_lost_total{backend=memory,reason=deadline_expired}",
            Value::Counter(1),
        ),
        ("lease_held{backend=memory}", Value::Gauge(0.0)),
    ]);
    assert_eq!(recorded, expected);
}

#[test]
fn a_loss_by_not_held_counts_the_answer_and_the_loss() {
    let recorded = record(|_| async {
        let store = MemoryBackend::new();
        let lease = locker_on(store.clone()).acquire_now("job").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        locker_on(store).break_lease("job").await.unwrap();
        assert_eq!(lease.lost().await, LostReason::NotHeld);
        std::mem::forget(lease);
    });
    let expected = expect(&[
        (
            "lease_acquires_total{backend=memory,outcome=acquired}",
            Value::Counter(1),
        ),
        (
            "lease_acquire_duration_seconds{backend=memory,outcome=acquired}",
            zeros(1),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=acquire}",
            zeros(1),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=break}",
            zeros(1),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=renew_many}",
            zeros(1),
        ),
        (
            "lease_renewal_failures_total{backend=memory,class=not_held}",
            Value::Counter(1),
        ),
        (
            "lease_lost_total{backend=memory,reason=not_held}",
            Value::Counter(1),
        ),
        ("lease_held{backend=memory}", Value::Gauge(0.0)),
    ]);
    assert_eq!(recorded, expected);
}

/// A store whose acquire always fails with one class of error; reads go to a real store.
#[derive(Debug)]
struct FailingAcquire {
    kind: BackendErrorKind,
    store: MemoryBackend,
}

#[async_trait]
impl Backend for FailingAcquire {
    fn name(&self) -> &'static str {
        "failing"
    }
    fn capabilities(&self) -> Capabilities {
        self.store.capabilities()
    }
    async fn acquire(&self, _: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        Err(BackendError::new(self.kind, "failing", "injected"))
    }
    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.store.renew(request).await
    }
    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.store.release(request).await
    }
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.store.inspect(key).await
    }
}

#[test]
fn backend_errors_are_counted_by_class() {
    for (kind, class) in [
        (BackendErrorKind::Transient, "transient"),
        (BackendErrorKind::Fatal, "fatal"),
        (BackendErrorKind::CorruptRecord, "corrupt_record"),
        (BackendErrorKind::Unsupported, "unsupported"),
    ] {
        let recorded = record(|_| async {
            let locker = locker_on(FailingAcquire {
                kind,
                store: MemoryBackend::new(),
            });
            let result = locker.try_acquire("job").await;
            assert!(
                matches!(result, Err(Error::Backend(ref e)) if e.kind() == kind),
                "{result:?}"
            );
        });
        let mut expected = expect(&[
            (
                "lease_acquires_total{backend=failing,outcome=error}",
                Value::Counter(1),
            ),
            (
                "lease_acquire_duration_seconds{backend=failing,outcome=error}",
                zeros(1),
            ),
            (
                "lease_backend_request_duration_seconds{backend=failing,op=acquire}",
                zeros(1),
            ),
        ]);
        let errors =
            format!("lease_backend_errors_total{{backend=failing,class={class},op=acquire}}");
        expected.insert(errors, Value::Counter(1));
        if kind == BackendErrorKind::Transient {
            // An unknown outcome is resolved by reading the record back.
            expected.insert(
                "lease_backend_request_duration_seconds{backend=failing,op=inspect}".to_owned(),
                zeros(1),
            );
        }
        assert_eq!(recorded, expected, "{class}");
    }
}

#[test]
fn list_and_inspect_are_store_requests_too() {
    let recorded = record(|_| async {
        let faulty = FaultyBackend::new(Arc::new(MemoryBackend::new()));
        faulty.set_latency(Duration::from_millis(40));
        let locker = locker_on(faulty.clone());
        assert!(locker.list("jobs/").await.unwrap().is_empty());
        assert!(locker.inspect("jobs/a").await.unwrap().is_none());
        faulty.fail_next(Op::List, 1);
        assert!(locker.list("jobs/").await.is_err());
    });
    let expected = expect(&[
        (
            "lease_backend_request_duration_seconds{backend=memory,op=list}",
            Value::Histogram(vec![0.04, 0.04]),
        ),
        (
            "lease_backend_request_duration_seconds{backend=memory,op=inspect}",
            Value::Histogram(vec![0.04]),
        ),
        (
            "lease_backend_errors_total{backend=memory,class=transient,op=list}",
            Value::Counter(1),
        ),
    ]);
    assert_eq!(recorded, expected);
}

#[test]
fn backend_request_latency_is_the_time_the_store_took() {
    let recorded = record(|_| async {
        let faulty = FaultyBackend::new(Arc::new(MemoryBackend::new()));
        faulty.set_latency(Duration::from_millis(250));
        let locker = locker_on(faulty);
        let lease = locker.acquire_now("job").await.unwrap();
        lease.release().await.unwrap();
    });
    assert_eq!(
        recorded.get("lease_backend_request_duration_seconds{backend=memory,op=acquire}"),
        Some(&Value::Histogram(vec![0.25]))
    );
    assert_eq!(
        recorded.get("lease_acquire_duration_seconds{backend=memory,outcome=acquired}"),
        Some(&Value::Histogram(vec![0.25]))
    );
    assert_eq!(
        recorded.get("lease_backend_request_duration_seconds{backend=memory,op=release}"),
        Some(&Value::Histogram(vec![0.25]))
    );
}

/// A store whose renewals always fail with one class of error.
#[derive(Debug)]
struct FailingRenew {
    kind: BackendErrorKind,
    store: MemoryBackend,
}

#[async_trait]
impl Backend for FailingRenew {
    fn name(&self) -> &'static str {
        "failing"
    }
    fn capabilities(&self) -> Capabilities {
        self.store.capabilities()
    }
    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.store.acquire(request).await
    }
    async fn renew(&self, _: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        Err(BackendError::new(self.kind, "failing", "injected"))
    }
    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.store.release(request).await
    }
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.store.inspect(key).await
    }
}

#[test]
fn a_fatal_renewal_failure_is_counted_by_class_and_as_a_loss() {
    let recorded = record(|_| async {
        let locker = locker_on(FailingRenew {
            kind: BackendErrorKind::Fatal,
            store: MemoryBackend::new(),
        });
        let lease = locker.acquire_now("job").await.unwrap();
        assert_eq!(lease.lost().await, LostReason::FatalBackendError);
        std::mem::forget(lease);
    });
    let expected = expect(&[
        (
            "lease_acquires_total{backend=failing,outcome=acquired}",
            Value::Counter(1),
        ),
        (
            "lease_acquire_duration_seconds{backend=failing,outcome=acquired}",
            zeros(1),
        ),
        (
            "lease_backend_request_duration_seconds{backend=failing,op=acquire}",
            zeros(1),
        ),
        (
            "lease_backend_request_duration_seconds{backend=failing,op=renew_many}",
            zeros(1),
        ),
        (
            "lease_backend_errors_total{backend=failing,class=fatal,op=renew_many}",
            Value::Counter(1),
        ),
        (
            "lease_renewal_failures_total{backend=failing,class=fatal}",
            Value::Counter(1),
        ),
        (
            "lease_lost_total{backend=failing,reason=fatal_backend_error}",
            Value::Counter(1),
        ),
        ("lease_held{backend=failing}", Value::Gauge(0.0)),
    ]);
    assert_eq!(recorded, expected);
}
