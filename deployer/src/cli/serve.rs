//! `durhack-deployer serve`: the daemon. Logs go to stderr (the journal under systemd);
//! SIGTERM or SIGINT stops it gracefully, saying which deploys it waits for (up to
//! [`crate::worker::GRACE`]); a second one kills every running command's process group and exits
//! at once (130 after SIGINT, 143 after SIGTERM). With `NOTIFY_SOCKET` set (systemd
//! `Type=notify`) it reports READY=1 once it is listening.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let config = Config::load(&args.config.config)?;
    super::as_owner::become_state_owner(&config, super::as_owner::StateUse::ReadOnly)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signals(shutdown.clone(), config.state_dir.clone()));
        crate::daemon::run_with_ready(config, shutdown, |addr| {
            notify_systemd(&format!("READY=1\nSTATUS=listening on {addr}"));
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The first SIGINT or SIGTERM cancels `shutdown` (a graceful stop), saying what it waits for;
/// the second kills the process group of every command this daemon runs (their records are in
/// `state_dir/process-groups/`) and exits at once, so no build outlives the daemon to race the
/// next one in the same tree. The runs stay `running` in the ledger, which `status` shows as
/// `interrupted`, and the next start closes them as cancelled.
pub(super) fn stop_on_signals(
    shutdown: CancellationToken,
    state_dir: PathBuf,
) -> impl Future<Output = ()> {
    // Registered now, before the daemon starts, not when the task first runs.
    let mut signals = super::StopSignals::new();
    async move {
        let signal = signals.next().await;
        stop_after(signal, &mut signals, &shutdown, &state_dir).await;
    }
}

async fn stop_after(
    signal: &'static str,
    signals: &mut super::StopSignals,
    shutdown: &CancellationToken,
    state_dir: &std::path::Path,
) {
    let running = crate::presence::running_deploys();
    if running.is_empty() {
        tracing::info!(signal, "stopping");
    } else {
        let grace = crate::worker::GRACE.as_secs();
        tracing::warn!(
            signal,
            "waiting up to {grace} s for deploy {}; Ctrl-C again to stop now",
            running.join(", ")
        );
    }
    notify_systemd("STOPPING=1");
    shutdown.cancel();
    let signal = signals.next().await;
    let killed =
        crate::worker::kill_recorded_groups(state_dir, &crate::presence::running_deploys());
    tracing::warn!(
        signal,
        process_groups = ?killed,
        "stopping now: killed the running commands; their runs show as interrupted until the next start"
    );
    std::process::exit(if signal == "SIGINT" { 130 } else { 143 });
}

/// The sd_notify protocol: one datagram to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
/// namespace). Failing to notify is logged, not fatal: systemd will time the start-up out.
fn notify_systemd(state: &str) {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| {
        let bytes = target.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => abstract_address(name)?,
            None => SocketAddr::from_pathname(&target)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// An abstract-namespace socket address, which only Linux has (as does systemd).
#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket addresses are Linux only",
    ))
}
