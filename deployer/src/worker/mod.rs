//! One worker per enabled deployment. (Interface fixed here; the worker work fills it in.)

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ledger::Ledger;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker start-up: {0}")]
    Startup(String),
}

/// The running workers; [`WorkerSet::wait`] returns once all have stopped after shutdown.
#[derive(Debug, Default)]
pub struct WorkerSet {
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl WorkerSet {
    pub async fn wait(self) {
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// Starts one worker per enabled deployment, consuming `state_dir/queues/deploy-<name>/`.
pub async fn start(
    config: Arc<Config>,
    ledger: Ledger,
    shutdown: CancellationToken,
) -> Result<WorkerSet, WorkerError> {
    let _ = (config, ledger, shutdown);
    Ok(WorkerSet::default())
}
