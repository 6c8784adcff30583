//! The releases layout with real repositories and the real daemon: a failing build never touches
//! `current` nor the running app; a successful one switches with no request failing; `rollback`
//! goes back without building; old releases are pruned; shared paths persist; and a SIGKILL
//! during the build or the switch leaves `current` at a complete release.
//!
//! The app is a tiny HTTP server started by the test (as PM2 or systemd would run it), serving
//! `version.txt`: `/` from the release it resolved `current` to when it started or was last sent
//! SIGHUP (the restart command sends it), `/live` through the `current` link on every request
//! (as nginx serving `root <path>/current/...` does).

mod robust_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deployer::worker::{ReleaseInfo, Releases, Run, RunStatus};
use robust_support::{
    Daemon, DeploymentSpec, EXE, LedgerView, Setup, push_payload, request, send_signed, wait_for,
};
use testkit::git::{Remote, git};
use testkit::prereq;

const REPO: &str = "releases/app";

const SERVER: &str = r#"
import http.server, os, signal, sys
current, port_file, pid_file = sys.argv[1], sys.argv[2], sys.argv[3]
root = [os.path.realpath(current)]
def reload(*_):
    root[0] = os.path.realpath(current)
signal.signal(signal.SIGHUP, reload)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        base = current if self.path == "/live" else root[0]
        try:
            with open(os.path.join(base, "version.txt"), "rb") as f:
                body, code = f.read(), 200
        except OSError as e:
            body, code = str(e).encode(), 500
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(pid_file + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(pid_file + ".tmp", pid_file)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
"#;

/// The test's app server; killed on drop.
struct App {
    child: Child,
    port: u16,
}

impl App {
    fn start(markers: &Path, current: &Path) -> App {
        let script = markers.join("server.py");
        std::fs::write(&script, SERVER).unwrap();
        let port_file = markers.join("server.port");
        let _ = std::fs::remove_file(&port_file);
        let child = Command::new("python3")
            .arg(&script)
            .arg(current)
            .arg(&port_file)
            .arg(markers.join("server.pid"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start the test app server");
        let mut app = App { child, port: 0 };
        app.port = wait_for(
            "the app server to listen",
            || {
                std::fs::read_to_string(&port_file)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            },
            String::new,
        );
        app
    }

    fn get(&self, path: &str) -> (u16, String) {
        request(self.port, "GET", path, &[], b"").unwrap_or((0, String::new()))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `/` and `/live` from a thread until stopped; every answer is kept.
struct Poller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, u16, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    fn start(port: u16) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (Arc::clone(&stop), Arc::clone(&seen));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for path in ["/", "/live"] {
                    let (code, body) =
                        request(port, "GET", path, &[], b"").unwrap_or((0, String::new()));
                    v.lock().unwrap().push((path.to_owned(), code, body));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Poller {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops polling; every answer seen since the start.
    fn finish(mut self) -> Vec<(String, u16, String)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One deployment `app` in the releases layout; build and restart commands leave markers.
struct Rig {
    repo: Remote,
    setup: Setup,
    ledger: std::sync::OnceLock<LedgerView>,
    markers: PathBuf,
}

impl Rig {
    fn new(keep_releases: usize) -> Option<Rig> {
        if !prereq::require(
            "python3",
            prereq::have_program("python3"),
            "the releases tests' app server is a Python script",
        ) {
            return None;
        }
        let repo = Remote::new("main");
        let markers = tempfile::Builder::new()
            .prefix("releases-markers-")
            .tempdir()
            .unwrap()
            .keep();
        let m = markers.display();
        // The build: counts itself, checks the shared secret is there, appends to a shared
        // upload, hangs while `hang` exists, fails on a commit with `fail`, and leaves output.
        let build = r#"echo "$DEPLOY_SHA" >> "$M/builds"; grep -q SECRET=1 .env || exit 3; echo "$DEPLOY_SHA" >> uploads/log; if [ -e "$M/hang" ]; then touch "$M/building"; sleep 600; fi; echo "$DEPLOY_SHA" > build-output.txt; test ! -e fail"#;
        let restart = r#"echo "$DEPLOY_SHA $(pwd -P)" >> "$M/restarts"; if [ -e "$M/server.pid" ]; then kill -HUP "$(cat "$M/server.pid")"; fi"#;
        let body = format!(
            "layout = \"releases\"\nkeep_releases = {keep_releases}\nshared = [\"uploads\", \".env\"]\n\
             env = {{ M = \"{m}\" }}\ncommands = [[\"sh\", \"-c\", {build:?}]]\n\
             restart = [[\"sh\", \"-c\", {restart:?}]]\n"
        );
        let setup = Setup::new(
            "",
            vec![DeploymentSpec {
                name: "app".into(),
                repository: REPO.into(),
                branch: "main".into(),
                remote: repo.url(),
                body,
            }],
        );
        let shared = setup.deploy_path("app").join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join(".env"), "SECRET=1\n").unwrap();
        Some(Rig {
            repo,
            setup,
            ledger: std::sync::OnceLock::new(),
            markers,
        })
    }

    /// Opened once a daemon has created the state directory.
    fn ledger(&self) -> &LedgerView {
        self.ledger
            .get_or_init(|| LedgerView::open(&self.setup.config().effective_database_url()))
    }

    fn path(&self) -> PathBuf {
        self.setup.deploy_path("app")
    }

    fn releases(&self) -> Releases {
        Releases::new(&self.path())
    }

    /// The release `current` points at, which must be complete.
    fn live(&self) -> ReleaseInfo {
        let r = self.releases();
        let id = r.current().expect("current points at a release");
        r.info(&id)
            .unwrap_or_else(|| panic!("current points at {id}, which is not a complete release"))
    }

    fn builds(&self) -> usize {
        std::fs::read_to_string(self.markers.join("builds"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Commits `files` and sends the push webhook for it.
    fn push(&self, d: &Daemon, version: &str, extra: &[(&str, &str)]) -> String {
        let before = self.repo.remote_head_opt();
        let mut files = vec![("version.txt", version)];
        files.extend_from_slice(extra);
        let sha = self.repo.commit(version, &files);
        self.repo.push();
        let body = push_payload(REPO, "main", before.as_deref(), &sha);
        let delivery = format!("push-{version}-{}", &sha[..8]);
        assert_eq!(
            send_signed(d.port, "push", &delivery, &body).unwrap(),
            202,
            "{}",
            d.log()
        );
        sha
    }

    /// Waits until `n` runs are recorded, none running and nothing queued.
    fn settled(&self, d: &Daemon, n: usize) -> Vec<Run> {
        wait_for(
            &format!("{n} runs settled"),
            || {
                let runs = self.ledger().runs("app");
                (runs.len() >= n
                    && self.setup.queued().is_empty()
                    && runs.iter().all(|r| r.status != RunStatus::Running))
                .then_some(runs)
            },
            || format!("{}\nruns: {:#?}", d.log(), self.ledger().runs("app")),
        )
    }

    fn release_dirs(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.releases().releases_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    /// The linked worktrees git knows of (besides the shared clone itself).
    fn worktrees(&self) -> Vec<String> {
        let list = git(
            &self.releases().repo_dir(),
            &["worktree", "list", "--porcelain"],
        );
        list.lines()
            .filter_map(|l| l.strip_prefix("worktree "))
            .filter(|p| Path::new(p) != self.releases().repo_dir())
            .map(|p| {
                Path::new(p)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // A build left hanging by a killed daemon (`sleep 600`) that no restarted daemon ended.
        let pgid_file = self.setup.state_dir().join("process-groups/app.pgid");
        // Only if the recorded group leader is still the same process (its start time, field
        // 22 of /proc/<pid>/stat, as recorded): the id may have been reused since.
        let record = std::fs::read_to_string(pgid_file).unwrap_or_default();
        let mut fields = record.split_whitespace();
        if let (Some(Ok(pgid)), Some(start)) = (fields.next().map(str::parse::<i32>), fields.next())
            && pgid > 1
            && std::fs::read_to_string(format!("/proc/{pgid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(19).map(str::to_owned)
                })
                .is_some_and(|now| now == start)
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_dir_all(&self.markers);
    }
}

trait RemoteHead {
    fn remote_head_opt(&self) -> Option<String>;
}

impl RemoteHead for Remote {
    fn remote_head_opt(&self) -> Option<String> {
        let out = Command::new("git")
            .args(["rev-parse", "--verify", "--quiet", "refs/heads/main"])
            .current_dir(self.bare())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// `durhack-deployer rollback NAME [--to RUN]`: whether it succeeded, and what it printed.
fn try_rollback(setup: &Setup, name: &str, to: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(EXE);
    cmd.arg("rollback")
        .arg("--config")
        .arg(&setup.config_path)
        .arg(name);
    if let Some(to) = to {
        cmd.args(["--to", to]);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn rollback(setup: &Setup, to: Option<&str>) -> String {
    let (ok, text) = try_rollback(setup, "app", to);
    assert!(ok, "rollback failed: {text}");
    text
}

fn wait_answer(app: &App, path: &str, want: &str) {
    wait_for(
        &format!("{path} to answer {want}"),
        || (app.get(path) == (200, want.to_owned())).then_some(()),
        || format!("{path} answers {:?}", app.get(path)),
    );
}

#[test]
fn failed_builds_never_go_live_switches_drop_no_request_and_rollback_skips_the_build() {
    let Some(rig) = Rig::new(3) else { return };
    let mut d = Daemon::new(&rig.setup);
    d.start();

    let v1 = rig.push(&d, "v1", &[]);
    let runs = rig.settled(&d, 1);
    assert_eq!(runs[0].status, RunStatus::Success, "{}", d.log());
    let r1 = rig.live();
    assert_eq!(
        (r1.run.as_str(), r1.sha.as_str()),
        (runs[0].id.as_str(), v1.as_str())
    );
    let app = App::start(&rig.markers, &rig.path().join("current"));
    assert_eq!(app.get("/"), (200, "v1".to_owned()));

    // A failing build: current, the app and the live tree stay at v1 throughout.
    let poller = Poller::start(app.port);
    rig.push(&d, "v2-broken", &[("fail", "x")]);
    let runs = rig.settled(&d, 2);
    assert_eq!(runs[1].status, RunStatus::Failed, "{runs:#?}");
    std::thread::sleep(Duration::from_millis(300));
    let seen = poller.finish();
    assert!(seen.len() > 10, "the poller ran: {}", seen.len());
    let bad: Vec<_> = seen
        .iter()
        .filter(|(_, c, b)| *c != 200 || b != "v1")
        .collect();
    assert!(
        bad.is_empty(),
        "answers other than v1 during a failed build: {bad:?}"
    );
    assert_eq!(rig.live(), r1, "a failed build moved current");
    assert_eq!(
        rig.release_dirs(),
        vec![r1.run.clone()],
        "the failed release is removed"
    );
    assert_eq!(rig.worktrees(), vec![r1.run.clone()]);
    // The failed build wrote its output before failing; none of it is live.
    assert_eq!(
        std::fs::read_to_string(rig.path().join("current/build-output.txt")).unwrap(),
        format!("{v1}\n")
    );

    // A good build: the switch drops no request and the app ends at v3.
    let poller = Poller::start(app.port);
    rig.repo.remove("unbreak", "fail");
    let v3 = rig.push(&d, "v3", &[]);
    let runs = rig.settled(&d, 3);
    assert_eq!(runs[2].status, RunStatus::Success, "{}", d.log());
    wait_answer(&app, "/", "v3");
    let seen = poller.finish();
    let errors: Vec<_> = seen
        .iter()
        .filter(|(_, c, b)| *c != 200 || (b != "v1" && b != "v3"))
        .collect();
    let switched = seen.iter().filter(|(_, _, b)| b == "v3").count();
    eprintln!(
        "switch to v3: {} requests, {switched} answered v3, {} errors",
        seen.len(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "requests failed during the switch: {errors:?}"
    );
    assert!(switched > 0, "the poller saw the switch");
    let r3 = rig.live();
    assert_eq!(r3.sha, v3);

    // Rollback: back to v1 without building, recorded as a `rollback` run of v1.
    let builds = rig.builds();
    let started = Instant::now();
    let said = rollback(&rig.setup, None);
    assert!(said.contains(&r1.run), "{said}");
    wait_answer(&app, "/", "v1");
    let took = started.elapsed();
    eprintln!("rollback: the app answered v1 {took:?} after `rollback` was started");
    assert!(took < Duration::from_secs(60), "rollback took {took:?}");
    let runs = rig.settled(&d, 4);
    let last = runs.last().unwrap();
    assert_eq!(
        (last.source.as_str(), last.status, last.sha.as_str()),
        ("rollback", RunStatus::Success, v1.as_str()),
        "{runs:#?}"
    );
    assert_eq!(rig.builds(), builds, "the rollback ran the build");
    assert_eq!(rig.live(), r1);
    assert_eq!(app.get("/live"), (200, "v1".to_owned()));
    let restarts = std::fs::read_to_string(rig.markers.join("restarts")).unwrap();
    let last_restart = restarts.lines().last().unwrap();
    assert_eq!(
        last_restart,
        format!(
            "{v1} {}",
            std::fs::canonicalize(rig.releases().release_dir(&r1.run))
                .unwrap()
                .display()
        ),
        "the restart command ran in current, at the rolled-back release"
    );

    // The next push deploys forward; a few more prune to keep_releases = 3, never the live one
    // or the one before it.
    let mut shas = Vec::new();
    for v in ["v4", "v5", "v6"] {
        shas.push(rig.push(&d, v, &[]));
        let n = rig.ledger().runs("app").len() + 1;
        let runs = rig.settled(&d, n);
        assert_eq!(
            runs.last().unwrap().status,
            RunStatus::Success,
            "{}",
            d.log()
        );
        wait_answer(&app, "/", v);
    }
    assert_eq!(rig.live().sha, shas[2]);
    let kept = rig.release_dirs();
    assert_eq!(kept.len(), 3, "kept releases: {kept:?}");
    assert!(
        !kept.contains(&r1.run) && !kept.contains(&r3.run),
        "{kept:?}"
    );
    assert_eq!(rig.worktrees(), kept, "git forgot the pruned worktrees");

    // Shared paths: one `uploads` across every release (each build appended to it), the secret
    // kept, and each release links them rather than carrying its own copy.
    let uploads = std::fs::read_to_string(rig.path().join("shared/uploads/log")).unwrap();
    assert_eq!(uploads.lines().count(), rig.builds(), "{uploads}");
    for id in &kept {
        let dir = rig.releases().release_dir(id);
        assert!(
            std::fs::symlink_metadata(dir.join("uploads"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(".env")).unwrap(),
            "SECRET=1\n"
        );
    }
    drop(app);
    d.terminate();
}

#[test]
fn sigkill_during_the_build_leaves_current_at_a_complete_release() {
    let Some(rig) = Rig::new(5) else { return };
    let mut d = Daemon::new(&rig.setup);
    d.start();
    let v1 = rig.push(&d, "v1", &[]);
    rig.settled(&d, 1);
    let r1 = rig.live();

    std::fs::write(rig.markers.join("hang"), "").unwrap();
    let v2 = rig.push(&d, "v2", &[]);
    wait_for(
        "the build to start",
        || rig.markers.join("building").exists().then_some(()),
        || d.log(),
    );
    d.kill9();
    assert_eq!(rig.live(), r1, "current moved before the build finished");
    assert_eq!(
        std::fs::read_to_string(rig.path().join("current/version.txt")).unwrap(),
        "v1"
    );
    let half: Vec<String> = rig
        .release_dirs()
        .into_iter()
        .filter(|id| *id != r1.run)
        .collect();
    assert_eq!(
        half.len(),
        1,
        "the killed run's release is there, incomplete"
    );
    assert!(rig.releases().info(&half[0]).is_none());

    // What a `git worktree add` killed half-way leaves: the directory and git's entry for it,
    // locked ("initializing"), which `git worktree prune` alone would keep for good.
    let stale = "20000101T000000Z-dead00";
    git(
        &rig.releases().repo_dir(),
        &[
            "worktree",
            "add",
            "--lock",
            "--detach",
            rig.releases().release_dir(stale).to_str().unwrap(),
            &v1,
        ],
    );

    std::fs::remove_file(rig.markers.join("hang")).unwrap();
    let mut d = Daemon::new(&rig.setup);
    d.start();
    let runs = rig.settled(&d, 2);
    let ok: Vec<_> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Success)
        .collect();
    assert_eq!(ok.len(), 2, "{runs:#?}");
    let live = rig.live();
    assert_eq!(live.sha, v2);
    assert_ne!(live.sha, v1);
    assert!(
        !rig.release_dirs().contains(&half[0]),
        "the incomplete release was removed"
    );
    assert!(!rig.worktrees().contains(&half[0]), "{:?}", rig.worktrees());
    assert!(!rig.release_dirs().contains(&stale.to_owned()));
    assert!(
        !rig.worktrees().contains(&stale.to_owned()),
        "a locked entry of a worktree that is gone stayed: {:?}",
        rig.worktrees()
    );
    d.terminate();
}

#[test]
fn sigkill_during_the_switch_leaves_current_at_a_complete_release() {
    let Some(rig) = Rig::new(5) else { return };
    let hold_file = rig.markers.join("held");
    let mut expected_runs = 0;
    for point in ["switch-before-rename", "switch-after-rename"] {
        let mut d = Daemon::new(&rig.setup);
        d.start();
        rig.push(&d, &format!("{point}-base"), &[]);
        expected_runs += 1;
        let runs = rig.settled(&d, expected_runs);
        assert_eq!(runs.last().unwrap().status, RunStatus::Success);
        let base = rig.live();
        d.kill9();

        let mut d = Daemon::new(&rig.setup)
            .env("DURHACK_DEPLOYER_TEST_HOLD_AT", point)
            .env(
                "DURHACK_DEPLOYER_TEST_HOLD_FILE",
                hold_file.to_str().unwrap(),
            );
        d.start();
        let _ = std::fs::remove_file(&hold_file);
        let next = rig.push(&d, &format!("{point}-next"), &[]);
        wait_for(
            &format!("the run to reach {point}"),
            || hold_file.exists().then_some(()),
            || d.log(),
        );
        d.kill9();
        let live = rig.live();
        eprintln!("killed at {point}: current -> {} ({})", live.run, live.sha);
        match point {
            "switch-before-rename" => assert_eq!(live, base),
            _ => assert_eq!(live.sha, next),
        }
        assert!(
            std::fs::read_dir(rig.path())
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("current.tmp-"))
                == (point == "switch-before-rename"),
        );

        let mut d = Daemon::new(&rig.setup);
        d.start();
        // The killed run is closed as cancelled and its push redone.
        expected_runs += 2;
        let runs = rig.settled(&d, expected_runs);
        assert_eq!(runs.last().unwrap().status, RunStatus::Success, "{runs:#?}");
        assert_eq!(rig.live().sha, next);
        assert!(
            !std::fs::read_dir(rig.path())
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("current.tmp-")),
            "a stale current.tmp link was left"
        );
        d.terminate();
    }
}

#[test]
fn rollback_refuses_what_it_cannot_do_and_queues_nothing() {
    let repo = Remote::new("main");
    let spec = |name: &str, body: &str| DeploymentSpec {
        name: name.into(),
        repository: REPO.into(),
        branch: "main".into(),
        remote: repo.url(),
        body: body.into(),
    };
    let setup = Setup::new(
        "",
        vec![spec("inplace", ""), spec("fresh", "layout = \"releases\"")],
    );
    for (name, to, says) in [
        ("inplace", None, "builds in place"),
        ("fresh", None, "has no live release yet"),
        ("fresh", Some("../../etc"), "must be a run id"),
        (
            "fresh",
            Some("20261203T184516Z-3f9a1c"),
            "has no kept, complete release",
        ),
        ("nope", None, "no deployment named nope"),
    ] {
        let (ok, text) = try_rollback(&setup, name, to);
        assert!(!ok && text.contains(says), "{name} {to:?}: {text}");
    }
    assert!(setup.queued().is_empty(), "{:?}", setup.queued());
}

/// v1, v2, v3 go live; v3 is rolled back (to v2); v4 goes live from v2. `rollback app` now goes
/// back to what was live before v4 (v2, which prune keeps), not to v3, the release the operator
/// rolled away from.
#[test]
fn rollback_after_a_rollback_and_a_deploy_goes_to_what_was_live() {
    let Some(rig) = Rig::new(5) else { return };
    let mut d = Daemon::new(&rig.setup);
    d.start();
    let mut live = Vec::new();
    for (n, v) in ["v1", "v2", "v3"].into_iter().enumerate() {
        rig.push(&d, v, &[]);
        let runs = rig.settled(&d, n + 1);
        assert_eq!(runs[n].status, RunStatus::Success, "{}", d.log());
        live.push(rig.live());
    }
    let said = rollback(&rig.setup, None);
    assert!(said.contains(&live[1].run), "{said}");
    rig.settled(&d, 4);
    assert_eq!(rig.live(), live[1]);
    rig.push(&d, "v4", &[]);
    let runs = rig.settled(&d, 5);
    assert_eq!(runs[4].status, RunStatus::Success, "{}", d.log());
    let said = rollback(&rig.setup, None);
    rig.settled(&d, 6);
    assert_eq!(
        rig.live().run,
        live[1].run,
        "rollback from v4 went to {} (v3 is {}): {said}",
        rig.live().sha,
        live[2].sha
    );
    d.terminate();
}
