//! Issue 14 with the real binary and real git repositories: pushes whose webhook never came are
//! deployed by reconciliation (the newest, once), a webhook and a reconcile for the same head
//! give one run, a failing head is not rebuilt in a loop, a disabled deployment is never
//! reconciled; and, against the fake GitHub API, failed deliveries missing from the ledger are
//! redelivered exactly once each, a rate limit ending the pass.

mod fake_github;
mod robust_support;

use std::path::Path;

use deployer::worker::{Run, RunStatus};
use fake_github::{FakeGithub, delivery};
use robust_support::{
    Daemon, DeploymentSpec, LedgerView, Setup, push_payload, send_signed, wait_for,
};
use serde_json::Value;
use testkit::git::Remote;

const REPO: &str = "robust/reconcile-app";
/// Short, so that a test sees many passes; never a timing assertion.
const INTERVAL: &str = "reconcile_interval = \"1s\"\n";

fn spec(name: &str, repo: &Remote, body: &str) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        repository: REPO.into(),
        branch: "main".into(),
        remote: repo.url(),
        body: body.into(),
    }
}

/// Records each build's commit in `<dir>/built`; fails when the tree has a file `fail`.
fn recording(dir: &Path) -> String {
    format!(
        r#"commands = [["sh", "-c", "echo $DEPLOY_SHA >> {}/built; test ! -e fail"]]"#,
        dir.display()
    )
}

/// Like [`recording`], then waits for `<dir>/go` before finishing.
fn recording_until_go(dir: &Path) -> String {
    format!(
        r#"commands = [["sh", "-c", "echo $DEPLOY_SHA >> {d}/built; while [ ! -e {d}/go ]; do sleep 0.05; done"]]"#,
        d = dir.display()
    )
}

fn built(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("built"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs that built something (not superseded, stale or ignored).
fn attempts(runs: &[Run]) -> Vec<Run> {
    runs.iter()
        .filter(|r| {
            !matches!(
                r.status,
                RunStatus::Superseded | RunStatus::Stale | RunStatus::Ignored
            )
        })
        .cloned()
        .collect()
}

fn settled(setup: &Setup, ledger: &LedgerView, deployment: &str) -> bool {
    setup.queued().is_empty()
        && ledger
            .runs(deployment)
            .iter()
            .all(|r| r.status != RunStatus::Running)
}

/// Waits until `n` more reconcile passes have recorded `deployment`'s state.
fn wait_passes(ledger: &LedgerView, daemon: &Daemon, deployment: &str, n: usize) {
    let mut last = ledger.reconcile_state(deployment).map(|s| s.checked_at);
    for i in 0..n {
        last = Some(wait_for(
            &format!("reconcile pass {} of {n} for {deployment}", i + 1),
            || {
                let now = ledger.reconcile_state(deployment)?.checked_at;
                (Some(now) != last).then_some(now)
            },
            || daemon.log(),
        ));
    }
}

#[test]
fn pushes_made_while_the_daemon_was_stopped_deploy_the_newest_once_without_a_webhook() {
    let marks = tempfile::tempdir().unwrap();
    let repo = Remote::new("main");
    let setup = Setup::new(INTERVAL, vec![spec("app", &repo, &recording(marks.path()))]);
    // The daemon is not running: three pushes land, and no webhook ever arrives.
    let mut pushed = Vec::new();
    for i in 1..=3 {
        repo.commit(&format!("push {i}"), &[("v", &i.to_string())]);
        pushed.push(repo.push());
    }
    let newest = pushed[2].clone();
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    wait_for(
        "the newest push deployed",
        || (ledger.deployed("app").as_deref() == Some(newest.as_str())).then_some(()),
        || daemon.log(),
    );
    wait_passes(&ledger, &daemon, "app", 3);
    assert!(settled(&setup, &ledger, "app"));

    assert_eq!(
        built(marks.path()),
        vec![newest.clone()],
        "one build, of the newest"
    );
    let runs = ledger.runs("app");
    let done = attempts(&runs);
    assert_eq!(done.len(), 1, "{runs:#?}");
    assert_eq!(done[0].status, RunStatus::Success);
    assert_eq!(done[0].source, "reconcile");
    assert_eq!(done[0].sha, newest);
    assert_eq!(
        testkit::git::head(&setup.deploy_path("app")),
        newest,
        "the tree is at the newest push"
    );
    let deliveries = ledger.deliveries();
    assert_eq!(
        deliveries.len(),
        1,
        "one reconcile request: {deliveries:#?}"
    );
    assert_eq!(deliveries[0].event, "reconcile");
    assert_eq!(deliveries[0].delivery, format!("reconcile:app:{newest}"));

    // `status` shows the remote head seen, when, and that it is deployed; `history` shows the
    // reconcile request.
    let status: Value = serde_json::from_str(&setup.cli(&["status", "--json"])).unwrap();
    let app = &status[0];
    assert_eq!(
        app["reconcile"]["remote_head"],
        newest.as_str(),
        "{status:#}"
    );
    assert_eq!(app["reconcile"]["deployed"], true, "{status:#}");
    assert!(
        app["reconcile"]["checked_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(app["last_run"]["source"], "reconcile", "{status:#}");
    let table = setup.cli(&["status"]);
    assert!(
        table.contains("REMOTE HEAD") && table.contains("(deployed)"),
        "{table}"
    );
    let history: Value = serde_json::from_str(&setup.cli(&["history", "--json"])).unwrap();
    assert_eq!(history[0]["event"], "reconcile", "{history:#}");
    assert_eq!(history[0]["deployments"], serde_json::json!(["app"]));
}

#[test]
fn a_webhook_and_a_reconcile_for_the_same_head_give_one_run() {
    let marks = tempfile::tempdir().unwrap();
    let go = marks.path().join("go");
    let repo = Remote::new("main");
    let setup = Setup::new(
        INTERVAL,
        vec![spec("app", &repo, &recording_until_go(marks.path()))],
    );
    let h1 = {
        repo.commit("one", &[("v", "1")]);
        repo.push()
    };
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());

    // Reconcile first: its run of H1 is building when H1's webhook arrives.
    wait_for(
        "the reconcile run of H1 to build",
        || (built(marks.path()) == [h1.clone()]).then_some(()),
        || daemon.log(),
    );
    let body = push_payload(REPO, "main", None, &h1);
    assert_eq!(
        send_signed(setup.port, "push", "push-h1", &body).unwrap(),
        202
    );
    wait_for(
        "the webhook of H1 routed",
        || {
            ledger
                .deliveries()
                .iter()
                .any(|d| d.delivery == "push-h1")
                .then_some(())
        },
        || daemon.log(),
    );
    std::fs::write(&go, "").unwrap();
    wait_for(
        "H1 settled",
        || {
            (settled(&setup, &ledger, "app")
                && ledger.runs("app").iter().any(|r| r.delivery == "push-h1"))
            .then_some(())
        },
        || daemon.log(),
    );

    // Webhook first: while its run of H2 builds, reconcile passes see the deployment busy.
    std::fs::remove_file(&go).unwrap();
    let h2 = {
        repo.commit("two", &[("v", "2")]);
        repo.push()
    };
    let body = push_payload(REPO, "main", Some(&h1), &h2);
    assert_eq!(
        send_signed(setup.port, "push", "push-h2", &body).unwrap(),
        202
    );
    wait_for(
        "the webhook run of H2 to build",
        || (built(marks.path()).len() == 2).then_some(()),
        || daemon.log(),
    );
    wait_passes(&ledger, &daemon, "app", 2);
    let state = ledger.reconcile_state("app").unwrap();
    assert_eq!(state.remote_head.as_deref(), Some(h2.as_str()));
    assert_eq!(state.action, "busy", "{state:#?}");
    std::fs::write(&go, "").unwrap();
    wait_for(
        "H2 deployed",
        || (ledger.deployed("app").as_deref() == Some(h2.as_str())).then_some(()),
        || daemon.log(),
    );
    wait_passes(&ledger, &daemon, "app", 3);
    assert!(settled(&setup, &ledger, "app"));

    assert_eq!(
        built(marks.path()),
        vec![h1.clone(), h2.clone()],
        "one build per head"
    );
    let runs = ledger.runs("app");
    let done = attempts(&runs);
    assert_eq!(done.len(), 2, "{runs:#?}");
    assert_eq!(
        (done[0].sha.as_str(), done[0].source.as_str()),
        (h1.as_str(), "reconcile")
    );
    assert_eq!(done[1].sha, h2);
    // Almost always the webhook's; a pass that falls between the push and its webhook queues
    // H2 itself, and the webhook then joins that run: one run either way.
    assert!(
        matches!(done[1].source.as_str(), "webhook" | "reconcile"),
        "{runs:#?}"
    );
    assert!(
        done.iter().all(|r| r.status == RunStatus::Success),
        "{runs:#?}"
    );
    // H1's webhook was judged like any push of a deployed head.
    let late = runs.iter().find(|r| r.delivery == "push-h1").unwrap();
    assert_eq!(late.status, RunStatus::Stale, "{runs:#?}");
    assert_eq!(ledger.reconcile_state("app").unwrap().action, "deployed");
}

#[test]
fn two_daemons_reconciling_one_state_queue_the_head_once() {
    let marks = tempfile::tempdir().unwrap();
    let repo = Remote::new("main");
    let setup = Setup::new(INTERVAL, vec![spec("app", &repo, &recording(marks.path()))]);
    repo.commit("one", &[("v", "1")]);
    let head = repo.push();
    let (mut a, mut b) = robust_support::two_daemons(&setup);
    a.start();
    b.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    wait_for(
        "the head deployed",
        || (ledger.deployed("app").as_deref() == Some(head.as_str())).then_some(()),
        || format!("{}\n{}", a.log(), b.log()),
    );
    wait_passes(&ledger, &a, "app", 4);
    assert!(settled(&setup, &ledger, "app"));
    assert_eq!(built(marks.path()), vec![head.clone()]);
    let requests: Vec<_> = ledger
        .deliveries()
        .into_iter()
        .filter(|d| d.event == "reconcile")
        .collect();
    assert_eq!(requests.len(), 1, "one claim, one entry: {requests:#?}");
    let runs = ledger.runs("app");
    assert_eq!(runs.len(), 1, "one entry, one run row: {runs:#?}");
}

/// The claim `reconcile:<deployment>:<sha>` decides, not timing: an entry claimed by another
/// loop that never wrote it (it died in between) is written under the claimed name, once; a
/// claimed entry that already ran is not queued again. (The real pass, git and ledger; no
/// worker, so what is queued stays visible.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_claim_decides_which_entry_carries_a_head() {
    let marks = tempfile::tempdir().unwrap();
    let repo = Remote::new("main");
    let setup = Setup::new(INTERVAL, vec![spec("app", &repo, &recording(marks.path()))]);
    repo.commit("one", &[("v", "1")]);
    let head = repo.push();
    let config = setup.config();
    std::fs::create_dir_all(setup.state_dir()).unwrap();
    let ledger = deployer::ledger::Ledger::open(&config.effective_database_url())
        .await
        .unwrap();
    let queue = setup.deploy_queue("app");
    let key = deployer::reconcile::claim_key("app", &head);
    let theirs = deployer::queue::fresh_entry_name(&format!("reconcile-{head}"));
    ledger.claim_delivery(&key, &theirs, 1).await.unwrap();

    let stop = tokio_util::sync::CancellationToken::new();
    let (one, two) = tokio::join!(
        deployer::reconcile::pass(&config, &ledger, &stop),
        deployer::reconcile::pass(&config, &ledger, &stop)
    );
    let _ = (one, two);
    assert_eq!(
        queue.list().unwrap(),
        vec![theirs.clone()],
        "written under the claimed name"
    );
    let state = ledger.reconcile_state("app").await.unwrap().unwrap();
    assert!(
        matches!(state.action.as_str(), "queued" | "busy"),
        "{state:#?}"
    );

    // Once that entry ran (here: recorded superseded, as a coalesced run would), the head is
    // not queued again.
    queue.remove(&theirs).unwrap();
    let now = deployer::dispatch::now_ms();
    let run = Run {
        id: deployer::worker::new_run_id(),
        deployment: "app".into(),
        delivery: key.clone(),
        sha: head.clone(),
        source: "reconcile".into(),
        status: RunStatus::Superseded,
        started_at: now,
        finished_at: Some(now),
        log_path: None,
        error: Some("superseded".into()),
        entry: Some(theirs.clone()),
    };
    ledger.insert_run(&run).await.unwrap();
    deployer::reconcile::pass(&config, &ledger, &stop).await;
    assert!(queue.list().unwrap().is_empty());
    let state = ledger.reconcile_state("app").await.unwrap().unwrap();
    assert_eq!(state.action, "claimed", "{state:#?}");
}

#[test]
fn a_failing_head_is_not_rebuilt_in_a_loop() {
    let marks = tempfile::tempdir().unwrap();
    let repo = Remote::new("main");
    let setup = Setup::new(INTERVAL, vec![spec("app", &repo, &recording(marks.path()))]);
    let broken = {
        repo.commit("broken", &[("fail", "x")]);
        repo.push()
    };
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    wait_for(
        "the broken head to fail",
        || {
            ledger
                .runs("app")
                .iter()
                .any(|r| r.status == RunStatus::Failed)
                .then_some(())
        },
        || daemon.log(),
    );
    wait_passes(&ledger, &daemon, "app", 5);
    assert!(settled(&setup, &ledger, "app"));
    assert_eq!(built(marks.path()), vec![broken.clone()], "built once");
    let state = ledger.reconcile_state("app").unwrap();
    assert_eq!(state.remote_head.as_deref(), Some(broken.as_str()));
    assert_eq!(state.action, "attempted", "{state:#?}");
    let status: Value = serde_json::from_str(&setup.cli(&["status", "--json"])).unwrap();
    assert_eq!(status[0]["reconcile"]["deployed"], false, "{status:#}");

    // A new head is a new attempt, still without a webhook.
    let fixed = repo.remove("fixed", "fail");
    repo.push();
    wait_for(
        "the fixed head deployed",
        || (ledger.deployed("app").as_deref() == Some(fixed.as_str())).then_some(()),
        || daemon.log(),
    );
    wait_passes(&ledger, &daemon, "app", 3);
    assert_eq!(built(marks.path()), vec![broken, fixed]);
}

#[test]
fn a_disabled_deployment_is_never_reconciled() {
    let marks = tempfile::tempdir().unwrap();
    let off_marks = tempfile::tempdir().unwrap();
    let repo = Remote::new("main");
    let other = Remote::new("main");
    let mut off = spec(
        "off",
        &other,
        &format!("enabled = false\n{}", recording(off_marks.path())),
    );
    off.repository = "robust/reconcile-off".into();
    let setup = Setup::new(
        INTERVAL,
        vec![spec("app", &repo, &recording(marks.path())), off],
    );
    repo.commit("app", &[("v", "1")]);
    let app_head = repo.push();
    other.commit("off", &[("v", "1")]);
    other.push();
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    wait_for(
        "app deployed",
        || (ledger.deployed("app").as_deref() == Some(app_head.as_str())).then_some(()),
        || daemon.log(),
    );
    wait_passes(&ledger, &daemon, "app", 3);

    assert_eq!(ledger.reconcile_state("off"), None, "never looked at");
    assert!(ledger.runs("off").is_empty());
    assert!(
        ledger
            .deliveries()
            .iter()
            .all(|d| !d.deployments.contains(&"off".to_owned())),
        "{:#?}",
        ledger.deliveries()
    );
    let off_queue = deployer::dispatch::deploy_queue_dir(&setup.config(), "off");
    let queued = std::fs::read_dir(&off_queue).map_or(0, |d| d.count());
    assert_eq!(queued, 0, "nothing queued for the disabled deployment");
    assert!(!setup.deploy_path("off").exists(), "never cloned");
    assert!(built(off_marks.path()).is_empty());
}

const TOKEN: &str = "ghp_reconcile_token_that_must_not_leak";
/// The hook of `REPO`, learnt from a received delivery's `X-GitHub-Hook-Id` (robust_support
/// sends 4242).
const HOOK: u64 = 4242;
/// The hook of a second repository, set in its deployment's `hook_id`.
const ZED_HOOK: u64 = 5151;

/// RFC 3339, `hours` ago.
fn ago(hours: i64) -> String {
    (time::OffsetDateTime::now_utc() - time::Duration::hours(hours))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn failed_deliveries_missing_from_the_ledger_are_redelivered_once_and_a_rate_limit_ends_the_pass() {
    let fake = FakeGithub::start();
    // Newest first, as GitHub lists them. Page 2 ends with a delivery older than the window,
    // so page 3 must never be read.
    fake.serve_deliveries(
        HOOK,
        vec![
            vec![
                delivery(101, "guid-a-failed", 502, &ago(1)),
                delivery(102, "guid-c-ok", 202, &ago(2)),
                delivery(103, "guid-d-received", 0, &ago(3)),
            ],
            vec![
                delivery(104, "guid-b-failed", 0, &ago(4)),
                delivery(105, "guid-e-too-old", 502, &ago(24 * 5)),
            ],
            vec![delivery(106, "guid-f-beyond", 502, &ago(24 * 6))],
        ],
    );
    fake.serve_deliveries(
        ZED_HOOK,
        vec![vec![delivery(201, "guid-zed-failed", 500, &ago(1))]],
    );
    fake.rate_limit_page(Some(2));
    let marks = tempfile::tempdir().unwrap();
    std::fs::write(marks.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let github = format!(
        "token_file = \"{}\"\napi_url = \"{}\"\n",
        marks.path().join("token").display(),
        fake.url
    );
    let repo = Remote::new("main");
    let zed_repo = Remote::new("main");
    // Repositories are visited in name order: REPO, then the zed one.
    let mut zed = spec("zed", &zed_repo, &format!("hook_id = {ZED_HOOK}"));
    zed.repository = "robust/reconcile-zed".into();
    let setup = Setup::with_github(
        INTERVAL,
        &github,
        vec![spec("app", &repo, &recording(marks.path())), zed],
    );
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    let hook_requests = || -> Vec<String> {
        fake.log()
            .iter()
            .filter(|l| l.target.contains("/hooks/"))
            .map(fake_github::Logged::short)
            .collect()
    };

    // The configured hook is asked about from the first pass; REPO's hook only once a
    // delivery told its id.
    wait_for(
        "the configured hook's failed delivery redelivered",
        || fake.redelivery_requests().contains(&201).then_some(()),
        || format!("{:?}\n{}", hook_requests(), daemon.log()),
    );
    wait_passes(&ledger, &daemon, "app", 2);
    let log = hook_requests();
    assert!(
        log.iter()
            .all(|r| r.starts_with("GET 5151 page 1") || r == "POST 5151 attempts 201"),
        "{log:?}"
    );

    // Delivery D reaches us (on an unwatched branch: recorded, nothing deployed), with the
    // hook id in its X-GitHub-Hook-Id header.
    let body = push_payload(REPO, "other", None, &"d".repeat(40));
    assert_eq!(
        send_signed(setup.port, "push", "guid-d-received", &body).unwrap(),
        202
    );

    // First pass with REPO's hook: page 1 asks for A, page 2 is rate-limited and the whole
    // pass stops (the zed hook is not asked in it); the next pass starts at REPO's page 1.
    let limited = "GET 4242 page 2 (403)";
    wait_for(
        "a rate-limited page 2, then the next pass",
        || {
            let log = hook_requests();
            let first = log.iter().position(|r| r == limited)?;
            (log.len() > first + 1).then_some(())
        },
        || format!("{:?}\n{}", hook_requests(), daemon.log()),
    );
    let log = hook_requests();
    let start = log.iter().position(|r| r == "GET 4242 page 1").unwrap();
    assert_eq!(
        log[start..start + 3],
        ["GET 4242 page 1", "POST 4242 attempts 101", limited],
        "{log:?}"
    );
    for (i, r) in log.iter().enumerate() {
        // (The log may end right after a rate limit: nothing more has come yet.)
        if r == limited && i + 1 < log.len() {
            assert_eq!(
                log[i + 1],
                "GET 4242 page 1",
                "a request after the rate limit in the same pass: {log:?}"
            );
        }
    }

    // The limit lifts: B is asked for, and nothing else, ever again.
    fake.rate_limit_page(None);
    wait_for(
        "B redelivered",
        || fake.redelivery_requests().contains(&104).then_some(()),
        || format!("{:?}\n{}", hook_requests(), daemon.log()),
    );
    let passes = |log: &[String]| log.iter().filter(|r| *r == "GET 4242 page 1").count();
    let before = passes(&hook_requests());
    wait_for(
        "three more passes",
        || (passes(&hook_requests()) >= before + 3).then_some(()),
        || format!("{:?}\n{}", hook_requests(), daemon.log()),
    );
    let log = hook_requests();
    assert_eq!(fake.redelivery_requests(), vec![201, 101, 104], "{log:?}");
    assert!(
        !log.iter().any(|r| r.starts_with("GET 4242 page 3")),
        "beyond the window: {log:?}"
    );
    assert!(
        fake.log()
            .iter()
            .all(|l| l.authorization == format!("Bearer {TOKEN}")),
        "every request carries the token"
    );
    assert!(
        !daemon.full_log().contains(TOKEN),
        "the token is never logged"
    );

    let asked = ledger.redeliveries();
    let mut guids: Vec<&str> = asked.iter().map(|r| r.guid.as_str()).collect();
    guids.sort_unstable();
    assert_eq!(
        guids,
        ["guid-a-failed", "guid-b-failed", "guid-zed-failed"],
        "{asked:#?}"
    );
    assert!(
        asked.iter().all(|r| r.status_code == Some(202)),
        "{asked:#?}"
    );
    let history: Value =
        serde_json::from_str(&setup.cli(&["history", "--redeliveries", "--json"])).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 3, "{history:#}");
    let table = setup.cli(&["history", "--redeliveries"]);
    assert!(
        table.contains("guid-a-failed") && table.contains("asked (HTTP 202)"),
        "{table}"
    );
}
