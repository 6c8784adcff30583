//! One run: fetch, coalesce the waiting pushes, then check out, build, publish sites and record.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::coalesce::{self, Candidate, Decision};
use super::git::{GitError, Repo};
use super::log::RunLog;
use super::process::{self, Confinement, ProcessError, Spawn};
use super::release::{self, ROLLBACK_SOURCE, ReleaseError};
use super::retry::Backoff;
use super::sandbox::{self, SandboxError};
use super::sites::{self, SiteError};
use super::{Run, RunStatus, Worker};
use crate::config::{CommandSpec, Deployment, Layout};
use crate::dispatch::DeployRequest;
use crate::github::CommitState;
use crate::ledger::Fence;
use crate::lock::{LockGuard, NGINX_LOCK};

/// A queue entry waiting to be deployed.
#[derive(Debug)]
pub(super) struct Pending {
    pub entry: String,
    pub req: DeployRequest,
}

/// What to do with a queue entry once its run is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Recorded in a final state: remove it from the queue.
    Complete,
    /// Stopped before a final state (shutdown, lost lock): leave it queued to be redone.
    Keep,
    /// Its outcome could not be recorded (ledger busy or down): leave it queued and try again
    /// after a pause; this counts towards quarantine.
    Retry,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum StepError {
    #[error("{0}")]
    Git(#[from] GitError),
    #[error("{0}")]
    Process(#[from] ProcessError),
    #[error("{0}")]
    Sites(#[from] SiteError),
    #[error("stopped before the nginx lock was free")]
    Cancelled,
    #[error("fenced out: another holder took the deployment's lock")]
    Fenced,
    #[error("lost the nginx lock while publishing sites")]
    NginxLockLost,
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("the deployment's timeout of {0:?} ran out")]
    OutOfTime(Duration),
    #[error("{0}")]
    Release(#[from] ReleaseError),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
}

pub(super) fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// `20261129T053300Z-3f9a1c`: sorts by start time, and the random tail keeps two runs started
/// in the same second (by two processes, or for superseded pushes) apart.
pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let mut tail = [0u8; 3];
    getrandom::fill(&mut tail).expect("the OS random source");
    format!("{stamp}-{}", hex::encode(tail))
}

/// The one-line error kept in the ledger and sent to GitHub.
fn one_line(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    let line = s.lines().next().unwrap_or_default();
    line.chars().take(500).collect()
}

/// The run in progress once a commit is chosen.
pub(super) struct Attempt<'a> {
    pub id: &'a str,
    pub repo: &'a Repo,
    pub log: &'a Arc<RunLog>,
    pub started: i64,
    /// The deployment's timeout, counted from the run's start.
    pub deadline: Instant,
    pub cancel: &'a CancellationToken,
    /// Our fencing token for the deployment's lock.
    pub fence: &'a Fence,
    /// The deployment's lock.
    pub lock: &'a LockGuard,
}

/// [`sites::Holder`] for an attempt.
struct Holds<'a, 'b> {
    attempt: &'a Attempt<'b>,
    ledger: &'a crate::ledger::Ledger,
}

impl sites::Holder for Holds<'_, '_> {
    fn still_ours(&self) -> impl std::future::Future<Output = bool> + Send {
        self.attempt.still_ours(self.ledger)
    }
}

impl Attempt<'_> {
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Is the deployment still ours, asked now: the lock in its store and the latest fencing
    /// token in the ledger? An error counts as no (nothing is published that cannot be
    /// vouched for).
    pub async fn still_ours(&self, ledger: &crate::ledger::Ledger) -> bool {
        match self.lock.verify().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("the deployment's lock is another holder's now");
                return false;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check the deployment's lock");
                return false;
            }
        }
        match ledger.fence_holds(self.fence).await {
            Ok(holds) => holds,
            Err(e) => {
                tracing::error!(error = %e, "cannot check the fencing token");
                false
            }
        }
    }
}

impl Worker {
    /// Runs `pending` (in arrival order) as one run. Returns what to do with each entry.
    pub(super) async fn execute(
        &self,
        pending: Vec<Pending>,
        cancel: &CancellationToken,
        fence: &Fence,
        lock: &LockGuard,
    ) -> Vec<(String, Disposition)> {
        let run_id = new_run_id();
        let span = tracing::info_span!(
            "run",
            deployment = %self.deployment.name,
            run = %run_id,
            sha = tracing::field::Empty
        );
        self.execute_run(run_id, pending, cancel, fence, lock)
            .instrument(span)
            .await
    }

    async fn execute_run(
        &self,
        run_id: String,
        pending: Vec<Pending>,
        cancel: &CancellationToken,
        fence: &Fence,
        lock: &LockGuard,
    ) -> Vec<(String, Disposition)> {
        let d = &self.deployment;
        let started = now_ms();
        // `check` bounds timeouts; checked anyway, so that no value can overflow the clock.
        let deadline = Instant::now()
            .checked_add(d.timeout)
            .unwrap_or_else(|| Instant::now() + crate::config::MAX_TIMEOUT);
        let log_path = self
            .config
            .logs_dir()
            .join(&d.name)
            .join(format!("{run_id}.log"));
        let secrets = std::iter::once(self.config.github.webhook_secret.clone())
            .chain(self.config.github.token.clone());
        let log = match RunLog::create(log_path.clone()) {
            Ok(log) => Arc::new(log.redacting(secrets)),
            Err(e) => {
                let error = format!("cannot create the run log {}: {e}", log_path.display());
                tracing::error!("{error}");
                return self.fail_all(&pending, &run_id, None, &error).await;
            }
        };
        log.line(&format!(
            "run {run_id} of {}: {} push(es) waiting",
            d.name,
            pending.len()
        ));
        let repo = match release::fetch_repo(d) {
            Ok(repo) => repo.with_pgid_file(process::pgid_file(&self.config.state_dir, &d.name)),
            Err(e) => {
                let error = one_line(&e);
                log.line(&error);
                return self.fail_all(&pending, &run_id, Some(&log), &error).await;
            }
        };
        let attempt = Attempt {
            id: &run_id,
            repo: &repo,
            log: &log,
            started,
            deadline,
            cancel,
            fence,
            lock,
        };
        // A rollback comes alone (see `handle_batch`) and needs no fetch: the release is here.
        if let [p] = pending.as_slice()
            && p.req.source == ROLLBACK_SOURCE
        {
            let disposition = self.deploy(&attempt, p, &p.req.sha, None).await;
            return vec![(p.entry.clone(), disposition)];
        }

        // Fetch first: coalescing needs the pushed commits' history.
        let mut backoff = Backoff::transient();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match repo
                .clone_or_fetch(&d.remote, &d.branch, &log, cancel, remaining)
                .await
            {
                Ok(()) => break,
                Err(_) if cancel.is_cancelled() => return keep_all(&pending, &log),
                Err(e) => match backoff.next().filter(|_| e.is_transient()) {
                    Some(wait) => {
                        log.line(&format!("fetch failed; retrying in {wait:?}"));
                        tracing::warn!(error = %e, "fetch failed; retrying");
                        tokio::select! {
                            () = cancel.cancelled() => return keep_all(&pending, &log),
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                    None => {
                        let error = one_line(&e);
                        return self.fail_all(&pending, &run_id, Some(&log), &error).await;
                    }
                },
            }
        }

        let head = match repo.remote_head(&d.branch).await {
            Ok(Some(head)) => head,
            Ok(None) => {
                let error = format!("branch {} is not on the remote", d.branch);
                log.line(&error);
                return self.fail_all(&pending, &run_id, Some(&log), &error).await;
            }
            Err(e) => {
                let error = one_line(&e);
                return self.fail_all(&pending, &run_id, Some(&log), &error).await;
            }
        };
        log.line(&format!("branch {} is at {head}", d.branch));

        let mut out = Vec::new();
        let mut present = Vec::new();
        // Whether a recorded push points at this log (then it stays even if nothing deploys).
        let mut log_referenced = false;
        for p in pending {
            if !p.req.pinned {
                present.push(p);
                continue;
            }
            // A pinned commit need not be on the branch: fetch it by id if it is not here.
            let remaining = deadline.saturating_duration_since(Instant::now());
            match repo
                .ensure_commit(&p.req.sha, &log, cancel, remaining)
                .await
            {
                Ok(()) => present.push(p),
                Err(_) if cancel.is_cancelled() => {
                    out.push((p.entry, Disposition::Keep));
                }
                Err(e) => {
                    let error = one_line(&e);
                    log.line(&format!("push {} ({}): {error}", p.req.delivery, p.req.sha));
                    let disposition = self
                        .record_final(
                            &p,
                            &new_run_id(),
                            RunStatus::Failed,
                            Some(&log_path),
                            &error,
                        )
                        .await;
                    log_referenced = true;
                    out.push((p.entry, disposition));
                }
            }
        }

        let deployed = match self.ledger.deployed_sha(&d.name).await {
            Ok(deployed) => deployed,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the deployed commit; will retry");
                log.line(&format!("ledger unavailable ({e}); the pushes stay queued"));
                out.extend(present.into_iter().map(|p| (p.entry, Disposition::Retry)));
                return out;
            }
        };
        // "Already deployed" needs the working tree to be at that commit too: a failed run
        // leaves the tree at the commit it checked out, which may since have left the branch.
        let deployed_here = match &deployed {
            Some(sha) => match release::live_commit(d, &repo).await {
                Ok(Some(tree)) if tree == *sha => Some(sha.clone()),
                Ok(tree) => {
                    log.line(&format!(
                        "the working tree is at {}, not at the deployed commit {sha}: deploying again",
                        tree.as_deref().unwrap_or("no commit")
                    ));
                    None
                }
                Err(e) => {
                    log.line(&format!(
                        "cannot read the working tree's HEAD ({e}): deploying again"
                    ));
                    None
                }
            },
            None => None,
        };
        let candidates: Vec<Candidate> = present
            .iter()
            .map(|p| Candidate {
                sha: p.req.sha.clone(),
                pinned: p.req.pinned,
                forced: p.req.source == "cli" && !p.req.pinned,
            })
            .collect();
        let plan = match coalesce::plan(&repo, &candidates, &head, deployed_here.as_deref()).await {
            Ok(plan) => plan,
            Err(e) => {
                let error = one_line(&e);
                let mut failed = self.fail_all(&present, &run_id, Some(&log), &error).await;
                out.append(&mut failed);
                return out;
            }
        };
        let target = plan.target.clone();
        let mut chosen = None;
        for (p, decision) in present.into_iter().zip(plan.decisions) {
            let (status, error) = match decision {
                Decision::Deploy => {
                    chosen = Some(p);
                    continue;
                }
                Decision::Stale(reason) => (RunStatus::Stale, reason),
                Decision::Superseded => (
                    RunStatus::Superseded,
                    format!("superseded by {}", target.as_deref().unwrap_or("?")),
                ),
            };
            log.line(&format!(
                "push {} ({}): {status}: {error}",
                p.req.delivery, p.req.sha
            ));
            let disposition = self
                .record_final(&p, &new_run_id(), status, None, &error)
                .await;
            out.push((p.entry, disposition));
        }
        let (Some(chosen), Some(target)) = (chosen, target) else {
            log.line("nothing to deploy");
            // A log that no record points at would only confuse `logs`.
            if !log_referenced {
                let _ = std::fs::remove_file(&log_path);
            }
            return out;
        };
        let disposition = self
            .deploy(&attempt, &chosen, &target, deployed.as_deref())
            .await;
        out.push((chosen.entry, disposition));
        out
    }

    async fn deploy(
        &self,
        a: &Attempt<'_>,
        p: &Pending,
        sha: &str,
        deployed: Option<&str>,
    ) -> Disposition {
        let (run_id, log, started, cancel) = (a.id, a.log, a.started, a.cancel);
        let d = &self.deployment;
        tracing::Span::current().record("sha", sha);
        let run = Run {
            id: run_id.to_owned(),
            deployment: d.name.clone(),
            delivery: p.req.delivery.clone(),
            sha: sha.to_owned(),
            source: source_of(p),
            status: RunStatus::Running,
            started_at: started,
            finished_at: None,
            log_path: Some(log.path().to_string_lossy().into_owned()),
            error: None,
            entry: Some(p.entry.clone()),
        };
        if let Err(e) = self.ledger.insert_run(&run).await {
            tracing::error!(error = %e, "cannot record the run; the push stays queued");
            log.line(&format!("ledger unavailable ({e}); the push stays queued"));
            return Disposition::Retry;
        }
        tracing::info!(delivery = %p.req.delivery, "deploying");
        log.line(&format!(
            "deploying {sha} of {} {} (delivery {} of {}, from {})",
            d.repository,
            d.branch,
            p.req.delivery,
            p.req.sha,
            source_of(p)
        ));
        let rollback = p.req.source == ROLLBACK_SOURCE;
        let doing = if rollback {
            "Rolling back"
        } else {
            "Deploying"
        };
        self.report(sha, run_id, CommitState::Pending, doing).await;

        let result = self.steps(a, p, sha, deployed).await;
        let finished = now_ms();
        let (mut status, mut error) = match &result {
            Ok(()) => (RunStatus::Success, None),
            Err(_) if cancel.is_cancelled() => (
                RunStatus::Cancelled,
                Some(
                    "stopped (shutdown or lost lock); the push stays queued and is redone"
                        .to_owned(),
                ),
            ),
            Err(StepError::Fenced) => (
                RunStatus::Cancelled,
                Some(
                    "another holder took the deployment's lock; this run stopped before publishing"
                        .to_owned(),
                ),
            ),
            Err(e) => (RunStatus::Failed, Some(one_line(e))),
        };
        let secs = (finished - started) / 1000;
        // Every outcome is written only while our fencing token is the latest and the run is
        // still `running`: a process that lost its lock records nothing (the new holder closes
        // this run as `cancelled` and owns the entry) and leaves the entry alone.
        let recorded = match self
            .ledger
            .finish_run_fenced(run_id, status, finished, error.as_deref(), a.fence)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                status = RunStatus::Cancelled;
                error = Some(
                    "another holder took the deployment's lock during this run; nothing recorded, the entry is left to it"
                        .to_owned(),
                );
                tracing::error!("fenced out: another process holds the deployment's lock");
                Ok(())
            }
            Err(e) => Err(e),
        };
        log.line(&match &error {
            None => format!("run {run_id}: success in {secs}s"),
            Some(e) => format!("run {run_id}: {status}: {e}"),
        });
        if let Err(e) = recorded {
            // Unrecorded, the run is redone from the queue (closed as cancelled first): safer
            // than losing it.
            tracing::error!(error = %e, "cannot record the run's end; the push stays queued");
            return Disposition::Retry;
        }
        match status {
            RunStatus::Success => {
                tracing::info!(seconds = secs, "deployed");
                self.report(
                    sha,
                    run_id,
                    CommitState::Success,
                    &if rollback {
                        format!("Rolled back to this commit in {secs}s")
                    } else {
                        format!("Deployed in {secs}s")
                    },
                )
                .await;
                super::check_restart_request(&self.config, &self.deployment, log);
                Disposition::Complete
            }
            RunStatus::Cancelled => {
                tracing::warn!("run stopped; the push stays queued");
                Disposition::Keep
            }
            _ => {
                let e = error.unwrap_or_default();
                tracing::warn!(error = %e, "run failed");
                self.report(sha, run_id, CommitState::Failure, &e).await;
                Disposition::Complete
            }
        }
    }

    async fn steps(
        &self,
        a: &Attempt<'_>,
        p: &Pending,
        sha: &str,
        deployed: Option<&str>,
    ) -> Result<(), StepError> {
        if p.req.source == ROLLBACK_SOURCE {
            return self.rollback_steps(a, p, sha).await;
        }
        let d = &self.deployment;
        if d.layout == Layout::Releases {
            return self.release_steps(a, p, sha, deployed).await;
        }
        let (repo, log, cancel) = (a.repo, a.log, a.cancel);
        repo.checkout(sha, log, cancel, a.remaining()).await?;
        let changed = self.changed_since(repo, deployed, sha, log).await?;
        let env = self.command_env(p, sha)?;
        self.run_commands(a, &d.commands, &d.path, &env).await?;
        self.run_commands(a, &d.restart, &d.path, &env).await?;
        self.publish_sites(a, d, changed.as_deref()).await
    }

    /// The environment of a deployment's commands, built from nothing (see `sandbox::command_env`),
    /// with their home made ready.
    pub(super) fn command_env(
        &self,
        p: &Pending,
        sha: &str,
    ) -> Result<Vec<(String, String)>, StepError> {
        let d = &self.deployment;
        let home = sandbox::home(&self.config, d);
        sandbox::ensure_home(&home)?;
        let mut deploy_vars: Vec<(String, String)> = vec![
            ("DEPLOY_NAME".into(), d.name.clone()),
            ("DEPLOY_SHA".into(), sha.to_owned()),
            ("DEPLOY_REF".into(), format!("refs/heads/{}", d.branch)),
            ("DEPLOY_DELIVERY".into(), p.req.delivery.clone()),
        ];
        if d.self_update {
            let file = super::restart_file(&self.config, d);
            deploy_vars.push((
                "DEPLOY_RESTART_FILE".into(),
                file.to_string_lossy().into_owned(),
            ));
        }
        Ok(sandbox::command_env(d, &home, &deploy_vars))
    }

    /// Runs `specs` in order in `cwd` (the working tree, or a release), each within what is left
    /// of the deployment's timeout, in the sandbox unless the deployment turned it off.
    pub(super) async fn run_commands(
        &self,
        a: &Attempt<'_>,
        specs: &[CommandSpec],
        cwd: &std::path::Path,
        env: &[(String, String)],
    ) -> Result<(), StepError> {
        let d = &self.deployment;
        if specs.is_empty() {
            return Ok(());
        }
        let prefix = if d.sandbox {
            if let Err(why) = sandbox::availability() {
                a.log
                    .line(&format!("! the build sandbox is unavailable: {why}"));
                return Err(SandboxError::Unavailable(why.to_owned()).into());
            }
            let home = sandbox::home(&self.config, d);
            sandbox::bwrap_prefix(&self.config, d, &home, cwd)
        } else {
            a.log.line("sandbox = false: the commands run unsandboxed");
            Vec::new()
        };
        let pgid_file = process::pgid_file(&self.config.state_dir, &d.name);
        for spec in specs {
            let left = a.remaining();
            if left.is_zero() {
                return Err(StepError::OutOfTime(d.timeout));
            }
            let timeout = spec.timeout.map_or(left, |t| t.min(left));
            process::run_confined(
                Spawn {
                    argv: &spec.argv,
                    cwd,
                    env,
                    timeout,
                    pgid_file: Some(&pgid_file),
                },
                Confinement { prefix: &prefix },
                a.log,
                a.cancel,
                "the deployer is shutting down or lost its lock",
            )
            .await?;
        }
        Ok(())
    }

    /// Publishes `d`'s sites, their confs read under `d.path`.
    pub(super) async fn publish_sites(
        &self,
        a: &Attempt<'_>,
        d: &Deployment,
        changed: Option<&[PathBuf]>,
    ) -> Result<(), StepError> {
        let (log, cancel) = (a.log, a.cancel);
        if !d.sites.is_empty() {
            log.line("publishing nginx sites");
            let Some(lock) = self.locks.acquire(NGINX_LOCK, cancel).await else {
                return Err(StepError::Cancelled);
            };
            // Sites are published only by the holder of the deployment's lock and latest
            // fencing token, checked right before each helper request, and only while the
            // nginx lock holds.
            if !a.still_ours(&self.ledger).await || cancel.is_cancelled() {
                lock.release().await;
                return Err(StepError::Fenced);
            }
            let holds = Holds {
                attempt: a,
                ledger: &self.ledger,
            };
            let nginx_lost = lock.lost();
            let published = tokio::select! {
                r = sites::publish(
                    &self.helper,
                    d,
                    &self.config.state_dir,
                    changed,
                    log,
                    &holds,
                ) => r.map_err(|e| match e {
                    SiteError::Fenced => StepError::Fenced,
                    e => StepError::from(e),
                }),
                () = nginx_lost.cancelled() => Err(StepError::NginxLockLost),
                () = cancel.cancelled() => Err(StepError::Cancelled),
            };
            lock.release().await;
            published?;
        }
        Ok(())
    }

    /// Records one push in a final state without a run of its own. The entry may leave the
    /// queue only if this (or an earlier) terminal record is in the ledger.
    async fn record_final(
        &self,
        p: &Pending,
        id: &str,
        status: RunStatus,
        log_path: Option<&PathBuf>,
        error: &str,
    ) -> Disposition {
        let now = now_ms();
        let run = Run {
            id: id.to_owned(),
            deployment: self.deployment.name.clone(),
            delivery: p.req.delivery.clone(),
            sha: p.req.sha.clone(),
            source: source_of(p),
            status,
            started_at: now,
            finished_at: Some(now),
            log_path: log_path.map(|l| l.to_string_lossy().into_owned()),
            error: Some(error.to_owned()),
            entry: Some(p.entry.clone()),
        };
        super::record_outcome(&self.ledger, &run).await
    }

    /// Fails every push of a run that broke before one was chosen (fetch, history): each gets a
    /// failed record sharing the run's log, so a redelivery of any of them queues it again.
    async fn fail_all(
        &self,
        pending: &[Pending],
        run_id: &str,
        log: Option<&RunLog>,
        error: &str,
    ) -> Vec<(String, Disposition)> {
        let log_path = log.map(|l| l.path().to_path_buf());
        let log_path = log_path.as_ref();
        tracing::warn!(error, "run failed before a commit was chosen");
        let mut out = Vec::new();
        let mut reported = false;
        for (i, p) in pending.iter().enumerate() {
            let id = if i + 1 == pending.len() {
                run_id.to_owned()
            } else {
                new_run_id()
            };
            let disposition = self
                .record_final(p, &id, RunStatus::Failed, log_path, error)
                .await;
            if disposition != Disposition::Complete
                && let Some(log) = log
            {
                log.line(&format!(
                    "push {} ({}): cannot record its failure; it stays queued and is retried",
                    p.req.delivery, p.req.sha
                ));
            }
            reported |= disposition == Disposition::Complete;
            out.push((p.entry.clone(), disposition));
        }
        if let Some(last) = pending.last().filter(|_| reported) {
            self.report(&last.req.sha, run_id, CommitState::Failure, error)
                .await;
        }
        out
    }

    /// Posts a commit status; a failure is logged and changes nothing else.
    async fn report(&self, sha: &str, run_id: &str, state: CommitState, description: &str) {
        let Some(github) = &self.github else {
            return;
        };
        let d = &self.deployment;
        if let Err(e) = github
            .post(&d.repository, sha, &d.name, run_id, state, description)
            .await
        {
            tracing::warn!(error = %e, ?state, "cannot report the commit status to GitHub");
        }
    }
}

/// The `source` a run row records: `pinned` for `deploy NAME --sha X`.
fn source_of(p: &Pending) -> String {
    if p.req.pinned {
        "pinned".to_owned()
    } else {
        p.req.source.clone()
    }
}

fn keep_all(pending: &[Pending], log: &RunLog) -> Vec<(String, Disposition)> {
    log.line("stopped before a commit was chosen; the pushes stay queued");
    pending
        .iter()
        .map(|p| (p.entry.clone(), Disposition::Keep))
        .collect()
}
