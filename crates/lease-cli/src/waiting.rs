//! The status line shown while waiting for a lease (or for leadership).

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use lease_core::{LeaseRecord, Locker, RecordState};

use crate::duration::short;

/// How waiting is shown on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Display {
    /// One line, refreshed in place (stderr is a terminal).
    Refresh,
    /// A line each time the holder changes (stderr is not a terminal, and `-v`).
    Lines,
    /// Nothing.
    Off,
}

impl Display {
    pub(crate) fn choose(verbose: u8) -> Self {
        if std::io::stderr().is_terminal() {
            Display::Refresh
        } else if verbose > 0 {
            Display::Lines
        } else {
            Display::Off
        }
    }
}

/// One line about a record: who holds it, since when, its fencing token, when it expires.
pub(crate) fn describe(record: &LeaseRecord, now: SystemTime) -> String {
    match record.state {
        RecordState::Held => {
            let who = match (&record.metadata, &record.holder) {
                (Some(m), _) if !m.as_str().is_empty() => m.as_str().to_owned(),
                (_, Some(token)) => format!("holder {}", &token.to_string()[..8]),
                _ => "an unknown holder".to_owned(),
            };
            let mut line = format!("held by {who}");
            if let Some(at) = record.acquired_at {
                let secs = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()))
                    .unwrap_or(at);
                line.push_str(&format!(
                    " since {}",
                    humantime::format_rfc3339_seconds(secs)
                ));
                if let Ok(ago) = now.duration_since(at) {
                    line.push_str(&format!(
                        " ({} ago)",
                        short(Duration::from_secs(ago.as_secs()))
                    ));
                }
            }
            line.push_str(&format!(", fencing token {}", record.fencing));
            if let Some(left) = record.expires_in {
                line.push_str(&format!(", expires in ~{}", short(left)));
            }
            line
        }
        RecordState::Free => format!("free (last fencing token {})", record.fencing),
        RecordState::Expired => format!(
            "expired, not yet taken over (last fencing token {})",
            record.fencing
        ),
        _ => format!(
            "in an unknown state (last fencing token {})",
            record.fencing
        ),
    }
}

/// Shows the state of `name` while waiting, until the future is dropped. Sets `printed` when a
/// refreshable line is on the screen (the caller clears it with [`clear`]).
pub(crate) async fn show(
    locker: &Locker,
    name: &str,
    what: &str,
    display: Display,
    printed: &Cell<bool>,
) {
    if display == Display::Off {
        return std::future::pending().await;
    }
    let started = tokio::time::Instant::now();
    // Quick grants show nothing at all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut last_identity = None;
    loop {
        let line = match locker.inspect(name).await {
            Ok(Some(record)) => {
                let identity = Some((record.holder, record.fencing, record.state));
                if display == Display::Lines && identity == last_identity {
                    None
                } else {
                    last_identity = identity;
                    Some(describe(&record, SystemTime::now()))
                }
            }
            Ok(None) => (display == Display::Refresh).then(|| "no record yet".to_owned()),
            Err(e) => Some(format!("cannot read the lease: {e}")),
        };
        if let Some(line) = line {
            let mut err = std::io::stderr().lock();
            match display {
                Display::Refresh => {
                    let waited = short(Duration::from_secs(started.elapsed().as_secs()));
                    let text = format!("lease: waiting {waited} for {what} {name}: {line}");
                    let _ = write!(err, "\r\x1b[2K{}", fit(&text));
                    let _ = err.flush();
                    printed.set(true);
                }
                _ => {
                    let _ = writeln!(err, "lease: waiting for {what} {name}: {line}");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Clears the refreshed line, if one was printed.
pub(crate) fn clear(printed: &Cell<bool>) {
    if printed.replace(false) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}

/// The width of the terminal on stderr, else `$COLUMNS`, else 100.
fn terminal_width() -> usize {
    rustix::termios::tcgetwinsize(std::io::stderr())
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|w| *w > 10)
        .or_else(|| {
            std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.parse::<usize>().ok())
                .filter(|w| *w > 10)
        })
        .unwrap_or(100)
}

/// Cuts a line to the terminal width so refreshing in place stays on one row.
fn fit(text: &str) -> String {
    fit_to(text, terminal_width())
}

fn fit_to(text: &str, width: usize) -> String {
    if text.chars().count() < width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(2)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_core::{FencingToken, HolderMetadata, HolderToken, LeaseKey};

    #[test]
    fn describes_a_held_record() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let record = LeaseRecord::held(
            LeaseKey::new("k").unwrap(),
            HolderToken::generate(),
            FencingToken::new(41),
        )
        .with_metadata(HolderMetadata::new("web-3 pid=77").unwrap())
        .with_acquired_at(at)
        .with_expires_in(Duration::from_millis(12_340));
        let line = describe(&record, at + Duration::from_secs(62));
        assert_eq!(
            line,
            "held by web-3 pid=77 since 2027-01-15T08:00:00Z (1m 2s ago), fencing token 41, expires in ~12s 300ms"
        );
    }

    #[test]
    fn describes_free_and_expired_records() {
        let key = LeaseKey::new("k").unwrap();
        let free = LeaseRecord::free(key.clone(), FencingToken::new(9));
        assert_eq!(
            describe(&free, SystemTime::now()),
            "free (last fencing token 9)"
        );
        let expired = LeaseRecord::held(key, HolderToken::generate(), FencingToken::new(3))
            .with_state(RecordState::Expired);
        assert!(describe(&expired, SystemTime::now()).starts_with("expired"));
    }

    #[test]
    fn fit_cuts_long_lines() {
        let long = "x".repeat(500);
        assert_eq!(fit_to(&long, 80).chars().count(), 79);
        assert!(fit_to(&long, 80).ends_with('…'));
        assert_eq!(fit_to("short", 80), "short");
    }
}
