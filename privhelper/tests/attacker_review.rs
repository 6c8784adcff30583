//! The second review's reproductions (an attacker who controls the client uid, reviewing the
//! issue-9 helper at 7b92090), against the real helper as root and a real nginx. Each failed on
//! that commit. A conf that is now refused passes ("refused or harmless"); one that is written
//! must not do what the attacker wanted.

use std::time::Duration;

use protocol::client::Client;
use protocol::{ErrorCode, Outcome, Request, Response, SiteName};
use testkit::nginx::Nginx;
use testkit::privhelper::{PolicySpec, PrivHelper};

mod review_support;
use review_support::{demo_root, publish, refused, reload, start, write};

/// A regex capture is a substring of the normalised $uri, so it can be `..` by itself:
/// `/..x/etc` captures `..`. try_files/rewrite/error_page then climb out of the root.
#[test]
fn captures_climb_out_of_the_root() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    std::fs::write(root.join("index.html"), "inside").unwrap();
    // <prefix>/www/demo/../../secret.txt = <prefix>/secret.txt
    std::fs::write(nginx.prefix().join("secret.txt"), "outside the root").unwrap();
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location ~ ^/t/(..)x$ {{ try_files /$1/$1/secret.txt =404; }}\n\
           location ~ ^/r/(..)x$ {{ rewrite ^ /$1/$1/secret.txt break; }}\n\
           location ~ ^/e/(..)x$ {{ error_page 404 /$1/$1/secret.txt; return 404; }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let mut leaked = Vec::new();
    for path in ["/t/..x", "/r/..x", "/e/..x"] {
        let got = nginx.get("demo.test", path);
        eprintln!("GET {path} -> {got:?}");
        if got.1.contains("outside the root") {
            leaked.push(path);
        }
    }
    assert!(leaked.is_empty(), "read a file outside the allowed root via {leaked:?}");
}

/// Same root cause, absolute: enough `$1` segments reach `/`.
#[test]
fn captures_reach_etc_passwd() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    let up = "/$1".repeat(root.components().count() + 2);
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location ~ ^/p/(..)x$ {{ try_files {up}/etc/passwd =404; }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let passwd = nginx.get("demo.test", "/p/..x");
    eprintln!("GET /p/..x -> {passwd:?}");
    assert!(!passwd.1.contains("root:x:0:0"), "served /etc/passwd");
}

fn domains(names: &[&str]) -> protocol::Domains {
    protocol::Domains::try_from(
        names.iter().map(|n| protocol::Domain::try_from(*n).unwrap()).collect::<Vec<_>>(),
    )
    .unwrap()
}

/// The certificate guard passes only an exact name set, so alternating sets makes certbot
/// issue a brand-new certificate on every run, max_runs_per_hour times per site per hour
/// (shipped policy: 3/h/site, 3 sites under durhack.com = 9 new certificates per hour, 216 per
/// day against Let's Encrypt's 50 per registered domain per week and 5 duplicates per exact
/// set per week). Each run also replaces the live lineage with the smaller set.
#[test]
fn alternating_domain_sets_issue_a_new_certificate_every_run() {
    if !testkit::prereq::require("certbot", testkit::prereq::have_program("certbot"), "issuance") {
        return;
    }
    let Some(nginx) = Nginx::start() else { return };
    let Some(pebble) = testkit::pebble::Pebble::start(nginx.port()) else {
        return;
    };
    let certbot_dir = tempfile::tempdir().unwrap();
    let mut spec = PolicySpec::new(&nginx).site("demo", &["demo.test", "www.demo.test"]);
    spec.certbot_argv = pebble.certbot_argv(certbot_dir.path(), &nginx.webroot());
    spec.certbot_env = pebble.certbot_env();
    spec.cert_live_dir = testkit::pebble::Pebble::live_dir(certbot_dir.path());
    spec.certbot_max_runs_per_hour = 3; // the shipped policy's value
    let Some(helper) = PrivHelper::start(&nginx, &spec) else { return };
    let client = Client::new(helper.socket(), Duration::from_secs(300));
    let conf = format!(
        "server {{ listen {}; server_name demo.test www.demo.test; include {}/acme-challenge.conf; }}",
        nginx.listen(),
        nginx.snippets_dir().display()
    );
    assert!(matches!(write(&client, &conf), Response::Done { .. }));
    reload(&nginx, &client);
    let sets: [&[&str]; 3] = [&["demo.test", "www.demo.test"], &["demo.test"], &["www.demo.test"]];
    let mut issued = 0;
    for names in sets {
        let r = client
            .call(&Request::IssueCertificate {
                site: SiteName::try_from("demo").unwrap(),
                domains: domains(names),
            })
            .unwrap();
        eprintln!("IssueCertificate {names:?} -> {r:?}");
        if matches!(r, Response::Done { outcome: Outcome::CertificateIssued, .. }) {
            issued += 1;
        }
    }
    let live = testkit::pebble::Pebble::live_dir(certbot_dir.path()).join("demo/cert.pem");
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&live)
        .output()
        .unwrap();
    let sans = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("live cert now: {sans}");
    assert!(issued <= 1, "{issued} new certificates in one hour for one site");
    assert!(
        sans.contains("demo.test") && sans.contains("www.demo.test"),
        "site lost a name: {sans}"
    );
}

/// The checker refuses `return 301 $arg_to` (raw client input as the redirect target), but
/// `return 301 $args` and `return 0301 $arg_to` (nginx reads 0301 as 301) are written: the
/// Location header is whatever the client sent.
#[test]
fn redirect_target_from_raw_client_input() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let conf = format!(
        "server {{ listen {}; server_name demo.test;\n\
           location /a {{ return 0301 $arg_to; }}\n\
           location /b {{ return 301 $args; }}\n\
         }}",
        nginx.listen()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let mut open = Vec::new();
    for path in ["/a?to=https://evil.example/", "/b?https://evil.example/"] {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "-H",
                "Host: demo.test",
            ])
            .arg(format!("http://127.0.0.1:{}{path}", nginx.port()))
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("GET {path} -> {got}");
        if got.contains("evil.example") {
            open.push(path);
        }
    }
    assert!(open.is_empty(), "open redirects: {open:?}");
}

/// SECURITY.md/server.rs: "Hello ... is never stuck behind a slow certbot run". A reader that
/// has read a request blocks in `jobs.send` (queue of 64) while holding one of the 64 open
/// slots, so 1 slow job + 128 cheap queued requests make every other connection, Hello
/// included, get "busy" until the queue drains. (certbot here is `sleep 20`, standing in for
/// a slow ACME exchange.)
#[test]
fn queued_requests_make_hello_busy() {
    let Some((_nginx, helper, client)) = start(|mut s| {
        s.certbot_argv = vec!["/bin/sh".into(), "-c".into(), "sleep 20".into()];
        s
    }) else {
        return;
    };
    let socket = helper.socket();
    let slow = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            Client::new(&socket, Duration::from_secs(60)).call(&Request::IssueCertificate {
                site: SiteName::try_from("demo").unwrap(),
                domains: domains(&["demo.test"]),
            })
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let queued: Vec<_> = (0..130)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                Client::new(&socket, Duration::from_secs(60))
                    .call(&Request::RemoveSite { site: SiteName::try_from("demo").unwrap() })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let hello = client.call(&Request::Hello);
    eprintln!("Hello while certbot runs: {hello:?}");
    let ok = matches!(hello, Ok(Response::Hello { .. }));
    let _ = slow.join();
    for q in queued {
        let _ = q.join();
    }
    assert!(ok, "Hello was refused: {hello:?}");
}

/// Without any capture: each `rewrite ^ $uri/.;` / `rewrite ^ $uri.;` appends one dot, so
/// `$uri` (a FILE_VAR, "normalised") becomes `/q/x/../..` and try_files $uri climbs out.
/// No argument contains a literal `..` segment.
#[test]
fn rewrites_of_uri_build_dot_dot_without_captures() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = nginx.www_dir().join("demo");
    std::fs::create_dir_all(root.join("q")).unwrap();
    std::fs::write(nginx.prefix().join("secret.txt"), "outside the root").unwrap();
    // /q -> /q/. -> /q/.. -> /q/../. -> /q/../.. -> /q/../../. -> /q/../../.. -> ..../secret.txt
    // = <root>/q/../../../secret.txt = <prefix>/secret.txt
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location /q {{\n\
             rewrite ^ $uri/.; rewrite ^ $uri.; rewrite ^ $uri/.; rewrite ^ $uri.;\n\
             rewrite ^ $uri/.; rewrite ^ $uri.; rewrite ^ $uri/secret.txt break;\n\
             try_files $uri =404;\n\
           }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let got = nginx.get("demo.test", "/q");
    eprintln!("GET /q -> {got:?}");
    eprintln!("{}", nginx.error_log().lines().rev().take(3).collect::<Vec<_>>().join("\n"));
    assert!(!got.1.contains("outside the root"), "read a file outside the root");
}

/// The simplest form: `$uri` is "/" for a request to "/", so `$uri..` is "/..". The checker
/// looks for a `..` path segment in the literal text, and `$uri..` has none.
#[test]
fn uri_followed_by_dots_climbs_out() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    std::fs::write(nginx.prefix().join("secret.txt"), "outside the root").unwrap();
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location = / {{ try_files $uri../$uri../secret.txt =404; }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let got = nginx.get("demo.test", "/");
    eprintln!("GET / -> {got:?}");
    assert!(!got.1.contains("outside the root"), "read a file outside the root");
}

/// Does `autoindex` honour the injected `disable_symlinks if_not_owner`? A symlink owned by the
/// deploying user (here nobody) to a directory it does not own.
#[test]
fn autoindex_through_a_foreign_symlink() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    let secret_dir = nginx.prefix().join("private");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("secret-name.txt"), "x").unwrap();
    let link = root.join("ls");
    std::os::unix::fs::symlink(&secret_dir, &link).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &link,
        Some(nobody.uid),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {}; autoindex on;\n\
           location /e/ {{ if (-e $request_filename) {{ return 200 exists; }} return 404; }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    let r = write(&client, &conf);
    // The fifth review showed autoindex is not covered by disable_symlinks: refused now.
    if refused(&r) {
        return;
    }
    reload(&nginx, &client);
    let got = nginx.get("demo.test", "/ls/");
    eprintln!("GET /ls/ -> {got:?}");
    assert!(!got.1.contains("secret-name"), "listed a directory through a foreign symlink");
}

/// A server block without `listen` is accepted; nginx gives it its implicit `listen *:80`
/// (the master is root), an address outside the policy's forms (here only 127.0.0.1:<port>).
/// Being the only server there, it is that address's default server and answers every Host,
/// other sites' ACME challenges included.
#[test]
fn a_server_without_listen_gets_port_80() {
    let Some((_nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let conf = "server { server_name demo.test; return 200 \"demo answers $host$request_uri\"; }";
    let r = write(&client, conf);
    eprintln!("WriteSite: {r:?}");
    assert!(
        matches!(r, Response::Error { code: ErrorCode::ConfRefused, .. }),
        "a server with no listen (implicit *:80) was accepted"
    );
}

#[test]
fn a_server_without_listen_gets_port_80_end_to_end() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let conf = "server { server_name demo.test; return 200 \"demo answers $host$request_uri\"; }";
    if !publish(&nginx, &client, conf) {
        return;
    }
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-H",
            "Host: other.test",
            "http://127.0.0.1:80/.well-known/acme-challenge/token",
        ])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!(
        "GET http://127.0.0.1:80/.well-known/acme-challenge/token (Host: other.test) -> {body:?}"
    );
    assert!(!body.contains("demo answers"), "demo serves other.test on port 80");
}

/// Every WriteSite runs `nginx -t` as root, which creates every `access_log` file the conf
/// names (in the log dir) and never removes them, whether or not the conf is kept. One 64 KiB
/// request creates ~1000 root-owned files; a loop fills the file system's inodes.
#[test]
fn each_write_leaves_a_thousand_root_owned_files() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let logs = nginx.logs_dir();
    let count = || std::fs::read_dir(&logs).unwrap().count();
    let before = count();
    for round in 0..3 {
        let mut body = String::new();
        let mut i = 0;
        loop {
            let line = format!("access_log {}/r{round}-{i:04};", logs.display());
            if body.len() + line.len() > 60 * 1024 {
                break;
            }
            body.push_str(&line);
            i += 1;
        }
        let conf = format!("server {{ listen {}; server_name demo.test; {body} }}", nginx.listen());
        let r = write(&client, &conf);
        eprintln!("round {round}: {:?}", matches!(r, Response::Done { .. }));
    }
    let after = count();
    eprintln!("files in the log dir: {before} -> {after}");
    assert!(after - before < 100, "{} files created", after - before);
}
