//! A repository hook's deliveries: `GET /repos/{owner}/{repo}/hooks/{hook_id}/deliveries`
//! (paginated with a cursor carried in the `Link` header) and
//! `POST /repos/{owner}/{repo}/hooks/{hook_id}/deliveries/{delivery_id}/attempts` (redeliver).
//!
//! Needs a token that may administer the repository's webhooks (a fine-grained token with the
//! repository permission "Webhooks: read and write"). Rate limits are reported as
//! [`ApiError::RateLimited`] so the caller stops its pass at once.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Deserialize;

use crate::config::{Config, Secret};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("GitHub API: {0}")]
    Http(#[from] reqwest::Error),
    #[error("GitHub API rate limit reached (HTTP {status})")]
    RateLimited {
        status: u16,
        /// From `retry-after` or `x-ratelimit-reset`, when GitHub said.
        retry_after: Option<Duration>,
    },
    #[error("GitHub API answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("GitHub API: unexpected deliveries list: {0}")]
    Decode(String),
}

/// One attempt at delivering a hook event, as GitHub lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HookDelivery {
    /// GitHub's id of this attempt (a redelivery is a new attempt, with a new id).
    pub id: i64,
    /// The delivery's guid: the `X-GitHub-Delivery` header, the same for every attempt.
    pub guid: String,
    /// RFC 3339.
    pub delivered_at: String,
    #[serde(default)]
    pub redelivery: bool,
    /// `OK`, or GitHub's words for the failure (`Invalid HTTP Response: 502`).
    pub status: String,
    /// Our answer's HTTP status; 0 when no answer came.
    pub status_code: i64,
    pub event: String,
}

impl HookDelivery {
    /// Did this attempt fail, as GitHub sees it?
    pub fn failed(&self) -> bool {
        self.status != "OK" || !(200..300).contains(&self.status_code)
    }
}

/// One page of deliveries, newest first, and where the next page is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub deliveries: Vec<HookDelivery>,
    /// The `rel="next"` URL of the `Link` header, only when it points at the configured API.
    pub next: Option<String>,
}

/// Lists and redelivers hook deliveries; `None` from [`DeliveriesClient::from_config`] when no
/// token is set.
#[derive(Debug, Clone)]
pub struct DeliveriesClient {
    http: reqwest::Client,
    api_url: String,
    token: Secret,
}

/// Longest error body kept (GitHub's JSON error messages are short; a proxy's page is not).
const MAX_BODY: usize = 300;

/// The most of a deliveries page read (100 deliveries are some 30 KB).
const MAX_ANSWER: usize = 4 << 20;

impl DeliveriesClient {
    pub fn from_config(config: &Config) -> Option<Self> {
        let token = config.github.token.clone()?;
        Some(Self {
            http: super::http_client()?,
            api_url: config.github.api_url.clone(),
            token,
        })
    }

    /// The first page of `repository`'s hook `hook_id` deliveries.
    pub async fn first_page(
        &self,
        repository: &str,
        hook_id: u64,
        per_page: u32,
    ) -> Result<Page, ApiError> {
        let url = format!(
            "{}/repos/{repository}/hooks/{hook_id}/deliveries?per_page={per_page}",
            self.api_url
        );
        self.page(&url).await
    }

    /// The page at `url` (a [`Page::next`]).
    pub async fn page(&self, url: &str) -> Result<Page, ApiError> {
        let response = self
            .http
            .get(url)
            .bearer_auth(self.token.expose())
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await?;
        let response = check(response).await?;
        let next = next_link(response.headers()).filter(|n| self.is_ours(n));
        let body = read_at_most(response, MAX_ANSWER).await?;
        if body.len() > MAX_ANSWER {
            return Err(ApiError::Decode(format!(
                "the answer is larger than {MAX_ANSWER} bytes"
            )));
        }
        let deliveries: Vec<HookDelivery> =
            serde_json::from_slice(&body).map_err(|e| ApiError::Decode(e.to_string()))?;
        Ok(Page { deliveries, next })
    }

    /// Asks GitHub to deliver attempt `delivery_id` again; the HTTP status of the answer.
    pub async fn redeliver(
        &self,
        repository: &str,
        hook_id: u64,
        delivery_id: i64,
    ) -> Result<u16, ApiError> {
        let url = format!(
            "{}/repos/{repository}/hooks/{hook_id}/deliveries/{delivery_id}/attempts",
            self.api_url
        );
        let response = self
            .http
            .post(url)
            .bearer_auth(self.token.expose())
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await?;
        Ok(check(response).await?.status().as_u16())
    }

    /// The token is sent only to the configured API: a `Link` elsewhere is not followed.
    fn is_ours(&self, url: &str) -> bool {
        url.strip_prefix(&self.api_url)
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The response if it is a success; otherwise the error it means.
async fn check(response: reqwest::Response) -> Result<reqwest::Response, ApiError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if let Some(retry_after) = rate_limit(status.as_u16(), response.headers()) {
        return Err(ApiError::RateLimited {
            status: status.as_u16(),
            retry_after,
        });
    }
    let body = read_at_most(response, MAX_BODY * 4)
        .await
        .unwrap_or_default();
    let body: String = String::from_utf8_lossy(&body)
        .chars()
        .take(MAX_BODY)
        .collect();
    Err(ApiError::Refused {
        status: status.as_u16(),
        body: body.replace(['\r', '\n'], " "),
    })
}

/// Reads the body until its end or until more than `limit` bytes came (then stops reading: the
/// answer has `limit + 1` bytes or more), so a hostile API cannot make us hold an endless body.
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = (limit + 1).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() > limit {
            break;
        }
    }
    Ok(body)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `Some(wait)` when the answer is a rate limit (primary: 403/429 with
/// `x-ratelimit-remaining: 0`; secondary: 403/429 with `retry-after`; or any 429).
fn rate_limit(status: u16, headers: &HeaderMap) -> Option<Option<Duration>> {
    if !matches!(status, 403 | 429) {
        return None;
    }
    let retry_after = header(headers, "retry-after").and_then(|v| v.parse::<u64>().ok());
    let exhausted = header(headers, "x-ratelimit-remaining") == Some("0");
    if !(exhausted || retry_after.is_some() || status == 429) {
        return None;
    }
    let until_reset = header(headers, "x-ratelimit-reset")
        .and_then(|v| v.parse::<u64>().ok())
        .and_then(|reset| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs();
            reset.checked_sub(now)
        });
    Some(retry_after.or(until_reset).map(Duration::from_secs))
}

/// The `rel="next"` target of a `Link` header: `<https://…?cursor=x>; rel="next", <…>; rel="prev"`.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = header(headers, "link")?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn next_link_is_found_among_others() {
        let h = headers(&[(
            "link",
            "<https://api.github.com/x?cursor=p1>; rel=\"prev\", <https://api.github.com/x?per_page=2&cursor=v1%3A2>; rel=\"next\"",
        )]);
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/x?per_page=2&cursor=v1%3A2")
        );
        assert_eq!(next_link(&headers(&[("link", "<a>; rel=\"prev\"")])), None);
        assert_eq!(next_link(&HeaderMap::new()), None);
    }

    #[test]
    fn the_token_follows_only_links_under_the_configured_api() {
        let client = DeliveriesClient {
            http: reqwest::Client::new(),
            api_url: "http://127.0.0.1:1234".into(),
            token: Secret::new("t"),
        };
        assert!(client.is_ours("http://127.0.0.1:1234/repos/o/r/hooks/1/deliveries?cursor=x"));
        for elsewhere in [
            "http://127.0.0.1:12345/repos/o/r/hooks/1/deliveries",
            "http://127.0.0.1:1234@evil.example/repos",
            "https://evil.example/http://127.0.0.1:1234/",
            "http://127.0.0.1:1234",
        ] {
            assert!(!client.is_ours(elsewhere), "{elsewhere}");
        }
    }

    /// Serves one answer: `head` (status line and headers), then `filler` bytes of `fill`
    /// between `open` and `close`, without a length (the connection's end ends the body).
    fn serve_huge(head: &'static str, open: &'static [u8], close: &'static [u8]) -> String {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(open);
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..64 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = s.write_all(close);
        });
        url
    }

    const _: () = assert!(
        MAX_ANSWER < (64 << 20),
        "the cap is below what the test serves"
    );

    #[tokio::test]
    async fn a_huge_answer_is_refused_not_read_into_memory() {
        let client = |api_url: String| DeliveriesClient {
            http: reqwest::Client::new(),
            api_url,
            token: Secret::new("t"),
        };
        // 64 MiB of whitespace around a valid (empty) list: the whole of it used to be read
        // into memory before decoding.
        let url = serve_huge(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
            b"[",
            b"]",
        );
        let page = client(url.clone()).page(&format!("{url}/x")).await;
        assert!(
            matches!(page, Err(ApiError::Decode(_))),
            "a 64 MiB list must be refused: {page:?}"
        );
        // The same for a refusal's body, of which only a few hundred characters are kept.
        let url = serve_huge(
            "HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\n\r\n",
            b"x",
            b"y",
        );
        let page = client(url.clone()).page(&format!("{url}/x")).await;
        match page {
            Err(ApiError::Refused { status: 500, body }) => assert!(body.len() <= MAX_BODY),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_limits_are_told_from_refusals() {
        assert_eq!(
            rate_limit(403, &headers(&[("x-ratelimit-remaining", "0")])),
            Some(None)
        );
        assert_eq!(
            rate_limit(403, &headers(&[("retry-after", "60")])),
            Some(Some(Duration::from_secs(60)))
        );
        assert_eq!(rate_limit(429, &HeaderMap::new()), Some(None));
        // A 403 without either header is a permission problem, not a rate limit.
        assert_eq!(
            rate_limit(403, &headers(&[("x-ratelimit-remaining", "4999")])),
            None
        );
        assert_eq!(rate_limit(500, &headers(&[("retry-after", "1")])), None);
    }

    #[test]
    fn failed_means_not_ok_or_not_2xx() {
        let d = |status: &str, code| HookDelivery {
            id: 1,
            guid: "g".into(),
            delivered_at: "2026-01-01T00:00:00Z".into(),
            redelivery: false,
            status: status.into(),
            status_code: code,
            event: "push".into(),
        };
        assert!(!d("OK", 202).failed());
        assert!(d("Invalid HTTP Response: 502", 502).failed());
        assert!(d("We couldn't deliver this payload: timed out", 0).failed());
    }
}
