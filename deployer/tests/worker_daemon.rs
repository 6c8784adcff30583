//! The real `durhack-deployer serve` binary: a signed push over HTTP is deployed; a daemon
//! killed mid-run redoes the run after a restart; `status`, `logs` and `deploy` on the side.

mod robust_support;
mod worker_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deployer::ledger::Ledger;
use deployer::worker::{Run, RunStatus};
use serde_json::{Value, json};
use testkit::git::{Remote, head};
use worker_support::{DEADLINE, config_text, wait_for_file, with_status};

const EXE: &str = env!("CARGO_BIN_EXE_durhack-deployer");
const SECRET: &str = "webhook-secret";

struct Daemon {
    state: tempfile::TempDir,
    repo: Remote,
    config_path: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Daemon {
    fn new(body: &str) -> Daemon {
        let state = tempfile::Builder::new()
            .prefix("worker-daemon-")
            .tempdir()
            .unwrap();
        let repo = Remote::new("main");
        // Not an ephemeral port: waiting for the restarted daemon could self-connect to one.
        let port = robust_support::restartable_port();
        let text = config_text(
            state.path(),
            &repo,
            &format!("listen = \"127.0.0.1:{port}\""),
            body,
        );
        let config_path = state.path().join("config.toml");
        std::fs::write(&config_path, text).unwrap();
        Daemon {
            state,
            repo,
            config_path,
            port,
            child: None,
        }
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(EXE);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env(deployer::config::SECRET_ENV, SECRET)
            .env("NO_COLOR", "1");
        cmd
    }

    /// Starts `serve` and waits until it answers.
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("daemon.log"))
            .unwrap();
        let child = self
            .cli(&["serve"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start durhack-deployer serve");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "no answer:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("daemon.log")).unwrap_or_default()
    }

    fn deploy_path(&self) -> PathBuf {
        self.state.path().join("app")
    }

    async fn ledger(&self) -> Ledger {
        let url = format!(
            "sqlite://{}",
            self.state.path().join("ledger.sqlite3").display()
        );
        let start = Instant::now();
        loop {
            if let Ok(l) = Ledger::connect(&url).await {
                return l;
            }
            assert!(start.elapsed() < DEADLINE, "no ledger");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_runs(&self, what: &str, cond: impl Fn(&[Run]) -> bool) -> Vec<Run> {
        let ledger = self.ledger().await;
        let start = Instant::now();
        loop {
            let runs = ledger.runs_of("app").await.unwrap_or_default();
            if cond(&runs) {
                return runs;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; runs {runs:#?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn queued(&self) -> Vec<String> {
        std::fs::read_dir(self.state.path().join("queues/deploy-app"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends a push of `after` signed like GitHub signs it.
    async fn push(&self, delivery: &str, before: &str, after: &str) {
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/main", "before": before, "after": after,
            "created": false, "deleted": false, "forced": false,
            "repository": { "full_name": "test-owner/app", "name": "app",
                            "owner": { "login": "test-owner" }, "default_branch": "main" },
            "pusher": { "name": "tester" },
            "head_commit": { "id": after, "message": "test" },
            "commits": [{ "id": after, "message": "test" }]
        }))
        .unwrap();
        let signature = deployer::http::signature::sign(SECRET.as_bytes(), &body);
        let response = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/github-webhook", self.port))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", signature)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

const ZERO: &str = "0000000000000000000000000000000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_over_http_is_deployed_and_the_cli_reports_it() {
    let mut d = Daemon::new(
        r#"commands = [["sh", "-c", "echo \"build output for $DEPLOY_SHA\"; cat version"]]"#,
    );
    let sha = d.repo.commit("v1", &[("version", "version-one\n")]);
    d.repo.push();
    d.start();
    d.push("7b0c6a1e-0001", ZERO, &sha).await;
    let runs = d
        .wait_runs("the push deployed", |r| {
            r.iter().any(|r| r.status == RunStatus::Success)
        })
        .await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].delivery, "7b0c6a1e-0001");
    assert_eq!(head(&d.deploy_path()), sha);
    let log = std::fs::read_to_string(runs[0].log_path.as_ref().unwrap()).unwrap();
    assert!(log.contains(&format!("build output for {sha}")), "{log}");
    assert!(log.contains("version-one"), "{log}");

    // status --json
    let out = d.cli(&["status", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let app = &status[0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["repository"], "test-owner/app");
    assert_eq!(app["branch"], "main");
    assert_eq!(app["deployed_sha"], sha.as_str());
    assert_eq!(app["last_run"]["id"], runs[0].id.as_str());
    assert_eq!(app["last_run"]["status"], "success");
    assert_eq!(app["last_run"]["sha"], sha.as_str());
    assert!(
        app["last_run"]["started_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(app["last_run"]["finished_at"].is_string());
    assert_eq!(app["queued"], 0);
    // The table names the same things.
    let out = d.cli(&["status"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("NAME") && table.contains(&sha[..12]),
        "{table}"
    );

    // logs: the latest run's log, and a run by id.
    let out = d.cli(&["logs", "app"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("version-one"));
    let out = d
        .cli(&["logs", "app", "--run", &runs[0].id])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("version-one"));

    // deploy: the branch head, through the same queue, deployed by the running daemon.
    let sha2 = d.repo.commit("v2", &[("version", "version-two\n")]);
    d.repo.push();
    let out = d.cli(&["deploy", "app"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = d
        .wait_runs("the CLI deploy", |r| {
            r.iter()
                .any(|r| r.status == RunStatus::Success && r.sha == sha2)
        })
        .await;
    assert_eq!(runs.last().unwrap().source, "cli");
    assert_eq!(head(&d.deploy_path()), sha2);
    // ...and an explicit older commit, as an operator's rollback.
    let out = d.cli(&["deploy", "app", "--sha", &sha]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_runs("the rollback", |r| {
        with_status(r, RunStatus::Success).len() == 3
    })
    .await;
    assert_eq!(head(&d.deploy_path()), sha);
}

fn kill_group_of_pid_in(file: &Path) {
    let pid: i32 = std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The build runs in its own process group, which outlives a SIGKILLed daemon (systemd would
    // kill the unit's whole cgroup; here the test does).
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_run_redoes_the_run_after_a_restart() {
    let mut d = Daemon::new(
        r#"commands = [["sh", "-c", "echo attempt >> ../attempts; echo $$ > ../started; while [ ! -e ../go ]; do sleep 0.05; done; echo built"]]"#,
    );
    let sha = d.repo.commit("c", &[]);
    d.repo.push();
    d.start();
    d.push("crash-delivery", ZERO, &sha).await;
    let started = d.state.path().join("started");
    wait_for_file(&started).await;
    d.wait_runs("the run recorded as running", |r| {
        r.iter().any(|r| r.status == RunStatus::Running)
    })
    .await;
    d.kill9();
    kill_group_of_pid_in(&started);
    std::fs::remove_file(&started).unwrap();
    assert_eq!(d.queued().len(), 1, "the entry stays queued");

    d.start();
    wait_for_file(&started).await;
    std::fs::write(d.state.path().join("go"), "").unwrap();
    let runs = d
        .wait_runs("the redone run", |r| {
            r.iter().any(|r| r.status == RunStatus::Success)
        })
        .await;
    let start = Instant::now();
    while !d.queued().is_empty() {
        assert!(start.elapsed() < DEADLINE, "left queued: {:?}", d.queued());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(head(&d.deploy_path()), sha);
    let attempts = std::fs::read_to_string(d.state.path().join("attempts")).unwrap();
    assert_eq!(attempts.lines().count(), 2);
    // The interrupted run is closed as cancelled, the redo succeeded, for the same delivery.
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(runs[0].status, RunStatus::Cancelled);
    assert!(runs.iter().all(|r| r.delivery == "crash-delivery"));
}

fn terminate(d: &mut Daemon) -> std::process::ExitStatus {
    let mut child = d.child.take().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_deploy_finish_within_the_grace_period_while_logs_follow_it() {
    let mut d = Daemon::new(
        r#"commands = [["sh", "-c", "echo waiting; touch ../started; while [ ! -e ../go ]; do sleep 0.05; done; echo built-after-sigterm"]]"#,
    );
    let sha = d.repo.commit("c", &[]);
    d.repo.push();
    d.start();
    d.push("term-delivery", ZERO, &sha).await;
    wait_for_file(&d.state.path().join("started")).await;
    d.wait_runs("running", |r| {
        r.iter().any(|r| r.status == RunStatus::Running)
    })
    .await;
    let follow = d
        .cli(&["logs", "app", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let pid = d.child.as_ref().unwrap().id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    std::fs::write(d.state.path().join("go"), "").unwrap();
    let status = d.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}\n{}", d.log());
    let followed = follow.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&followed.stdout);
    assert!(followed.contains("waiting"), "{followed}");
    assert!(followed.contains("built-after-sigterm"), "{followed}");
    let runs = d.wait_runs("recorded", |r| !r.is_empty()).await;
    assert_eq!(runs[0].status, RunStatus::Success, "{runs:#?}");
    assert!(d.queued().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_kills_a_deploy_that_outlasts_the_grace_period_and_keeps_it_queued() {
    let mut d = Daemon::new(r#"commands = [["sh", "-c", "echo $$ > ../started; sleep 600"]]"#);
    let sha = d.repo.commit("c", &[]);
    d.repo.push();
    d.start();
    d.push("slow-delivery", ZERO, &sha).await;
    let started = d.state.path().join("started");
    wait_for_file(&started).await;
    d.wait_runs("running", |r| {
        r.iter().any(|r| r.status == RunStatus::Running)
    })
    .await;
    let status = terminate(&mut d);
    assert!(status.success(), "{status}\n{}", d.log());
    let pid: i32 = std::fs::read_to_string(&started)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(pid), "the build outlived the daemon");
    let runs = d.wait_runs("recorded", |r| !r.is_empty()).await;
    assert_eq!(runs[0].status, RunStatus::Cancelled, "{runs:#?}");
    assert_eq!(
        d.queued().len(),
        1,
        "the push stays queued for the next start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_update_asks_systemd_for_a_restart_with_exit_status_75() {
    let mut d = Daemon::new(
        r#"self_update = true
commands = [["sh", "-c", "echo installing the new binary; touch \"$DEPLOY_RESTART_FILE\""]]"#,
    );
    let sha = d.repo.commit("new deployer", &[]);
    d.repo.push();
    d.start();
    d.push("self-update", ZERO, &sha).await;
    let mut child = d.child.take().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the daemon did not exit:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.code(),
        Some(deployer::worker::RESTART_EXIT_STATUS),
        "{}",
        d.log()
    );
    let runs = d.wait_runs("recorded", |r| !r.is_empty()).await;
    assert_eq!(runs[0].status, RunStatus::Success, "{runs:#?}");
    assert!(d.queued().is_empty());
    assert!(!d.state.path().join("restart-requested").exists());
}

/// Only the deployer's own deployment may restart it: another build that finds the file in its
/// home (its name is no secret) and touches it restarts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_is_not_a_self_update_cannot_restart_the_daemon() {
    let file = ".durhack-deployer-restart-requested";
    let mut d = Daemon::new(&format!(
        r#"commands = [["sh", "-c", "test -z \"$DEPLOY_RESTART_FILE\" && touch \"$HOME/{file}\""]]"#
    ));
    let sha = d.repo.commit("an ordinary app", &[]);
    d.repo.push();
    d.start();
    d.push("not-a-self-update", ZERO, &sha).await;
    let runs = d
        .wait_runs("finished", |r| {
            r.first().is_some_and(|r| r.status != RunStatus::Running)
        })
        .await;
    assert_eq!(runs[0].status, RunStatus::Success, "{runs:#?}\n{}", d.log());
    // A restart asked for by the first run would stop the daemon before it took the second.
    let next = d.repo.commit("and another", &[]);
    d.repo.push();
    d.push("after-the-touch", &sha, &next).await;
    d.wait_runs("the second push deployed by the same daemon", |r| {
        r.len() == 2 && r.iter().all(|r| r.status == RunStatus::Success)
    })
    .await;
    let child = d.child.as_mut().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon exited:\n{}",
        d.log()
    );
    assert!(!d.log().contains("restart requested"), "{}", d.log());
}
