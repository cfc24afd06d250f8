//! Sends at a fixed rate, for the paced phases.

use std::time::{Duration, Instant};

use tokio::time::{Interval, MissedTickBehavior};

/// Schedules sends at a fixed rate: each tick says how many are due.
pub(crate) struct Pacer {
    start: Instant,
    rate: f64,
    total: u64,
    issued: u64,
    tick: Interval,
}

impl Pacer {
    /// `total` sends at `rate` per second, starting now.
    pub(crate) fn new(rate: f64, total: u64) -> Self {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Self {
            start: Instant::now(),
            rate,
            total,
            issued: 0,
            tick,
        }
    }

    /// Waits until at least one send is due and returns how many; `None` when all were issued.
    pub(crate) async fn next_batch(&mut self) -> Option<u64> {
        while self.issued < self.total {
            self.tick.tick().await;
            let due = ((self.start.elapsed().as_secs_f64() * self.rate) as u64 + 1).min(self.total);
            if due > self.issued {
                let n = due - self.issued;
                self.issued = due;
                return Some(n);
            }
        }
        None
    }
}
