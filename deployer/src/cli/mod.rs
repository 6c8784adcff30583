//! The command-line interface. Each subcommand lives in its own file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

mod check;
mod deploy;
mod history;
mod logs;
mod migrate;
mod quickstart;
mod send_test_push;
mod serve;
mod status;

#[derive(Debug, Parser)]
#[command(
    name = "durhack-deployer",
    version,
    about = "Continuous deployment from GitHub webhooks"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "DURHACK_DEPLOYER_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: HTTP endpoint, dispatcher and workers.
    Serve(serve::Args),
    /// Validate the configuration; exit 1 naming the key and the reason.
    Check(check::Args),
    /// Apply pending database migrations and exit.
    Migrate(migrate::Args),
    /// Show received deliveries, newest first.
    History(history::Args),
    /// Queue a deploy of a deployment's branch head or of a given commit.
    Deploy(deploy::Args),
    /// Show each deployment's deployed commit, last run and queue.
    Status(status::Args),
    /// Print (or follow) a run's log.
    Logs(logs::Args),
    /// Try it locally: a demo repository and deployment on embedded defaults, no root.
    Quickstart(quickstart::Args),
    /// Sign and send a realistic push webhook to a running instance.
    SendTestPush(send_test_push::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Check(a) => check::run(a),
        Command::Migrate(a) => migrate::run(a),
        Command::History(a) => history::run(a),
        Command::Deploy(a) => deploy::run(a),
        Command::Status(a) => status::run(a),
        Command::Logs(a) => logs::run(a),
        Command::Quickstart(a) => quickstart::run(a),
        Command::SendTestPush(a) => send_test_push::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("durhack-deployer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
