//! Workers against real git repositories and real processes: checkout, commands, logs,
//! coalescing, staleness, failures, timeouts and signals.

mod worker_support;

use std::time::Duration;

use deployer::worker::RunStatus;
use testkit::git::head;
use worker_support::{Env, wait_for_file, with_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_the_pushed_commit_and_logs_output_line_by_line() {
    let mut env = Env::new(
        "",
        r#"commands = [
    ["sh", "-c", "echo \"building $DEPLOY_NAME at $DEPLOY_SHA for $DEPLOY_REF ($DEPLOY_DELIVERY) with $GREETING\"; cat index.html"],
    ["sh", "-c", "echo to stderr >&2"],
]
env = { GREETING = "hello-env" }"#,
    )
    .await;
    let sha = env.repo.commit("first", &[("index.html", "<h1>v1</h1>\n")]);
    env.repo.push();
    env.start().await;
    env.enqueue(&sha, "delivery-1");
    let runs = env.wait_idle().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(run.status, RunStatus::Success, "{run:#?}");
    assert_eq!(run.sha, sha);
    assert_eq!(run.delivery, "delivery-1");
    assert!(run.finished_at.unwrap() >= run.started_at);
    assert_eq!(head(&env.deploy_path()), sha);
    let log = env.log_of(run);
    assert!(
        log.contains(&format!(
            "building app at {sha} for refs/heads/main (delivery-1) with hello-env"
        )),
        "{log}"
    );
    assert!(log.contains("<h1>v1</h1>"), "{log}");
    assert!(log.contains("to stderr"), "{log}");
    // Every line carries a UTC timestamp.
    for line in log.lines() {
        let stamp = line.split(' ').next().unwrap();
        assert!(
            stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line:?}"
        );
    }

    // A second push deploys on top, with the tree forced to the new commit.
    std::fs::write(env.deploy_path().join("stray.txt"), "left by hand").unwrap();
    let sha2 = env
        .repo
        .commit("second", &[("index.html", "<h1>v2</h1>\n")]);
    env.repo.push();
    env.enqueue(&sha2, "delivery-2");
    let runs = env
        .wait_runs("the second run", |r| {
            r.len() == 2 && r[1].status != RunStatus::Running
        })
        .await;
    assert_eq!(runs[1].status, RunStatus::Success, "{runs:#?}");
    assert_eq!(head(&env.deploy_path()), sha2);
    assert!(!env.deploy_path().join("stray.txt").exists());
    assert_eq!(
        deployer::ledger::Ledger::deployed_sha(&env.ledger, "app")
            .await
            .unwrap(),
        Some(sha2)
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_during_a_slow_deploy_coalesce_to_the_newest_by_history() {
    let mut env = Env::new(
        "",
        r#"commands = [["sh", "-c", "touch ../markers/started-$DEPLOY_SHA; while [ ! -e ../markers/go ]; do sleep 0.05; done"]]"#,
    )
    .await;
    // The deployment runs in <state>/app, so ../markers is <state>/markers.
    let markers = env.state.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let first = env.repo.commit("first", &[]);
    env.repo.push();
    env.start().await;
    env.enqueue(&first, "d0");
    wait_for_file(&markers.join(format!("started-{first}"))).await;

    // Five pushes while the first deploy is blocked, delivered out of order.
    let shas: Vec<String> = (1..=5)
        .map(|i| {
            let sha = env.repo.commit(&format!("c{i}"), &[]);
            env.repo.push();
            sha
        })
        .collect();
    for i in [2, 5, 1, 4, 3] {
        env.enqueue(&shas[i - 1], &format!("d{i}"));
    }
    std::fs::write(markers.join("go"), "").unwrap();
    let runs = env.wait_idle().await;
    let success = with_status(&runs, RunStatus::Success);
    assert_eq!(success.len(), 2, "{runs:#?}");
    assert_eq!(success[0].sha, first);
    assert_eq!(
        success[1].sha, shas[4],
        "the newest by history wins, not the last to arrive"
    );
    let superseded = with_status(&runs, RunStatus::Superseded);
    assert_eq!(superseded.len(), 4, "{runs:#?}");
    assert_eq!(runs.len(), 6, "{runs:#?}");
    assert_eq!(head(&env.deploy_path()), shas[4]);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_push_of_an_older_commit_is_stale_and_not_deployed() {
    let mut env = Env::new("", r#"commands = [["true"]]"#).await;
    let old = env.repo.commit("old", &[("v", "1")]);
    env.repo.push();
    let new = env.repo.commit("new", &[("v", "2")]);
    env.repo.push();
    env.start().await;
    env.enqueue(&new, "d-new");
    env.wait_runs("the new commit deployed", |r| {
        r.iter().any(|r| r.status == RunStatus::Success)
    })
    .await;
    env.enqueue(&old, "d-old");
    // A redelivery of the deployed commit is stale too.
    env.enqueue(&new, "d-new-again");
    env.wait_idle().await;
    let runs = env
        .wait_runs("both late pushes recorded", |r| r.len() == 3)
        .await;
    let stale = with_status(&runs, RunStatus::Stale);
    assert_eq!(stale.len(), 2, "{runs:#?}");
    assert_eq!(head(&env.deploy_path()), new);
    assert!(env.queue().list().unwrap().is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_push_back_to_an_older_commit_is_deployed() {
    let mut env = Env::new("", r#"commands = [["true"]]"#).await;
    let old = env.repo.commit("old", &[("v", "1")]);
    env.repo.push();
    let new = env.repo.commit("new", &[("v", "2")]);
    env.repo.push();
    env.start().await;
    env.enqueue(&new, "d1");
    env.wait_runs("deployed", |r| {
        r.iter().any(|r| r.status == RunStatus::Success)
    })
    .await;
    // Diverging history: rewind and commit something else, force-pushed.
    env.repo.reset_hard(&old);
    let rewritten = env.repo.commit("rewritten", &[("v", "3")]);
    env.repo.force_push();
    env.enqueue(&rewritten, "d2");
    let runs = env
        .wait_runs("the force push deployed", |r| {
            r.len() == 2 && r[1].status != RunStatus::Running
        })
        .await;
    assert_eq!(runs[1].status, RunStatus::Success, "{runs:#?}");
    assert_eq!(head(&env.deploy_path()), rewritten);

    // A rollback: the branch forced back to `old`, an ancestor of nothing deployed now but
    // still the branch head, is deployed rather than called stale.
    env.repo.reset_hard(&old);
    env.repo.force_push();
    env.enqueue(&old, "d3");
    let runs = env
        .wait_runs("the rollback", |r| {
            r.len() == 3 && r[2].status != RunStatus::Running
        })
        .await;
    assert_eq!(runs[2].status, RunStatus::Success, "{runs:#?}");
    assert_eq!(head(&env.deploy_path()), old);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_fails_the_run_and_stops_there() {
    let mut env = Env::new(
        "",
        r#"commands = [["sh", "-c", "echo about to fail; exit 3"], ["touch", "should-not-exist"]]"#,
    )
    .await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.start().await;
    env.enqueue(&sha, "d1");
    let runs = env.wait_idle().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].status, RunStatus::Failed);
    let error = runs[0].error.as_deref().unwrap();
    assert!(error.contains("exited with status 3"), "{error}");
    assert!(env.log_of(&runs[0]).contains("about to fail"));
    assert!(!env.deploy_path().join("should-not-exist").exists());
    assert_eq!(env.ledger.deployed_sha("app").await.unwrap(), None);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_killed_by_a_signal_fails_the_run() {
    let mut env = Env::new("", r#"commands = [["sh", "-c", "kill -KILL $$"]]"#).await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.start().await;
    env.enqueue(&sha, "d1");
    let runs = env.wait_idle().await;
    assert_eq!(runs[0].status, RunStatus::Failed, "{runs:#?}");
    let error = runs[0].error.as_deref().unwrap();
    assert!(error.contains("killed by signal SIGKILL"), "{error}");
    env.stop().await;
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes: it runs nothing and waits only to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_process_group() {
    let mut env = Env::new(
        "",
        r#"commands = [{ argv = ["sh", "-c", "sleep 600 & echo $! > background.pid; echo started; sleep 600"], timeout = "5s" }]"#,
    )
    .await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.start().await;
    env.enqueue(&sha, "d1");
    let runs = env.wait_idle().await;
    assert_eq!(runs[0].status, RunStatus::Failed, "{runs:#?}");
    let error = runs[0].error.as_deref().unwrap();
    assert!(error.contains("timed out after 5s"), "{error}");
    let pid: i32 = std::fs::read_to_string(env.deploy_path().join("background.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let start = std::time::Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the background process {pid} outlived the run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_timeout_bounds_the_whole_run() {
    let mut env = Env::new(
        "",
        r#"commands = [["sleep", "1"], ["sleep", "600"]]
timeout = "3s""#,
    )
    .await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.start().await;
    env.enqueue(&sha, "d1");
    let runs = env.wait_idle().await;
    assert_eq!(runs[0].status, RunStatus::Failed, "{runs:#?}");
    assert!(runs[0].error.as_deref().unwrap().contains("timed out"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_entry_of_a_deployed_delivery_is_dropped() {
    let mut env = Env::new("", r#"commands = [["sh", "-c", "echo x >> ../count"]]"#).await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.start().await;
    let name = env.enqueue(&sha, "d1");
    env.wait_idle().await;
    // The dispatcher re-pushes the same entry after a crash.
    let contents = serde_json::to_vec(&serde_json::json!({
        "deployment": "app", "delivery": "d1", "repository": "test-owner/app",
        "branch": "main", "sha": sha, "before": null, "received_at_ms": 0, "source": "webhook"
    }))
    .unwrap();
    env.queue().push_named(&name, &contents).unwrap();
    let runs = env.wait_idle().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let count = std::fs::read_to_string(env.state.path().join("count")).unwrap();
    assert_eq!(count.lines().count(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_commit_fails_and_an_operator_deploy_redeploys() {
    let mut env = Env::new("", r#"commands = [["sh", "-c", "echo x >> ../count"]]"#).await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.start().await;
    // A push of a commit the branch does not have is stale; a pinned deploy of one fails.
    env.enqueue(&"0".repeat(40), "bogus-push");
    let runs = env.wait_runs("the push recorded", |r| r.len() == 1).await;
    assert_eq!(runs[0].status, RunStatus::Stale, "{runs:#?}");
    env.enqueue_request(serde_json::json!({
        "deployment": "app", "delivery": "bogus", "repository": "test-owner/app",
        "branch": "main", "sha": "0".repeat(40), "before": null, "received_at_ms": 0,
        "source": "cli", "pinned": true
    }));
    let runs = env.wait_runs("the pin recorded", |r| r.len() == 2).await;
    let runs = &runs[1..];
    assert_eq!(runs[0].status, RunStatus::Failed, "{runs:#?}");
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("not in the repository")
    );
    assert!(env.log_of(&runs[0]).contains("not in the repository"));

    env.enqueue(&sha, "d1");
    env.wait_runs("deployed", |r| {
        r.iter().any(|r| r.status == RunStatus::Success)
    })
    .await;
    // The same commit again from the command line is a deliberate redeploy, not stale.
    env.enqueue_from(&sha, "cli-1", "cli");
    let runs = env
        .wait_runs("redeployed", |r| {
            with_status(r, RunStatus::Success).len() == 2
        })
        .await;
    let cli = runs.iter().find(|r| r.delivery == "cli-1").unwrap();
    assert_eq!(cli.status, RunStatus::Success, "{runs:#?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diverged_pushes_in_one_batch_deploy_the_head() {
    let mut env = Env::new(
        "",
        r#"commands = [["sh", "-c", "touch ../markers/started-$DEPLOY_SHA; while [ ! -e ../markers/go ]; do sleep 0.05; done"]]"#,
    )
    .await;
    let markers = env.state.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let base = env.repo.commit("base", &[]);
    env.repo.push();
    env.start().await;
    env.enqueue(&base, "d0");
    wait_for_file(&markers.join(format!("started-{base}"))).await;

    // Two pushes whose commits are not ancestors of each other: the second rewrote the branch.
    let first = env.repo.commit("one way", &[("f", "1")]);
    env.repo.push();
    env.repo.reset_hard(&base);
    let second = env.repo.commit("another way", &[("f", "2")]);
    env.repo.force_push();
    env.enqueue(&second, "d2");
    env.enqueue(&first, "d1");
    std::fs::write(markers.join("go"), "").unwrap();
    let runs = env.wait_idle().await;
    let success = with_status(&runs, RunStatus::Success);
    assert_eq!(success.len(), 2, "{runs:#?}");
    assert_eq!(
        success[1].sha, second,
        "the head wins, whatever the arrival order"
    );
    let stale = with_status(&runs, RunStatus::Stale);
    assert_eq!(stale.len(), 1, "{runs:#?}");
    assert_eq!(stale[0].sha, first, "no longer on the branch");
    assert_eq!(head(&env.deploy_path()), second);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_is_retried_then_fails_the_run() {
    let mut env = Env::new("", r#"commands = [["true"]]"#).await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    // The remote disappears (a network outage, as far as git can tell).
    let moved = env.state.path().join("remote-elsewhere.git");
    std::fs::rename(env.repo.bare(), &moved).unwrap();
    env.start().await;
    env.enqueue(&sha, "d1");
    let runs = env.wait_idle().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].status, RunStatus::Failed);
    let log = env.log_of(&runs[0]);
    assert_eq!(
        log.matches("fetch failed; retrying").count(),
        4,
        "four retries with backoff: {log}"
    );
    std::fs::rename(&moved, env.repo.bare()).unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_helper_is_retried_then_fails_the_run() {
    let mut env = Env::new(
        "",
        r#"commands = [["true"]]
sites = { demo = "nginx/demo.conf" }"#,
    )
    .await;
    let sha = env.repo.commit(
        "c",
        &[("nginx/demo.conf", "server { server_name demo.test; }\n")],
    );
    env.repo.push();
    env.start().await;
    env.enqueue(&sha, "d1");
    let runs = env.wait_idle().await;
    assert_eq!(runs[0].status, RunStatus::Failed, "{runs:#?}");
    let error = runs[0].error.as_deref().unwrap();
    assert!(
        error.contains("cannot connect to the privileged helper"),
        "{error}"
    );
    let log = env.log_of(&runs[0]);
    assert_eq!(log.matches("retrying in").count(), 4, "{log}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_restart_commands_run_after_the_build_in_the_tree_and_not_after_a_failure() {
    let mut env = Env::new(
        "",
        r#"commands = [["sh", "-c", "echo build >> ../steps; test ! -e fail"]]
restart = [["sh", "-c", "echo \"restart $(pwd -P) $DEPLOY_SHA\" >> ../steps"]]"#,
    )
    .await;
    let good = env.repo.commit("good", &[("index.html", "v1")]);
    env.repo.push();
    env.start().await;
    env.enqueue(&good, "d1");
    let runs = env.wait_idle().await;
    assert_eq!(runs[0].status, RunStatus::Success, "{runs:#?}");
    let bad = env.repo.commit("bad", &[("fail", "x")]);
    env.repo.push();
    env.enqueue(&bad, "d2");
    let runs = env.wait_idle().await;
    assert_eq!(runs[1].status, RunStatus::Failed, "{runs:#?}");
    env.stop().await;
    let steps = std::fs::read_to_string(env.state.path().join("steps")).unwrap();
    let tree = std::fs::canonicalize(env.deploy_path()).unwrap();
    assert_eq!(
        steps,
        format!("build\nrestart {} {good}\nbuild\n", tree.display())
    );
}
