//! Shared set-up for the worker tests: a real git remote, a config pointing at it, a SQLite
//! ledger, and the real workers consuming the real deploy queue.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deployer::config::Config;
use deployer::dispatch::{DeployRequest, deploy_queue_dir};
use deployer::ledger::Ledger;
use deployer::queue::Queue;
use deployer::worker::{Run, RunStatus, WorkerSet};
use testkit::git::Remote;
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(90);

#[derive(Debug)]
pub struct Env {
    pub state: tempfile::TempDir,
    pub repo: Remote,
    pub config: Arc<Config>,
    pub ledger: Ledger,
    pub shutdown: CancellationToken,
    workers: Vec<WorkerSet>,
}

/// TOML for a deployment `app` of `repo`, deployed to `<state>/app`, with `body` appended to its
/// table (commands, timeout, sites) and `top` before it (redis_url, github, ...).
pub fn config_text(state: &Path, repo: &Remote, top: &str, body: &str) -> String {
    // Tests without sites get a socket nobody listens on.
    let helper = if top.contains("helper_socket") {
        String::new()
    } else {
        format!("helper_socket = \"{}/no-helper.sock\"", state.display())
    };
    // The daemon suites count webhook runs; reconciliation has its own suite.
    let reconcile = if top.contains("reconcile_interval") {
        ""
    } else {
        "reconcile_interval = \"0\""
    };
    format!(
        r#"state_dir = "{state}"
{helper}
{reconcile}
{top}
[deployments.app]
repository = "test-owner/app"
branch = "{branch}"
path = "{state}/app"
remote = "{remote}"
# These tests coordinate with their commands through files outside the tree and read the
# commands' pids; the sandbox has its own tests (sandbox_hostile_build.rs).
sandbox = false
{body}
"#,
        state = state.display(),
        branch = repo.branch(),
        remote = repo.url(),
    )
}

pub fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("test.toml"), Some("webhook-secret".into())).expect("config")
}

impl Env {
    /// A deployment with `body` in its table; workers not started yet.
    pub async fn new(top: &str, body: &str) -> Env {
        let state = tempfile::Builder::new()
            .prefix("worker-test-")
            .tempdir()
            .unwrap();
        let repo = Remote::new("main");
        let config = parse(&config_text(state.path(), &repo, top, body));
        let ledger = Ledger::open(&config.effective_database_url())
            .await
            .unwrap();
        Env {
            state,
            repo,
            config: Arc::new(config),
            ledger,
            shutdown: CancellationToken::new(),
            workers: Vec::new(),
        }
    }

    pub fn deploy_path(&self) -> PathBuf {
        self.config.deployments["app"].path.clone()
    }

    /// Starts a set of workers (call twice for two competing "processes" on one state).
    pub async fn start(&mut self) {
        let set = deployer::worker::start(
            Arc::clone(&self.config),
            self.ledger.clone(),
            self.shutdown.clone(),
        )
        .await
        .expect("start workers");
        self.workers.push(set);
    }

    /// Starts workers with a separate ledger connection and shutdown token, as another process
    /// on the same state would have. [`Env::stop`] stops them too.
    pub async fn start_other(&mut self, config: Config) -> CancellationToken {
        let ledger = Ledger::open(&config.effective_database_url())
            .await
            .unwrap();
        let token = self.shutdown.child_token();
        let set = deployer::worker::start(Arc::new(config), ledger, token.clone())
            .await
            .expect("start workers");
        self.workers.push(set);
        token
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        for set in self.workers.drain(..) {
            set.wait().await;
        }
    }

    /// Queues a push of `sha` as the dispatcher would.
    pub fn enqueue(&self, sha: &str, delivery: &str) -> String {
        self.enqueue_from(sha, delivery, "webhook")
    }

    pub fn enqueue_from(&self, sha: &str, delivery: &str, source: &str) -> String {
        self.enqueue_request(serde_json::json!({
            "deployment": "app",
            "delivery": delivery,
            "repository": "test-owner/app",
            "branch": self.repo.branch(),
            "sha": sha,
            "before": null,
            "received_at_ms": 0,
            "source": source,
        }))
    }

    /// Queues a request given as JSON (the deploy queue's file format), under `delivery`.
    pub fn enqueue_request(&self, request: serde_json::Value) -> String {
        let delivery = request["delivery"].as_str().expect("a delivery").to_owned();
        // Checks the JSON is a request this version reads.
        let _: DeployRequest = serde_json::from_value(request.clone()).expect("a deploy request");
        self.queue()
            .push(&delivery, &serde_json::to_vec(&request).unwrap())
            .unwrap()
    }

    pub fn queue(&self) -> Queue {
        Queue::open(deploy_queue_dir(&self.config, "app")).unwrap()
    }

    pub async fn runs(&self) -> Vec<Run> {
        self.ledger.runs_of("app").await.unwrap()
    }

    /// Waits (up to [`DEADLINE`]) until `cond` holds for the deployment's runs.
    pub async fn wait_runs(&self, what: &str, cond: impl Fn(&[Run]) -> bool) -> Vec<Run> {
        let start = Instant::now();
        loop {
            let runs = self.runs().await;
            if cond(&runs) {
                return runs;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; runs: {runs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the queue is empty and no run is `running`.
    pub async fn wait_idle(&self) -> Vec<Run> {
        let start = Instant::now();
        loop {
            let runs = self.runs().await;
            let queued = self.queue().list().unwrap();
            if queued.is_empty() && runs.iter().all(|r| r.status != RunStatus::Running) {
                return runs;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for the queue to drain; queued {queued:?}; runs: {runs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_of(&self, run: &Run) -> String {
        std::fs::read_to_string(run.log_path.as_ref().expect("run has a log")).unwrap()
    }
}

pub fn with_status(runs: &[Run], status: RunStatus) -> Vec<&Run> {
    runs.iter().filter(|r| r.status == status).collect()
}

/// Waits for `path` to exist (a command's "I have started" marker).
pub async fn wait_for_file(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
