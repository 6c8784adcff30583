//! `durhack-deployer runs NAME [--json] [--limit N]`: a deployment's past runs, newest first,
//! superseded and stale pushes included. Reads the ledger only (opened read-only).

use std::process::ExitCode;

use serde::Serialize;

use super::status::{shown_status, timestamp};
use crate::config::Config;
use crate::ledger::Ledger;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    /// The deployment.
    name: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// How many runs to show.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
}

#[derive(Debug, Serialize)]
struct Item {
    id: String,
    /// As `status` shows it: `interrupted` for a run left `running` by a daemon that is gone.
    status: String,
    sha: String,
    source: String,
    delivery: String,
    /// RFC 3339, UTC.
    started_at: String,
    finished_at: Option<String>,
    error: Option<String>,
    log_path: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    super::find_deployment(&config, &args.name)?;
    super::as_owner::become_state_owner(&config, super::as_owner::StateUse::ReadOnly)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let runs = runtime.block_on(async {
        let ledger = Ledger::open_read_only(&config.effective_database_url()).await?;
        ledger.runs_of(&args.name).await
    })?;
    let daemon_running = crate::presence::daemon_running(&config.state_dir);
    let items: Vec<Item> = runs
        .into_iter()
        .rev()
        .take(args.limit as usize)
        .map(|r| Item {
            status: shown_status(&r, daemon_running),
            id: r.id,
            sha: r.sha,
            source: r.source,
            delivery: r.delivery,
            started_at: timestamp(r.started_at),
            finished_at: r.finished_at.map(timestamp),
            error: r.error,
            log_path: r.log_path,
        })
        .collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&items)?);
    } else if items.is_empty() {
        outln!("{} has no runs yet", args.name);
    } else {
        let rows: Vec<[String; 6]> = items
            .iter()
            .map(|i| {
                [
                    i.started_at.clone(),
                    i.id.clone(),
                    i.status.clone(),
                    i.sha[..i.sha.len().min(12)].to_owned(),
                    i.source.clone(),
                    i.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        super::print_table(
            ["STARTED", "RUN", "STATUS", "SHA", "SOURCE", "ERROR"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}
