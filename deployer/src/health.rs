//! Which long-running components are down right now, for `GET /`.
//!
//! The dispatcher and each worker run under a supervisor that restarts them with backoff when
//! they exit or panic; while one is down (between its failure and its restart), it is listed
//! here, and `GET /` answers 503 naming it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Shared between the supervisors and the HTTP endpoint.
#[derive(Debug, Clone, Default)]
pub struct Health {
    down: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Health {
    /// Marks `component` (e.g. `worker app`, `dispatcher`) as down, with the reason.
    pub fn down(&self, component: &str, reason: &str) {
        self.lock().insert(component.to_owned(), reason.to_owned());
    }

    pub fn up(&self, component: &str) {
        self.lock().remove(component);
    }

    /// The components that are down, with why.
    pub fn down_components(&self) -> BTreeMap<String, String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Restart delays for a supervised component: 1 s doubling to 60 s (backon's exponential
/// backoff), started over once the component has run for a minute without failing.
#[derive(Debug)]
pub struct RestartBackoff {
    delays: ExponentialBackoff,
}

const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);

fn fresh() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(RESTART_FIRST)
        .with_max_delay(RESTART_MAX)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

impl Default for RestartBackoff {
    fn default() -> Self {
        Self { delays: fresh() }
    }
}

impl RestartBackoff {
    /// The wait before the next restart, given how long the component ran this time.
    pub fn after_run(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= RESTART_MAX {
            self.delays = fresh();
        }
        self.delays.next().unwrap_or(RESTART_MAX)
    }
}

/// The message of a task that panicked (or why it ended otherwise).
pub fn join_error_message(e: tokio::task::JoinError) -> String {
    if e.is_panic() {
        let payload = e.into_panic();
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        format!("panicked: {text}")
    } else {
        "cancelled".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays_double_up_to_a_minute_and_start_over_after_a_good_run() {
        let mut b = RestartBackoff::default();
        let quick = Duration::from_millis(10);
        let waits: Vec<u64> = (0..8).map(|_| b.after_run(quick).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.after_run(Duration::from_secs(61)), RESTART_FIRST);
    }
}
