//! `durhack-deployer status [--json]`: each deployment's deployed commit, last run and queue.

use std::process::ExitCode;

use serde::Serialize;

use crate::config::Config;
use crate::dispatch::deploy_queue_dir;
use crate::ledger::Ledger;
use crate::queue::Queue;
use crate::worker::Run;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Status {
    name: String,
    repository: String,
    branch: String,
    enabled: bool,
    /// `null` before the first successful deploy.
    deployed_sha: Option<String>,
    last_run: Option<LastRun>,
    queued: usize,
    /// What the last reconcile pass saw; `null` before the first pass.
    reconcile: Option<Reconcile>,
}

#[derive(Debug, Serialize)]
struct Reconcile {
    /// The remote branch head; `null` when the branch was missing or unreadable.
    remote_head: Option<String>,
    checked_at: String,
    /// Is the remote head the deployed commit?
    deployed: bool,
    /// What the pass did: deployed, queued, busy, attempted, claimed, missing or error.
    action: String,
    note: String,
}

#[derive(Debug, Serialize)]
struct LastRun {
    id: String,
    status: String,
    sha: String,
    /// webhook, cli, reconcile or pinned.
    source: String,
    started_at: String,
    finished_at: Option<String>,
    error: Option<String>,
    log_path: Option<String>,
}

/// RFC 3339, UTC, to the millisecond.
pub(super) fn timestamp(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

impl From<Run> for LastRun {
    fn from(r: Run) -> Self {
        Self {
            id: r.id,
            status: r.status.to_string(),
            sha: r.sha,
            source: r.source,
            started_at: timestamp(r.started_at),
            finished_at: r.finished_at.map(timestamp),
            error: r.error,
            log_path: r.log_path,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    super::as_owner::become_state_owner(&config, super::as_owner::StateUse::ReadOnly)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let statuses = runtime.block_on(collect(&config))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&statuses)?);
    } else {
        print_table(&statuses);
    }
    Ok(ExitCode::SUCCESS)
}

/// What `status` shows for a run recorded `running` whose daemon is gone: the daemon stopped (or
/// died) during the run, and the next start closes it as cancelled and redoes it.
pub(super) const INTERRUPTED: &str = "interrupted";

/// A run's status as shown: `running` only while a daemon runs here to run it.
pub(super) fn shown_status(run: &Run, daemon_running: bool) -> String {
    if run.status == crate::worker::RunStatus::Running && !daemon_running {
        INTERRUPTED.to_owned()
    } else {
        run.status.to_string()
    }
}

async fn collect(config: &Config) -> anyhow::Result<Vec<Status>> {
    let ledger = Ledger::open_read_only(&config.effective_database_url()).await?;
    let daemon_running = crate::presence::daemon_running(&config.state_dir);
    let mut out = Vec::new();
    for d in config.deployments.values() {
        let dir = deploy_queue_dir(config, &d.name);
        // Not Queue::open for a missing queue: a status query creates nothing.
        let queued = if dir.is_dir() {
            Queue::open(dir)?.list()?.len()
        } else {
            0
        };
        let deployed_sha = ledger.deployed_sha(&d.name).await?;
        // A ledger from before issue 14's migration has no reconcile state: shown as none.
        let reconcile = ledger
            .reconcile_state(&d.name)
            .await
            .ok()
            .flatten()
            .map(|s| Reconcile {
                deployed: s.remote_head.is_some() && s.remote_head == deployed_sha,
                remote_head: s.remote_head,
                checked_at: timestamp(s.checked_at),
                action: s.action,
                note: s.note,
            });
        out.push(Status {
            name: d.name.clone(),
            repository: d.repository.clone(),
            branch: d.branch.clone(),
            enabled: d.enabled,
            deployed_sha,
            last_run: ledger
                .recent_runs(&d.name, 1)
                .await?
                .into_iter()
                .next()
                .map(|run| LastRun {
                    status: shown_status(&run, daemon_running),
                    ..LastRun::from(run)
                }),
            queued,
            reconcile,
        });
    }
    Ok(out)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn print_table(statuses: &[Status]) {
    let rows: Vec<[String; 7]> = statuses
        .iter()
        .map(|s| {
            let last = s.last_run.as_ref().map_or_else(
                || "-".to_owned(),
                |r| {
                    format!(
                        "{} {} {} from {} ({})",
                        r.status,
                        short(&r.sha),
                        r.started_at,
                        r.source,
                        r.id
                    )
                },
            );
            let remote = s.reconcile.as_ref().map_or_else(
                || "-".to_owned(),
                |r| {
                    let state = if r.deployed {
                        "deployed".to_owned()
                    } else {
                        format!("not deployed, {}", r.action)
                    };
                    format!(
                        "{} ({state}) at {}",
                        r.remote_head.as_deref().map_or("?", short),
                        r.checked_at
                    )
                },
            );
            [
                if s.enabled {
                    s.name.clone()
                } else {
                    format!("{} (disabled)", s.name)
                },
                s.repository.clone(),
                s.branch.clone(),
                s.deployed_sha.as_deref().map_or("-", short).to_owned(),
                last,
                s.queued.to_string(),
                remote,
            ]
        })
        .collect();
    super::print_table(
        [
            "NAME",
            "REPOSITORY",
            "BRANCH",
            "DEPLOYED",
            "LAST RUN",
            "QUEUED",
            "REMOTE HEAD (LAST RECONCILE)",
        ],
        &rows,
    );
}
