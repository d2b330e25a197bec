//! Conformance cases for counting semaphores: N slot leases under one name, on any backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::cases::takeover_limit;
use super::{CaseResult, Harness};
use crate::error::{BackendErrorKind, Error, LostReason};
use crate::semaphore::{Permit, Semaphore};
use crate::token::FencingToken;

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

fn semaphore(
    h: &Harness,
    locker_name: &str,
    name: &str,
    permits: u32,
) -> Result<Semaphore, String> {
    let locker = h.locker_on(Arc::clone(h.backend()), locker_name);
    Semaphore::new(&locker, h.key(name), permits).map_err(fail("Semaphore::new"))
}

async fn must_get(semaphore: &Semaphore) -> Result<Permit, String> {
    semaphore
        .try_acquire()
        .await
        .map_err(fail("try_acquire"))?
        .ok_or_else(|| format!("{} should have a free permit", semaphore.name()))
}

/// Leaves the counted section when dropped (also when the work is cancelled by a lost permit).
struct Leave(Arc<AtomicU64>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(in crate::conformance) async fn semaphore_admits_exactly_n(h: &Harness) -> CaseResult {
    const PERMITS: u32 = 3;
    let mut permits = Vec::new();
    for i in 0..PERMITS {
        let s = semaphore(h, &format!("holder-{i}"), "sem-exact", PERMITS)?;
        permits.push(must_get(&s).await?);
    }
    let mut slots: Vec<u32> = permits.iter().map(Permit::slot).collect();
    slots.sort_unstable();
    ensure!(
        slots == [0, 1, 2],
        "three permits should hold the three slots, got {slots:?}"
    );
    let late = semaphore(h, "late", "sem-exact", PERMITS)?;
    let refused = late.try_acquire().await.map_err(fail("try_acquire"))?;
    ensure!(
        refused.is_none(),
        "a fourth permit was granted while three were held: {refused:?}"
    );
    let freed = permits.remove(1);
    let freed_slot = freed.slot();
    let freed_token = freed.fencing_token();
    freed.release().await.map_err(fail("release"))?;
    let next = must_get(&late).await?;
    ensure!(
        next.slot() == freed_slot && next.fencing_token() > freed_token,
        "after releasing slot {freed_slot} (token {freed_token}) the next permit was slot {} token {}",
        next.slot(),
        next.fencing_token()
    );
    let records = late.inspect().await.map_err(fail("inspect"))?;
    let held = records.iter().filter(|r| r.record.is_held()).count();
    ensure!(
        held == PERMITS as usize,
        "inspect shows {held} held permits, expected {PERMITS}: {records:?}"
    );
    ensure!(
        records.iter().all(|r| r.declared_permits == Some(PERMITS)),
        "inspect does not show the declared permit count: {records:?}"
    );
    next.release().await.map_err(fail("release"))?;
    for permit in permits {
        permit.release().await.map_err(fail("release"))?;
    }
    Ok(())
}

pub(in crate::conformance) async fn semaphore_contenders_never_exceed_n(h: &Harness) -> CaseResult {
    const PERMITS: u32 = 3;
    const CONTENDERS: usize = 8;
    const ROUNDS: usize = 3;
    let inside = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let sections = Arc::new(std::sync::Mutex::new(Vec::<(
        u32,
        FencingToken,
        Instant,
        Instant,
    )>::new()));
    let mut tasks = Vec::new();
    for c in 0..CONTENDERS {
        // Two contenders per locker: permits are taken by several lockers and within one.
        let s = semaphore(h, &format!("contender-{}", c / 2), "sem-contend", PERMITS)?;
        let (inside, most, sections) = (
            Arc::clone(&inside),
            Arc::clone(&most),
            Arc::clone(&sections),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let (inside, most, sections) = (
                    Arc::clone(&inside),
                    Arc::clone(&most),
                    Arc::clone(&sections),
                );
                s.run_with_permit(|permit| async move {
                    let entered = Instant::now();
                    let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    let _leave = Leave(Arc::clone(&inside));
                    most.fetch_max(now_inside, Ordering::SeqCst);
                    sleep(Duration::from_millis(20)).await;
                    // Counted only if the permit was still held at the end of the section.
                    if permit.is_held() {
                        sections.lock().unwrap_or_else(|e| e.into_inner()).push((
                            permit.slot(),
                            permit.fencing_token(),
                            entered,
                            Instant::now(),
                        ));
                    }
                    Ok::<_, Error>(())
                })
                .await
                .map_err(fail("run_with_permit"))?;
            }
            Ok::<(), String>(())
        }));
    }
    let limit = h.ttl() * (CONTENDERS * ROUNDS) as u32 + Duration::from_secs(60);
    for task in tasks {
        tokio::time::timeout(limit, task)
            .await
            .map_err(|_| "contenders did not finish in time".to_owned())?
            .map_err(fail("contender task"))??;
    }
    let most = most.load(Ordering::SeqCst);
    ensure!(
        most <= u64::from(PERMITS),
        "{most} holders were inside at once with {PERMITS} permits"
    );
    let sections = std::mem::take(&mut *sections.lock().unwrap_or_else(|e| e.into_inner()));
    ensure!(
        sections.len() == CONTENDERS * ROUNDS,
        "{} sections ran under a held permit, expected {}",
        sections.len(),
        CONTENDERS * ROUNDS
    );
    let mut by_slot: HashMap<u32, Vec<(FencingToken, Instant, Instant)>> = HashMap::new();
    for (slot, token, entered, left) in sections {
        ensure!(slot < PERMITS, "a permit on slot {slot} of {PERMITS}");
        by_slot
            .entry(slot)
            .or_default()
            .push((token, entered, left));
    }
    for (slot, mut runs) in by_slot {
        runs.sort_by_key(|r| r.1);
        for pair in runs.windows(2) {
            ensure!(
                pair[0].2 <= pair[1].1,
                "two holders of slot {slot} overlapped: {pair:?}"
            );
            ensure!(
                pair[0].0 < pair[1].0,
                "slot {slot}'s tokens did not rise in grant order: {} then {}",
                pair[0].0,
                pair[1].0
            );
        }
    }
    Ok(())
}

pub(in crate::conformance) async fn semaphore_lost_permit_signalled_before_regrant(
    h: &Harness,
) -> CaseResult {
    const PERMITS: u32 = 2;
    let faulty = h.faulty();
    let cut_locker = h.locker_on(Arc::new(faulty.clone()), "cut-off");
    let cut =
        Semaphore::new(&cut_locker, h.key("sem-lost"), PERMITS).map_err(fail("Semaphore::new"))?;
    let healthy = semaphore(h, "healthy", "sem-lost", PERMITS)?;
    let cut_permit = must_get(&cut).await?;
    let kept = must_get(&healthy).await?;
    let cancelled = cut_permit.cancellation_token();
    let lost = cut_permit.lost();
    faulty.drop_renewals(true);
    let next = tokio::time::timeout(takeover_limit(h), healthy.acquire())
        .await
        .map_err(|_| "nobody was granted the cut-off holder's slot".to_owned())?
        .map_err(fail("acquire"))?;
    ensure!(
        next.slot() == cut_permit.slot(),
        "the new permit is slot {} while slot {} was never released",
        next.slot(),
        kept.slot()
    );
    ensure!(
        !cut_permit.is_held(),
        "the cut-off holder still believes it holds slot {} after it was granted again",
        cut_permit.slot()
    );
    ensure!(
        cancelled.is_cancelled(),
        "the cut-off holder's cancellation token was not cancelled before the slot was granted again"
    );
    let reason = tokio::time::timeout(Duration::from_millis(1), lost)
        .await
        .map_err(|_| "lost() had not resolved".to_owned())?;
    ensure!(
        reason == LostReason::DeadlineExpired,
        "lost reason {reason:?}"
    );
    ensure!(
        next.fencing_token() > cut_permit.fencing_token(),
        "the slot's new token {} is not above the lost one {}",
        next.fencing_token(),
        cut_permit.fencing_token()
    );
    ensure!(
        kept.is_held(),
        "the other permit was disturbed by the takeover of slot {}",
        next.slot()
    );
    drop(cut_permit);
    next.release().await.map_err(fail("release"))?;
    kept.release().await.map_err(fail("release"))?;
    Ok(())
}

pub(in crate::conformance) async fn semaphore_refuses_mixed_permit_counts(
    h: &Harness,
) -> CaseResult {
    let three = semaphore(h, "three", "sem-mixed", 3)?;
    let five = semaphore(h, "five", "sem-mixed", 5)?;
    match h.locker().list(h.key("sem-mixed").as_str()).await {
        Err(Error::Backend(e)) if e.kind() == BackendErrorKind::Unsupported => {
            // Without a listing the count cannot be checked (docs/semaphore.md says so).
            return Ok(());
        }
        Err(e) => return Err(format!("list: {e}")),
        Ok(_) => {}
    }
    let held = must_get(&three).await?;
    match five.try_acquire().await {
        Err(Error::PermitCountMismatch {
            ours: 5, theirs: 3, ..
        }) => {}
        other => {
            return Err(format!(
                "a 5-permit semaphore beside a live 3-permit holder gave {other:?}, expected PermitCountMismatch"
            ));
        }
    }
    ensure!(
        held.is_held(),
        "the 3-permit holder was disturbed by the refusal"
    );
    held.release().await.map_err(fail("release"))?;
    // Once the other count's holders are gone (a finished rolling deploy), the new count works.
    let now_five = must_get(&five).await?;
    match three.try_acquire().await {
        Err(
            e @ Error::PermitCountMismatch {
                ours: 3, theirs: 5, ..
            },
        ) => {
            ensure!(
                e.kind() == crate::ErrorKind::PermitCountMismatch,
                "the refusal's kind is {:?}",
                e.kind()
            );
        }
        other => {
            return Err(format!(
                "a 3-permit semaphore beside a live 5-permit holder gave {other:?}, expected PermitCountMismatch"
            ));
        }
    }
    now_five.release().await.map_err(fail("release"))?;
    Ok(())
}
