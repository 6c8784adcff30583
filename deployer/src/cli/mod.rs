//! The command-line interface. Each subcommand lives in its own file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH, Deployment};

/// `println!` that ignores a closed stdout (`… | head -1`): a reader that stopped reading is no
/// reason to panic, nor to leave undone what the command was run for.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod as_owner;
mod check;
mod deploy;
mod exposure;
mod history;
mod logs;
mod migrate;
mod migrate_from_python;
mod quickstart;
mod rollback;
mod runs;
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
    /// Switch a releases-layout deployment back to a kept release, without building.
    Rollback(rollback::Args),
    /// Show each deployment's deployed commit, last run and queue.
    Status(status::Args),
    /// Print (or follow) a run's log.
    Logs(logs::Args),
    /// List a deployment's past runs, newest first.
    Runs(runs::Args),
    /// Try it locally: a demo repository and deployment on embedded defaults, no root.
    Quickstart(quickstart::Args),
    /// Sign and send a realistic push webhook to a running instance.
    SendTestPush(send_test_push::Args),
    /// Print the config and helper policy for the Python deployer's `config/*.toml`.
    MigrateFromPython(migrate_from_python::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Check(a) => check::run(a),
        Command::Migrate(a) => migrate::run(a),
        Command::History(a) => history::run(a),
        Command::Deploy(a) => deploy::run(a),
        Command::Rollback(a) => rollback::run(a),
        Command::Status(a) => status::run(a),
        Command::Logs(a) => logs::run(a),
        Command::Runs(a) => runs::run(a),
        Command::Quickstart(a) => quickstart::run(a),
        Command::SendTestPush(a) => send_test_push::run(a),
        Command::MigrateFromPython(a) => migrate_from_python::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("durhack-deployer: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: a message that already includes its cause's text
/// (`cannot read X: No such file…` over the io error itself) is not followed by it again.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// How to run this program again in printed advice: its real path (a `cargo run` build is not on
/// PATH), or its name if that cannot be known.
fn this_program() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "durhack-deployer".into())
}

/// The deployment called `name`, or an error listing the ones there are.
fn find_deployment<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a Deployment> {
    config.deployments.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.deployments.keys().map(String::as_str).collect();
        if known.is_empty() {
            anyhow::anyhow!("no deployment named {name}; the configuration has none")
        } else {
            anyhow::anyhow!("no deployment named {name}; known: {}", known.join(", "))
        }
    })
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
            deployment.ssh_key_file.as_deref(),
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

/// SIGINT and SIGTERM, registered once: a signal that arrives while nobody is waiting is kept
/// for the next [`StopSignals::next`] (a stream registered after it would miss it, and once
/// tokio handles a signal its default action no longer applies).
struct StopSignals {
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Some((int, term)),
            _ => {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                None
            }
        };
        Self { streams }
    }

    /// The next SIGINT or SIGTERM.
    async fn next(&mut self) -> &'static str {
        let Some((int, term)) = &mut self.streams else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
}

/// Prints `rows` under `header` in left-aligned columns (the last one unpadded).
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    use std::io::Write as _;
    let _ = write!(std::io::stdout().lock(), "{}", format_table(header, rows));
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
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let shown = io.to_string();
        let e = anyhow::Error::new(io).context(format!("cannot read /x: {shown}"));
        assert_eq!(super::error_text(&e), format!("cannot read /x: {shown}"));
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_text(&e), "outer: inner");
    }

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
