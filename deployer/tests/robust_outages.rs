//! Outages, each against the real daemon and a server instance of the test's own (the machine's
//! shared PostgreSQL and Redis are never stopped):
//! - PostgreSQL stopped mid-stream: deliveries are still answered 202, and drained once it is back;
//! - Redis stopped while deploys wait: they resume when it returns, and none runs unlocked;
//! - the helper not running: the run retries, then fails with a message naming the helper;
//! - a full or read-only queue file system: the endpoint answers 503 and keeps nothing.

mod robust_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use deployer::ledger::Outcome;
use deployer::worker::RunStatus;
use robust_support::{
    Daemon, DeploymentSpec, LedgerView, Setup, is_mount_point, push_payload, send_signed, wait_for,
};
use testkit::git::Remote;
use testkit::prereq;

fn app(repo: &Remote, repository: &str, body: &str) -> DeploymentSpec {
    DeploymentSpec {
        name: "app".into(),
        repository: repository.into(),
        branch: "main".into(),
        remote: repo.url(),
        body: body.into(),
    }
}

/// Pushes a new commit and sends its signed delivery; the commit and the answer.
fn push(
    repo: &Remote,
    repository: &str,
    port: u16,
    delivery: &str,
    before: Option<&str>,
) -> (String, std::io::Result<u16>) {
    let sha = repo.commit(delivery, &[("version.txt", delivery)]);
    repo.push();
    let body = push_payload(repository, "main", before, &sha);
    (sha.clone(), send_signed(port, "push", delivery, &body))
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A PostgreSQL cluster of the test's own (initdb + pg_ctl on a free port, run as the `postgres`
/// user when the test is root); stopped and removed on drop.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    found.sort();
    found.pop()
}

impl PrivatePostgres {
    fn start() -> Option<PrivatePostgres> {
        let bin = postgres_bin();
        if !prereq::require(
            "PostgreSQL server binaries under /usr/lib/postgresql/*/bin",
            bin.is_some(),
            "the outage test stops a PostgreSQL of its own",
        ) {
            return None;
        }
        let as_postgres = prereq::is_root();
        if as_postgres
            && !prereq::require(
                "runuser and a postgres user",
                prereq::have_program("runuser")
                    && nix::unistd::User::from_name("postgres")
                        .ok()
                        .flatten()
                        .is_some(),
                "initdb refuses to run as root",
            )
        {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("robust-pg-")
            .tempdir()
            .unwrap();
        if as_postgres {
            let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(dir.path(), Some(pg.uid), Some(pg.gid)).unwrap();
        }
        let pg = PrivatePostgres {
            dir,
            bin: bin?,
            // Restarted on the same port while the daemon keeps trying to connect to it.
            port: robust_support::restartable_port(),
            as_postgres,
        };
        let data = pg.data().display().to_string();
        pg.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        pg.resume();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn resume(&self) {
        let data = self.data().display().to_string();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "120", "start",
            ],
        );
    }

    /// `-m immediate`: the server goes away as abruptly as a crash.
    fn stop(&self) {
        let data = self.data().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let program = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn postgres_outage_mid_stream_is_answered_202_and_drained_when_it_returns() {
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };
    const REPO: &str = "robust/pg-app";
    let repo = Remote::new("main");
    let setup = Setup::new(
        &format!("database_url = \"{}\"", pg.url()),
        vec![app(&repo, REPO, r#"commands = [["true"]]"#)],
    );
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let port = setup.port;

    let mut acked = Vec::new();
    let mut last: Option<String> = None;
    for i in 0..4 {
        let id = format!("pg-before-{i}");
        let (sha, answer) = push(&repo, REPO, port, &id, last.as_deref());
        assert_eq!(answer.unwrap(), 202, "{id}");
        acked.push(id);
        last = Some(sha);
    }
    {
        let ledger = LedgerView::open(&pg.url());
        wait_for(
            "the first pushes to deploy",
            || (ledger.deployed("app") == last).then_some(()),
            || daemon.log(),
        );
    }

    pg.stop();
    let outage_pushes = 8;
    for i in 0..outage_pushes {
        if i == outage_pushes / 2 {
            // A crash during the outage: the restarted daemon cannot open its ledger, yet it
            // listens and keeps what it is sent.
            daemon.kill9();
            daemon.start_listening();
        }
        let id = format!("pg-during-{i}");
        let (sha, answer) = push(&repo, REPO, port, &id, last.as_deref());
        assert_eq!(
            answer.unwrap(),
            202,
            "{id}: the endpoint does not need the database\n{}",
            daemon.log()
        );
        acked.push(id);
        last = Some(sha);
    }
    // Held durably while the ledger is away: nothing can record them, so the inbox keeps them.
    let waiting = wait_for(
        "deliveries waiting in the inbox",
        || {
            let n = setup.inbox().list().unwrap().len();
            (n > 0).then_some(n)
        },
        || daemon.log(),
    );
    assert!(daemon.is_running(), "{}", daemon.log());

    pg.resume();
    let ledger = LedgerView::open(&pg.url());
    wait_for(
        "the backlog to drain and the newest push to deploy",
        || (ledger.deployed("app") == last && setup.queued().is_empty()).then_some(()),
        || format!("queued {:?}\n{}", setup.queued(), daemon.log()),
    );
    let records = ledger.deliveries();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        *per_id.entry(r.delivery.as_str()).or_default() += 1;
    }
    let runs = ledger.runs("app");
    eprintln!(
        "[robust_outages/postgres] {} deliveries answered 202 ({outage_pushes} while PostgreSQL \
         was down, across a SIGKILL and a restart that could not open the ledger; {waiting} seen \
         waiting in the inbox); {} ledger records; {} runs ({} success)",
        acked.len(),
        records.len(),
        runs.len(),
        runs.iter()
            .filter(|r| r.status == RunStatus::Success)
            .count()
    );
    for id in &acked {
        assert_eq!(per_id.get(id.as_str()), Some(&1), "{id} in the ledger once");
    }
    assert!(
        runs.iter()
            .all(|r| r.status != RunStatus::Failed && r.status != RunStatus::Running),
        "{runs:#?}"
    );
    assert_eq!(testkit::git::head(&setup.deploy_path("app")), last.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Redis

#[test]
fn redis_outage_while_deploys_wait_resumes_and_nothing_runs_unlocked() {
    let Some(mut redis) = testkit::services::private_redis() else {
        return;
    };
    if !prereq::require(
        "redis-cli",
        prereq::have_program("redis-cli"),
        "each deploy checks that its lock is held",
    ) {
        return;
    }
    const REPO: &str = "robust/redis-app";
    let repo = Remote::new("main");
    // Every run asks Redis whether its lock is there: a run without it fails loudly.
    let body = format!(
        r#"commands = [["sh", "-c", "test \"$(redis-cli -p {} --raw exists durhack-deployer:deploy:app)\" = 1 || {{ echo RUNNING UNLOCKED; exit 9; }}"]]"#,
        redis.port()
    );
    let setup = Setup::new(
        &format!("redis_url = \"{}\"", redis.url()),
        vec![app(&repo, REPO, &body)],
    );
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    let port = setup.port;

    let (first, answer) = push(&repo, REPO, port, "redis-1", None);
    assert_eq!(answer.unwrap(), 202);
    wait_for(
        "the first deploy",
        || (ledger.deployed("app").as_deref() == Some(first.as_str())).then_some(()),
        || daemon.log(),
    );

    redis.stop();
    let (second, answer) = push(&repo, REPO, port, "redis-2", Some(&first));
    assert_eq!(answer.unwrap(), 202);
    let (third, answer) = push(&repo, REPO, port, "redis-3", Some(&second));
    assert_eq!(answer.unwrap(), 202);
    wait_for(
        "the worker to find the lock store down",
        || {
            daemon
                .full_log()
                .contains("cannot take a lock; retrying")
                .then_some(())
        },
        || daemon.log(),
    );
    let waiting = setup.deploy_queue("app").list().unwrap().len();
    let runs_during = ledger.runs("app").len();
    assert_eq!(runs_during, 1, "nothing ran while the lock store was down");
    assert!(waiting >= 1, "the pushes wait in the deploy queue");

    redis.start();
    wait_for(
        "the waiting deploys to resume",
        || {
            (ledger.deployed("app").as_deref() == Some(third.as_str()) && setup.queued().is_empty())
                .then_some(())
        },
        || daemon.log(),
    );
    let runs = ledger.runs("app");
    eprintln!(
        "[robust_outages/redis] {waiting} deploy(s) waited in the queue while Redis was down; runs \
         after it returned: {:?}",
        runs.iter()
            .map(|r| (r.delivery.as_str(), r.status.as_str()))
            .collect::<Vec<_>>()
    );
    // The waiting pushes deploy the head once: the push that carries the run succeeds, the
    // others are superseded, or stale when the head they lead to is deployed already.
    assert!(
        runs.iter().all(|r| matches!(
            r.status,
            RunStatus::Success | RunStatus::Superseded | RunStatus::Stale
        )),
        "{runs:#?}\n{}",
        daemon.log()
    );
    assert!(!daemon.full_log().contains("RUNNING UNLOCKED"));
}

// ---------------------------------------------------------------------------------------------
// The helper

#[test]
fn a_missing_helper_fails_the_run_with_a_clear_message_after_retries() {
    const REPO: &str = "robust/site-app";
    let repo = Remote::new("main");
    let conf = "server {\n    listen 127.0.0.1:8080;\n    server_name demo.test;\n}\n";
    let setup = Setup::new(
        "",
        vec![app(
            &repo,
            REPO,
            "commands = [[\"true\"]]\nsites = { demo = \"nginx/demo.conf\" }",
        )],
    );
    let socket = setup.config().helper_socket;
    assert!(!socket.exists());
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    let sha = repo.commit("site", &[("nginx/demo.conf", conf)]);
    repo.push();
    let body = push_payload(REPO, "main", None, &sha);
    assert_eq!(
        send_signed(setup.port, "push", "helper-1", &body).unwrap(),
        202
    );
    let run = wait_for(
        "the run to give up on the helper",
        || {
            ledger
                .runs("app")
                .into_iter()
                .find(|r| r.status == RunStatus::Failed)
        },
        || daemon.log(),
    );
    let error = run.error.clone().unwrap_or_default();
    let log = std::fs::read_to_string(run.log_path.as_ref().unwrap()).unwrap();
    let retries = log.matches("retrying in").count();
    eprintln!(
        "[robust_outages/helper] run {} failed after {retries} retries: {error}",
        run.id
    );
    assert!(
        error.contains("privileged helper") && error.contains(&socket.display().to_string()),
        "the error names the helper and its socket: {error}"
    );
    assert!(retries >= 1, "the helper call was retried:\n{log}");
    assert!(setup.queued().is_empty(), "{:?}", setup.queued());

    // Reported, and retryable: GitHub's "Redeliver" (the same delivery id) queues it again.
    assert_eq!(
        send_signed(setup.port, "push", "helper-1", &body).unwrap(),
        202
    );
    let again = wait_for(
        "the redelivery to be recorded",
        || {
            let records = ledger.deliveries();
            (records.len() == 2).then_some(records)
        },
        || daemon.log(),
    );
    assert_eq!(again[0].outcome, Outcome::Routed, "{again:#?}");
    assert!(again[0].reason.contains("failed deploy"), "{again:#?}");
}

// ---------------------------------------------------------------------------------------------
// Disk full, read-only

/// A 1 MiB tmpfs mounted over the queue directory; unmounted on drop.
struct SmallMount(PathBuf);

impl SmallMount {
    fn new(at: &Path) -> SmallMount {
        std::fs::create_dir_all(at).unwrap();
        mount(&["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"], at);
        SmallMount(at.to_owned())
    }
}

fn mount(args: &[&str], at: &Path) {
    let out = Command::new("mount").args(args).arg(at).output().unwrap();
    assert!(
        out.status.success(),
        "mount {args:?} {}: {}",
        at.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for SmallMount {
    fn drop(&mut self) {
        if is_mount_point(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the file system holding `dir` to the last byte.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[0]).is_ok() {}
    path
}

#[test]
fn a_full_or_read_only_queue_disk_answers_503_and_keeps_nothing() {
    if !prereq::require(
        "root",
        prereq::is_root(),
        "mounting a tiny tmpfs over the queue directory",
    ) {
        return;
    }
    const REPO: &str = "robust/disk-app";
    let repo = Remote::new("main");
    let setup = Setup::new("", vec![app(&repo, REPO, r#"commands = [["true"]]"#)]);
    let queues = setup.state_dir().join("queues");
    let _mount = SmallMount::new(&queues);
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    let port = setup.port;
    let inbox_files = || {
        std::fs::read_dir(setup.inbox().dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };

    let (first, answer) = push(&repo, REPO, port, "disk-1", None);
    assert_eq!(answer.unwrap(), 202);
    wait_for(
        "the first deploy",
        || (ledger.deployed("app").as_deref() == Some(first.as_str())).then_some(()),
        || daemon.log(),
    );

    // Full.
    let filler = fill(&queues);
    let mut refused = Vec::new();
    let mut last = first.clone();
    for i in 0..3 {
        let id = format!("disk-full-{i}");
        let (sha, answer) = push(&repo, REPO, port, &id, Some(&last));
        refused.push((id.clone(), answer.as_ref().ok().copied()));
        assert_eq!(
            answer.unwrap(),
            503,
            "{id} on a full disk\n{}",
            daemon.log()
        );
        last = sha;
    }
    assert!(
        inbox_files().is_empty(),
        "nothing kept from refused deliveries: {:?}",
        inbox_files()
    );
    std::fs::remove_file(&filler).unwrap();
    let (after_full, answer) = push(&repo, REPO, port, "disk-2", Some(&last));
    assert_eq!(answer.unwrap(), 202, "space again");
    wait_for(
        "the deploy after space came back",
        || (ledger.deployed("app").as_deref() == Some(after_full.as_str())).then_some(()),
        || daemon.log(),
    );

    // Read-only.
    mount(&["-o", "remount,ro"], &queues);
    last = after_full.clone();
    for i in 0..3 {
        let id = format!("disk-ro-{i}");
        let (sha, answer) = push(&repo, REPO, port, &id, Some(&last));
        refused.push((id.clone(), answer.as_ref().ok().copied()));
        assert_eq!(
            answer.unwrap(),
            503,
            "{id} on a read-only disk\n{}",
            daemon.log()
        );
        last = sha;
    }
    assert!(inbox_files().is_empty(), "{:?}", inbox_files());
    mount(&["-o", "remount,rw"], &queues);
    let (after_ro, answer) = push(&repo, REPO, port, "disk-3", Some(&last));
    assert_eq!(answer.unwrap(), 202, "writable again");
    wait_for(
        "the deploy after the disk became writable",
        || {
            (ledger.deployed("app").as_deref() == Some(after_ro.as_str())
                && setup.queued().is_empty())
            .then_some(())
        },
        || daemon.log(),
    );
    assert!(daemon.is_running(), "{}", daemon.log());

    let ids: Vec<String> = ledger
        .deliveries()
        .into_iter()
        .map(|r| r.delivery)
        .collect();
    eprintln!(
        "[robust_outages/disk] refused (id, status): {refused:?}; recorded: {ids:?}; queue files \
         left: {:?}",
        setup.queue_files()
    );
    assert_eq!(
        ids,
        ["disk-3", "disk-2", "disk-1"],
        "only accepted deliveries recorded"
    );
    assert!(
        setup
            .queue_files()
            .iter()
            .all(|f| !f.contains("disk-full") && !f.contains("disk-ro")),
        "{:?}",
        setup.queue_files()
    );
}
