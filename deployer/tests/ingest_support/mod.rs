//! Shared by the ingest tests: a configuration, GitHub-shaped payloads and signed requests.
#![allow(dead_code)]

use std::path::Path;

use axum::body::Body;
use axum::http::Request;
use deployer::config::Config;
use deployer::http::signature::sign;
use serde_json::{Value, json};

pub const SECRET: &str = "It's a Secret to Everybody";
pub const ZERO: &str = "0000000000000000000000000000000000000000";

/// A 40-hex commit id made from `n`.
pub fn sha(n: u32) -> String {
    format!("{n:08x}{}", "a".repeat(32))
}

/// A configuration with state in `state`: `app` and `web` both watch octo-org/site main, `staging`
/// watches its staging branch, `old` is disabled, `api` watches another repository.
pub fn config(state: &Path, top: &str) -> Config {
    config_with(state, top, "")
}

pub fn config_with(state: &Path, top: &str, extra: &str) -> Config {
    let text = config_text(state, top, extra);
    Config::parse(&text, Path::new("test.toml"), Some(SECRET.into())).expect("test config")
}

pub fn config_text(state: &Path, top: &str, extra: &str) -> String {
    let s = state.display();
    format!(
        r#"
state_dir = "{s}"
{top}

[deployments.app]
repository = "octo-org/site"
branch = "main"
path = "{s}/www/app"
remote = "{s}/nowhere.git"

[deployments.web]
repository = "octo-org/site"
branch = "main"
path = "{s}/www/web"
remote = "{s}/nowhere.git"

[deployments.staging]
repository = "octo-org/site"
branch = "staging"
path = "{s}/www/staging"
remote = "{s}/nowhere.git"

[deployments.old]
repository = "octo-org/site"
branch = "main"
path = "{s}/www/old"
enabled = false

[deployments.api]
repository = "octo-org/api"
branch = "main"
path = "{s}/www/api"
remote = "{s}/nowhere.git"
{extra}
"#
    )
}

fn user(login: &str, id: u64) -> Value {
    json!({
        "login": login, "id": id, "node_id": format!("MDQ6VXNlcn{id}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "gravatar_id": "", "url": format!("https://api.github.com/users/{login}"),
        "html_url": format!("https://github.com/{login}"), "type": "User", "site_admin": false
    })
}

pub fn repository(full_name: &str) -> Value {
    let (owner, name) = full_name.split_once('/').expect("owner/name");
    json!({
        "id": 602_214_076, "node_id": "R_kgDOI-abcd", "name": name, "full_name": full_name,
        "private": false, "owner": user(owner, 9_919),
        "html_url": format!("https://github.com/{full_name}"),
        "description": "The website", "fork": false,
        "url": format!("https://api.github.com/repos/{full_name}"),
        "clone_url": format!("https://github.com/{full_name}.git"),
        "ssh_url": format!("git@github.com:{full_name}.git"),
        "created_at": 1_675_000_000, "updated_at": "2026-11-28T10:00:00Z",
        "pushed_at": 1_795_000_000, "size": 2048, "stargazers_count": 3,
        "language": "TypeScript", "has_issues": true, "forks_count": 1,
        "archived": false, "disabled": false, "open_issues_count": 2,
        "visibility": "public", "default_branch": "main", "master_branch": "main"
    })
}

fn commit(id: &str, n: usize, full_name: &str) -> Value {
    json!({
        "id": id, "tree_id": sha(9_000 + n as u32), "distinct": true,
        "message": format!("Change {n}: tidy up the landing page and its styles\n\nLonger explanation of change {n}."),
        "timestamp": "2026-11-28T10:00:00+00:00",
        "url": format!("https://github.com/{full_name}/commit/{id}"),
        "author": { "name": "Octo Cat", "email": "octocat@example.com", "username": "octocat" },
        "committer": { "name": "GitHub", "email": "noreply@github.com", "username": "web-flow" },
        "added": [format!("src/pages/new-{n}.tsx")],
        "removed": [],
        "modified": ["src/pages/index.tsx", "src/styles/main.css", "package.json"]
    })
}

/// A push of `commits` commits to `git_ref` (`refs/heads/main`, `refs/tags/v1`...).
pub fn push_ref(
    full_name: &str,
    git_ref: &str,
    before: &str,
    after: &str,
    commits: usize,
) -> Value {
    let list: Vec<Value> = (0..commits)
        .map(|i| {
            let id = if i + 1 == commits {
                after.to_owned()
            } else {
                sha(5_000 + i as u32)
            };
            commit(&id, i, full_name)
        })
        .collect();
    json!({
        "ref": git_ref, "before": before, "after": after,
        "repository": repository(full_name),
        "pusher": { "name": "octocat", "email": "octocat@example.com" },
        "sender": user("octocat", 583_231),
        "created": before == ZERO, "deleted": false, "forced": false, "base_ref": null,
        "compare": format!("https://github.com/{full_name}/compare/{}...{}", &before[..12], &after[..12]),
        "head_commit": list.last().cloned().unwrap_or(Value::Null),
        "commits": list
    })
}

pub fn push(full_name: &str, branch: &str, before: &str, after: &str) -> Value {
    push_ref(full_name, &format!("refs/heads/{branch}"), before, after, 2)
}

/// A push padded with commits to at least `bytes` of JSON (the benchmark's ~10 KB payload).
pub fn push_of_size(full_name: &str, branch: &str, bytes: usize) -> Vec<u8> {
    let mut n = 1;
    loop {
        let body = serde_json::to_vec(&push_ref(
            full_name,
            &format!("refs/heads/{branch}"),
            &sha(1),
            &sha(2),
            n,
        ))
        .unwrap();
        if body.len() >= bytes {
            return body;
        }
        n += 1;
    }
}

pub fn branch_deletion(full_name: &str, branch: &str, before: &str) -> Value {
    json!({
        "ref": format!("refs/heads/{branch}"), "before": before, "after": ZERO,
        "repository": repository(full_name), "pusher": { "name": "octocat", "email": "octocat@example.com" },
        "sender": user("octocat", 583_231), "created": false, "deleted": true, "forced": false,
        "base_ref": null, "compare": format!("https://github.com/{full_name}/compare/{}...000000000000", &before[..12]),
        "commits": [], "head_commit": null
    })
}

pub fn tag_push(full_name: &str, tag: &str, after: &str) -> Value {
    let mut p = push_ref(full_name, &format!("refs/tags/{tag}"), ZERO, after, 0);
    p["base_ref"] = json!("refs/heads/main");
    p
}

pub fn ping(full_name: &str) -> Value {
    json!({
        "zen": "Keep it logically awesome.",
        "hook_id": 468_051_229,
        "hook": {
            "type": "Repository", "id": 468_051_229, "name": "web", "active": true,
            "events": ["push"],
            "config": { "content_type": "json", "insecure_ssl": "0", "url": "https://deploy.example.org/github-webhook" },
            "updated_at": "2026-11-28T10:00:00Z", "created_at": "2026-11-28T10:00:00Z",
            "url": format!("https://api.github.com/repos/{full_name}/hooks/468051229"),
            "last_response": { "code": null, "status": "unused", "message": null }
        },
        "repository": repository(full_name),
        "sender": user("octocat", 583_231)
    })
}

pub fn pull_request(full_name: &str, head: &str) -> Value {
    json!({
        "action": "opened", "number": 42,
        "pull_request": {
            "url": format!("https://api.github.com/repos/{full_name}/pulls/42"), "id": 1_234_567, "number": 42,
            "state": "open", "locked": false, "title": "Tidy up the landing page",
            "user": user("octocat", 583_231), "body": "Please review.",
            "head": { "label": "octocat:feature", "ref": "feature", "sha": head, "repo": repository(full_name) },
            "base": { "label": "octo-org:main", "ref": "main", "sha": sha(1), "repo": repository(full_name) },
            "merged": false, "draft": false, "commits": 1, "additions": 10, "deletions": 2, "changed_files": 3
        },
        "repository": repository(full_name),
        "sender": user("octocat", 583_231)
    })
}

pub fn workflow_run(full_name: &str, branch: &str, head: &str) -> Value {
    json!({
        "action": "completed",
        "workflow_run": {
            "id": 30_433_642, "name": "CI", "node_id": "WFR_kwLOI", "head_branch": branch, "head_sha": head,
            "path": ".github/workflows/ci.yml", "run_number": 562, "event": "push",
            "status": "completed", "conclusion": "success", "workflow_id": 159_038,
            "html_url": format!("https://github.com/{full_name}/actions/runs/30433642"),
            "created_at": "2026-11-28T10:00:00Z", "updated_at": "2026-11-28T10:03:00Z",
            "head_repository": repository(full_name), "repository": repository(full_name)
        },
        "workflow": { "id": 159_038, "name": "CI", "path": ".github/workflows/ci.yml", "state": "active" },
        "repository": repository(full_name),
        "sender": user("octocat", 583_231)
    })
}

/// A webhook request as GitHub sends it, signed with [`SECRET`].
pub fn signed(event: &str, delivery: &str, body: &[u8]) -> Request<Body> {
    request(
        event,
        delivery,
        "application/json",
        body,
        Some(&sign(SECRET.as_bytes(), body)),
    )
}

/// The same as form-encoded (`payload=<json>`), signed over the form body.
pub fn signed_form(event: &str, delivery: &str, json: &[u8]) -> Request<Body> {
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(json).unwrap())
        .finish();
    let sig = sign(SECRET.as_bytes(), form.as_bytes());
    request(
        event,
        delivery,
        "application/x-www-form-urlencoded",
        form.as_bytes(),
        Some(&sig),
    )
}

pub fn request(
    event: &str,
    delivery: &str,
    content_type: &str,
    body: &[u8],
    signature: Option<&str>,
) -> Request<Body> {
    let mut b = Request::post("/github-webhook")
        .header("user-agent", "GitHub-Hookshot/abc123")
        .header("x-github-hook-id", "468051229")
        .header("x-github-hook-installation-target-type", "repository")
        .header("content-length", body.len().to_string());
    if !event.is_empty() {
        b = b.header("x-github-event", event);
    }
    if !delivery.is_empty() {
        b = b.header("x-github-delivery", delivery);
    }
    if !content_type.is_empty() {
        b = b.header("content-type", content_type);
    }
    if let Some(sig) = signature {
        b = b.header("x-hub-signature-256", sig);
    }
    b.body(Body::from(body.to_vec())).unwrap()
}

pub fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}
