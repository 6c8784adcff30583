//! `durhack-deployer history [--json] [--limit N] [--redeliveries]`: received deliveries (and
//! reconcile requests, event `reconcile`), newest first, and what became of each; or, with
//! `--redeliveries`, the redeliveries asked of GitHub. Reads the ledger only, so it is safe
//! while the daemon runs.

use std::process::ExitCode;

use serde::Serialize;

use super::status::timestamp;
use crate::config::Config;
use crate::ledger::{DeliveryRecord, Ledger, RedeliveryRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// How many deliveries to show.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..))]
    limit: i64,
    /// Show the redeliveries asked of GitHub instead of the received deliveries.
    #[arg(long)]
    redeliveries: bool,
}

#[derive(Debug, Serialize)]
struct Redelivery {
    guid: String,
    repository: String,
    hook_id: String,
    github_delivery_id: i64,
    event: Option<String>,
    delivered_at: Option<String>,
    /// GitHub's words for the failed attempt.
    github_status: Option<String>,
    /// RFC 3339, UTC.
    requested_at: String,
    /// GitHub's answer to the request (`null`: none yet).
    status_code: Option<i64>,
    error: Option<String>,
}

impl From<RedeliveryRequest> for Redelivery {
    fn from(r: RedeliveryRequest) -> Self {
        Self {
            guid: r.guid,
            repository: r.repository,
            hook_id: r.hook_id,
            github_delivery_id: r.github_delivery_id,
            event: r.event,
            delivered_at: r.delivered_at,
            github_status: r.github_status,
            requested_at: timestamp(r.requested_at),
            status_code: r.status_code,
            error: r.error,
        }
    }
}

#[derive(Debug, Serialize)]
struct Item {
    delivery: String,
    event: String,
    /// RFC 3339, UTC.
    received_at: String,
    received_at_ms: i64,
    handled_at: String,
    /// routed, duplicate or ignored.
    outcome: &'static str,
    reason: String,
    deployments: Vec<String>,
    repository: Option<String>,
    branch: Option<String>,
    sha: Option<String>,
    hook_id: Option<String>,
    entry: String,
}

impl From<DeliveryRecord> for Item {
    fn from(r: DeliveryRecord) -> Self {
        Self {
            delivery: r.delivery,
            event: r.event,
            received_at: timestamp(r.received_at),
            received_at_ms: r.received_at,
            handled_at: timestamp(r.handled_at),
            outcome: r.outcome.as_str(),
            reason: r.reason,
            deployments: r.deployments,
            repository: r.repository,
            branch: r.branch,
            sha: r.sha,
            hook_id: r.hook_id,
            entry: r.entry,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    super::as_owner::become_state_owner(&config, super::as_owner::StateUse::ReadOnly)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.redeliveries {
        let requests = runtime.block_on(async {
            let ledger = Ledger::open_read_only(&config.effective_database_url()).await?;
            ledger.redelivery_history(args.limit).await
        })?;
        let items: Vec<Redelivery> = requests.into_iter().map(Redelivery::from).collect();
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&items)?);
        } else {
            print_redeliveries(&items);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let records = runtime.block_on(async {
        let ledger = Ledger::open_read_only(&config.effective_database_url()).await?;
        ledger.delivery_history(args.limit).await
    })?;
    let items: Vec<Item> = records.into_iter().map(Item::from).collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        print_table(&items);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(items: &[Item]) {
    if items.is_empty() {
        outln!("no deliveries yet");
        return;
    }
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|i| {
            [
                i.received_at.clone(),
                i.delivery.clone(),
                i.event.clone(),
                i.outcome.to_owned(),
                if i.deployments.is_empty() {
                    "-".to_owned()
                } else {
                    i.deployments.join(",")
                },
                i.reason.clone(),
            ]
        })
        .collect();
    super::print_table(
        [
            "RECEIVED",
            "DELIVERY",
            "EVENT",
            "OUTCOME",
            "DEPLOYMENTS",
            "REASON",
        ],
        &rows,
    );
}

fn print_redeliveries(items: &[Redelivery]) {
    if items.is_empty() {
        outln!("no redeliveries asked of GitHub yet");
        return;
    }
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|i| {
            [
                i.requested_at.clone(),
                i.guid.clone(),
                i.repository.clone(),
                i.event.clone().unwrap_or_default(),
                i.github_status.clone().unwrap_or_default(),
                match (i.status_code, &i.error) {
                    (_, Some(e)) => e.clone(),
                    (Some(code), None) => format!("asked (HTTP {code})"),
                    (None, None) => "asking".to_owned(),
                },
            ]
        })
        .collect();
    super::print_table(
        [
            "REQUESTED",
            "DELIVERY",
            "REPOSITORY",
            "EVENT",
            "FAILED WITH",
            "ANSWER",
        ],
        &rows,
    );
}
