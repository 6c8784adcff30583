//! `durhack-deployer serve`: the daemon. Logs go to stderr (the journal under systemd);
//! SIGTERM or SIGINT stops it gracefully; with `NOTIFY_SOCKET` set (systemd `Type=notify`) it
//! reports READY=1 once it is listening.

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
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            let signal = super::wait_for_signal().await;
            tracing::info!(signal, "stopping");
            notify_systemd("STOPPING=1");
            on_signal.cancel();
        });
        crate::daemon::run_with_ready(config, shutdown, |addr| {
            notify_systemd(&format!("READY=1\nSTATUS=listening on {addr}"));
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The sd_notify protocol: one datagram to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
/// namespace). Failing to notify is logged, not fatal: systemd will time the start-up out.
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| {
        let bytes = target.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&target)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
