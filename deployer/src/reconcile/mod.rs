//! Reconciliation: nothing pushed is ever missed, even when its webhook never arrived.
//!
//! At start-up and then every `reconcile_interval`, for each enabled deployment, the remote
//! branch head (`git ls-remote`) is compared with the last successfully deployed commit. A head
//! that differs is queued through the deployment's ordinary deploy queue, as a request with
//! source `reconcile`, unless:
//! - something for the deployment is queued or running (its run deploys the head anyway), or
//!   the inbox holds deliveries not yet dispatched (one may be this push's webhook);
//! - the deployment ever started a deploy of that head (it failed, or an operator rolled back
//!   from it: reconciliation never rebuilds a head in a loop nor undoes a rollback);
//! - the head was claimed already: the claim `reconcile:<deployment>:<sha>` in the ledger's
//!   delivery claims (the dispatcher's exactly-once claim) is taken by one entry only, so two
//!   loops (two daemons sharing the state) queue one entry per head.
//!
//! The worker treats a reconcile request like a webhook's: it re-resolves the head after its
//! fetch, coalesces with the other waiting pushes, judges staleness, and deploys under the lock,
//! so a webhook and a reconcile for the same head give one run.
//!
//! With `github.token_file` set, a second loop on the same interval asks GitHub to redeliver
//! the hook deliveries it marked failed (see [`redeliver`]). Errors of either loop are logged
//! and retried at the next pass; neither ever blocks a deploy.

pub mod redeliver;
pub mod remote;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, Deployment};
use crate::dispatch::{DeployRequest, deploy_queue_dir, inbox_dir, now_ms};
use crate::ledger::{Claim, DeliveryRecord, Ledger, LedgerError, Outcome, ReconcileState};
use crate::queue::{Queue, QueueError, fresh_entry_name};

/// The `source` of a deploy request queued by reconciliation.
pub const SOURCE: &str = "reconcile";

/// The `event` of the delivery record a reconcile request leaves in the ledger (for `history`).
pub const EVENT: &str = "reconcile";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("remote: {0}")]
    Remote(#[from] remote::RemoteError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("encoding a deploy request: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("a blocking queue write panicked")]
    Join(#[from] tokio::task::JoinError),
}

/// What a pass did for one deployment (kept in the ledger for `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The head is the deployed commit.
    Deployed,
    /// A deploy of the head was queued.
    Queued,
    /// Something is queued or running, or the inbox is not empty: left to that run.
    Busy,
    /// A deploy of this head was tried before (it failed, or was rolled back from).
    Attempted,
    /// Another pass (or process) queued this head already.
    Claimed,
    /// The branch is not on the remote.
    Missing,
    /// The remote or the ledger could not be read.
    Error,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployed => "deployed",
            Self::Queued => "queued",
            Self::Busy => "busy",
            Self::Attempted => "attempted",
            Self::Claimed => "claimed",
            Self::Missing => "missing",
            Self::Error => "error",
        }
    }
}

/// Runs reconciliation (and, with a token, redelivery) until `shutdown`; returns at once when
/// `reconcile_interval` is 0.
pub async fn run(config: Arc<Config>, ledger: Ledger, shutdown: CancellationToken) {
    let Some(interval) = config.reconcile_interval else {
        tracing::info!("reconciliation disabled (reconcile_interval = 0)");
        return;
    };
    let redelivery = redeliver::Redeliverer::from_config(&config, ledger.clone()).map(|r| {
        tokio::spawn(
            r.run(interval, shutdown.clone())
                .instrument(tracing::info_span!("redeliver")),
        )
    });
    reconcile_loop(&config, &ledger, interval, &shutdown)
        .instrument(tracing::info_span!("reconcile"))
        .await;
    if let Some(task) = redelivery {
        let _ = task.await;
    }
}

async fn reconcile_loop(
    config: &Config,
    ledger: &Ledger,
    interval: Duration,
    shutdown: &CancellationToken,
) {
    tracing::info!(?interval, "reconciling with the remote branch heads");
    loop {
        // Shutdown does not wait for a slow remote: the pass is dropped (its `git ls-remote` is
        // killed). A claim left without its entry is written at a later pass (see `enqueue`).
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = pass(config, ledger, shutdown) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One pass over every enabled deployment. Disabled deployments are never looked at.
pub async fn pass(config: &Config, ledger: &Ledger, shutdown: &CancellationToken) {
    for deployment in config.enabled_deployments() {
        if shutdown.is_cancelled() {
            return;
        }
        let state = match reconcile_one(config, ledger, deployment).await {
            Ok(state) => state,
            Err((head, e)) => {
                tracing::warn!(deployment = %deployment.name, error = %e, "reconcile failed; tried again at the next pass");
                ReconcileState {
                    deployment: deployment.name.clone(),
                    remote_head: head,
                    checked_at: now_ms(),
                    action: Action::Error.as_str().to_owned(),
                    note: e.to_string().chars().take(300).collect(),
                }
            }
        };
        if let Err(e) = ledger.save_reconcile_state(&state).await {
            tracing::warn!(deployment = %deployment.name, error = %e, "cannot record the reconcile state");
        }
    }
}

type Failure = (Option<String>, ReconcileError);

async fn reconcile_one(
    config: &Config,
    ledger: &Ledger,
    d: &Deployment,
) -> Result<ReconcileState, Failure> {
    let state = |head: Option<String>, action: Action, note: String| ReconcileState {
        deployment: d.name.clone(),
        remote_head: head,
        checked_at: now_ms(),
        action: action.as_str().to_owned(),
        note,
    };
    let Some(head) = remote::head(&d.remote, &d.branch, d.ssh_key_file.as_deref())
        .await
        .map_err(|e| (None, e.into()))?
    else {
        return Ok(state(
            None,
            Action::Missing,
            format!("branch {} is not on the remote", d.branch),
        ));
    };
    let fail = |e: ReconcileError| (Some(head.clone()), e);
    let deployed = ledger
        .deployed_sha(&d.name)
        .await
        .map_err(|e| fail(e.into()))?;
    if deployed.as_deref() == Some(head.as_str()) {
        return Ok(state(Some(head), Action::Deployed, String::new()));
    }
    let queue = Queue::open(deploy_queue_dir(config, &d.name)).map_err(|e| fail(e.into()))?;
    let queued = queue.list().map_err(|e| fail(e.into()))?;
    if !queued.is_empty() {
        return Ok(state(
            Some(head),
            Action::Busy,
            format!("{} deploy request(s) queued or running", queued.len()),
        ));
    }
    let inbox = Queue::open(inbox_dir(config))
        .and_then(|q| q.list())
        .map_err(|e| fail(e.into()))?;
    if !inbox.is_empty() {
        return Ok(state(
            Some(head),
            Action::Busy,
            format!("{} delivery(ies) waiting in the inbox", inbox.len()),
        ));
    }
    if ledger
        .sha_attempted(&d.name, &head)
        .await
        .map_err(|e| fail(e.into()))?
    {
        return Ok(state(
            Some(head),
            Action::Attempted,
            "a deploy of this head was tried before; not retried by reconciliation".to_owned(),
        ));
    }
    let action = enqueue(ledger, &queue, d, &head, deployed.as_deref())
        .await
        .map_err(fail)?;
    let note = match action {
        Action::Queued => {
            tracing::info!(deployment = %d.name, %head, deployed = ?deployed, "remote head not deployed: queued a deploy");
            format!(
                "queued: the head differs from the deployed commit {}",
                deployed.as_deref().unwrap_or("(none)")
            )
        }
        _ => "a deploy of this head was queued before".to_owned(),
    };
    Ok(state(Some(head), action, note))
}

/// The claim key of a reconcile request for `deployment` at `sha`.
pub fn claim_key(deployment: &str, sha: &str) -> String {
    format!("reconcile:{deployment}:{sha}")
}

/// Claims `head` for `d` and queues it. `Claimed` when an earlier entry owns the claim and is
/// still queued or has runs; an owner found neither queued nor run (its process died between
/// claim and write) is written again under its own name, which a concurrent writer of the same
/// entry cannot duplicate.
async fn enqueue(
    ledger: &Ledger,
    queue: &Queue,
    d: &Deployment,
    head: &str,
    deployed: Option<&str>,
) -> Result<Action, ReconcileError> {
    let key = claim_key(&d.name, head);
    let now = now_ms();
    let name = fresh_entry_name(&format!("reconcile-{head}"));
    let entry = match ledger.claim_delivery(&key, &name, now).await? {
        Claim::First => name,
        Claim::Redelivery { first_entry } => {
            let still_queued = queue.list()?.contains(&first_entry);
            if still_queued || ledger.entry_has_runs(&d.name, &first_entry).await? {
                return Ok(Action::Claimed);
            }
            first_entry
        }
    };
    let request = DeployRequest {
        deployment: d.name.clone(),
        delivery: key.clone(),
        repository: d.repository.clone(),
        branch: d.branch.clone(),
        sha: head.to_owned(),
        before: deployed.map(str::to_owned),
        received_at_ms: now,
        source: SOURCE.to_owned(),
        pinned: false,
        release: None,
    };
    let bytes = serde_json::to_vec(&request)?;
    let (q, written) = (queue.clone(), entry.clone());
    tokio::task::spawn_blocking(move || q.push_named(&written, &bytes)).await??;
    let record = DeliveryRecord {
        entry: entry.clone(),
        delivery: key,
        event: EVENT.to_owned(),
        hook_id: None,
        received_at: now,
        handled_at: now_ms(),
        outcome: Outcome::Routed,
        reason: format!(
            "reconcile: the remote head of {} is {head}, deployed is {}",
            d.branch,
            deployed.unwrap_or("nothing")
        ),
        repository: Some(d.repository.clone()),
        branch: Some(d.branch.clone()),
        sha: Some(head.to_owned()),
        deployments: vec![d.name.clone()],
    };
    // Only for `history`: the entry is queued already, and a failure here loses nothing.
    if let Err(e) = ledger.record_delivery(&record).await {
        tracing::warn!(deployment = %d.name, %entry, error = %e, "cannot record the reconcile request in the history");
    }
    Ok(Action::Queued)
}
