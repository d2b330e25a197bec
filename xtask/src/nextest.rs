//! Test counts from the runners' closing lines: nextest's `Summary [..] N tests run: ...` and libtest's
//! `test result: ok. N passed; M failed; K ignored; ...` (doc tests).

/// Test counts of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Tests that passed.
    pub(crate) passed: u32,
    /// Tests that failed, timed out or could not be executed.
    pub(crate) failed: u32,
    /// Tests skipped (ignored, filtered) or not run because the run was cancelled.
    pub(crate) skipped: u32,
}

impl Counts {
    /// Adds another run's counts.
    pub(crate) fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }

    /// Number of tests that ran.
    pub(crate) fn ran(&self) -> u32 {
        self.passed + self.failed
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses the last nextest summary line in `output`.
///
/// Examples of what nextest prints:
/// `Summary [   0.012s] 5 tests run: 5 passed, 0 skipped`,
/// `Summary [   1.2s] 2/5 tests run: 1 passed (1 slow), 1 failed, 1 timed out, 3 skipped`.
pub(crate) fn parse_nextest_summary(output: &str) -> Option<Counts> {
    output
        .lines()
        .rev()
        .find_map(|line| parse_summary_line(&strip_ansi(line)))
}

fn parse_summary_line(line: &str) -> Option<Counts> {
    let rest = line.trim_start().strip_prefix("Summary")?;
    let rest = rest.trim_start().strip_prefix('[')?;
    let rest = &rest[rest.find(']')? + 1..];
    let (head, tail) = rest.split_once(':')?;
    // head: "5 tests run" or "2/5 tests run" or "1 test run"
    let mut words = head.split_whitespace();
    let numbers = words.next()?;
    if !matches!(words.next(), Some("test" | "tests")) || words.next() != Some("run") {
        return None;
    }
    let (ran, total) = match numbers.split_once('/') {
        Some((r, t)) => (r.parse::<u32>().ok()?, Some(t.parse::<u32>().ok()?)),
        None => (numbers.parse::<u32>().ok()?, None),
    };
    let mut counts = Counts::default();
    for item in split_top_level(tail) {
        let item = item.split('(').next().unwrap_or("").trim();
        let Some((n, what)) = item.split_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        let what = what.trim();
        if what == "passed" {
            counts.passed += n;
        } else if what == "skipped" {
            counts.skipped += n;
        } else if what.contains("failed") || what == "timed out" {
            counts.failed += n;
        }
    }
    if let Some(total) = total {
        counts.skipped += total.saturating_sub(ran);
    }
    Some(counts)
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Sums every libtest `test result:` line in `output` (one per test binary, e.g. per crate's doc tests).
/// `None` when there is no such line.
pub(crate) fn parse_libtest_results(output: &str) -> Option<Counts> {
    let mut total: Option<Counts> = None;
    for line in output.lines().map(strip_ansi) {
        let Some(rest) = line.trim_start().strip_prefix("test result: ") else {
            continue;
        };
        let rest = rest.split_once(". ").map_or(rest, |(_, r)| r);
        let mut counts = Counts::default();
        for item in rest.split(';') {
            let mut words = item.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            match what {
                "passed" => counts.passed += n,
                "failed" => counts.failed += n,
                "ignored" => counts.skipped += n,
                _ => {}
            }
        }
        total.get_or_insert_with(Counts::default).add(counts);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(passed: u32, failed: u32, skipped: u32) -> Counts {
        Counts {
            passed,
            failed,
            skipped,
        }
    }

    #[test]
    fn plain_summary() {
        let out = "    Starting 5 tests across 2 binaries\n        PASS [   0.004s] x::a\n------------\n     Summary [   0.012s] 5 tests run: 5 passed, 0 skipped\n";
        assert_eq!(parse_nextest_summary(out), Some(c(5, 0, 0)));
    }

    #[test]
    fn singular_and_zero() {
        assert_eq!(
            parse_nextest_summary("Summary [   0.001s] 1 test run: 1 passed, 2 skipped"),
            Some(c(1, 0, 2))
        );
        assert_eq!(
            parse_nextest_summary("Summary [   0.000s] 0 tests run: 0 passed, 0 skipped"),
            Some(c(0, 0, 0))
        );
    }

    #[test]
    fn failures_timeouts_and_annotations() {
        let line = "     Summary [  12.345s] 9 tests run: 5 passed (1 slow, 2 flaky), 2 failed, 1 timed out, 1 exec failed, 3 skipped";
        assert_eq!(parse_nextest_summary(line), Some(c(5, 4, 3)));
    }

    #[test]
    fn cancelled_run_counts_not_run_as_skipped() {
        let line = "     Summary [   1.000s] 2/5 tests run: 1 passed, 1 failed, 0 skipped";
        assert_eq!(parse_nextest_summary(line), Some(c(1, 1, 3)));
    }

    #[test]
    fn colours_are_ignored_and_last_summary_wins() {
        let out = "Summary [ 0.1s] 1 test run: 1 passed, 0 skipped\n\u{1b}[32;1m     Summary\u{1b}[0m [   0.020s] \u{1b}[1m3\u{1b}[0m tests run: \u{1b}[1m3\u{1b}[0m \u{1b}[32;1mpassed\u{1b}[0m, \u{1b}[1m0\u{1b}[0m \u{1b}[33;1mskipped\u{1b}[0m";
        assert_eq!(parse_nextest_summary(out), Some(c(3, 0, 0)));
    }

    #[test]
    fn no_summary() {
        assert_eq!(
            parse_nextest_summary("error: could not compile `x`\n"),
            None
        );
        assert_eq!(
            parse_nextest_summary("Summary of changes: 3 tests run: none"),
            None
        );
    }

    #[test]
    fn libtest_lines_are_summed() {
        let out = "running 2 tests\ntest result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\nrunning 0 tests\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\ntest result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s\n";
        assert_eq!(parse_libtest_results(out), Some(c(5, 1, 1)));
        assert_eq!(parse_libtest_results("nothing here"), None);
    }

    #[test]
    fn display_and_sum() {
        let mut total = c(1, 2, 3);
        total.add(c(10, 0, 1));
        assert_eq!(total.to_string(), "11 passed, 2 failed, 4 skipped");
        assert_eq!(total.ran(), 13);
    }
}
