//! IssueCertificate with real certbot against a real ACME server (pebble), http-01 validated
//! through the test nginx's webroot. Needs root, nginx, certbot, pebble and openssl.

use std::time::Duration;

use protocol::client::Client;
use protocol::{Domain, Domains, ErrorCode, Outcome, Request, Response, SiteConfig, SiteName};
use testkit::nginx::Nginx;
use testkit::pebble::Pebble;
use testkit::prereq;
use testkit::privhelper::{PolicySpec, PrivHelper};

fn domains(names: &[&str]) -> Domains {
    Domains::try_from(names.iter().map(|n| Domain::try_from(*n).unwrap()).collect::<Vec<_>>())
        .unwrap()
}

fn issue(client: &Client, names: &[&str]) -> Response {
    client
        .call(&Request::IssueCertificate {
            site: SiteName::try_from("demo").unwrap(),
            domains: domains(names),
        })
        .unwrap()
}

fn certbot_runs(certbot_dir: &std::path::Path) -> usize {
    // certbot starts a new log file (rotating the old ones) on every run.
    std::fs::read_dir(certbot_dir.join("logs")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn certificates_are_issued_once_and_only_for_policy_domains() {
    if !prereq::require("certbot", prereq::have_program("certbot"), "real certificate issuance") {
        return;
    }
    let Some(nginx) = Nginx::start() else { return };
    let Some(pebble) = Pebble::start(nginx.port()) else {
        return;
    };
    let certbot_dir = tempfile::tempdir().unwrap();
    let mut spec = PolicySpec::new(&nginx)
        .site("demo", &["demo.test", "www.demo.test"])
        .site("other", &["other.test"]);
    spec.certbot_argv = pebble.certbot_argv(certbot_dir.path(), &nginx.webroot());
    spec.certbot_env = pebble.certbot_env();
    spec.cert_live_dir = Pebble::live_dir(certbot_dir.path());
    // Two runs an hour per site, to reach the limit quickly.
    spec.certbot_max_runs_per_hour = 2;
    let Some(helper) = PrivHelper::start(&nginx, &spec) else {
        return;
    };
    let client = Client::new(helper.socket(), Duration::from_secs(300));

    // The site serves the challenge directory through the policy's snippet.
    let conf = format!(
        "server {{\n    listen {};\n    server_name demo.test www.demo.test;\n    include {}/acme-challenge.conf;\n    location / {{ return 200 demo; }}\n}}\n",
        nginx.listen(),
        nginx.snippets_dir().display()
    );
    let response = client
        .call(&Request::WriteSite {
            site: SiteName::try_from("demo").unwrap(),
            config: SiteConfig::try_from(conf).unwrap(),
        })
        .unwrap();
    assert!(
        matches!(response, Response::Done { outcome: Outcome::SiteWritten, .. }),
        "{response:?}"
    );
    let old = nginx.worker_pids();
    assert!(matches!(
        client.call(&Request::ReloadNginx).unwrap(),
        Response::Done { outcome: Outcome::Reloaded, .. }
    ));
    nginx.wait_for_new_workers(&old);

    // A domain outside the policy (or another site's) is refused without certbot running.
    for names in [&["evil.test"][..], &["demo.test", "other.test"][..]] {
        let response = issue(&client, names);
        assert!(
            matches!(response, Response::Error { code: ErrorCode::NotAllowed, .. }),
            "{response:?}"
        );
    }
    assert_eq!(certbot_runs(certbot_dir.path()), 0, "certbot never ran");

    // A real certificate from the real ACME server.
    let response = issue(&client, &["demo.test", "www.demo.test"]);
    assert!(
        matches!(response, Response::Done { outcome: Outcome::CertificateIssued, .. }),
        "{response:?}\npebble log:\n{}",
        pebble.log()
    );
    let live = Pebble::live_dir(certbot_dir.path()).join("demo");
    let cert = std::fs::read_to_string(live.join("fullchain.pem")).unwrap();
    assert!(cert.contains("BEGIN CERTIFICATE"));
    assert!(live.join("privkey.pem").exists());
    let runs = certbot_runs(certbot_dir.path());
    assert!(runs >= 1);

    // With the ACME server gone, asking again for exactly these names must not need it: the
    // valid certificate is kept and certbot does not run.
    drop(pebble);
    let response = issue(&client, &["demo.test", "www.demo.test"]);
    assert!(
        matches!(response, Response::Done { outcome: Outcome::CertificateStillValid, .. }),
        "{response:?}"
    );
    assert_eq!(certbot_runs(certbot_dir.path()), runs, "certbot did not run again");
    // A smaller set is not "still valid" either, and would shrink the live certificate:
    // refused without running certbot, so alternating sets cannot burn rate limits.
    for names in [&["www.demo.test"][..], &["demo.test"][..]] {
        let response = issue(&client, names);
        match response {
            Response::Error { code: ErrorCode::NotAllowed, detail } => {
                assert!(detail.as_str().contains("request it too"), "{detail:?}")
            }
            other => panic!("expected a refusal to shrink, got {other:?}"),
        }
    }
    assert_eq!(certbot_runs(certbot_dir.path()), runs, "certbot did not run");
    // Failing runs (no ACME server now) count against the hourly limit (2 in this policy).
    let other = |names: &[&str]| {
        let site = SiteName::try_from("other").unwrap();
        client.call(&Request::IssueCertificate { site, domains: domains(names) }).unwrap()
    };
    for _ in 0..2 {
        let response = other(&["other.test"]);
        assert!(
            matches!(&response, Response::Error { code: ErrorCode::CommandFailed, .. }),
            "certbot ran and failed: {response:?}"
        );
    }
    match other(&["other.test"]) {
        Response::Error { code: ErrorCode::NotAllowed, detail } => {
            assert!(detail.as_str().contains("max_runs_per_hour"), "{detail:?}")
        }
        other => panic!("expected the hourly limit, got {other:?}"),
    }
    let log = helper.log();
    assert!(
        log.contains("done: CertificateStillValid") && log.contains("error: NotAllowed"),
        "{log}"
    );
}
