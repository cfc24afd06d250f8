//! Reconnect delays: exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// The first delay after a lost connection.
pub(crate) const BASE: Duration = Duration::from_millis(200);
/// The longest delay (before jitter).
pub(crate) const MAX: Duration = Duration::from_secs(30);

/// Delays between reconnect attempts: `base`, doubling per failure up to `max`,
/// each multiplied by a random factor in `[0.5, 1.5)` so that many devices cut
/// off at once do not come back at once.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    /// Failures since the last success; the exponent.
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and capped at `max` (before jitter).
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// After a successful connection: the next failure waits `base` again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        let nominal = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        nominal.mul_f64(rng.gen_range(0.5..1.5))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE, MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_caps() {
        let mut rng = rand::thread_rng();
        for _ in 0..50 {
            let mut b = Backoff::default();
            let mut nominal = BASE;
            for _ in 0..40 {
                let d = b.next_delay(&mut rng);
                assert!(d >= nominal / 2, "{d:?} < half of {nominal:?}");
                assert!(d < nominal.mul_f64(1.5), "{d:?} >= 1.5 x {nominal:?}");
                nominal = (nominal * 2).min(MAX);
            }
            assert_eq!(nominal, MAX);
            // Far along, the delay stays within the cap's jitter band.
            let d = b.next_delay(&mut rng);
            assert!(d >= MAX / 2 && d < MAX.mul_f64(1.5), "{d:?}");
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut rng = rand::thread_rng();
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.next_delay(&mut rng);
        }
        b.reset();
        let d = b.next_delay(&mut rng);
        assert!(d >= BASE / 2 && d < BASE.mul_f64(1.5), "{d:?}");
    }
}
