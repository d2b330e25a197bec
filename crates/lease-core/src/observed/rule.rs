//! The observed-expiry rule: how long a contender waits before taking over.

use std::time::Duration;

use crate::error::InvalidInput;

/// How long a contender must see the same record version, on its own monotonic clock, before it
/// may take the lease over: [`takeover_after(ttl)`](ObservationRule::takeover_after)
/// `= TTL × (1 + max_drift) + margin`.
///
/// `max_drift` bounds how much faster than real time the contender's clock may run; with it, the
/// wait lasts at least one TTL of real time, and the holder's deadline (counted from the send of
/// the write the contender observed) has passed by then. `margin` is extra slack on top.
///
/// ```
/// use std::time::Duration;
/// use lease_core::observed::ObservationRule;
/// let rule = ObservationRule::new(0.01, Duration::from_millis(100))?;
/// assert_eq!(rule.takeover_after(Duration::from_secs(30)), Duration::from_millis(30_400));
/// assert!(ObservationRule::new(-0.1, Duration::ZERO).is_err());
/// # Ok::<(), lease_core::InvalidInput>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObservationRule {
    max_drift: f64,
    margin: Duration,
}

// `max_drift` is checked finite by the only constructor, so equality is reflexive.
impl Eq for ObservationRule {}

impl Default for ObservationRule {
    /// `max_drift` [`DEFAULT_MAX_DRIFT`](Self::DEFAULT_MAX_DRIFT) (1 %), `margin`
    /// [`DEFAULT_MARGIN`](Self::DEFAULT_MARGIN) (100 ms).
    fn default() -> Self {
        Self {
            max_drift: Self::DEFAULT_MAX_DRIFT,
            margin: Self::DEFAULT_MARGIN,
        }
    }
}

impl ObservationRule {
    /// The default clock-rate bound: 1 %, twenty times what NTP lets a clock slew (500 ppm).
    pub const DEFAULT_MAX_DRIFT: f64 = 0.01;
    /// The default extra wait: 100 ms.
    pub const DEFAULT_MARGIN: Duration = Duration::from_millis(100);

    /// A rule with the given clock-rate bound (a fraction, `0 ≤ max_drift < 1`) and extra margin.
    ///
    /// # Errors
    /// [`InvalidInput`] for the field `max drift` when it is negative, 1 or more, or not finite.
    pub fn new(max_drift: f64, margin: Duration) -> Result<Self, InvalidInput> {
        if !(max_drift.is_finite() && (0.0..1.0).contains(&max_drift)) {
            return Err(InvalidInput::new(
                "max drift",
                format!("{max_drift} is outside 0 ..< 1"),
            ));
        }
        Ok(Self { max_drift, margin })
    }

    /// The clock-rate bound.
    pub fn max_drift(&self) -> f64 {
        self.max_drift
    }

    /// The extra wait on top of the drift-adjusted TTL.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// How long a contender must observe one version of a record held for `ttl` before it may
    /// write a takeover: `ttl × (1 + max_drift) + margin`, rounded up, saturating at
    /// [`Duration::MAX`].
    pub fn takeover_after(&self, ttl: Duration) -> Duration {
        // The drift share is rounded up to the next nanosecond, so the wait never comes out short.
        let drift_nanos = (ttl.as_nanos() as f64 * self.max_drift).ceil();
        let drift = if drift_nanos >= u64::MAX as f64 {
            Duration::MAX
        } else {
            Duration::from_nanos(drift_nanos as u64)
        };
        ttl.saturating_add(drift).saturating_add(self.margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeover_after_is_never_shorter_than_ttl_times_one_plus_drift() {
        let rule = ObservationRule::new(0.001, Duration::ZERO).unwrap();
        assert_eq!(
            rule.takeover_after(Duration::from_secs(1)),
            Duration::from_millis(1001)
        );
        // 7 ns × 0.001 rounds up to 1 ns, not down to 0.
        assert_eq!(
            rule.takeover_after(Duration::from_nanos(7)),
            Duration::from_nanos(8)
        );
        assert_eq!(rule.takeover_after(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn accessors_return_what_was_given() {
        let rule = ObservationRule::new(0.05, Duration::from_millis(250)).unwrap();
        assert_eq!(rule.max_drift(), 0.05);
        assert_eq!(rule.margin(), Duration::from_millis(250));
    }

    #[test]
    fn invalid_drift_is_refused() {
        for bad in [f64::NAN, f64::INFINITY, -0.001, 1.0, 2.0] {
            let err = ObservationRule::new(bad, Duration::ZERO).unwrap_err();
            assert_eq!(err.field(), "max drift");
        }
        assert_eq!(
            ObservationRule::default().takeover_after(Duration::from_secs(10)),
            Duration::from_millis(10_200)
        );
    }
}
