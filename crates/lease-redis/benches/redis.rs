//! Latency and round trips of the Redis backend, next to the floor measured in the same run.
//!
//! - floor: one raw `SET key value NX PX ttl` (what redsync and most Redis locks send to acquire;
//!   no fencing, no holder check on renew or release), and for renew and release the raw
//!   `PEXPIRE` and `DEL` (no owner check);
//! - lease-redis: one `Backend` call each (one `EVALSHA`), exactly what a `Locker` sends per
//!   attempt, plus a batch renewal of 100 leases (one `EVALSHA`);
//! - hand-off: a waiter blocked in `Locker::acquire` gets the key after the holder releases:
//!   woken by the release's publish, against the same wait with a backend that only polls.
//!
//! Reads `LEASE_TEST_REDIS_URL`; skipped when unset. `cargo xtask bench --backend redis` runs it
//! with the rig's Redis up; by hand: `cargo bench -p lease-redis --bench redis`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_redis::redis::{self, aio::ConnectionManager};
use lease_redis::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, HolderMetadata,
    HolderToken, KeyPrefix, LeaseKey, LeaseRecord, Locker, RedisBackend, RedisOptions,
    ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest, RetryPolicy, async_trait,
};

const ITERATIONS: usize = 200;
const ROUNDS: usize = 5;
const HANDOFFS: usize = 20;
const BATCH: usize = 100;
const TTL: Duration = Duration::from_secs(30);

struct Stats {
    label: String,
    p50: Duration,
    p99: Duration,
    trips: f64,
}

fn stats(label: &str, mut samples: Vec<Duration>, trips: u64) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        label: label.to_owned(),
        p50: at(0.5),
        p99: at(0.99),
        trips: trips as f64 / samples.len() as f64,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn print_group(floor: &Stats, rows: &[&Stats]) {
    for row in std::iter::once(floor).chain(rows.iter().copied()) {
        println!(
            "| {} | {:.2} | {} | {} | {:.2} |",
            row.label,
            row.trips,
            ms(row.p50),
            ms(row.p99),
            row.p50.as_secs_f64() / floor.p50.as_secs_f64()
        );
    }
}

fn random() -> String {
    HolderToken::generate().to_string()[..12].to_owned()
}

async fn timed<T>(samples: &mut Vec<Duration>, f: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    samples.push(started.elapsed());
    out
}

/// Samples and round trips of every row, gathered over alternating rounds.
#[derive(Default)]
struct Samples([(Vec<Duration>, u64); 7]);

impl Samples {
    fn add(&mut self, row: usize, samples: Vec<Duration>, trips: u64) {
        self.0[row].0.extend(samples);
        self.0[row].1 += trips;
    }

    fn stats(&mut self, row: usize, label: &str) -> Stats {
        let (samples, trips) = std::mem::take(&mut self.0[row]);
        stats(label, samples, trips)
    }
}

async fn raw(conn: &mut ConnectionManager, into: &mut Samples) {
    let prefix = random();
    let (mut set, mut expire, mut del) = (vec![], vec![], vec![]);
    for i in 0..ITERATIONS {
        let key = format!("bench-floor:{prefix}:{}", i % 10);
        let holder = HolderToken::generate().to_string();
        let ok: Option<String> = timed(
            &mut set,
            redis::cmd("SET")
                .arg(&key)
                .arg(&holder)
                .arg("NX")
                .arg("PX")
                .arg(TTL.as_millis() as u64)
                .query_async(conn),
        )
        .await
        .unwrap();
        assert!(ok.is_some());
        let _: i64 = timed(
            &mut expire,
            redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(TTL.as_millis() as u64)
                .query_async(conn),
        )
        .await
        .unwrap();
        let _: i64 = timed(&mut del, redis::cmd("DEL").arg(&key).query_async(conn))
            .await
            .unwrap();
    }
    let n = ITERATIONS as u64;
    into.add(0, set, n);
    into.add(1, expire, n);
    into.add(2, del, n);
}

async fn lease_ops(backend: &RedisBackend, into: &mut Samples) {
    let meta = HolderMetadata::new("bench").unwrap();
    let prefix = random();
    let (mut acquire, mut renew, mut release) = (vec![], vec![], vec![]);
    let mut trips = [0u64; 3];
    for i in 0..ITERATIONS {
        let key = LeaseKey::new(format!("ops-{prefix}/{}", i % 10)).unwrap();
        let holder = HolderToken::generate();
        let before = backend.round_trips();
        let outcome = timed(
            &mut acquire,
            backend.acquire(&AcquireRequest::new(key.clone(), holder, TTL, meta.clone())),
        )
        .await
        .unwrap();
        trips[0] += backend.round_trips() - before;
        assert!(matches!(outcome, AcquireOutcome::Acquired(_)));
        let before = backend.round_trips();
        let outcome = timed(
            &mut renew,
            backend.renew(&RenewRequest::new(key.clone(), holder, TTL)),
        )
        .await
        .unwrap();
        trips[1] += backend.round_trips() - before;
        assert!(matches!(outcome, RenewOutcome::Renewed(_)));
        let before = backend.round_trips();
        let outcome = timed(
            &mut release,
            backend.release(&ReleaseRequest::new(key.clone(), holder)),
        )
        .await
        .unwrap();
        trips[2] += backend.round_trips() - before;
        assert_eq!(outcome, ReleaseOutcome::Released);
    }
    into.add(3, acquire, trips[0]);
    into.add(4, renew, trips[1]);
    into.add(5, release, trips[2]);
}

async fn batch(backend: &RedisBackend, into: &mut Samples) {
    let meta = HolderMetadata::new("bench").unwrap();
    let prefix = random();
    let mut requests = Vec::new();
    for i in 0..BATCH {
        let key = LeaseKey::new(format!("batch-{prefix}/{i}")).unwrap();
        let holder = HolderToken::generate();
        backend
            .acquire(&AcquireRequest::new(key.clone(), holder, TTL, meta.clone()))
            .await
            .unwrap();
        requests.push(RenewRequest::new(key, holder, TTL));
    }
    let mut samples = vec![];
    let before = backend.round_trips();
    for _ in 0..ITERATIONS / 10 {
        let results = timed(&mut samples, backend.renew_many(&requests)).await;
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(RenewOutcome::Renewed(_))))
        );
    }
    into.add(6, samples, backend.round_trips() - before);
    for r in requests {
        let _ = backend.release(&ReleaseRequest::new(r.key, r.holder)).await;
    }
}

/// The backend with its wake-ups taken away: waiters poll (the default `wait_for_change`).
#[derive(Debug)]
struct PollingOnly(RedisBackend);

#[async_trait]
impl Backend for PollingOnly {
    fn name(&self) -> &'static str {
        "redis-polling"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities().with_notifies_waiters(false)
    }
    async fn acquire(&self, r: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        self.0.acquire(r).await
    }
    async fn renew(&self, r: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        self.0.renew(r).await
    }
    async fn release(&self, r: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        self.0.release(r).await
    }
    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.0.inspect(key).await
    }
}

/// Release → a waiter blocked in `Locker::acquire` holds the key (the waiter's poll is capped at
/// 250 ms, so without a wake-up it comes up to 250 ms late).
async fn handoff(label: &str, backend: Arc<dyn Backend>) -> Stats {
    let retry = RetryPolicy::default().with_max_delay(Duration::from_millis(250));
    let holder = Locker::builder_shared(backend.clone())
        .ttl(TTL)
        .build()
        .unwrap();
    let waiter = Arc::new(
        Locker::builder_shared(backend)
            .ttl(TTL)
            .retry(retry)
            .build()
            .unwrap(),
    );
    let key = format!("handoff-{}", random());
    let mut samples = Vec::new();
    for _ in 0..HANDOFFS {
        let lease = holder.try_acquire(&key).await.unwrap().unwrap();
        let waiting = {
            let waiter = waiter.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let lease = waiter.acquire(&key).await.unwrap();
                (Instant::now(), lease)
            })
        };
        tokio::time::sleep(Duration::from_millis(600)).await;
        let released = Instant::now();
        lease.release().await.unwrap();
        let (got, lease) = waiting.await.unwrap();
        samples.push(got - released);
        lease.release().await.unwrap();
    }
    stats(label, samples, 0)
}

fn main() {
    let Ok(url) = std::env::var("LEASE_TEST_REDIS_URL") else {
        println!("SKIPPED: LEASE_TEST_REDIS_URL is not set (cargo xtask bench starts Redis)");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = RedisOptions::default()
            .with_prefix(KeyPrefix::new(format!("bench-{}:", random())).unwrap());
        let backend = RedisBackend::connect_with(&url, options).await.unwrap();
        let mut conn = backend.connection();
        // Loads the scripts (the first call of each costs NOSCRIPT + SCRIPT LOAD).
        lease_ops(&backend, &mut Samples::default()).await;
        batch(&backend, &mut Samples::default()).await;
        let mut samples = Samples::default();
        for _ in 0..ROUNDS {
            raw(&mut conn, &mut samples).await;
            lease_ops(&backend, &mut samples).await;
            batch(&backend, &mut samples).await;
        }
        let floor_acquire = samples.stats(0, "floor: SET NX PX (no fencing)");
        let floor_renew = samples.stats(1, "floor: PEXPIRE (no owner check)");
        let floor_release = samples.stats(2, "floor: DEL (no owner check)");
        let acquire = samples.stats(3, "lease-redis acquire (EVALSHA, fenced)");
        let renew = samples.stats(4, "lease-redis renew (EVALSHA, owner-checked)");
        let release = samples.stats(5, "lease-redis release (EVALSHA, owner-checked, publishes)");
        let renew_batch = samples.stats(6, "lease-redis renew_many of 100 leases (one EVALSHA)");
        let woken = handoff(
            "hand-off, woken by the release's publish",
            Arc::new(backend.clone()),
        )
        .await;
        let polled = handoff(
            "hand-off, polling only (≤ 250 ms)",
            Arc::new(PollingOnly(backend.clone())),
        )
        .await;
        println!(
            "\n### Redis ({} iterations per operation; round trips counted)\n",
            ITERATIONS * ROUNDS
        );
        println!("| operation | round trips | p50 ms | p99 ms | p50 / floor |");
        println!("|---|---|---|---|---|");
        print_group(&floor_acquire, &[&acquire]);
        print_group(&floor_renew, &[&renew, &renew_batch]);
        print_group(&floor_release, &[&release]);
        println!("\n| hand-off ({HANDOFFS} each) | p50 ms | p99 ms |\n|---|---|---|");
        for h in [&woken, &polled] {
            println!("| {} | {} | {} |", h.label, ms(h.p50), ms(h.p99));
        }
    });
}
