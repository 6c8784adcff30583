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
