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
    /// The commit to deploy: its full id, or at least 7 leading hex digits that name one commit
    /// in the deployment's working tree [default: the branch head of the deployment's remote].
    #[arg(long)]
    sha: Option<String>,
}

/// The shortest abbreviation `--sha` accepts (git's default abbreviation).
const MIN_SHORT_SHA: usize = 7;

/// The full commit id of the abbreviation `short`, from the deployment's working tree (the
/// commits it has fetched); unknown and ambiguous abbreviations are refused.
fn resolve_short_sha(
    deployment: &crate::config::Deployment,
    short: &str,
) -> anyhow::Result<String> {
    let path = &deployment.path;
    if !path.join(".git").exists() {
        bail!(
            "cannot resolve the short commit id `{short}`: {} has no checkout yet; pass the full \
             commit id",
            path.display()
        );
    }
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(path)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{short}^{{commit}}"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run git (is it installed?)")?;
    let full = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !crate::worker::is_commit_id(&full) {
        bail!(
            "`{short}` names no single commit in {} (unknown there, or ambiguous): pass more \
             digits or the full commit id",
            path.display()
        );
    }
    Ok(full)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let deployment = super::find_deployment(&config, &args.name)?;
    super::as_owner::become_state_owner(&config, super::as_owner::StateUse::Writes)?;
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
            if crate::worker::is_commit_id(&sha) {
                sha
            } else if (MIN_SHORT_SHA..40).contains(&sha.len())
                && sha.bytes().all(|b| b.is_ascii_hexdigit())
            {
                resolve_short_sha(deployment, &sha)?
            } else {
                bail!(
                    "--sha must be a commit id: {MIN_SHORT_SHA} to 40 (or 64) hex digits, not `{sha}`"
                );
            }
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
    outln!("queued {sha} for {} ({entry})", deployment.name);
    Ok(ExitCode::SUCCESS)
}
