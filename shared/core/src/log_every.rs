//! [`LogEvery`]: a warning said at most once per interval, with a count of
//! the ones held back, so an outage that fails every call writes one line
//! per cause and interval, not one per call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A warning said at most once per interval, with how many were held back.
#[derive(Debug)]
pub struct LogEvery {
    every: Duration,
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl LogEvery {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
            held: AtomicU64::new(0),
        }
    }

    /// Runs `say(held back since the last time)` unless it ran within the interval.
    pub fn log(&self, say: impl FnOnce(u64)) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        say(self.held.swap(0, Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_logged_once_per_interval_with_a_count() {
        let every = LogEvery::new(Duration::from_secs(3600));
        let mut said = Vec::new();
        for _ in 0..5 {
            every.log(|held| said.push(held));
        }
        assert_eq!(said, [0]);
        *every.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        every.log(|held| said.push(held));
        assert_eq!(said, [0, 4]);
    }
}
