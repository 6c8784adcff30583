//! Commit statuses (`POST /repos/{owner}/{repo}/statuses/{sha}`): `pending` when a run starts,
//! `success` or `failure` when it ends, under the context `durhack-deployer/<deployment>`.
//! Reporting is best effort: a failure is logged by the caller and never fails a deploy.

use serde::Serialize;

use crate::config::{Config, Secret};

/// GitHub refuses longer descriptions.
const MAX_DESCRIPTION: usize = 140;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    Pending,
    Success,
    Failure,
    Error,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("GitHub API: {0}")]
    Http(#[from] reqwest::Error),
    #[error("GitHub API answered {status}: {body}")]
    Refused { status: u16, body: String },
}

/// Posts commit statuses; `None` from [`StatusClient::from_config`] when no token is set.
#[derive(Debug, Clone)]
pub struct StatusClient {
    http: reqwest::Client,
    api_url: String,
    token: Secret,
    public_url: Option<String>,
}

#[derive(Debug, Serialize)]
struct Body {
    state: CommitState,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<String>,
    description: String,
    context: String,
}

impl StatusClient {
    pub fn from_config(config: &Config) -> Option<Self> {
        let token = config.github.token.clone()?;
        let http = super::http_client()?;
        Some(Self {
            http,
            api_url: config.github.api_url.clone(),
            token,
            public_url: config.public_url.clone(),
        })
    }

    /// Where a run's page is shown, when the deployer has a public URL.
    pub fn target_url(&self, deployment: &str, run_id: &str) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|base| format!("{base}/deployments/{deployment}/runs/{run_id}"))
    }

    pub async fn post(
        &self,
        repository: &str,
        sha: &str,
        deployment: &str,
        run_id: &str,
        state: CommitState,
        description: &str,
    ) -> Result<(), StatusError> {
        let url = format!("{}/repos/{repository}/statuses/{sha}", self.api_url);
        let description: String = description.chars().take(MAX_DESCRIPTION).collect();
        let body = Body {
            state,
            target_url: self.target_url(deployment, run_id),
            description,
            context: format!("durhack-deployer/{deployment}"),
        };
        let response = self
            .http
            .post(url)
            .bearer_auth(self.token.expose())
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        Err(StatusError::Refused {
            status: status.as_u16(),
            body,
        })
    }
}
