//! Results: what a run measured, as JSON and as markdown tables.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::sample::Paired;
use crate::stats::{Ratio, Summary};

/// A ratio above this, with its whole interval above it too, is flagged in the table.
pub const RATIO_BUDGET: f64 = 1.15;

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// How the run was made.
    pub meta: Meta,
    /// Operations next to their floors.
    pub comparisons: Vec<Comparison>,
    /// Other measurements (hand-off, scale, core overhead), as tables.
    pub tables: Vec<Table>,
    /// Rows that did not run, and why.
    pub skipped: Vec<(String, String)>,
}

/// How a run was made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    /// `--quick`: few samples, timings meaningless.
    pub quick: bool,
    /// `release` or `debug` (a debug build's timings are not the library's).
    pub build: String,
    /// Pairs kept per comparison.
    pub samples: usize,
    /// Pairs thrown away first.
    pub warmup: usize,
    /// Seconds since the Unix epoch at the start.
    pub started_unix: u64,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// `/proc/loadavg` at the start and at the end: how busy the machine was.
    pub load: Vec<String>,
}

/// One operation next to its floor, measured interleaved on the same server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// The backend row (`postgres`, `objstore-s3`, …).
    pub backend: String,
    /// The server behind it (`PostgreSQL 16 on 127.0.0.1`, `moto`, …).
    pub server: String,
    /// What is measured (`acquire (free key)`).
    pub operation: String,
    /// Whose code ran it: `lease` or a seed baseline.
    pub subject: String,
    /// What the floor is (`raw one-row upsert`).
    pub floor: String,
    /// The operation's samples.
    pub op: Summary,
    /// The floor's samples, taken interleaved with the operation's.
    pub floor_samples: Summary,
    /// p50 over the floor's p50, with its interval.
    pub ratio: Option<Ratio>,
}

impl Comparison {
    /// Summarises paired samples.
    pub fn new(
        backend: &str,
        server: &str,
        operation: &str,
        subject: &str,
        floor: &str,
        paired: &Paired,
    ) -> Comparison {
        Comparison {
            backend: backend.into(),
            server: server.into(),
            operation: operation.into(),
            subject: subject.into(),
            floor: floor.into(),
            op: Summary::of(&paired.op),
            floor_samples: Summary::of(&paired.floor),
            ratio: Ratio::of(paired),
        }
    }
}

/// A free-form table of a backend's other measurements.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Table {
    /// The backend row it belongs to.
    pub backend: String,
    /// Its heading.
    pub title: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Cells, one `Vec` per row.
    pub rows: Vec<Vec<String>>,
    /// How to read it.
    pub note: String,
}

impl Table {
    /// An empty table.
    pub fn new(backend: &str, title: &str, columns: &[&str]) -> Table {
        Table {
            backend: backend.into(),
            title: title.into(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            note: String::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.rows.push(cells.into_iter().collect());
    }
}

/// A latency in ms with three significant digits (at least one decimal below 100 ms).
pub fn ms(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    if v >= 100.0 || v == 0.0 {
        return format!("{v:.0}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(1, 6) as usize;
    format!("{v:.decimals$}")
}

fn ratio_cell(r: Option<Ratio>) -> String {
    match r {
        None => "—".into(),
        Some(r) => {
            let cell = format!("{:.2} [{:.2}, {:.2}]", r.p50, r.low, r.high);
            if r.low > RATIO_BUDGET {
                format!("**{cell}**")
            } else {
                cell
            }
        }
    }
}

impl Report {
    /// Appends another run's rows (runs of separate processes, e.g. one per database). The
    /// metadata stays this report's, with the other's load readings appended.
    pub fn merge(&mut self, other: Report) {
        self.comparisons.extend(other.comparisons);
        self.tables.extend(other.tables);
        self.skipped.extend(other.skipped);
        self.meta.load.extend(other.meta.load);
    }

    /// Backends in the order they first appear.
    pub fn backends(&self) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        let names = self
            .comparisons
            .iter()
            .map(|c| &c.backend)
            .chain(self.tables.iter().map(|t| &t.backend));
        for name in names {
            if !seen.contains(name) {
                seen.push(name.clone());
            }
        }
        seen
    }

    /// The whole report as markdown: per backend, the comparisons then its other tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.meta;
        let _ = writeln!(
            out,
            "Run: {} build, {}{} pairs per comparison after {} warm-up pairs, {} CPUs, load average {}.\n",
            m.build,
            if m.quick {
                "QUICK (timings meaningless), "
            } else {
                ""
            },
            m.samples,
            m.warmup,
            m.cpus,
            m.load.join(" → "),
        );
        for backend in self.backends() {
            let rows: Vec<&Comparison> = self
                .comparisons
                .iter()
                .filter(|c| c.backend == backend)
                .collect();
            let server = rows.first().map(|c| c.server.as_str()).unwrap_or("");
            let _ = writeln!(
                out,
                "#### {backend}{}\n",
                if server.is_empty() {
                    String::new()
                } else {
                    format!(" ({server})")
                }
            );
            if !rows.is_empty() {
                out.push_str("| operation | by | requests | p50 ms | p99 ms | floor | floor requests | floor p50 ms | p50 / floor [95 % CI] |\n");
                out.push_str("|---|---|---|---|---|---|---|---|---|\n");
                for c in rows {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {:.2} | {} | {} | {} | {:.2} | {} | {} |",
                        c.operation,
                        c.subject,
                        c.op.requests,
                        ms(c.op.p50_ms),
                        ms(c.op.p99_ms),
                        c.floor,
                        c.floor_samples.requests,
                        ms(c.floor_samples.p50_ms),
                        ratio_cell(c.ratio),
                    );
                }
                out.push('\n');
            }
            for t in self.tables.iter().filter(|t| t.backend == backend) {
                let _ = writeln!(out, "{}\n", t.title);
                let _ = writeln!(out, "| {} |", t.columns.join(" | "));
                let _ = writeln!(out, "|{}", "---|".repeat(t.columns.len()));
                for r in &t.rows {
                    let _ = writeln!(out, "| {} |", r.join(" | "));
                }
                if !t.note.is_empty() {
                    let _ = writeln!(out, "\n{}", t.note);
                }
                out.push('\n');
            }
        }
        if !self.skipped.is_empty() {
            out.push_str("Not run:\n\n");
            for (row, why) in &self.skipped {
                let _ = writeln!(out, "- {row}: {why}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sample::Sample;

    fn paired(op: f64, floor: f64) -> Paired {
        let s = |ms: f64| Sample {
            elapsed: Duration::from_secs_f64(ms / 1e3),
            requests: 1,
        };
        Paired {
            op: vec![s(op); 10],
            floor: vec![s(floor); 10],
        }
    }

    #[test]
    fn markdown_flags_a_ratio_whose_whole_interval_is_over_budget() {
        let report = Report {
            comparisons: vec![
                Comparison::new(
                    "pg",
                    "local",
                    "acquire",
                    "lease",
                    "upsert",
                    &paired(1.5, 1.0),
                ),
                Comparison::new("pg", "local", "renew", "lease", "upsert", &paired(1.1, 1.0)),
            ],
            ..Report::default()
        };
        let md = report.markdown();
        assert!(md.contains("| acquire | lease | 1.00 | 1.50 | 1.50 | upsert | 1.00 | 1.00 | **1.50 [1.50, 1.50]** |"), "{md}");
        assert!(
            md.contains(
                "| renew | lease | 1.00 | 1.10 | 1.10 | upsert | 1.00 | 1.00 | 1.10 [1.10, 1.10] |"
            ),
            "{md}"
        );
    }

    #[test]
    fn latencies_keep_three_significant_digits() {
        assert_eq!(ms(0.000_431_2), "0.000431");
        assert_eq!(ms(0.0123), "0.0123");
        assert_eq!(ms(1.234_5), "1.23");
        assert_eq!(ms(12.345), "12.3");
        assert_eq!(ms(123.45), "123");
        assert_eq!(ms(f64::NAN), "—");
    }

    #[test]
    fn merged_report_keeps_both_runs_rows() {
        let mut a = Report {
            comparisons: vec![Comparison::new(
                "pg",
                "local",
                "acquire",
                "lease",
                "upsert",
                &paired(1.5, 1.0),
            )],
            ..Report::default()
        };
        let b = Report {
            tables: vec![Table::new("mysql", "hand-off", &["a"])],
            skipped: vec![("azure".into(), "not set".into())],
            ..Report::default()
        };
        a.merge(b);
        assert_eq!(a.backends(), ["pg", "mysql"]);
        assert_eq!(a.skipped.len(), 1);
    }

    #[test]
    fn json_round_trips() {
        let report = Report {
            comparisons: vec![Comparison::new(
                "pg",
                "local",
                "acquire",
                "lease",
                "upsert",
                &paired(1.5, 1.0),
            )],
            tables: vec![Table::new("pg", "hand-off", &["a", "b"])],
            ..Report::default()
        };
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.markdown(), report.markdown());
    }
}
