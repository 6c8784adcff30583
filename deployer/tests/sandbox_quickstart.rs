//! The quickstart on a machine where the build sandbox cannot run (here: bubblewrap not on
//! `PATH`): it still starts, writes `sandbox = false` for the demo, and says why in its banner;
//! `check` says the sandbox is unavailable and warns about the unsandboxed deployment.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::prereq;

const EXE: &str = env!("CARGO_BIN_EXE_durhack-deployer");

/// A `PATH` with git and a shell but no bwrap.
fn path_without_bwrap(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for program in ["git", "sh", "cat", "echo", "mkdir", "date"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|p| p.join(program))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{program} on PATH"));
        std::os::unix::fs::symlink(found, dir.join(program)).unwrap();
    }
    dir.display().to_string()
}

#[test]
fn without_bubblewrap_the_quickstart_runs_its_demo_unsandboxed_and_says_why() {
    if !prereq::require("git", prereq::have_program("git"), "the demo uses git") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = path_without_bwrap(&tmp.path().join("bin"));
    let dir = tmp.path().join("quickstart");
    let log = tmp.path().join("quickstart.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(EXE)
        .arg("quickstart")
        .arg("--dir")
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("PATH", &path)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let banner = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("worker started") {
            break text;
        }
        if start.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the quickstart did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        banner
            .contains("sandbox      OFF for the demo (sandbox = false): `bwrap` is not installed"),
        "{banner}"
    );
    assert!(
        banner.contains("sandbox = false: its commands run unsandboxed"),
        "the daemon warns at start-up:\n{banner}"
    );
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("\nsandbox = false\n"), "{config}");

    let check = Command::new(EXE)
        .arg("check")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", &path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(
        out.contains("build sandbox: UNAVAILABLE: `bwrap` is not installed"),
        "{out}"
    );
    assert!(out.contains("warning: demo: sandbox = false"), "{out}");
}
