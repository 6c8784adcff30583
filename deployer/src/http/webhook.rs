//! `POST /github-webhook`: source check, headers, content type, bounded body, signature, JSON,
//! then a durable inbox entry and 202. Every rejection is answered and logged with its reason.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::value::RawValue;
use tracing::Instrument;

use super::{AppState, MAX_BODY, signature, source};
use crate::dispatch::{EventFields, InboxEntry, now_ms};

/// A request we refuse, with the reason we log and return.
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    reason: String,
}

fn reject(status: StatusCode, reason: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.reason })),
        )
            .into_response()
    }
}

/// A delivery id is GitHub's GUID; we also use it in file names, so it is kept to
/// 1-64 of `[A-Za-z0-9-]`.
pub fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Event names are lowercase words joined by `_` today; a little leeway for new ones.
fn valid_event(event: &str) -> bool {
    !event.is_empty()
        && event.len() <= 64
        && event
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Form,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, Rejection> {
    let unsupported = |what: &str| {
        reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported content type {what}: use application/json or application/x-www-form-urlencoded"
            ),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("(none)"));
    };
    let value = value.to_str().map_err(|_| unsupported("(not ASCII)"))?;
    let essence = value.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(Encoding::Json)
    } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(Encoding::Form)
    } else {
        Err(unsupported(&format!("`{essence}`")))
    }
}

pub async fn receive(State(state): State<AppState>, request: Request) -> Response {
    let peer = super::peer_addr(request.extensions());
    let headers = request.headers();
    let delivery = header_str(headers, "x-github-delivery")
        .filter(|d| valid_delivery_id(d))
        .unwrap_or("-")
        .to_owned();
    let event = header_str(headers, "x-github-event")
        .filter(|e| valid_event(e))
        .unwrap_or("-")
        .to_owned();
    let span = tracing::info_span!("delivery", delivery = %delivery, event = %event);
    async move {
        match ingest(&state, peer, request).await {
            Ok(response) => response,
            Err(rejection) => {
                tracing::warn!(
                    status = rejection.status.as_u16(),
                    reason = %rejection.reason,
                    peer = ?peer,
                    "webhook rejected"
                );
                rejection.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn ingest(
    state: &AppState,
    peer: Option<SocketAddr>,
    request: Request,
) -> Result<Response, Rejection> {
    let inner = &state.inner;
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;

    if !inner.allowed_networks.is_empty() {
        let ip = source::client_ip(peer.map(|p| p.ip()), headers, inner.trusted_proxy_hops)
            .map_err(|e| reject(StatusCode::FORBIDDEN, e))?;
        if !source::allowed(&inner.allowed_networks, ip) {
            return Err(reject(
                StatusCode::FORBIDDEN,
                format!("{ip} is not in github.allowed_networks"),
            ));
        }
    }

    let event = match header_str(headers, "x-github-event") {
        None => return Err(reject(StatusCode::BAD_REQUEST, "missing X-GitHub-Event")),
        Some(e) if !valid_event(e) => {
            return Err(reject(StatusCode::BAD_REQUEST, "malformed X-GitHub-Event"));
        }
        Some(e) => e.to_owned(),
    };
    let delivery = match header_str(headers, "x-github-delivery") {
        None => return Err(reject(StatusCode::BAD_REQUEST, "missing X-GitHub-Delivery")),
        Some(d) if !valid_delivery_id(d) => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "malformed X-GitHub-Delivery (1-64 of A-Z, a-z, 0-9 and -)",
            ));
        }
        Some(d) => d.to_owned(),
    };
    // Informational only; kept when it looks like GitHub's numeric id.
    let hook_id = header_str(headers, "x-github-hook-id")
        .filter(|h| !h.is_empty() && h.len() <= 20 && h.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned);
    let encoding = encoding(headers)?;

    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    // Unknown lengths (chunked bodies) reserve the maximum.
    let kib = declared
        .map_or(MAX_BODY as u64, |n| n)
        .div_ceil(1024)
        .max(1);
    let kib = u32::try_from(kib).unwrap_or(u32::MAX);
    let _reserved = match tokio::time::timeout(
        inner.body_read_timeout,
        Arc::clone(&inner.body_budget).acquire_many_owned(kib),
    )
    .await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            return Err(reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many large deliveries in flight; redeliver it later",
            ));
        }
    };
    let body = read_body(body, inner.body_read_timeout).await?;

    signature::verify(
        inner.secret.expose().as_bytes(),
        &body,
        header_str(headers, "x-hub-signature-256"),
    )
    .map_err(|e| reject(StatusCode::UNAUTHORIZED, e.to_string()))?;

    let form_payload;
    let json: &[u8] = match encoding {
        Encoding::Json => &body,
        Encoding::Form => {
            form_payload = form_urlencoded::parse(&body)
                .find(|(k, _)| k == "payload")
                .map(|(_, v)| v.into_owned())
                .ok_or_else(|| {
                    reject(
                        StatusCode::BAD_REQUEST,
                        "form body without a `payload` field",
                    )
                })?;
            form_payload.as_bytes()
        }
    };
    let payload: &RawValue = serde_json::from_slice(json).map_err(|e| {
        reject(
            StatusCode::BAD_REQUEST,
            format!("the payload is not valid JSON: {e}"),
        )
    })?;
    if nesting_depth(payload.get().as_bytes()) > MAX_PAYLOAD_DEPTH {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            format!("the payload nests deeper than {MAX_PAYLOAD_DEPTH} levels"),
        ));
    }

    let entry = InboxEntry {
        event,
        delivery: delivery.clone(),
        hook_id,
        received_at_ms: now_ms(),
        payload,
    };
    let bytes = serde_json::to_vec(&entry).map_err(|e| {
        reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the inbox entry: {e}"),
        )
    })?;
    // Read the entry back exactly as the dispatcher will: refuse here what it would set aside
    // unread (a duplicated routing field, say) rather than acknowledge it.
    if let Err(e) = serde_json::from_slice::<InboxEntry<EventFields>>(&bytes) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            format!("the payload is not usable JSON: {e}"),
        ));
    }
    let inbox = inner.inbox.clone();
    let key = delivery.clone();
    let written = tokio::task::spawn_blocking(move || inbox.push(&key, &bytes))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match written {
        Ok(name) => {
            tracing::info!(entry = %name, bytes = body.len(), "delivery queued");
            Ok((
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "delivery": delivery, "status": "queued" })),
            )
                .into_response())
        }
        // Not kept, so not accepted: GitHub shows the failure and the delivery can be redelivered.
        Err(e) => {
            tracing::error!(error = %e, "cannot write the inbox");
            Err(reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the delivery right now; redeliver it later",
            ))
        }
    }
}

fn too_large() -> Rejection {
    reject(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body larger than {MAX_BODY} bytes"),
    )
}

async fn read_body(body: Body, timeout: std::time::Duration) -> Result<bytes::Bytes, Rejection> {
    match tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Err(reject(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {} s", timeout.as_secs_f32()),
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(reject(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// GitHub's payloads nest a handful of levels. Deeper is not from GitHub, and refusing it keeps
/// every accepted entry well inside serde_json's recursion limit (128) wherever it is read.
const MAX_PAYLOAD_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects in `json`, which is valid JSON (`RawValue` checked
/// it without a depth limit), counted without building anything.
fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::nesting_depth;

    #[test]
    fn nesting_depth_counts_containers_outside_strings() {
        assert_eq!(nesting_depth(b"1"), 0);
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting_depth(br#"{"a":"[[[{{{\"]]]"}"#), 1);
        assert_eq!(nesting_depth(br#"[{},[],{"x":[[]]}]"#), 4);
    }
}
