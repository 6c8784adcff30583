//! Issue 10, item 2, with the real binary: a failing build whose daemon is SIGKILLed while it
//! posts the failure's commit status (after the failure is in the ledger, before the queue entry
//! is removed) is not built again after the restart. GitHub's API is the one fake: a socket that
//! answers statuses, and holds the failure's POST open while the test kills the daemon.

mod robust_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use deployer::worker::RunStatus;
use robust_support::{
    Daemon, DeploymentSpec, LedgerView, Setup, push_payload, send_signed, wait_for,
};
use testkit::git::Remote;

const REPO: &str = "robust/status-app";

/// The fake statuses API: answers 201, except that while `hold` is set a `failure` status is
/// read and never answered (counted in `held`).
struct FakeGithub {
    port: u16,
    hold: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
}

fn read_request(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text.into_owned();
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

impl FakeGithub {
    fn start() -> FakeGithub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(AtomicBool::new(true));
        let held = Arc::new(AtomicUsize::new(0));
        let (h, n) = (Arc::clone(&hold), Arc::clone(&held));
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let request = read_request(&mut s);
                if h.load(Ordering::SeqCst) && request.contains("\"failure\"") {
                    n.fetch_add(1, Ordering::SeqCst);
                    kept.push(s);
                    continue;
                }
                let _ = s.write_all(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                );
            }
        });
        FakeGithub { port, hold, held }
    }
}

#[test]
fn a_failed_build_killed_during_its_status_post_is_not_run_again() {
    let github = FakeGithub::start();
    let marks = tempfile::tempdir().unwrap();
    let repo = Remote::new("main");
    let spec = DeploymentSpec {
        name: "app".into(),
        repository: REPO.into(),
        branch: "main".into(),
        remote: repo.url(),
        body: format!(
            r#"commands = [["sh", "-c", "echo ran >> {}/count; exit 3"]]"#,
            marks.path().display()
        ),
    };
    let setup = Setup::new("", vec![spec]);
    std::fs::write(setup.dir.path().join("token"), "ghp_fake_token").unwrap();
    let text = std::fs::read_to_string(&setup.config_path)
        .unwrap()
        .replace(
            "[github]\n",
            &format!(
                "[github]\ntoken_file = \"{}\"\napi_url = \"http://127.0.0.1:{}\"\n",
                setup.dir.path().join("token").display(),
                github.port
            ),
        );
    std::fs::write(&setup.config_path, text).unwrap();
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());

    let sha = repo.commit("broken", &[("v", "1")]);
    repo.push();
    let body = push_payload(REPO, "main", None, &sha);
    assert_eq!(
        send_signed(setup.port, "push", "status-1", &body).unwrap(),
        202
    );
    wait_for(
        "the failure's status POST",
        || (github.held.load(Ordering::SeqCst) > 0).then_some(()),
        || daemon.log(),
    );
    daemon.kill9();
    github.hold.store(false, Ordering::SeqCst);
    daemon.start();
    wait_for(
        "the queue to drain",
        || {
            let runs = ledger.runs("app");
            (setup.queued().is_empty()
                && !runs.is_empty()
                && runs.iter().all(|r| r.status != RunStatus::Running))
            .then_some(())
        },
        || daemon.log(),
    );
    daemon.terminate();
    let runs = ledger.runs("app");
    let count = std::fs::read_to_string(marks.path().join("count")).unwrap_or_default();
    assert_eq!(
        count.lines().count(),
        1,
        "the failing build ran once: {runs:#?}\n{}",
        daemon.log()
    );
    assert_eq!(
        runs.iter()
            .filter(|r| r.status == RunStatus::Failed)
            .count(),
        1,
        "{runs:#?}"
    );
}
