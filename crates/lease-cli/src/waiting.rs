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

/// The parts of a line about a held record, so a narrow terminal can shorten the holder and keep
/// the fencing token and the expiry whole.
struct HeldParts {
    /// `web-3 pid=4242`, or `holder 1a2b3c4d`.
    who: String,
    /// ` since 2026-11-23T17:07:42Z (40s ago)`, or empty.
    since: String,
    /// `, fencing token 17, expires in ~21s`.
    token_and_expiry: String,
}

impl HeldParts {
    fn of(record: &LeaseRecord, now: SystemTime) -> Self {
        let who = match (&record.metadata, &record.holder) {
            (Some(m), _) if !m.as_str().is_empty() => m.as_str().to_owned(),
            (_, Some(token)) => format!("holder {}", &token.to_string()[..8]),
            _ => "an unknown holder".to_owned(),
        };
        let mut since = String::new();
        if let Some(at) = record.acquired_at {
            let secs = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()))
                .unwrap_or(at);
            since.push_str(&format!(
                " since {}",
                humantime::format_rfc3339_seconds(secs)
            ));
            if let Ok(ago) = now.duration_since(at) {
                since.push_str(&format!(
                    " ({} ago)",
                    short(Duration::from_secs(ago.as_secs()))
                ));
            }
        }
        let mut token_and_expiry = format!(", fencing token {}", record.fencing);
        if let Some(left) = record.expires_in {
            token_and_expiry.push_str(&format!(", expires in {}", approximately(left)));
        }
        Self {
            who,
            since,
            token_and_expiry,
        }
    }

    fn line(&self) -> String {
        format!(
            "held by {}{}{}",
            self.who, self.since, self.token_and_expiry
        )
    }
}

/// A remaining time as a reader wants it from an estimate: `~28s`, `~3m 5s`, `<1s`.
fn approximately(d: Duration) -> String {
    if d < Duration::from_millis(500) {
        return "<1s".to_owned();
    }
    let secs = (d.as_millis() + 500) / 1000;
    format!(
        "~{}",
        humantime::format_duration(Duration::from_secs(secs as u64))
    )
}

/// One line about a record: who holds it, since when, its fencing token, when it expires.
pub(crate) fn describe(record: &LeaseRecord, now: SystemTime) -> String {
    match record.state {
        RecordState::Held => HeldParts::of(record, now).line(),
        RecordState::Free => format!("free (last fencing token {})", record.fencing),
        RecordState::Expired => format!(
            "expired, not yet taken over (last fencing token {})",
            record.fencing
        ),
        // No fencing token: an unreadable record's is a placeholder.
        RecordState::Unreadable => format!(
            "unreadable, treated as taken: {}",
            record.unreadable.as_deref().unwrap_or("no reason given")
        ),
        _ => format!(
            "in an unknown state (last fencing token {})",
            record.fencing
        ),
    }
}

/// The refreshed line: `head` + the line about `record`, in fewer than `width` characters. The
/// fencing token and the expiry stay whole; to fit, the holder is shortened, then the "since"
/// part dropped, then the head shortened to `short_head`, then the holder left out.
fn fit_record(
    head: &str,
    short_head: &str,
    record: &LeaseRecord,
    now: SystemTime,
    width: usize,
) -> String {
    if record.state != RecordState::Held {
        return fit_to(&format!("{head}{}", describe(record, now)), width);
    }
    let parts = HeldParts::of(record, now);
    let budget = width.saturating_sub(1);
    let count = |s: &str| s.chars().count();
    for head in [head, short_head] {
        for since in [parts.since.as_str(), ""] {
            let fixed =
                count(head) + count("held by ") + count(since) + count(&parts.token_and_expiry);
            let room = budget.saturating_sub(fixed);
            let who = if count(&parts.who) <= room {
                parts.who.clone()
            } else if room >= 7 {
                parts.who.chars().take(room - 1).collect::<String>() + "…"
            } else {
                continue;
            };
            return format!("{head}held by {who}{since}{}", parts.token_and_expiry);
        }
    }
    fit_to(
        &format!("{short_head}held{}", parts.token_and_expiry),
        width,
    )
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
        let record = match locker.inspect(name).await {
            Ok(Some(record)) => {
                let identity = Some((record.holder, record.fencing, record.state));
                if display == Display::Lines && identity == last_identity {
                    None
                } else {
                    last_identity = identity;
                    Some(Ok(record))
                }
            }
            Ok(None) => (display == Display::Refresh).then(|| Err("no record yet".to_owned())),
            Err(e) => Some(Err(format!(
                "cannot read the lease: {}",
                crate::exit::one_line_chain(&e)
            ))),
        };
        if let Some(record) = record {
            let mut err = std::io::stderr().lock();
            let now = SystemTime::now();
            match display {
                Display::Refresh => {
                    let waited = short(Duration::from_secs(started.elapsed().as_secs()));
                    let head = format!("lease: waiting {waited} for {what} {name}: ");
                    let short_head = format!("lease: waiting {waited}: ");
                    let text = match &record {
                        Ok(record) => fit_record(&head, &short_head, record, now, terminal_width()),
                        Err(text) => fit_to(&format!("{head}{text}"), terminal_width()),
                    };
                    let _ = write!(err, "\r\x1b[2K{text}");
                    let _ = err.flush();
                    printed.set(true);
                }
                _ => {
                    let line = match &record {
                        Ok(record) => describe(record, now),
                        Err(text) => text.clone(),
                    };
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

/// Cuts a line to fewer than `width` characters, so refreshing in place stays on one row.
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
            "held by web-3 pid=77 since 2027-01-15T08:00:00Z (1m 2s ago), fencing token 41, expires in ~12s"
        );
    }

    #[test]
    fn expiry_is_rounded() {
        assert_eq!(approximately(Duration::from_millis(28_400)), "~28s");
        assert_eq!(approximately(Duration::from_millis(28_600)), "~29s");
        assert_eq!(approximately(Duration::from_millis(185_200)), "~3m 5s");
        assert_eq!(approximately(Duration::from_millis(300)), "<1s");
    }

    #[test]
    fn a_narrow_terminal_shortens_the_holder_not_the_token_or_expiry() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let record = LeaseRecord::held(
            LeaseKey::new("nightly-backup").unwrap(),
            HolderToken::generate(),
            FencingToken::new(17),
        )
        .with_metadata(
            HolderMetadata::new("build-runner-eu-west-1a.internal.example pid=4242").unwrap(),
        )
        .with_acquired_at(at)
        .with_expires_in(Duration::from_millis(21_300));
        let head = "lease: waiting 12s for lease nightly-backup: ";
        let short_head = "lease: waiting 12s: ";
        let later = at + Duration::from_secs(40);
        for width in [60, 80, 100, 120] {
            let line = fit_record(head, short_head, &record, later, width);
            assert!(line.chars().count() < width, "{width}: {line}");
            assert!(
                line.ends_with(", fencing token 17, expires in ~21s"),
                "{width}: {line}"
            );
            assert!(line.starts_with("lease: waiting 12s"), "{line}");
        }
        let line = fit_record(head, short_head, &record, later, 120);
        assert!(
            line.starts_with(head) && line.contains("held by build-runner"),
            "{line}"
        );
        let wide = fit_record(head, short_head, &record, later, 200);
        assert!(
            wide.contains("build-runner-eu-west-1a.internal.example pid=4242 since"),
            "{wide}"
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
