//! Locker options: TTL, renewal, safety margin, retry policy.

use std::time::Duration;

use backon::BackoffBuilder;

use crate::backend::Capabilities;
use crate::error::InvalidInput;

/// How long to wait between attempts: capped exponential backoff with jitter.
///
/// Used between polls while waiting for a held key and between retries of a failed renewal.
///
/// ```
/// use std::time::Duration;
/// use lease_core::RetryPolicy;
/// let policy = RetryPolicy::default().with_max_delay(Duration::from_secs(1));
/// assert!(policy.delays().take(50).all(|d| d <= Duration::from_secs(2)));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The first delay.
    pub initial_delay: Duration,
    /// The cap on any one delay (before jitter).
    pub max_delay: Duration,
    /// The growth factor between delays.
    pub factor: f32,
    /// Adds a random amount (up to the delay itself) to every delay, so contenders spread out.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(1),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Sets the first delay.
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets the cap.
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the growth factor.
    pub fn with_factor(mut self, factor: f32) -> Self {
        self.factor = factor;
        self
    }

    /// Turns jitter on or off.
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The endless sequence of delays this policy produces.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let mut builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        // `without_max_times` makes the sequence endless; the fallback only guards the type.
        // backon adds its jitter on top of the capped delay: cap again so the documented maximum
        // holds.
        let cap = self.max_delay;
        builder
            .build()
            .chain(std::iter::repeat(cap))
            .map(move |d| d.min(cap))
    }

    fn validate(&self) -> Result<(), InvalidInput> {
        if self.initial_delay.is_zero() || self.initial_delay > self.max_delay {
            return Err(InvalidInput::new(
                "retry policy",
                "initial delay must be positive and at most the maximum delay",
            ));
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(InvalidInput::new(
                "retry policy",
                "factor must be a finite number of at least 1",
            ));
        }
        Ok(())
    }
}

/// The shortest holder window (TTL minus drift allowance and safety margin) a locker accepts: a
/// shorter one cannot cover even a quick round trip to the store, so every grant would arrive
/// after its own deadline and be given back, forever.
pub const MIN_HOLDER_WINDOW: Duration = Duration::from_millis(50);

/// The least a holder deadline must come before the earliest instant the store can expire the
/// grant (`TTL × max_clock_drift + safety_margin`): timers have millisecond resolution and fire at
/// or after their instant, so with no allowance at all the lost signal would fire after another
/// holder could have been granted the key.
pub const MIN_SAFETY_ALLOWANCE: Duration = Duration::from_millis(1);

/// The options of a [`Locker`](crate::Locker); set them with [`LockerBuilder`](crate::LockerBuilder).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LockerOptions {
    /// How long each grant (and each renewal) lasts on the store. Default 30 s.
    pub ttl: Duration,
    /// How often held leases are renewed. Default `ttl / 3`.
    pub renew_interval: Duration,
    /// Subtracted from every holder deadline on top of the clock-drift allowance. Default
    /// `min(ttl / 10, 1 s)`.
    pub safety_margin: Duration,
    /// The largest relative clock-rate difference assumed between this process and the store
    /// (0.001 = 1 ms per second). Default 0.001.
    pub max_clock_drift: f64,
    /// Backoff between polls while waiting and between renewal retries.
    pub retry: RetryPolicy,
}

impl LockerOptions {
    /// The defaults for `ttl`.
    pub fn for_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            renew_interval: ttl / 3,
            safety_margin: default_safety_margin(ttl),
            max_clock_drift: 0.001,
            retry: RetryPolicy::default(),
        }
    }

    /// How long after a request was sent a grant of `granted` is still safely ours:
    /// `granted × (1 − max_clock_drift) − safety_margin`, or zero if that is negative.
    pub fn holder_window(&self, granted: Duration) -> Duration {
        // `mul_f64` panics on overflow; a granted TTL may come from a store, so saturate.
        Duration::try_from_secs_f64(granted.as_secs_f64() * (1.0 - self.max_clock_drift))
            .unwrap_or(Duration::MAX)
            .saturating_sub(self.safety_margin)
    }

    /// The smallest TTL (whole milliseconds, within the backend's range) whose holder window is at
    /// least [`MIN_HOLDER_WINDOW`], with the same drift allowance and the same safety margin, or
    /// the default margin for that TTL when the margin in force is the default one.
    fn smallest_workable_ttl(&self, caps: &Capabilities) -> Duration {
        let default_margin = self.safety_margin == default_safety_margin(self.ttl);
        let works = |ttl: Duration| {
            let margin = if default_margin {
                default_safety_margin(ttl)
            } else {
                self.safety_margin
            };
            ttl.mul_f64(1.0 - self.max_clock_drift)
                .saturating_sub(margin)
                >= MIN_HOLDER_WINDOW
        };
        let ms = (1..=24 * 3600 * 1000)
            .find(|ms| works(Duration::from_millis(*ms)))
            .unwrap_or(u64::MAX / 1000);
        Duration::from_millis(ms).clamp(caps.min_ttl, caps.max_ttl)
    }

    pub(crate) fn validate(&self, caps: &Capabilities) -> Result<(), InvalidInput> {
        caps.check_ttl(self.ttl)?;
        if !(0.0..0.5).contains(&self.max_clock_drift) {
            return Err(InvalidInput::new(
                "max clock drift",
                format!("{} is outside 0 ..< 0.5", self.max_clock_drift),
            ));
        }
        let window = self.holder_window(self.ttl);
        if window.is_zero() {
            return Err(InvalidInput::new(
                "safety margin",
                format!(
                    "{:?} leaves no time to hold a {:?} lease",
                    self.safety_margin, self.ttl
                ),
            ));
        }
        if window < MIN_HOLDER_WINDOW {
            return Err(InvalidInput::new(
                "ttl",
                format!(
                    "{:?} leaves a holder window of {window:?} (after the drift allowance and the \
                     {:?} safety margin): too short to cover a round trip to the store; \
                     the smallest TTL that works with these options is {:?}",
                    self.ttl,
                    self.safety_margin,
                    self.smallest_workable_ttl(caps)
                ),
            ));
        }
        if self.ttl.saturating_sub(window) < MIN_SAFETY_ALLOWANCE {
            return Err(InvalidInput::new(
                "safety margin",
                format!(
                    "the drift allowance plus the safety margin is {:?}, less than {:?}: the lost \
                     signal (a timer, which fires no earlier than its instant) could fire after \
                     the store let another holder in; give a safety margin of at least {:?}",
                    self.ttl.saturating_sub(window),
                    MIN_SAFETY_ALLOWANCE,
                    MIN_SAFETY_ALLOWANCE
                ),
            ));
        }
        if self.renew_interval.is_zero() || self.renew_interval >= window {
            return Err(InvalidInput::new(
                "renew interval",
                format!(
                    "{:?} must be positive and shorter than the holder window {window:?} \
                     (ttl minus drift allowance and safety margin)",
                    self.renew_interval
                ),
            ));
        }
        self.retry.validate()
    }
}

/// `min(ttl / 10, 1 s)`.
fn default_safety_margin(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(1))
}

impl Default for LockerOptions {
    fn default() -> Self {
        Self::for_ttl(Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ClockModel;

    fn caps() -> Capabilities {
        Capabilities::new(
            Duration::from_millis(1),
            Duration::from_secs(3600),
            ClockModel::StoreClock,
        )
    }

    #[test]
    fn defaults_are_valid_and_leave_room_to_renew() {
        let options = LockerOptions::default();
        options.validate(&caps()).unwrap();
        assert_eq!(options.renew_interval, Duration::from_secs(10));
        assert_eq!(
            options.holder_window(options.ttl),
            Duration::from_millis(28_970)
        );
    }

    #[test]
    fn rejects_unsafe_combinations() {
        let mut o = LockerOptions::for_ttl(Duration::from_secs(10));
        o.renew_interval = Duration::from_secs(10);
        assert_eq!(o.validate(&caps()).unwrap_err().field(), "renew interval");
        let mut o = LockerOptions::for_ttl(Duration::from_secs(10));
        o.safety_margin = Duration::from_secs(11);
        assert_eq!(o.validate(&caps()).unwrap_err().field(), "safety margin");
        let o = LockerOptions::for_ttl(Duration::from_secs(7200));
        assert_eq!(o.validate(&caps()).unwrap_err().field(), "ttl");
        let mut o = LockerOptions::for_ttl(Duration::from_secs(10));
        o.max_clock_drift = f64::NAN;
        assert_eq!(o.validate(&caps()).unwrap_err().field(), "max clock drift");
        let mut o = LockerOptions::for_ttl(Duration::from_secs(10));
        o.retry.factor = 0.5;
        assert_eq!(o.validate(&caps()).unwrap_err().field(), "retry policy");
    }

    #[test]
    fn no_margin_and_no_drift_allowance_is_refused() {
        // With neither, the deadline is the store's earliest expiry itself, and the lost timer
        // fires at or after it: too late.
        let mut o = LockerOptions::for_ttl(Duration::from_secs(10));
        o.safety_margin = Duration::ZERO;
        o.max_clock_drift = 0.0;
        assert_eq!(o.validate(&caps()).unwrap_err().field(), "safety margin");
        o.safety_margin = MIN_SAFETY_ALLOWANCE;
        o.validate(&caps()).unwrap();
        // The drift allowance alone is enough when it is at least as large.
        o.safety_margin = Duration::ZERO;
        o.max_clock_drift = 0.001;
        o.validate(&caps()).unwrap();
    }

    #[test]
    fn the_holder_window_of_a_huge_grant_saturates() {
        let o = LockerOptions::for_ttl(Duration::from_secs(10));
        assert!(o.holder_window(Duration::MAX) > Duration::from_secs(u64::MAX / 2));
    }

    #[test]
    fn a_ttl_too_short_for_a_round_trip_names_the_smallest_that_works() {
        let err = LockerOptions::for_ttl(Duration::from_millis(1))
            .validate(&caps())
            .unwrap_err();
        assert_eq!(err.field(), "ttl");
        // Default margin ttl/10: 0.999 ttl - ttl/10 >= 50 ms from 56 ms on.
        assert!(err.to_string().contains("56ms"), "{err}");
        LockerOptions::for_ttl(Duration::from_millis(56))
            .validate(&caps())
            .unwrap();
        assert!(
            LockerOptions::for_ttl(Duration::from_millis(55))
                .validate(&caps())
                .is_err()
        );
        // A margin set by hand is kept as it is.
        let mut o = LockerOptions::for_ttl(Duration::from_millis(500));
        o.safety_margin = Duration::from_millis(460);
        let err = o.validate(&caps()).unwrap_err();
        assert!(err.to_string().contains("511ms"), "{err}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy::default().with_jitter(false);
        let delays: Vec<_> = policy.delays().take(12).collect();
        assert_eq!(delays[0], Duration::from_millis(25));
        // backon computes in floating point: allow a microsecond of rounding.
        assert!(delays[1].abs_diff(Duration::from_millis(50)) < Duration::from_micros(1));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert_eq!(delays[11], Duration::from_secs(1));
        let jittered = RetryPolicy::default().with_jitter(true);
        assert!(
            jittered.delays().take(200).all(|d| d <= jittered.max_delay),
            "jitter pushed a delay past the cap"
        );
    }
}
