//! The sites step end to end: the real workers, the real `durhack-privhelper` and a real nginx.
//! A push that adds `nginx/demo.conf` makes nginx serve the site, a push that breaks it fails
//! the run while nginx keeps serving the previous version, and removing it removes the site.

mod worker_support;

use std::time::{Duration, Instant};

use deployer::worker::RunStatus;
use testkit::nginx::Nginx;
use testkit::privhelper::{PolicySpec, PrivHelper};
use worker_support::{Env, with_status};

fn conf(nginx: &Nginx, body: &str) -> String {
    format!(
        "server {{\n    listen {};\n    server_name demo.test;\n    location / {{\n        {body}\n    }}\n}}\n",
        nginx.listen()
    )
}

/// Waits until nginx answers `demo.test/` with `expected` (a reload takes effect as the old
/// workers finish); a 404 is nginx's own page, whatever its body.
fn wait_for_page(nginx: &Nginx, expected: (u16, &str)) {
    let start = Instant::now();
    loop {
        let (status, body) = nginx.get("demo.test", "/");
        if status == expected.0 && (status == 404 || body.trim() == expected.1) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nginx answers {status} {body:?}, not {expected:?}; error log:\n{}",
            nginx.error_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn finished(env: &Env, n: usize) -> Vec<deployer::worker::Run> {
    env.wait_runs(&format!("run {n} to finish"), |r| {
        with_status(r, RunStatus::Success).len() + with_status(r, RunStatus::Failed).len() == n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_publish_break_and_remove_an_nginx_site_through_the_helper() {
    let Some(nginx) = Nginx::start() else {
        return;
    };
    let calls = tempfile::tempdir().unwrap();
    let calls_file = calls.path().join("certbot.calls");
    let mut spec = PolicySpec::new(&nginx).site("demo", &["demo.test"]);
    // A stand-in certbot that records what it was asked: the certificate itself is the helper's
    // business (tested there against pebble).
    spec.certbot_argv = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("echo \"$*\" >> {}", calls_file.display()),
        "certbot".into(),
    ];
    let Some(helper) = PrivHelper::start(&nginx, &spec) else {
        return;
    };
    let mut env = Env::new(
        &format!("helper_socket = \"{}\"", helper.socket().display()),
        r#"commands = [["true"]]
sites = { demo = "nginx/demo.conf" }"#,
    )
    .await;
    env.start().await;

    // 1. No conf in the repository yet: nothing is served.
    let c1 = env.repo.commit("readme", &[("README", "demo\n")]);
    env.repo.push();
    env.enqueue(&c1, "d1");
    let runs = finished(&env, 1).await;
    assert_eq!(
        runs[0].status,
        RunStatus::Success,
        "{runs:#?}\n{}",
        helper.log()
    );
    assert!(!nginx.sites_dir().join("demo.conf").exists());

    // 2. A push that adds the conf publishes the site and asks for its certificate.
    let c2 = env.repo.commit(
        "add the site",
        &[("nginx/demo.conf", &conf(&nginx, "return 200 \"v1\";"))],
    );
    env.repo.push();
    env.enqueue(&c2, "d2");
    let runs = finished(&env, 2).await;
    assert_eq!(
        runs[1].status,
        RunStatus::Success,
        "{runs:#?}\n{}\n{}",
        env.log_of(&runs[1]),
        helper.log()
    );
    wait_for_page(&nginx, (200, "v1"));
    let certbot = std::fs::read_to_string(&calls_file).unwrap_or_default();
    assert!(
        certbot.contains("--cert-name demo") && certbot.contains("-d demo.test"),
        "{certbot:?}"
    );

    // 3. A push that breaks the conf fails the run with the helper's message; nginx keeps
    //    serving the previous version.
    let c3 = env.repo.commit(
        "break the site",
        &[(
            "nginx/demo.conf",
            &conf(&nginx, "return 200 \"v2\"; proxy_pass;"),
        )],
    );
    env.repo.push();
    env.enqueue(&c3, "d3");
    let runs = finished(&env, 3).await;
    assert_eq!(runs[2].status, RunStatus::Failed, "{runs:#?}");
    let error = runs[2].error.as_deref().unwrap();
    assert!(error.contains("refused write-site for demo"), "{error}");
    let log = env.log_of(&runs[2]);
    assert!(log.contains("helper refused write-site for demo"), "{log}");
    wait_for_page(&nginx, (200, "v1"));
    assert_eq!(
        env.ledger.deployed_sha("app").await.unwrap(),
        Some(c2.clone())
    );

    // 4. A fix deploys again.
    let c4 = env.repo.commit(
        "fix the site",
        &[("nginx/demo.conf", &conf(&nginx, "return 200 \"v3\";"))],
    );
    env.repo.push();
    env.enqueue(&c4, "d4");
    let runs = finished(&env, 4).await;
    assert_eq!(
        runs[3].status,
        RunStatus::Success,
        "{}",
        env.log_of(&runs[3])
    );
    wait_for_page(&nginx, (200, "v3"));

    // 5. Removing the conf from the repository removes the site.
    let c5 = env.repo.remove("drop the site", "nginx/demo.conf");
    env.repo.push();
    env.enqueue(&c5, "d5");
    let runs = finished(&env, 5).await;
    assert_eq!(
        runs[4].status,
        RunStatus::Success,
        "{}",
        env.log_of(&runs[4])
    );
    wait_for_page(&nginx, (404, ""));
    assert!(!nginx.sites_dir().join("demo.conf").exists());
    env.stop().await;
}

/// The certificate nginx serves on `port` for `name` (SNI), as openssl prints its names.
fn served_names(port: u16, name: &str) -> String {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What nginx answers over TLS on `port` for `name` (certificate not verified: pebble's root is
/// new on every start).
fn https_body(port: u16, name: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--insecure", "--resolve"])
        .arg(format!("{name}:{port}:127.0.0.1"))
        .arg(format!("https://{name}:{port}/"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tls_site_gets_its_first_certificate_and_a_renewed_one_is_served_at_once() {
    use testkit::pebble::Pebble;
    use testkit::prereq;
    for program in ["certbot", "curl", "openssl"] {
        if !prereq::require(
            program,
            prereq::have_program(program),
            "a real certificate through pebble",
        ) {
            return;
        }
    }
    let Some(nginx) = Nginx::start() else {
        return;
    };
    let Some(pebble) = Pebble::start(nginx.port()) else {
        return;
    };
    let tls_port = testkit::nginx::free_port();
    let certbot_dir = tempfile::tempdir().unwrap();
    // A dotted site name, its lineage `live/tls.test/`, as the Python deployer named both.
    let mut spec = PolicySpec::new(&nginx).site("tls.test", &["tls.test", "www.tls.test"]);
    spec.listen.push(format!("127.0.0.1:{tls_port} ssl"));
    spec.certbot_argv = pebble.certbot_argv(certbot_dir.path(), &nginx.webroot());
    spec.certbot_env = pebble.certbot_env();
    spec.cert_live_dir = Pebble::live_dir(certbot_dir.path());
    let Some(helper) = PrivHelper::start(&nginx, &spec) else {
        return;
    };
    let live = spec.cert_live_dir.join("tls.test");
    let conf = |names: &str| {
        format!(
            "server {{\n    listen {http};\n    server_name {names};\n    include {snippets}/acme-challenge.conf;\n    location / {{ return 200 \"plain\"; }}\n}}\nserver {{\n    listen 127.0.0.1:{tls_port} ssl;\n    server_name {names};\n    ssl_certificate {live}/fullchain.pem;\n    ssl_certificate_key {live}/privkey.pem;\n    location / {{ return 200 \"tls\"; }}\n}}\n",
            http = nginx.listen(),
            snippets = nginx.snippets_dir().display(),
            live = live.display(),
        )
    };
    let mut env = Env::new(
        &format!("helper_socket = \"{}\"", helper.socket().display()),
        r#"commands = [["true"]]
sites = { "tls.test" = "nginx/tls.conf" }"#,
    )
    .await;
    env.start().await;

    // 1. The conf names a certificate that does not exist: published without its TLS server,
    //    certified, then published whole, in one run.
    let c1 = env
        .repo
        .commit("a tls site", &[("nginx/tls.conf", &conf("tls.test"))]);
    env.repo.push();
    env.enqueue(&c1, "t1");
    let runs = finished(&env, 1).await;
    let log = env.log_of(&runs[0]);
    assert_eq!(
        runs[0].status,
        RunStatus::Success,
        "{log}\n{}\n{}",
        helper.log(),
        pebble.log()
    );
    assert!(log.contains("does not exist yet"), "{log}");
    assert!(live.join("fullchain.pem").exists());
    assert!(
        std::fs::read_to_string(nginx.sites_dir().join("tls.test.conf"))
            .unwrap()
            .contains("ssl_certificate"),
        "the whole conf is published"
    );
    assert_eq!(https_body(tls_port, "tls.test"), "tls");
    assert!(served_names(tls_port, "tls.test").contains("DNS:tls.test"));

    // 2. A name added to the site: the conf passes as it is (the certificate exists), the
    //    certificate is reissued with the new name, and nginx serves the new one straight away.
    let c2 = env.repo.commit(
        "add www",
        &[("nginx/tls.conf", &conf("tls.test www.tls.test"))],
    );
    env.repo.push();
    env.enqueue(&c2, "t2");
    let runs = finished(&env, 2).await;
    let log = env.log_of(&runs[1]);
    assert_eq!(
        runs[1].status,
        RunStatus::Success,
        "{log}\n{}",
        helper.log()
    );
    assert!(log.contains("CertificateIssued"), "{log}");
    assert!(!log.contains("does not exist yet"), "{log}");
    let served = served_names(tls_port, "www.tls.test");
    assert!(
        served.contains("DNS:www.tls.test"),
        "the renewed certificate is served: {served:?}\n{log}"
    );
    assert_eq!(https_body(tls_port, "www.tls.test"), "tls");
}

/// Releases layout: confs are read from the release that goes live, and a rollback republishes
/// the older release's confs through the helper, with nothing built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_republishes_the_older_releases_site() {
    let Some(nginx) = Nginx::start() else {
        return;
    };
    let mut spec = PolicySpec::new(&nginx).site("demo", &["demo.test"]);
    spec.certbot_argv = vec!["/bin/true".into()];
    let Some(helper) = PrivHelper::start(&nginx, &spec) else {
        return;
    };
    let builds = tempfile::tempdir().unwrap();
    let mut env = Env::new(
        &format!("helper_socket = \"{}\"", helper.socket().display()),
        &format!(
            "layout = \"releases\"\ncommands = [[\"sh\", \"-c\", \"echo x >> {}/builds\"]]\n\
             sites = {{ demo = \"nginx/demo.conf\" }}",
            builds.path().display()
        ),
    )
    .await;
    env.start().await;
    for (i, v) in ["v1", "v2"].into_iter().enumerate() {
        let c = env.repo.commit(
            v,
            &[(
                "nginx/demo.conf",
                &conf(&nginx, &format!("return 200 \"{v}\";")),
            )],
        );
        env.repo.push();
        env.enqueue(&c, v);
        let runs = finished(&env, i + 1).await;
        assert_eq!(
            runs[i].status,
            RunStatus::Success,
            "{}\n{}",
            env.log_of(&runs[i]),
            helper.log()
        );
        wait_for_page(&nginx, (200, v));
    }
    let releases = deployer::worker::Releases::new(&env.deploy_path());
    let previous = releases.previous(&releases.current().unwrap()).unwrap();
    env.enqueue_request(serde_json::json!({
        "deployment": "app",
        "delivery": "rollback-1",
        "repository": "test-owner/app",
        "branch": env.repo.branch(),
        "sha": previous.sha,
        "before": null,
        "received_at_ms": 0,
        "source": "rollback",
        "release": previous.run,
    }));
    let runs = finished(&env, 3).await;
    assert_eq!(
        (runs[2].source.as_str(), runs[2].status),
        ("rollback", RunStatus::Success),
        "{}\n{}",
        env.log_of(&runs[2]),
        helper.log()
    );
    wait_for_page(&nginx, (200, "v1"));
    assert!(env.log_of(&runs[2]).contains("helper write-site for demo"));
    let built = std::fs::read_to_string(builds.path().join("builds")).unwrap();
    assert_eq!(built.lines().count(), 2, "the rollback built");
    env.stop().await;
}
