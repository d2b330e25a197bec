//! Quantiles, and the ratio of an operation's median to its floor's with a bootstrap interval.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sample::{Paired, Sample};

/// Resamples drawn for an interval.
const RESAMPLES: usize = 2000;
/// Fixed seed: the same samples give the same interval.
const SEED: u64 = 0x5eed_1ea5_e0f0_0d01;

/// Latency quantiles (milliseconds) and requests per call of one series of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Samples kept.
    pub n: usize,
    /// Mean requests sent per call.
    pub requests: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms (with fewer than 100 samples, close to the maximum).
    pub p99_ms: f64,
    /// 1st, 5th, 25th, 50th, 75th, 95th and 99th percentiles, ms: what the plot draws.
    pub quantiles_ms: [f64; 7],
}

/// The percentiles in [`Summary::quantiles_ms`].
pub const PLOTTED: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];

/// `q`-quantile of sorted values (nearest rank on `(n - 1) q`); NaN for no values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[at]
}

fn millis(samples: &[Sample]) -> Vec<f64> {
    let mut ms: Vec<f64> = samples.iter().map(|s| as_ms(s.elapsed)).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// A duration in milliseconds.
pub fn as_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Summary {
    /// Summarises samples.
    pub fn of(samples: &[Sample]) -> Summary {
        Self::of_ms(
            &samples.iter().map(|s| as_ms(s.elapsed)).collect::<Vec<_>>(),
            samples.iter().map(|s| s.requests).sum::<u64>() as f64 / samples.len().max(1) as f64,
        )
    }

    /// Summarises latencies in ms, with `requests` per call.
    pub fn of_ms(ms: &[f64], requests: f64) -> Summary {
        let mut sorted = ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        Summary {
            n: sorted.len(),
            requests,
            p50_ms: quantile(&sorted, 0.5),
            p99_ms: quantile(&sorted, 0.99),
            quantiles_ms: PLOTTED.map(|q| quantile(&sorted, q)),
        }
    }
}

/// `median(op) / median(floor)` with a 95 % percentile-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// The point estimate: the operation's p50 over the floor's p50.
    pub p50: f64,
    /// Lower end of the 95 % interval.
    pub low: f64,
    /// Upper end of the 95 % interval.
    pub high: f64,
}

/// A small, fast, seedable generator (SplitMix64): the bootstrap needs no more.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        // Multiply-shift: no modulo bias worth speaking of for n far below 2^32.
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

fn median_of(values: &mut [f64]) -> f64 {
    let mid = (values.len() - 1) / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

impl Ratio {
    /// The ratio of medians of paired samples. The interval resamples *pairs* (an operation's
    /// sample stays with the floor sample taken next to it), so load that hit both alike cancels
    /// out and load that hit one side widens the interval. `None` without samples.
    pub fn of(paired: &Paired) -> Option<Ratio> {
        let n = paired.op.len().min(paired.floor.len());
        if n == 0 {
            return None;
        }
        let op: Vec<f64> = paired.op[..n].iter().map(|s| as_ms(s.elapsed)).collect();
        let floor: Vec<f64> = paired.floor[..n].iter().map(|s| as_ms(s.elapsed)).collect();
        let p50 =
            quantile(&millis(&paired.op[..n]), 0.5) / quantile(&millis(&paired.floor[..n]), 0.5);
        let mut rng = SplitMix(SEED);
        let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
        let mut ratios = Vec::with_capacity(RESAMPLES);
        for _ in 0..RESAMPLES {
            for k in 0..n {
                let i = rng.below(n);
                a[k] = op[i];
                b[k] = floor[i];
            }
            ratios.push(median_of(&mut a) / median_of(&mut b));
        }
        ratios.sort_by(f64::total_cmp);
        Some(Ratio {
            p50,
            low: quantile(&ratios, 0.025),
            high: quantile(&ratios, 0.975),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(ms: impl IntoIterator<Item = f64>) -> Vec<Sample> {
        ms.into_iter()
            .map(|m| Sample {
                elapsed: Duration::from_secs_f64(m / 1e3),
                requests: 2,
            })
            .collect()
    }

    #[test]
    fn summary_reports_quantiles_and_requests_per_call() {
        let s = Summary::of(&series((1..=100).map(f64::from)));
        assert_eq!(s.n, 100);
        assert_eq!(s.requests, 2.0);
        assert!((s.p50_ms - 51.0).abs() < 1e-6, "{}", s.p50_ms);
        assert!((s.p99_ms - 99.0).abs() < 1e-6, "{}", s.p99_ms);
        assert!((s.quantiles_ms[0] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn interval_contains_the_ratio_and_is_narrow_for_steady_samples() {
        // The operation takes 1.2x its floor in every pair, with noise shared by the pair.
        let noise: Vec<f64> = (0..200).map(|i| 1.0 + f64::from(i % 17) * 0.05).collect();
        let paired = Paired {
            op: series(noise.iter().map(|n| 1.2 * n)),
            floor: series(noise.iter().copied()),
        };
        let r = Ratio::of(&paired).unwrap();
        assert!((r.p50 - 1.2).abs() < 1e-9, "{r:?}");
        assert!(r.low <= r.p50 && r.p50 <= r.high, "{r:?}");
        assert!(r.high - r.low < 0.1, "{r:?}");
    }

    #[test]
    fn interval_widens_when_one_side_is_noisy() {
        let steady = Paired {
            op: series((0..100).map(|_| 2.0)),
            floor: series((0..100).map(|_| 1.0)),
        };
        let noisy = Paired {
            op: series((0..100).map(|i| {
                if i % 3 == 0 {
                    6.0
                } else {
                    1.0 + f64::from(i % 5)
                }
            })),
            floor: series((0..100).map(|_| 1.0)),
        };
        let (s, n) = (Ratio::of(&steady).unwrap(), Ratio::of(&noisy).unwrap());
        assert_eq!((s.low, s.high), (2.0, 2.0));
        assert!(n.high - n.low > 0.5, "{n:?}");
    }

    #[test]
    fn no_samples_no_ratio() {
        assert_eq!(Ratio::of(&Paired::default()), None);
    }
}
