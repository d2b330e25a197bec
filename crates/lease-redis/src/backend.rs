//! [`RedisBackend`]: one `EVALSHA` per operation.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lease_core::{
    AcquireOutcome, AcquireRequest, Backend, BackendError, Capabilities, ClockModel, Grant,
    LeaseKey, LeaseRecord, ReleaseOutcome, ReleaseRequest, RenewOutcome, RenewRequest,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, ServerErrorKind, Value};
use tokio::task::JoinHandle;

use crate::error::{NAME, classify, unexpected};
use crate::notify::listen;
use crate::record::{Stored, counter};
use crate::scripts::{Script, Scripts};
use crate::{KeyPrefix, RedisOptions};

/// The shortest TTL accepted (Redis's `PX` resolution).
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// The longest TTL accepted.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Leases in Redis (or Valkey) 7 or later, on the server's clock.
///
/// A lease on `KEY` is the string `PREFIX{KEY}` with a `PX` expiry; its fencing counter is
/// `PREFIX{KEY}:fence`, which never expires and is never deleted. Each operation is one
/// `EVALSHA` of a script (loaded on first use, and again after `NOSCRIPT`: that retry is safe, the
/// script had not run). Releases publish on the lease key's name, and
/// [`Backend::wait_for_change`] listens (one extra connection per backend), so a waiting
/// [`Locker::acquire`](crate::Locker::acquire) gets the key about one round trip after its release.
///
/// Cloning is cheap and shares the connection. See `docs/backends/redis.md` for the layout, the
/// scripts, and which persistence and replication settings the guarantees need.
///
/// ```no_run
/// use lease_redis::{Locker, RedisBackend};
/// # #[tokio::main] async fn main() -> Result<(), lease_redis::Error> {
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379/0").await?;
/// let locker = Locker::new(backend);
/// let lease = locker.acquire("billing/run").await?;
/// println!("fencing token {}", lease.fencing_token());
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    options: RedisOptions,
    scripts: Scripts,
    trips: AtomicU64,
    target: String,
    notifier: Arc<lease_core::KeyWakeups>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl RedisBackend {
    /// Connects to `url` with [`RedisOptions::default`].
    ///
    /// URLs: `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS, with the `tls`
    /// feature, on by default), `redis+unix:///path/to/socket[?db=N&pass=…]` or `unix://…`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a URL that cannot be parsed;
    /// [`Error::Backend`](crate::Error::Backend) when the server cannot be reached (transient) or
    /// refuses the login (fatal). Messages never contain the password.
    pub async fn connect(url: &str) -> Result<Self, lease_core::Error> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Like [`RedisBackend::connect`], with options.
    ///
    /// # Errors
    /// As [`RedisBackend::connect`].
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, lease_core::Error> {
        #[cfg(feature = "tls")]
        if url.starts_with("rediss://") {
            crate::tls::ensure_crypto_provider();
        }
        let client = redis::Client::open(url).map_err(|e| {
            lease_core::InvalidInput::new(
                "redis url",
                crate::redact::scrub(format!("cannot be used: {e}"), url),
            )
        })?;
        Self::from_client_with(client, crate::redact::redacted_url(url), options).await
    }

    /// Uses an already configured [`redis::Client`] (custom TLS, RESP3…).
    ///
    /// # Errors
    /// As [`RedisBackend::connect`].
    pub async fn from_client(
        client: redis::Client,
        options: RedisOptions,
    ) -> Result<Self, lease_core::Error> {
        let target = format!("{:?}", client.get_connection_info().addr());
        Self::from_client_with(client, target, options).await
    }

    async fn from_client_with(
        client: redis::Client,
        target: String,
        options: RedisOptions,
    ) -> Result<Self, lease_core::Error> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.connection_timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| classify("connect", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                options,
                scripts: Scripts::new(),
                trips: AtomicU64::new(0),
                target,
                notifier: Arc::new(lease_core::KeyWakeups::default()),
                listener: Mutex::new(None),
            }),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.inner.options.prefix
    }

    /// The Redis key holding the lease on `key`: `PREFIX{KEY}`.
    pub fn lease_key(&self, key: &LeaseKey) -> String {
        format!("{}{{{}}}", self.inner.options.prefix, key.as_str())
    }

    /// The Redis key holding the fencing counter of `key`: `PREFIX{KEY}:fence`.
    pub fn fence_key(&self, key: &LeaseKey) -> String {
        format!("{}{{{}}}:fence", self.inner.options.prefix, key.as_str())
    }

    /// A handle on the connection the operations use (tests and tools; it shares the
    /// connection).
    pub fn connection(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// How many requests this backend has sent and waited for: every `EVALSHA`, `SCRIPT LOAD`
    /// and `SCAN`. The subscribe connection is not counted.
    pub fn round_trips(&self) -> u64 {
        self.inner.trips.load(Ordering::Relaxed)
    }

    async fn query(&self, op: &str, cmd: &redis::Cmd) -> Result<Value, redis::RedisError> {
        let _ = op;
        self.inner.trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.inner.conn.clone();
        cmd.query_async::<Value>(&mut conn).await
    }

    /// Runs `script` by its hash; on `NOSCRIPT` (a restarted or flushed server) loads it and
    /// runs it once more. That is not a retried conditional write: the first call never ran.
    async fn eval(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<Value, BackendError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha).arg(keys.len()).arg(keys).arg(args);
        match self.query(script.name, &cmd).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(&script.source);
                self.query("script load", &load)
                    .await
                    .map_err(|e| classify(script.name, e))?;
                self.query(script.name, &cmd)
                    .await
                    .map_err(|e| classify(script.name, e))
            }
            other => other.map_err(|e| classify(script.name, e)),
        }
    }

    /// Reads `key` (one script call: value, remaining time and counter at one instant).
    async fn read(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let keys = [self.lease_key(key), self.fence_key(key)];
        let reply = self.eval(&self.inner.scripts.read, &keys, &[]).await?;
        decode_snapshot(key, "read", reply)
    }

    fn ensure_listener(&self) {
        let mut task = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        *task = Some(tokio::spawn(listen(
            self.inner.client.clone(),
            self.inner.options.prefix.as_str().to_owned(),
            Arc::clone(&self.inner.notifier),
        )));
    }
}

fn checked_ttl_ms(ttl: Duration) -> Result<u64, BackendError> {
    capabilities()
        .check_ttl(ttl)
        .map_err(|e| BackendError::invalid_input(NAME, e))?;
    Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
}

fn capabilities() -> Capabilities {
    Capabilities::new(MIN_TTL, MAX_TTL, ClockModel::StoreClock)
        .with_batch_renew(true)
        .with_notifies_waiters(true)
        .with_break(true)
        .with_takeover_tolerance(Duration::from_millis(100))
}

fn int(op: &str, value: &Value) -> Result<i64, BackendError> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unexpected(op, "a number was expected")),
        other => Err(unexpected(op, format!("{other:?}"))),
    }
}

fn bytes<'a>(op: &str, value: &'a Value) -> Result<Option<&'a [u8]>, BackendError> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        other => Err(unexpected(op, format!("{other:?}"))),
    }
}

fn array<'a>(op: &str, value: &'a Value, len: usize) -> Result<&'a [Value], BackendError> {
    match value {
        Value::Array(items) if items.len() == len => Ok(items),
        other => Err(unexpected(op, format!("{other:?}"))),
    }
}

/// `{value, pttl, counter}` as the read and break scripts answer.
fn decode_snapshot(
    key: &LeaseKey,
    op: &str,
    reply: Value,
) -> Result<Option<LeaseRecord>, BackendError> {
    let items = array(op, &reply, 3)?;
    let pttl = int(op, &items[1])?;
    let fence = bytes(op, &items[2])?;
    match bytes(op, &items[0])? {
        Some(value) => Stored::decode(key, value)?.into_record(key, pttl).map(Some),
        None => match fence {
            Some(fence) => Ok(Some(LeaseRecord::free(key.clone(), counter(key, fence)?))),
            None => Ok(None),
        },
    }
}

fn fencing(
    op: &str,
    key: &LeaseKey,
    value: &Value,
) -> Result<lease_core::FencingToken, BackendError> {
    match value {
        Value::BulkString(b) => counter(key, b),
        other => Err(unexpected(op, format!("{other:?}"))),
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, BackendError> {
        let ttl = checked_ttl_ms(request.ttl)?;
        let key = &request.key;
        let keys = [self.lease_key(key), self.fence_key(key)];
        let args = [
            request.holder.to_string(),
            ttl.to_string(),
            request.metadata.as_str().to_owned(),
        ];
        let reply = self.eval(&self.inner.scripts.acquire, &keys, &args).await?;
        let items = array("acquire", &reply, 3)?;
        if int("acquire", &items[0])? == 1 {
            let token = fencing("acquire", key, &items[1])?;
            let granted = int("acquire", &items[2])?;
            let granted = u64::try_from(granted).map_err(|_| unexpected("acquire", granted))?;
            return Ok(AcquireOutcome::Acquired(Grant::new(
                token,
                Duration::from_millis(granted),
            )));
        }
        self.ensure_listener();
        self.inner.notifier.saw_held(key.as_str());
        let value = bytes("acquire", &items[1])?.unwrap_or_default();
        let record = Stored::decode(key, value)?.into_record(key, int("acquire", &items[2])?)?;
        Ok(AcquireOutcome::Held(Some(Box::new(record))))
    }

    async fn renew(&self, request: &RenewRequest) -> Result<RenewOutcome, BackendError> {
        let ttl = checked_ttl_ms(request.ttl)?;
        let keys = [self.lease_key(&request.key)];
        let args = [request.holder.to_string(), ttl.to_string()];
        let reply = self.eval(&self.inner.scripts.renew, &keys, &args).await?;
        Ok(match int("renew", &reply)? {
            0 => RenewOutcome::NotHeld,
            ms => RenewOutcome::Renewed(Duration::from_millis(
                u64::try_from(ms).map_err(|_| unexpected("renew", ms))?,
            )),
        })
    }

    /// Renews every lease in one script call per [`RedisOptions::max_batch`] leases.
    async fn renew_many(
        &self,
        requests: &[RenewRequest],
    ) -> Vec<Result<RenewOutcome, BackendError>> {
        let mut results: Vec<Option<Result<RenewOutcome, BackendError>>> =
            Vec::with_capacity(requests.len());
        let mut valid = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            match checked_ttl_ms(request.ttl) {
                Ok(ms) => {
                    results.push(None);
                    valid.push((i, ms));
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if self.inner.options.batch_by_slot {
            // Stable: requests keep their order within a slot.
            valid.sort_by_key(|(i, _)| crate::slot::of_lease_key(requests[*i].key.as_str()));
        }
        let max = self.inner.options.max_batch;
        let by_slot = self.inner.options.batch_by_slot;
        let mut chunks: Vec<&[(usize, u64)]> = Vec::new();
        let mut rest = valid.as_slice();
        while !rest.is_empty() {
            let mut len = rest.len().min(max);
            if by_slot {
                let slot = crate::slot::of_lease_key(requests[rest[0].0].key.as_str());
                len = rest[..len]
                    .iter()
                    .take_while(|(i, _)| {
                        crate::slot::of_lease_key(requests[*i].key.as_str()) == slot
                    })
                    .count();
            }
            let (chunk, tail) = rest.split_at(len);
            chunks.push(chunk);
            rest = tail;
        }
        for chunk in chunks {
            let keys: Vec<String> = chunk
                .iter()
                .map(|(i, _)| self.lease_key(&requests[*i].key))
                .collect();
            let args: Vec<String> = chunk
                .iter()
                .flat_map(|(i, ms)| [requests[*i].holder.to_string(), ms.to_string()])
                .collect();
            let answer = self
                .eval(&self.inner.scripts.renew_many, &keys, &args)
                .await
                .and_then(|reply| match reply {
                    Value::Array(items) if items.len() == chunk.len() => Ok(items),
                    other => Err(unexpected("renew_many", format!("{other:?}"))),
                });
            match answer {
                Ok(items) => {
                    for ((i, _), item) in chunk.iter().zip(&items) {
                        let key = &requests[*i].key;
                        results[*i] = Some(match int("renew_many", item) {
                            Ok(0) => Ok(RenewOutcome::NotHeld),
                            Ok(ms) if ms > 0 => Ok(RenewOutcome::Renewed(Duration::from_millis(
                                ms.unsigned_abs(),
                            ))),
                            Ok(_) => Err(BackendError::corrupt_record(
                                NAME,
                                format!(
                                    "renew_many: the lease key of {key} holds something this \
                                     library did not write; it was left untouched"
                                ),
                            )),
                            Err(e) => Err(e),
                        });
                    }
                }
                Err(e) => {
                    for (i, _) in chunk {
                        results[*i] = Some(Err(BackendError::new(
                            e.kind(),
                            NAME,
                            e.message().to_owned(),
                        )));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(unexpected("renew_many", "no answer"))))
            .collect()
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseOutcome, BackendError> {
        let keys = [self.lease_key(&request.key)];
        let args = [request.holder.to_string()];
        let reply = self.eval(&self.inner.scripts.release, &keys, &args).await?;
        Ok(match int("release", &reply)? {
            1 => ReleaseOutcome::Released,
            _ => ReleaseOutcome::NotHeld,
        })
    }

    async fn inspect(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        self.read(key).await
    }

    /// Every record whose key starts with `prefix`, sorted by key: `SCAN` with a `MATCH` pattern
    /// on the prefix, then one read per key. Not a snapshot: each key is read at its own instant,
    /// and `SCAN` may miss keys created while it runs.
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, BackendError> {
        LeaseKey::check_prefix(prefix).map_err(|e| BackendError::invalid_input(NAME, e))?;
        // Key characters and the validated key prefix hold no glob characters.
        let pattern = format!("{}{{{prefix}*", self.inner.options.prefix);
        let mut names = BTreeSet::new();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let reply = self
                .query("list", &scan)
                .await
                .map_err(|e| classify("list", e))?;
            let (next, found): (u64, Vec<String>) =
                redis::from_redis_value(reply).map_err(|e| classify("list", e.into()))?;
            for name in found {
                let Some(rest) = name.strip_prefix(self.inner.options.prefix.as_str()) else {
                    continue;
                };
                let inner = rest
                    .strip_prefix('{')
                    .and_then(|r| r.strip_suffix('}').or_else(|| r.strip_suffix("}:fence")));
                if let Some(key) = inner.and_then(|k| LeaseKey::new(k).ok()) {
                    names.insert(key);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for key in names {
            // One value this library cannot decode (or another type at the key) does not hide
            // the others: it is reported in its place.
            if let Some(read) = self.read(&key).await.transpose() {
                out.push(LeaseRecord::listed(key, read)?);
            }
        }
        Ok(out)
    }

    async fn break_lease(&self, key: &LeaseKey) -> Result<Option<LeaseRecord>, BackendError> {
        let keys = [self.lease_key(key), self.fence_key(key)];
        let reply = self
            .eval(&self.inner.scripts.break_lease, &keys, &[])
            .await?;
        decode_snapshot(key, "break", reply)
    }

    async fn wait_for_change(
        &self,
        key: &LeaseKey,
        max_wait: Duration,
    ) -> Result<(), BackendError> {
        self.ensure_listener();
        self.inner.notifier.wait(key.as_str(), max_wait).await;
        Ok(())
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("target", &self.inner.target)
            .field("prefix", &self.inner.options.prefix)
            .finish_non_exhaustive()
    }
}
