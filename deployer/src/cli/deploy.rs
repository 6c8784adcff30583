//! `durhack-deployer deploy NAME [--sha SHA]`: queue a deploy of the branch head or of a given
//! commit, through the same queue as webhooks. Without `--sha` the worker deploys the branch head
//! as it is when the run starts, even if it is deployed already; with `--sha` it deploys exactly
//! that commit (a deliberate rollback, recorded with source `pinned`) until the next push.

use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::dispatch::{DeployRequest, deploy_queue_dir};
use crate::queue::Queue;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    /// The deployment to deploy.
    name: String,
    /// The full commit id to deploy [default: the branch head of the deployment's remote].
    #[arg(long)]
    sha: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let deployment = config.deployments.get(&args.name).with_context(|| {
        format!(
            "no deployment `{}` in {}",
            args.name,
            args.config.config.display()
        )
    })?;
    if !deployment.enabled {
        eprintln!(
            "note: `{}` is disabled (enabled = false); the deploy waits in its queue until it is enabled",
            deployment.name
        );
    }
    let pinned = args.sha.is_some();
    let sha = match args.sha {
        Some(sha) => {
            let sha = sha.to_ascii_lowercase();
            if !crate::worker::is_commit_id(&sha) {
                bail!("--sha must be a full commit id (40 or 64 hex digits), not `{sha}`");
            }
            sha
        }
        None => super::remote_branch_head(deployment)?,
    };
    let now = time::OffsetDateTime::now_utc();
    let delivery = format!("cli-{}", crate::worker::new_run_id());
    let request = DeployRequest {
        deployment: deployment.name.clone(),
        delivery: delivery.clone(),
        repository: deployment.repository.clone(),
        branch: deployment.branch.clone(),
        sha: sha.clone(),
        before: None,
        received_at_ms: i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        source: "cli".to_owned(),
        pinned,
        release: None,
    };
    let queue = Queue::open(deploy_queue_dir(&config, &deployment.name))?;
    let entry = queue.push(&delivery, &serde_json::to_vec(&request)?)?;
    println!("queued {sha} for {} ({entry})", deployment.name);
    Ok(ExitCode::SUCCESS)
}
