//! `lease status`, `lease watch` and `lease break`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use lease_core::{ErrorKind, LeaseRecord, Locker, RecordState};
use serde_json::{Value, json};

use crate::exit::{self, CliError};
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
        });
    };
    let state = match r.state {
        RecordState::Held => "held",
        RecordState::Free => "free",
        RecordState::Expired => "expired",
        _ => "unknown",
    };
    let held = r.is_held();
    json!({
        "name": name,
        "store": store,
        "state": state,
        "held": held,
        "holder": r.metadata.as_ref().filter(|_| held).map(|m| m.as_str()),
        "holder_token": r.holder.filter(|_| held).map(|t| t.to_string()),
        "fencing_token": r.fencing.get(),
        "acquired_at": r.acquired_at.filter(|_| held).map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "ttl_ms": r.ttl.filter(|_| held).map(|d| d.as_millis() as u64),
        "expires_in_ms": r.expires_in.filter(|_| held).map(|d| d.as_millis() as u64),
    })
}

/// `lease status NAME [--json]`.
pub(crate) async fn status(
    locker: &Locker,
    name: &str,
    store: &str,
    json: bool,
) -> Result<u8, CliError> {
    let record = locker
        .inspect(name)
        .await
        .map_err(|e| CliError::from_lease(&e))?;
    if json {
        println!("{}", record_json(name, store, record.as_ref()));
    } else {
        match &record {
            Some(r) => println!("{name}: {}", describe(r, SystemTime::now())),
            None => println!("{name}: never acquired on this store"),
        }
    }
    Ok(exit::OK)
}

/// `lease watch NAME`: a line per holder change, until interrupted or `count` lines were printed.
pub(crate) async fn watch(
    locker: &Locker,
    name: &str,
    interval: Duration,
    count: Option<u64>,
    json: bool,
    store: &str,
) -> Result<u8, CliError> {
    let election = locker
        .election(name)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let changes = election.observe(interval);
    futures_util::pin_mut!(changes);
    let mut printed = 0u64;
    let mut failures = 0u32;
    while let Some(item) = changes.next().await {
        match item {
            Ok(leader) => {
                failures = 0;
                let now = SystemTime::now();
                if json {
                    let mut value = record_json(name, store, leader.as_ref());
                    value["observed_at"] = json!(humantime::format_rfc3339_millis(now).to_string());
                    println!("{value}");
                } else {
                    let what = match &leader {
                        Some(r) => describe(r, now),
                        None => "no holder".to_owned(),
                    };
                    println!("{} {name}: {what}", humantime::format_rfc3339_seconds(now));
                }
                let _ = std::io::stdout().flush();
                printed += 1;
                if count.is_some_and(|c| printed >= c) {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::Transient) && failures < 30 => {
                failures += 1;
                eprintln!("lease: warning: {}", exit::one_line_chain(&e));
            }
            Err(e) => return Err(CliError::from_lease(&e)),
        }
    }
    Ok(exit::OK)
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
        eprint!("Break lease {name} ({state})? The holder keeps running until it notices. [y/N] ");
        let _ = std::io::stderr().flush();
        let answer = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(|e| CliError::new(exit::SOFTWARE, e.to_string()))?
        .map_err(|e| CliError::new(exit::SOFTWARE, format!("cannot read the answer: {e}")))?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("lease: not broken");
            return Ok(exit::DECLINED);
        }
    }
    let was = locker
        .break_lease(name)
        .await
        .map_err(|e| CliError::from_lease(&e))?;
    match was.filter(LeaseRecord::is_held) {
        Some(r) => println!(
            "broke lease {name}: it was {}",
            describe(&r, SystemTime::now())
        ),
        None => println!("lease {name} was not held; nothing to break"),
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
