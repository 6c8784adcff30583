//! `GET /deployments/{deployment}/runs/{run}`: the page a commit status links to.
//!
//! It shows the run's record — status, commit, times, the one-line error — and deliberately not
//! its log: build output can carry secrets, and this endpoint faces the internet.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

pub(super) async fn show(
    State(state): State<AppState>,
    Path((deployment, run)): Path<(String, String)>,
) -> (StatusCode, Json<Value>) {
    let Some(ledger) = state.ledger() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "starting: the ledger is not open yet" })),
        );
    };
    match ledger.run(&run).await {
        Ok(Some(r)) if r.deployment == deployment => (
            StatusCode::OK,
            Json(json!({
                "id": r.id,
                "deployment": r.deployment,
                "delivery": r.delivery,
                "sha": r.sha,
                "source": r.source,
                "status": r.status,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "error": r.error,
            })),
        ),
        Ok(_) => {
            tracing::warn!(%deployment, %run, status = 404, "no such run");
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "no such run" })),
            )
        }
        Err(e) => {
            tracing::error!(%deployment, %run, error = %e, "cannot read the run");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "the ledger is unavailable" })),
            )
        }
    }
}
