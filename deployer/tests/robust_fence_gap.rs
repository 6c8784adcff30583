//! Attack: the fencing token is taken only after the new holder has done its ledger work
//! (`close_interrupted_runs`, `entry_outcome`), so a holder whose Redis key vanished still passes
//! `fence_holds` and publishes nginx sites while the other daemon holds the deployment's lock.
//! The SQLite ledger is write-locked meanwhile (reads still answer in WAL mode), which keeps the
//! new holder between "lock taken" and "fence taken"; the old holder needs only reads to publish.

mod robust_support;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deployer::ledger::Ledger;
use robust_support::{DeploymentSpec, Setup, push_payload, send_signed, wait_for};
use robust_support::{redis_cli, two_daemons};
use testkit::git::Remote;

const REPO: &str = "attack/fence-gap";
const KEY: &str = "durhack-deployer:deploy:app";

fn first_event(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("events")).ok()?;
    text.lines().next()?.split(' ').nth(1)?.parse().ok()
}

#[test]
fn a_holder_whose_key_vanished_publishes_sites_while_the_other_daemon_holds_the_lock() {
    let Some(redis) = testkit::services::private_redis() else {
        return;
    };
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    // A fake privileged helper: records every connection and what it was sent.
    let sock = marks.path().join("helper.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let mut s = s;
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let at = Instant::now();
                let mut buf = Vec::new();
                let r = s.read_to_end(&mut buf);
                let text: String = String::from_utf8_lossy(&buf)
                    .chars()
                    .map(|c| {
                        if c.is_ascii_graphic() || c == ' ' {
                            c
                        } else {
                            '.'
                        }
                    })
                    .collect();
                seen.lock()
                    .unwrap()
                    .push((at, format!("{} bytes ({r:?}): {text}", buf.len())));
            }
        });
    }
    let repo = Remote::new("main");
    let spec = DeploymentSpec {
        name: "app".into(),
        repository: REPO.into(),
        branch: "main".into(),
        remote: repo.url(),
        body: format!(
            "commands = [[\"sh\", \"-c\", \"echo start $PPID $$ >> {m}/events; while [ ! -e {m}/go ]; do sleep 0.05; done\"]]\n\
             sites = {{ demo = \"nginx/demo.conf\" }}"
        ),
    };
    let setup = Setup::new(
        &format!(
            "redis_url = \"{}\"\nlock_ttl = \"120s\"\nhelper_socket = \"{}\"",
            redis.url(),
            sock.display()
        ),
        vec![spec],
    );
    let (mut a, mut b) = two_daemons(&setup);
    a.start();
    b.start();
    let ctx = || format!("A:\n{}\nB:\n{}", a.log(), b.log());

    let site = "server {\n    listen 127.0.0.1:8081;\n    server_name demo.test;\n    location / {\n        return 200 \"v1\";\n    }\n}\n";
    let sha = repo.commit("c1", &[("nginx/demo.conf", site)]);
    repo.push();
    assert_eq!(
        send_signed(
            a.port,
            "push",
            "gap-1",
            &push_payload(REPO, "main", None, &sha)
        )
        .unwrap(),
        202
    );
    let holder = wait_for(
        "the first holder's command",
        || first_event(marks.path()),
        ctx,
    );
    eprintln!("holder daemon pid {holder}; A={} B={}", a.pid(), b.pid());

    // Write-lock the ledger (reads still answer), then lose the key.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = setup.config().effective_database_url();
    let blocker = rt.block_on(Ledger::connect(&url)).unwrap();
    let mut conn = rt.block_on(blocker.pool().acquire()).unwrap();
    rt.block_on(sqlx::query("BEGIN EXCLUSIVE").execute(&mut *conn))
        .unwrap();
    assert_eq!(redis_cli(redis.port(), &["FLUSHALL"]), "OK");
    // The other daemon takes the deployment's lock (its key reappears with its own token).
    let token = wait_for(
        "the other daemon to take the lock",
        || Some(redis_cli(redis.port(), &["GET", KEY])).filter(|t| !t.is_empty()),
        ctx,
    );
    let other_took_it = Instant::now();
    eprintln!("the other daemon holds {KEY} with token {token}");
    // Now the first holder's command finishes.
    std::fs::write(marks.path().join("go"), "").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let still_other = redis_cli(redis.port(), &["GET", KEY]);
    let published: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t > other_took_it)
        .map(|(_, s)| s.chars().take(200).collect())
        .collect();
    rt.block_on(sqlx::query("COMMIT").execute(&mut *conn))
        .unwrap();
    {
        let _rt = rt.enter();
        drop(conn);
    }
    eprintln!("key after 3 s: {still_other}");
    eprintln!("helper requests after the other daemon took the lock: {published:#?}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        published.is_empty(),
        "the daemon that lost its lock (pid {holder}) sent the helper {} request(s) while the other \
         daemon held the deployment's lock (token {token}):\n{published:#?}\n{}",
        published.len(),
        ctx()
    );
}
