//! One worker per enabled deployment, consuming `state_dir/queues/deploy-<name>/`.
//!
//! A worker takes every entry waiting in its queue, holds the deployment's lock, and turns them
//! into one run (see [`run`] and [`coalesce`]). Different deployments run concurrently; one
//! deployment runs one deploy at a time, also across processes, through [`crate::lock`].
//!
//! Durability: the entry name is the idempotency key. An entry leaves the queue only after its
//! terminal outcome (success, failed, superseded, stale, ignored) is in the ledger; if that
//! cannot be written it stays and is retried, and an entry found again with an outcome is
//! removed without running. A crash mid-run leaves it queued, and the next holder of the lock
//! closes the interrupted run as cancelled and redoes it.
//!
//! Fencing: right after taking the deployment's lock, before anything else, the worker takes
//! the next fencing token from the ledger; a run's outcome is recorded only while it is the
//! latest (a holder fenced out records nothing and leaves the entry to the new holder), and
//! each site-publishing helper request is preceded by a check of both the lock (in its store)
//! and the token.
//!
//! Supervision: each worker runs under a supervisor that restarts it with backoff if it exits
//! or panics, reporting it to [`crate::health`] meanwhile. On shutdown a worker takes no new work and gives a running deploy
//! [`GRACE`]; after that its process group is killed and its entries stay queued.
//!
//! Self-update: a deployment of the deployer itself (`self_update = true`, the only kind given
//! `$DEPLOY_RESTART_FILE`) installs the new binary in its commands and then touches the file. After that run is recorded as successful, the worker
//! sends the daemon SIGTERM (an ordinary graceful shutdown), and [`WorkerSet::wait`] ends the
//! process with [`RESTART_EXIT_STATUS`], which systemd's `Restart=on-failure` answers by starting
//! the new binary. No privilege is involved.

mod coalesce;
mod git;
mod log;
mod process;
mod record;
mod release;
mod retry;
mod run;
pub mod sandbox;
mod sites;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use self::git::{GitError, is_commit_id, ls_remote_head};
pub use self::process::kill_recorded_groups;
pub use self::record::{Run, RunStatus};
pub use self::release::{ROLLBACK_SOURCE, ReleaseInfo, Releases, is_release_id};
pub use self::run::new_run_id;
use self::run::{Disposition, Pending};
use crate::config::{Config, Deployment};
use crate::dispatch::{DeployRequest, deploy_queue_dir};
use crate::github::StatusClient;
use crate::health::{Health, RestartBackoff, join_error_message};
use crate::ledger::Ledger;
use crate::lock::{Locks, deploy_lock};
use crate::queue::{Consumer, Entry, Queue};

/// How long a running deploy may go on after shutdown begins. Below systemd's TimeoutStopSec
/// (2 min in deploy/durhack-deployer.service), so the kill is ours, done per process group.
pub const GRACE: Duration = Duration::from_secs(30);

/// The exit status that asks systemd to restart the daemon after a self-update (EX_TEMPFAIL).
pub const RESTART_EXIT_STATUS: i32 = 75;

static RESTART_REQUESTED: AtomicBool = AtomicBool::new(false);

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
    /// Waits for every worker to stop. If a self-update asked for a restart, the process exits
    /// here with [`RESTART_EXIT_STATUS`] once all runs are recorded.
    pub async fn wait(self) {
        for h in self.handles {
            let _ = h.await;
        }
        if restart_requested() {
            tracing::info!(
                "exiting with status {RESTART_EXIT_STATUS} so systemd restarts the updated deployer"
            );
            std::process::exit(RESTART_EXIT_STATUS);
        }
    }
}

/// Has a successful self-update asked for a restart?
pub fn restart_requested() -> bool {
    RESTART_REQUESTED.load(Ordering::SeqCst)
}

/// The file a self-updating deployment touches to ask for a restart: in its home, the one
/// place outside its tree that its sandboxed commands can write.
pub fn restart_file(config: &Config, deployment: &Deployment) -> PathBuf {
    sandbox::home(config, deployment).join(".durhack-deployer-restart-requested")
}

fn check_restart_request(config: &Config, deployment: &Deployment, log: &self::log::RunLog) {
    // Only the deployer's own deployment may restart it: any other build could otherwise end
    // every other deployment's runs with a restart whenever it liked.
    if !deployment.self_update {
        return;
    }
    let file = restart_file(config, deployment);
    if std::fs::remove_file(&file).is_ok() {
        log.line("restart requested: the deployer restarts once running deploys finish");
        tracing::info!("self-update: restart requested");
        RESTART_REQUESTED.store(true, Ordering::SeqCst);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM);
    }
}

/// Starts one worker per enabled deployment, consuming `state_dir/queues/deploy-<name>/`.
pub async fn start(
    config: Arc<Config>,
    ledger: Ledger,
    shutdown: CancellationToken,
) -> Result<WorkerSet, WorkerError> {
    start_supervised(config, ledger, shutdown, Health::default()).await
}

/// Like [`start`], each worker under a supervisor that restarts it with backoff when it exits
/// or panics, reporting it to `health` as down until then.
pub async fn start_supervised(
    config: Arc<Config>,
    ledger: Ledger,
    shutdown: CancellationToken,
    health: Health,
) -> Result<WorkerSet, WorkerError> {
    let locks = Locks::from_config(&config).map_err(|e| WorkerError::Startup(e.to_string()))?;
    let github = StatusClient::from_config(&config);
    let helper = sites::Helper::new(&config.helper_socket);
    settle_removed_deployments(&config, &ledger).await;
    announce_sandbox(&config);
    let mut handles = Vec::new();
    for deployment in config.enabled_deployments() {
        let dir = deploy_queue_dir(&config, &deployment.name);
        Queue::open(&dir)
            .map_err(|e| WorkerError::Startup(format!("queue {}: {e}", dir.display())))?;
        let worker = Worker {
            config: Arc::clone(&config),
            deployment: deployment.clone(),
            ledger: ledger.clone(),
            locks: locks.clone(),
            github: github.clone(),
            helper: helper.clone(),
        };
        handles.push(tokio::spawn(supervise(
            worker,
            dir,
            shutdown.clone(),
            health.clone(),
        )));
    }
    Ok(WorkerSet { handles })
}

/// Says, for each enabled deployment, whether its commands run in the sandbox; loudly when not.
fn announce_sandbox(config: &Config) {
    if let Err(why) = sandbox::availability()
        && config.enabled_deployments().any(|d| d.sandbox)
    {
        tracing::error!(%why, "the build sandbox is unavailable: runs of sandboxed deployments will fail until bubblewrap works (or the deployment sets sandbox = false)");
    }
    for d in config.enabled_deployments() {
        match sandbox::describe(d) {
            (true, message) => tracing::warn!(deployment = %d.name, "{message}"),
            (false, message) => tracing::info!(deployment = %d.name, "{message}"),
        }
    }
}

/// Entries left in the queue of a deployment that is no longer in the config (renamed or
/// removed while they waited) would never be read again: each is recorded `ignored`
/// ("deployment no longer configured") and removed. Disabled deployments keep their entries.
/// Best effort: an entry whose outcome cannot be written stays, and is tried at the next start.
async fn settle_removed_deployments(config: &Config, ledger: &Ledger) {
    let Ok(dirs) = std::fs::read_dir(config.queues_dir()) else {
        return;
    };
    for dir in dirs.flatten() {
        let file_name = dir.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix("deploy-"))
            .map(str::to_owned)
        else {
            continue;
        };
        let quarantine_of_configured = name
            .strip_suffix("-quarantine")
            .is_some_and(|d| config.deployments.contains_key(d));
        if config.deployments.contains_key(&name)
            || quarantine_of_configured
            || !dir.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let Ok(queue) = Queue::open(dir.path()) else {
            continue;
        };
        for entry in queue.list().unwrap_or_default() {
            let Ok(Some(contents)) = queue.read(&entry) else {
                continue;
            };
            let Ok(req) = serde_json::from_slice::<DeployRequest>(&contents) else {
                tracing::warn!(queue = %dir.path().display(), %entry, "unreadable entry of a deployment no longer configured; left in place");
                continue;
            };
            let settled = match ledger.entry_outcome(&name, &entry).await {
                Ok(Some(_)) => true,
                Ok(None) => {
                    let now = crate::dispatch::now_ms();
                    let run = Run {
                        id: new_run_id(),
                        deployment: name.clone(),
                        delivery: req.delivery.clone(),
                        sha: req.sha.clone(),
                        source: if req.pinned {
                            "pinned".to_owned()
                        } else {
                            req.source.clone()
                        },
                        status: RunStatus::Ignored,
                        started_at: now,
                        finished_at: Some(now),
                        log_path: None,
                        error: Some("deployment no longer configured".to_owned()),
                        entry: Some(entry.clone()),
                    };
                    matches!(record_outcome(ledger, &run).await, Disposition::Complete)
                }
                Err(e) => {
                    tracing::error!(error = %e, deployment = %name, %entry, "cannot read the ledger; the entry stays");
                    false
                }
            };
            if settled {
                tracing::warn!(deployment = %name, %entry, delivery = %req.delivery, "entry of a deployment no longer configured recorded ignored");
                if let Err(e) = queue.remove(&entry) {
                    tracing::error!(error = %e, %entry, "cannot remove a settled entry");
                }
            }
        }
    }
}

/// Runs `worker` until shutdown, restarting it with backoff whenever it exits or panics.
async fn supervise(worker: Worker, dir: PathBuf, shutdown: CancellationToken, health: Health) {
    let component = format!("worker {}", worker.deployment.name);
    let mut backoff = RestartBackoff::default();
    loop {
        let started = std::time::Instant::now();
        let reason = match Queue::open(&dir).and_then(|q| q.consumer()) {
            Err(e) => format!("cannot open its queue: {e}"),
            Ok(consumer) => {
                health.up(&component);
                match tokio::spawn(worker.clone().run(consumer, shutdown.clone())).await {
                    Ok(()) if shutdown.is_cancelled() => return,
                    Ok(()) => "exited".to_owned(),
                    Err(e) => join_error_message(e),
                }
            }
        };
        if shutdown.is_cancelled() {
            return;
        }
        let wait = backoff.after_run(started.elapsed());
        tracing::error!(%component, %reason, restart_in = ?wait, "a worker stopped; restarting it");
        health.down(&component, &format!("{reason}; restarting in {wait:?}"));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Where a deployment's unreadable deploy requests are moved: `queues/deploy-<name>-quarantine/`.
pub fn deploy_quarantine_dir(config: &Config, deployment: &str) -> PathBuf {
    config
        .queues_dir()
        .join(format!("deploy-{deployment}-quarantine"))
}

/// A test hook: `DURHACK_DEPLOYER_TEST_PANIC_FILE` names a file; while it holds a deployment's
/// name, that deployment's worker panics when it takes a batch (to exercise supervision). Unset
/// in production, where this does nothing.
fn injected_panic(name: &str) {
    if let Some(file) = std::env::var_os("DURHACK_DEPLOYER_TEST_PANIC_FILE")
        && std::fs::read_to_string(file).is_ok_and(|s| s.trim() == name)
    {
        panic!("DURHACK_DEPLOYER_TEST_PANIC_FILE asked worker {name} to panic");
    }
}

/// Waits after an error that is not the run's own (queue or ledger unavailable).
const PAUSE_AFTER_ERROR: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
struct Worker {
    config: Arc<Config>,
    deployment: Deployment,
    ledger: Ledger,
    locks: Locks,
    github: Option<StatusClient>,
    helper: sites::Helper,
}

impl Worker {
    async fn run(self, mut consumer: Consumer, shutdown: CancellationToken) {
        let name = self.deployment.name.clone();
        tracing::info!(deployment = %name, "worker started");
        while !shutdown.is_cancelled() {
            let batch = match consumer.next_batch(&shutdown).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(deployment = %name, error = %e, "cannot read the deploy queue");
                    pause(&shutdown).await;
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            injected_panic(&name);
            if !self.handle_batch(&mut consumer, batch, &shutdown).await {
                pause(&shutdown).await;
            }
        }
        tracing::info!(deployment = %name, "worker stopped");
    }

    /// Turns a batch into (at most) one run. `false` when something outside the run failed and
    /// the entries were put back, so the caller should pause before trying again.
    async fn handle_batch(
        &self,
        consumer: &mut Consumer,
        batch: Vec<Entry>,
        shutdown: &CancellationToken,
    ) -> bool {
        let name = &self.deployment.name;
        let Some(lock) = self.locks.acquire(&deploy_lock(name), shutdown).await else {
            release_all(consumer, batch.iter().map(|e| e.name.as_str()));
            return true;
        };
        // The fencing token is taken first, before any other work under the lock, so that an
        // earlier holder is fenced out from the moment we hold the lock.
        let fence = match self.ledger.take_fence(&deploy_lock(name)).await {
            Ok(fence) => fence,
            Err(e) => {
                tracing::error!(deployment = %name, error = %e, "ledger unavailable");
                lock.release().await;
                release_all(consumer, batch.iter().map(|e| e.name.as_str()));
                return false;
            }
        };
        // A holder that died (SIGKILL) may have left its command's process group running:
        // end it before anything runs here (on this host; across hosts the systemd unit's
        // cgroup kill covers it).
        if let Some(pgid) =
            process::kill_leftover(&process::pgid_file(&self.config.state_dir, name))
        {
            tracing::warn!(deployment = %name, pgid, "killed the process group of a previous holder's command");
        }
        // Another process sharing this state may have run (and removed) some of these entries
        // while we waited for the lock.
        let still_queued = match consumer.queue().list() {
            Ok(names) => names,
            Err(e) => {
                tracing::error!(deployment = %name, error = %e, "cannot list the deploy queue");
                lock.release().await;
                release_all(consumer, batch.iter().map(|e| e.name.as_str()));
                return false;
            }
        };
        // A run left `running` by a crash is recorded `cancelled` before anything else; its
        // entry, still queued, is then judged (and redone) like any other.
        match self
            .ledger
            .close_interrupted_runs(name, run::now_ms())
            .await
        {
            Ok(0) => {}
            Ok(closed) => {
                tracing::warn!(deployment = %name, runs = closed, "closed runs interrupted by a crash as cancelled");
            }
            Err(e) => {
                tracing::error!(deployment = %name, error = %e, "ledger unavailable");
                lock.release().await;
                release_all(consumer, batch.iter().map(|e| e.name.as_str()));
                return false;
            }
        }
        let mut pending = Vec::new();
        let mut gone = Vec::new();
        for entry in batch {
            if !still_queued.contains(&entry.name) {
                gone.push(entry.name);
                continue;
            }
            match serde_json::from_slice::<DeployRequest>(&entry.contents) {
                Ok(req) => pending.push(Pending {
                    entry: entry.name,
                    req,
                }),
                Err(e) => {
                    // Never deleted: moved aside for a human, out of the way of the others.
                    let aside = deploy_quarantine_dir(&self.config, name);
                    match Queue::open(&aside)
                        .and_then(|q| q.push_named(&entry.name, &entry.contents))
                    {
                        Ok(()) => {
                            tracing::error!(deployment = %name, entry = %entry.name, error = %e, dir = %aside.display(), "unreadable deploy request moved to the quarantine");
                            complete(consumer, &entry.name);
                        }
                        Err(q) => {
                            tracing::error!(deployment = %name, entry = %entry.name, error = %e, quarantine_error = %q, "unreadable deploy request; cannot move it aside");
                            consumer.release(&entry.name);
                        }
                    }
                }
            }
        }
        for entry in gone {
            // Its file is gone already; this only forgets it.
            complete(consumer, &entry);
        }
        // The entry name is the idempotency key: an entry that already has its terminal outcome
        // (found again after a crash, or written again by a dispatcher that retried) is removed
        // without running anything. An entry that does not match the deployment as configured
        // now is recorded `ignored`.
        let mut fresh = Vec::new();
        let mut failed = false;
        for p in pending {
            if failed {
                consumer.release(&p.entry);
                continue;
            }
            match self.ledger.entry_outcome(name, &p.entry).await {
                Ok(Some(run)) => {
                    tracing::info!(deployment = %name, entry = %p.entry, status = %run.status, "entry already has its outcome; removing it");
                    complete(consumer, &p.entry);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(deployment = %name, error = %e, "ledger unavailable");
                    consumer.release(&p.entry);
                    failed = true;
                    continue;
                }
            }
            if let Some(reason) = self.mismatch(&p.req) {
                let now = run::now_ms();
                let record = Run {
                    id: run::new_run_id(),
                    deployment: name.clone(),
                    delivery: p.req.delivery.clone(),
                    sha: p.req.sha.clone(),
                    source: p.req.source.clone(),
                    status: RunStatus::Ignored,
                    started_at: now,
                    finished_at: Some(now),
                    log_path: None,
                    error: Some(reason.clone()),
                    entry: Some(p.entry.clone()),
                };
                tracing::warn!(deployment = %name, entry = %p.entry, reason, "entry ignored");
                match record_outcome(&self.ledger, &record).await {
                    Disposition::Complete => complete(consumer, &p.entry),
                    _ => {
                        consumer.release(&p.entry);
                        failed = true;
                    }
                }
                continue;
            }
            fresh.push(p);
        }
        if failed {
            lock.release().await;
            release_all(consumer, fresh.iter().map(|p| p.entry.as_str()));
            return false;
        }
        if fresh.is_empty() {
            lock.release().await;
            return true;
        }
        let fresh = rollback_alone(consumer, fresh);
        let cancel = CancellationToken::new();
        let watcher = tokio::spawn(watch(shutdown.clone(), lock.lost(), cancel.clone()));
        let under_way = crate::presence::RunningDeploy::start(name);
        let outcome = self.execute(fresh, &cancel, &fence, &lock).await;
        drop(under_way);
        watcher.abort();
        // Entries leave the queue before the lock is free, so the next holder never sees one
        // that is already recorded.
        let mut kept_by_error = false;
        for (entry, disposition) in outcome {
            match disposition {
                Disposition::Complete => complete(consumer, &entry),
                Disposition::Keep => consumer.release(&entry),
                Disposition::Retry => {
                    kept_by_error = true;
                    consumer.release(&entry);
                }
            }
        }
        lock.release().await;
        !kept_by_error
    }

    /// Why `req` must not be deployed by this deployment as configured now, if so.
    fn mismatch(&self, req: &DeployRequest) -> Option<String> {
        let d = &self.deployment;
        if !req.repository.eq_ignore_ascii_case(&d.repository) {
            return Some(format!(
                "queued for repository {}, but {} now deploys {}",
                req.repository, d.name, d.repository
            ));
        }
        if req.branch != d.branch {
            return Some(format!(
                "queued for branch {}, but {} now deploys branch {}",
                req.branch, d.name, d.branch
            ));
        }
        None
    }
}

/// A rollback runs alone, in arrival order: the entries that came before it run first, and the
/// ones after it are handed back for the next batch (they deploy forward again).
fn rollback_alone(consumer: &mut Consumer, mut fresh: Vec<Pending>) -> Vec<Pending> {
    let is_rollback = |p: &Pending| p.req.source == release::ROLLBACK_SOURCE;
    let split = match fresh.iter().position(is_rollback) {
        None => return fresh,
        Some(0) => 1,
        Some(i) => i,
    };
    for later in fresh.split_off(split) {
        consumer.release(&later.entry);
    }
    fresh
}

/// Writes `run` (a terminal outcome). `Complete` when it, or an earlier terminal outcome of the
/// same entry, is in the ledger; `Retry` when neither could be confirmed: the entry then stays
/// queued, never lost.
async fn record_outcome(ledger: &Ledger, run: &Run) -> Disposition {
    match ledger.insert_run(run).await {
        Ok(()) => Disposition::Complete,
        Err(e) => {
            let entry = run.entry.as_deref().unwrap_or_default();
            match ledger.entry_outcome(&run.deployment, entry).await {
                Ok(Some(_)) => Disposition::Complete,
                _ => {
                    tracing::error!(error = %e, delivery = %run.delivery, status = %run.status, "cannot record a push's outcome; it stays queued");
                    Disposition::Retry
                }
            }
        }
    }
}

/// Cancels the run after the grace period once shutdown begins, or at once if the lock is lost.
async fn watch(shutdown: CancellationToken, lost: CancellationToken, cancel: CancellationToken) {
    tokio::select! {
        () = async {
            shutdown.cancelled().await;
            tracing::info!(grace = ?GRACE, "shutting down: the running deploy has a grace period");
            tokio::time::sleep(GRACE).await;
            tracing::warn!("grace period over: stopping the running deploy");
        } => {}
        () = lost.cancelled() => tracing::error!("lost the deployment's lock: stopping the run"),
    }
    cancel.cancel();
}

fn complete(consumer: &mut Consumer, entry: &str) {
    if let Err(e) = consumer.complete(entry) {
        tracing::error!(entry, error = %e, "cannot remove a finished entry from the queue");
    }
}

fn release_all<'a>(consumer: &mut Consumer, entries: impl Iterator<Item = &'a str>) {
    for entry in entries {
        consumer.release(entry);
    }
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(PAUSE_AFTER_ERROR) => {}
    }
}
