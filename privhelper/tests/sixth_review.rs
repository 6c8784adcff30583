//! The sixth review's certificate finding (at 46d6026), against the real helper as root: a
//! valid lineage holding a name outside the site's policy (made before the policy, or by hand)
//! was shrunk to the policy's names. Failed there; now refused without running certbot.
//! (Its other findings, a decoded `$uri` in a redirect, are unit tests in checker.rs; response
//! headers a site sets with `add_header` are its own behaviour, see SECURITY.md.)

use std::process::Command;
use std::time::Duration;

use protocol::client::Client;
use protocol::{Domain, Domains, ErrorCode, Request, Response, SiteName};
use testkit::nginx::Nginx;
use testkit::privhelper::{PolicySpec, PrivHelper};

#[test]
fn a_valid_lineage_loses_its_non_policy_names() {
    let Some(nginx) = Nginx::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    std::fs::create_dir_all(live.join("demo")).unwrap();
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "90",
            "-subj",
            "/CN=demo.test",
        ])
        .args(["-addext", "subjectAltName=DNS:demo.test,DNS:mail.demo.test"])
        .arg("-keyout")
        .arg(live.join("demo/privkey.pem"))
        .arg("-out")
        .arg(live.join("demo/cert.pem"))
        .output()
        .unwrap();
    assert!(st.status.success());
    let log = dir.path().join("certbot-argv");
    let mut spec = PolicySpec::new(&nginx).site("demo", &["demo.test"]);
    // A stand-in for certbot that records its argv.
    spec.certbot_argv = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("echo \"$@\" >> {}", log.display()),
        "certbot".into(),
    ];
    spec.cert_live_dir = live;
    let Some(helper) = PrivHelper::start(&nginx, &spec) else { return };
    let client = Client::new(helper.socket(), Duration::from_secs(120));
    let domains = Domains::try_from(vec![Domain::try_from("demo.test").unwrap()]).unwrap();
    let r = client
        .call(&Request::IssueCertificate { site: SiteName::try_from("demo").unwrap(), domains })
        .unwrap();
    let ran = std::fs::read_to_string(&log).unwrap_or_default();
    println!("{r:?}\ncertbot argv: {ran}");
    assert!(
        matches!(r, Response::Error { code: ErrorCode::NotAllowed, .. }) && ran.is_empty(),
        "certbot ran to replace a valid lineage {{demo.test, mail.demo.test}} with {{demo.test}}: {ran}"
    );
}
