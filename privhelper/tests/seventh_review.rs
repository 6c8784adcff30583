//! The seventh review (dotted site names and `cert_name`), against the real helper as root, real
//! certbot and a real ACME server (pebble): a site whose policy keeps an older lineage gets its
//! certificate there (`--cert-name <cert_name>`), and the still-valid check reads that lineage,
//! not `<live_dir>/<site>/`. No test ran `IssueCertificate` with a `cert_name` before: the
//! helper could have passed the site's name to certbot, or read the wrong lineage, unnoticed.

use std::time::Duration;

use protocol::client::Client;
use protocol::{Domain, Domains, ErrorCode, Outcome, Request, Response, SiteConfig, SiteName};
use testkit::nginx::Nginx;
use testkit::pebble::Pebble;
use testkit::prereq;
use testkit::privhelper::{PolicySpec, PrivHelper};

#[test]
fn a_kept_lineage_is_the_one_certbot_writes_and_the_one_checked() {
    if !prereq::require("certbot", prereq::have_program("certbot"), "real certificate issuance") {
        return;
    }
    let Some(nginx) = Nginx::start() else { return };
    let Some(pebble) = Pebble::start(nginx.port()) else {
        return;
    };
    let certbot_dir = tempfile::tempdir().unwrap();
    let mut spec = PolicySpec::new(&nginx)
        .site("api.demo.test", &["api.demo.test", "www.api.demo.test"])
        .site("demo", &["demo.test"]);
    spec.cert_names = vec![("api.demo.test".into(), "demo-2024".into())];
    spec.certbot_argv = pebble.certbot_argv(certbot_dir.path(), &nginx.webroot());
    spec.certbot_env = pebble.certbot_env();
    spec.cert_live_dir = Pebble::live_dir(certbot_dir.path());
    let Some(helper) = PrivHelper::start(&nginx, &spec) else {
        return;
    };
    let client = Client::new(helper.socket(), Duration::from_secs(300));
    let site = SiteName::try_from("api.demo.test").unwrap();
    let conf = format!(
        "server {{ listen {}; server_name api.demo.test; include {}/acme-challenge.conf; location / {{ return 200 api; }} }}",
        nginx.listen(),
        nginx.snippets_dir().display()
    );
    let config = SiteConfig::try_from(conf).unwrap();
    let response = client.call(&Request::WriteSite { site: site.clone(), config }).unwrap();
    assert!(
        matches!(response, Response::Done { outcome: Outcome::SiteWritten, .. }),
        "{response:?}"
    );
    let old = nginx.worker_pids();
    let response = client.call(&Request::ReloadNginx).unwrap();
    assert!(matches!(response, Response::Done { outcome: Outcome::Reloaded, .. }), "{response:?}");
    nginx.wait_for_new_workers(&old);

    let issue_for = |names: &[&str]| {
        let domains: Vec<Domain> = names.iter().map(|n| Domain::try_from(*n).unwrap()).collect();
        let domains = Domains::try_from(domains).unwrap();
        client.call(&Request::IssueCertificate { site: site.clone(), domains }).unwrap()
    };
    let issue = || issue_for(&["api.demo.test"]);
    let response = issue();
    assert!(
        matches!(response, Response::Done { outcome: Outcome::CertificateIssued, .. }),
        "{response:?}\npebble log:\n{}",
        pebble.log()
    );
    let live = Pebble::live_dir(certbot_dir.path());
    assert!(live.join("demo-2024/fullchain.pem").exists(), "the kept lineage was written");
    for other in ["api.demo.test", "demo"] {
        assert!(!live.join(other).exists(), "certbot wrote lineage {other}");
    }
    // The ACME server gone: the kept lineage is the one found valid, certbot does not run.
    drop(pebble);
    let response = issue();
    assert!(
        matches!(response, Response::Done { outcome: Outcome::CertificateStillValid, .. }),
        "{response:?}"
    );
    // Read from the kept lineage too: a set that drops its name is refused before certbot
    // runs; a set that grows it runs certbot (which fails, the ACME server being gone).
    let response = issue_for(&["www.api.demo.test"]);
    assert!(
        matches!(&response, Response::Error { code: ErrorCode::NotAllowed, detail }
            if detail.as_str().contains("api.demo.test is on the valid certificate")),
        "{response:?}"
    );
    let response = issue_for(&["api.demo.test", "www.api.demo.test"]);
    assert!(
        matches!(response, Response::Error { code: ErrorCode::CommandFailed, .. }),
        "certbot ran: {response:?}"
    );
}
