//! Deliveries: the deduplication claim per delivery id, and one record per received delivery.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Ledger, LedgerError};

/// What the dispatcher did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Queued for at least one deployment.
    Routed,
    /// A redelivery of a delivery already handled; nothing was queued.
    Duplicate,
    /// Nothing to deploy (ping, other events, tags, deletions, unwatched branches).
    Ignored,
    /// Handling it kept failing while the ledger worked: moved aside to
    /// `queues/inbox-quarantine/` so the deliveries behind it go on.
    Quarantined,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
            Self::Quarantined => "quarantined",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "routed" => Ok(Self::Routed),
            "duplicate" => Ok(Self::Duplicate),
            "ignored" => Ok(Self::Ignored),
            "quarantined" => Ok(Self::Quarantined),
            other => Err(format!("unknown delivery outcome `{other}`")),
        }
    }
}

/// One received delivery (one inbox entry) and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    /// The inbox entry name; unique per receipt, so a redelivery has its own record.
    pub entry: String,
    pub delivery: String,
    pub event: String,
    pub hook_id: Option<String>,
    pub received_at: i64,
    pub handled_at: i64,
    pub outcome: Outcome,
    pub reason: String,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub sha: Option<String>,
    pub deployments: Vec<String>,
}

/// Who owns a delivery id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This entry is the first with the id (or a repeat of it after a crash): handle it.
    First,
    /// An earlier entry carried the same id: this is a redelivery.
    Redelivery { first_entry: String },
}

fn decode_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> LedgerError {
    LedgerError::Database(sqlx::Error::Decode(e.into()))
}

fn from_row(row: &AnyRow) -> Result<DeliveryRecord, LedgerError> {
    let outcome: String = row.try_get("outcome")?;
    let deployments: String = row.try_get("deployments")?;
    Ok(DeliveryRecord {
        entry: row.try_get("entry")?,
        delivery: row.try_get("delivery")?,
        event: row.try_get("event")?,
        hook_id: row.try_get("hook_id")?,
        received_at: row.try_get("received_at")?,
        handled_at: row.try_get("handled_at")?,
        outcome: outcome.parse().map_err(decode_err)?,
        reason: row.try_get("reason")?,
        repository: row.try_get("repository")?,
        branch: row.try_get("branch")?,
        sha: row.try_get("sha")?,
        deployments: serde_json::from_str(&deployments).map_err(decode_err)?,
    })
}

impl Ledger {
    /// Claims `delivery` for `entry` if nobody has (insert-if-absent, atomic in both backends),
    /// and says who holds the claim.
    pub async fn claim_delivery(
        &self,
        delivery: &str,
        entry: &str,
        now: i64,
    ) -> Result<Claim, LedgerError> {
        sqlx::query(
            "INSERT INTO delivery_claims (delivery, entry, claimed_at) VALUES ($1, $2, $3) \
             ON CONFLICT (delivery) DO NOTHING",
        )
        .bind(delivery)
        .bind(entry)
        .bind(now)
        .execute(self.pool())
        .await?;
        let owner: String = sqlx::query("SELECT entry FROM delivery_claims WHERE delivery = $1")
            .bind(delivery)
            .fetch_one(self.pool())
            .await?
            .try_get("entry")?;
        Ok(if owner == entry {
            Claim::First
        } else {
            Claim::Redelivery { first_entry: owner }
        })
    }

    /// Has the inbox entry `entry` been recorded (so its routing is complete)?
    pub async fn delivery_recorded(&self, entry: &str) -> Result<bool, LedgerError> {
        Ok(self.delivery_record(entry).await?.is_some())
    }

    pub async fn delivery_record(
        &self,
        entry: &str,
    ) -> Result<Option<DeliveryRecord>, LedgerError> {
        let row = sqlx::query(
            "SELECT entry, delivery, event, hook_id, received_at, handled_at, outcome, reason, \
             repository, branch, sha, deployments FROM deliveries WHERE entry = $1",
        )
        .bind(entry)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Records a handled delivery; recording the same entry again keeps the first record.
    pub async fn record_delivery(&self, record: &DeliveryRecord) -> Result<(), LedgerError> {
        let deployments = serde_json::to_string(&record.deployments).map_err(decode_err)?;
        sqlx::query(
            "INSERT INTO deliveries (entry, delivery, event, hook_id, received_at, handled_at, \
             outcome, reason, repository, branch, sha, deployments) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (entry) DO NOTHING",
        )
        .bind(&record.entry)
        .bind(&record.delivery)
        .bind(&record.event)
        .bind(&record.hook_id)
        .bind(record.received_at)
        .bind(record.handled_at)
        .bind(record.outcome.as_str())
        .bind(&record.reason)
        .bind(&record.repository)
        .bind(&record.branch)
        .bind(&record.sha)
        .bind(deployments)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The latest `limit` received deliveries, newest first.
    pub async fn delivery_history(&self, limit: i64) -> Result<Vec<DeliveryRecord>, LedgerError> {
        let rows = sqlx::query(
            "SELECT entry, delivery, event, hook_id, received_at, handled_at, outcome, reason, \
             repository, branch, sha, deployments FROM deliveries \
             ORDER BY received_at DESC, entry DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Every receipt of `delivery`, oldest first.
    pub async fn receipts_of_delivery(
        &self,
        delivery: &str,
    ) -> Result<Vec<DeliveryRecord>, LedgerError> {
        let rows = sqlx::query(
            "SELECT entry, delivery, event, hook_id, received_at, handled_at, outcome, reason, \
             repository, branch, sha, deployments FROM deliveries WHERE delivery = $1 \
             ORDER BY received_at, entry",
        )
        .bind(delivery)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(entry: &str, delivery: &str, at: i64, outcome: Outcome) -> DeliveryRecord {
        DeliveryRecord {
            entry: entry.into(),
            delivery: delivery.into(),
            event: "push".into(),
            hook_id: Some("42".into()),
            received_at: at,
            handled_at: at + 5,
            outcome,
            reason: "because".into(),
            repository: Some("o/r".into()),
            branch: Some("main".into()),
            sha: None,
            deployments: vec!["app".into(), "web".into()],
        }
    }

    #[tokio::test]
    async fn claims_and_records_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display());
        let l = Ledger::open(&url).await.unwrap();
        assert_eq!(l.claim_delivery("d1", "e1", 1).await.unwrap(), Claim::First);
        assert_eq!(l.claim_delivery("d1", "e1", 2).await.unwrap(), Claim::First);
        assert_eq!(
            l.claim_delivery("d1", "e2", 3).await.unwrap(),
            Claim::Redelivery {
                first_entry: "e1".into()
            }
        );
        assert!(!l.delivery_recorded("e1").await.unwrap());
        let r1 = record("e1", "d1", 10, Outcome::Routed);
        l.record_delivery(&r1).await.unwrap();
        let mut again = r1.clone();
        again.reason = "second write".into();
        l.record_delivery(&again).await.unwrap();
        assert_eq!(l.delivery_record("e1").await.unwrap(), Some(r1.clone()));
        let r2 = record("e2", "d1", 20, Outcome::Duplicate);
        l.record_delivery(&r2).await.unwrap();
        assert_eq!(
            l.delivery_history(10).await.unwrap(),
            vec![r2.clone(), r1.clone()]
        );
        assert_eq!(l.delivery_history(1).await.unwrap(), vec![r2.clone()]);
        assert_eq!(l.receipts_of_delivery("d1").await.unwrap(), vec![r1, r2]);

        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(l.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
