//! The command-line interface. Each subcommand lives in its own file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

mod check;
mod deploy;
mod exposure;
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

/// The commit `deployment`'s branch points at on its remote (`git ls-remote`), as GitHub would
/// report it in a push.
fn remote_branch_head(deployment: &crate::config::Deployment) -> anyhow::Result<String> {
    use anyhow::Context;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(crate::worker::ls_remote_head(
            &deployment.remote,
            &deployment.branch,
        ))
        .with_context(|| format!("asking {} for {}", deployment.remote, deployment.branch))?
        .with_context(|| {
            format!(
                "{} has no branch `{}`: pass --sha",
                deployment.remote, deployment.branch
            )
        })
}

/// Logs to stderr (the journal under systemd), colours only on a terminal; `RUST_LOG` filters.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// SIGTERM or SIGINT, whichever comes first.
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Prints `rows` under `header` in left-aligned columns (the last one unpadded).
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    print!("{}", format_table(header, rows));
}

fn format_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align_on_the_widest_cell() {
        let rows = [
            ["durhack".to_owned(), "ok".to_owned(), "1".to_owned()],
            ["x".to_owned(), "superseded".to_owned(), "".to_owned()],
        ];
        assert_eq!(
            super::format_table(["NAME", "STATUS", "Q"], &rows),
            "NAME     STATUS      Q\ndurhack  ok          1\nx        superseded\n"
        );
    }
}
