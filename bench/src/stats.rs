//! Latency samples, their percentiles, and the clock every device stamps with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use serde::Serialize;

/// The instant every timestamp of this process counts from: senders put
/// [`now_us`] into what they send, receivers subtract it from theirs.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Microseconds since this process's [`EPOCH`].
pub(crate) fn now_us() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// Latency samples in microseconds, recorded from many tasks.
#[derive(Default)]
pub(crate) struct Recorder {
    /// In arrival order (roughly time order), so a prefix can be dropped as warm-up.
    samples: Mutex<Vec<u32>>,
    /// Samples recorded since the last [`Recorder::take`]; readable without the lock.
    count: AtomicU64,
}

impl Recorder {
    /// Records the latency of something stamped `sent_us` and seen now.
    pub(crate) fn record_since(&self, sent_us: u64) {
        let latency = now_us().saturating_sub(sent_us);
        let latency = u32::try_from(latency).unwrap_or(u32::MAX);
        self.lock().push(latency);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many samples were recorded since the last take.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Removes and returns every sample so far.
    pub(crate) fn take(&self) -> Vec<u32> {
        let mut samples = self.lock();
        self.count.store(0, Ordering::Relaxed);
        std::mem::take(&mut *samples)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        // A panic while pushing leaves a valid Vec behind.
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Percentiles of a set of latency samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Summary {
    /// Number of samples.
    pub(crate) count: usize,
    /// Median.
    pub(crate) p50_ms: f64,
    /// 90th percentile.
    pub(crate) p90_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// Largest sample.
    pub(crate) max_ms: f64,
}

impl Summary {
    /// Summarizes samples in microseconds (nearest-rank percentiles); all zero when empty.
    pub(crate) fn of(mut samples: Vec<u32>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |p: f64| {
            let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            f64::from(samples[rank.clamp(1, samples.len()) - 1]) / 1000.0
        };
        Self {
            count: samples.len(),
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p99_ms: at(99.0),
            max_ms: at(100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::of((1..=100).map(|ms| ms * 1000).collect());
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        let one = Summary::of(vec![1500]);
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (1.5, 1.5, 1.5));
        assert_eq!(Summary::of(Vec::new()).count, 0);
    }

    #[test]
    fn recorder_counts_and_takes() {
        let r = Recorder::default();
        r.record_since(now_us());
        r.record_since(u64::MAX);
        assert_eq!(r.count(), 2);
        assert_eq!(r.take().len(), 2);
        assert_eq!(r.count(), 0);
    }
}
