//! One token bucket in exact integer arithmetic. A token is worth
//! `unit_nanos` credits and the bucket gains `per_unit` credits per elapsed
//! nanosecond, so `N per Second/Minute/Hour` refills continuously with no
//! floating-point drift: a test that waits exactly one token's worth of
//! time always gets exactly one token.
use std::time::{Duration, Instant};

/// A validated rate: `per_unit` tokens per `unit_nanos`, at most `burst`
/// tokens held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rate {
    per_unit: u128,
    unit_nanos: u128,
    capacity: u128,
}

impl Rate {
    /// `per_unit` and `burst` are at least 1 (compile checks).
    pub(super) fn new(per_unit: u32, unit: Duration, burst: u32) -> Self {
        let unit_nanos = unit.as_nanos();
        Self {
            per_unit: u128::from(per_unit),
            unit_nanos,
            capacity: u128::from(burst) * unit_nanos,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Bucket {
    credits: u128,
    at: Instant,
}

impl Bucket {
    /// A bucket that has been idle forever: full.
    pub(super) fn full(rate: &Rate, now: Instant) -> Self {
        Self {
            credits: rate.capacity,
            at: now,
        }
    }

    /// Adds what `now - at` earned. Callers race to the lock, so `now` may
    /// be a little older than the last one seen; time never runs backwards
    /// here (that would hand out the same credits twice).
    pub(super) fn refill(&mut self, rate: &Rate, now: Instant) {
        if now <= self.at {
            return;
        }
        let earned = (now - self.at).as_nanos().saturating_mul(rate.per_unit);
        self.credits = self.credits.saturating_add(earned).min(rate.capacity);
        self.at = now;
    }

    /// Time until one token is there: zero when one is.
    pub(super) fn wait(&self, rate: &Rate) -> Duration {
        let missing = rate.unit_nanos.saturating_sub(self.credits);
        // At most one Hour's worth of nanoseconds: always fits a u64.
        let nanos = missing.div_ceil(rate.per_unit);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Spends one token; only after [`Bucket::wait`] said one is there.
    pub(super) fn take(&mut self, rate: &Rate) {
        self.credits = self.credits.saturating_sub(rate.unit_nanos);
    }
}
