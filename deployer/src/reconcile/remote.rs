//! The remote branch head, read with `git ls-remote` (no clone, no token for a public remote),
//! through the same git helper the worker uses, under a timeout of its own.

use std::path::Path;
use std::time::Duration;

use crate::worker::{GitError, is_commit_id, ls_remote_head};

/// A remote that does not answer within this is tried again at the next pass.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Git(#[from] GitError),
    #[error("`git ls-remote` did not answer within {0:?}")]
    Timeout(Duration),
    #[error("`git ls-remote` gave `{0}`, which is not a commit id")]
    NotACommit(String),
}

/// The commit `refs/heads/<branch>` points at on `remote` (reached with the deployment's deploy
/// key, if any); `None` when the branch is missing.
pub async fn head(
    remote: &str,
    branch: &str,
    ssh_key: Option<&Path>,
) -> Result<Option<String>, RemoteError> {
    // The git child is started with kill_on_drop, so the timeout also ends it.
    let head = tokio::time::timeout(LS_REMOTE_TIMEOUT, ls_remote_head(remote, branch, ssh_key))
        .await
        .map_err(|_| RemoteError::Timeout(LS_REMOTE_TIMEOUT))??;
    match head {
        Some(sha) if !is_commit_id(&sha) => Err(RemoteError::NotACommit(sha)),
        other => Ok(other),
    }
}
