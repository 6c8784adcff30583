//! The real `durhack-deployer` binary: a delivery accepted while the ledger is unavailable is
//! answered 202, survives SIGKILL, and is handled (and deployed) exactly once after restart; a
//! redelivery afterwards is a duplicate. Also SIGTERM, sd_notify and the `history`, `check`
//! and `migrate` commands.

mod ingest_support;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use deployer::http::signature::sign;
use deployer::ledger::Ledger;
use deployer::worker::RunStatus;
use ingest_support::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_durhack-deployer");

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    head: String,
}

impl Site {
    /// A bare repository with one commit on main, and a configuration whose one deployment
    /// appends each deployed commit to `deploys.log`.
    fn new() -> Site {
        Self::with_top("")
    }

    fn with_top(top: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let work = root.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(root, &["init", "-q", "--bare", "repo.git"]);
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("index.html"), "<h1>hello</h1>\n").unwrap();
        git(&work, &["add", "index.html"]);
        git(&work, &["commit", "-q", "-m", "first"]);
        git(
            &work,
            &[
                "push",
                "-q",
                root.join("repo.git").to_str().unwrap(),
                "main",
            ],
        );
        let head = git(&work, &["rev-parse", "HEAD"]);
        let r = root.display();
        let text = format!(
            r#"
listen = "127.0.0.1:0"
state_dir = "{r}/state"
helper_socket = "{r}/no-helper.sock"
reconcile_interval = "0"
{top}

[deployments.app]
repository = "octo-org/site"
branch = "main"
path = "{r}/www/app"
remote = "{r}/repo.git"
commands = [["sh", "-c", "echo $DEPLOY_SHA >> {r}/deploys.log"]]
timeout = "2m"
# The command writes outside its tree, which only an unsandboxed command may.
sandbox = false
"#
        );
        let config = root.join("config.toml");
        std::fs::write(&config, text).unwrap();
        Site { dir, config, head }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn ledger_url(&self) -> String {
        format!(
            "sqlite://{}?mode=rw",
            self.path("state/ledger.sqlite3").display()
        )
    }

    /// Has the daemon applied every migration?
    async fn migrated(&self) -> bool {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite");
        let want = std::fs::read_dir(dir).unwrap().count() as i64;
        let Ok(ledger) = Ledger::connect(&self.ledger_url()).await else {
            return false;
        };
        let applied: Result<i64, _> =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(ledger.pool())
                .await;
        applied.is_ok_and(|n| n == want)
    }

    fn deploys(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("deploys.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn inbox(&self) -> Vec<String> {
        deployer::queue::Queue::open(self.path("state/queues/inbox"))
            .unwrap()
            .list()
            .unwrap()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("DURHACK_DEPLOYER_WEBHOOK_SECRET", SECRET)
            .output()
            .unwrap()
    }
}

struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    /// Starts `serve` and waits for its sd_notify READY=1, which carries the address.
    fn start(site: &Site, n: u32) -> Daemon {
        let socket_path = site.path(&format!("notify-{n}.sock"));
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let log = std::fs::File::create(site.path(&format!("daemon-{n}.log"))).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&site.config)
            .env("DURHACK_DEPLOYER_WEBHOOK_SECRET", SECRET)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut buf = [0u8; 512];
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(e) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(site.path(&format!("daemon-{n}.log")))
                    .unwrap_or_default();
                panic!("no READY=1 from the daemon ({e}); its log:\n{log}");
            }
        };
        let message = String::from_utf8_lossy(&buf[..len]).into_owned();
        assert!(message.lines().any(|l| l == "READY=1"), "{message}");
        let addr = message
            .lines()
            .find_map(|l| l.strip_prefix("STATUS=listening on "))
            .expect("STATUS with the address")
            .parse()
            .unwrap();
        Daemon { child, addr }
    }

    async fn post(&self, event: &str, delivery: &str, payload: &Value) -> reqwest::StatusCode {
        let body = to_vec(payload);
        reqwest::Client::new()
            .post(format!("http://{}/github-webhook", self.addr))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sign(SECRET.as_bytes(), &body))
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap()
            .status()
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    for _ in 0..1200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out (120 s) waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_left_by_a_killed_daemon_is_handled_once_after_restart() {
    let site = Site::new();
    let daemon = Daemon::start(&site, 1);

    // READY=1 comes as soon as the endpoint listens; the ledger is migrated just after.
    wait_until("the ledger", || site.migrated()).await;
    // Hold the ledger's write lock: the dispatcher cannot record anything, the endpoint must not
    // care.
    let blocker = Ledger::connect(&site.ledger_url()).await.unwrap();
    let mut conn = blocker.pool().acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *conn)
        .await
        .unwrap();
    let payload = push("octo-org/site", "main", ZERO, &site.head);
    assert_eq!(daemon.post("push", "killed-1", &payload).await, 202);
    assert_eq!(site.inbox().len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.kill();
    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    drop(conn);
    blocker.pool().close().await;
    assert_eq!(
        site.inbox().len(),
        1,
        "the accepted delivery survived SIGKILL"
    );

    let daemon = Daemon::start(&site, 2);
    wait_until("the ledger", || site.migrated()).await;
    let ledger = Ledger::connect(&site.ledger_url()).await.unwrap();
    wait_until("the deploy", || async {
        ledger
            .recent_runs("app", 10)
            .await
            .unwrap()
            .iter()
            .any(|r| r.status == RunStatus::Success)
    })
    .await;
    assert!(site.inbox().is_empty());
    let receipts = ledger.receipts_of_delivery("killed-1").await.unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].deployments, vec!["app"]);
    assert_eq!(site.deploys(), vec![site.head.clone()]);

    // Killed again, restarted, and GitHub's "Redeliver" pressed: a duplicate, not a second deploy.
    daemon.kill();
    let daemon = Daemon::start(&site, 3);
    assert_eq!(daemon.post("push", "killed-1", &payload).await, 202);
    wait_until("the redelivery's record", || async {
        ledger.receipts_of_delivery("killed-1").await.unwrap().len() == 2
    })
    .await;
    let receipts = ledger.receipts_of_delivery("killed-1").await.unwrap();
    assert_eq!(
        receipts[1].outcome.as_str(),
        "duplicate",
        "{}",
        receipts[1].reason
    );
    assert_eq!(site.deploys(), vec![site.head.clone()], "deployed once");
    let runs = ledger.recent_runs("app", 10).await.unwrap();
    assert_eq!(
        runs.iter()
            .filter(|r| r.status == RunStatus::Success)
            .count(),
        1
    );

    // `history` reads the ledger while the daemon runs.
    let out = site.cli(&["history", "--json", "--limit", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let items: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["outcome"], "duplicate");
    assert_eq!(items[1]["outcome"], "routed");
    for item in &items {
        assert_eq!(item["delivery"], "killed-1");
        assert_eq!(item["event"], "push");
        assert!(item["received_at"].as_str().unwrap().ends_with('Z'));
        assert!(item["reason"].is_string());
        assert!(item["deployments"].is_array());
    }
    assert_eq!(items[1]["deployments"], serde_json::json!(["app"]));
    let out = site.cli(&["history", "--limit", "1"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table.starts_with("RECEIVED") && table.contains("killed-1") && table.contains("duplicate"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 2, "{table}");

    // SIGTERM stops it cleanly.
    let mut daemon = daemon;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn check_and_migrate() {
    let site = Site::new();
    let out = site.cli(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("app: octo-org/site main"));

    let mut text = std::fs::read_to_string(&site.config).unwrap();
    text = text.replace("timeout = \"2m\"", "timeout = \"2 fortnights\"");
    std::fs::write(&site.config, &text).unwrap();
    let out = site.cli(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deployments.app.timeout"), "{err}");

    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&site.config)
        .env_remove("DURHACK_DEPLOYER_WEBHOOK_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("github.webhook_secret_file"));

    std::fs::write(&site.config, text.replace("\"2 fortnights\"", "\"2m\"")).unwrap();
    let out = site.cli(&["history"]);
    assert!(!out.status.success(), "no ledger yet");
    let out = site.cli(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = site.cli(&["history", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

/// GitHub does not retry: a ledger that cannot be opened at start-up must not stop the endpoint.
/// Deliveries wait in the inbox and are handled once it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_that_is_down_at_start_up_costs_no_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("not-yet");
    let url = format!("sqlite://{}/ledger.sqlite3?mode=rwc", db.display());
    let site = Site::with_top(&format!("database_url = \"{url}\""));
    let daemon = Daemon::start(&site, 1);
    let payload = push("octo-org/site", "main", ZERO, &site.head);
    assert_eq!(daemon.post("push", "early-1", &payload).await, 202);
    assert_eq!(site.inbox().len(), 1);

    let health = reqwest::get(format!("http://{}/", daemon.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "starting");

    std::fs::create_dir(&db).unwrap();
    wait_until("the inbox to drain", || async { site.inbox().is_empty() }).await;
    let ledger = Ledger::connect(&url).await.unwrap();
    let receipts = ledger.receipts_of_delivery("early-1").await.unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].deployments, vec!["app"]);
    wait_until("GET / to say ok", || async {
        let health = reqwest::get(format!("http://{}/", daemon.addr))
            .await
            .unwrap();
        health.status() == 200
    })
    .await;
    daemon.kill();
}
