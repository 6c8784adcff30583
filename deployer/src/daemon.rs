//! `run(config, shutdown)`: starts the HTTP endpoint, the dispatcher and the workers, and stops
//! them when `shutdown` is cancelled: the endpoint first (in-flight requests finish, so every
//! answered delivery is in the inbox), then the dispatcher, then the workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::{self, deploy_queue_dir, inbox_dir};
use crate::health::{Health, RestartBackoff, join_error_message};
use crate::http::{self, AppState};
use crate::ledger::Ledger;
use crate::queue::Queue;

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_ready(config, shutdown, |_| {}).await
}

/// Like [`run`], calling `ready` with the bound address once the endpoint is listening (for
/// `sd_notify`, and for tests that listen on port 0).
///
/// The endpoint starts before the ledger is opened: it needs only the inbox, and GitHub does not
/// retry, so a database that is down at start-up must not cost deliveries. The dispatcher and
/// the workers start once the ledger opens; until then entries wait in the inbox.
pub async fn run_with_ready(
    config: Config,
    shutdown: CancellationToken,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    // Held until this function returns: `status` and `quickstart` see that a daemon runs here.
    let _presence = crate::presence::announce(&config.state_dir)?;
    let inbox = Queue::open(inbox_dir(&config))?;
    for deployment in config.enabled_deployments() {
        Queue::open(deploy_queue_dir(&config, &deployment.name))?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;

    // The HTTP endpoint and the dispatcher each stop on their own token, so that shutdown can
    // stop intake before anything behind it.
    let http_stop = CancellationToken::new();
    let dispatch_stop = CancellationToken::new();

    let state = AppState::new(&config, inbox).starting();
    let server = tokio::spawn(http::serve(
        listener,
        http::app(state.clone()),
        http_stop.clone(),
    ));
    tracing::info!(%addr, deployments = config.enabled_deployments().count(), "listening");
    ready(addr);

    let Some(ledger) = open_ledger(&config, &shutdown, &state.health()).await else {
        http_stop.cancel();
        let _ = server.await;
        return Ok(());
    };
    state.attach_ledger(ledger.clone());
    let health = state.health();
    tokio::spawn(watch_writable(
        ledger.clone(),
        health.clone(),
        dispatch_stop.clone(),
    ));
    let dispatcher = tokio::spawn(supervise_dispatcher(
        Arc::clone(&config),
        ledger.clone(),
        dispatch_stop.clone(),
        health.clone(),
    ));
    let workers = match crate::worker::start_supervised(
        Arc::clone(&config),
        ledger.clone(),
        shutdown.clone(),
        health,
    )
    .await
    {
        Ok(w) => w,
        Err(e) => {
            http_stop.cancel();
            dispatch_stop.cancel();
            let _ = server.await;
            let _ = dispatcher.await;
            return Err(e).context("cannot start the workers");
        }
    };
    state.mark_started();
    tracing::info!("started");
    // Reconciliation only queues deploys and asks GitHub for redeliveries: it stops with the
    // workers' shutdown token and nothing waits for it.
    let reconcile = tokio::spawn(crate::reconcile::run(
        Arc::clone(&config),
        ledger,
        shutdown.clone(),
    ));

    let (mut server, mut dispatcher) = (Some(server), Some(dispatcher));
    // The dispatcher and the workers are restarted by their supervisors; the HTTP server
    // stopping by itself is fatal: stop the rest and report it.
    let failure: Option<anyhow::Error> = tokio::select! {
        () = shutdown.cancelled() => None,
        r = server.as_mut().expect("set above") => {
            server = None;
            Some(match r {
                Ok(()) => anyhow::anyhow!("the HTTP server stopped"),
                Err(e) => anyhow::Error::from(e).context("the HTTP server panicked"),
            })
        }
        r = dispatcher.as_mut().expect("set above") => {
            dispatcher = None;
            Some(match r {
                Ok(()) => anyhow::anyhow!("the dispatcher's supervisor stopped"),
                Err(e) => anyhow::Error::from(e).context("the dispatcher's supervisor panicked"),
            })
        }
    };
    tracing::info!("stopping");
    http_stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    dispatch_stop.cancel();
    if let Some(dispatcher) = dispatcher {
        let _ = dispatcher.await;
    }
    shutdown.cancel();
    let _ = reconcile.await;
    workers.wait().await;
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs the dispatcher until `stop`, restarting it with backoff whenever it fails or panics;
/// `health` names it while it is down.
async fn supervise_dispatcher(
    config: Arc<Config>,
    ledger: Ledger,
    stop: CancellationToken,
    health: Health,
) {
    const COMPONENT: &str = "dispatcher";
    let mut backoff = RestartBackoff::default();
    loop {
        let started = std::time::Instant::now();
        health.up(COMPONENT);
        let run = tokio::spawn(dispatch::run(
            Arc::clone(&config),
            ledger.clone(),
            stop.clone(),
        ));
        let reason = match run.await {
            Ok(Ok(())) if stop.is_cancelled() => return,
            Ok(Ok(())) => "exited".to_owned(),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(e) => join_error_message(e),
        };
        if stop.is_cancelled() {
            return;
        }
        let wait = backoff.after_run(started.elapsed());
        tracing::error!(%reason, restart_in = ?wait, "the dispatcher stopped; restarting it");
        health.down(COMPONENT, &format!("{reason}; restarting in {wait:?}"));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The component [`watch_writable`] reports to [`Health`].
const LEDGER: &str = "ledger";
/// How often the ledger's writability is checked.
const WRITABLE_CHECK: Duration = Duration::from_secs(5);

/// Why a read-only ledger is down, and the way out.
fn read_only_reason(e: &crate::ledger::LedgerError) -> String {
    format!(
        "the ledger is read-only ({e}): deliveries wait in the inbox until the service user can \
         write it (check the owner of the ledger file and of its -wal and -shm files)"
    )
}

/// Reports the ledger down in `health` (so `GET /` answers 503 naming it) while it refuses
/// writes, logging once when that starts and once when it ends. A root-owned ledger file (left
/// by a command run with sudo before the first start) would otherwise make every delivery wait
/// forever behind a `GET /` that says ok.
async fn watch_writable(ledger: Ledger, health: Health, stop: CancellationToken) {
    let mut read_only = false;
    loop {
        match ledger.check_writable().await {
            Err(e) if e.is_read_only() => {
                if !read_only {
                    let reason = read_only_reason(&e);
                    tracing::error!(%reason, "the ledger cannot be written");
                    health.down(LEDGER, &reason);
                    read_only = true;
                }
            }
            // Other failures (an outage) are the dispatcher's and the workers' to report.
            Err(_) => {}
            Ok(()) => {
                if read_only {
                    tracing::info!("the ledger is writable again");
                    health.up(LEDGER);
                    read_only = false;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(WRITABLE_CHECK) => {}
        }
    }
}

/// Opens (and migrates) the ledger, retrying until it works; `None` if shutdown comes first.
async fn open_ledger(
    config: &Config,
    shutdown: &CancellationToken,
    health: &Health,
) -> Option<Ledger> {
    let url = config.effective_database_url();
    let mut delay = Duration::from_millis(500);
    loop {
        match Ledger::open(&url).await {
            Ok(ledger) => {
                health.up(LEDGER);
                return Some(ledger);
            }
            Err(e) if e.is_read_only() => {
                let reason = read_only_reason(&e);
                tracing::error!(%reason, retry_in = ?delay, "cannot open the ledger");
                health.down(LEDGER, &reason);
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "cannot open the ledger; deliveries wait in the inbox");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
