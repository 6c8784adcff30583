//! Attack (promises 2 and 3): a push is accepted and queued for deployment `app`; the daemon is
//! restarted with `app` renamed (or disabled). No worker reads `queues/deploy-app/` any more, so
//! the entry never gets a terminal outcome (not even `ignored`) and stays there for good.

mod robust_support;

use std::time::Duration;

use robust_support::{
    Daemon, DeploymentSpec, LedgerView, Setup, push_payload, send_signed, wait_for,
};
use testkit::git::Remote;

const REPO: &str = "attack/removed";

#[test]
fn a_push_queued_for_a_deployment_removed_from_the_config_never_gets_an_outcome() {
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    let repo = Remote::new("main");
    let setup = Setup::new(
        "",
        vec![DeploymentSpec {
            name: "app".into(),
            repository: REPO.into(),
            branch: "main".into(),
            remote: repo.url(),
            body: format!(
                "commands = [[\"sh\", \"-c\", \"touch {m}/started; while [ ! -e {m}/go ]; do sleep 0.05; done\"]]"
            ),
        }],
    );
    let mut d = Daemon::new(&setup);
    d.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    let s1 = repo.commit("c1", &[("v", "1")]);
    repo.push();
    assert_eq!(
        send_signed(
            d.port,
            "push",
            "rm-1",
            &push_payload(REPO, "main", None, &s1)
        )
        .unwrap(),
        202
    );
    wait_for(
        "the first run",
        || marks.path().join("started").exists().then_some(()),
        || d.log(),
    );
    let s2 = repo.commit("c2", &[("v", "2")]);
    repo.push();
    assert_eq!(
        send_signed(
            d.port,
            "push",
            "rm-2",
            &push_payload(REPO, "main", Some(&s1), &s2)
        )
        .unwrap(),
        202
    );
    wait_for(
        "rm-2 routed",
        || {
            ledger
                .deliveries()
                .iter()
                .any(|r| r.delivery == "rm-2")
                .then_some(())
        },
        || d.log(),
    );
    std::fs::write(marks.path().join("go"), "").unwrap();
    d.terminate();

    // The operator renames the deployment (same repository and branch).
    let text = std::fs::read_to_string(&setup.config_path)
        .unwrap()
        .replace("[deployments.app]", "[deployments.web]");
    std::fs::write(&setup.config_path, text).unwrap();
    d.start();
    std::thread::sleep(Duration::from_secs(8));
    let runs = ledger.runs("app");
    let left: Vec<String> = std::fs::read_dir(setup.state_dir().join("queues/deploy-app"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "runs of app: {:?}\nleft in deploy-app/: {left:?}",
        runs.iter()
            .map(|r| (r.delivery.as_str(), r.status.as_str()))
            .collect::<Vec<_>>()
    );
    assert!(
        runs.iter().any(|r| r.delivery == "rm-2"
            && r.status.as_str() != "running"
            && r.status.as_str() != "cancelled"),
        "accepted push rm-2 (routed to app) has no terminal outcome; its entry stays in deploy-app/: {left:?}"
    );
}
