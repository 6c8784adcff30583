//! Commit statuses against a local fake of the GitHub API (GitHub itself cannot be reached from
//! the tests): pending then success or failure, with the right context, target URL and token,
//! and a broken API never failing a deploy.

mod fake_github;
mod worker_support;

use deployer::worker::RunStatus;
use fake_github::{FakeGithub, Seen};
use worker_support::Env;

const TOKEN: &str = "ghp_test_token_that_must_not_leak";

async fn env_with_github(commands: &str, answer: u16) -> (Env, FakeGithub, tempfile::TempDir) {
    let fake = FakeGithub::start();
    fake.answer_statuses_with(answer);
    let api = fake.url.clone();
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let top = format!(
        "public_url = \"https://deploy.example.test/\"\n[github]\ntoken_file = \"{}\"\napi_url = \"{api}\"\n",
        token_file.display()
    );
    let env = Env::new(&top, commands).await;
    (env, fake, secrets)
}

fn check_request(seen: &Seen, sha: &str, state: &str, run_id: &str) {
    assert_eq!(seen.repo, "test-owner/app");
    assert_eq!(seen.sha, sha);
    assert_eq!(seen.authorization, format!("Bearer {TOKEN}"));
    assert_eq!(seen.accept, "application/vnd.github+json");
    assert_eq!(seen.body["state"], state, "{:?}", seen.body);
    assert_eq!(seen.body["context"], "durhack-deployer/app");
    assert_eq!(
        seen.body["target_url"],
        format!("https://deploy.example.test/deployments/app/runs/{run_id}")
    );
    assert!(
        seen.body["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty() && d.len() <= 140)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reports_pending_then_success() {
    let (mut env, fake, _secrets) = env_with_github(r#"commands = [["true"]]"#, 201).await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.start().await;
    env.enqueue(&sha, "d1");
    let runs = env.wait_idle().await;
    assert_eq!(runs[0].status, RunStatus::Success);
    env.stop().await;
    let seen = fake.statuses();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    check_request(&seen[0], &sha, "pending", &runs[0].id);
    check_request(&seen[1], &sha, "success", &runs[0].id);
    // The token goes to GitHub only: never into the run's log.
    assert!(!env.log_of(&runs[0]).contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_reports_failure_with_its_error() {
    let (mut env, fake, _secrets) =
        env_with_github(r#"commands = [["sh", "-c", "exit 4"]]"#, 201).await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.start().await;
    env.enqueue(&sha, "d1");
    let runs = env.wait_idle().await;
    assert_eq!(runs[0].status, RunStatus::Failed);
    env.stop().await;
    let seen = fake.statuses();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    check_request(&seen[0], &sha, "pending", &runs[0].id);
    check_request(&seen[1], &sha, "failure", &runs[0].id);
    assert!(
        seen[1].body["description"]
            .as_str()
            .unwrap()
            .contains("exited with status 4")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_github_api_never_fails_the_deploy() {
    let (mut env, fake, _secrets) = env_with_github(r#"commands = [["true"]]"#, 500).await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.start().await;
    env.enqueue(&sha, "d1");
    let runs = env.wait_idle().await;
    assert_eq!(runs[0].status, RunStatus::Success, "{runs:#?}");
    env.stop().await;
    assert_eq!(fake.statuses().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_reports_the_rolled_back_commit() {
    let (mut env, fake, _secrets) =
        env_with_github("layout = \"releases\"\ncommands = [[\"true\"]]", 201).await;
    env.start().await;
    let old = env.repo.commit("old", &[("v", "1")]);
    env.repo.push();
    env.enqueue(&old, "d1");
    env.wait_runs("old deployed", |r| {
        r.len() == 1 && r[0].status == RunStatus::Success
    })
    .await;
    let new = env.repo.commit("new", &[("v", "2")]);
    env.repo.push();
    env.enqueue(&new, "d2");
    env.wait_runs("new deployed", |r| {
        r.len() == 2 && r[1].status == RunStatus::Success
    })
    .await;
    let releases = deployer::worker::Releases::new(&env.deploy_path());
    let live = releases.current().unwrap();
    let previous = releases.previous(&live).unwrap();
    assert_eq!(previous.sha, old);
    env.enqueue_request(serde_json::json!({
        "deployment": "app",
        "delivery": "rollback-1",
        "repository": "test-owner/app",
        "branch": env.repo.branch(),
        "sha": old,
        "before": null,
        "received_at_ms": 0,
        "source": "rollback",
        "release": previous.run,
    }));
    let runs = env.wait_idle().await;
    env.stop().await;
    let rollback = runs.last().unwrap();
    assert_eq!(
        (
            rollback.source.as_str(),
            rollback.status,
            rollback.sha.as_str()
        ),
        ("rollback", RunStatus::Success, old.as_str()),
        "{runs:#?}"
    );
    assert_eq!(releases.current(), Some(previous.run));
    let seen = fake.statuses();
    assert_eq!(seen.len(), 6, "{seen:#?}");
    check_request(&seen[4], &old, "pending", &rollback.id);
    check_request(&seen[5], &old, "success", &rollback.id);
    assert!(
        seen[5].body["description"]
            .as_str()
            .unwrap()
            .contains("Rolled back")
    );
}
