//! The security review's reproductions (issue 9), each against the real helper running as root
//! and a real nginx. Every test here failed on the helper before the fix (see SECURITY.md,
//! "Findings"). Needs root and nginx (fails under CI=true without them).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use protocol::client::Client;
use protocol::{ErrorCode, Outcome, Request, Response};
use testkit::nginx::Nginx;
use testkit::privhelper::{PolicySpec, PrivHelper};

mod review_support;
use review_support::{demo_root, start, write};

fn assert_refused(nginx: &Nginx, client: &Client, conf: &str) {
    let response = write(client, conf);
    assert!(
        matches!(response, Response::Error { code: ErrorCode::ConfRefused, .. }),
        "should be refused before nginx sees it:\n{conf}\n{response:?}"
    );
    assert!(!nginx.sites_dir().join("demo.conf").exists(), "nothing written for:\n{conf}");
}

fn assert_written(client: &Client, conf: &str) {
    let response = write(client, conf);
    assert!(
        matches!(
            response,
            Response::Done { outcome: Outcome::SiteWritten | Outcome::SiteUnchanged, .. }
        ),
        "{conf}\n{response:?}"
    );
}

/// Finding 1: `${{` kept nginx's tokenizer in a word while the old checker saw a block and a
/// comment; the rest of the line became directives only nginx read (`log_format` at http level,
/// an `access_log` with an attacker-chosen file and format).
#[test]
fn a_tokenizer_split_cannot_smuggle_directives() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let (l, logs) = (nginx.listen(), nginx.logs_dir());
    let logs = logs.display();
    let conf = format!(
        "server {{\n listen {l}; server_name demo.test;\n location /a${{{{# {{ }} }} log_format evil '$arg_x'; \
         server {{ listen {l}; server_name demo.test; access_log {logs}/evil.conf evil; location /b {{\n }}\n}}\n"
    );
    assert_refused(&nginx, &client, &conf);
    assert!(!nginx.error_log().contains("evil"), "{}", nginx.error_log());
}

/// Finding 2: `UNIX:` passed the case-sensitive `unix:` checks; `$arg_u` made an open proxy.
#[test]
fn unix_sockets_in_any_case_and_open_proxies_are_refused() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "root's file").unwrap();
    let server = |body: &str| {
        format!("server {{ listen {}; server_name demo.test; {body} }}", nginx.listen())
    };
    for body in [
        format!("listen UNIX:{};", victim.display()),
        "location / { proxy_pass http://UNIX:/run/systemd/private:/; }".into(),
        "location / { proxy_pass http://$arg_u; }".into(),
        "location / { proxy_pass http://127.0.0.1:22; }".into(),
    ] {
        assert_refused(&nginx, &client, &server(&body));
    }
    assert!(victim.exists(), "the root master unlinked nothing");
}

/// Finding 4: a conf that passes `nginx -t` (its port held by another process) was answered
/// `Reloaded` while the master kept the old configuration.
#[test]
fn a_reload_nginx_did_not_apply_is_an_error() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap().to_string();
    let held_form = held.clone();
    let Some((nginx, _helper, client)) = start(|mut s| {
        s.listen.push(held_form);
        s
    }) else {
        return;
    };
    let conf = format!("server {{ listen {held}; server_name demo.test; return 200 x; }}");
    assert_written(&client, &conf);
    let before = nginx.worker_pids();
    let response = client.call(&Request::ReloadNginx).unwrap();
    match &response {
        Response::Error { code: ErrorCode::CommandFailed, detail } => {
            assert!(detail.as_str().contains("did not apply"), "{detail:?}")
        }
        other => panic!("nginx kept its old configuration, yet: {other:?}\n{}", nginx.error_log()),
    }
    assert_eq!(nginx.worker_pids(), before, "the old workers still serve");
    assert!(nginx.error_log().contains("Address already in use"), "{}", nginx.error_log());

    // Once the port is free the same reload is applied and reported done.
    drop(holder);
    let response = client.call(&Request::ReloadNginx).unwrap();
    assert!(matches!(response, Response::Done { outcome: Outcome::Reloaded, .. }), "{response:?}");
}

/// Finding 5: a site listening on an address of its own became that address's default server
/// and answered every Host there, other sites' ACME challenges included.
#[test]
fn a_site_cannot_listen_outside_the_policy_forms() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let port = testkit::nginx::free_port();
    for listen in [
        format!("127.0.0.2:{port}"),
        format!("{} default_server", nginx.listen()),
        format!("{} reuseport", nginx.listen()),
        format!("{port}"),
    ] {
        let conf = format!("server {{ listen {listen}; server_name demo.test; return 200 x; }}");
        assert_refused(&nginx, &client, &conf);
    }
}

/// Finding 6: requests were read one connection at a time, so idle connections delayed every
/// request by the read timeout each. Now reads are concurrent: a Hello is answered while 50
/// idle connections are open, even with a 30 s read timeout.
#[test]
fn idle_connections_do_not_stall_a_hello() {
    let Some((_nginx, helper, _client)) = start(|s| s) else {
        return;
    };
    // The harness's policy uses the default 5 s read timeout: 50 idle connections read one
    // after the other would hold a Hello for 250 s.
    let idle: Vec<UnixStream> =
        (0..50).map(|_| UnixStream::connect(helper.socket()).unwrap()).collect();
    let started = Instant::now();
    let client = Client::new(helper.socket(), Duration::from_secs(3));
    let hello = client.call(&Request::Hello);
    let took = started.elapsed();
    eprintln!("[review_attacks] Hello with 50 idle connections open: {took:?}");
    assert!(matches!(hello, Ok(Response::Hello { .. })), "{hello:?}");
    drop(idle);
}

/// Finding 7: `try_files /$arg_p` and `rewrite ^ /$arg_p break;` read files outside the root;
/// a symlink in an allowed root was followed anywhere.
#[test]
fn no_escape_from_the_root_at_request_time() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    std::fs::write(root.join("index.html"), "inside").unwrap();
    let secret = nginx.prefix().join("secret.txt");
    std::fs::write(&secret, "outside the root").unwrap();
    let server = |body: &str| {
        format!(
            "server {{ listen {}; server_name demo.test; root {}; {body} }}",
            nginx.listen(),
            root.display()
        )
    };
    for body in [
        "location / { try_files /$arg_p =404; }",
        "location / { rewrite ^ /$arg_p break; }",
        "location / { try_files $request_uri =404; }",
        "location /x { alias /nowhere/; }",
    ] {
        assert_refused(&nginx, &client, &server(body));
    }

    // A symlink planted by the deploying user (here: owned by nobody) to a file it does not own
    // is not followed: the helper adds `disable_symlinks if_not_owner` to every server.
    let link = root.join("leak.txt");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &link,
        Some(nobody.uid),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    assert_written(&client, &server(""));
    let old = nginx.worker_pids();
    assert!(matches!(client.call(&Request::ReloadNginx).unwrap(), Response::Done { .. }));
    nginx.wait_for_new_workers(&old);
    assert_eq!(nginx.get("demo.test", "/index.html"), (200, "inside".into()));
    let (status, body) = nginx.get("demo.test", "/leak.txt");
    assert_ne!(body, "outside the root", "the symlink was followed ({status})");
    assert_eq!(status, 403);
}

/// Finding 7: a refused peer got a connection reset instead of the refusal when it had sent
/// its request before reading.
#[test]
fn a_refused_peer_reads_the_refusal_even_after_sending() {
    let Some((nginx, _helper, _client)) = start(|s| s) else {
        return;
    };
    // Serve only nobody: we (root) are then the refused peer.
    let spec = PolicySpec {
        client_user: "nobody".into(),
        ..PolicySpec::new(&nginx).site("demo", &["demo.test"])
    };
    let Some(other) = PrivHelper::start(&nginx, &spec) else {
        return;
    };
    let frame = protocol::frame::encode(&Request::ReloadNginx).unwrap();
    let mut stream = UnixStream::connect(other.socket()).unwrap();
    stream.write_all(&frame).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut answer = Vec::new();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.read_to_end(&mut answer).unwrap();
    let response: Response = protocol::frame::decode(&answer).unwrap();
    assert!(
        matches!(response, Response::Error { code: ErrorCode::PeerRefused, .. }),
        "{response:?}"
    );
}
