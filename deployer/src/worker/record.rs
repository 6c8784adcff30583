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
        }
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
    /// `webhook` or `cli`.
    pub source: String,
    pub status: RunStatus,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub log_path: Option<String>,
    pub error: Option<String>,
}
