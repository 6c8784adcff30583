//! Issue 10: the branch head is what gets deployed, every queue entry gets exactly one terminal
//! outcome, and an entry that no longer matches the configuration is ignored. Real git
//! repositories with force pushes, the real workers, a real SQLite ledger.

mod worker_support;

use std::time::{Duration, Instant};

use deployer::worker::{Run, RunStatus};
use testkit::git::{git, head};
use worker_support::{DEADLINE, Env, wait_for_file, with_status};

/// Fails when the tree has a file `fail` (so a commit can carry a broken build).
const FAILS_ON_MARKER: &str =
    r#"commands = [["sh", "-c", "echo $DEPLOY_SHA >> ../built; test ! -e fail"]]"#;

/// Blocks each run until `<state>/markers/go` exists, after touching `started-<sha>`.
const BLOCKING: &str = r#"commands = [["sh", "-c", "touch ../markers/started-$DEPLOY_SHA; while [ ! -e ../markers/go ]; do sleep 0.05; done; echo $DEPLOY_SHA >> ../built"]]"#;

fn of_delivery<'a>(runs: &'a [Run], delivery: &str) -> Vec<&'a Run> {
    runs.iter().filter(|r| r.delivery == delivery).collect()
}

fn built(env: &Env) -> Vec<String> {
    std::fs::read_to_string(env.state.path().join("built"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// (a) Push A fails, the developer force-pushes the fix F, F deploys, then someone presses
/// Redeliver on A: A is no longer on the branch, so it is stale and the tree stays at F.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivering_a_force_pushed_away_failure_keeps_the_head_deployed() {
    let mut env = Env::new("", FAILS_ON_MARKER).await;
    let base = env.repo.commit("base", &[("v", "0")]);
    env.repo.push();
    let a = env.repo.commit("broken", &[("fail", "x")]);
    env.repo.push();
    env.start().await;
    env.enqueue(&a, "d-a");
    let runs = env.wait_idle().await;
    assert_eq!(runs[0].status, RunStatus::Failed, "{runs:#?}");

    env.repo.reset_hard(&base);
    let f = env.repo.commit("fixed", &[("v", "1")]);
    env.repo.force_push();
    env.enqueue(&f, "d-f");
    env.wait_runs("F deployed", |r| {
        r.iter()
            .any(|r| r.sha == f && r.status == RunStatus::Success)
    })
    .await;

    // GitHub's Redeliver of A: a new receipt of the same delivery id.
    env.enqueue(&a, "d-a");
    env.wait_runs("the redelivery recorded", |r| {
        of_delivery(r, "d-a").len() == 2
    })
    .await;
    let runs = env.wait_idle().await;
    let again = of_delivery(&runs, "d-a")[1];
    assert_eq!(again.status, RunStatus::Stale, "{runs:#?}");
    assert!(
        again
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("no longer on the branch"),
        "{again:#?}"
    );
    assert_eq!(
        head(&env.deploy_path()),
        f,
        "the tree stays at the branch head"
    );
    assert_eq!(built(&env), vec![a, f.clone()], "A is never built again");
    assert_eq!(env.ledger.deployed_sha("app").await.unwrap(), Some(f));
    env.stop().await;
}

/// (b) A delivery of a push from before a force push arrives late: stale, never deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delivery_from_before_a_force_push_is_stale() {
    let mut env = Env::new("", FAILS_ON_MARKER).await;
    let base = env.repo.commit("base", &[("v", "0")]);
    env.repo.push();
    let a = env.repo.commit("first try", &[("v", "a")]);
    env.repo.push();
    env.repo.reset_hard(&base);
    let f = env.repo.commit("second try", &[("v", "f")]);
    env.repo.force_push();
    env.start().await;
    env.enqueue(&f, "d-f");
    env.wait_idle().await;
    env.enqueue(&a, "d-a-late");
    env.wait_runs("the late delivery recorded", |r| r.len() == 2)
        .await;
    let runs = env.wait_idle().await;
    let late = of_delivery(&runs, "d-a-late");
    assert_eq!(late[0].status, RunStatus::Stale, "{runs:#?}");
    assert_eq!(head(&env.deploy_path()), f);
    assert_eq!(built(&env), vec![f]);
    env.stop().await;
}

/// (c) A and its force-pushed replacement F in one batch, in both arrival orders: F (the head)
/// is deployed and A is stale, never "F superseded by A".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_pushed_away_commit_in_a_batch_is_stale_in_either_order() {
    for order in [["a", "f"], ["f", "a"]] {
        let mut env = Env::new("", BLOCKING).await;
        let markers = env.state.path().join("markers");
        std::fs::create_dir_all(&markers).unwrap();
        let base = env.repo.commit("base", &[]);
        env.repo.push();
        env.start().await;
        env.enqueue(&base, "d0");
        wait_for_file(&markers.join(format!("started-{base}"))).await;

        let a = env.repo.commit("one way", &[("f", "1")]);
        env.repo.push();
        env.repo.reset_hard(&base);
        let f = env.repo.commit("another way", &[("f", "2")]);
        env.repo.force_push();
        for which in order {
            let sha = if which == "a" { &a } else { &f };
            env.enqueue(sha, &format!("d-{which}"));
        }
        std::fs::write(markers.join("go"), "").unwrap();
        env.wait_runs("both recorded", |r| r.len() == 3).await;
        let runs = env.wait_idle().await;
        let ra = of_delivery(&runs, "d-a")[0];
        let rf = of_delivery(&runs, "d-f")[0];
        assert_eq!(ra.status, RunStatus::Stale, "order {order:?}: {runs:#?}");
        assert_eq!(rf.status, RunStatus::Success, "order {order:?}: {runs:#?}");
        assert_eq!(rf.sha, f);
        assert_eq!(head(&env.deploy_path()), f, "order {order:?}");
        assert_eq!(built(&env), vec![base, f], "order {order:?}: A never built");
        env.stop().await;
    }
}

/// The deployed commit is missing from a re-cloned tree (force push, then the tree was removed
/// and cloned again) while a batch of pushes waits: the head is deployed, nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recloned_tree_without_the_deployed_commit_deploys_the_head() {
    let state = tempfile::tempdir().unwrap();
    let abs = state.path().display().to_string();
    let body = format!(
        r#"commands = [["sh", "-c", "touch {abs}/started-$DEPLOY_SHA; if [ -e block ]; then while [ ! -e {abs}/go ]; do sleep 0.05; done; fi; echo $DEPLOY_SHA >> {abs}/built"]]"#
    );
    let mut env = Env::new("", &body).await;
    let base = env.repo.commit("base", &[("v", "0")]);
    env.repo.push();
    // X blocks its run until `go`, so the next pushes wait in one batch.
    let x = env.repo.commit("x", &[("block", "")]);
    env.repo.push();
    env.start().await;
    env.enqueue(&x, "d-x");
    wait_for_file(&state.path().join(format!("started-{x}"))).await;

    env.repo.reset_hard(&base);
    let f = env.repo.commit("f", &[("v", "f")]);
    env.repo.force_push();
    let g = env.repo.commit("g", &[("v", "g")]);
    env.repo.push();
    // X is gone from the remote for good, and the tree will be cloned again.
    let bare = env.repo.bare();
    git(&bare, &["reflog", "expire", "--expire=now", "--all"]);
    git(&bare, &["gc", "--quiet", "--prune=now"]);
    std::fs::remove_dir_all(env.deploy_path()).unwrap();
    env.enqueue(&f, "d-f");
    env.enqueue(&g, "d-g");
    std::fs::write(state.path().join("go"), "").unwrap();
    env.wait_runs("all recorded", |r| r.len() == 3).await;
    let runs = env.wait_idle().await;
    assert_eq!(of_delivery(&runs, "d-x")[0].status, RunStatus::Success);
    assert!(
        with_status(&runs, RunStatus::Failed).is_empty(),
        "{runs:#?}"
    );
    let rg = of_delivery(&runs, "d-g")[0];
    assert_eq!(rg.status, RunStatus::Success, "{runs:#?}");
    assert_eq!(rg.sha, g);
    assert_eq!(of_delivery(&runs, "d-f")[0].status, RunStatus::Superseded);
    assert_eq!(head(&env.deploy_path()), g);
    env.stop().await;
}

/// A failed run's entry written again under the same name (a dispatcher that retried after its
/// delivery record failed): it already has its outcome, so nothing runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_found_again_after_its_failure_is_not_run_again() {
    let mut env = Env::new("", FAILS_ON_MARKER).await;
    let a = env.repo.commit("broken", &[("fail", "x")]);
    env.repo.push();
    env.start().await;
    let name = env.enqueue(&a, "d-a");
    env.wait_idle().await;
    let contents = serde_json::to_vec(&serde_json::json!({
        "deployment": "app", "delivery": "d-a", "repository": "test-owner/app",
        "branch": "main", "sha": a, "before": null, "received_at_ms": 0, "source": "webhook"
    }))
    .unwrap();
    env.queue().push_named(&name, &contents).unwrap();
    // Then a marker entry: once it is recorded, the repeat before it was handled too.
    let ok = env.repo.remove("fixed", "fail");
    env.repo.push();
    env.enqueue(&ok, "d-ok");
    let runs = env
        .wait_runs("the marker deployed", |r| {
            r.iter()
                .any(|r| r.delivery == "d-ok" && r.status.to_string() == "success")
        })
        .await;
    env.wait_idle().await;
    assert_eq!(of_delivery(&runs, "d-a").len(), 1, "{runs:#?}");
    assert_eq!(built(&env), vec![a, ok], "the failing build ran once");
    env.stop().await;
}

/// A `staging` push queued, then the deployment switched to `main` before it ran: the entry is
/// recorded `ignored` with the reason, never deployed as main.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_queued_for_another_branch_is_ignored() {
    let mut env = Env::new("", FAILS_ON_MARKER).await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.enqueue_request(serde_json::json!({
        "deployment": "app", "delivery": "d-staging", "repository": "test-owner/app",
        "branch": "staging", "sha": sha, "before": null, "received_at_ms": 0,
        "source": "webhook"
    }));
    env.enqueue_request(serde_json::json!({
        "deployment": "app", "delivery": "d-other-repo", "repository": "someone/else",
        "branch": "main", "sha": sha, "before": null, "received_at_ms": 0,
        "source": "webhook"
    }));
    env.start().await;
    env.wait_runs("both recorded", |r| r.len() == 2).await;
    let runs = env.wait_idle().await;
    for r in &runs {
        assert_eq!(r.status.to_string(), "ignored", "{runs:#?}");
    }
    let staging = of_delivery(&runs, "d-staging")[0];
    assert!(
        staging
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("branch staging"),
        "{staging:#?}"
    );
    assert!(built(&env).is_empty(), "nothing was deployed");
    assert!(!env.deploy_path().join(".git").exists(), "not even fetched");
    env.stop().await;
}

/// The ledger is write-locked while the remote is unreachable: the push's failure cannot be
/// recorded, so its entry stays queued (never lost) and, once both are back, it is deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_that_cannot_be_recorded_keeps_the_entry() {
    use sqlx::Connection;
    let mut env = Env::new("", FAILS_ON_MARKER).await;
    let sha = env.repo.commit("c", &[("v", "1")]);
    env.repo.push();
    let moved = env.state.path().join("remote-elsewhere.git");
    std::fs::rename(env.repo.bare(), &moved).unwrap();
    env.start().await;
    env.enqueue(&sha, "d1");
    // Once the run is retrying its fetch, the ledger is write-locked by another connection.
    let logs = env.config.logs_dir().join("app");
    let run_log = || {
        std::fs::read_dir(&logs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
            .collect::<String>()
    };
    let start = Instant::now();
    while !run_log().contains("fetch failed; retrying") {
        assert!(start.elapsed() < DEADLINE, "no fetch attempt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = env.config.effective_database_url();
    let mut blocker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    // The fetch fails for good and the failure cannot be recorded: the entry is either kept
    // (and says so in the run's log) or lost.
    let start = Instant::now();
    loop {
        if run_log().contains("stays queued") || env.queue().list().unwrap().is_empty() {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "neither kept nor lost");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        env.queue().list().unwrap().len(),
        1,
        "the entry whose outcome could not be written stays queued"
    );
    std::fs::rename(&moved, env.repo.bare()).unwrap();
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    drop(blocker);
    let runs = env
        .wait_runs("the push deployed", |r| {
            r.iter().any(|r| r.status == RunStatus::Success)
        })
        .await;
    env.wait_idle().await;
    let terminal: Vec<&Run> = runs
        .iter()
        .filter(|r| r.status != RunStatus::Cancelled)
        .collect();
    assert_eq!(terminal.len(), 1, "exactly one outcome: {runs:#?}");
    assert_eq!(terminal[0].sha, sha);
    assert_eq!(head(&env.deploy_path()), sha);
    env.stop().await;
}

/// An operator's `deploy NAME --sha X` deploys X (a rollback), recorded as pinned; the next push
/// moves forward to the head again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_rollback_deploys_its_commit_until_the_next_push() {
    let mut env = Env::new("", FAILS_ON_MARKER).await;
    let a = env.repo.commit("a", &[("v", "a")]);
    env.repo.push();
    let b = env.repo.commit("b", &[("v", "b")]);
    env.repo.push();
    env.start().await;
    env.enqueue(&b, "d-b");
    env.wait_idle().await;
    env.enqueue_request(serde_json::json!({
        "deployment": "app", "delivery": "cli-rollback", "repository": "test-owner/app",
        "branch": "main", "sha": a, "before": null, "received_at_ms": 0,
        "source": "cli", "pinned": true
    }));
    env.wait_runs("the rollback", |r| r.len() == 2).await;
    let runs = env.wait_idle().await;
    let pinned = of_delivery(&runs, "cli-rollback")[0];
    assert_eq!(pinned.sha, a);
    assert_eq!(pinned.source, "pinned");
    assert_eq!(head(&env.deploy_path()), a);

    let c = env.repo.commit("c", &[("v", "c")]);
    env.repo.push();
    env.enqueue(&c, "d-c");
    env.wait_runs("the next push", |r| r.len() == 3).await;
    let runs = env.wait_idle().await;
    assert_eq!(of_delivery(&runs, "d-c")[0].status, RunStatus::Success);
    assert_eq!(head(&env.deploy_path()), c);
    assert_eq!(built(&env), vec![b, a, c]);
    env.stop().await;
}

/// A deploy request that cannot be read is moved aside to the quarantine, never deleted, and
/// the entries behind it are deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_request_is_quarantined_not_deleted() {
    let mut env = Env::new("", FAILS_ON_MARKER).await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    let bad = "01000000000000000000-garbled.json";
    env.queue().push_named(bad, b"{ not json").unwrap();
    env.start().await;
    env.enqueue(&sha, "d1");
    env.wait_runs("deployed", |r| {
        r.iter().any(|r| r.status == RunStatus::Success)
    })
    .await;
    env.wait_idle().await;
    let aside = env.config.queues_dir().join("deploy-app-quarantine");
    let kept = std::fs::read(aside.join(bad)).expect("moved to the quarantine");
    assert_eq!(kept, b"{ not json");
    env.stop().await;
}
