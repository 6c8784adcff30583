//! Issue 10, item 4: two real daemons sharing one state directory and one private Redis. When
//! the lock key vanishes (FLUSHALL, a Redis restarted without persistence) or Redis hangs
//! (SIGSTOP), the two can never both record a success, and a holder that cannot renew stops its
//! commands while its key still has time to live.

mod robust_support;

use std::path::Path;

use deployer::worker::RunStatus;
use robust_support::{DeploymentSpec, LedgerView, Setup, push_payload, send_signed, wait_for};
use robust_support::{redis_cli, two_daemons};
use testkit::git::Remote;

const REPO: &str = "robust/locked-app";
const KEY: &str = "durhack-deployer:deploy:app";

/// A command that logs `start <daemon pid> <own pid>` to `events`, waits for `go`, then logs
/// `end <daemon pid> <own pid>`.
fn body(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"commands = [["sh", "-c", "echo start $PPID $$ >> {d}/events; while [ ! -e {d}/go ]; do sleep 0.05; done; echo end $PPID $$ >> {d}/events"]]"#
    )
}

fn events(dir: &Path) -> Vec<(String, u32, i32)> {
    std::fs::read_to_string(dir.join("events"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.split(' ');
            Some((
                p.next()?.to_owned(),
                p.next()?.parse().ok()?,
                p.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// Two daemons, A and B, on one state directory: B's config differs only in its port.
fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn setup_with(redis_url: &str, marks: &Path) -> (Remote, Setup) {
    setup_full(redis_url, marks, "", "")
}

/// `top` and `extra` (for the deployment's table) add a helper and sites.
fn setup_full(redis_url: &str, marks: &Path, top: &str, extra: &str) -> (Remote, Setup) {
    let repo = Remote::new("main");
    let spec = DeploymentSpec {
        name: "app".into(),
        repository: REPO.into(),
        branch: "main".into(),
        remote: repo.url(),
        body: format!("{}\n{extra}", body(marks)),
    };
    let setup = Setup::new(&format!("redis_url = \"{redis_url}\"\n{top}"), vec![spec]);
    (repo, setup)
}

/// Which runs' logs show a site publication through the helper.
fn published_by(runs: &[deployer::worker::Run]) -> Vec<(String, RunStatus)> {
    runs.iter()
        .filter(|r| {
            r.log_path.as_ref().is_some_and(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.contains("helper write-site for demo: "))
            })
        })
        .map(|r| (r.id.clone(), r.status))
        .collect()
}

#[test]
fn after_the_lock_key_vanishes_only_one_daemon_records_a_success() {
    let Some(redis) = testkit::services::private_redis() else {
        return;
    };
    if !testkit::prereq::require(
        "redis-cli",
        testkit::prereq::have_program("redis-cli"),
        "the test empties its private Redis with FLUSHALL",
    ) {
        return;
    }
    // Sites are published through the real helper into a real nginx: the daemon that lost
    // its lock must never publish.
    let Some(nginx) = testkit::nginx::Nginx::start() else {
        return;
    };
    let mut policy = testkit::privhelper::PolicySpec::new(&nginx).site("demo", &["demo.test"]);
    policy.certbot_argv = vec!["/bin/true".into()];
    let Some(helper) = testkit::privhelper::PrivHelper::start(&nginx, &policy) else {
        return;
    };
    let marks = tempfile::tempdir().unwrap();
    let (repo, setup) = setup_full(
        &redis.url(),
        marks.path(),
        &format!("helper_socket = \"{}\"", helper.socket().display()),
        r#"sites = { demo = "nginx/demo.conf" }"#,
    );
    let (mut a, mut b) = two_daemons(&setup);
    a.start();
    b.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());

    let site = format!(
        "server {{\n    listen {};\n    server_name demo.test;\n    location / {{\n        return 200 \"v1\";\n    }}\n}}\n",
        nginx.listen()
    );
    let sha = repo.commit("c1", &[("v", "1"), ("nginx/demo.conf", &site)]);
    repo.push();
    let body = push_payload(REPO, "main", None, &sha);
    assert_eq!(send_signed(a.port, "push", "flush-1", &body).unwrap(), 202);
    let first = wait_for(
        "the first holder's command",
        || events(marks.path()).first().cloned(),
        || format!("A:\n{}\nB:\n{}", a.log(), b.log()),
    );
    // Redis loses everything, as a restart without persistence would.
    assert_eq!(redis_cli(redis.port(), &["FLUSHALL"]), "OK");
    // The other daemon takes the lock at once and starts its own run of the same entry.
    let second = wait_for(
        "the second holder's command",
        || events(marks.path()).get(1).cloned(),
        || format!("A:\n{}\nB:\n{}", a.log(), b.log()),
    );
    assert_ne!(first.1, second.1, "the other daemon took over");
    std::fs::write(marks.path().join("go"), "").unwrap();
    wait_for(
        "the queue to drain and no run to be running",
        || {
            let runs = ledger.runs("app");
            (setup.queued().is_empty()
                && !runs.is_empty()
                && runs.iter().all(|r| r.status != RunStatus::Running)
                && !alive(first.2)
                && !alive(second.2))
            .then_some(runs)
        },
        || format!("A:\n{}\nB:\n{}", a.log(), b.log()),
    );
    let runs = ledger.runs("app");
    let successes: Vec<_> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Success)
        .collect();
    eprintln!(
        "[robust_locks/flushall] runs: {:?}",
        runs.iter()
            .map(|r| (r.delivery.as_str(), r.status.as_str()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        successes.len(),
        1,
        "one success, never two: {runs:#?}\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(successes[0].sha, sha);
    let published = published_by(&runs);
    assert_eq!(
        published,
        vec![(successes[0].id.clone(), RunStatus::Success)],
        "only the run recorded successful published sites\nA:\n{}\nB:\n{}\nhelper:\n{}",
        a.log(),
        b.log(),
        helper.log()
    );
    assert!(nginx.sites_dir().join("demo.conf").exists());
}

#[test]
fn a_hung_redis_stops_the_holders_commands_while_its_key_still_lives() {
    let Some(mut redis) = testkit::services::private_redis() else {
        return;
    };
    if !testkit::prereq::require(
        "redis-cli",
        testkit::prereq::have_program("redis-cli"),
        "the test reads the lock key's remaining TTL",
    ) {
        return;
    }
    let marks = tempfile::tempdir().unwrap();
    let (repo, setup) = setup_with(&redis.url(), marks.path());
    let (mut a, mut b) = two_daemons(&setup);
    a.start();
    b.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());

    let sha = repo.commit("c1", &[("v", "1")]);
    repo.push();
    let body = push_payload(REPO, "main", None, &sha);
    assert_eq!(send_signed(a.port, "push", "hang-1", &body).unwrap(), 202);
    let first = wait_for(
        "the holder's command",
        || events(marks.path()).first().cloned(),
        || format!("A:\n{}\nB:\n{}", a.log(), b.log()),
    );
    // How long the key has left when Redis hangs: the moment another daemon could take the
    // lock over. The holder must have stopped its command before it.
    let key_left: u64 = redis_cli(redis.port(), &["PTTL", KEY]).parse().unwrap();
    let hung_at = std::time::Instant::now();
    let redis_pid = nix::unistd::Pid::from_raw(redis.pid().expect("running") as i32);
    nix::sys::signal::kill(redis_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The holder cannot renew: it must stop its command on its own.
    wait_for(
        "the holder to stop its command",
        || (!alive(first.2)).then_some(()),
        || format!("A:\n{}\nB:\n{}", a.log(), b.log()),
    );
    let stopped_after = hung_at.elapsed();
    nix::sys::signal::kill(redis_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    eprintln!(
        "[robust_locks/sigstop] the key had {key_left} ms to live when Redis hung; the holder \
         stopped its command {} ms later",
        stopped_after.as_millis()
    );
    // Not a performance figure: the order the lock protocol promises (stop before the key can
    // expire, with half the TTL to spare).
    assert!(
        stopped_after.as_millis() < u128::from(key_left),
        "the holder stopped its command only after its key could have expired: another daemon \
         could have run alongside\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    std::fs::write(marks.path().join("go"), "").unwrap();
    wait_for(
        "the push deployed",
        || {
            let runs = ledger.runs("app");
            (setup.queued().is_empty()
                && runs.iter().any(|r| r.status == RunStatus::Success)
                && runs.iter().all(|r| r.status != RunStatus::Running))
            .then_some(())
        },
        || format!("A:\n{}\nB:\n{}", a.log(), b.log()),
    );
    let runs = ledger.runs("app");
    assert_eq!(
        runs.iter()
            .filter(|r| r.status == RunStatus::Success)
            .count(),
        1,
        "{runs:#?}"
    );
    let ends: Vec<_> = events(marks.path())
        .into_iter()
        .filter(|e| e.0 == "end")
        .collect();
    assert!(
        ends.iter().all(|e| e.2 != first.2),
        "the stopped command never finished"
    );
    redis.stop();
}
