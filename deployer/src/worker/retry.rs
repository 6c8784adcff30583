//! Bounded retries for transient failures (fetch errors, an unreachable helper).

use std::time::Duration;

/// Attempts after the first, and the wait before each: 1 s, 2 s, 4 s, 8 s. A remote or helper
/// that is back within a quarter of a minute costs nothing; one that is not fails the run.
const WAITS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

#[derive(Debug)]
pub struct Backoff {
    next: usize,
}

impl Backoff {
    pub fn transient() -> Self {
        Self { next: 0 }
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    /// The wait before the next attempt, or `None` when attempts are exhausted.
    fn next(&mut self) -> Option<Duration> {
        let wait = WAITS.get(self.next).copied();
        self.next += 1;
        wait
    }
}
