//! The first hour on a server (issue 13), with the real binary on a quickstart directory: read-only
//! commands create nothing, commands run as root leave nothing the service user cannot write, a
//! read-only ledger makes `GET /` 503, Ctrl-C twice leaves no build behind, and each error is said
//! once with the way out.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;
use testkit::prereq;

mod quickstart_support;
use quickstart_support::{
    Daemon, EXE, cli, free_port, get_root, git_out, prepare_quickstart, stderr, stdout, wait_for,
};

const NO_LEDGER: &str = "no ledger yet at ";

fn have_git() -> bool {
    prereq::require(
        "git",
        prereq::have_program("git"),
        "the demo repository is written with git",
    )
}

/// Every file under `dir`, `dir` included.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    if dir.is_dir() && !dir.is_symlink() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn nobody() -> nix::unistd::User {
    nix::unistd::User::from_name("nobody").unwrap().unwrap()
}

fn chown_r(path: &Path, user: &nix::unistd::User) {
    for p in walk(path) {
        std::os::unix::fs::lchown(&p, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    }
}

/// A command of the binary run as `user` (HOME in `home`, which git wants).
fn as_user(user: &nix::unistd::User, home: &Path, args: &[&str], config: &Path) -> Command {
    let mut cmd = Command::new(EXE);
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env("HOME", home)
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw());
    cmd
}

/// A quickstart directory owned by `nobody`, in a temporary directory the user can reach.
fn nobody_quickstart(tmp: &Path, port: u16) -> PathBuf {
    std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = tmp.join("qs");
    let config = prepare_quickstart(&dir, port);
    chown_r(&dir, &nobody());
    config
}

fn root_with_nobody() -> bool {
    prereq::require(
        "root and the user nobody",
        prereq::is_root() && prereq::user_exists("nobody"),
        "runs commands as root against a state directory owned by another user",
    ) && have_git()
}

/// `sudo durhack-deployer serve` becomes the owner of `state_dir` after reading the secret as
/// root. The owner must not then be able to read that secret out of the process, even where
/// the kernel would leave a process that changed its uid dumpable (`fs.suid_dumpable = 1`).
#[test]
fn a_daemon_started_as_root_cannot_be_read_by_the_owner_it_becomes() {
    if !root_with_nobody() {
        return;
    }
    const SYSCTL: &str = "/proc/sys/fs/suid_dumpable";
    let Ok(before) = std::fs::read_to_string(SYSCTL) else {
        panic!("cannot read {SYSCTL}");
    };
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(SYSCTL, self.0.trim());
        }
    }
    let _restore = Restore(before);
    std::fs::write(SYSCTL, "1")
        .expect("set fs.suid_dumpable (needs root outside a read-only /proc/sys)");

    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = nobody_quickstart(tmp.path(), port);
    let mut serve = Command::new(EXE);
    serve.arg("serve").arg("--config").arg(&config);
    let daemon = serve_until_ready(serve, port, &tmp.path().join("daemon.log"));
    let pid = daemon.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nobody_uid = nobody().uid.as_raw().to_string();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&nobody_uid)),
        "the daemon runs as the owner of state_dir:\n{status}"
    );
    let read = Command::new("cat")
        .arg(format!("/proc/{pid}/environ"))
        .uid(nobody().uid.as_raw())
        .gid(nobody().gid.as_raw())
        .output()
        .unwrap();
    assert!(
        !read.status.success(),
        "the owner read the daemon's environment: {}",
        String::from_utf8_lossy(&read.stdout)
    );
}

#[test]
fn read_only_commands_create_nothing_and_say_no_ledger_once() {
    if !have_git() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = prepare_quickstart(&tmp.path().join("qs"), free_port());
    let state = tmp.path().join("qs/state");
    for args in [
        &["status"][..],
        &["history"],
        &["logs", "demo"],
        &["runs", "demo"],
    ] {
        let out = cli(&config, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(
            err.matches(NO_LEDGER).count(),
            1,
            "{args:?} says it once: {err}"
        );
        assert!(
            err.contains("the service creates it on first start"),
            "{err}"
        );
        assert!(!err.contains("no such table"), "{err}");
    }
    let created: Vec<PathBuf> = walk(&state).into_iter().skip(1).collect();
    assert!(created.is_empty(), "read-only commands created {created:?}");
}

#[test]
fn commands_run_as_root_act_as_the_owner_of_state_dir_and_the_service_then_deploys() {
    if !root_with_nobody() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = nobody_quickstart(tmp.path(), port);
    let dir = tmp.path().join("qs");
    let state = dir.join("state");

    // `sudo durhack-deployer status` before the first start, as install.md suggests.
    let out = cli(&config, &["status"]);
    assert!(stderr(&out).contains(NO_LEDGER), "{}", stderr(&out));
    assert_eq!(walk(&state).len(), 1, "status created nothing");
    // `sudo durhack-deployer migrate` creates the ledger, as the owner of state_dir.
    let out = cli(&config, &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let uid = nobody().uid.as_raw();
    for p in walk(&state) {
        let owner = std::fs::symlink_metadata(&p).unwrap().uid();
        assert_eq!(owner, uid, "{} is owned by uid {owner}", p.display());
    }

    // The service, as its own user, can write that ledger: a push is deployed.
    let mut daemon = serve_until_ready(
        as_user(&nobody(), tmp.path(), &["serve"], &config),
        port,
        &tmp.path().join("daemon.log"),
    );
    let out = as_user(
        &nobody(),
        tmp.path(),
        &["send-test-push", "demo", "--new-commit"],
        &config,
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let repo = dir.join("demo.git");
    let head = git_out(&[
        "--git-dir",
        repo.to_str().unwrap(),
        "rev-parse",
        "refs/heads/main",
    ])
    .unwrap();
    wait_for(&mut daemon, "the push to be deployed", || {
        let out = cli(&config, &["status", "--json"]);
        let statuses: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (statuses[0]["deployed_sha"] == head.as_str()).then_some(())
    });
    // Nothing root-owned was left behind, by the commands above or by status run as root
    // while the daemon ran.
    for p in walk(&state) {
        let owner = std::fs::symlink_metadata(&p).unwrap().uid();
        assert_ne!(owner, 0, "{} is root's", p.display());
    }
}

#[test]
fn a_ledger_the_service_cannot_write_makes_get_root_answer_503() {
    if !root_with_nobody() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = nobody_quickstart(tmp.path(), port);
    let state = tmp.path().join("qs/state");
    let log = tmp.path().join("daemon.log");
    let mut daemon = serve_until_ready(
        as_user(&nobody(), tmp.path(), &["serve"], &config),
        port,
        &log,
    );
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait_exit("the daemon to stop").success());
    drop(daemon);

    // What a `sudo …` before the first start used to leave: a root-owned, read-only ledger.
    for name in ["ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"] {
        let file = state.join(name);
        if file.exists() {
            std::os::unix::fs::lchown(&file, Some(0), Some(0)).unwrap();
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }
    }
    let mut daemon = Daemon::spawn(as_user(&nobody(), tmp.path(), &["serve"], &config), &log);
    let (_, body) = wait_for(&mut daemon, "GET / to answer 503 naming the ledger", || {
        get_root(port).filter(|(code, body)| *code == 503 && body.contains("read-only"))
    });
    assert!(body.contains("\"ledger\""), "{body}");
    assert!(
        daemon.log().contains("the ledger is read-only"),
        "a clear log line:\n{}",
        daemon.log()
    );
}

/// Every process whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) {
            found.push(format!("{}: {cmdline}", e.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn ctrl_c_twice_during_a_slow_build_exits_130_leaving_no_build_and_status_says_interrupted() {
    if !have_git() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = prepare_quickstart(&tmp.path().join("qs"), port);
    // A slow build that starts a background child, both recognisable by their command line.
    let marker = format!("9{port}7");
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("commands = [").unwrap();
    let end = start + text[start..].find("\n]\n").unwrap() + 3;
    let slow =
        format!("commands = [[\"sh\", \"-c\", \"sleep {marker} & sleep {marker}; wait\"]]\n");
    // No reconciliation: at start-up it would queue the same head as the test push, and the
    // newest row after the restart would be that entry's `superseded`, not the running build.
    std::fs::write(
        &config,
        format!(
            "reconcile_interval = \"0\"\n{}{slow}{}",
            &text[..start],
            &text[end..]
        ),
    )
    .unwrap();

    let mut serve = Command::new(EXE);
    serve.arg("serve").arg("--config").arg(&config);
    let mut daemon = serve_until_ready(serve, port, &tmp.path().join("daemon.log"));
    let out = cli(&config, &["send-test-push", "demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(&mut daemon, "the slow build to start", || {
        (processes_with(&marker).len() >= 2).then_some(())
    });

    daemon.signal(Signal::SIGINT);
    wait_for(
        &mut daemon,
        "the first Ctrl-C to say what it waits for",
        || {
            daemon_log_has(
                &tmp.path().join("daemon.log"),
                "waiting up to 30 s for deploy demo; Ctrl-C again to stop now",
            )
        },
    );
    daemon.signal(Signal::SIGINT);
    let status = daemon.wait_exit("the second Ctrl-C to stop the daemon");
    assert_eq!(status.code(), Some(130), "{}", daemon.log());
    let left = processes_with(&marker);
    assert!(left.is_empty(), "the build outlived the daemon: {left:?}");

    let out = cli(&config, &["status", "--json"]);
    let statuses: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        statuses[0]["last_run"]["status"], "interrupted",
        "{statuses}"
    );
    let out = cli(&config, &["runs", "demo", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["status"], "interrupted", "{runs}");
    let out = cli(&config, &["runs", "demo"]);
    assert!(stdout(&out).contains("interrupted"), "{}", stdout(&out));

    // A restart closes the interrupted run as cancelled and redoes its push: one build at a
    // time in the tree.
    let interrupted = runs[0]["id"].as_str().unwrap().to_owned();
    let mut serve = Command::new(EXE);
    serve.arg("serve").arg("--config").arg(&config);
    let mut daemon = Daemon::spawn(serve, &tmp.path().join("daemon2.log"));
    wait_for(
        &mut daemon,
        "the push to be redone after the restart",
        || {
            let out = cli(&config, &["runs", "demo", "--json"]);
            let runs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let old = runs
                .as_array()?
                .iter()
                .find(|r| r["id"] == interrupted.as_str())?;
            (old["status"] == "cancelled" && runs[0]["status"] == "running").then_some(())
        },
    );
    wait_for(&mut daemon, "the redone build to start", || {
        (processes_with(&marker).len() >= 2).then_some(())
    });
    let builds = processes_with(&marker)
        .iter()
        // The shell itself (its sandbox's two bwrap processes carry the same command line).
        .filter(|p| {
            p.split_once(": ")
                .is_some_and(|(_, c)| c.starts_with("sh -c"))
        })
        .count();
    assert_eq!(
        builds,
        1,
        "one build in the tree: {:?}",
        processes_with(&marker)
    );
    assert_eq!(
        ctrl_c_twice(&mut daemon, &tmp.path().join("daemon2.log")),
        Some(130)
    );
    assert!(processes_with(&marker).is_empty());
}

/// Starts `serve` (a `serve` command) and waits until `GET /` answers 200 on `port`.
fn serve_until_ready(serve: Command, port: u16, log: &Path) -> Daemon {
    let mut daemon = Daemon::spawn(serve, log);
    wait_for(&mut daemon, "GET / to answer ok", || {
        get_root(port).filter(|(code, _)| *code == 200)
    });
    daemon
}

/// SIGINT, then once the daemon has said "Ctrl-C again" in `log`, SIGINT again; its exit code.
fn ctrl_c_twice(daemon: &mut Daemon, log: &Path) -> Option<i32> {
    daemon.signal(Signal::SIGINT);
    wait_for(daemon, "the first Ctrl-C to be logged", || {
        daemon_log_has(log, "Ctrl-C again")
    });
    daemon.signal(Signal::SIGINT);
    daemon
        .wait_exit("the second Ctrl-C to stop the daemon")
        .code()
}

fn daemon_log_has(log: &Path, text: &str) -> Option<()> {
    std::fs::read_to_string(log)
        .ok()?
        .contains(text)
        .then_some(())
}

#[test]
fn errors_are_said_once_with_the_way_out() {
    if !have_git() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = prepare_quickstart(&tmp.path().join("qs"), free_port());

    // No configuration: the path once, and what to do.
    let missing = tmp.path().join("nowhere/config.toml");
    let out = cli(&missing, &["status"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.matches(missing.to_str().unwrap()).count(), 1, "{err}");
    assert_eq!(err.matches("os error").count(), 0, "{err}");
    assert!(
        err.contains("--config PATH") && err.contains("quickstart"),
        "{err}"
    );

    // A file that does not parse is named once.
    let typo = tmp.path().join("typo1.toml");
    std::fs::write(&typo, "listen = \n").unwrap();
    let out = cli(&typo, &["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.matches("typo1.toml").count(), 1, "{err}");

    // A command written as a string.
    let text = std::fs::read_to_string(&config).unwrap();
    let bare = tmp.path().join("bare.toml");
    std::fs::write(
        &bare,
        text.replace("commands = [", "commands = [\"npm ci\","),
    )
    .unwrap();
    let out = cli(&bare, &["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(
            "deployments.demo.commands[0]: a command is a list of arguments like [\"npm\", \"ci\"]"
        ) && err.contains("not a string"),
        "{err}"
    );
    assert!(!err.contains("untagged enum"), "{err}");

    // No deployments at all.
    let empty = tmp.path().join("empty.toml");
    let head = &text[..text.find("[deployments.demo]").unwrap()];
    std::fs::write(&empty, head).unwrap();
    let out = cli(&empty, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no deployments"), "{}", stderr(&out));

    // A misspelt deployment: the names there are.
    for args in [
        &["deploy", "dmeo"][..],
        &["logs", "dmeo"],
        &["runs", "dmeo"],
    ] {
        let out = cli(&config, args);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("no deployment named dmeo; known: demo"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn deploy_accepts_a_short_commit_id_that_names_one_commit() {
    if !have_git() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let config = prepare_quickstart(&dir, free_port());
    let repo = dir.join("demo.git");
    let head = git_out(&[
        "--git-dir",
        repo.to_str().unwrap(),
        "rev-parse",
        "refs/heads/main",
    ])
    .unwrap();

    // Before the first deploy there is no checkout to resolve it in.
    let out = cli(&config, &["deploy", "demo", "--sha", &head[..7]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no checkout yet"),
        "{}",
        stderr(&out)
    );

    let app = dir.join("app");
    git_out(&[
        "clone",
        "--quiet",
        repo.to_str().unwrap(),
        app.to_str().unwrap(),
    ])
    .unwrap();
    let out = cli(&config, &["deploy", "demo", "--sha", &head[..7]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("queued {head} for demo")),
        "{}",
        stdout(&out)
    );

    let out = cli(&config, &["deploy", "demo", "--sha", "0000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("names no single commit"),
        "{}",
        stderr(&out)
    );
    let out = cli(&config, &["deploy", "demo", "--sha", "12345"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("7 to 40"), "{}", stderr(&out));
}

/// The second Ctrl-C during the run's git clone (a slow remote): the clone, in a process group of
/// its own like every command, must not outlive the daemon to race the next start in the tree.
#[test]
fn ctrl_c_twice_during_a_slow_checkout_leaves_no_git_running() {
    if !have_git() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = prepare_quickstart(&tmp.path().join("qs"), port);
    // The checkout never ends: the daemon's git runs a post-checkout hook `sleep <marker>`.
    let marker = format!("8{port}3");
    let hooks = tmp.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = hooks.join("post-checkout");
    std::fs::write(&hook, format!("#!/bin/sh\nexec sleep {marker}\n")).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("reconcile_interval = \"0\"\n{text}")).unwrap();

    let mut serve = Command::new(EXE);
    serve
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "core.hooksPath")
        .env("GIT_CONFIG_VALUE_0", &hooks);
    let mut daemon = serve_until_ready(serve, port, &tmp.path().join("daemon.log"));
    let out = cli(&config, &["send-test-push", "demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(&mut daemon, "the slow checkout to start", || {
        (!processes_with(&format!("sleep {marker}")).is_empty()).then_some(())
    });
    assert_eq!(
        ctrl_c_twice(&mut daemon, &tmp.path().join("daemon.log")),
        Some(130)
    );
    let left = processes_with(&marker);
    for p in &left {
        // Clean up what the daemon left, before failing.
        if let Some(pid) = p.split(':').next().and_then(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    assert!(left.is_empty(), "git outlived the daemon: {left:?}");
}
