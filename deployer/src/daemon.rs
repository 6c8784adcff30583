//! `run(config, shutdown)`: starts the HTTP endpoint, the dispatcher and the workers, and stops
//! them in order when `shutdown` is cancelled.

use tokio_util::sync::CancellationToken;

use crate::config::Config;

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (config, shutdown);
    anyhow::bail!("not wired yet")
}
