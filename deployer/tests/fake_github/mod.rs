//! The one fake allowed: GitHub's REST API, on a loopback port, for the endpoints the deployer
//! calls (GitHub itself cannot be reached from the tests):
//! - `POST /repos/{owner}/{repo}/statuses/{sha}` (commit statuses), answered with a settable
//!   status;
//! - `GET /repos/{owner}/{repo}/hooks/{hook_id}/deliveries`, paginated like GitHub's, with a
//!   `cursor` query parameter and a `Link: <…>; rel="next"` header; any page can be made to
//!   answer a rate limit (403, `x-ratelimit-remaining: 0`);
//! - `POST /repos/{owner}/{repo}/hooks/{hook_id}/deliveries/{id}/attempts` (redeliver), 202.
//!
//! Every request is logged in order. The server runs on a thread of its own, so synchronous and
//! asynchronous tests can both use it; it stops when the [`FakeGithub`] is dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

/// One commit status received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub repo: String,
    pub sha: String,
    pub authorization: String,
    pub accept: String,
    pub body: Value,
}

/// One request, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: String,
    /// The HTTP status answered.
    pub answer: u16,
}

impl Logged {
    /// `GET <hook> page <n>` (1-based; ` (403)` appended when rate-limited) or
    /// `POST <hook> attempts <id>`, for readable assertions.
    pub fn short(&self) -> String {
        let hook = self
            .target
            .split_once("/hooks/")
            .and_then(|(_, rest)| rest.split('/').next())
            .unwrap_or("?");
        if self.method == "POST" && self.target.ends_with("/attempts") {
            let id = self.target.rsplit('/').nth(1).unwrap_or_default();
            return format!("POST {hook} attempts {id}");
        }
        if self.method == "GET" && self.target.contains("/deliveries") {
            let page = self
                .target
                .split_once("cursor=p")
                .map_or("1", |(_, n)| n.split('&').next().unwrap_or("?"));
            let limited = if self.answer == 403 { " (403)" } else { "" };
            return format!("GET {hook} page {page}{limited}");
        }
        format!("{} {}", self.method, self.target)
    }
}

#[derive(Debug, Default)]
struct Inner {
    status_answer: u16,
    statuses: Vec<Seen>,
    /// hook id -> pages of deliveries (GitHub's JSON objects), newest first.
    deliveries: HashMap<u64, Vec<Vec<Value>>>,
    /// 1-based page number that answers a rate limit, if any.
    rate_limited_page: Option<usize>,
    log: Vec<Logged>,
}

#[derive(Debug, Clone, Default)]
struct Shared(Arc<Mutex<Inner>>);

/// A running fake; stops on drop.
#[derive(Debug)]
pub struct FakeGithub {
    /// The base URL, for `github.api_url`.
    pub url: String,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeGithub {
    pub fn start() -> FakeGithub {
        let shared = Shared::default();
        shared.0.lock().unwrap().status_answer = 201;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .route("/repos/{owner}/{repo}/statuses/{sha}", post(statuses))
            .route(
                "/repos/{owner}/{repo}/hooks/{hook_id}/deliveries",
                get(deliveries),
            )
            .route(
                "/repos/{owner}/{repo}/hooks/{hook_id}/deliveries/{id}/attempts",
                post(attempts),
            )
            .with_state((shared.clone(), url.clone()));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        FakeGithub {
            url,
            shared,
            stop: Some(stop),
        }
    }

    /// The HTTP status commit statuses are answered with (201 at first).
    pub fn answer_statuses_with(&self, status: u16) {
        self.shared.0.lock().unwrap().status_answer = status;
    }

    pub fn statuses(&self) -> Vec<Seen> {
        self.shared.0.lock().unwrap().statuses.clone()
    }

    /// Serves `pages` (each a list of deliveries, newest first) for hook `hook_id`.
    pub fn serve_deliveries(&self, hook_id: u64, pages: Vec<Vec<Value>>) {
        self.shared
            .0
            .lock()
            .unwrap()
            .deliveries
            .insert(hook_id, pages);
    }

    /// Makes page `page` (1-based) answer 403 with `x-ratelimit-remaining: 0`; `None` lifts it.
    pub fn rate_limit_page(&self, page: Option<usize>) {
        self.shared.0.lock().unwrap().rate_limited_page = page;
    }

    /// Every request so far, in order.
    pub fn log(&self) -> Vec<Logged> {
        self.shared.0.lock().unwrap().log.clone()
    }

    /// The delivery ids redelivery was asked for, in order.
    pub fn redelivery_requests(&self) -> Vec<i64> {
        self.log()
            .iter()
            .filter(|l| l.method == "POST" && l.target.ends_with("/attempts"))
            .filter_map(|l| l.target.rsplit('/').nth(1)?.parse().ok())
            .collect()
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A delivery as GitHub lists it; `status_code` 0 and a `status` other than `OK` for a failure.
pub fn delivery(id: i64, guid: &str, status_code: u16, delivered_at: &str) -> Value {
    let status = if (200..300).contains(&status_code) {
        "OK".to_owned()
    } else if status_code == 0 {
        "We couldn't deliver this payload: Connection refused".to_owned()
    } else {
        format!("Invalid HTTP Response: {status_code}")
    };
    serde_json::json!({
        "id": id,
        "guid": guid,
        "delivered_at": delivered_at,
        "redelivery": false,
        "duration": 0.27,
        "status": status,
        "status_code": status_code,
        "event": "push",
        "action": null,
        "installation_id": null,
        "repository_id": 4242,
        "throttled_at": null,
    })
}

fn log(shared: &Shared, method: &str, target: String, headers: &HeaderMap, answer: u16) {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    shared.0.lock().unwrap().log.push(Logged {
        method: method.to_owned(),
        target,
        authorization,
        answer,
    });
}

async fn statuses(
    State((shared, _)): State<(Shared, String)>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let answer = shared.0.lock().unwrap().status_answer;
    log(
        &shared,
        "POST",
        format!("/repos/{owner}/{repo}/statuses/{sha}"),
        &headers,
        answer,
    );
    let mut inner = shared.0.lock().unwrap();
    inner.statuses.push(Seen {
        repo: format!("{owner}/{repo}"),
        sha,
        authorization: header("authorization"),
        accept: header("accept"),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    });
    StatusCode::from_u16(inner.status_answer).unwrap()
}

async fn deliveries(
    State((shared, base)): State<(Shared, String)>,
    Path((owner, repo, hook_id)): Path<(String, String, u64)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/hooks/{hook_id}/deliveries");
    let mut target = path.clone();
    let mut params: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    params.sort();
    if !params.is_empty() {
        target = format!("{target}?{}", params.join("&"));
    }
    let page: usize = query
        .get("cursor")
        .and_then(|c| c.strip_prefix('p'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let (limited, known) = {
        let inner = shared.0.lock().unwrap();
        (
            inner.rate_limited_page == Some(page),
            inner.deliveries.contains_key(&hook_id),
        )
    };
    let answer = match (limited, known) {
        (true, _) => 403,
        (false, false) => 404,
        (false, true) => 200,
    };
    log(&shared, "GET", target, &headers, answer);
    let inner = shared.0.lock().unwrap();
    if limited {
        return (
            StatusCode::FORBIDDEN,
            [
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-limit", "5000"),
                ("content-type", "application/json"),
            ],
            r#"{"message":"API rate limit exceeded"}"#,
        )
            .into_response();
    }
    let Some(pages) = inner.deliveries.get(&hook_id) else {
        return (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#).into_response();
    };
    let items = pages.get(page - 1).cloned().unwrap_or_default();
    let per_page = query
        .get("per_page")
        .cloned()
        .unwrap_or_else(|| "30".into());
    let mut response = axum::Json(Value::Array(items)).into_response();
    if page < pages.len() {
        let next = format!(
            "<{base}{path}?per_page={per_page}&cursor=p{}>; rel=\"next\"",
            page + 1
        );
        response.headers_mut().insert("link", next.parse().unwrap());
    }
    response
}

async fn attempts(
    State((shared, _)): State<(Shared, String)>,
    Path((owner, repo, hook_id, id)): Path<(String, String, u64, i64)>,
    headers: HeaderMap,
) -> StatusCode {
    log(
        &shared,
        "POST",
        format!("/repos/{owner}/{repo}/hooks/{hook_id}/deliveries/{id}/attempts"),
        &headers,
        202,
    );
    StatusCode::ACCEPTED
}
