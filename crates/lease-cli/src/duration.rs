//! Durations on the command line: `30s`, `2m`, `1h30m`, `500ms`, or a bare number of seconds.

use std::time::Duration;

/// Parses a duration for clap. Bare numbers are seconds (`1.5` is 1.5 s).
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; expected e.g. 30s, 2m, 1h30m or 500ms".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = text
            .parse()
            .map_err(|_| format!("'{text}' is not a number of seconds"))?;
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("'{text}': {e}"));
    }
    humantime::parse_duration(text).map_err(|e| {
        let e = e.to_string();
        // humantime lists every unit it knows; the examples say enough.
        let e = e.split(", supported units").next().unwrap_or(&e).to_owned();
        format!("{e}; expected e.g. 30s, 2m, 1h30m or 500ms")
    })
}

/// Parses a duration that must be positive (TTLs, intervals).
pub(crate) fn parse_positive(text: &str) -> Result<Duration, String> {
    let d = parse(text)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A short human form, rounded to what is worth showing: `450ms`, `12s`, `3m 5s`.
pub(crate) fn short(d: Duration) -> String {
    let rounded = if d < Duration::from_secs(1) {
        Duration::from_millis(d.as_millis() as u64)
    } else if d < Duration::from_secs(60) {
        Duration::from_millis((d.as_millis() as u64 / 100) * 100)
    } else {
        Duration::from_secs(d.as_secs())
    };
    humantime::format_duration(rounded).to_string()
}

/// `365d` for whole days (humantime would say `11months 30days 3h 50m 24s`), else [`short`].
pub(crate) fn days_or_short(d: Duration) -> String {
    const DAY: u64 = 24 * 3600;
    if d.subsec_nanos() == 0 && d.as_secs() >= DAY && d.as_secs().is_multiple_of(DAY) {
        format!("{}d", d.as_secs() / DAY)
    } else {
        short(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_combinations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(" 10s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        for bad in ["", "5x", "s", "1..2", "ten seconds", "-5s"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("expected") || e.contains("number"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
        assert_eq!(
            parse_positive("0s"),
            Err("must be greater than zero".into())
        );
        assert_eq!(parse_positive("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn whole_days() {
        assert_eq!(days_or_short(Duration::from_secs(365 * 86_400)), "365d");
        assert_eq!(days_or_short(Duration::from_secs(90)), "1m 30s");
    }

    #[test]
    fn short_form_rounds() {
        assert_eq!(short(Duration::from_millis(450)), "450ms");
        assert_eq!(short(Duration::from_millis(12_345)), "12s 300ms");
        assert_eq!(short(Duration::from_millis(185_999)), "3m 5s");
    }
}
