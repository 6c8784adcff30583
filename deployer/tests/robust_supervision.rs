//! Issue 10, item 5, with the real binary: a worker that panics is restarted (and `GET /`
//! answers 503 naming it meanwhile), an inbox entry that keeps failing is quarantined instead of
//! blocking the deliveries behind it, and `check` refuses values that cannot work.

mod robust_support;

use std::process::Command;

use deployer::worker::RunStatus;
use robust_support::{
    Daemon, DeploymentSpec, EXE, LedgerView, SECRET, Setup, push_payload, request, send_signed,
    wait_for,
};
use testkit::git::Remote;

const REPO: &str = "robust/supervised-app";

fn spec(name: &str, branch: &str, repo: &Remote) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        repository: REPO.into(),
        branch: branch.into(),
        remote: repo.url(),
        body: r#"commands = [["true"]]"#.into(),
    }
}

#[test]
fn a_panicking_worker_is_restarted_and_get_root_answers_503_meanwhile() {
    let repo = Remote::new("main");
    let setup = Setup::new("", vec![spec("app", "main", &repo)]);
    let panic_file = setup.dir.path().join("panic-worker");
    std::fs::write(&panic_file, "app").unwrap();
    let mut daemon = Daemon::new(&setup).env(
        "DURHACK_DEPLOYER_TEST_PANIC_FILE",
        panic_file.to_str().unwrap(),
    );
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());

    let sha = repo.commit("c1", &[("v", "1")]);
    repo.push();
    let body = push_payload(REPO, "main", None, &sha);
    assert_eq!(
        send_signed(setup.port, "push", "panic-1", &body).unwrap(),
        202
    );
    let (status, health) = wait_for(
        "GET / to report the worker down",
        || {
            let (status, body) = request(setup.port, "GET", "/", &[], b"").ok()?;
            (status == 503).then_some((status, body))
        },
        || daemon.log(),
    );
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(status, 503);
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["down"]["worker app"]
            .as_str()
            .is_some_and(|r| r.contains("panicked")),
        "{health}"
    );

    // The cause goes away: the restarted worker deploys the push, and GET / is ok again.
    std::fs::remove_file(&panic_file).unwrap();
    wait_for(
        "the push deployed by the restarted worker",
        || (ledger.deployed("app").as_deref() == Some(sha.as_str())).then_some(()),
        || daemon.log(),
    );
    wait_for(
        "GET / ok",
        || {
            let (status, _) = request(setup.port, "GET", "/", &[], b"").ok()?;
            (status == 200).then_some(())
        },
        || daemon.log(),
    );
    assert!(
        daemon
            .full_log()
            .contains("a worker stopped; restarting it"),
        "{}",
        daemon.log()
    );
}

#[test]
fn an_inbox_entry_that_keeps_failing_is_quarantined_and_later_ones_go_on() {
    let repo = Remote::new("main");
    let setup = Setup::new(
        "",
        vec![spec("broken", "side", &repo), spec("fine", "main", &repo)],
    );
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    // The broken deployment's queue cannot be written: a file stands where its directory was.
    let dir = deployer::dispatch::deploy_queue_dir(&setup.config(), "broken");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();

    let side = repo.commit("side", &[("v", "side")]);
    deployer_push(&repo, &side, "side");
    let body = push_payload(REPO, "side", None, &side);
    assert_eq!(
        send_signed(setup.port, "push", "q-broken", &body).unwrap(),
        202
    );
    let main = repo.commit("main", &[("v", "main")]);
    deployer_push(&repo, &main, "main");
    let body = push_payload(REPO, "main", None, &main);
    assert_eq!(
        send_signed(setup.port, "push", "q-fine", &body).unwrap(),
        202
    );

    wait_for(
        "the later delivery deployed",
        || {
            ledger
                .runs("fine")
                .iter()
                .any(|r| r.status == RunStatus::Success && r.sha == main)
                .then_some(())
        },
        || daemon.log(),
    );
    let quarantined =
        deployer::queue::Queue::open(setup.config().queues_dir().join("inbox-quarantine"))
            .unwrap()
            .list()
            .unwrap();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(quarantined[0].contains("q-broken"), "{quarantined:?}");
    let records = ledger.deliveries();
    let broken = records
        .iter()
        .find(|r| r.delivery == "q-broken")
        .expect("the quarantined delivery is recorded");
    assert_eq!(
        serde_json::to_value(broken.outcome).unwrap(),
        "quarantined",
        "{broken:#?}"
    );
    assert!(setup.inbox().list().unwrap().is_empty());
}

fn deployer_push(repo: &Remote, sha: &str, branch: &str) {
    testkit::git::git(
        &repo.work(),
        &[
            "push",
            "--quiet",
            "origin",
            &format!("{sha}:refs/heads/{branch}"),
        ],
    );
}

#[test]
fn check_refuses_timeouts_beyond_a_week_and_shared_paths() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let head =
        format!("state_dir = \"{d}/state\"\n[github]\nwebhook_secret_file = \"{d}/secret\"\n");
    let cases = [
        (
            "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/srv/a\"\ntimeout = \"18446744073709551615\"\n",
            "deployments.a.timeout",
        ),
        (
            "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/srv/a\"\ncommands = [{ argv = [\"true\"], timeout = \"8d\" }]\n",
            "deployments.a.commands[0].timeout",
        ),
        (
            "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/srv/same\"\n\
             [deployments.b]\nrepository = \"o/r\"\nbranch = \"dev\"\npath = \"/srv/same\"\n",
            "deployments.b.path",
        ),
    ];
    for (table, key) in cases {
        let config = dir.path().join("config.toml");
        std::fs::write(&config, format!("{head}{table}")).unwrap();
        let out = Command::new(EXE)
            .args(["check", "--config"])
            .arg(&config)
            .env_remove(deployer::config::SECRET_ENV)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{table}");
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
}
