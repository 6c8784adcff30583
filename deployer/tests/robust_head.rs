//! Issue 10 with the real binary, over HTTP: a Redeliver of a force-pushed-away failure does not
//! deploy it, a push queued under an old configuration is ignored after the configuration
//! changed, and an outcome that could not be recorded (ledger write-locked while the remote is
//! down) is kept, so a later Redeliver deploys the commit.

mod robust_support;

use std::path::Path;

use deployer::worker::{Run, RunStatus};
use robust_support::{
    Daemon, DeploymentSpec, LedgerView, Setup, push_payload, send_signed, wait_for,
};
use testkit::git::{Remote, head};

const REPO: &str = "robust/head-app";

fn spec(repo: &Remote, branch: &str, body: &str) -> DeploymentSpec {
    DeploymentSpec {
        name: "app".into(),
        repository: REPO.into(),
        branch: branch.into(),
        remote: repo.url(),
        body: body.into(),
    }
}

/// Fails when the tree has a file `fail`; records each build in `<dir>/built`.
fn failing_on_marker(dir: &Path) -> String {
    format!(
        r#"commands = [["sh", "-c", "echo $DEPLOY_SHA >> {}/built; test ! -e fail"]]"#,
        dir.display()
    )
}

fn of(runs: &[Run], delivery: &str) -> Vec<Run> {
    runs.iter()
        .filter(|r| r.delivery == delivery)
        .cloned()
        .collect()
}

fn settled(setup: &Setup, ledger: &LedgerView, n: usize) -> Option<Vec<Run>> {
    let runs = ledger.runs("app");
    (runs.len() >= n
        && setup.queued().is_empty()
        && runs.iter().all(|r| r.status != RunStatus::Running))
    .then_some(runs)
}

#[test]
fn a_redeliver_of_a_force_pushed_away_failure_keeps_the_head_deployed() {
    let marks = tempfile::tempdir().unwrap();
    let repo = Remote::new("main");
    let setup = Setup::new(
        "",
        vec![spec(&repo, "main", &failing_on_marker(marks.path()))],
    );
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());

    let base = repo.commit("base", &[("v", "0")]);
    repo.push();
    let a = repo.commit("broken", &[("fail", "x")]);
    repo.push();
    let body_a = push_payload(REPO, "main", Some(&base), &a);
    assert_eq!(
        send_signed(setup.port, "push", "push-a", &body_a).unwrap(),
        202
    );
    let runs = wait_for("A fails", || settled(&setup, &ledger, 1), || daemon.log());
    assert_eq!(runs[0].status, RunStatus::Failed, "{runs:#?}");

    repo.reset_hard(&base);
    let f = repo.commit("fixed", &[("v", "1")]);
    repo.force_push();
    let body_f = push_payload(REPO, "main", Some(&a), &f);
    assert_eq!(
        send_signed(setup.port, "push", "push-f", &body_f).unwrap(),
        202
    );
    wait_for(
        "F deployed",
        || (ledger.deployed("app").as_deref() == Some(f.as_str())).then_some(()),
        || daemon.log(),
    );

    // Redeliver on A: GitHub sends the same delivery again.
    assert_eq!(
        send_signed(setup.port, "push", "push-a", &body_a).unwrap(),
        202
    );
    let runs = wait_for(
        "the redelivery recorded",
        || settled(&setup, &ledger, 3).filter(|r| of(r, "push-a").len() == 2),
        || daemon.log(),
    );
    let again = &of(&runs, "push-a")[1];
    assert_eq!(again.status, RunStatus::Stale, "{runs:#?}");
    assert!(
        again
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("no longer on the branch"),
        "{again:#?}"
    );
    assert_eq!(ledger.deployed("app"), Some(f.clone()));
    assert_eq!(
        head(&setup.deploy_path("app")),
        f,
        "the tree is at the branch head"
    );
    let built = std::fs::read_to_string(marks.path().join("built")).unwrap();
    assert_eq!(
        built.lines().collect::<Vec<_>>(),
        vec![&a, &f],
        "A built once"
    );
}

#[test]
fn a_push_queued_before_the_branch_changed_is_ignored_after_a_restart() {
    let marks = tempfile::tempdir().unwrap();
    let repo = Remote::new("main");
    let blocking = format!(
        r#"commands = [["sh", "-c", "echo $DEPLOY_SHA >> {d}/built; while [ ! -e {d}/go ]; do sleep 0.05; done"]]"#,
        d = marks.path().display()
    );
    let setup = Setup::new("", vec![spec(&repo, "staging", &blocking)]);
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());

    let s1 = repo.commit("staging 1", &[("v", "s1")]);
    testkit::git::git(
        &repo.work(),
        &["push", "--quiet", "origin", "HEAD:refs/heads/staging"],
    );
    // main exists too, at another commit.
    let m = repo.commit("main", &[("v", "m")]);
    repo.push();
    let body = push_payload(REPO, "staging", None, &s1);
    assert_eq!(
        send_signed(setup.port, "push", "staging-1", &body).unwrap(),
        202
    );
    wait_for(
        "the staging deploy to start",
        || marks.path().join("built").exists().then_some(()),
        || daemon.log(),
    );
    daemon.kill9();
    // The deployment now follows main; the queued staging push must not deploy as main.
    let text = std::fs::read_to_string(&setup.config_path)
        .unwrap()
        .replace("branch = \"staging\"", "branch = \"main\"");
    std::fs::write(&setup.config_path, text).unwrap();
    std::fs::write(marks.path().join("go"), "").unwrap();
    daemon.start();
    let runs = wait_for(
        "the queued push recorded",
        || {
            settled(&setup, &ledger, 2)
                .filter(|r| r.iter().any(|r| r.status.to_string() == "ignored"))
        },
        || daemon.log(),
    );
    let staging = of(&runs, "staging-1");
    let ignored: Vec<&Run> = staging
        .iter()
        .filter(|r| r.status.to_string() == "ignored")
        .collect();
    assert_eq!(ignored.len(), 1, "{runs:#?}");
    assert!(
        ignored[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("branch staging"),
        "{runs:#?}"
    );
    assert!(
        runs.iter().all(|r| r.status != RunStatus::Success),
        "nothing deployed: {runs:#?}"
    );
    assert_ne!(
        head(&setup.deploy_path("app")),
        m,
        "main was not deployed for it"
    );
}

#[test]
fn an_outcome_the_ledger_could_not_take_is_kept_and_a_redeliver_deploys_it() {
    use sqlx::Connection;
    let marks = tempfile::tempdir().unwrap();
    let repo = Remote::new("main");
    let setup = Setup::new(
        "",
        vec![spec(&repo, "main", &failing_on_marker(marks.path()))],
    );
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let sha = repo.commit("c", &[("v", "1")]);
    repo.push();
    let moved = setup.dir.path().join("remote-elsewhere.git");
    std::fs::rename(repo.bare(), &moved).unwrap();
    let body = push_payload(REPO, "main", None, &sha);
    assert_eq!(
        send_signed(setup.port, "push", "locked-1", &body).unwrap(),
        202
    );
    let logs = setup.state_dir().join("logs/app");
    let run_logs = || {
        std::fs::read_dir(&logs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
            .collect::<String>()
    };
    wait_for(
        "the run retrying its fetch",
        || run_logs().contains("fetch failed; retrying").then_some(()),
        || daemon.log(),
    );
    // Another process holds the SQLite write lock while the fetch keeps failing.
    let url = setup.config().effective_database_url();
    let mut blocker = rt.block_on(sqlx::SqliteConnection::connect(&url)).unwrap();
    rt.block_on(sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker))
        .unwrap();
    wait_for(
        "the failure kept (or the entry lost)",
        || (run_logs().contains("stays queued") || setup.queued().is_empty()).then_some(()),
        || daemon.log(),
    );
    assert!(
        !setup.queued().is_empty(),
        "the acknowledged push whose outcome could not be written was dropped\n{}",
        daemon.log()
    );
    rt.block_on(sqlx::query("ROLLBACK").execute(&mut blocker))
        .unwrap();
    drop(blocker);
    // The remote is still down: the retried entry now records its failure.
    let runs = wait_for(
        "the failure recorded",
        || settled(&setup, &ledger, 1),
        || daemon.log(),
    );
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].status, RunStatus::Failed, "{runs:#?}");

    // The remote is back; GitHub's Redeliver of the push deploys it.
    std::fs::rename(&moved, repo.bare()).unwrap();
    assert_eq!(
        send_signed(setup.port, "push", "locked-1", &body).unwrap(),
        202
    );
    wait_for(
        "the redelivered push deployed",
        || (ledger.deployed("app").as_deref() == Some(sha.as_str())).then_some(()),
        || daemon.log(),
    );
    assert_eq!(head(&setup.deploy_path("app")), sha);
}
