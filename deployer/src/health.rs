//! Which long-running components are down right now, for `GET /`.
//!
//! The dispatcher and each worker run under a supervisor that restarts them with backoff when
//! they exit or panic; while one is down (between its failure and its restart), it is listed
//! here, and `GET /` answers 503 naming it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Restart delays for a supervised component: 1 s doubling to 60 s, reset once it has run
/// for a minute without failing.
#[derive(Debug)]
pub struct RestartBackoff {
    next: Duration,
}

const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);

impl Default for RestartBackoff {
    fn default() -> Self {
        Self {
            next: RESTART_FIRST,
        }
    }
}

impl RestartBackoff {
    /// The wait before the next restart, given how long the component ran this time.
    pub fn after_run(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= RESTART_MAX {
            self.next = RESTART_FIRST;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(RESTART_MAX);
        wait
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
