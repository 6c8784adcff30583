//! The webhook endpoint through `app(state)` with `oneshot`: every rejection, both content
//! types, and what an accepted delivery leaves in the inbox.

mod ingest_support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use deployer::dispatch::{InboxEntry, inbox_dir};
use deployer::http::{AppState, MAX_BODY, app, signature::sign};
use deployer::queue::Queue;
use http_body_util::BodyExt;
use ingest_support::*;
use serde_json::Value;
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
    inbox: Queue,
}

fn fixture(top: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), top);
    let inbox = Queue::open(inbox_dir(&config)).unwrap();
    Fixture {
        state: AppState::new(&config, inbox.clone()),
        inbox,
        _dir: dir,
    }
}

async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, Value) {
    let res = app(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

fn from(mut req: Request<Body>, peer: &str) -> Request<Body> {
    let addr: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

fn inbox_entries(inbox: &Queue) -> Vec<InboxEntry<Value>> {
    inbox
        .list()
        .unwrap()
        .iter()
        .map(|n| serde_json::from_slice(&inbox.read(n).unwrap().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn health() {
    let f = fixture("");
    let (status, body) = send(&f.state, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "durhack-deployer");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    let get = Request::get("/github-webhook").body(Body::empty()).unwrap();
    assert_eq!(send(&f.state, get).await.0, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = send(
        &f.state,
        Request::post("/hooks").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn a_signed_push_is_queued_durably_with_its_headers() {
    let f = fixture("");
    let payload = push("octo-org/site", "main", &sha(1), &sha(2));
    let (status, body) = send(&f.state, signed("push", "d-1", &to_vec(&payload))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"delivery": "d-1", "status": "queued"})
    );
    let names = f.inbox.list().unwrap();
    assert_eq!(names.len(), 1);
    assert!(
        names[0].ends_with("-d-1.json") && names[0].len() == 20 + 1 + 3 + 5,
        "{names:?}"
    );
    let entry = &inbox_entries(&f.inbox)[0];
    assert_eq!(entry.event, "push");
    assert_eq!(entry.delivery, "d-1");
    assert_eq!(entry.hook_id.as_deref(), Some("468051229"));
    assert!(entry.received_at_ms > 1_700_000_000_000);
    assert_eq!(entry.payload, payload);
}

#[tokio::test]
async fn form_encoded_payloads_are_accepted_and_stored_as_json() {
    let f = fixture("");
    let payload = ping("octo-org/site");
    let (status, _) = send(&f.state, signed_form("ping", "form-1", &to_vec(&payload))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(inbox_entries(&f.inbox)[0].payload, payload);

    // The signature covers the raw form body, not the JSON inside it.
    let json = to_vec(&payload);
    let form = format!(
        "payload={}",
        form_urlencoded::byte_serialize(&json).collect::<String>()
    );
    let wrong = sign(SECRET.as_bytes(), &json);
    let req = request(
        "ping",
        "form-2",
        "application/x-www-form-urlencoded",
        form.as_bytes(),
        Some(&wrong),
    );
    assert_eq!(send(&f.state, req).await.0, StatusCode::UNAUTHORIZED);

    let body = b"zen=no+payload+here";
    let sig = sign(SECRET.as_bytes(), body);
    let req = request(
        "ping",
        "form-3",
        "application/x-www-form-urlencoded",
        body,
        Some(&sig),
    );
    assert_eq!(send(&f.state, req).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(f.inbox.list().unwrap().len(), 1);
}

#[tokio::test]
async fn every_event_type_is_accepted_and_charset_parameters_are_fine() {
    let f = fixture("");
    for (i, (event, payload)) in [
        ("pull_request", pull_request("octo-org/site", &sha(3))),
        (
            "workflow_run",
            workflow_run("octo-org/site", "main", &sha(3)),
        ),
        (
            "some_event_github_adds_next_year",
            serde_json::json!({"action": "new"}),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let body = to_vec(&payload);
        let sig = sign(SECRET.as_bytes(), &body);
        let req = request(
            event,
            &format!("e-{i}"),
            "application/json; charset=utf-8",
            &body,
            Some(&sig),
        );
        assert_eq!(send(&f.state, req).await.0, StatusCode::ACCEPTED, "{event}");
    }
    assert_eq!(f.inbox.list().unwrap().len(), 3);
}

#[tokio::test]
async fn signatures_are_checked_and_never_revealed() {
    let f = fixture("");
    // GitHub's documented vector: the signature is right, so the request gets as far as the
    // JSON check ("Hello, World!" is not JSON).
    let body = b"Hello, World!";
    let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(sign(SECRET.as_bytes(), body), good);
    let (status, _) = send(
        &f.state,
        request("push", "v-1", "application/json", body, Some(good)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let payload = to_vec(&push("octo-org/site", "main", &sha(1), &sha(2)));
    let expected = sign(SECRET.as_bytes(), &payload);
    let other = sign(b"not the secret", &payload);
    let tampered = {
        let mut p = payload.clone();
        p[10] ^= 1;
        sign(SECRET.as_bytes(), &p)
    };
    for sig in [
        None,
        Some(""),
        Some("sha256=nothex"),
        Some(other.as_str()),
        Some(tampered.as_str()),
        Some(&expected[7..]),
    ] {
        let (status, body) = send(
            &f.state,
            request("push", "s-1", "application/json", &payload, sig),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{sig:?}");
        let text = body.to_string();
        assert!(
            !text.contains(&expected[7..]) && !text.contains(&expected[7..20]),
            "{text}"
        );
    }
    assert!(f.inbox.list().unwrap().is_empty());
}

#[tokio::test]
async fn headers_are_required_and_well_formed() {
    let f = fixture("");
    let body = to_vec(&ping("octo-org/site"));
    let sig = sign(SECRET.as_bytes(), &body);
    let long = "a".repeat(65);
    for (event, delivery) in [
        ("", "ok-1"),
        ("ping", ""),
        ("ping", long.as_str()),
        ("ping", "has space"),
        ("ping", "../../etc/passwd"),
        ("ping", "dots.are.not.ok"),
        ("pi ng", "ok-2"),
    ] {
        let req = request(event, delivery, "application/json", &body, Some(&sig));
        assert_eq!(
            send(&f.state, req).await.0,
            StatusCode::BAD_REQUEST,
            "{event:?} {delivery:?}"
        );
    }
    let max = "A-9".repeat(21) + "z";
    assert_eq!(max.len(), 64);
    let req = request("ping", &max, "application/json", &body, Some(&sig));
    assert_eq!(send(&f.state, req).await.0, StatusCode::ACCEPTED);
    assert_eq!(f.inbox.list().unwrap().len(), 1);
}

#[tokio::test]
async fn content_types_other_than_json_and_form_are_refused() {
    let f = fixture("");
    let body = to_vec(&ping("octo-org/site"));
    let sig = sign(SECRET.as_bytes(), &body);
    for ct in [
        "",
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ] {
        let req = request("ping", "ct-1", ct, &body, Some(&sig));
        assert_eq!(
            send(&f.state, req).await.0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{ct:?}"
        );
    }
    let bad = b"{\"zen\": ";
    let sig = sign(SECRET.as_bytes(), bad);
    let req = request("ping", "ct-2", "application/json", bad, Some(&sig));
    assert_eq!(send(&f.state, req).await.0, StatusCode::BAD_REQUEST);
    assert!(f.inbox.list().unwrap().is_empty());
}

#[tokio::test]
async fn bodies_over_25_mib_are_refused_while_reading() {
    let f = fixture("");
    // Declared too long: refused before reading.
    let mut req = request("push", "big-1", "application/json", b"{}", None);
    req.headers_mut().insert(
        "content-length",
        (MAX_BODY + 1).to_string().parse().unwrap(),
    );
    assert_eq!(send(&f.state, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    // Not declared (chunked): refused once the limit is passed.
    let big = vec![b' '; MAX_BODY + 1];
    let sig = sign(SECRET.as_bytes(), &big);
    let mut req = request("push", "big-2", "application/json", &big, Some(&sig));
    req.headers_mut().remove("content-length");
    assert_eq!(send(&f.state, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    // Exactly the limit is fine.
    let mut exact = to_vec(&ping("octo-org/site"));
    exact.resize(MAX_BODY, b' ');
    let sig = sign(SECRET.as_bytes(), &exact);
    let req = request("ping", "big-3", "application/json", &exact, Some(&sig));
    assert_eq!(send(&f.state, req).await.0, StatusCode::ACCEPTED);
    assert_eq!(f.inbox.list().unwrap().len(), 1);
}

#[tokio::test]
async fn a_slow_body_times_out() {
    let f = fixture("");
    let state = f
        .state
        .clone()
        .with_body_read_timeout(Duration::from_millis(200));
    let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes, std::io::Error>::new(1);
    tx.send_data(bytes::Bytes::from_static(b"{\"zen\":"))
        .await
        .unwrap();
    let req = Request::post("/github-webhook")
        .header("x-github-event", "ping")
        .header("x-github-delivery", "slow-1")
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            sign(SECRET.as_bytes(), b"{\"zen\":1}"),
        )
        .body(Body::new(body))
        .unwrap();
    let (status, body) = send(&state, req).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    drop(tx);
    assert!(f.inbox.list().unwrap().is_empty());
}

#[tokio::test]
async fn allowed_networks_and_trusted_proxies() {
    let f = fixture("[github]\nallowed_networks = [\"140.82.112.0/20\", \"2a0a:a440::/29\"]");
    let body = to_vec(&ping("octo-org/site"));
    let ok = |d: &str| signed("ping", d, &body);
    assert_eq!(
        send(&f.state, from(ok("n-1"), "140.82.115.9:5000")).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(&f.state, from(ok("n-2"), "[2a0a:a440::1]:5000"))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(&f.state, from(ok("n-3"), "203.0.113.7:5000")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&f.state, ok("n-4")).await.0,
        StatusCode::FORBIDDEN,
        "unknown peer"
    );
    // Without trusted hops, X-Forwarded-For is the client's word and is ignored.
    let mut spoofed = from(ok("n-5"), "203.0.113.7:5000");
    spoofed
        .headers_mut()
        .insert("x-forwarded-for", "140.82.115.9".parse().unwrap());
    assert_eq!(send(&f.state, spoofed).await.0, StatusCode::FORBIDDEN);
    assert_eq!(f.inbox.list().unwrap().len(), 2);

    let f = fixture("[github]\nallowed_networks = [\"140.82.112.0/20\"]\ntrusted_proxy_hops = 1");
    let behind = |d: &str, xff: &str| {
        let mut r = from(ok(d), "127.0.0.1:5000");
        r.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        r
    };
    assert_eq!(
        send(&f.state, behind("p-1", "140.82.115.9")).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(&f.state, behind("p-2", "140.82.115.9, 203.0.113.7"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&f.state, behind("p-3", "203.0.113.7, 140.82.115.9"))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(&f.state, from(ok("p-4"), "127.0.0.1:5000")).await.0,
        StatusCode::FORBIDDEN,
        "no X-Forwarded-For"
    );
}

#[tokio::test]
async fn an_unwritable_inbox_answers_503_and_keeps_nothing() {
    let f = fixture("");
    // A file where the inbox directory was: every write fails, even as root.
    std::fs::remove_dir_all(f.inbox.dir()).unwrap();
    std::fs::write(f.inbox.dir(), b"not a directory").unwrap();
    let body = to_vec(&push("octo-org/site", "main", &sha(1), &sha(2)));
    let (status, reply) = send(&f.state, signed("push", "full-1", &body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("redeliver"));

    std::fs::remove_file(f.inbox.dir()).unwrap();
    std::fs::create_dir(f.inbox.dir()).unwrap();
    assert_eq!(
        send(&f.state, signed("push", "full-1", &body)).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        std::fs::read_dir(f.inbox.dir()).unwrap().count(),
        1,
        "no leftovers"
    );
}

/// Over a real socket: the peer address reaches `allowed_networks`, and a client that trickles
/// its headers is cut off.
#[tokio::test]
async fn the_server_passes_the_peer_address_and_cuts_off_slow_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    for (networks, want) in [("127.0.0.0/8", 202), ("10.0.0.0/8", 403)] {
        let f = fixture(&format!("[github]\nallowed_networks = [\"{networks}\"]"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(deployer::http::serve_with_header_timeout(
            listener,
            app(f.state.clone()),
            stop.clone(),
            Duration::from_millis(300),
        ));
        let body = to_vec(&ping("octo-org/site"));
        let status = reqwest::Client::new()
            .post(format!("http://{addr}/github-webhook"))
            .header("content-type", "application/json")
            .header("x-github-event", "ping")
            .header("x-github-delivery", "tcp-1")
            .header("x-hub-signature-256", sign(SECRET.as_bytes(), &body))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), want, "{networks}");

        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"POST /github-webhook HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        // Ends (EOF or reset) once the header deadline passes; the bound only stops a hang.
        let ended =
            tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the server kept a half-sent request open");

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the server stops on shutdown")
            .unwrap();
    }
}

/// Bodies being read share a memory budget: a request that cannot get its share in time is
/// answered 503 instead of being buffered.
#[tokio::test]
async fn bodies_in_flight_share_a_budget() {
    let f = fixture("");
    let state = f
        .state
        .clone()
        .with_body_budget_kib(64)
        .with_body_read_timeout(Duration::from_millis(300));
    // A chunked body's length is unknown, so it reserves the maximum, 25 MiB: more than the
    // whole budget here, so it waits for its share and is refused.
    let (_tx, stalled) = http_body_util::channel::Channel::<bytes::Bytes, std::io::Error>::new(1);
    let req = Request::post("/github-webhook")
        .header("x-github-event", "ping")
        .header("x-github-delivery", "budget-1")
        .header("content-type", "application/json")
        .body(Body::new(stalled))
        .unwrap();
    assert_eq!(send(&state, req).await.0, StatusCode::SERVICE_UNAVAILABLE);

    // A body that fits is read as usual.
    let body = to_vec(&ping("octo-org/site"));
    assert_eq!(
        send(&state, signed("ping", "budget-2", &body)).await.0,
        StatusCode::ACCEPTED
    );

    assert_eq!(f.inbox.list().unwrap().len(), 1);
}

#[tokio::test]
async fn run_page_shows_the_record_but_not_the_log() {
    use deployer::ledger::Ledger;
    use deployer::worker::{Run, RunStatus};
    let f = fixture("");
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();

    let (status, _) = send(&f.state, get("/deployments/demo/runs/r1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no ledger yet");

    let url = format!(
        "sqlite://{}?mode=rwc",
        f._dir.path().join("l.sqlite3").display()
    );
    let ledger = Ledger::open(&url).await.unwrap();
    ledger
        .insert_run(&Run {
            id: "r1".into(),
            deployment: "demo".into(),
            delivery: "d-1".into(),
            sha: "a".repeat(40),
            source: "webhook".into(),
            status: RunStatus::Failed,
            started_at: 1_000,
            finished_at: Some(2_000),
            log_path: Some("/secret/place/r1.log".into()),
            error: Some("pnpm build exited with status 1".into()),
            entry: None,
        })
        .await
        .unwrap();
    f.state.attach_ledger(ledger);

    let (status, body) = send(&f.state, get("/deployments/demo/runs/r1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["sha"], "a".repeat(40));
    assert_eq!(body["error"], "pnpm build exited with status 1");
    assert!(!body.to_string().contains("/secret/place"), "{body}");

    let (status, _) = send(&f.state, get("/deployments/other/runs/r1")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a run is only shown under its deployment"
    );
    let (status, _) = send(&f.state, get("/deployments/demo/runs/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
