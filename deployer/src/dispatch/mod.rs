//! The dispatcher: drains the inbox in name order, deduplicates each delivery in the ledger and
//! routes pushes to the per-deployment queues.
//!
//! Crash safety, step by step, for an inbox entry `E` carrying delivery `D`:
//! 1. if `E` is already recorded in the ledger, its routing finished: just remove the file;
//! 2. claim `D` for `E` (insert-if-absent): the first entry to claim an id owns it;
//! 3. push one deploy-queue entry per deployment, each named exactly like `E`, so doing this
//!    again after a crash overwrites the same files (and the worker removes, without running
//!    it, an entry that already has its terminal outcome in the ledger: the entry name is the
//!    idempotency key);
//! 4. record `E` with its outcome; 5. remove `E`.
//!
//! A crash anywhere repeats at most steps 2-5 for `E` on restart, with the same result.
//!
//! Redelivery (GitHub's "Redeliver" reuses the delivery id): when `D` is claimed by an earlier
//! entry, the delivery was handled before. If every earlier receipt was quarantined, it was
//! never routed, and the redelivery is routed like a first delivery. Otherwise it is recorded
//! as a `duplicate` and deploys nothing, unless a deployment's latest run for `D` failed or was
//! cancelled: those deployments (if still enabled and still watching the branch) are queued
//! again and the redelivery is `routed`. So
//! "Redeliver" in GitHub is the way to retry a failed deploy, and never deploys twice what
//! worked.

mod route;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use route::{EventFields, Push, Routing, is_sha, route};

use crate::config::Config;
use crate::ledger::{Claim, DeliveryRecord, Ledger, LedgerError, Outcome};
use crate::queue::{Entry, Queue, QueueError};

/// An inbox entry: the verified delivery as received. `P` is the payload (borrowed raw JSON when
/// writing, parsed when reading).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxEntry<P> {
    pub event: String,
    pub delivery: String,
    pub hook_id: Option<String>,
    pub received_at_ms: i64,
    pub payload: P,
}

/// One deploy-queue entry: deploy `sha` of `branch` for `deployment`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeployRequest {
    pub deployment: String,
    pub delivery: String,
    pub repository: String,
    pub branch: String,
    /// 40 hex digits.
    pub sha: String,
    pub before: Option<String>,
    pub received_at_ms: i64,
    /// `webhook`, `cli` or `reconcile`.
    pub source: String,
    /// An operator's `deploy NAME --sha X`: deploy exactly `sha` (a deliberate rollback), not
    /// the branch head. Every other request only triggers a deploy of the head.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// An operator's `rollback NAME` (source `rollback`): the release (the id of the run that
    /// built it) to switch `current` back to; `sha` is that release's commit. Nothing is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

/// The queue directory of deployment `deployment`.
pub fn deploy_queue_dir(config: &Config, deployment: &str) -> PathBuf {
    config.queues_dir().join(format!("deploy-{deployment}"))
}

/// The inbox, where the HTTP endpoint writes verified deliveries.
pub fn inbox_dir(config: &Config) -> PathBuf {
    config.queues_dir().join("inbox")
}

/// Inbox entries whose handling kept failing while the ledger worked are moved here.
pub fn quarantine_dir(config: &Config) -> PathBuf {
    config.queues_dir().join("inbox-quarantine")
}

/// Failed attempts at one inbox entry before it is quarantined. Only failures that are not a
/// ledger outage count: while the ledger is down, read-only or busy every entry fails, and they
/// all wait instead.
pub const QUARANTINE_AFTER: u32 = 5;

/// Inbox entries that cannot be parsed are moved here rather than deleted.
pub fn unreadable_dir(config: &Config) -> PathBuf {
    config.queues_dir().join("inbox-unreadable")
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("encoding a deploy request: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("a blocking queue write panicked")]
    Join(#[from] tokio::task::JoinError),
}

impl DispatchError {
    /// The ledger is down, read-only or busy (see [`LedgerError::is_outage`]).
    pub fn is_ledger_outage(&self) -> bool {
        matches!(self, Self::Ledger(e) if e.is_outage())
    }
}

/// Retry delays after a failure (ledger down, disk trouble): the entry stays in the inbox and
/// is handled again, in order, when the cause goes away.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Entries read per batch: entries are handled one by one, and a backlog of 25 MiB deliveries
/// must not be read into memory at once.
const BATCH: usize = 32;

/// Drains the inbox until `shutdown` is cancelled.
pub async fn run(
    config: Arc<Config>,
    ledger: Ledger,
    shutdown: CancellationToken,
) -> Result<(), DispatchError> {
    let inbox = Queue::open(inbox_dir(&config))?;
    let mut consumer = inbox.consumer()?;
    let mut backoff = BACKOFF_MIN;
    let mut failures: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    loop {
        let batch = consumer.next_batch_up_to(&shutdown, BATCH).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut pending = batch.into_iter();
        let mut failed = false;
        for entry in pending.by_ref() {
            let result = match handle(&config, &ledger, &entry).await {
                Ok(()) => consumer.complete(&entry.name).map_err(DispatchError::from),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // A ledger that is down, read-only or busy (write-locked by another
                // connection, which `SELECT 1` does not notice under WAL) is not this entry's
                // fault: it waits without the attempt being counted.
                let outage = e.is_ledger_outage() || !ledger.ping().await;
                if outage {
                    tracing::warn!(entry = %entry.name, error = %e, retry_in = ?backoff, "ledger unavailable; the entry waits");
                } else {
                    let attempts = failures.entry(entry.name.clone()).or_default();
                    *attempts += 1;
                    let attempts = *attempts;
                    if attempts >= QUARANTINE_AFTER {
                        match quarantine(&config, &ledger, &entry, attempts, &e).await {
                            Ok(()) => {
                                failures.remove(&entry.name);
                                if let Err(e) = consumer.complete(&entry.name) {
                                    tracing::error!(entry = %entry.name, error = %e, "cannot remove a quarantined entry from the inbox");
                                }
                                continue;
                            }
                            Err(q) => {
                                tracing::error!(entry = %entry.name, error = %q, "cannot quarantine an entry; it stays in the inbox");
                            }
                        }
                    }
                }
                tracing::error!(entry = %entry.name, error = %e, retry_in = ?backoff, "dispatch failed; will retry");
                consumer.release(&entry.name);
                failed = true;
                break;
            }
            failures.remove(&entry.name);
            backoff = BACKOFF_MIN;
            if shutdown.is_cancelled() {
                break;
            }
        }
        // Later entries wait for the failed one (a bounded number of times), so order is kept.
        for entry in pending {
            consumer.release(&entry.name);
        }
        if failed {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Copies an inbox entry that keeps failing to [`quarantine_dir`] and records it `quarantined`.
/// `Ok` only once the record is written: the caller removes the inbox file only then, so an
/// entry never leaves the inbox without an outcome in the ledger.
async fn quarantine(
    config: &Config,
    ledger: &Ledger,
    entry: &Entry,
    attempts: u32,
    error: &DispatchError,
) -> Result<(), DispatchError> {
    let dest = Queue::open(quarantine_dir(config))?;
    dest.push_named(&entry.name, &entry.contents)?;
    tracing::error!(entry = %entry.name, attempts, %error, "an inbox entry kept failing; moved to the quarantine");
    if let Ok(parsed) = serde_json::from_slice::<InboxEntry<EventFields>>(&entry.contents) {
        let routing = route(config, &parsed.event, &parsed.payload);
        let record = DeliveryRecord {
            entry: entry.name.clone(),
            delivery: parsed.delivery.clone(),
            event: parsed.event.clone(),
            hook_id: parsed.hook_id.clone(),
            received_at: parsed.received_at_ms,
            handled_at: now_ms(),
            outcome: Outcome::Quarantined,
            reason: format!(
                "failed {attempts} times (last: {error}); moved to queues/inbox-quarantine/"
            ),
            repository: routing.push.repository.clone(),
            branch: routing.push.branch.clone(),
            sha: routing.push.sha.clone(),
            deployments: Vec::new(),
        };
        ledger.record_delivery(&record).await?;
    }
    Ok(())
}

/// Handles one inbox entry, up to and including its ledger record (not the file's removal).
pub async fn handle(config: &Config, ledger: &Ledger, entry: &Entry) -> Result<(), DispatchError> {
    let parsed: InboxEntry<EventFields> = match serde_json::from_slice(&entry.contents) {
        Ok(p) => p,
        Err(e) => {
            // We wrote it after validating it, so this is disk damage or a hand-made file: keep
            // it for a human, out of the way of the entries behind it.
            tracing::error!(entry = %entry.name, error = %e, "unreadable inbox entry moved aside");
            let dest = Queue::open(unreadable_dir(config))?;
            dest.push_named(&entry.name, &entry.contents)?;
            return Ok(());
        }
    };
    let span = tracing::info_span!("delivery", delivery = %parsed.delivery, event = %parsed.event);
    handle_parsed(config, ledger, &entry.name, &parsed)
        .instrument(span)
        .await
}

async fn handle_parsed(
    config: &Config,
    ledger: &Ledger,
    name: &str,
    entry: &InboxEntry<EventFields>,
) -> Result<(), DispatchError> {
    if ledger.delivery_recorded(name).await? {
        tracing::info!(entry = %name, "already recorded before a restart");
        return Ok(());
    }
    let routing = route(config, &entry.event, &entry.payload);
    let (outcome, deployments, reason) = match ledger
        .claim_delivery(&entry.delivery, name, now_ms())
        .await?
    {
        Claim::First => {
            let outcome = if routing.deployments.is_empty() {
                Outcome::Ignored
            } else {
                Outcome::Routed
            };
            (outcome, routing.deployments.clone(), routing.reason.clone())
        }
        Claim::Redelivery { first_entry }
            if quarantined_only(ledger, &entry.delivery, name).await? =>
        {
            // Every earlier receipt was quarantined: the delivery was never routed, so this
            // redelivery is routed like a first one.
            let outcome = if routing.deployments.is_empty() {
                Outcome::Ignored
            } else {
                Outcome::Routed
            };
            let reason = format!(
                "redelivery of a quarantined delivery (first received as {first_entry}): {}",
                routing.reason
            );
            (outcome, routing.deployments.clone(), reason)
        }
        Claim::Redelivery { first_entry } => {
            let failed = ledger
                .failed_deployments_of_delivery(&entry.delivery)
                .await?;
            let again: Vec<String> = routing
                .deployments
                .iter()
                .filter(|d| failed.contains(d))
                .cloned()
                .collect();
            if again.is_empty() {
                (
                    Outcome::Duplicate,
                    Vec::new(),
                    format!(
                        "redelivery of a delivery already handled (first received as {first_entry})"
                    ),
                )
            } else {
                let reason = format!(
                    "redelivery of a failed deploy: queued again for {}",
                    again.join(", ")
                );
                (Outcome::Routed, again, reason)
            }
        }
    };
    if !deployments.is_empty() {
        enqueue(config, name, entry, &routing.push, &deployments).await?;
    }
    let record = DeliveryRecord {
        entry: name.to_owned(),
        delivery: entry.delivery.clone(),
        event: entry.event.clone(),
        hook_id: entry.hook_id.clone(),
        received_at: entry.received_at_ms,
        handled_at: now_ms(),
        outcome,
        reason,
        repository: routing.push.repository.clone(),
        branch: routing.push.branch.clone(),
        sha: routing.push.sha.clone(),
        deployments,
    };
    ledger.record_delivery(&record).await?;
    tracing::info!(outcome = outcome.as_str(), reason = %record.reason, deployments = ?record.deployments, "delivery handled");
    Ok(())
}

/// Were all the earlier receipts of `delivery` (other than `name`) quarantined, and is there
/// at least one?
async fn quarantined_only(
    ledger: &Ledger,
    delivery: &str,
    name: &str,
) -> Result<bool, LedgerError> {
    let earlier: Vec<DeliveryRecord> = ledger
        .receipts_of_delivery(delivery)
        .await?
        .into_iter()
        .filter(|r| r.entry != name)
        .collect();
    Ok(!earlier.is_empty() && earlier.iter().all(|r| r.outcome == Outcome::Quarantined))
}

/// Writes one deploy request per deployment, named after the inbox entry so a repeat overwrites.
async fn enqueue(
    config: &Config,
    name: &str,
    entry: &InboxEntry<EventFields>,
    push: &Push,
    deployments: &[String],
) -> Result<(), DispatchError> {
    let mut writes = Vec::new();
    for deployment in deployments {
        let request = DeployRequest {
            deployment: deployment.clone(),
            delivery: entry.delivery.clone(),
            repository: push.repository.clone().unwrap_or_default(),
            branch: push.branch.clone().unwrap_or_default(),
            sha: push.sha.clone().unwrap_or_default(),
            before: push.before.clone(),
            received_at_ms: entry.received_at_ms,
            source: "webhook".to_owned(),
            pinned: false,
            release: None,
        };
        writes.push((
            deploy_queue_dir(config, deployment),
            serde_json::to_vec(&request)?,
        ));
    }
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        for (dir, bytes) in writes {
            Queue::open(dir)?.push_named(&name, &bytes)?;
        }
        Ok::<(), QueueError>(())
    })
    .await??;
    Ok(())
}
