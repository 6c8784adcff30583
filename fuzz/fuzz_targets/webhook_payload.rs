//! Webhook payload parsing and routing, through the deployer's real HTTP handler: a correctly
//! signed body is posted to `POST /github-webhook` (the axum router, in-process), and
//! - the handler never panics and never answers 5xx or 401 (the signature is right);
//! - a 202 leaves exactly one inbox entry, and that entry reads back the way the dispatcher reads
//!   it (`InboxEntry<EventFields>`) with the same event, delivery and payload: a delivery
//!   we acknowledge must never be one the dispatcher then sets aside as unreadable;
//! - a refusal leaves nothing in the inbox;
//! - `route(config, event, payload)` never panics, and whatever it queues is an enabled
//!   deployment watching the pushed repository and branch, with a lowercase 40-hex commit.
//!
//! Input: byte 0 chooses the encoding (bits 0-1) and the event (bits 2-3); the rest is the body.
//! Encoding 0: JSON; 1: the bytes as a form body; 2: form, `payload=` + the bytes
//! percent-encoded (so JSON mutations reach the form path); 3: JSON with a charset parameter.
//!
//! The inbox lives in /dev/shm when it exists: the handler fsyncs each entry, and on tmpfs that
//! costs nothing, so the fuzzer spends its time in parsing rather than waiting for a disk.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use deployer::config::Config;
use deployer::dispatch::{EventFields, InboxEntry, inbox_dir, is_sha, route};
use deployer::http::{AppState, app, signature};
use deployer::queue::Queue;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const SECRET: &str = "fuzz-secret";
const DELIVERY: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

struct Harness {
    runtime: tokio::runtime::Runtime,
    config: Config,
    inbox: Queue,
    router: axum::Router,
}

fn state_dir() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("durhack-fuzz-webhook-{}", std::process::id()))
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let text = format!(
            r#"
state_dir = "{}"
[deployments.site]
repository = "durhack/site"
branch = "main"
path = "/srv/durhack/site"
commands = [["true"]]
[deployments.api]
repository = "DurHack/API"
branch = "release/v2"
path = "/srv/durhack/api"
[deployments.off]
repository = "durhack/site"
branch = "main"
path = "/srv/durhack/off"
enabled = false
"#,
            state_dir().display()
        );
        let config = Config::parse(&text, Path::new("fuzz.toml"), Some(SECRET.into()))
            .expect("fuzz config");
        let inbox = Queue::open(inbox_dir(&config)).expect("inbox");
        let router = app(AppState::new(&config, inbox.clone()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Harness {
            runtime,
            config,
            inbox,
            router,
        }
    })
}

fn percent_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let event = ["push", "ping", "pull_request", "push"][usize::from(mode >> 2) & 3];
    let (content_type, body) = match mode & 3 {
        0 => ("application/json", rest.to_vec()),
        1 => ("application/x-www-form-urlencoded", rest.to_vec()),
        2 => {
            let mut b = b"payload=".to_vec();
            b.extend(percent_encode(rest));
            ("application/x-www-form-urlencoded", b)
        }
        _ => ("application/json; charset=utf-8", rest.to_vec()),
    };
    let request = Request::post("/github-webhook")
        .header("content-type", content_type)
        .header("x-github-event", event)
        .header("x-github-delivery", DELIVERY)
        .header("x-github-hook-id", "12345678")
        .header(
            "x-hub-signature-256",
            signature::sign(SECRET.as_bytes(), &body),
        )
        .body(Body::from(body))
        .expect("request");
    let response = h
        .runtime
        .block_on(h.router.clone().oneshot(request))
        .expect("infallible");
    let status = response.status();
    assert!(
        !status.is_server_error() && status != StatusCode::UNAUTHORIZED,
        "{status} for a signed body"
    );
    let names = h.inbox.list().expect("list the inbox");
    if status != StatusCode::ACCEPTED {
        assert!(names.is_empty(), "{status} but the inbox holds {names:?}");
        return;
    }
    assert_eq!(names.len(), 1, "one 202, one entry: {names:?}");
    let contents = h.inbox.read(&names[0]).expect("read").expect("entry");
    h.inbox.remove(&names[0]).expect("remove");

    // Exactly how dispatch::handle reads it; failing here means the dispatcher would move an
    // acknowledged delivery aside as unreadable.
    let entry: InboxEntry<EventFields> = match serde_json::from_slice(&contents) {
        Ok(e) => e,
        Err(e) => panic!(
            "202, but the dispatcher cannot read the entry: {e}\n{}",
            String::from_utf8_lossy(&contents[..contents.len().min(400)])
        ),
    };
    assert_eq!(entry.event, event);
    assert_eq!(entry.delivery, DELIVERY);

    let routing = route(&h.config, &entry.event, &entry.payload);
    if !routing.deployments.is_empty() {
        assert_eq!(entry.event, "push");
        let sha = routing.push.sha.as_deref().expect("routed push has a sha");
        assert!(is_sha(sha) && sha == sha.to_ascii_lowercase(), "{sha}");
        let repo = routing.push.repository.as_deref().expect("repository");
        let branch = routing.push.branch.as_deref().expect("branch");
        for name in &routing.deployments {
            let d = &h.config.deployments[name];
            assert!(d.enabled, "{name} is disabled");
            assert!(d.repository.eq_ignore_ascii_case(repo) && d.branch == branch);
        }
    }
});
