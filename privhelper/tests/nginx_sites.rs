//! WriteSite / RemoveSite / ReloadNginx against a real nginx, through the real helper binary.
//! Needs root and nginx (skips loudly without them; fails under CI=true).

use std::time::Duration;

use protocol::client::Client;
use protocol::{ErrorCode, Outcome, Request, Response, SiteConfig, SiteName};
use testkit::nginx::Nginx;
use testkit::privhelper::{PolicySpec, PrivHelper};

fn start() -> Option<(Nginx, PrivHelper, Client)> {
    let nginx = Nginx::start()?;
    let spec = PolicySpec::new(&nginx)
        .site("demo", &["demo.test", "www.demo.test"])
        .site("other", &["other.test"]);
    let helper = PrivHelper::start(&nginx, &spec)?;
    let client = Client::new(helper.socket(), Duration::from_secs(120));
    Some((nginx, helper, client))
}

/// What `durhack-privhelper check-site` prints for `conf`: the helper's rendering, which is
/// exactly what WriteSite must write.
fn rendered(helper: &PrivHelper, name: &str, conf: &str) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), conf).unwrap();
    let out = std::process::Command::new(testkit::privhelper::binary())
        .arg("check-site")
        .arg("--policy")
        .arg(helper.policy_path())
        .args([std::ffi::OsStr::new(name), file.path().as_os_str()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn site(name: &str) -> SiteName {
    SiteName::try_from(name).unwrap()
}

fn write(client: &Client, name: &str, conf: &str) -> Response {
    let request =
        Request::WriteSite { site: site(name), config: SiteConfig::try_from(conf).unwrap() };
    client.call(&request).unwrap()
}

/// A site serving `content` from its own directory under the nginx www dir.
fn static_site(nginx: &Nginx, content: &str) -> String {
    let root = nginx.www_dir().join(format!("demo-{}", content.len()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), content).unwrap();
    format!(
        "server {{\n    listen {};\n    server_name demo.test www.demo.test;\n    root {};\n    index index.html;\n}}\n",
        nginx.listen(),
        root.display()
    )
}

fn reload(nginx: &Nginx, client: &Client) {
    let old = nginx.worker_pids();
    let response = client.call(&Request::ReloadNginx).unwrap();
    assert!(matches!(response, Response::Done { outcome: Outcome::Reloaded, .. }), "{response:?}");
    nginx.wait_for_new_workers(&old);
}

#[test]
fn hello_answers_the_protocol_version() {
    let Some((_nginx, _helper, client)) = start() else {
        return;
    };
    assert_eq!(
        client.call(&Request::Hello).unwrap(),
        Response::Hello { version: protocol::PROTOCOL_VERSION }
    );
}

#[test]
fn valid_site_is_written_reloaded_and_served() {
    let Some((nginx, helper, client)) = start() else {
        return;
    };
    assert_eq!(nginx.get("demo.test", "/").0, 404, "no site yet");

    let conf = static_site(&nginx, "hello from demo v1");
    let response = write(&client, "demo", &conf);
    assert!(
        matches!(response, Response::Done { outcome: Outcome::SiteWritten, .. }),
        "{response:?}"
    );
    let written = std::fs::read_to_string(nginx.sites_dir().join("demo.conf")).unwrap();
    assert_eq!(written, rendered(&helper, "demo", &conf));
    assert!(written.contains("disable_symlinks \"if_not_owner\";"), "{written}");
    reload(&nginx, &client);
    assert_eq!(
        nginx.get("demo.test", "/"),
        (200, "hello from demo v1".to_string()),
        "{}",
        nginx.error_log()
    );
    assert_eq!(nginx.get("www.demo.test", "/").1, "hello from demo v1");

    // The same content again writes nothing.
    let response = write(&client, "demo", &conf);
    assert!(
        matches!(response, Response::Done { outcome: Outcome::SiteUnchanged, .. }),
        "{response:?}"
    );

    // Removal, then the site is gone after a reload; removing again is a no-op.
    let response = client.call(&Request::RemoveSite { site: site("demo") }).unwrap();
    assert!(
        matches!(response, Response::Done { outcome: Outcome::SiteRemoved, .. }),
        "{response:?}"
    );
    assert!(!nginx.sites_dir().join("demo.conf").exists());
    reload(&nginx, &client);
    assert_eq!(nginx.get("demo.test", "/").0, 404);
    let response = client.call(&Request::RemoveSite { site: site("demo") }).unwrap();
    assert!(
        matches!(response, Response::Done { outcome: Outcome::SiteAbsent, .. }),
        "{response:?}"
    );

    // One log line per request with the peer, verb, site and decision.
    let log = helper.log();
    assert!(log.contains("verb=\"write-site\"") || log.contains("verb=write-site"), "{log}");
    assert!(log.contains("peer_uid=0") && log.contains("peer_pid="), "{log}");
    assert!(log.contains("done: SiteWritten") && log.contains("done: SiteUnchanged"), "{log}");
}

#[test]
fn conf_failing_nginx_test_is_rolled_back_and_old_content_stays() {
    let Some((nginx, helper, client)) = start() else {
        return;
    };
    let good = static_site(&nginx, "old content");
    assert!(matches!(
        write(&client, "demo", &good),
        Response::Done { outcome: Outcome::SiteWritten, .. }
    ));
    reload(&nginx, &client);
    assert_eq!(nginx.get("demo.test", "/").1, "old content");

    // Passes the checker (allowed directives, allowed paths) but nginx -t refuses it.
    let bad =
        good.replace("index index.html;", "index index.html;\n    gzip maybe;\n    expires soon;");
    let response = write(&client, "demo", &bad);
    match &response {
        Response::Error { code: ErrorCode::NginxTestFailed, detail } => {
            assert!(detail.as_str().contains("restored"), "{detail:?}");
            assert!(
                detail.as_str().contains("gzip") || detail.as_str().contains("invalid"),
                "nginx's message: {detail:?}"
            );
        }
        other => panic!("expected NginxTestFailed, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(nginx.sites_dir().join("demo.conf")).unwrap(),
        rendered(&helper, "demo", &good),
        "rolled back"
    );
    let leftovers: Vec<_> =
        std::fs::read_dir(nginx.sites_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only demo.conf remains: {leftovers:?}");
    reload(&nginx, &client);
    assert_eq!(nginx.get("demo.test", "/"), (200, "old content".to_string()));

    // A new site that fails nginx -t is removed again.
    let response = write(
        &client,
        "other",
        &format!("server {{ listen {}; server_name other.test; expires soon; }}\n", nginx.listen()),
    );
    assert!(
        matches!(response, Response::Error { code: ErrorCode::NginxTestFailed, .. }),
        "{response:?}"
    );
    assert!(!nginx.sites_dir().join("other.conf").exists());
}

#[test]
fn refused_confs_write_nothing() {
    let Some((nginx, _helper, client)) = start() else {
        return;
    };
    let l = nginx.listen();
    for conf in [
        format!("server {{ listen {l}; server_name demo.test; include /etc/shadow; }}"),
        format!("server {{ listen {l}; server_name other.test; }}"),
        format!("server {{ listen {l}; server_name demo.test; root /etc; }}"),
        format!("server {{ listen {l}; server_name demo.test; # \n load_module /tmp/x.so; }}"),
        format!("server {{ listen {l}; server_name demo.test; access_log /etc/passwd; }}"),
        format!("server {{ listen {l}; server_name demo.test; "),
        "load_module /tmp/x.so;".to_string(),
    ] {
        let response = write(&client, "demo", &conf);
        assert!(
            matches!(response, Response::Error { code: ErrorCode::ConfRefused, .. }),
            "{conf}: {response:?}"
        );
    }
    // A site outside the policy.
    let response =
        write(&client, "unknown", &format!("server {{ listen {l}; server_name demo.test; }}"));
    assert!(
        matches!(response, Response::Error { code: ErrorCode::NotAllowed, .. }),
        "{response:?}"
    );
    assert_eq!(std::fs::read_dir(nginx.sites_dir()).unwrap().count(), 0, "nothing was written");
}

#[test]
fn malformed_and_mismatched_frames_are_answered_with_errors() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let Some((_nginx, helper, client)) = start() else {
        return;
    };
    let exchange = |bytes: &[u8]| {
        let mut s = UnixStream::connect(helper.socket()).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        protocol::frame::decode::<Response>(&out).unwrap()
    };
    let mut wrong_version = protocol::frame::encode(&Request::Hello).unwrap();
    wrong_version[4..8].copy_from_slice(&99u32.to_be_bytes());
    assert!(matches!(
        exchange(&wrong_version),
        Response::Error { code: ErrorCode::VersionMismatch, .. }
    ));
    assert!(matches!(
        exchange(b"GET / HTTP/1.0\r\n\r\n"),
        Response::Error { code: ErrorCode::Malformed, .. }
    ));
    let mut two = protocol::frame::encode(&Request::Hello).unwrap();
    two.extend(protocol::frame::encode(&Request::Hello).unwrap());
    assert!(matches!(exchange(&two), Response::Error { code: ErrorCode::Malformed, .. }));
    // A client that connects and sends nothing does not block the helper for others.
    let _stalled = UnixStream::connect(helper.socket()).unwrap();
    assert!(matches!(client.call(&Request::Hello), Ok(Response::Hello { .. })));
}

/// `Reloaded` means the next request is served by the new configuration: the helper waits until
/// no old worker still accepts (exited, or "shutting down"), not only until a new one exists.
#[test]
fn reloaded_means_the_new_configuration_answers() {
    let Some((nginx, _helper, client)) = start() else {
        return;
    };
    let conf = static_site(&nginx, "served at once");
    let reloaded = |client: &Client| {
        let response = client.call(&Request::ReloadNginx).unwrap();
        assert!(
            matches!(response, Response::Done { outcome: Outcome::Reloaded, .. }),
            "{response:?}"
        );
    };
    for round in 0..5 {
        assert!(matches!(write(&client, "demo", &conf), Response::Done { .. }));
        reloaded(&client);
        assert_eq!(
            nginx.get("demo.test", "/").0,
            200,
            "round {round}: the old configuration answered"
        );
        let response = client.call(&Request::RemoveSite { site: site("demo") }).unwrap();
        assert!(matches!(response, Response::Done { outcome: Outcome::SiteRemoved, .. }));
        reloaded(&client);
        assert_eq!(
            nginx.get("demo.test", "/").0,
            404,
            "round {round}: the old configuration answered"
        );
    }
}

#[test]
fn a_dotted_site_writes_its_own_conf_and_logs_and_hostile_names_write_nothing() {
    let Some(nginx) = Nginx::start() else { return };
    let spec = PolicySpec::new(&nginx).site("api.demo.test", &["api.demo.test"]);
    let Some(helper) = PrivHelper::start(&nginx, &spec) else { return };
    let client = Client::new(helper.socket(), Duration::from_secs(120));
    let logs = nginx.logs_dir();
    let conf = format!(
        "server {{ listen {}; server_name api.demo.test; access_log {}/api.demo.test.access.log; location / {{ return 200 api; }} }}",
        nginx.listen(),
        logs.display()
    );
    let response = write(&client, "api.demo.test", &conf);
    assert!(
        matches!(response, Response::Done { outcome: Outcome::SiteWritten, .. }),
        "{response:?}"
    );
    let listing = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(listing(&nginx.sites_dir()), ["api.demo.test.conf"]);
    reload(&nginx, &client);
    assert_eq!(nginx.get("api.demo.test", "/"), (200, "api".to_string()));
    assert!(logs.join("api.demo.test.access.log").exists());

    // Names that could leave conf_dir, or hide a file, never reach the helper's actions: the
    // frame is refused as it is decoded, and nothing is written anywhere.
    // Encoded as `Request::WriteSite` is (variant 1, then its two strings), unvalidated.
    let prefix = listing(nginx.prefix());
    let raw_write = |name: &str| -> Response {
        let bytes = protocol::frame::encode(&(1u32, name.to_string(), conf.clone())).unwrap();
        let mut stream = std::os::unix::net::UnixStream::connect(helper.socket()).unwrap();
        std::io::Write::write_all(&mut stream, &bytes).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        protocol::frame::read(&mut stream).unwrap()
    };
    // The encoding is right: the valid name is understood.
    let same = raw_write("api.demo.test");
    assert!(matches!(same, Response::Done { outcome: Outcome::SiteUnchanged, .. }), "{same:?}");
    for name in ["..", ".", "../escaped", ".hidden", "api.demo.test/../../x", "a..b", "x."] {
        let answer = raw_write(name);
        assert!(
            matches!(answer, Response::Error { code: ErrorCode::Malformed, .. }),
            "{name:?}: {answer:?}"
        );
    }
    assert_eq!(listing(&nginx.sites_dir()), ["api.demo.test.conf"]);
    assert_eq!(listing(nginx.prefix()), prefix);
}
