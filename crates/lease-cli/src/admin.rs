//! `lease status`, `lease watch` and `lease break`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, SystemTime};

use lease_core::{ErrorKind, LeaseRecord, Locker, PermitRecord, RecordState};
use serde_json::{Value, json};

use crate::exit::{self, CliError};
use crate::output;
use crate::store::{self, StoreUrl};
use crate::waiting::describe;

/// The record as JSON (stable field names; documented in docs/cli.md).
pub(crate) fn record_json(name: &str, store: &str, record: Option<&LeaseRecord>) -> Value {
    let Some(r) = record else {
        return json!({
            "name": name,
            "store": store,
            "state": "absent",
            "held": false,
            "holder": null,
            "holder_token": null,
            "fencing_token": null,
            "acquired_at": null,
            "ttl_ms": null,
            "expires_in_ms": null,
            "reason": null,
        });
    };
    let state = state_name(r.state);
    let held = r.is_held();
    // An unreadable record's fencing token is a placeholder: shown as null, never as a number.
    let fencing = (!r.is_unreadable()).then(|| r.fencing.get());
    json!({
        "name": name,
        "store": store,
        "state": state,
        "held": held,
        "holder": r.metadata.as_ref().filter(|_| held).map(|m| m.as_str()),
        "holder_token": r.holder.filter(|_| held).map(|t| t.to_string()),
        "fencing_token": fencing,
        "acquired_at": r.acquired_at.filter(|_| held).map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "ttl_ms": r.ttl.filter(|_| held).map(|d| d.as_millis() as u64),
        "expires_in_ms": r.expires_in.filter(|_| held).map(|d| d.as_millis() as u64),
        "reason": r.unreadable.as_deref(),
    })
}

fn state_name(state: RecordState) -> &'static str {
    match state {
        RecordState::Held => "held",
        RecordState::Free => "free",
        RecordState::Expired => "expired",
        RecordState::Unreadable => "unreadable",
        _ => "unknown",
    }
}

/// `lease status NAME [--json]`.
pub(crate) async fn status(
    locker: &Locker,
    name: &str,
    url: &StoreUrl,
    json: bool,
) -> Result<u8, CliError> {
    let record = locker
        .inspect(name)
        .await
        .map_err(|e| store::read_error(url, &e))?;
    let permits = permits_of(locker, name).await;
    if json {
        let mut value = record_json(name, &url.redacted(), record.as_ref());
        if !permits.is_empty() {
            let shown = url.redacted();
            value["permits"] = permits
                .iter()
                .map(|p| permit_json(p, &shown))
                .collect::<Vec<_>>()
                .into();
        }
        output::line(value)?;
        return Ok(exit::OK);
    }
    if record.is_some() || permits.is_empty() {
        output::line(format!("{name}: {}", sentence(record.as_ref())))?;
    }
    if !permits.is_empty() {
        let held = permits.iter().filter(|p| p.record.is_held()).count();
        let mut counts: Vec<u32> = permits
            .iter()
            .filter(|p| p.record.is_held())
            .filter_map(|p| p.declared_permits)
            .collect();
        counts.sort_unstable();
        counts.dedup();
        let of = match counts.as_slice() {
            [n] => format!(" of {n}"),
            [] => String::new(),
            many => format!(
                " (holders disagree on the count: {})",
                many.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        output::line(format!("{name}: semaphore, {held} permit(s) held{of}"))?;
        for p in &permits {
            output::line(format!(
                "  permit {}: {}",
                p.slot,
                sentence(Some(&p.record))
            ))?;
        }
    }
    Ok(exit::OK)
}

/// The permits of a semaphore called `name`, sorted by slot; empty when there are none or the
/// store cannot list (status then shows the name's own record only).
async fn permits_of(locker: &Locker, name: &str) -> Vec<PermitRecord> {
    let prefix = format!("{name}/permit-");
    let Ok(records) = locker.list(&prefix).await else {
        return Vec::new();
    };
    let mut permits: Vec<PermitRecord> = records
        .into_iter()
        .filter_map(PermitRecord::from_record)
        .filter(|p| p.name.as_str() == name)
        .collect();
    permits.sort_by_key(|p| p.slot);
    permits
}

/// A permit as JSON: its slot record (as `status --json`) plus the semaphore, slot and count.
fn permit_json(permit: &PermitRecord, store: &str) -> Value {
    let mut value = record_json(permit.record.key.as_str(), store, Some(&permit.record));
    value["semaphore"] = json!(permit.name.as_str());
    value["slot"] = json!(permit.slot);
    value["declared_permits"] = json!(permit.declared_permits.filter(|_| permit.record.is_held()));
    value
}

/// The text form of a record, as `status` and `watch` print it.
fn sentence(record: Option<&LeaseRecord>) -> String {
    match record {
        Some(r) => describe(r, SystemTime::now()),
        None => "never acquired on this store".to_owned(),
    }
}

/// `lease list [PREFIX] [--json]`: every lease whose name starts with the prefix, sorted by name.
pub(crate) async fn list(
    locker: &Locker,
    prefix: &str,
    url: &StoreUrl,
    json: bool,
) -> Result<u8, CliError> {
    let records = locker.list(prefix).await.map_err(|e| match e.kind() {
        ErrorKind::Unsupported => CliError::new(
            exit::CONFIG,
            format!(
                "the {} store cannot list leases (lease status NAME reads one lease)",
                locker.backend().name()
            ),
        ),
        ErrorKind::InvalidInput => CliError::usage(format!("prefix {prefix:?}: {e}")),
        _ => store::read_error(url, &e),
    })?;
    let shown = url.redacted();
    for record in records {
        let name = record.key.as_str().to_owned();
        match (json, PermitRecord::from_record(record.clone())) {
            (true, Some(permit)) => output::line(permit_json(&permit, &shown))?,
            (true, None) => output::line(record_json(&name, &shown, Some(&record)))?,
            (false, Some(permit)) => output::line(format!(
                "{name} (permit {} of semaphore {}): {}",
                permit.slot,
                permit.name,
                sentence(Some(&record))
            ))?,
            (false, None) => output::line(format!("{name}: {}", sentence(Some(&record))))?,
        }
    }
    Ok(exit::OK)
}

/// What makes two observations of a lease the same for `watch`: the grant and its state.
fn identity(record: Option<&LeaseRecord>) -> Option<(bool, Option<String>, u64, &'static str)> {
    record.map(|r| {
        let held = r.is_held();
        (
            held,
            r.holder.filter(|_| held).map(|t| t.to_string()),
            r.fencing.get(),
            state_name(r.state),
        )
    })
}

/// `lease watch NAME`: a line each time the lease changes hands or state (the first line is the
/// current state), until interrupted or `count` lines were printed. Same JSON as `status`.
pub(crate) async fn watch(
    locker: &Locker,
    name: &str,
    interval: Duration,
    count: Option<u64>,
    json: bool,
    url: &StoreUrl,
) -> Result<u8, CliError> {
    let key = lease_core::LeaseKey::new(name).map_err(|e| CliError::usage(e.to_string()))?;
    let backend = std::sync::Arc::clone(locker.backend());
    let shown = url.redacted();
    let mut last = None;
    let mut printed = 0u64;
    let mut failures = 0u32;
    let mut first = true;
    loop {
        if !first && backend.wait_for_change(&key, interval).await.is_err() {
            tokio::time::sleep(interval).await;
        }
        first = false;
        match locker.inspect(name).await {
            Ok(record) => {
                failures = 0;
                let now_identity = identity(record.as_ref());
                if last.as_ref() == Some(&now_identity) {
                    continue;
                }
                last = Some(now_identity);
                let now = SystemTime::now();
                if json {
                    let mut value = record_json(name, &shown, record.as_ref());
                    value["observed_at"] = json!(humantime::format_rfc3339_millis(now).to_string());
                    output::line(value)?;
                } else {
                    output::line(format!(
                        "{} {name}: {}",
                        humantime::format_rfc3339_seconds(now),
                        sentence(record.as_ref())
                    ))?;
                }
                printed += 1;
                if count.is_some_and(|c| printed >= c) {
                    return Ok(exit::OK);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::Transient) && failures < 30 => {
                failures += 1;
                say!("lease: warning: {}", url.scrub(&exit::one_line_chain(&e)));
            }
            Err(e) => return Err(store::read_error(url, &e)),
        }
    }
}

/// `lease break NAME [--yes]`.
pub(crate) async fn break_lease(locker: &Locker, name: &str, yes: bool) -> Result<u8, CliError> {
    let before = locker
        .inspect(name)
        .await
        .map_err(|e| CliError::from_lease(&e))?;
    if !yes {
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            return Err(CliError::usage(format!(
                "refusing to break lease {name} without confirmation: pass --yes (no terminal to ask on)"
            )));
        }
        let state = match &before {
            Some(r) => describe(r, SystemTime::now()),
            None => "never acquired".to_owned(),
        };
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "Break lease {name} ({state})? The holder keeps running until it notices. [y/N] "
        );
        let _ = err.flush();
        let answer = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(|e| CliError::new(exit::SOFTWARE, e.to_string()))?
        .map_err(|e| CliError::new(exit::SOFTWARE, format!("cannot read the answer: {e}")))?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            say!("lease: not broken");
            return Ok(exit::DECLINED);
        }
    }
    let was = locker
        .break_lease(name)
        .await
        .map_err(|e| CliError::from_lease(&e))?;
    match was.filter(LeaseRecord::is_held) {
        Some(r) => output::line(format!(
            "broke lease {name}: it was {}",
            describe(&r, SystemTime::now())
        ))?,
        None => output::line(format!("lease {name} was not held; nothing to break"))?,
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_core::{FencingToken, HolderMetadata, HolderToken, LeaseKey, MemoryBackend};

    #[test]
    fn json_for_a_held_record() {
        let record = LeaseRecord::held(
            LeaseKey::new("k").unwrap(),
            HolderToken::generate(),
            FencingToken::new(4),
        )
        .with_metadata(HolderMetadata::new("me").unwrap())
        .with_ttl(Duration::from_secs(30))
        .with_expires_in(Duration::from_millis(2500));
        let v = record_json("k", "memory://", Some(&record));
        assert_eq!(v["state"], "held");
        assert_eq!(v["held"], true);
        assert_eq!(v["holder"], "me");
        assert_eq!(v["fencing_token"], 4);
        assert_eq!(v["ttl_ms"], 30_000);
        assert_eq!(v["expires_in_ms"], 2500);
        assert_eq!(v["holder_token"].as_str().unwrap().len(), 32);
    }

    #[test]
    fn json_for_free_and_absent() {
        let free = LeaseRecord::free(LeaseKey::new("k").unwrap(), FencingToken::new(9));
        let v = record_json("k", "memory://", Some(&free));
        assert_eq!(v["state"], "free");
        assert_eq!(v["held"], false);
        assert_eq!(v["fencing_token"], 9);
        assert!(v["holder"].is_null());
        let v = record_json("k", "memory://", None);
        assert_eq!(v["state"], "absent");
        assert!(v["fencing_token"].is_null());
    }

    /// The documented shape of `status --json` (docs/cli.md): every field in every object, with
    /// its type. Renaming, removing or retyping one fails here.
    #[test]
    fn the_json_shape_is_the_documented_one() {
        let fields = [
            "acquired_at",
            "expires_in_ms",
            "fencing_token",
            "held",
            "holder",
            "holder_token",
            "name",
            "reason",
            "state",
            "store",
            "ttl_ms",
        ];
        let held = LeaseRecord::held(
            LeaseKey::new("k").unwrap(),
            HolderToken::generate(),
            FencingToken::new(4),
        )
        .with_metadata(HolderMetadata::new("me").unwrap())
        .with_acquired_at(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        .with_ttl(Duration::from_secs(30))
        .with_expires_in(Duration::from_millis(2500));
        let free = LeaseRecord::free(LeaseKey::new("k").unwrap(), FencingToken::new(9));
        let unreadable = LeaseRecord::unreadable(LeaseKey::new("k").unwrap(), "not a lease");
        for record in [Some(&held), Some(&free), Some(&unreadable), None] {
            let v = record_json("k", "memory://", record);
            let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, fields, "{v}");
            assert!(v["name"].is_string() && v["store"].is_string() && v["state"].is_string());
            assert!(v["held"].is_boolean());
        }
        let v = record_json("k", "memory://", Some(&held));
        assert_eq!(v["acquired_at"], "2023-11-14T22:13:20.123Z");
        for integer in ["fencing_token", "ttl_ms", "expires_in_ms"] {
            assert!(v[integer].is_u64(), "{integer}: {v}");
        }
        for string in ["holder", "holder_token"] {
            assert!(v[string].is_string(), "{string}: {v}");
        }
        assert!(v["reason"].is_null(), "{v}");
        // Unreadable: the reason, and no fencing token (the record's is a placeholder).
        let v = record_json("k", "memory://", Some(&unreadable));
        assert_eq!(v["state"], "unreadable");
        assert_eq!(v["reason"], "not a lease");
        assert!(v["fencing_token"].is_null() && v["holder"].is_null(), "{v}");
    }

    /// A store that cannot list: the memory backend without its `list`.
    #[derive(Debug)]
    struct NoList(MemoryBackend);

    #[async_trait::async_trait]
    impl lease_core::Backend for NoList {
        fn name(&self) -> &'static str {
            "nolist"
        }
        fn capabilities(&self) -> lease_core::Capabilities {
            self.0.capabilities()
        }
        async fn acquire(
            &self,
            request: &lease_core::AcquireRequest,
        ) -> Result<lease_core::AcquireOutcome, lease_core::BackendError> {
            self.0.acquire(request).await
        }
        async fn renew(
            &self,
            request: &lease_core::RenewRequest,
        ) -> Result<lease_core::RenewOutcome, lease_core::BackendError> {
            self.0.renew(request).await
        }
        async fn release(
            &self,
            request: &lease_core::ReleaseRequest,
        ) -> Result<lease_core::ReleaseOutcome, lease_core::BackendError> {
            self.0.release(request).await
        }
        async fn inspect(
            &self,
            key: &LeaseKey,
        ) -> Result<Option<LeaseRecord>, lease_core::BackendError> {
            self.0.inspect(key).await
        }
    }

    #[tokio::test]
    async fn a_store_without_list_says_so_in_one_line() {
        let url = StoreUrl::parse("memory://").unwrap();
        let locker = Locker::new(NoList(MemoryBackend::new()));
        let e = list(&locker, "", &url, false).await.unwrap_err();
        assert_eq!(e.code, exit::CONFIG);
        assert_eq!(
            e.message,
            "the nolist store cannot list leases (lease status NAME reads one lease)"
        );
        let locker = Locker::new(MemoryBackend::new());
        let e = list(&locker, "bad prefix", &url, false).await.unwrap_err();
        assert_eq!(e.code, exit::USAGE);
    }

    #[tokio::test]
    async fn break_without_yes_and_without_terminal_is_refused() {
        // Under the test harness stdin is not a terminal (cargo/nextest close or pipe it).
        if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
            eprintln!("SKIPPED: stdin is a terminal");
            return;
        }
        let locker = Locker::new(MemoryBackend::new());
        let lease = locker.try_acquire("b").await.unwrap().unwrap();
        let e = break_lease(&locker, "b", false).await.unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert!(lease.is_held());
        assert_eq!(break_lease(&locker, "b", true).await.unwrap(), exit::OK);
        assert!(
            locker
                .inspect("b")
                .await
                .unwrap()
                .is_some_and(|r| !r.is_held())
        );
    }
}
