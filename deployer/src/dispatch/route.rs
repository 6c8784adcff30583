//! Which deployments an event concerns: pure, so every GitHub shape is tested without I/O.

use serde::Deserialize;
use serde_json::Value;

use crate::config::Config;

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// The push an event describes, when it is one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Push {
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub sha: Option<String>,
    /// The previous head; `None` when the push created the branch.
    pub before: Option<String>,
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub push: Push,
    /// Enabled deployments to queue, in name order; empty means ignored.
    pub deployments: Vec<String>,
    /// Why, in words for `history`.
    pub reason: String,
}

impl Routing {
    fn ignore(push: Push, reason: impl Into<String>) -> Self {
        Self {
            push,
            deployments: Vec::new(),
            reason: reason.into(),
        }
    }
}

/// The parts of an event payload that routing reads. Everything else (a push's `commits` can be
/// most of a 25 MB payload) is skipped while parsing and never built into a tree.
#[derive(Debug, Default, Deserialize)]
pub struct EventFields {
    #[serde(rename = "ref")]
    pub git_ref: Option<Value>,
    pub after: Option<Value>,
    pub before: Option<Value>,
    pub deleted: Option<Value>,
    pub repository: Option<Value>,
    pub hook_id: Option<Value>,
}

fn as_str(field: &Option<Value>) -> Option<&str> {
    field.as_ref().and_then(Value::as_str)
}

pub fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn route(config: &Config, event: &str, payload: &EventFields) -> Routing {
    match event {
        "ping" => {
            let hook = payload
                .hook_id
                .as_ref()
                .and_then(Value::as_u64)
                .map(|id| format!(" from hook {id}"))
                .unwrap_or_default();
            Routing::ignore(
                Push::default(),
                format!("ping{hook}: the webhook reaches us; nothing to deploy"),
            )
        }
        "push" => route_push(config, payload),
        other => Routing::ignore(
            Push::default(),
            format!("`{other}` events are not deployed (only push)"),
        ),
    }
}

fn route_push(config: &Config, payload: &EventFields) -> Routing {
    let mut push = Push {
        repository: payload
            .repository
            .as_ref()
            .and_then(|r| r.get("full_name"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        ..Push::default()
    };
    let Some(git_ref) = as_str(&payload.git_ref) else {
        return Routing::ignore(push, "malformed push: no `ref`");
    };
    let Some(branch) = git_ref.strip_prefix("refs/heads/") else {
        let reason = if git_ref.starts_with("refs/tags/") {
            format!("tag push ({git_ref}): only branches are deployed")
        } else {
            format!("push to {git_ref}, which is not a branch")
        };
        return Routing::ignore(push, reason);
    };
    push.branch = Some(branch.to_owned());
    let Some(repository) = push.repository.clone() else {
        return Routing::ignore(push, "malformed push: no `repository.full_name`");
    };
    let after = as_str(&payload.after).unwrap_or("");
    let deleted = payload.deleted.as_ref().and_then(Value::as_bool) == Some(true);
    if deleted || after == ZERO_SHA {
        return Routing::ignore(push, format!("branch {branch} of {repository} was deleted"));
    }
    if !is_sha(after) {
        return Routing::ignore(push, "malformed push: `after` is not a commit id");
    }
    push.sha = Some(after.to_ascii_lowercase());
    push.before = as_str(&payload.before)
        .filter(|b| is_sha(b) && *b != ZERO_SHA)
        .map(str::to_ascii_lowercase);
    let deployments: Vec<String> = config
        .enabled_deployments()
        .filter(|d| d.repository.eq_ignore_ascii_case(&repository) && d.branch == branch)
        .map(|d| d.name.clone())
        .collect();
    if deployments.is_empty() {
        return Routing::ignore(
            push,
            format!("no enabled deployment watches {repository} branch {branch}"),
        );
    }
    let reason = format!(
        "push to {repository} {branch}: queued for {}",
        deployments.join(", ")
    );
    Routing {
        push,
        deployments,
        reason,
    }
}
