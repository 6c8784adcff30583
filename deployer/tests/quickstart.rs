//! End to end, as a newcomer would: `quickstart` prepares a demo and serves it, `send-test-push
//! --new-commit` adds a commit and sends a signed push, and the demo deployment's working tree
//! reaches that commit with its build output — twice, so the second push is a new deploy.
//! Real daemon, real git, SQLite and local locks; no root, no helper.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::prereq;

const EXE: &str = env!("CARGO_BIN_EXE_durhack-deployer");
/// Generous: a first deploy may clone and build on a loaded machine. Not a timing assertion,
/// only a bound on how long a broken pipeline can hang the test.
const DEADLINE: Duration = Duration::from_secs(300);

/// The daemon, killed if the test panics before stopping it.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some`, the daemon dies, or the deadline passes.
fn wait_for<T>(daemon: &mut Daemon, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!(
                "the quickstart exited ({status}) while waiting for {what}:\n{}",
                daemon.log()
            );
        }
        if start.elapsed() > DEADLINE {
            panic!(
                "gave up waiting for {what} after {DEADLINE:?}:\n{}",
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn git_out(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

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
    let log_file = std::fs::File::create(&log).unwrap();
    let child = Command::new(EXE)
        .arg("quickstart")
        .arg("--dir")
        .arg(&dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut daemon = Daemon { child, log };

    wait_for(&mut daemon, "the webhook endpoint to listen", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let config = dir.join("config.toml");
    assert!(
        daemon.log().contains("send-test-push"),
        "the quickstart says how to send a push:\n{}",
        daemon.log()
    );

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
