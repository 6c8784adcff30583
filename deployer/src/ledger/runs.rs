//! Runs: one row per deploy attempt, and one per push that was superseded or stale instead.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Ledger, LedgerError};

/// A fencing token: the `token`-th holder of the lock `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub name: String,
    pub token: i64,
}
use crate::worker::{Run, RunStatus};

/// The columns of `runs`, as a literal so queries stay `&'static str` (sqlx refuses built SQL).
macro_rules! columns {
    () => {
        "id, deployment, delivery, sha, source, status, started_at, finished_at, log_path, error, entry"
    };
}

fn from_row(row: &AnyRow) -> Result<Run, LedgerError> {
    let status: String = row.try_get("status")?;
    Ok(Run {
        id: row.try_get("id")?,
        deployment: row.try_get("deployment")?,
        delivery: row.try_get("delivery")?,
        sha: row.try_get("sha")?,
        source: row.try_get("source")?,
        status: status
            .parse()
            .map_err(|e: String| LedgerError::Database(sqlx::Error::Decode(e.into())))?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        log_path: row.try_get("log_path")?,
        error: row.try_get("error")?,
        entry: row.try_get("entry")?,
    })
}

impl Ledger {
    /// Inserts `run` as it is (a `running` row, or a final one such as `superseded`).
    pub async fn insert_run(&self, run: &Run) -> Result<(), LedgerError> {
        sqlx::query(concat!(
            "INSERT INTO runs (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&run.id)
        .bind(&run.deployment)
        .bind(&run.delivery)
        .bind(&run.sha)
        .bind(&run.source)
        .bind(run.status.as_str())
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(&run.log_path)
        .bind(&run.error)
        .bind(&run.entry)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Gives a still-`running` run its final status, but only while `fence` is still the
    /// latest token of its lock (see [`Ledger::take_fence`]). Every terminal outcome of a run
    /// goes through here. `Ok(false)`: another holder took the lock since (or already closed
    /// the run), and nothing was written.
    pub async fn finish_run_fenced(
        &self,
        id: &str,
        status: RunStatus,
        finished_at: i64,
        error: Option<&str>,
        fence: &Fence,
    ) -> Result<bool, LedgerError> {
        let done = sqlx::query(
            "UPDATE runs SET status = $1, finished_at = $2, error = $3 \
             WHERE id = $4 AND status = 'running' \
             AND (SELECT token FROM fences WHERE name = $5) = $6",
        )
        .bind(status.as_str())
        .bind(finished_at)
        .bind(error)
        .bind(id)
        .bind(&fence.name)
        .bind(fence.token)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes the next fencing token of the lock `name` (the first is 1).
    pub async fn take_fence(&self, name: &str) -> Result<Fence, LedgerError> {
        let row = sqlx::query(
            "INSERT INTO fences (name, token) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET token = fences.token + 1 RETURNING token",
        )
        .bind(name)
        .fetch_one(self.pool())
        .await?;
        Ok(Fence {
            name: name.to_owned(),
            token: row.try_get("token")?,
        })
    }

    /// Is `fence` still the latest token of its lock?
    pub async fn fence_holds(&self, fence: &Fence) -> Result<bool, LedgerError> {
        let row = sqlx::query("SELECT token FROM fences WHERE name = $1")
            .bind(&fence.name)
            .fetch_optional(self.pool())
            .await?;
        let token: Option<i64> = row.map(|r| r.try_get("token")).transpose()?;
        Ok(token == Some(fence.token))
    }

    /// The terminal outcome recorded for the deploy-queue entry `entry` of `deployment`, if any.
    pub async fn entry_outcome(
        &self,
        deployment: &str,
        entry: &str,
    ) -> Result<Option<Run>, LedgerError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM runs WHERE deployment = $1 AND entry = $2 \
             AND status IN ('success', 'failed', 'superseded', 'stale', 'ignored') LIMIT 1"
        ))
        .bind(deployment)
        .bind(entry)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Closes `running` rows of `deployment` as cancelled. Only the holder of the deployment's
    /// lock calls this, so any such row was left by a process that died mid-run.
    pub async fn close_interrupted_runs(
        &self,
        deployment: &str,
        now: i64,
    ) -> Result<u64, LedgerError> {
        let done = sqlx::query(
            "UPDATE runs SET status = 'cancelled', finished_at = $1, \
             error = 'interrupted: the deployer stopped during this run' \
             WHERE deployment = $2 AND status = 'running'",
        )
        .bind(now)
        .bind(deployment)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn run(&self, id: &str) -> Result<Option<Run>, LedgerError> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The commit of the deployment's latest successful run, if any.
    pub async fn deployed_sha(&self, deployment: &str) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query(
            "SELECT sha FROM runs WHERE deployment = $1 AND status = 'success' \
             ORDER BY finished_at DESC, started_at DESC LIMIT 1",
        )
        .bind(deployment)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.try_get("sha")).transpose()?)
    }

    /// The deployment's most recent runs that did something (not superseded, stale or ignored), newest
    /// first.
    pub async fn recent_runs(&self, deployment: &str, limit: i64) -> Result<Vec<Run>, LedgerError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM runs WHERE deployment = $1 AND status NOT IN ('superseded', 'stale', 'ignored') \
             ORDER BY started_at DESC, id DESC LIMIT $2"
        ))
        .bind(deployment)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Every row of `deployment`, superseded and stale ones included, oldest first.
    pub async fn runs_of(&self, deployment: &str) -> Result<Vec<Run>, LedgerError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM runs WHERE deployment = $1 ORDER BY started_at, id"
        ))
        .bind(deployment)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Has `deployment` already deployed `delivery` successfully? (A re-pushed queue entry after
    /// a crash of the dispatcher must not deploy twice.)
    pub async fn delivery_succeeded(
        &self,
        deployment: &str,
        delivery: &str,
    ) -> Result<bool, LedgerError> {
        let row = sqlx::query(
            "SELECT id FROM runs WHERE deployment = $1 AND delivery = $2 AND status = 'success' \
             LIMIT 1",
        )
        .bind(deployment)
        .bind(delivery)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Deployments whose latest run for `delivery` ended `failed` or `cancelled` (and that have no
    /// successful run for it): a redelivery of this delivery should queue these again.
    pub async fn failed_deployments_of_delivery(
        &self,
        delivery: &str,
    ) -> Result<Vec<String>, LedgerError> {
        let rows = sqlx::query(
            "SELECT deployment, status FROM runs WHERE delivery = $1 \
             AND status IN ('success', 'failed', 'cancelled') \
             ORDER BY deployment, started_at DESC, id DESC",
        )
        .bind(delivery)
        .fetch_all(self.pool())
        .await?;
        let mut out: Vec<String> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let mut succeeded: Vec<String> = Vec::new();
        for row in &rows {
            let deployment: String = row.try_get("deployment")?;
            let status: String = row.try_get("status")?;
            if status == "success" {
                succeeded.push(deployment.clone());
            }
            if !seen.contains(&deployment) {
                seen.push(deployment.clone());
                if status != "success" {
                    out.push(deployment);
                }
            }
        }
        out.retain(|d| !succeeded.contains(d));
        Ok(out)
    }
}
