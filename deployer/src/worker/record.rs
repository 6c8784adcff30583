//! The run record kept in the ledger's `runs` table (ledger/runs.rs has the queries).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Success,
    Failed,
    Superseded,
    Stale,
    Cancelled,
    /// The entry did not match the deployment as configured when it was taken (repository or
    /// branch changed since it was queued): recorded with the reason, never deployed.
    Ignored,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
            Self::Stale => "stale",
            Self::Cancelled => "cancelled",
            Self::Ignored => "ignored",
        }
    }

    /// A final outcome for a queue entry: once one is recorded the entry is never run again.
    /// (`running` is in progress; `cancelled` means interrupted, to be redone.)
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Running | Self::Cancelled)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "running" => Self::Running,
            "success" => Self::Success,
            "failed" => Self::Failed,
            "superseded" => Self::Superseded,
            "stale" => Self::Stale,
            "cancelled" => Self::Cancelled,
            "ignored" => Self::Ignored,
            other => return Err(format!("unknown run status `{other}`")),
        })
    }
}

/// A row of `runs`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Run {
    pub id: String,
    pub deployment: String,
    pub delivery: String,
    pub sha: String,
    /// `webhook`, `cli`, `reconcile`, or `pinned` (an operator's `deploy NAME --sha X`).
    pub source: String,
    pub status: RunStatus,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub log_path: Option<String>,
    pub error: Option<String>,
    /// The deploy-queue entry this row answers for (none on rows older than the column).
    pub entry: Option<String>,
}
