//! The build sandbox against a hostile build (issue 12): the real daemon binary, run as an
//! unprivileged user, deploys real git repositories; deployment `a`'s build is a shell script
//! committed to its repository that tries, one attempt at a time, to reach the deploy machinery
//! (the helper socket, the queues, the ledger, the locks, the config, secret and token files, the
//! daemon's environment and process, another deployment's tree, anything outside its own tree and
//! home) and writes one result line per attempt into its tree. Every attempt must fail, each
//! checked on its own, and the host is checked too (no connection reached the helper socket, no
//! file appeared, the daemon lives). The same build's legitimate steps (git, writing its tree and
//! home, node, an allowed socket) must work, and its environment holds only what it should:
//! never the webhook secret (given by file and by environment) nor the GitHub token.
//!
//! The same hostile script, with `sandbox = false`, gets through every attempt the sandbox stops:
//! the control showing that each attempt is real (and so that this test can fail).
//!
//! Needs root (to create and switch to the unprivileged user), bwrap, python3 and git; fails under
//! `CI=true` when they are missing, skips loudly otherwise.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testkit::git::Remote;
use testkit::prereq;

const EXE: &str = env!("CARGO_BIN_EXE_durhack-deployer");
const USER: &str = "dd-sandbox-test";
const FILE_SECRET: &str = "file-secret-5f1c0a7e9b2d4c6e8a0b1c2d3e4f5a6b";
const ENV_SECRET: &str = "env-secret-9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const TOKEN: &str = "ghp_token0123456789abcdefghijklmnopqrstuv";
const B_DOTENV: &str = "DATABASE_PASSWORD=b-private-4242";
/// What the daemon passes on through `pass_env`, and what it must not.
const PASSED: (&str, &str) = ("SBX_PASSED", "passed-through-value");
const NOT_PASSED: (&str, &str) = ("SBX_NOT_PASSED", "daemon-only-value");

/// Every attempt the hostile script makes; without the sandbox, each one gets through.
const ATTEMPTS: &[&str] = &[
    "helper-socket-connect",
    "queues-list",
    "queue-entry-read",
    "queue-write",
    "ledger-read",
    "ledger-open-for-write",
    "locks-list",
    "locks-write",
    "logs-list",
    "process-groups-list",
    "config-read",
    "secret-read",
    "secret-dir-list",
    "token-read",
    "daemon-environ-read",
    "daemon-found-in-proc",
    "daemon-signal",
    "daemon-ptrace",
    "other-tree-read",
    "other-tree-write",
    "outside-dir-write",
    "parent-dir-write",
    "var-tmp-write",
    "git-hook-write",
    "git-config-write",
];

fn prerequisites() -> bool {
    prereq::require(
        "root",
        prereq::is_root(),
        "the test runs the daemon as an unprivileged user it creates",
    ) && prereq::require(
        "bwrap, python3, git and useradd",
        ["bwrap", "python3", "git"]
            .iter()
            .all(|p| prereq::have_program(p))
            && (prereq::have_program("useradd") || prereq::have_program("/usr/sbin/useradd")),
        "apt-get install bubblewrap python3 git passwd",
    )
}

fn id(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, USER]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The test's unprivileged user (created once; kept, like any system user).
fn user() -> (u32, u32) {
    if !prereq::user_exists(USER) {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .status()
            .unwrap();
        assert!(
            status.success() || prereq::user_exists(USER),
            "useradd {USER}"
        );
    }
    (id("-u"), id("-g"))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let status = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

fn mkdir_owned(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::fs::create_dir_all(path).unwrap();
    chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A listening Unix socket that counts the connections it accepts.
struct Listener {
    accepted: Arc<AtomicUsize>,
}

impl Listener {
    fn new(path: &Path) -> Self {
        let listener = UnixListener::bind(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if conn.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self { accepted }
    }
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The hostile build: one line per attempt, `NAME ESCAPED` or `NAME blocked`, then the
/// legitimate steps, then `DONE`. Paths are filled in by the test.
fn hostile_script(paths: &BTreeMap<&str, String>) -> String {
    let mut vars = String::new();
    for (k, v) in paths {
        vars.push_str(&format!("{k}='{v}'\n"));
    }
    vars + r##"
out=results.txt
: > "$out"
try() {
    name=$1; shift
    if "$@" >/dev/null 2>&1; then echo "$name ESCAPED" >> "$out"; else echo "$name blocked" >> "$out"; fi
}
py() { python3 -c "$@"; }
DPID=$(cat "$HOME/daemon.pid" 2>/dev/null || echo 0)

try helper-socket-connect py 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$HELPER"
try queues-list sh -c 'ls "$1" | grep -q deploy-a' - "$STATE/queues"
try queue-entry-read sh -c 'cat "$1"/deploy-a/* | grep -q sha' - "$STATE/queues"
try queue-write sh -c 'echo "{\"source\": \"cli\"}" > "$1/deploy-b/.hostile-entry"' - "$STATE/queues"
try ledger-read sh -c 'head -c 15 "$1" | grep -q "SQLite format"' - "$STATE/ledger.sqlite3"
try ledger-open-for-write py 'import sys; open(sys.argv[1], "r+b").close()' "$STATE/ledger.sqlite3"
try locks-list sh -c 'test -n "$(ls -A "$1")"' - "$STATE/locks"
try locks-write touch "$STATE/locks/.hostile-lock"
try logs-list sh -c 'ls "$1" | grep -q .' - "$STATE/logs/b"
try process-groups-list sh -c 'ls "$1" | grep -q pgid' - "$STATE/process-groups"
try config-read grep -q webhook_secret_file "$CONFIG"
try secret-read grep -q "$SECRET_PREFIX" "$SECRET_FILE"
try secret-dir-list sh -c 'ls "$1" | grep -q token' - "$SECRET_DIR"
try token-read grep -q ghp_ "$TOKEN_FILE"
try daemon-environ-read sh -c 'tr "\0" "\n" < /proc/$1/environ | grep -q DURHACK_DEPLOYER_WEBHOOK_SECRET' - "$DPID"
try daemon-found-in-proc sh -c 'for p in /proc/[0-9]*; do if tr "\0" " " < $p/cmdline 2>/dev/null | grep -q "durhack-deploye[r] serve"; then exit 0; fi; done; exit 1'
try daemon-signal kill -0 "$DPID"
try daemon-ptrace py 'import ctypes,sys; libc=ctypes.CDLL(None, use_errno=True); sys.exit(0 if libc.ptrace(0x4206, int(sys.argv[1]), 0, 0) == 0 else 1)' "$DPID"
try other-tree-read grep -q DATABASE_PASSWORD "$OTHER_TREE/.env"
try other-tree-write sh -c 'echo hostile > "$1/hostile.txt"' - "$OTHER_TREE"
try outside-dir-write sh -c 'echo hostile > "$1/hostile.txt"' - "$OUTSIDE"
try parent-dir-write sh -c 'echo hostile > ../hostile-parent.txt'
try var-tmp-write sh -c 'echo hostile > "$1"' - "$VAR_TMP_FILE"
# The daemon runs git in the tree, unsandboxed: a hook or config entry would run outside.
try git-hook-write sh -c 'printf "#!/bin/sh\necho hostile > ../hostile-hook.txt\n" > .git/hooks/post-checkout && chmod +x .git/hooks/post-checkout'
try git-config-write git config core.fsmonitor "echo hostile > ../hostile-fsmonitor.txt"
# /tmp is the sandbox's own: writing it works, and must not reach the host's.
echo hostile > "$TMP_FILE" && echo "tmp-write private-or-host" >> "$out"

# The legitimate steps.
git rev-parse HEAD > git-head.txt
echo built > build-output.txt
echo cached > "$HOME/cache.txt" && echo "home-write ok" >> "$out"
if command -v node >/dev/null; then node -e 'require("fs").writeFileSync("node.txt", "node ran")'; fi
py 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$ALLOWED_SOCKET" && echo "allowed-socket ok" >> "$out"
env > env.txt
# Printed to the run log: what an unsandboxed build could read and show.
cat "$TOKEN_FILE" 2>/dev/null; echo
tr "\0" "\n" < /proc/$DPID/environ 2>/dev/null | grep DURHACK_DEPLOYER_WEBHOOK_SECRET
echo DONE >> "$out"
"##
}

struct Fixture {
    root: tempfile::TempDir,
    /// The commit a's build runs at (the remotes are the daemon user's: root's git refuses them).
    a_head: String,
    _repos: [Remote; 2],
    daemon: Option<Child>,
    helper: Listener,
    allowed: Listener,
    uid: u32,
    gid: u32,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl Fixture {
    fn p(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// The layout, the repositories and the config; `a_body` ends deployment a's table.
    fn new(sandbox: bool, extra_deployments: &str) -> Self {
        let (uid, gid) = user();
        // Not under a name holding "durhack-deployer": the script looks for the daemon by it.
        // Not under /tmp either, which is the sandbox's own.
        let root = tempfile::Builder::new()
            .prefix("sbx-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = root.path().to_path_buf();
        for dir in ["etc", "secrets", "state", "www", "outside", "bin"] {
            mkdir_owned(&r.join(dir), uid, gid, 0o700);
        }
        // The directories the user needs to pass through.
        for dir in ["www", "bin"] {
            std::fs::set_permissions(r.join(dir), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        mkdir_owned(&r.join("helper"), 0, 0, 0o755);
        let helper = Listener::new(&r.join("helper/privhelper.sock"));
        mkdir_owned(&r.join("state/pm2"), uid, gid, 0o700);
        let allowed = Listener::new(&r.join("state/pm2/rpc.sock"));
        chown(r.join("state/pm2/rpc.sock"), Some(uid), Some(gid)).unwrap();
        std::fs::write(r.join("secrets/webhook-secret"), FILE_SECRET).unwrap();
        std::fs::write(r.join("secrets/github-token"), TOKEN).unwrap();
        chown_tree(&r.join("secrets"), uid, gid);
        std::fs::copy(EXE, r.join("bin/durhack-deployer")).unwrap();

        let paths: BTreeMap<&str, String> = [
            ("HELPER", "helper/privhelper.sock"),
            ("STATE", "state"),
            ("CONFIG", "etc/config.toml"),
            ("SECRET_FILE", "secrets/webhook-secret"),
            ("SECRET_DIR", "secrets"),
            ("TOKEN_FILE", "secrets/github-token"),
            ("OTHER_TREE", "www/b"),
            ("OUTSIDE", "outside"),
            ("ALLOWED_SOCKET", "state/pm2/rpc.sock"),
        ]
        .into_iter()
        .map(|(k, rel)| (k, r.join(rel).display().to_string()))
        .chain([
            ("SECRET_PREFIX", "file-secret-".to_owned()),
            ("VAR_TMP_FILE", format!("/var/tmp/{}-escape", file_tag(&r))),
            ("TMP_FILE", format!("/tmp/{}-escape", file_tag(&r))),
        ])
        .collect();

        let repo_a = Remote::new("main");
        repo_a.commit(
            "a hostile build",
            &[("hostile.sh", &hostile_script(&paths)), ("index.html", "a")],
        );
        let a_head = repo_a.push();
        let repo_b = Remote::new("main");
        repo_b.commit("b", &[(".env", B_DOTENV), ("index.html", "b")]);
        repo_b.push();
        for repo in [&repo_a, &repo_b] {
            // The daemon's user reads the remotes (git refuses a repository owned by another).
            let top = repo.bare().parent().unwrap().to_owned();
            std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
            chown_tree(&repo.bare(), uid, gid);
        }

        let d = r.display();
        let config = format!(
            r#"listen = "127.0.0.1:0"
# No reconcile run at start-up beside the test's own `deploy`: its checkout would clean the
# tree (results.txt) under the test.
reconcile_interval = "0"
state_dir = "{d}/state"
helper_socket = "{d}/helper/privhelper.sock"

[github]
webhook_secret_file = "{d}/secrets/webhook-secret"
token_file = "{d}/secrets/github-token"
# Nothing listens there: commit statuses fail (logged) without leaving the machine.
api_url = "http://127.0.0.1:9"

[deployments.a]
repository = "sbx/a"
branch = "main"
remote = "{ra}"
path = "{d}/www/a"
commands = [["sh", "hostile.sh"]]
env = {{ NODE_ENV = "production" }}
pass_env = ["{passed}"]
allow_sockets = ["{d}/state/pm2"]
sandbox = {sandbox}

[deployments.b]
repository = "sbx/b"
branch = "main"
remote = "{rb}"
path = "{d}/www/b"
commands = [["sh", "-c", "env > env.txt"]]
sandbox = {sandbox}
{extra_deployments}
"#,
            ra = repo_a.url(),
            rb = repo_b.url(),
            passed = PASSED.0,
        );
        std::fs::write(r.join("etc/config.toml"), config).unwrap();
        chown_tree(&r.join("etc"), uid, gid);
        Self {
            root,
            a_head,
            _repos: [repo_a, repo_b],
            daemon: None,
            helper,
            allowed,
            uid,
            gid,
        }
    }

    /// A command of the deployer binary, as the unprivileged user, with the daemon's environment.
    fn deployer(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.p("bin/durhack-deployer"));
        c.args(args)
            .arg("--config")
            .arg(self.p("etc/config.toml"))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("DURHACK_DEPLOYER_WEBHOOK_SECRET", ENV_SECRET)
            .env(PASSED.0, PASSED.1)
            .env(NOT_PASSED.0, NOT_PASSED.1)
            .current_dir(self.root.path())
            .uid(self.uid)
            // std drops root's supplementary groups along with the uid.
            .gid(self.gid);
        c
    }

    fn start(&mut self) -> u32 {
        let log = std::fs::File::create(self.p("daemon.log")).unwrap();
        let child = self
            .deployer(&["serve"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.daemon = Some(child);
        wait_for("the workers to start", Duration::from_secs(60), || {
            self.daemon_log().matches("worker started").count() >= 2
        });
        pid
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.p("daemon.log")).unwrap_or_default()
    }

    fn deploy(&self, name: &str) {
        let out = self.deployer(&["deploy", name]).output().unwrap();
        assert!(
            out.status.success(),
            "deploy {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits for deployment `name`'s run to end (success or failure), and returns its run log.
    fn run_log(&self, name: &str) -> String {
        let dir = self.p(&format!("state/logs/{name}"));
        let mut text = String::new();
        wait_for(
            &format!("{name}'s run to end"),
            Duration::from_secs(120),
            || {
                text = std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect();
                text.contains(": success in") || text.contains(": failed: ")
            },
        );
        text
    }

    fn results(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.p("www/a/results.txt"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Runs b, then writes the daemon's pid where a's build can read it (its home), then runs a.
    fn deploy_both(&self, pid: u32) -> BTreeMap<String, String> {
        self.deploy("b");
        let log = self.run_log("b");
        assert!(log.contains(": success in"), "b's run failed:\n{log}");
        let home = self.p("state/homes/a");
        mkdir_owned(&home, self.uid, self.gid, 0o700);
        std::fs::write(home.join("daemon.pid"), pid.to_string()).unwrap();
        self.deploy("a");
        let log = self.run_log("a");
        assert!(
            log.contains(": success in"),
            "a's run failed:\n{log}\ndaemon:\n{}",
            self.daemon_log()
        );
        let results = self.results();
        assert_eq!(results.get("DONE"), None, "DONE is a line of its own");
        assert!(
            std::fs::read_to_string(self.p("www/a/results.txt"))
                .unwrap()
                .ends_with("DONE\n"),
            "the script ran to its end"
        );
        results
    }

    fn env_of(&self, deployment: &str) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.p(&format!("www/{deployment}/env.txt"))).unwrap();
        for secret in [FILE_SECRET, ENV_SECRET, TOKEN, NOT_PASSED.1] {
            assert!(
                !text.contains(secret),
                "{deployment}'s environment holds {secret}:\n{text}"
            );
        }
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            // What the shell itself sets.
            .filter(|(k, _)| !matches!(k.as_str(), "PWD" | "OLDPWD" | "SHLVL" | "_"))
            .collect()
    }
}

/// A repository for the deployment an `extra_deployments` table adds (with `REMOTE_C` and
/// `ROOT` in it, filled in here), readable by the daemon's user.
fn third_repo(f: &Fixture) -> Remote {
    let repo = Remote::new("main");
    repo.commit("c", &[("index.html", "c")]);
    repo.push();
    let top = repo.bare().parent().unwrap().to_owned();
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(&repo.bare(), f.uid, f.gid);
    let config_path = f.p("etc/config.toml");
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("REMOTE_C", &repo.url())
        .replace("ROOT", &f.root.path().display().to_string());
    std::fs::write(&config_path, config).unwrap();
    repo
}

fn file_tag(root: &Path) -> String {
    root.file_name().unwrap().to_string_lossy().into_owned()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn daemon_alive(pid: u32) -> bool {
    let mut stat = String::new();
    std::fs::File::open(format!("/proc/{pid}/stat"))
        .and_then(|mut f| f.read_to_string(&mut stat))
        .is_ok()
        && !stat.contains(") Z ")
}

#[test]
fn a_hostile_build_reaches_nothing_of_the_deploy_machinery() {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(true, "");
    let pid = f.start();
    assert!(
        f.daemon_log().contains("commands run in the sandbox"),
        "the daemon says the sandbox is on:\n{}",
        f.daemon_log()
    );
    let results = f.deploy_both(pid);
    let tag = file_tag(f.root.path());

    // Each attempt, on its own.
    for attempt in ATTEMPTS {
        assert_eq!(
            results.get(*attempt).map(String::as_str),
            Some("blocked"),
            "attempt {attempt}: {results:?}"
        );
    }
    // And on the host.
    assert_eq!(
        f.helper.accepted(),
        0,
        "a connection reached the helper socket"
    );
    assert!(daemon_alive(pid), "the daemon is still running");
    for file in [
        f.p("state/queues/deploy-b/.hostile-entry"),
        f.p("state/locks/.hostile-lock"),
        f.p("www/b/hostile.txt"),
        f.p("outside/hostile.txt"),
        f.p("www/hostile-parent.txt"),
        f.p("www/a/.git/hooks/post-checkout"),
        PathBuf::from(format!("/var/tmp/{tag}-escape")),
        PathBuf::from(format!("/tmp/{tag}-escape")),
    ] {
        assert!(
            !file.exists(),
            "{} was written from the sandbox",
            file.display()
        );
    }

    assert!(
        !std::fs::read_to_string(f.p("www/a/.git/config"))
            .unwrap()
            .contains("fsmonitor"),
        "the tree's git config was changed from the sandbox"
    );

    // The legitimate steps.
    assert_eq!(
        std::fs::read_to_string(f.p("www/a/git-head.txt"))
            .unwrap()
            .trim(),
        f.a_head
    );
    assert_eq!(
        std::fs::read_to_string(f.p("www/a/build-output.txt")).unwrap(),
        "built\n"
    );
    assert_eq!(results.get("home-write").map(String::as_str), Some("ok"));
    assert_eq!(
        std::fs::read_to_string(f.p("state/homes/a/cache.txt")).unwrap(),
        "cached\n"
    );
    if prereq::have_program("node") {
        assert_eq!(
            std::fs::read_to_string(f.p("www/a/node.txt")).unwrap(),
            "node ran"
        );
    }
    assert_eq!(
        results.get("allowed-socket").map(String::as_str),
        Some("ok")
    );
    assert_eq!(f.allowed.accepted(), 1, "the allowed socket was reached");
    assert_eq!(
        std::fs::read_to_string(f.p("www/b/.env")).unwrap(),
        B_DOTENV,
        "b's tree is as b's run left it"
    );

    // The environment: built, not inherited; no secret in it.
    let env = f.env_of("a");
    let names: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "DEPLOY_DELIVERY",
            "DEPLOY_NAME",
            "DEPLOY_REF",
            "DEPLOY_SHA",
            "HOME",
            "LANG",
            "NODE_ENV",
            "PATH",
            PASSED.0,
        ],
        "{env:?}"
    );
    assert_eq!(env["HOME"], f.p("state/homes/a").display().to_string());
    assert_eq!(env[PASSED.0], PASSED.1);
    f.env_of("b");
    // Nor in the run logs, the daemon's log or the ledger's records of the runs.
    let logs = f.run_log("a") + &f.run_log("b") + &f.daemon_log();
    for secret in [FILE_SECRET, ENV_SECRET, TOKEN] {
        assert!(!logs.contains(secret), "a log holds {secret}");
    }
}

/// The control: the same hostile script without the sandbox gets through every attempt, so each
/// `blocked` above is the sandbox's doing. The clean environment holds either way.
#[test]
fn without_the_sandbox_the_same_build_gets_through() {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(false, "");
    let pid = f.start();
    assert!(
        f.daemon_log()
            .contains("sandbox = false: its commands run unsandboxed"),
        "the daemon warns that a deployment is unsandboxed:\n{}",
        f.daemon_log()
    );
    let results = f.deploy_both(pid);
    let tag = file_tag(f.root.path());
    for attempt in ATTEMPTS {
        assert_eq!(
            results.get(*attempt).map(String::as_str),
            Some("ESCAPED"),
            "attempt {attempt} should get through without the sandbox: {results:?}"
        );
    }
    assert!(f.helper.accepted() >= 1);
    assert!(f.p("www/b/hostile.txt").exists());
    for file in [
        format!("/var/tmp/{tag}-escape"),
        format!("/tmp/{tag}-escape"),
    ] {
        assert!(Path::new(&file).exists(), "{file}");
        std::fs::remove_file(&file).unwrap();
    }
    // It could print the token and the secret (from the daemon's environment): the run log
    // masks them.
    let log = f.run_log("a");
    assert!(log.contains("DURHACK_DEPLOYER_WEBHOOK_SECRET=***"), "{log}");
    for secret in [ENV_SECRET, TOKEN] {
        assert!(!log.contains(secret), "the run log holds {secret}:\n{log}");
    }
    let env = f.env_of("a");
    assert!(!env.contains_key(NOT_PASSED.0));
    assert_eq!(env[PASSED.0], PASSED.1);
}

/// A sandboxed command that leaves a sleeper in the background is stopped whole on timeout: the
/// process-group kill of bwrap ends the sandbox's PID namespace.
#[test]
fn a_timeout_kills_everything_inside_the_sandbox() {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(
        true,
        r#"
[deployments.c]
repository = "sbx/c"
branch = "main"
remote = "REMOTE_C"
path = "ROOT/www/c"
commands = [{ argv = ["sh", "-c", "sleep 6061 & echo started > started.txt; sleep 6062"], timeout = "3s" }]
"#,
    );
    let _repo_c = third_repo(&f);
    f.start();
    let sleepers = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.starts_with("sleep 606"))
            .collect()
    };
    f.deploy("c");
    wait_for("c's build to start", Duration::from_secs(60), || {
        f.p("www/c/started.txt").exists()
    });
    // started.txt is written before the second sleeper is exec'd.
    wait_for("both sleepers to run", Duration::from_secs(30), || {
        sleepers().len() == 2
    });
    let log = f.run_log("c");
    assert!(log.contains("`sh` timed out after 3s"), "{log}");
    wait_for(
        "the sandbox's processes to be gone",
        Duration::from_secs(10),
        || sleepers().is_empty(),
    );
}

/// The daemon reads a deployment's site confs from its tree, outside the sandbox: a build that
/// leaves one as a symlink to the webhook secret gets a refusal, not the secret's text in an
/// error (which reaches the ledger and GitHub's commit status).
#[test]
fn a_site_conf_symlinked_out_of_the_tree_is_refused() {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(
        true,
        r#"
[deployments.c]
repository = "sbx/c"
branch = "main"
remote = "REMOTE_C"
path = "ROOT/www/c"
commands = [["ln", "-sf", "ROOT/secrets/webhook-secret", "site.conf"]]
sites = { demo = "site.conf" }
"#,
    );
    let _repo_c = third_repo(&f);
    f.start();
    f.deploy("c");
    let log = f.run_log("c");
    assert!(
        log.contains("site demo: site.conf leads out of the working tree"),
        "{log}"
    );
    assert!(!log.contains(FILE_SECRET), "{log}");
    let history = f.deployer(&["history"]).output().unwrap();
    let status = f.deployer(&["status"]).output().unwrap();
    for out in [&history.stdout, &status.stdout] {
        assert!(!String::from_utf8_lossy(out).contains(FILE_SECRET));
    }
    assert_eq!(f.helper.accepted(), 0, "nothing was sent to the helper");
}

/// Deployment `c` in the releases layout, sandboxed, building with the committed `build.sh`
/// (`ROOT` in it and in the config is the fixture's root); `conf/sub` is a shared entry.
const RELEASES_C: &str = r#"
[deployments.c]
repository = "sbx/c"
branch = "main"
remote = "REMOTE_C"
path = "ROOT/www/c"
layout = "releases"
shared = ["conf/sub"]
commands = [["sh", "build.sh"]]
"#;

/// The releases layout's build: one line per attempt into its release's `results.txt`.
const RELEASES_BUILD: &str = r##"
D='ROOT/www/c'
OUT='ROOT/outside'
out=results.txt
: > "$out"
try() {
    name=$1; shift
    if "$@" >/dev/null 2>&1; then echo "$name ESCAPED" >> "$out"; else echo "$name blocked" >> "$out"; fi
}
me=$(basename "$PWD")
for r in "$D"/releases/*; do
    case "$r" in *.complete) continue ;; esac
    [ "$(basename "$r")" = "$me" ] && continue
    try other-release-write touch "$r/hostile"
    try other-release-dotgit-write sh -c 'echo "gitdir: /tmp" > "$1/.git"' - "$r"
    try other-marker-write sh -c 'echo x >> "$1.complete"' - "$r"
done
try own-marker-write sh -c 'echo "{\"run\":\"$1\",\"sha\":\"x\",\"seq\":99}" > "../$1.complete"' - "$me"
try current-write ln -sfn "$OUT" "$D/current"
try path-write touch "$D/hostile"
try releases-dir-write touch "$D/releases/hostile"
try repo-write touch "$D/repo/hostile"
try repo-config-write git -C "$D/repo" config core.fsmonitor "touch $OUT/fsmonitor"
try repo-hook-write sh -c 'echo "#!/bin/sh" > "$1/.git/hooks/post-checkout"' - "$D/repo"
try worktree-gitdir-write sh -c 'g=$(sed "s/^gitdir: //" .git); echo "[core]" > "$g/config.worktree"'
try dotgit-file-write sh -c 'echo "gitdir: /tmp" > .git'
try outside-write touch "$OUT/hostile"
echo "$me" > "$D/shared/ran-$me" && echo "shared-write ok" >> "$out"
echo "$me" > "$HOME/ran-$me" && echo "home-write ok" >> "$out"
if [ -e plant ]; then
    rm -rf "$D/shared/conf" && ln -s "$OUT" "$D/shared/conf" && echo "planted ok" >> "$out"
fi
echo DONE >> "$out"
"##;

/// A repository for deployment `c` with `files` (`ROOT` filled in), readable by the daemon's user;
/// the config's `REMOTE_C` and `ROOT` filled in.
fn releases_repo(f: &Fixture, files: &[(&str, &str)]) -> Remote {
    let root = f.root.path().display().to_string();
    let files: Vec<(&str, String)> = files
        .iter()
        .map(|(p, c)| (*p, c.replace("ROOT", &root)))
        .collect();
    let repo = Remote::new("main");
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    repo.commit("c", &refs);
    repo.push();
    let top = repo.bare().parent().unwrap().to_owned();
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(&repo.bare(), f.uid, f.gid);
    let config_path = f.p("etc/config.toml");
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("REMOTE_C", &repo.url())
        .replace("ROOT", &root);
    std::fs::write(&config_path, config).unwrap();
    repo
}

impl Fixture {
    /// Deploys `name` and waits for its `n`th run to end; returns its run logs.
    fn deploy_nth(&self, name: &str, n: usize) -> String {
        self.deploy(name);
        let dir = self.p(&format!("state/logs/{name}"));
        let mut text = String::new();
        wait_for(
            &format!("{name}'s run {n} to end"),
            Duration::from_secs(120),
            || {
                text = std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect();
                text.matches(": success in").count() + text.matches(": failed: ").count() >= n
            },
        );
        text
    }

    fn release_results(&self, release: &Path) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(release.join("results.txt")).unwrap();
        assert!(
            text.ends_with("DONE\n"),
            "the build ran to its end:\n{text}"
        );
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Push a new commit to `repo` (so that `c` builds a new release) owned by the daemon's user.
    fn push_again(&self, repo: &Remote, files: &[(&str, &str)]) {
        chown_tree(&repo.bare(), 0, 0);
        repo.commit("again", files);
        repo.push();
        chown_tree(&repo.bare(), self.uid, self.gid);
    }
}

/// The releases layout under the sandbox: a build writes its own release, `path/shared` and its
/// home, and nothing else of the layout: not the other releases (nor their `.git` files), not the
/// completion markers (its own included), not `current`, not `path/repo` (its config, hooks, the
/// worktree's git dir). Checked over two runs, so that the second build has a release to attack.
#[test]
fn a_sandboxed_release_build_writes_only_its_release_shared_and_home() {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(true, RELEASES_C);
    let repo = releases_repo(&f, &[("build.sh", RELEASES_BUILD), ("conf/sub", "x")]);
    f.start();
    let log = f.deploy_nth("c", 1);
    assert!(log.contains(": success in"), "{log}\n{}", f.daemon_log());
    let first = std::fs::canonicalize(f.p("www/c/current")).unwrap();
    let first_marker = std::fs::read_to_string(first.with_extension("complete")).unwrap();
    f.push_again(&repo, &[("index.html", "2")]);
    let log = f.deploy_nth("c", 2);
    assert_eq!(log.matches(": success in").count(), 2, "{log}");
    let second = std::fs::canonicalize(f.p("www/c/current")).unwrap();
    assert_ne!(first, second, "the second run made a release of its own");

    let results = f.release_results(&second);
    for attempt in [
        "other-release-write",
        "other-release-dotgit-write",
        "other-marker-write",
        "own-marker-write",
        "current-write",
        "path-write",
        "releases-dir-write",
        "repo-write",
        "repo-config-write",
        "repo-hook-write",
        "worktree-gitdir-write",
        "dotgit-file-write",
        "outside-write",
    ] {
        assert_eq!(
            results.get(attempt).map(String::as_str),
            Some("blocked"),
            "attempt {attempt}: {results:?}"
        );
    }
    for ok in ["shared-write", "home-write"] {
        assert_eq!(
            results.get(ok).map(String::as_str),
            Some("ok"),
            "{results:?}"
        );
    }
    // And on the host.
    assert_eq!(
        std::fs::read_to_string(first.with_extension("complete")).unwrap(),
        first_marker
    );
    assert!(!first.join("hostile").exists());
    assert!(!f.p("www/c/hostile").exists());
    assert!(!f.p("www/c/releases/hostile").exists());
    assert!(!f.p("www/c/repo/hostile").exists());
    assert!(!f.p("outside/hostile").exists());
    assert!(
        !std::fs::read_to_string(f.p("www/c/repo/.git/config"))
            .unwrap()
            .contains("fsmonitor")
    );
    for release in [&first, &second] {
        let dotgit = std::fs::read_to_string(release.join(".git")).unwrap();
        assert!(dotgit.contains("www/c/repo/.git/worktrees/"), "{dotgit}");
    }
}

/// `path/shared` is the build's to write, but the daemon links shared entries into the next
/// release, unsandboxed: a directory of `shared` that a build replaced with a symlink must not
/// lead the daemon's moves and mkdirs (`link_shared`) out of `shared`.
#[test]
fn a_symlink_planted_in_shared_does_not_lead_the_daemon_outside() {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(true, RELEASES_C);
    let repo = releases_repo(
        &f,
        &[
            ("build.sh", RELEASES_BUILD),
            ("conf/sub", "[core]\n\tfsmonitor = touch ROOT/outside/ran\n"),
            ("plant", ""),
        ],
    );
    f.start();
    let log = f.deploy_nth("c", 1);
    assert!(log.contains(": success in"), "{log}\n{}", f.daemon_log());
    let first = std::fs::canonicalize(f.p("www/c/current")).unwrap();
    assert_eq!(
        f.release_results(&first).get("planted").map(String::as_str),
        Some("ok"),
        "shared is writable, so the symlink is planted"
    );
    assert!(
        std::fs::symlink_metadata(f.p("www/c/shared/conf"))
            .unwrap()
            .is_symlink()
    );
    // The next release's conf/sub (attacker-written, committed) is due to move into shared.
    f.push_again(&repo, &[("index.html", "2")]);
    let log = f.deploy_nth("c", 2);
    let outside: Vec<_> = std::fs::read_dir(f.p("outside"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        outside.is_empty(),
        "the daemon wrote {outside:?} outside the deployment, through shared/conf:\n{log}"
    );
    assert!(
        log.contains("shared path conf/sub: a parent in shared is not a directory"),
        "{log}"
    );
}

/// A deploy key (`ssh_key_file`) is a credential like the token: a build must not read it, nor
/// another deployment's, wherever the operator keeps it (here outside the config directory).
#[test]
fn a_build_cannot_read_a_deploy_key() {
    if !prerequisites() {
        return;
    }
    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nsbx-deploy-key-7d1e\n";
    let mut f = Fixture::new(
        true,
        r#"
[deployments.c]
repository = "sbx/c"
branch = "main"
remote = "REMOTE_C"
path = "ROOT/www/c"
ssh_key_file = "ROOT/keys/c-key"
commands = [["sh", "-c", "cat ROOT/keys/c-key > $HOME/stolen.txt; ls ROOT/keys > $HOME/listed.txt; true"]]
"#,
    );
    mkdir_owned(&f.p("keys"), f.uid, f.gid, 0o700);
    std::fs::write(f.p("keys/c-key"), KEY).unwrap();
    chown(f.p("keys/c-key"), Some(f.uid), Some(f.gid)).unwrap();
    std::fs::set_permissions(f.p("keys/c-key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let _repo_c = third_repo(&f);
    f.start();
    f.deploy("c");
    let log = f.run_log("c");
    assert!(log.contains(": success in"), "{log}\n{}", f.daemon_log());
    let stolen = std::fs::read_to_string(f.p("state/homes/c/stolen.txt")).expect(&log);
    assert!(
        !stolen.contains("sbx-deploy-key"),
        "the build read its deploy key"
    );
    let listed = std::fs::read_to_string(f.p("state/homes/c/listed.txt")).unwrap();
    assert!(
        !listed.contains("c-key"),
        "the build listed the keys: {listed}"
    );
}

/// A build's output reaches the operator's terminal through `durhack-deployer logs`: terminal
/// control sequences in it (OSC 52 writes the operator's clipboard, CSI clears the screen, a bare
/// carriage return overwrites a line with a fake one) must arrive inert.
#[test]
fn a_build_cannot_send_control_sequences_to_the_operators_terminal() {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(
        true,
        r#"
[deployments.c]
repository = "sbx/c"
branch = "main"
remote = "REMOTE_C"
path = "ROOT/www/c"
commands = [["sh", "-c", "printf 'a\\033]52;c;aGk=\\007b\\033[2Jc\\rrun fake: success in 0s\\n'; exit 1"]]
"#,
    );
    let _repo_c = third_repo(&f);
    f.start();
    f.deploy("c");
    let log = f.run_log("c");
    assert!(
        log.contains("run fake: success in 0s"),
        "the build printed:\n{log}"
    );
    let out = f.deployer(&["logs", "c"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    for c in ['\u{1b}', '\u{7}', '\r'] {
        assert!(
            !shown.contains(c),
            "`logs` passes {c:?} from the build to the terminal:\n{shown:?}"
        );
    }
}

/// A remote URL may carry credentials (the run log masks them): the daemon's clone keeps the URL
/// in the git config (`.git/config` in place, `path/repo/.git/config` in the releases layout),
/// which a build must not read.
#[test]
fn a_build_cannot_read_the_remotes_credentials_from_the_git_config() {
    if !prerequisites() {
        return;
    }
    let mut f = Fixture::new(
        true,
        r#"
[deployments.c]
repository = "sbx/c"
branch = "main"
remote = "file://deploy:remote-pass-31c7@localhostREMOTE_C"
path = "ROOT/www/c"
commands = [["sh", "-c", "cat .git/config > $HOME/in-place.txt; git rev-parse HEAD > $HOME/head.txt"]]

[deployments.d]
repository = "sbx/c"
branch = "main"
remote = "file://deploy:remote-pass-31c7@localhostREMOTE_C"
path = "ROOT/www/d"
layout = "releases"
commands = [["sh", "-c", "cat ../../repo/.git/config > $HOME/releases.txt; git rev-parse HEAD > $HOME/head.txt"]]
"#,
    );
    let _repo_c = third_repo(&f);
    f.start();
    for (name, file) in [("c", "in-place.txt"), ("d", "releases.txt")] {
        f.deploy(name);
        let log = f.run_log(name);
        assert!(log.contains(": success in"), "{log}\n{}", f.daemon_log());
        assert!(!log.contains("remote-pass-31c7"), "{log}");
        let read = std::fs::read_to_string(f.p(&format!("state/homes/{name}/{file}"))).unwrap();
        assert!(
            !read.contains("remote-pass-31c7"),
            "{name}'s build read the remote's password:\n{read}"
        );
        let head = std::fs::read_to_string(f.p(&format!("state/homes/{name}/head.txt"))).unwrap();
        assert_eq!(
            head.trim().len(),
            40,
            "git still works in the build: {head}"
        );
    }
}
