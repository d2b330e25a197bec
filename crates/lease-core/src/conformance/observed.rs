//! Cases for [`ClockModel::ObservedExpiry`](crate::ClockModel::ObservedExpiry) backends: no
//! takeover before the declared [`ObservationRule`](crate::observed::ObservationRule) allows. For
//! other clock models they pass at once.

use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::{CaseResult, Harness};
use crate::backend::{AcquireOutcome, AcquireRequest, Backend, RenewOutcome, RenewRequest};
use crate::observed::ObservationRule;
use crate::token::{FencingToken, HolderMetadata, HolderToken};
use crate::{ClockModel, LeaseKey};

/// The declared rule, or `None` when the backend is not an observed-expiry one.
fn declared_rule(h: &Harness) -> Result<Option<ObservationRule>, String> {
    let caps = h.backend().capabilities();
    if caps.clock != ClockModel::ObservedExpiry {
        return Ok(None);
    }
    caps.observation.map(Some).ok_or_else(|| {
        "an ObservedExpiry backend must declare its ObservationRule in Capabilities::observation"
            .to_owned()
    })
}

async fn acquire(
    h: &Harness,
    key: &LeaseKey,
    holder: HolderToken,
) -> Result<AcquireOutcome, String> {
    let request = AcquireRequest::new(
        key.clone(),
        holder,
        h.ttl(),
        HolderMetadata::from_stored_lossy("observed"),
    );
    h.backend()
        .acquire(&request)
        .await
        .map_err(|e| format!("backend acquire: {e}"))
}

async fn grant(h: &Harness, key: &LeaseKey, holder: HolderToken) -> Result<FencingToken, String> {
    match acquire(h, key, holder).await? {
        AcquireOutcome::Acquired(g) => Ok(g.fencing),
        other => Err(format!(
            "{key} should be free but acquire answered {other:?}"
        )),
    }
}

/// Polls acquire for a new holder every 10 ms until it is granted; returns the token and the
/// instant the grant's answer arrived.
async fn poll_takeover(
    h: &Harness,
    key: &LeaseKey,
    give_up: Duration,
) -> Result<(FencingToken, Instant), String> {
    let contender = HolderToken::generate();
    let started = Instant::now();
    loop {
        if let AcquireOutcome::Acquired(g) = acquire(h, key, contender).await? {
            return Ok((g.fencing, Instant::now()));
        }
        if started.elapsed() > give_up {
            return Err(format!("{key} was not taken over within {give_up:?}"));
        }
        sleep(Duration::from_millis(10)).await;
    }
}

fn give_up(h: &Harness, rule: &ObservationRule) -> Duration {
    rule.takeover_after(h.ttl()) * 2
        + h.backend().capabilities().takeover_tolerance
        + Duration::from_secs(2)
}

pub(super) async fn observed_takeover_waits_for_the_rule(h: &Harness) -> CaseResult {
    let Some(rule) = declared_rule(h)? else {
        return Ok(());
    };
    let key = h.key("observed-takeover");
    let first = grant(h, &key, HolderToken::generate()).await?;
    // Every contender read starts after this instant, so no observation of the holder's version
    // can start earlier: nothing may take it over before the rule's wait has passed since.
    let answered = Instant::now();
    let (second, granted_at) = poll_takeover(h, &key, give_up(h, &rule)).await?;
    let wait = rule.takeover_after(h.ttl());
    let waited = granted_at - answered;
    if waited < wait {
        return Err(format!(
            "taken over {waited:?} after the holder's grant was answered; the declared rule \
             allows it only after {wait:?} (TTL × (1 + {}) + {:?})",
            rule.max_drift(),
            rule.margin()
        ));
    }
    if second <= first {
        return Err(format!("takeover token {second} is not above {first}"));
    }
    Ok(())
}

pub(super) async fn observed_renewal_restarts_the_observation(h: &Harness) -> CaseResult {
    let Some(rule) = declared_rule(h)? else {
        return Ok(());
    };
    let key = h.key("observed-restart");
    let holder = HolderToken::generate();
    grant(h, &key, holder).await?;
    // A contender starts observing the first version…
    let contender = HolderToken::generate();
    if let AcquireOutcome::Acquired(g) = acquire(h, &key, contender).await? {
        return Err(format!(
            "a held key was granted to a contender at once: {g:?}"
        ));
    }
    sleep(h.ttl() / 2).await;
    // …then the holder renews: a new version, whose observation starts after this answer.
    let renewed = h
        .backend()
        .renew(&RenewRequest::new(key.clone(), holder, h.ttl()))
        .await
        .map_err(|e| format!("backend renew: {e}"))?;
    if renewed != RenewOutcome::Renewed(h.ttl()) {
        return Err(format!("renewal of a live grant answered {renewed:?}"));
    }
    let answered = Instant::now();
    let (_, granted_at) = poll_takeover(h, &key, give_up(h, &rule)).await?;
    let wait = rule.takeover_after(h.ttl());
    let waited = granted_at - answered;
    if waited < wait {
        return Err(format!(
            "taken over {waited:?} after a renewal was answered, before the rule's {wait:?}: \
             a new version must restart the observation"
        ));
    }
    Ok(())
}

pub(super) async fn observed_observation_starts_at_the_response(h: &Harness) -> CaseResult {
    let Some(rule) = declared_rule(h)? else {
        return Ok(());
    };
    let Some(peer) = h.peer().cloned() else {
        eprintln!(
            "SKIPPED: no peer instance (Harness::with_peer): \
             observed_observation_starts_at_the_response needs a second backend instance"
        );
        return Ok(());
    };
    let key = h.key("observed-response");
    let holder = HolderToken::generate();
    grant(h, &key, holder).await?;
    // A contender on the second instance sends its first read now; it may be served only after
    // the renewal below has landed. Its observation of the renewed version must then start at
    // the read's response — never at its send, which came before the renewal was even sent.
    let contender = HolderToken::generate();
    let request = AcquireRequest::new(
        key.clone(),
        contender,
        h.ttl(),
        HolderMetadata::from_stored_lossy("observer"),
    );
    let first_look = tokio::spawn({
        let (peer, request) = (std::sync::Arc::clone(&peer), request.clone());
        async move { peer.acquire(&request).await }
    });
    sleep(h.ttl() / 10).await;
    let longer = (h.ttl() * 3 / 2).min(h.backend().capabilities().max_ttl);
    let renew_sent = Instant::now();
    let granted = match h
        .backend()
        .renew(&RenewRequest::new(key.clone(), holder, longer))
        .await
        .map_err(|e| format!("backend renew: {e}"))?
    {
        RenewOutcome::Renewed(granted) => granted,
        other => return Err(format!("renewal of a live grant answered {other:?}")),
    };
    match first_look
        .await
        .map_err(|e| format!("contender task: {e}"))?
    {
        Ok(AcquireOutcome::Acquired(g)) => {
            return Err(format!(
                "a held key was granted to a contender at once: {g:?}"
            ));
        }
        Ok(AcquireOutcome::Held(_)) => {}
        Err(e) => return Err(format!("contender acquire: {e}")),
    }
    // No read can have returned the renewed version before it landed, after `renew_sent`.
    let floor = renew_sent + rule.takeover_after(granted);
    let give_up = rule.takeover_after(longer) * 2 + Duration::from_secs(2);
    let granted_at = poll_takeover_near(&*peer, &request, floor, give_up).await?;
    if granted_at < floor {
        return Err(format!(
            "the second instance took over {:?} before the rule allows, counting from the \
             renewal's send: its observation of the renewed version started before that version \
             existed (at its read's send, not its response?)",
            floor - granted_at
        ));
    }
    Ok(())
}

/// Polls `request` on `backend` until granted, back to back from 50 ms before `floor`; returns
/// when the granting answer arrived.
async fn poll_takeover_near(
    backend: &dyn Backend,
    request: &AcquireRequest,
    floor: Instant,
    give_up: Duration,
) -> Result<Instant, String> {
    let started = Instant::now();
    loop {
        match backend.acquire(request).await {
            Ok(AcquireOutcome::Acquired(_)) => return Ok(Instant::now()),
            Ok(AcquireOutcome::Held(_)) => {}
            Err(e) => return Err(format!("contender acquire: {e}")),
        }
        if started.elapsed() > give_up {
            return Err(format!(
                "{} was not taken over within {give_up:?}",
                request.key
            ));
        }
        let now = Instant::now();
        if now + Duration::from_millis(50) >= floor && now <= floor + Duration::from_millis(5) {
            tokio::task::yield_now().await;
        } else {
            sleep(Duration::from_millis(10)).await;
        }
    }
}
