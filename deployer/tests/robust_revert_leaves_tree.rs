//! Attack (promise 1): a push of X fails its build after X was checked out; the owner then
//! force-pushes the branch back to the deployed commit H (the usual way to take X away). The
//! push for H is recorded `stale` ("already deployed") because the ledger's deployed commit is H,
//! so nothing checks H out again: the deployment's tree (what nginx serves, what the service
//! runs from) stays at X, a commit that is no longer on the branch, for good.

mod robust_support;

use deployer::worker::{Run, RunStatus};
use robust_support::{
    Daemon, DeploymentSpec, LedgerView, Setup, push_payload, send_signed, wait_for,
};
use testkit::git::{Remote, head};

const REPO: &str = "attack/revert";

fn settled(setup: &Setup, ledger: &LedgerView, n: usize) -> Option<Vec<Run>> {
    let runs = ledger.runs("app");
    (runs.len() >= n
        && setup.queued().is_empty()
        && runs.iter().all(|r| r.status != RunStatus::Running))
    .then_some(runs)
}

#[test]
fn force_pushing_a_failed_commit_away_leaves_it_checked_out() {
    let repo = Remote::new("main");
    let setup = Setup::new(
        "",
        vec![DeploymentSpec {
            name: "app".into(),
            repository: REPO.into(),
            branch: "main".into(),
            remote: repo.url(),
            body: r#"commands = [["sh", "-c", "test ! -e fail"]]"#.into(),
        }],
    );
    let mut d = Daemon::new(&setup);
    d.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());

    let h = repo.commit("good", &[("index.html", "good")]);
    repo.push();
    let body = push_payload(REPO, "main", None, &h);
    assert_eq!(
        send_signed(setup.port, "push", "push-h", &body).unwrap(),
        202
    );
    let runs = wait_for("H deployed", || settled(&setup, &ledger, 1), || d.log());
    assert_eq!(runs[0].status, RunStatus::Success);

    let x = repo.commit(
        "bad",
        &[("index.html", "BAD, leaked secret"), ("fail", "x")],
    );
    repo.push();
    let body = push_payload(REPO, "main", Some(&h), &x);
    assert_eq!(
        send_signed(setup.port, "push", "push-x", &body).unwrap(),
        202
    );
    let runs = wait_for("X fails", || settled(&setup, &ledger, 2), || d.log());
    assert_eq!(runs[1].status, RunStatus::Failed, "{runs:#?}");

    // Take X off the branch: force-push back to H. GitHub sends before=X, after=H.
    repo.reset_hard(&h);
    repo.force_push();
    assert_eq!(repo.remote_head(), h);
    let body = push_payload(REPO, "main", Some(&x), &h);
    assert_eq!(
        send_signed(setup.port, "push", "push-revert", &body).unwrap(),
        202
    );
    let runs = wait_for(
        "the revert handled",
        || settled(&setup, &ledger, 3),
        || d.log(),
    );
    eprintln!(
        "runs: {:?}",
        runs.iter()
            .map(|r| (r.delivery.as_str(), r.status.as_str(), r.error.as_deref()))
            .collect::<Vec<_>>()
    );
    let tree = setup.deploy_path("app");
    eprintln!(
        "branch head {h}; deployment tree HEAD {}; index.html = {:?}",
        head(&tree),
        std::fs::read_to_string(tree.join("index.html")).unwrap_or_default()
    );
    assert_eq!(
        head(&tree),
        h,
        "the branch head is H but the deployment's tree is still at X, which left the branch"
    );
}
