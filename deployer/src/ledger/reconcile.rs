//! Reconciliation state per deployment, and the redelivery requests made to GitHub (issue 14).

use serde::Serialize;
use sqlx::Row;

use super::{Ledger, LedgerError};

/// What the last reconcile pass saw for one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileState {
    pub deployment: String,
    /// `None` when the branch was missing or the remote could not be read.
    pub remote_head: Option<String>,
    pub checked_at: i64,
    /// `queued`, `deployed`, `busy`, `attempted`, `claimed`, `missing` or `error`.
    pub action: String,
    pub note: String,
}

/// One redelivery asked of GitHub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedeliveryRequest {
    /// The delivery's guid (the `X-GitHub-Delivery` header it carried, and will carry again).
    pub guid: String,
    pub repository: String,
    pub hook_id: String,
    /// GitHub's id of the failed attempt that was redelivered.
    pub github_delivery_id: i64,
    pub event: Option<String>,
    pub delivered_at: Option<String>,
    /// GitHub's own words for the failed attempt (`Invalid HTTP Response: 502`, ...).
    pub github_status: Option<String>,
    pub requested_at: i64,
    /// GitHub's answer to the request; `None` until it came.
    pub status_code: Option<i64>,
    pub error: Option<String>,
}

impl Ledger {
    pub async fn save_reconcile_state(&self, state: &ReconcileState) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO reconcile_state (deployment, remote_head, checked_at, action, note) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (deployment) DO UPDATE SET \
             remote_head = excluded.remote_head, checked_at = excluded.checked_at, \
             action = excluded.action, note = excluded.note",
        )
        .bind(&state.deployment)
        .bind(&state.remote_head)
        .bind(state.checked_at)
        .bind(&state.action)
        .bind(&state.note)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn reconcile_state(
        &self,
        deployment: &str,
    ) -> Result<Option<ReconcileState>, LedgerError> {
        let row = sqlx::query(
            "SELECT deployment, remote_head, checked_at, action, note FROM reconcile_state \
             WHERE deployment = $1",
        )
        .bind(deployment)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(ReconcileState {
                deployment: r.try_get("deployment")?,
                remote_head: r.try_get("remote_head")?,
                checked_at: r.try_get("checked_at")?,
                action: r.try_get("action")?,
                note: r.try_get("note")?,
            })
        })
        .transpose()
    }

    /// Has `deployment` ever started a deploy of `sha` (a run that succeeded, failed, was
    /// cancelled or is running)? Reconciliation deploys only heads never tried: a failed head
    /// is not rebuilt in a loop, and an operator's rollback is not undone.
    pub async fn sha_attempted(&self, deployment: &str, sha: &str) -> Result<bool, LedgerError> {
        let row = sqlx::query(
            "SELECT id FROM runs WHERE deployment = $1 AND sha = $2 \
             AND status IN ('running', 'success', 'failed', 'cancelled') LIMIT 1",
        )
        .bind(deployment)
        .bind(sha)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Has any row answered the deploy-queue entry `entry` of `deployment` (in any status)?
    pub async fn entry_has_runs(&self, deployment: &str, entry: &str) -> Result<bool, LedgerError> {
        let row = sqlx::query("SELECT id FROM runs WHERE deployment = $1 AND entry = $2 LIMIT 1")
            .bind(deployment)
            .bind(entry)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }

    /// The hook id of `repository`'s latest received delivery that carried one.
    pub async fn hook_id_of(&self, repository: &str) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query(
            "SELECT hook_id FROM deliveries WHERE lower(repository) = lower($1) \
             AND hook_id IS NOT NULL ORDER BY received_at DESC LIMIT 1",
        )
        .bind(repository)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.try_get("hook_id")).transpose()?)
    }

    /// Does the ledger know the delivery `guid`: received (claimed) already, or asked for?
    pub async fn delivery_known(&self, guid: &str) -> Result<bool, LedgerError> {
        let claimed = sqlx::query("SELECT entry FROM delivery_claims WHERE delivery = $1")
            .bind(guid)
            .fetch_optional(self.pool())
            .await?;
        if claimed.is_some() {
            return Ok(true);
        }
        let asked = sqlx::query("SELECT guid FROM redelivery_requests WHERE guid = $1")
            .bind(guid)
            .fetch_optional(self.pool())
            .await?;
        Ok(asked.is_some())
    }

    /// Claims the redelivery of `request.guid` (insert-if-absent): `true` when this caller is
    /// the one to ask GitHub, `false` when it was asked for already (by us or another process).
    pub async fn claim_redelivery(&self, request: &RedeliveryRequest) -> Result<bool, LedgerError> {
        let done = sqlx::query(
            "INSERT INTO redelivery_requests (guid, repository, hook_id, github_delivery_id, \
             event, delivered_at, github_status, requested_at, status_code, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL) ON CONFLICT (guid) DO NOTHING",
        )
        .bind(&request.guid)
        .bind(&request.repository)
        .bind(&request.hook_id)
        .bind(request.github_delivery_id)
        .bind(&request.event)
        .bind(&request.delivered_at)
        .bind(&request.github_status)
        .bind(request.requested_at)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records GitHub's answer to a redelivery request.
    pub async fn finish_redelivery(
        &self,
        guid: &str,
        status_code: Option<i64>,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        sqlx::query("UPDATE redelivery_requests SET status_code = $1, error = $2 WHERE guid = $3")
            .bind(status_code)
            .bind(error)
            .bind(guid)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Forgets a claimed request that never reached GitHub (rate limit, network), so that a
    /// later pass asks again.
    pub async fn release_redelivery(&self, guid: &str) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM redelivery_requests WHERE guid = $1")
            .bind(guid)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Releases the claims made before `before` that have no answer recorded; how many.
    pub async fn release_unanswered_redeliveries(&self, before: i64) -> Result<u64, LedgerError> {
        let done = sqlx::query(
            "DELETE FROM redelivery_requests WHERE status_code IS NULL AND error IS NULL \
             AND requested_at < $1",
        )
        .bind(before)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// The latest `limit` redelivery requests, newest first.
    pub async fn redelivery_history(
        &self,
        limit: i64,
    ) -> Result<Vec<RedeliveryRequest>, LedgerError> {
        let rows = sqlx::query(
            "SELECT guid, repository, hook_id, github_delivery_id, event, delivered_at, \
             github_status, requested_at, status_code, error FROM redelivery_requests \
             ORDER BY requested_at DESC, guid DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RedeliveryRequest {
                    guid: r.try_get("guid")?,
                    repository: r.try_get("repository")?,
                    hook_id: r.try_get("hook_id")?,
                    github_delivery_id: r.try_get("github_delivery_id")?,
                    event: r.try_get("event")?,
                    delivered_at: r.try_get("delivered_at")?,
                    github_status: r.try_get("github_status")?,
                    requested_at: r.try_get("requested_at")?,
                    status_code: r.try_get("status_code")?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }
}
