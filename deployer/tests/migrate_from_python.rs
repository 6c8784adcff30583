//! `durhack-deployer migrate-from-python` on a copy of the old DurHack configuration
//! (tests/fixtures/python-config, the shape of ducompsoc/durhack-deployer's config/*.toml) and a
//! checkout of the nginx repository with sites named after their domains: the real
//! `durhack-deployer check` accepts the config it writes and the real `durhack-privhelper check`
//! (as root, ownership checks included) accepts the policy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::prereq;

const EXE: &str = env!("CARGO_BIN_EXE_durhack-deployer");

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python-config")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The durhack-nginx layout: `production/[<site>].conf`, one conf per domain.
fn nginx_checkout(dir: &Path, snippets: &Path) {
    let snippets = snippets.display();
    let production = dir.join("production");
    std::fs::create_dir_all(&production).unwrap();
    let site = |name: &str, body: &str| {
        let conf = format!(
            "server {{\n    listen 80;\n    listen [::]:80;\n    server_name {name};\n    include {snippets}/acme-challenge.conf;\n    location / {{ return 301 https://$host$request_uri; }}\n}}\nserver {{\n    listen 443 ssl;\n    server_name {name};\n    ssl_certificate /etc/letsencrypt/live/{name}/fullchain.pem;\n    ssl_certificate_key /etc/letsencrypt/live/{name}/privkey.pem;\n    {body}\n}}\n"
        );
        std::fs::write(production.join(format!("[{name}].conf")), conf).unwrap();
    };
    site(
        "api.durhack.com",
        "location / { proxy_pass http://127.0.0.1:3101; }",
    );
    site(
        "api.durhack-staging.com",
        "location / { proxy_pass http://127.0.0.1:3201; }",
    );
    site(
        "auth.durhack.com",
        "location / { proxy_pass http://localhost:3102; }",
    );
    site(
        "admin.auth.durhack.com",
        "location / { proxy_pass http://127.0.0.1:3103; }",
    );
    site(
        "deploy.durhack.com",
        "location = /github-webhook { proxy_pass http://127.0.0.1:3400; }",
    );
    // Not selected by deploy.durhack.com's rules: left out.
    site("jury.durhack.com", "root /var/www/jury;");
    std::fs::write(
        production.join("[old.durhack.com].conf.disabled"),
        "server {}",
    )
    .unwrap();
}

#[test]
fn the_old_durhack_config_migrates_to_a_config_and_policy_both_checks_accept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let checkout = dir.path().join("durhack-nginx");
    let nginx = dir.path().join("nginx");
    let logs = dir.path().join("log");
    for d in [&out, &nginx.join("conf.d"), &nginx.join("snippets"), &logs] {
        std::fs::create_dir_all(d).unwrap();
    }
    nginx_checkout(&checkout, &nginx.join("snippets"));

    // Two instances in one directory: the command asks which.
    let ambiguous = Command::new(EXE)
        .arg("migrate-from-python")
        .arg(fixture())
        .output()
        .unwrap();
    assert!(!ambiguous.status.success());
    assert!(
        text(&ambiguous).contains("--instance")
            && text(&ambiguous).contains("deploy-event.durhack.com"),
        "{}",
        text(&ambiguous)
    );

    let client_user = testkit::privhelper::current_user();
    let migrated = Command::new(EXE)
        .arg("migrate-from-python")
        .arg(fixture())
        .args([
            "--instance",
            "deploy.durhack.com",
            "--client-user",
            &client_user,
        ])
        .arg("--nginx-checkout")
        .arg(&checkout)
        .arg("--out")
        .arg(&out)
        .arg("--nginx-dir")
        .arg(&nginx)
        .arg("--nginx-log-dir")
        .arg(&logs)
        .output()
        .unwrap();
    let steps = text(&migrated);
    assert!(migrated.status.success(), "{steps}");
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    let policy = std::fs::read_to_string(out.join("privhelper.toml")).unwrap();
    assert!(
        !format!("{config}{policy}{steps}").contains("not-a-real-secret-token"),
        "the old secret is never copied"
    );

    // The config: every deployment but the Python deployer itself, the nginx one publishing
    // the selected sites under their dotted names; `check` accepts it.
    let parsed =
        deployer::config::Config::parse(&config, Path::new("config.toml"), Some("s".into()))
            .unwrap_or_else(|e| panic!("{e}\n{config}"));
    let names: Vec<&String> = parsed.deployments.keys().collect();
    assert_eq!(names, ["durhack-api", "durhack-staging-api", "nginx"]);
    assert_eq!(
        parsed.public_url.as_deref(),
        Some("https://deploy.durhack.com")
    );
    assert_eq!(
        parsed.github.trusted_proxy_hops, 1,
        "production.toml overrides default.toml"
    );
    let sites: Vec<(&String, &PathBuf)> = parsed.deployments["nginx"].sites.iter().collect();
    assert_eq!(sites.len(), 5, "{sites:?}");
    assert_eq!(
        parsed.deployments["nginx"].sites["api.durhack.com"],
        Path::new("production/[api.durhack.com].conf")
    );
    assert_eq!(
        parsed.deployments["durhack-api"].env["INSTANCE_NAME"],
        "api.durhack.com"
    );
    let check = Command::new(EXE)
        .args(["check", "--config"])
        .arg(out.join("config.toml"))
        .env(
            "DURHACK_DEPLOYER_WEBHOOK_SECRET",
            "from-the-old-secret-file",
        )
        .output()
        .unwrap();
    assert!(check.status.success(), "{}\n{config}", text(&check));

    // The policy: each site's domains and loopback ports read from its conf.
    assert!(
        policy.contains(
            "[sites.\"api.durhack.com\"]\ndomains = [\"api.durhack.com\"]\nproxy_ports = [3101]"
        ),
        "{policy}"
    );
    assert!(
        policy.contains("proxy_ports = [3102]"),
        "localhost counts: {policy}"
    );
    assert!(!policy.contains("jury"), "{policy}");
    // What retires the old set-up: its conf.d links (the old names, quoted: `[` is a glob),
    // the snippet links into the repository, the old service, and a check-site per site.
    let conf_d = nginx.join("conf.d").display().to_string();
    for line in [
        format!("rm -f '{conf_d}/[api.durhack.com].conf'"),
        format!("rm -f '{conf_d}/[deploy.durhack.com].conf'"),
        "-lname '/home/durhack/projects/durhack-nginx/*' -print -delete".to_string(),
        "systemctl disable --now durhack-deployer-queue-workers".to_string(),
        "check-site --policy /etc/durhack-deployer/privhelper.toml api.durhack.com '/home/durhack/projects/durhack-nginx/production/[api.durhack.com].conf'".to_string(),
    ] {
        assert!(steps.contains(&line), "{line:?} not in:\n{steps}");
    }
    // It never replaces a file.
    let again = Command::new(EXE)
        .arg("migrate-from-python")
        .arg(fixture())
        .args(["--instance", "deploy.durhack.com", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success() && text(&again).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(out.join("config.toml")).unwrap(),
        config
    );

    // The real helper's own check, as root: the policy parses, and the policy file, conf dir,
    // snippets and logs are root's alone.
    if !prereq::require(
        "root",
        prereq::is_root(),
        "durhack-privhelper check verifies root ownership",
    ) {
        return;
    }
    let helper = Command::new(testkit::privhelper::binary())
        .args(["check", "--policy"])
        .arg(out.join("privhelper.toml"))
        .output()
        .unwrap();
    let said = text(&helper);
    assert!(helper.status.success(), "{said}\n{policy}");
    assert!(
        said.contains("api.durhack.com") && said.contains("admin.auth.durhack.com"),
        "{said}"
    );
    // Each migrated conf passes the helper's checker as the site it is published as.
    for site in ["api.durhack.com", "deploy.durhack.com"] {
        let conf = checkout.join(format!("production/[{site}].conf"));
        let checked = Command::new(testkit::privhelper::binary())
            .args(["check-site", "--policy"])
            .arg(out.join("privhelper.toml"))
            .arg(site)
            .arg(&conf)
            .output()
            .unwrap();
        assert!(checked.status.success(), "{site}: {}", text(&checked));
    }
}
