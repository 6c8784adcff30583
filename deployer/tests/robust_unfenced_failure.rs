//! Attack (promises 2 and 4): only `success` is fenced. After its Redis key vanished, the old
//! holder A (which has not noticed yet) records its run `failed` with an unconditional UPDATE
//! (overwriting the `cancelled` the new holder B wrote over it) and removes the shared queue
//! entry. B, which really deployed the same entry, then cannot record its success (the entry
//! already has a terminal outcome): the ledger says `failed`, the deployed commit is not recorded,
//! and B's run is left `running`.

mod robust_support;

use std::path::Path;
use std::time::Duration;

use deployer::worker::RunStatus;
use robust_support::{DeploymentSpec, LedgerView, Setup, push_payload, send_signed, wait_for};
use robust_support::{redis_cli, two_daemons};
use testkit::git::Remote;

const REPO: &str = "attack/unfenced";

fn starts(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("events"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
        .collect()
}

#[test]
fn a_holder_that_lost_its_lock_records_failed_over_the_new_holders_success() {
    let Some(redis) = testkit::services::private_redis() else {
        return;
    };
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    let repo = Remote::new("main");
    // Fails only in the daemon named by the file `fail-<daemon pid>`.
    let spec = DeploymentSpec {
        name: "app".into(),
        repository: REPO.into(),
        branch: "main".into(),
        remote: repo.url(),
        body: format!(
            "commands = [[\"sh\", \"-c\", \"echo start $PPID $$ >> {m}/events; while [ ! -e {m}/go ]; do sleep 0.05; done; if [ -e {m}/fail-$PPID ]; then exit 1; fi; sleep 1\"]]"
        ),
    };
    let setup = Setup::new(
        &format!("redis_url = \"{}\"\nlock_ttl = \"120s\"", redis.url()),
        vec![spec],
    );
    let (mut a, mut b) = two_daemons(&setup);
    a.start();
    b.start();
    let ctx = || format!("A:\n{}\nB:\n{}", a.log(), b.log());
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    let sha = repo.commit("c1", &[("v", "1")]);
    repo.push();
    assert_eq!(
        send_signed(
            a.port,
            "push",
            "uf-1",
            &push_payload(REPO, "main", None, &sha)
        )
        .unwrap(),
        202
    );
    let first = wait_for(
        "the first holder's build",
        || starts(marks.path()).first().copied(),
        ctx,
    );
    assert_eq!(redis_cli(redis.port(), &["FLUSHALL"]), "OK");
    let second = wait_for(
        "the second holder's build",
        || starts(marks.path()).get(1).copied(),
        ctx,
    );
    assert_ne!(first, second);
    // The old holder's build fails (say, because the new holder's checkout cleaned its tree).
    std::fs::write(marks.path().join(format!("fail-{first}")), "").unwrap();
    std::fs::write(marks.path().join("go"), "").unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let runs = ledger.runs("app");
    eprintln!(
        "runs: {:#?}\nqueued: {:?}",
        runs.iter()
            .map(|r| (r.id.as_str(), r.status.as_str(), r.error.as_deref()))
            .collect::<Vec<_>>(),
        setup.queued()
    );
    eprintln!("{}", ctx());
    assert!(
        runs.iter().any(|r| r.status == RunStatus::Success),
        "the lock's current holder deployed the entry, but the one that lost the lock recorded it failed:\n{runs:#?}\n{}",
        ctx()
    );
}
