//! `durhack-deployer logs NAME [--run ID] [--follow]`: print a run's log (the latest run's by
//! default); with `--follow`, keep printing as the run writes until it ends.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::ledger::Ledger;
use crate::worker::RunStatus;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    /// The deployment.
    name: String,
    /// The run [default: the latest].
    #[arg(long)]
    run: Option<String>,
    /// Keep printing new lines until the run ends.
    #[arg(long, short)]
    follow: bool,
}

const POLL: Duration = Duration::from_millis(200);

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    super::find_deployment(&config, &args.name)?;
    super::as_owner::become_state_owner(&config, super::as_owner::StateUse::ReadOnly)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(show(&config, &args))
}

async fn show(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    let dir = config.logs_dir().join(&args.name);
    // Without a ledger the logs directory still says which runs there were.
    let (ledger, no_ledger) = match Ledger::open_read_only(&config.effective_database_url()).await {
        Ok(l) => (Some(l), None),
        Err(e) => (None, Some(e)),
    };
    let run_id = match &args.run {
        Some(id) => {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                bail!("`{id}` is not a run id");
            }
            id.clone()
        }
        None => match latest_run(ledger.as_ref(), &args.name, &dir).await {
            Ok(id) => id,
            Err(e) => return Err(no_ledger.map_or(e, anyhow::Error::from)),
        },
    };
    let path: PathBuf = dir.join(format!("{run_id}.log"));
    let mut file = std::fs::File::open(&path).with_context(|| {
        format!(
            "run {run_id} of {}: no log at {}",
            args.name,
            path.display()
        )
    })?;
    let mut stdout = std::io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        file.read_to_end(&mut buf)?;
        if let Err(e) = stdout.write_all(&buf).and_then(|()| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        let running = match &ledger {
            Some(l) => l
                .run(&run_id)
                .await
                .ok()
                .flatten()
                .is_none_or(|r| r.status == RunStatus::Running),
            None => true,
        };
        if !running {
            // One last read: lines written between the read above and the run's end.
            buf.clear();
            file.read_to_end(&mut buf)?;
            let _ = stdout.write_all(&buf).and_then(|()| stdout.flush());
            return Ok(ExitCode::SUCCESS);
        }
        // The next read_to_end goes on from where this one stopped: only appended lines.
        tokio::time::sleep(POLL).await;
    }
}

/// The latest run with a log: from the ledger, or else the newest file (run ids sort by time).
async fn latest_run(
    ledger: Option<&Ledger>,
    name: &str,
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    if let Some(l) = ledger
        && let Ok(runs) = l.recent_runs(name, 1).await
        && let Some(run) = runs.into_iter().next()
    {
        return Ok(run.id);
    }
    let newest = std::fs::read_dir(dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".log")
                .map(str::to_owned)
        })
        .max();
    newest.with_context(|| format!("`{name}` has no runs yet"))
}
