//! `durhack-deployer migrate`: applies pending schema migrations (the daemon also does this on
//! start; this is for upgrades done ahead of a restart).

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::ledger::Ledger;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let state_use = if config.database_url.is_none() {
        super::as_owner::StateUse::Writes
    } else {
        super::as_owner::StateUse::ReadOnly
    };
    super::as_owner::become_state_owner(&config, state_use)?;
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ledger = Ledger::connect(&config.effective_database_url()).await?;
        ledger.migrate().await
    })?;
    outln!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
