//! GitHub's REST API: commit statuses for each run, and the repository hook's deliveries (list,
//! redeliver) for redelivery of what GitHub failed to deliver.

mod deliveries;
mod status;

pub use deliveries::{ApiError, DeliveriesClient, HookDelivery, Page};
pub use status::{CommitState, StatusClient, StatusError};

use std::time::Duration;

/// Every API request gives up after this.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The one HTTP client configuration every GitHub API caller uses.
fn http_client() -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .user_agent(concat!("durhack-deployer/", env!("CARGO_PKG_VERSION")))
        .build()
        .ok()
}
