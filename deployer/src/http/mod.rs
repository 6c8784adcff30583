//! The HTTP endpoint: `POST /github-webhook` verifies a delivery and writes it durably to the
//! inbox before answering 202; `GET /` says the service is up. Nothing here waits for the
//! database or for a deploy, so GitHub's 10-second deadline only covers a verified fsync.

mod runs;
mod serve;
pub mod signature;
mod source;
mod webhook;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{get, post};

use crate::config::{Config, IpNetwork, Secret};
use crate::health::Health;
use crate::ledger::Ledger;
use crate::queue::Queue;

pub use serve::{HEADER_READ_TIMEOUT, serve, serve_with_header_timeout};

/// GitHub caps webhook payloads at 25 MiB; anything longer is not from GitHub.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// Bodies are read before the signature can be checked, so anyone who can connect can make us
/// buffer one. Their total is bounded by this budget (in KiB); a request that cannot get its
/// share within the body read timeout is answered 503.
pub const BODY_BUDGET_KIB: usize = 256 * 1024;

/// GitHub stops waiting after 10 seconds, so a body still arriving after that is wasted effort
/// (or a slow client holding a connection open).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    secret: Secret,
    inbox: Queue,
    allowed_networks: Vec<IpNetwork>,
    trusted_proxy_hops: usize,
    body_read_timeout: Duration,
    body_budget: Arc<tokio::sync::Semaphore>,
    /// False while the daemon is still opening the ledger and starting the dispatcher and
    /// workers: deliveries are accepted, `GET /` says `starting`.
    started: Arc<AtomicBool>,
    /// Set once the ledger opens; the run pages answer 503 until then.
    ledger: Arc<OnceLock<Ledger>>,
    /// Supervised components that are down; `GET /` answers 503 while any is.
    health: Health,
}

impl AppState {
    pub fn new(config: &Config, inbox: Queue) -> Self {
        Self {
            inner: Arc::new(Inner {
                secret: config.github.webhook_secret.clone(),
                inbox,
                allowed_networks: config.github.allowed_networks.clone(),
                trusted_proxy_hops: config.github.trusted_proxy_hops,
                body_read_timeout: BODY_READ_TIMEOUT,
                body_budget: Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET_KIB)),
                started: Arc::new(AtomicBool::new(true)),
                ledger: Arc::new(OnceLock::new()),
                health: Health::default(),
            }),
        }
    }

    /// The same state with another body read timeout (tests use a short one).
    pub fn with_body_read_timeout(self, timeout: Duration) -> Self {
        let inner = Arc::unwrap_or_clone(self.inner);
        Self {
            inner: Arc::new(Inner {
                body_read_timeout: timeout,
                ..inner
            }),
        }
    }

    /// The same state with another in-flight body budget, in KiB (tests use a small one).
    pub fn with_body_budget_kib(self, kib: usize) -> Self {
        let inner = Arc::unwrap_or_clone(self.inner);
        Self {
            inner: Arc::new(Inner {
                body_budget: Arc::new(tokio::sync::Semaphore::new(kib)),
                ..inner
            }),
        }
    }

    /// The same state, with `GET /` answering 503 `starting` until [`AppState::mark_started`].
    pub fn starting(self) -> Self {
        self.inner.started.store(false, Ordering::Release);
        self
    }

    /// Everything behind the endpoint runs: `GET /` answers `ok`.
    pub fn mark_started(&self) {
        self.inner.started.store(true, Ordering::Release);
    }

    /// The registry the supervisors report to.
    pub fn health(&self) -> Health {
        self.inner.health.clone()
    }

    /// Gives the run pages their ledger (once; later calls are ignored).
    pub fn attach_ledger(&self, ledger: Ledger) {
        let _ = self.inner.ledger.set(ledger);
    }

    fn ledger(&self) -> Option<&Ledger> {
        self.inner.ledger.get()
    }

    pub fn inbox(&self) -> &Queue {
        &self.inner.inbox
    }
}

/// The router. [`serve`] gives it the peer address that `allowed_networks` needs.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(health))
        .route("/github-webhook", post(webhook::receive))
        .route("/deployments/{deployment}/runs/{run}", get(runs::show))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

// Every refused request is logged with its reason, including those that never reach a handler.
async fn not_found(method: Method, uri: Uri) -> (StatusCode, axum::Json<serde_json::Value>) {
    tracing::warn!(%method, path = uri.path(), status = 404, "no such endpoint");
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            serde_json::json!({ "error": "no such endpoint (webhooks go to POST /github-webhook)" }),
        ),
    )
}

async fn method_not_allowed(
    method: Method,
    uri: Uri,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    tracing::warn!(%method, path = uri.path(), status = 405, "method not allowed");
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({ "error": format!("{method} is not allowed here") })),
    )
}

/// `ok` once the ledger, the dispatcher and the workers run; `starting` (503) before, while
/// webhooks are already accepted into the inbox; `degraded` (503) while a supervised component
/// (the dispatcher, a deployment's worker) is down and waiting to be restarted, naming it.
async fn health(State(state): State<AppState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let started = state.inner.started.load(Ordering::Acquire);
    let down = state.inner.health.down_components();
    let status = if !started {
        "starting"
    } else if !down.is_empty() {
        "degraded"
    } else {
        "ok"
    };
    let mut body = serde_json::json!({
        "status": status,
        "service": "durhack-deployer",
        "version": env!("CARGO_PKG_VERSION"),
    });
    if !down.is_empty() {
        body["down"] = serde_json::json!(down);
    }
    (
        if status == "ok" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        axum::Json(body),
    )
}

/// The peer address the server recorded for this request, if any.
fn peer_addr(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    use axum::extract::ConnectInfo;
    use axum::extract::connect_info::MockConnectInfo;
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| extensions.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0))
}
