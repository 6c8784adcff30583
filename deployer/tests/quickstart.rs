//! End to end, as a newcomer would: `quickstart` prepares a demo and serves it, `send-test-push
//! --new-commit` adds a commit and sends a signed push, and the demo deployment's working tree
//! reaches that commit with its build output — twice, so the second push is a new deploy.
//! Real daemon, real git, SQLite and local locks; no root, no helper.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::prereq;

mod quickstart_support;
use quickstart_support::{DEADLINE, Daemon, EXE, free_port, git_out, wait_for};

fn send_test_push(config: &Path) -> String {
    let out = Command::new(EXE)
        .arg("send-test-push")
        .arg("--config")
        .arg(config)
        .args(["demo", "--new-commit"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "send-test-push failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("202"), "the push is accepted: {stdout}");
    assert!(
        stdout.contains("logs --follow"),
        "it says how to follow the deploy: {stdout}"
    );
    stdout
}

#[test]
fn quickstart_deploys_each_test_push() {
    if !prereq::require(
        "git",
        prereq::have_program("git"),
        "the demo repository and the deploy use git",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("quickstart");
    let port = free_port();
    let log = tmp.path().join("quickstart.log");
    let mut quickstart = Command::new(EXE);
    quickstart
        .arg("quickstart")
        .arg("--dir")
        .arg(&dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    let mut daemon = Daemon::spawn(quickstart, &log);

    wait_for(&mut daemon, "the webhook endpoint to listen", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let config = dir.join("config.toml");
    assert!(
        daemon.log().contains("send-test-push"),
        "the quickstart says how to send a push:\n{}",
        daemon.log()
    );
    let banner = daemon.log();
    assert!(
        banner.contains(&format!("{EXE} logs --follow --config")),
        "the quickstart says how to follow a deploy, with a program that exists:\n{banner}"
    );

    // A second quickstart on the same directory refuses, and leaves the config alone.
    let before = std::fs::read(&config).unwrap();
    let out = Command::new(EXE)
        .arg("quickstart")
        .arg("--dir")
        .arg(&dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--prepare-only")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&config).unwrap(), before, "config rewritten");

    let repo = dir.join("demo.git");
    let app = dir.join("app");
    let repo_arg = repo.to_str().unwrap();
    let app_arg = app.to_str().unwrap();
    // The demo starts at version 1; each --new-commit bumps it.
    for version in [2, 3] {
        send_test_push(&config);
        let sha = git_out(&["--git-dir", repo_arg, "rev-parse", "refs/heads/main"]).unwrap();
        assert_eq!(
            git_out(&["--git-dir", repo_arg, "show", &format!("{sha}:version.txt")]).as_deref(),
            Some(version.to_string().as_str()),
            "send-test-push added a real commit"
        );
        let what = format!("the deploy of version {version} ({sha})");
        wait_for(&mut daemon, &what, || {
            let head = git_out(&["-C", app_arg, "rev-parse", "HEAD"])?;
            let built = std::fs::read_to_string(app.join("built.txt")).ok()?;
            (head == sha && built.contains(&format!("version: {version}\n"))).then_some(())
        });
        // The operator's view agrees: `status --json` shows the commit deployed.
        wait_for(&mut daemon, "status to show the deployed commit", || {
            let out = Command::new(EXE)
                .arg("status")
                .arg("--config")
                .arg(&config)
                .arg("--json")
                .output()
                .ok()?;
            let statuses: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let demo = statuses
                .as_array()?
                .iter()
                .find(|s| s["name"] == "demo")?
                .clone();
            (demo["deployed_sha"] == sha.as_str()).then_some(())
        });
    }

    // `send-test-push | head -1`: a reader that is gone makes no panic, and the push is sent.
    let mut child = Command::new(EXE)
        .arg("send-test-push")
        .arg("--config")
        .arg(&config)
        .args(["demo", "--new-commit"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    let sha = git_out(&["--git-dir", repo_arg, "rev-parse", "refs/heads/main"]).unwrap();
    wait_for(
        &mut daemon,
        "the push sent to a closed stdout to deploy",
        || {
            let head = git_out(&["-C", app_arg, "rev-parse", "HEAD"])?;
            (head == sha).then_some(())
        },
    );

    // Ctrl-C (SIGINT here) stops it cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let start = Instant::now();
    let exit = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the quickstart did not stop on SIGINT:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        exit.success(),
        "the quickstart exits cleanly on Ctrl-C ({exit}):\n{}",
        daemon.log()
    );
}

#[test]
fn a_test_push_that_cannot_be_sent_adds_no_commit() {
    if !prereq::require(
        "git",
        prereq::have_program("git"),
        "the demo repository uses git",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("quickstart");
    // Nothing listens on this port: the quickstart is prepared but not running.
    let config = quickstart_support::prepare_quickstart(&dir, free_port());
    let repo = dir.join("demo.git");
    let head = || {
        git_out(&[
            "--git-dir",
            repo.to_str().unwrap(),
            "rev-parse",
            "refs/heads/main",
        ])
    };
    let before = head().unwrap();
    let out = quickstart_support::cli(&config, &["send-test-push", "demo", "--new-commit"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is the deployer running?") && err.contains("no commit added"),
        "{err}"
    );
    assert_eq!(
        head().unwrap(),
        before,
        "a commit was added for a push never sent"
    );
}
