//! `durhack-deployer rollback NAME [--to RUN]`: switch a releases-layout deployment's `current`
//! back to a kept release (by default the one before the live one), through the deployment's
//! queue like any deploy, so it runs under the same lock and fencing. Nothing is built: the
//! worker switches the link, runs the restart commands and republishes that release's sites,
//! and records a run with source `rollback`. The next push deploys forward as usual.

use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::config::{Config, Layout};
use crate::dispatch::{DeployRequest, deploy_queue_dir};
use crate::queue::Queue;
use crate::worker::{ROLLBACK_SOURCE, Releases, is_release_id};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    /// The deployment to roll back.
    name: String,
    /// The run whose release to go back to [default: the release before the live one].
    #[arg(long)]
    to: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let deployment = super::find_deployment(&config, &args.name)?;
    // As root (`sudo … rollback`), the queue entry must belong to the service's user.
    super::as_owner::become_state_owner(&config, super::as_owner::StateUse::Writes)?;
    if deployment.layout != Layout::Releases {
        bail!(
            "`{}` builds in place (layout = \"in-place\"): there is no kept release to go back to; \
             set layout = \"releases\" (see docs/releases.md) or deploy an older commit with \
             `deploy {} --sha COMMIT`",
            deployment.name,
            deployment.name
        );
    }
    let releases = Releases::new(&deployment.path);
    let current = releases.current();
    let target = match &args.to {
        Some(run) => {
            if !is_release_id(run) {
                bail!("--to must be a run id such as 20261129T053300Z-3f9a1c, not `{run}`");
            }
            releases.info(run).with_context(|| {
                format!(
                    "run {run} has no kept, complete release of `{}` (kept: {})",
                    deployment.name,
                    kept(&releases)
                )
            })?
        }
        None => {
            let current = current
                .as_deref()
                .with_context(|| format!("`{}` has no live release yet", deployment.name))?;
            releases.previous(current).with_context(|| {
                format!(
                    "`{}` has no kept release before the live one ({current})",
                    deployment.name
                )
            })?
        }
    };
    if current.as_deref() == Some(target.run.as_str()) {
        eprintln!(
            "note: release {} is live already; its restart commands and sites run again",
            target.run
        );
    }
    if !deployment.enabled {
        eprintln!(
            "note: `{}` is disabled (enabled = false); the rollback waits in its queue until it is enabled",
            deployment.name
        );
    }
    let now = time::OffsetDateTime::now_utc();
    let delivery = format!("rollback-{}", crate::worker::new_run_id());
    let request = DeployRequest {
        deployment: deployment.name.clone(),
        delivery: delivery.clone(),
        repository: deployment.repository.clone(),
        branch: deployment.branch.clone(),
        sha: target.sha.clone(),
        before: None,
        received_at_ms: i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        source: ROLLBACK_SOURCE.to_owned(),
        pinned: false,
        release: Some(target.run.clone()),
    };
    let queue = Queue::open(deploy_queue_dir(&config, &deployment.name))?;
    let entry = queue.push(&delivery, &serde_json::to_vec(&request)?)?;
    outln!(
        "queued rollback of {} to release {} ({}) ({entry})",
        deployment.name,
        target.run,
        target.sha
    );
    Ok(ExitCode::SUCCESS)
}

fn kept(releases: &Releases) -> String {
    let ids: Vec<String> = releases.complete().into_iter().map(|r| r.run).collect();
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    }
}
