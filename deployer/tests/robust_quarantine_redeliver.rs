//! Attack (promise 2, README "Redelivering"): an inbox entry whose routing failed after its
//! delivery id was claimed (here: the deploy queue could not be written for ~10 s, as on a full or
//! failing disk, while the ledger answered) is quarantined. The delivery was never queued or run,
//! yet a Redeliver from GitHub is recorded `duplicate` (the claim exists and no deployment has a
//! failed/cancelled run for it), so the accepted push is never deployed.

mod robust_support;

use std::time::{Duration, Instant};

use robust_support::{
    Daemon, DeploymentSpec, LedgerView, Setup, push_payload, send_signed, wait_for,
};
use testkit::git::Remote;

const REPO: &str = "attack/quarantine";

#[test]
fn a_redeliver_of_a_quarantined_push_is_a_duplicate_and_never_deploys() {
    let repo = Remote::new("main");
    let setup = Setup::new(
        "",
        vec![DeploymentSpec {
            name: "app".into(),
            repository: REPO.into(),
            branch: "main".into(),
            remote: repo.url(),
            body: r#"commands = [["true"]]"#.into(),
        }],
    );
    let mut d = Daemon::new(&setup);
    d.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());

    // The deploy queue cannot be written for a while (stands in for ENOSPC/EIO on state_dir).
    let q = setup.state_dir().join("queues/deploy-app");
    let aside = setup.state_dir().join("queues/deploy-app.aside");
    std::fs::rename(&q, &aside).unwrap();
    std::fs::write(&q, "not a directory").unwrap();

    let sha = repo.commit("c1", &[("v", "1")]);
    repo.push();
    let body = push_payload(REPO, "main", None, &sha);
    assert_eq!(send_signed(d.port, "push", "q-1", &body).unwrap(), 202);
    let quarantine = setup.state_dir().join("queues/inbox-quarantine");
    wait_for(
        "the entry quarantined",
        || {
            (std::fs::read_dir(&quarantine)
                .map(|r| r.count())
                .unwrap_or(0)
                > 0)
            .then_some(())
        },
        || d.log(),
    );
    // The disk is fine again.
    std::fs::remove_file(&q).unwrap();
    std::fs::rename(&aside, &q).unwrap();

    // GitHub: Recent Deliveries -> Redeliver (same delivery id, same payload).
    assert_eq!(send_signed(d.port, "push", "q-1", &body).unwrap(), 202);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if ledger.deployed("app").as_deref() == Some(sha.as_str()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let records: Vec<_> = ledger
        .deliveries()
        .into_iter()
        .map(|r| (r.delivery, r.outcome.as_str(), r.reason))
        .collect();
    panic!("the accepted push was never deployed, even after a Redeliver:\n{records:#?}");
}
