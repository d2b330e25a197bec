//! The conformance cases. Each returns `Err(description)` when the backend breaks a rule.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, sleep};

pub(super) use super::observed::*;
pub(super) use super::outside::fencing_survives_outside_changes;
pub(super) use super::semaphore::*;
use super::{CaseResult, Harness, Op};
use crate::backend::{
    AcquireOutcome, AcquireRequest, LeaseRecord, RecordState, ReleaseOutcome, ReleaseRequest,
    RenewOutcome, RenewRequest,
};
use crate::error::{Error, ErrorKind, LostReason};
use crate::key::LeaseKey;
use crate::locker::Locker;
use crate::token::{FencingToken, HolderMetadata, HolderToken};

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn fail<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn try_acquire(locker: &Locker, key: &LeaseKey) -> Result<Option<crate::Lease>, String> {
    locker.try_acquire(key).await.map_err(fail("try_acquire"))
}

async fn must_acquire(locker: &Locker, key: &LeaseKey) -> Result<crate::Lease, String> {
    try_acquire(locker, key)
        .await?
        .ok_or_else(|| format!("{key} should be free but try_acquire returned None"))
}

async fn raw_acquire(
    h: &Harness,
    key: &LeaseKey,
    holder: HolderToken,
) -> Result<AcquireOutcome, String> {
    let meta = HolderMetadata::from_stored_lossy("raw");
    let request = AcquireRequest::new(key.clone(), holder, h.ttl(), meta);
    h.backend()
        .acquire(&request)
        .await
        .map_err(fail("backend acquire"))
}

async fn raw_grant(
    h: &Harness,
    key: &LeaseKey,
    holder: HolderToken,
) -> Result<FencingToken, String> {
    match raw_acquire(h, key, holder).await? {
        AcquireOutcome::Acquired(grant) => Ok(grant.fencing),
        AcquireOutcome::Held(r) => Err(format!("{key} should be free but is held: {r:?}")),
    }
}

async fn raw_renew(
    h: &Harness,
    key: &LeaseKey,
    holder: HolderToken,
) -> Result<RenewOutcome, String> {
    let request = RenewRequest::new(key.clone(), holder, h.ttl());
    h.backend()
        .renew(&request)
        .await
        .map_err(fail("backend renew"))
}

async fn raw_release(
    h: &Harness,
    key: &LeaseKey,
    holder: HolderToken,
) -> Result<ReleaseOutcome, String> {
    h.backend()
        .release(&ReleaseRequest::new(key.clone(), holder))
        .await
        .map_err(fail("backend release"))
}

async fn inspect(h: &Harness, key: &LeaseKey) -> Result<Option<LeaseRecord>, String> {
    h.backend().inspect(key).await.map_err(fail("inspect"))
}

/// Waits until `key` can be acquired by `holder` through the raw backend, polling; returns the
/// token and when the granting answer arrived.
async fn poll_grant(
    h: &Harness,
    key: &LeaseKey,
    holder: HolderToken,
    give_up: Duration,
) -> Result<(FencingToken, Instant), String> {
    poll_grant_near(h, key, holder, give_up, None).await
}

/// How close to the earliest allowed takeover [`poll_grant_near`] polls back to back.
const FINE_POLLING: Duration = Duration::from_millis(50);

/// [`poll_grant`], polling back to back (one round trip apart, not 10 ms) from [`FINE_POLLING`]
/// before `floor` — the earliest instant a correct store may grant the key — until just after
/// it. A store that expires grants even a fraction of a percent early is then granted before
/// `floor`, where a 10 ms poll could only see an error of about 1 % of a 1 s TTL.
async fn poll_grant_near(
    h: &Harness,
    key: &LeaseKey,
    holder: HolderToken,
    give_up: Duration,
    floor: Option<Instant>,
) -> Result<(FencingToken, Instant), String> {
    let started = Instant::now();
    loop {
        if let AcquireOutcome::Acquired(grant) = raw_acquire(h, key, holder).await? {
            return Ok((grant.fencing, Instant::now()));
        }
        ensure!(
            started.elapsed() < give_up,
            "{key} was not taken over within {give_up:?}"
        );
        let now = Instant::now();
        match floor {
            Some(floor)
                if now + FINE_POLLING >= floor && now <= floor + Duration::from_millis(5) =>
            {
                tokio::task::yield_now().await;
            }
            Some(floor) if now + FINE_POLLING < floor => {
                let fine_from = floor - FINE_POLLING;
                sleep((fine_from - now).min(Duration::from_millis(10))).await;
            }
            _ => sleep(Duration::from_millis(10)).await,
        }
    }
}

pub(super) fn takeover_limit(h: &Harness) -> Duration {
    // TTL, plus the store's granularity, plus scheduling slack on a loaded machine.
    let caps = h.backend().capabilities();
    let ttl = match caps.clock {
        crate::ClockModel::ObservedExpiry => h.ttl() * 2,
        _ => h.ttl(),
    };
    ttl + caps.takeover_tolerance + Duration::from_secs(2).max(h.ttl() / 2)
}

pub(super) async fn acquire_free_key(h: &Harness) -> CaseResult {
    let key = h.key("acquire-free");
    let locker = h.locker();
    let sent = Instant::now();
    let lease = must_acquire(&locker, &key).await?;
    ensure!(
        lease.fencing_token() >= FencingToken::new(1),
        "first fencing token is {}",
        lease.fencing_token()
    );
    ensure!(lease.is_held(), "a fresh lease is not held");
    ensure!(lease.deadline() > Instant::now(), "deadline already passed");
    ensure!(
        lease.deadline() <= sent + h.ttl(),
        "deadline {:?} is later than send time + TTL",
        lease.deadline() - sent
    );
    let record = inspect(h, &key).await?.ok_or("no record for a held key")?;
    ensure!(
        record.is_held_by(&lease.holder_token()),
        "record is not held by the lease: {record:?}"
    );
    ensure!(
        record.fencing == lease.fencing_token(),
        "record token {} != lease token {}",
        record.fencing,
        lease.fencing_token()
    );
    lease.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(super) async fn held_key_reports_holder(h: &Harness) -> CaseResult {
    let key = h.key("held");
    let a = h.locker_on(Arc::clone(h.backend()), "holder-a");
    let b = h.locker_on(Arc::clone(h.backend()), "holder-b");
    let lease = must_acquire(&a, &key).await?;
    ensure!(
        try_acquire(&b, &key).await?.is_none(),
        "a second holder was granted a held key"
    );
    match raw_acquire(h, &key, HolderToken::generate()).await? {
        AcquireOutcome::Acquired(g) => {
            return Err(format!("raw acquire of a held key succeeded: {g:?}"));
        }
        AcquireOutcome::Held(Some(record)) => {
            ensure!(
                record.is_held_by(&lease.holder_token()),
                "Held names the wrong holder: {record:?}"
            );
            ensure!(
                record.fencing == lease.fencing_token(),
                "Held reports token {} not {}",
                record.fencing,
                lease.fencing_token()
            );
            if let Some(meta) = &record.metadata {
                ensure!(
                    meta.as_str() == "holder-a",
                    "Held reports metadata {meta:?}, expected holder-a"
                );
            }
        }
        AcquireOutcome::Held(None) => {}
    }
    match b.acquire_now(&key).await {
        Err(Error::Held {
            key: held_key,
            holder,
        }) => {
            ensure!(held_key == key, "Held names key {held_key}");
            if let Some(record) = holder {
                ensure!(
                    record.is_held_by(&lease.holder_token()),
                    "acquire_now names the wrong holder: {record:?}"
                );
            }
        }
        other => {
            return Err(format!(
                "acquire_now on a held key gave {other:?}, expected Held"
            ));
        }
    }
    match b.acquire_timeout(&key, h.ttl() / 4).await {
        Err(Error::Timeout { .. }) => {}
        other => {
            return Err(format!(
                "acquire_timeout on a held key gave {other:?}, expected Timeout"
            ));
        }
    }
    ensure!(
        lease.is_held(),
        "the holder lost its lease while others tried"
    );
    lease.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(super) async fn release_lets_next_in_with_higher_token(h: &Harness) -> CaseResult {
    let key = h.key("release");
    let a = h.locker();
    let b = h.locker();
    let first = must_acquire(&a, &key).await?;
    let first_token = first.fencing_token();
    first.release().await.map_err(fail("release"))?;
    let started = Instant::now();
    let second = must_acquire(&b, &key).await?;
    ensure!(
        started.elapsed() < h.ttl() / 2,
        "the key was not free right after release"
    );
    ensure!(
        second.fencing_token() > first_token,
        "token {} after release is not above {first_token}",
        second.fencing_token()
    );
    second.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(super) async fn renew_extends_the_grant(h: &Harness) -> CaseResult {
    let key = h.key("renew-raw");
    let holder = HolderToken::generate();
    raw_grant(h, &key, holder).await?;
    sleep(h.ttl().mul_f64(0.6)).await;
    ensure!(
        raw_renew(h, &key, holder).await? != RenewOutcome::NotHeld,
        "renewal of a live grant was refused"
    );
    sleep(h.ttl().mul_f64(0.6)).await;
    // 1.2 TTL after the grant, but only 0.6 TTL after the renewal: still held.
    if let AcquireOutcome::Acquired(g) = raw_acquire(h, &key, HolderToken::generate()).await? {
        return Err(format!(
            "renewed grant was taken over before its new expiry: {g:?}"
        ));
    }
    raw_release(h, &key, holder).await?;

    let key = h.key("renew-background");
    let locker = h.locker();
    let lease = must_acquire(&locker, &key).await?;
    let first_deadline = lease.deadline();
    sleep(h.ttl() * 2).await;
    ensure!(
        lease.is_held(),
        "background renewal did not keep the lease held for 2 TTLs"
    );
    ensure!(
        lease.deadline() > first_deadline,
        "the deadline did not move forward"
    );
    ensure!(
        try_acquire(&h.locker(), &key).await?.is_none(),
        "another holder got a renewed key"
    );
    lease.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(super) async fn stale_grant_cannot_renew_or_release(h: &Harness) -> CaseResult {
    let key = h.key("stale");
    let old = HolderToken::generate();
    let old_token = raw_grant(h, &key, old).await?;
    // A stranger's token is refused while the grant is live.
    let stranger = HolderToken::generate();
    ensure!(
        raw_renew(h, &key, stranger).await? == RenewOutcome::NotHeld,
        "a foreign holder token renewed a grant"
    );
    ensure!(
        raw_release(h, &key, stranger).await? == ReleaseOutcome::NotHeld,
        "a foreign holder token released a grant"
    );
    let record = inspect(h, &key).await?.ok_or("record vanished")?;
    ensure!(
        record.is_held_by(&old),
        "a foreign release disturbed the holder: {record:?}"
    );
    // Let the old grant expire and a new holder take over.
    let new = HolderToken::generate();
    let (new_token, _) = poll_grant(h, &key, new, takeover_limit(h)).await?;
    ensure!(
        new_token > old_token,
        "takeover token {new_token} is not above {old_token}"
    );
    ensure!(
        raw_renew(h, &key, old).await? == RenewOutcome::NotHeld,
        "the stale holder renewed after takeover"
    );
    ensure!(
        raw_release(h, &key, old).await? == ReleaseOutcome::NotHeld,
        "the stale holder released after takeover"
    );
    let record = inspect(h, &key).await?.ok_or("record vanished")?;
    ensure!(
        record.is_held_by(&new),
        "the stale holder disturbed the new one: {record:?}"
    );
    ensure!(
        record.fencing == new_token,
        "fencing changed to {} under the new holder",
        record.fencing
    );
    ensure!(
        raw_renew(h, &key, new).await? != RenewOutcome::NotHeld,
        "the new holder cannot renew"
    );
    raw_release(h, &key, new).await?;
    Ok(())
}

pub(super) async fn reacquire_by_same_holder_is_idempotent(h: &Harness) -> CaseResult {
    let key = h.key("idempotent");
    let holder = HolderToken::generate();
    let first = raw_grant(h, &key, holder).await?;
    let again = raw_grant(h, &key, holder)
        .await
        .map_err(|e| format!("re-acquire with the same holder token was refused: {e}"))?;
    ensure!(
        again == first,
        "re-acquire minted token {again}, expected the same {first}"
    );
    raw_release(h, &key, holder).await?;
    Ok(())
}

pub(super) async fn stopped_holder_is_taken_over_after_ttl(h: &Harness) -> CaseResult {
    let key = h.key("takeover");
    let locker = h.locker();
    let sent = Instant::now();
    let first = raw_grant(h, &key, HolderToken::generate()).await?;
    // The store applied the grant after it was sent, so it cannot expire before the TTL has
    // passed since the send instant (allowing only for clock-rate drift). Measured from the
    // send, not the answer: a correct store may answer late, after it applied the grant.
    let earliest_allowed = h.ttl().mul_f64(1.0 - locker.options().max_clock_drift);
    // The holder stops here (crashed: no renewal, no release).
    let (second, granted_at) = poll_grant_near(
        h,
        &key,
        HolderToken::generate(),
        takeover_limit(h),
        Some(sent + earliest_allowed),
    )
    .await?;
    ensure!(
        granted_at - sent >= earliest_allowed,
        "taken over {:?} after the grant was requested, before its TTL ({earliest_allowed:?}) \
         could have run out",
        granted_at - sent
    );
    ensure!(
        second > first,
        "takeover token {second} is not above {first}"
    );
    Ok(())
}

pub(super) async fn lost_acquire_response_is_resolved(h: &Harness) -> CaseResult {
    let key = h.key("lost-acquire");
    let faulty = h.faulty();
    let locker = h.locker_on(Arc::new(faulty.clone()), "faulty");
    faulty.lose_next_response(Op::Acquire, 1);
    let lease = try_acquire(&locker, &key)
        .await?
        .ok_or("an acquire that landed was reported as not acquired")?;
    ensure!(
        faulty.calls(Op::Acquire) == 1,
        "expected exactly one acquire request, saw {}",
        faulty.calls(Op::Acquire)
    );
    let record = inspect(h, &key).await?.ok_or("no record")?;
    ensure!(
        record.is_held_by(&lease.holder_token()),
        "the resolved lease is not the stored holder"
    );
    ensure!(
        record.fencing == lease.fencing_token(),
        "resolved token {} != stored {}",
        lease.fencing_token(),
        record.fencing
    );
    ensure!(
        try_acquire(&h.locker(), &key).await?.is_none(),
        "the key is free although the resolved lease holds it"
    );

    // Through a waiting acquire too: the failure is retried with the same holder token.
    let key = h.key("lost-acquire-wait");
    faulty.lose_next_response(Op::Acquire, 1);
    faulty.fail_next(Op::Inspect, 1);
    let lease2 = tokio::time::timeout(h.ttl() * 3, locker.acquire(&key))
        .await
        .map_err(|_| "acquire did not resolve a lost response within 3 TTLs".to_owned())?
        .map_err(fail("acquire"))?;
    let record = inspect(h, &key).await?.ok_or("no record")?;
    ensure!(
        record.is_held_by(&lease2.holder_token()),
        "waiting acquire holds a different grant than stored"
    );
    lease.release().await.map_err(fail("release"))?;
    lease2.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(super) async fn lost_renew_response_is_tolerated(h: &Harness) -> CaseResult {
    let key = h.key("lost-renew");
    let faulty = h.faulty();
    let locker = h.locker_on(Arc::new(faulty.clone()), "faulty");
    let lease = must_acquire(&locker, &key).await?;
    faulty.lose_next_response(Op::Renew, 1);
    faulty.fail_next(Op::Renew, 1);
    sleep(h.ttl() * 2).await;
    ensure!(
        lease.is_held(),
        "a lost renewal response (then one failure) lost the lease"
    );
    ensure!(
        faulty.calls(Op::Renew) >= 3,
        "renewal was not retried ({} calls)",
        faulty.calls(Op::Renew)
    );
    ensure!(
        try_acquire(&h.locker(), &key).await?.is_none(),
        "the key is free although renewed"
    );
    lease.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(super) async fn lost_release_response_is_resolved(h: &Harness) -> CaseResult {
    let key = h.key("lost-release");
    let faulty = h.faulty();
    let locker = h.locker_on(Arc::new(faulty.clone()), "faulty");
    let lease = must_acquire(&locker, &key).await?;
    let token = lease.fencing_token();
    faulty.lose_next_response(Op::Release, 1);
    lease
        .release()
        .await
        .map_err(fail("release with a lost response"))?;
    let next = try_acquire(&h.locker(), &key)
        .await?
        .ok_or("the key is still held after a release whose response was lost")?;
    ensure!(
        next.fencing_token() > token,
        "token did not rise after release"
    );
    next.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(super) async fn fencing_never_resets(h: &Harness) -> CaseResult {
    let key = h.key("fencing");
    let locker = h.locker();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let lease = must_acquire(&locker, &key).await?;
        tokens.push(lease.fencing_token());
        lease.release().await.map_err(fail("release"))?;
        let record = inspect(h, &key)
            .await?
            .ok_or("release deleted the record (and its counter)")?;
        ensure!(
            record.fencing == *tokens.last().unwrap_or(&FencingToken::new(0)),
            "release changed the counter to {}",
            record.fencing
        );
        ensure!(!record.is_held(), "released record still held: {record:?}");
    }
    // Expiry and takeover.
    tokens.push(raw_grant(h, &key, HolderToken::generate()).await?);
    let (t, _) = poll_grant(h, &key, HolderToken::generate(), takeover_limit(h)).await?;
    tokens.push(t);
    if h.backend().capabilities().can_break {
        h.backend().break_lease(&key).await.map_err(fail("break"))?;
        tokens.push(raw_grant(h, &key, HolderToken::generate()).await?);
    }
    ensure!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens did not strictly rise: {tokens:?}"
    );
    Ok(())
}

/// Decrements the holders-inside counter when dropped.
struct Leave(Arc<AtomicU64>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) async fn contenders_never_overlap(h: &Harness) -> CaseResult {
    const CONTENDERS: usize = 4;
    const ROUNDS: usize = 4;
    let key = h.key("contenders");
    let inside = Arc::new(AtomicU64::new(0));
    let sections = Arc::new(std::sync::Mutex::new(
        Vec::<(FencingToken, Instant, Instant)>::new(),
    ));
    let mut tasks = Vec::new();
    for c in 0..CONTENDERS {
        let locker = h.locker_on(Arc::clone(h.backend()), &format!("contender-{c}"));
        let key = key.clone();
        let inside = Arc::clone(&inside);
        let sections = Arc::clone(&sections);
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let inside = Arc::clone(&inside);
                let sections = Arc::clone(&sections);
                locker
                    .run_exclusive(&key, |lease| async move {
                        let entered = Instant::now();
                        let others = inside.fetch_add(1, Ordering::SeqCst);
                        // Leaves the section even when the work is dropped (a lost lease
                        // cancels it mid-sleep), so a loss is never counted as an overlap.
                        let _leave = Leave(Arc::clone(&inside));
                        sleep(Duration::from_millis(5)).await;
                        sections.lock().unwrap_or_else(|e| e.into_inner()).push((
                            lease.fencing_token(),
                            entered,
                            Instant::now(),
                        ));
                        Ok::<_, crate::Error>(others)
                    })
                    .await
                    .map_err(fail("run_exclusive"))
                    .and_then(|others| {
                        if others == 0 {
                            Ok(())
                        } else {
                            Err(format!(
                                "{others} other holder(s) inside the critical section"
                            ))
                        }
                    })?;
            }
            Ok::<(), String>(())
        }));
    }
    let limit = h.ttl() * (CONTENDERS * ROUNDS) as u32 + Duration::from_secs(30);
    for task in tasks {
        tokio::time::timeout(limit, task)
            .await
            .map_err(|_| "contenders did not finish in time".to_owned())?
            .map_err(fail("contender task"))??;
    }
    let mut sections = std::mem::take(&mut *sections.lock().unwrap_or_else(|e| e.into_inner()));
    ensure!(
        sections.len() == CONTENDERS * ROUNDS,
        "{} critical sections ran, expected {}",
        sections.len(),
        CONTENDERS * ROUNDS
    );
    sections.sort_by_key(|s| s.1);
    for pair in sections.windows(2) {
        ensure!(
            pair[0].2 <= pair[1].1,
            "critical sections overlap: {pair:?}"
        );
        ensure!(
            pair[0].0 < pair[1].0,
            "tokens did not rise in entry order: {} then {}",
            pair[0].0,
            pair[1].0
        );
    }
    Ok(())
}

pub(super) async fn lost_signal_fires_before_next_grant(h: &Harness) -> CaseResult {
    let key = h.key("lost-signal");
    let faulty = h.faulty();
    let cut_off = h.locker_on(Arc::new(faulty.clone()), "cut-off");
    let lease = must_acquire(&cut_off, &key).await?;
    let token = lease.cancellation_token();
    let lost = lease.lost();
    faulty.drop_renewals(true);
    let next = tokio::time::timeout(takeover_limit(h), h.locker().acquire(&key))
        .await
        .map_err(|_| "nobody took over the cut-off holder's key".to_owned())?
        .map_err(fail("acquire"))?;
    // At the moment the new grant exists, the old holder must already know it lost.
    ensure!(
        !lease.is_held(),
        "the cut-off holder still believes it holds the key after a new grant"
    );
    ensure!(
        token.is_cancelled(),
        "the cut-off holder's cancellation token was not cancelled before the new grant"
    );
    let reason = tokio::time::timeout(Duration::from_millis(1), lost)
        .await
        .map_err(|_| "lost() had not resolved".to_owned())?;
    ensure!(
        reason == LostReason::DeadlineExpired,
        "lost reason {reason:?}"
    );
    ensure!(
        next.fencing_token() > lease.fencing_token(),
        "new token is not higher"
    );
    match lease.release().await {
        Err(Error::Lost { .. }) => {}
        other => {
            return Err(format!(
                "release of a lost lease gave {other:?}, expected Lost"
            ));
        }
    }
    next.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(super) async fn inspect_reports_holder(h: &Harness) -> CaseResult {
    let key = h.key("inspect");
    match inspect(h, &key).await? {
        None => {}
        Some(r) => ensure!(!r.is_held(), "a never-used key is reported held: {r:?}"),
    }
    let locker = h.locker_on(Arc::clone(h.backend()), "inspected-holder");
    let lease = must_acquire(&locker, &key).await?;
    let record = locker
        .inspect(&key)
        .await
        .map_err(fail("inspect"))?
        .ok_or("no record for a held key")?;
    ensure!(
        record.state == RecordState::Held,
        "state {:?}",
        record.state
    );
    ensure!(record.key == key, "record key {} != {key}", record.key);
    ensure!(
        record.holder == Some(lease.holder_token()),
        "holder {:?}",
        record.holder
    );
    ensure!(
        record.fencing == lease.fencing_token(),
        "fencing {}",
        record.fencing
    );
    if let Some(meta) = &record.metadata {
        ensure!(meta.as_str() == "inspected-holder", "metadata {meta:?}");
    }
    // A grant found by reading back (after a lost answer) is kept only for the TTL its record
    // states: a held record must state it.
    let ttl = record.ttl.ok_or_else(|| {
        format!("a held record does not state its TTL (a grant read back needs it): {record:?}")
    })?;
    ensure!(
        ttl <= h.ttl() && ttl.abs_diff(h.ttl()) <= Duration::from_secs(1),
        "ttl {ttl:?}, expected {:?} (or a little less, if the store rounds down)",
        h.ttl()
    );
    // The time left is an estimate, but never one past what can remain: the store applied the
    // grant before its answer, so at a read sent a third of a TTL later at most
    // `TTL × (1 + drift) − (read sent − answered)` is left. (A store that rounds it up to whole
    // seconds says more.) A raw grant, so no renewal moves the expiry meanwhile.
    let raw_key = h.key("inspect-time-left");
    raw_grant(h, &raw_key, HolderToken::generate()).await?;
    let answered = Instant::now();
    sleep(h.ttl() / 3).await;
    let read_sent = Instant::now();
    let again = inspect(h, &raw_key)
        .await?
        .ok_or("no record for a held key")?;
    let caps = h.backend().capabilities();
    if let Some(left) = again.expires_in {
        let drift = locker.options().max_clock_drift;
        let most = match (caps.clock, caps.observation) {
            // There, the time left is the wait a contender's observation still needs, counted
            // from this instance's own reads: at most the rule's whole wait.
            (crate::ClockModel::ObservedExpiry, Some(rule)) => rule.takeover_after(h.ttl()),
            _ => h
                .ttl()
                .mul_f64(1.0 + drift)
                .saturating_sub(read_sent - answered),
        };
        ensure!(
            left <= most,
            "expires in {left:?} at a read sent {:?} after the grant was answered: more than \
             the {most:?} that can be left of a {:?} TTL (rounded up?)",
            read_sent - answered,
            h.ttl()
        );
    }
    ensure!(lease.is_held(), "inspect disturbed the holder");
    let token = lease.fencing_token();
    lease.release().await.map_err(fail("release"))?;
    let record = inspect(h, &key)
        .await?
        .ok_or("release deleted the record")?;
    ensure!(
        record.state == RecordState::Free,
        "state after release {:?}",
        record.state
    );
    ensure!(
        record.fencing == token,
        "fencing after release {} != {token}",
        record.fencing
    );
    Ok(())
}

pub(super) async fn many_independent_keys(h: &Harness) -> CaseResult {
    const KEYS: usize = 20;
    let keys: Vec<LeaseKey> = (0..KEYS).map(|i| h.key(&format!("many-{i}"))).collect();
    let one = h.locker();
    let mut leases = Vec::new();
    for key in &keys {
        leases.push(must_acquire(&one, key).await?);
    }
    ensure!(
        one.held_count() == KEYS,
        "the locker renews {} leases, expected {KEYS}",
        one.held_count()
    );
    sleep(h.ttl() * 2).await;
    for lease in &leases {
        ensure!(
            lease.is_held(),
            "{} was lost while holding {KEYS} keys",
            lease.key()
        );
    }
    let other = h.locker();
    for key in &keys {
        ensure!(
            try_acquire(&other, key).await?.is_none(),
            "{key} was granted twice"
        );
    }
    for lease in leases {
        lease.release().await.map_err(fail("release"))?;
    }
    // Many lockers, one key each, concurrently.
    let tasks: Vec<_> = keys
        .iter()
        .map(|key| {
            let locker = h.locker();
            let key = key.clone();
            tokio::spawn(async move {
                locker
                    .try_acquire(&key)
                    .await
                    .map(|l| l.map(|l| l.fencing_token()))
            })
        })
        .collect();
    for task in tasks {
        let got = task
            .await
            .map_err(fail("task"))?
            .map_err(fail("try_acquire"))?;
        ensure!(got.is_some(), "a free independent key was refused");
    }
    Ok(())
}

pub(super) async fn break_frees_the_key(h: &Harness) -> CaseResult {
    let key = h.key("break");
    let caps = h.backend().capabilities();
    if !caps.can_break {
        return match h.backend().break_lease(&key).await {
            Err(e) if e.kind() == crate::BackendErrorKind::Unsupported => Ok(()),
            other => Err(format!("can_break is false but break_lease gave {other:?}")),
        };
    }
    let holder = h.locker();
    let lease = must_acquire(&holder, &key).await?;
    let broken = holder
        .break_lease(&key)
        .await
        .map_err(fail("break"))?
        .ok_or("break returned no record")?;
    ensure!(
        broken.holder == Some(lease.holder_token()),
        "break reported holder {:?}",
        broken.holder
    );
    let record = inspect(h, &key).await?.ok_or("break deleted the record")?;
    ensure!(!record.is_held(), "still held after break: {record:?}");
    ensure!(
        record.fencing == lease.fencing_token(),
        "break changed the counter"
    );
    let next = must_acquire(&h.locker(), &key).await?;
    ensure!(
        next.fencing_token() > lease.fencing_token(),
        "token after break did not rise"
    );
    // The old holder learns at its next renewal.
    let reason = tokio::time::timeout(h.ttl(), lease.lost())
        .await
        .map_err(|_| "the broken holder did not notice within one TTL".to_owned())?;
    ensure!(
        reason == LostReason::NotHeld,
        "broken holder's lost reason {reason:?}"
    );
    next.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(super) async fn election_hands_over_leadership(h: &Harness) -> CaseResult {
    let key = h.key("election");
    let first = h
        .locker_on(Arc::clone(h.backend()), "candidate-1")
        .election(key.as_str())
        .map_err(fail("election"))?;
    let second = h
        .locker_on(Arc::clone(h.backend()), "candidate-2")
        .election(key.as_str())
        .map_err(fail("election"))?;
    let mut changes = Box::pin(first.observe(h.ttl() / 4));
    let initial = changes
        .next()
        .await
        .ok_or("observe ended")?
        .map_err(fail("observe"))?;
    ensure!(
        initial.is_none(),
        "a leader before any campaign: {initial:?}"
    );
    let leader = first.campaign().await.map_err(fail("campaign"))?;
    let seen = tokio::time::timeout(h.ttl() * 2, changes.next())
        .await
        .map_err(|_| "observe did not report the new leader".to_owned())?
        .ok_or("observe ended")?
        .map_err(fail("observe"))?
        .ok_or("observe reported no leader after a campaign")?;
    ensure!(
        seen.fencing == leader.fencing_token(),
        "observed leader token {} != {}",
        seen.fencing,
        leader.fencing_token()
    );
    ensure!(
        second
            .try_campaign()
            .await
            .map_err(fail("try_campaign"))?
            .is_none(),
        "two leaders at once"
    );
    let waiting =
        tokio::spawn(async move { second.campaign().await.map(|l| (l.fencing_token(), l)) });
    sleep(h.ttl() / 4).await;
    ensure!(
        !waiting.is_finished(),
        "the second candidate won while the first led"
    );
    let old_token = leader.fencing_token();
    leader.resign().await.map_err(fail("resign"))?;
    let (new_token, new_leader) = tokio::time::timeout(h.ttl() * 2, waiting)
        .await
        .map_err(|_| "the second candidate did not take over after resign".to_owned())?
        .map_err(fail("task"))?
        .map_err(fail("campaign"))?;
    ensure!(
        new_token > old_token,
        "new term token {new_token} not above {old_token}"
    );
    ensure!(new_leader.is_leader(), "the new leader is not leading");
    let current = first
        .leader()
        .await
        .map_err(fail("leader"))?
        .ok_or("leader() reports none")?;
    ensure!(
        current.fencing == new_token,
        "leader() reports token {}",
        current.fencing
    );
    new_leader.resign().await.map_err(fail("resign"))?;
    Ok(())
}

/// The earliest a correct store can let another holder in after a grant (or renewal) of `ttl`
/// requested at `sent`: the store applied it after `sent`, so only clock-rate drift can shorten it.
fn expiry_floor(h: &Harness, sent: Instant, ttl: Duration) -> Instant {
    sent + ttl.mul_f64(1.0 - h.locker().options().max_clock_drift)
}

pub(super) async fn reacquire_extends_the_expiry(h: &Harness) -> CaseResult {
    let key = h.key("reacquire-extends");
    let holder = HolderToken::generate();
    raw_grant(h, &key, holder).await?;
    sleep(h.ttl() / 2).await;
    let sent = Instant::now();
    raw_grant(h, &key, holder)
        .await
        .map_err(|e| format!("re-acquire with the same holder token was refused: {e}"))?;
    let floor = expiry_floor(h, sent, h.ttl());
    let (_, granted_at) = poll_grant_near(
        h,
        &key,
        HolderToken::generate(),
        takeover_limit(h),
        Some(floor),
    )
    .await?;
    ensure!(
        granted_at >= floor,
        "taken over {:?} after a re-acquire by the same holder: the re-acquire did not extend \
         the expiry to a full TTL (the protocol counts the holder's deadline from it)",
        granted_at - sent
    );
    Ok(())
}

pub(super) async fn renewal_reports_the_ttl_it_granted(h: &Harness) -> CaseResult {
    let key = h.key("renew-reports-ttl");
    let holder = HolderToken::generate();
    raw_grant(h, &key, holder).await?;
    sleep(h.ttl() / 2).await;
    let sent = Instant::now();
    let granted = match raw_renew(h, &key, holder).await? {
        RenewOutcome::Renewed(granted) => granted,
        other => return Err(format!("renewal of a live grant answered {other:?}")),
    };
    ensure!(
        !granted.is_zero() && granted <= h.ttl(),
        "renewal for {:?} reported a grant of {granted:?}",
        h.ttl()
    );
    let floor = expiry_floor(h, sent, granted);
    let (_, granted_at) = poll_grant_near(
        h,
        &key,
        HolderToken::generate(),
        takeover_limit(h),
        Some(floor),
    )
    .await?;
    ensure!(
        granted_at >= floor,
        "renewal reported {granted:?} but the key was taken over {:?} after it was sent: \
         holders' deadlines follow the reported TTL, so it must be what the store granted",
        granted_at - sent
    );
    Ok(())
}

pub(super) async fn renew_after_release_is_not_held(h: &Harness) -> CaseResult {
    let key = h.key("renew-after-release");
    let holder = HolderToken::generate();
    let fencing = raw_grant(h, &key, holder).await?;
    let released = raw_release(h, &key, holder).await?;
    ensure!(
        released == ReleaseOutcome::Released,
        "release of a live grant answered {released:?}"
    );
    let renewed = raw_renew(h, &key, holder).await?;
    ensure!(
        renewed == RenewOutcome::NotHeld,
        "renewal after release answered {renewed:?}, expected NotHeld"
    );
    let again = raw_release(h, &key, holder).await?;
    ensure!(
        again == ReleaseOutcome::NotHeld,
        "a second release answered {again:?}, expected NotHeld"
    );
    let record = inspect(h, &key).await?;
    ensure!(
        record.as_ref().is_none_or(|r| !r.is_held()),
        "the key is held after release and a late renewal: {record:?}"
    );
    let next = raw_grant(h, &key, HolderToken::generate()).await?;
    ensure!(
        next > fencing,
        "the next grant's token {next} is not above {fencing}"
    );
    Ok(())
}

pub(super) async fn slow_responses_never_stretch_the_deadline(h: &Harness) -> CaseResult {
    let key = h.key("slow-responses");
    let faulty = h.faulty();
    let slow = h.ttl() / 5;
    faulty.delay_responses(Op::Acquire, slow);
    faulty.delay_responses(Op::Renew, slow);
    let holder = h.locker_on(Arc::new(faulty.clone()), "slow-network");
    let window = holder.options().holder_window(h.ttl());
    let lease = must_acquire(&holder, &key).await?;
    // The answer was held back `slow` after the store applied the grant, so the request was sent
    // at least `slow` before the lease came back.
    let latest_send = Instant::now() - slow;
    ensure!(
        lease.deadline() <= latest_send + window,
        "an answer held back {slow:?} stretched the deadline {:?} past send + window: \
         deadlines count from the send instant, not the answer",
        lease.deadline() - (latest_send + window)
    );
    // Renewals with slow answers keep the lease, and never push the deadline past the window
    // counted from some renewal's send instant (so never past now + window).
    sleep(h.ttl()).await;
    ensure!(lease.is_held(), "slow renewal answers lost the lease");
    ensure!(
        lease.deadline() <= Instant::now() + window,
        "a renewal with a slow answer set the deadline past now + the holder window"
    );
    // Cut the holder off: the next holder must not be granted the key before it knows.
    let lost = lease.lost();
    faulty.drop_renewals(true);
    let deadline = lease.deadline();
    let (_, granted_at) = poll_grant(
        h,
        &key,
        HolderToken::generate(),
        takeover_limit(h) + h.ttl(),
    )
    .await?;
    ensure!(
        granted_at >= deadline,
        "the key was granted {:?} before the cut-off holder's deadline",
        deadline - granted_at
    );
    tokio::time::timeout(Duration::from_millis(1), lost)
        .await
        .map_err(|_| "the cut-off holder's lost() had not resolved at the next grant".to_owned())?;
    Ok(())
}

pub(super) async fn panicking_backend_call_ends_the_lease(h: &Harness) -> CaseResult {
    let key = h.key("panicking-call");
    let faulty = h.faulty();
    let locker = h.locker_on(Arc::new(faulty.clone()), "panicking");
    let lease = must_acquire(&locker, &key).await?;
    let lost = lease.lost();
    faulty.panic_next(Op::Renew, 1);
    let reason = tokio::time::timeout(h.ttl() * 2, lost)
        .await
        .map_err(|_| "a renewal that panicked left the lease looking held".to_owned())?;
    ensure!(
        reason == LostReason::FatalBackendError,
        "lost reason after a panicking renewal: {reason:?}"
    );
    ensure!(!lease.is_held(), "is_held() after the loss");
    ensure!(
        locker.held_count() == 0,
        "the renewer still carries the lease"
    );
    // The renewer survives: a new lease on the same locker is renewed past its first TTL.
    drop(lease);
    locker.drain().await;
    let again = must_acquire(&locker, &h.key("panicking-call-after")).await?;
    sleep(h.ttl() + h.ttl() / 2).await;
    ensure!(
        again.is_held(),
        "after a panicking renewal, later leases of the same locker are not renewed"
    );
    again.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(super) async fn invalid_input_is_typed(h: &Harness) -> CaseResult {
    let locker = h.locker();
    for bad in [
        "",
        "has space",
        "/abs",
        "ünicode",
        &"k".repeat(LeaseKey::MAX_LEN + 1),
    ] {
        match locker.try_acquire(bad).await {
            Err(Error::InvalidInput(e)) if e.field() == "key" => {}
            other => {
                return Err(format!(
                    "key {bad:?} gave {other:?}, expected InvalidInput(key)"
                ));
            }
        }
    }
    match locker.inspect("bad key").await {
        Err(e) if e.kind() == ErrorKind::InvalidInput => {}
        other => return Err(format!("inspect of a bad key gave {other:?}")),
    }
    let caps = h.backend().capabilities();
    let mut bad_ttls = vec![Duration::ZERO];
    if let Some(longer) = caps.max_ttl.checked_add(Duration::from_secs(1)) {
        bad_ttls.push(longer);
    }
    if caps.min_ttl > Duration::from_millis(1) {
        bad_ttls.push(caps.min_ttl / 2);
    }
    // The backend itself refuses a TTL outside the range it declares (a caller may bypass the
    // locker), without granting anything.
    let key = h.key("invalid-ttl");
    for ttl in &bad_ttls {
        let request = AcquireRequest::new(
            key.clone(),
            HolderToken::generate(),
            *ttl,
            HolderMetadata::from_stored_lossy("raw"),
        );
        match h.backend().acquire(&request).await {
            Err(e) if !e.is_transient() => {}
            other => {
                return Err(format!(
                    "the backend answered an acquire for ttl {ttl:?} (outside its range) with \
                     {other:?}, expected a non-transient error"
                ));
            }
        }
    }
    let record = inspect(h, &key).await?;
    ensure!(
        record.as_ref().is_none_or(|r| !r.is_held()),
        "an acquire with an invalid TTL left a grant: {record:?}"
    );
    for ttl in bad_ttls {
        match Locker::builder_shared(Arc::clone(h.backend()))
            .ttl(ttl)
            .build()
        {
            Err(e) if e.field() == "ttl" => {}
            other => {
                return Err(format!(
                    "ttl {ttl:?} gave {other:?}, expected InvalidInput(ttl)"
                ));
            }
        }
    }
    Ok(())
}

pub(super) async fn fencing_survives_idle_records(h: &Harness) -> CaseResult {
    // A store whose records vanish when idle (a TTL or expiry feature on the record) restarts
    // the counter: tokens 1, 2, then 1 again.
    let key = h.key("fencing-idle");
    let first_holder = HolderToken::generate();
    let first = raw_grant(h, &key, first_holder).await?;
    raw_release(h, &key, first_holder).await?;
    let second = raw_grant(h, &key, HolderToken::generate()).await?;
    // The second holder stops; its grant expires, and the record stays untouched a while.
    let idle = h.ttl() * 3 + h.backend().capabilities().takeover_tolerance;
    sleep(idle).await;
    let (third, _) = poll_grant(h, &key, HolderToken::generate(), takeover_limit(h)).await?;
    ensure!(
        first < second && second < third,
        "tokens {first}, {second}, then {third} after the record was idle for {idle:?}: the \
         fencing counter must outlive any idle time (records are never collected)"
    );
    Ok(())
}

pub(super) async fn batch_renewal_answers_in_order(h: &Harness) -> CaseResult {
    // Four grants, one released: a batch renewal must answer each request in the order asked
    // (asked out of key order, so a store answering in key order is seen too).
    let keys: Vec<LeaseKey> = (0..4).map(|i| h.key(&format!("batch-order-{i}"))).collect();
    let holders: Vec<HolderToken> = keys.iter().map(|_| HolderToken::generate()).collect();
    for (key, holder) in keys.iter().zip(&holders) {
        raw_grant(h, key, *holder).await?;
    }
    raw_release(h, &keys[0], holders[0]).await?;
    let order = [2, 0, 3, 1];
    let requests: Vec<RenewRequest> = order
        .iter()
        .map(|&i| RenewRequest::new(keys[i].clone(), holders[i], h.ttl()))
        .collect();
    let results = h.backend().renew_many(&requests).await;
    ensure!(
        results.len() == requests.len(),
        "renew_many answered {} results for {} requests",
        results.len(),
        requests.len()
    );
    for (&i, result) in order.iter().zip(&results) {
        let renewed = match result {
            Ok(RenewOutcome::Renewed(_)) => true,
            Ok(RenewOutcome::NotHeld) => false,
            Err(e) => return Err(format!("renew_many failed for {}: {e}", keys[i])),
        };
        ensure!(
            renewed == (i != 0),
            "renew_many answered {result:?} for {} (asked in the order {order:?}; only \
             batch-order-0 was released): answers must come in the order of the requests",
            keys[i]
        );
    }
    for i in 1..4 {
        raw_release(h, &keys[i], holders[i]).await?;
    }
    Ok(())
}

/// Sends `call`, returning its result and the instant it was sent.
async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, Instant) {
    let sent = Instant::now();
    (call.await, sent)
}

pub(super) async fn fractional_ttls_are_granted_as_reported(h: &Harness) -> CaseResult {
    // At a whole-second TTL a store that truncates to whole seconds looks right; at 1.5 TTL it
    // does not. Acquire, renew and batch renewal each report a TTL, and the key must not be taken
    // over before that TTL has run out since the request was sent.
    let caps = h.backend().capabilities();
    let ttl = (h.ttl() * 3 / 2).min(caps.max_ttl);
    let meta = HolderMetadata::from_stored_lossy("raw");
    let key = |name: &str| h.key(&format!("fractional-{name}"));
    let (acquired, renewed, batched, other) =
        (key("acquire"), key("renew"), key("batch"), key("other"));
    let holders: Vec<HolderToken> = (0..4).map(|_| HolderToken::generate()).collect();
    let (outcome, acquire_sent) = timed(h.backend().acquire(&AcquireRequest::new(
        acquired.clone(),
        holders[0],
        ttl,
        meta,
    )))
    .await;
    let acquire_ttl = match outcome.map_err(fail("backend acquire"))? {
        AcquireOutcome::Acquired(grant) => grant.ttl,
        held => return Err(format!("{acquired} should be free: {held:?}")),
    };
    raw_grant(h, &renewed, holders[1]).await?;
    raw_grant(h, &batched, holders[2]).await?;
    raw_grant(h, &other, holders[3]).await?;
    let (outcome, renew_sent) = timed(h.backend().renew(&RenewRequest::new(
        renewed.clone(),
        holders[1],
        ttl,
    )))
    .await;
    let renew_ttl = match outcome.map_err(fail("backend renew"))? {
        RenewOutcome::Renewed(granted) => granted,
        other => return Err(format!("renewal of a live grant answered {other:?}")),
    };
    let batch = [
        RenewRequest::new(batched.clone(), holders[2], ttl),
        RenewRequest::new(other.clone(), holders[3], ttl),
    ];
    let (results, batch_sent) = timed(h.backend().renew_many(&batch)).await;
    let batch_ttl = match results.first() {
        Some(Ok(RenewOutcome::Renewed(granted))) => *granted,
        other => return Err(format!("batch renewal of a live grant answered {other:?}")),
    };
    let give_up = takeover_limit(h) + ttl * 2;
    let mut checks = Vec::new();
    for (what, key, sent, reported) in [
        ("acquire", &acquired, acquire_sent, acquire_ttl),
        ("renew", &renewed, renew_sent, renew_ttl),
        ("renew_many", &batched, batch_sent, batch_ttl),
    ] {
        ensure!(
            !reported.is_zero() && reported <= ttl,
            "{what} for {ttl:?} reported a grant of {reported:?}"
        );
        let floor = expiry_floor(h, sent, reported);
        checks.push(async move {
            let (_, granted_at) =
                poll_grant_near(h, key, HolderToken::generate(), give_up, Some(floor)).await?;
            ensure!(
                granted_at >= floor,
                "{what} for {ttl:?} reported {reported:?}, but the key was taken over {:?} after \
                 it was sent: the store kept less than it reported (truncated to whole seconds?)",
                granted_at - sent
            );
            Ok::<(), String>(())
        });
    }
    for result in futures_util::future::join_all(checks).await {
        result?;
    }
    Ok(())
}

pub(super) async fn a_second_instance_never_overwrites_a_grant(h: &Harness) -> CaseResult {
    let Some(peer) = h.peer() else {
        eprintln!(
            "SKIPPED: no peer instance (Harness::with_peer): a_second_instance_never_overwrites_a_grant \
             needs a second backend instance on the same store"
        );
        return Ok(());
    };
    // The peer has never seen these keys: an observed-expiry peer then tries a create first,
    // which must meet the first instance's object, not replace it.
    for (i, read_first) in [false, true].into_iter().enumerate() {
        let key = h.key(&format!("peer-{i}"));
        let holder = HolderToken::generate();
        let token = raw_grant(h, &key, holder).await?;
        if read_first {
            peer.inspect(&key).await.map_err(fail("peer inspect"))?;
        }
        let request = AcquireRequest::new(
            key.clone(),
            HolderToken::generate(),
            h.ttl(),
            HolderMetadata::from_stored_lossy("peer"),
        );
        match peer.acquire(&request).await.map_err(fail("peer acquire"))? {
            AcquireOutcome::Acquired(g) => {
                return Err(format!(
                    "a second instance was granted {key}, held by the first, with {g:?}: its \
                     write replaced the holder's (a create that overwrites?)"
                ));
            }
            AcquireOutcome::Held(_) => {}
        }
        let record = inspect(h, &key).await?.ok_or("the record vanished")?;
        ensure!(
            record.is_held_by(&holder) && record.fencing == token,
            "after the second instance's attempt the record is {record:?}, expected the first \
             holder with token {token}"
        );
        raw_release(h, &key, holder).await?;
    }
    // Through lockers on both instances, too.
    let key = h.key("peer-lockers");
    let first = must_acquire(&h.locker(), &key).await?;
    let second = h.locker_on(Arc::clone(peer), "peer");
    ensure!(
        try_acquire(&second, &key).await?.is_none(),
        "a locker on the second instance was granted a key held through the first"
    );
    let first_token = first.fencing_token();
    first.release().await.map_err(fail("release"))?;
    let next = must_acquire(&second, &key).await?;
    ensure!(
        next.fencing_token() > first_token,
        "the second instance's token {} is not above {first_token}",
        next.fencing_token()
    );
    next.release().await.map_err(fail("release"))?;
    Ok(())
}
