//! The latency plot: per backend and operation, the operation's distribution above its floor's,
//! on one logarithmic axis. Written by hand: a few hundred lines of SVG need no plotting crate.

use std::fmt::Write as _;

use crate::report::Report;
use crate::stats::Summary;

const WIDTH: f64 = 1100.0;
const LABEL: f64 = 400.0;
const RIGHT: f64 = 30.0;
const ROW: f64 = 30.0;
const HEADING: f64 = 26.0;
const TOP: f64 = 60.0;
const OP_COLOUR: &str = "#1f77b4";
const FLOOR_COLOUR: &str = "#999999";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Maps ms onto the x axis, log scale between two powers of ten.
struct Axis {
    low: f64,
    high: f64,
}

impl Axis {
    fn x(&self, ms: f64) -> f64 {
        let ms = ms.clamp(10f64.powf(self.low), 10f64.powf(self.high));
        LABEL + (ms.log10() - self.low) / (self.high - self.low) * (WIDTH - LABEL - RIGHT)
    }
}

/// One box plot: whiskers p1–p99, thin box p5–p95, thick box p25–p75, a tick at p50.
fn boxplot(out: &mut String, axis: &Axis, y: f64, s: &Summary, colour: &str) {
    let q = s.quantiles_ms.map(|v| axis.x(v));
    let _ = writeln!(
        out,
        r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="1"/>"#,
        q[0], q[6]
    );
    let _ = writeln!(
        out,
        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="4" fill="{colour}" opacity="0.45"/>"#,
        q[1],
        y - 2.0,
        (q[5] - q[1]).max(0.5)
    );
    let _ = writeln!(
        out,
        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="8" fill="{colour}"/>"#,
        q[2],
        y - 4.0,
        (q[4] - q[2]).max(1.0)
    );
    let _ = writeln!(
        out,
        r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black" stroke-width="2"/>"#,
        q[3],
        y - 6.0,
        q[3],
        y + 6.0
    );
}

/// The plot of every comparison of `report`.
pub fn render(report: &Report) -> String {
    let all: Vec<f64> = report
        .comparisons
        .iter()
        .flat_map(|c| {
            c.op.quantiles_ms
                .into_iter()
                .chain(c.floor_samples.quantiles_ms)
        })
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let low = all.iter().copied().fold(f64::INFINITY, f64::min);
    let high = all.iter().copied().fold(0.0, f64::max);
    let axis = if all.is_empty() {
        Axis {
            low: -1.0,
            high: 2.0,
        }
    } else {
        let (l, h) = (low.log10().floor(), high.log10().ceil());
        Axis {
            low: l,
            high: if h > l { h } else { l + 1.0 },
        }
    };
    let backends = report.backends();
    let rows = report.comparisons.len() as f64;
    let height = TOP + rows * ROW + backends.len() as f64 * HEADING + 50.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="20" font-size="15">Latency per operation (blue) and its floor measured interleaved with it (grey), ms, log scale</text>"#
    );
    let _ = writeln!(
        out,
        r##"<text x="10" y="38" fill="#555555">whiskers p1–p99, thin box p5–p95, thick box p25–p75, black tick p50{}</text>"##,
        if report.meta.quick {
            "; QUICK RUN: timings meaningless"
        } else {
            ""
        }
    );
    let bottom = height - 40.0;
    let mut decade = axis.low;
    while decade <= axis.high {
        let x = axis.x(10f64.powf(decade));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#dddddd"/>"##,
            TOP - 8.0
        );
        let label = crate::report::ms(10f64.powf(decade));
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            bottom + 16.0
        );
        decade += 1.0;
    }
    let mut y = TOP;
    for backend in backends {
        let comparisons: Vec<_> = report
            .comparisons
            .iter()
            .filter(|c| c.backend == backend)
            .collect();
        if comparisons.is_empty() {
            continue;
        }
        let server = &comparisons[0].server;
        let _ = writeln!(
            out,
            r#"<text x="10" y="{:.1}" font-weight="bold">{} ({})</text>"#,
            y + 14.0,
            escape(&backend),
            escape(server)
        );
        y += HEADING;
        for c in comparisons {
            let label = format!("{} — {}", c.operation, c.subject);
            let _ = writeln!(
                out,
                r#"<text x="20" y="{:.1}">{}</text>"#,
                y + 12.0,
                escape(&label)
            );
            boxplot(&mut out, &axis, y + 6.0, &c.op, OP_COLOUR);
            boxplot(&mut out, &axis, y + 20.0, &c.floor_samples, FLOOR_COLOUR);
            y += ROW;
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::Comparison;
    use crate::sample::{Paired, Sample};

    #[test]
    fn plot_has_one_pair_of_boxes_per_comparison_and_escapes_labels() {
        let s = |ms: f64| Sample {
            elapsed: Duration::from_secs_f64(ms / 1e3),
            requests: 1,
        };
        let paired = Paired {
            op: (1..50).map(|i| s(f64::from(i) * 0.1)).collect(),
            floor: (1..50).map(|i| s(f64::from(i) * 0.05)).collect(),
        };
        let report = Report {
            comparisons: vec![
                Comparison::new("pg", "local", "a < b", "lease", "upsert", &paired),
                Comparison::new("sqlite", "file", "renew", "lease", "upsert", &paired),
            ],
            ..Report::default()
        };
        let svg = render(&report);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // Two comparisons × (operation + floor) × (thin box + thick box).
        assert_eq!(svg.matches("<rect x=").count(), 8, "{svg}");
        assert!(svg.contains("a &lt; b") && !svg.contains("a < b"));
    }
}
