//! `durhack-deployer check`: validates the configuration (including that the secrets it names can
//! be read) without touching the database or the state directory.

use std::process::ExitCode;

use crate::config::{Config, ConfigError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&args.config.config) {
        Ok(c) => c,
        // Only a key's error lacks the file's name; the others start with it already.
        Err(e @ ConfigError::Invalid { .. }) => {
            eprintln!("{}: {e}", args.config.config.display());
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if config.deployments.is_empty() {
        eprintln!(
            "{}: no deployments: the daemon would have nothing to do. Add one as \
             [deployments.NAME] with repository, branch, path and commands (see README.md)",
            args.config.config.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let enabled = config.enabled_deployments().count();
    outln!(
        "{}: ok: listen {}, state {}, ledger {}, {} deployment(s), {enabled} enabled",
        args.config.config.display(),
        config.listen,
        config.state_dir.display(),
        match &config.database_url {
            None => "SQLite in the state directory",
            Some(u) if u.starts_with("sqlite:") => "SQLite",
            Some(_) => "PostgreSQL",
        },
        config.deployments.len(),
    );
    for d in config.deployments.values() {
        outln!(
            "  {}: {} {} -> {}{}",
            d.name,
            d.repository,
            d.branch,
            d.path.display(),
            if d.enabled { "" } else { " (disabled)" }
        );
    }
    match crate::worker::sandbox::availability() {
        Ok(()) => println!("  build sandbox: available (bubblewrap)"),
        Err(why) => println!("  build sandbox: UNAVAILABLE: {why}"),
    }
    for warning in super::exposure::warnings(&config) {
        println!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}
