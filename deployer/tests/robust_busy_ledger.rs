//! Attack: a SQLite ledger held write-locked by another connection for ~45 s (a backup, an admin
//! `sqlite3` session, a long migration). `Ledger::ping` (`SELECT 1`) still answers, so the
//! dispatcher counts the busy errors as the entry's own failures and quarantines an accepted,
//! perfectly valid push after 5 attempts: it is never deployed. README: "during a ledger outage
//! entries wait instead".

mod robust_support;

use std::time::{Duration, Instant};

use deployer::ledger::Ledger;
use robust_support::{Daemon, DeploymentSpec, LedgerView, Setup, push_payload, send_signed};
use testkit::git::Remote;

#[test]
fn a_write_locked_sqlite_ledger_quarantines_an_accepted_push() {
    let repo = Remote::new("main");
    let setup = Setup::new(
        "",
        vec![DeploymentSpec {
            name: "app".into(),
            repository: "attack/busy".into(),
            branch: "main".into(),
            remote: repo.url(),
            body: r#"commands = [["true"]]"#.into(),
        }],
    );
    let mut d = Daemon::new(&setup);
    d.start();
    let url = setup.config().effective_database_url();
    let view = LedgerView::open(&url);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let blocker = rt.block_on(Ledger::connect(&url)).unwrap();
    let mut conn = rt.block_on(blocker.pool().acquire()).unwrap();
    rt.block_on(sqlx::query("BEGIN EXCLUSIVE").execute(&mut *conn))
        .unwrap();

    let sha = repo.commit("c1", &[("v", "1")]);
    repo.push();
    let body = push_payload("attack/busy", "main", None, &sha);
    assert_eq!(send_signed(d.port, "push", "busy-1", &body).unwrap(), 202);

    // Keep the write lock for a while (each attempt waits sqlite's 5 s busy timeout).
    let quarantine = setup.state_dir().join("queues/inbox-quarantine");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if std::fs::read_dir(&quarantine)
            .map(|r| r.count())
            .unwrap_or(0)
            > 0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(sqlx::query("COMMIT").execute(&mut *conn))
        .unwrap();
    {
        let _rt = rt.enter();
        drop(conn);
    }
    eprintln!(
        "lock held {:?}; quarantine: {:?}",
        start.elapsed(),
        std::fs::read_dir(&quarantine)
            .map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );

    // The ledger is back: an accepted push must now be deployed (a healthy one takes < 2 s).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if view.deployed("app").as_deref() == Some(sha.as_str()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "the accepted push was not deployed 30 s after the ledger became writable:\n{:#?}\nqueue files: {:?}",
        view.deliveries()
            .iter()
            .map(|r| (&r.delivery, r.outcome.as_str(), &r.reason))
            .collect::<Vec<_>>(),
        setup.queue_files()
    );
}
