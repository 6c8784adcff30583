//! The runs ledger on both backends: SQLite, and a real PostgreSQL.

use deployer::ledger::Ledger;
use deployer::worker::{Run, RunStatus};

fn run(id: &str, deployment: &str, delivery: &str, status: RunStatus, at: i64) -> Run {
    Run {
        id: id.into(),
        deployment: deployment.into(),
        delivery: delivery.into(),
        sha: format!("{id:0>40}"),
        source: "webhook".into(),
        status,
        started_at: at,
        finished_at: Some(at + 1),
        log_path: None,
        error: None,
        entry: None,
    }
}

async fn runs_round_trip_and_queries(l: &Ledger) {
    for r in [
        run("a1", "app", "d1", RunStatus::Failed, 10),
        run("a2", "app", "d1", RunStatus::Success, 20),
        run("b1", "web", "d1", RunStatus::Success, 10),
        run("b2", "web", "d1", RunStatus::Cancelled, 30),
        run("c1", "api", "d1", RunStatus::Failed, 10),
        run("d1", "api", "d2", RunStatus::Superseded, 10),
    ] {
        l.insert_run(&r).await.unwrap();
    }
    // Only `api` failed d1 without ever deploying it.
    assert_eq!(
        l.failed_deployments_of_delivery("d1").await.unwrap(),
        vec!["api".to_owned()]
    );
    assert!(
        l.failed_deployments_of_delivery("d2")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        l.deployed_sha("app").await.unwrap(),
        Some(format!("{:0>40}", "a2"))
    );
    assert_eq!(l.deployed_sha("api").await.unwrap(), None);
    assert!(l.delivery_succeeded("app", "d1").await.unwrap());
    assert!(!l.delivery_succeeded("api", "d1").await.unwrap());
    let recent = l.recent_runs("api", 5).await.unwrap();
    assert_eq!(recent.len(), 1, "superseded rows are not runs: {recent:#?}");
    assert_eq!(recent[0].id, "c1");
    assert_eq!(l.runs_of("api").await.unwrap().len(), 2);

    let mut r = run("e1", "app", "d3", RunStatus::Running, 40);
    r.finished_at = None;
    r.log_path = Some("/var/lib/durhack-deployer/logs/app/e1.log".into());
    l.insert_run(&r).await.unwrap();
    assert_eq!(l.run("e1").await.unwrap().unwrap(), r);
    assert_eq!(l.close_interrupted_runs("app", 50).await.unwrap(), 1);
    let e1 = l.run("e1").await.unwrap().unwrap();
    assert_eq!(e1.status, RunStatus::Cancelled);
    assert_eq!(e1.finished_at, Some(50));
    // The redo of the cancelled run fails.
    let mut e2 = run("e2", "app", "d3", RunStatus::Failed, 60);
    e2.error = Some("boom".into());
    l.insert_run(&e2).await.unwrap();
    // A cancelled-then-failed delivery with no success is re-queued on redelivery.
    assert_eq!(
        l.failed_deployments_of_delivery("d3").await.unwrap(),
        vec!["app".to_owned()]
    );
    assert_eq!(l.run("missing").await.unwrap(), None);
}

#[tokio::test]
async fn runs_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("l.sqlite3").display()
    );
    runs_round_trip_and_queries(&Ledger::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn runs_on_postgres() {
    let Some(url) = testkit::services::postgres_url() else {
        return;
    };
    runs_round_trip_and_queries(&Ledger::open(&url).await.unwrap()).await;
}

/// Issue 10: fencing tokens, the fenced success and one terminal outcome per entry.
async fn fences_and_entry_outcomes(l: &Ledger) {
    let first = l.take_fence("durhack-deployer:deploy:app").await.unwrap();
    let second = l.take_fence("durhack-deployer:deploy:app").await.unwrap();
    assert_eq!((first.token, second.token), (1, 2));
    assert_eq!(l.take_fence("other").await.unwrap().token, 1);
    assert!(!l.fence_holds(&first).await.unwrap());
    assert!(l.fence_holds(&second).await.unwrap());

    let mut r = run("f1", "app", "d1", RunStatus::Running, 10);
    r.finished_at = None;
    r.entry = Some("e-1.json".into());
    l.insert_run(&r).await.unwrap();
    assert!(l.entry_outcome("app", "e-1.json").await.unwrap().is_none());
    // The holder of an older token can record no outcome at all.
    for status in [RunStatus::Success, RunStatus::Failed, RunStatus::Cancelled] {
        assert!(
            !l.finish_run_fenced("f1", status, 20, Some("x"), &first)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        l.run("f1").await.unwrap().unwrap().status,
        RunStatus::Running
    );
    assert!(
        l.finish_run_fenced("f1", RunStatus::Success, 20, None, &second)
            .await
            .unwrap()
    );
    // A run that is no longer running is not written again, even by the holder.
    assert!(
        !l.finish_run_fenced("f1", RunStatus::Failed, 21, Some("late"), &second)
            .await
            .unwrap()
    );
    let done = l.entry_outcome("app", "e-1.json").await.unwrap().unwrap();
    assert_eq!((done.id.as_str(), done.status), ("f1", RunStatus::Success));

    // A second terminal outcome for the same entry is refused by the ledger itself.
    let mut again = run("f2", "app", "d1", RunStatus::Stale, 30);
    again.entry = Some("e-1.json".into());
    assert!(l.insert_run(&again).await.is_err());
    // Cancelled rows may repeat (a run interrupted and redone).
    for id in ["f3", "f4"] {
        let mut c = run(id, "app", "d1", RunStatus::Cancelled, 40);
        c.entry = Some("e-2.json".into());
        l.insert_run(&c).await.unwrap();
    }
    assert!(l.entry_outcome("app", "e-2.json").await.unwrap().is_none());
}

#[tokio::test]
async fn fences_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("l.sqlite3").display()
    );
    fences_and_entry_outcomes(&Ledger::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn fences_on_postgres() {
    let Some(url) = testkit::services::postgres_url() else {
        return;
    };
    fences_and_entry_outcomes(&Ledger::open(&url).await.unwrap()).await;
}

/// Issue 14: reconcile state, the hook id learnt from deliveries, and the once-only claim of a
/// redelivery request, on each backend (the DDL differs).
async fn reconcile_and_redelivery(l: &Ledger) {
    use deployer::ledger::{DeliveryRecord, Outcome, ReconcileState, RedeliveryRequest};
    let mut state = ReconcileState {
        deployment: "app".into(),
        remote_head: Some("a".repeat(40)),
        checked_at: 10,
        action: "queued".into(),
        note: "n".into(),
    };
    l.save_reconcile_state(&state).await.unwrap();
    state.checked_at = 20;
    state.action = "deployed".into();
    l.save_reconcile_state(&state).await.unwrap();
    assert_eq!(l.reconcile_state("app").await.unwrap(), Some(state));
    assert_eq!(l.reconcile_state("web").await.unwrap(), None);

    assert_eq!(l.hook_id_of("Octo/Site").await.unwrap(), None);
    for (entry, at, hook) in [("e1", 1, Some("7")), ("e2", 2, Some("8")), ("e3", 3, None)] {
        let record = DeliveryRecord {
            entry: entry.into(),
            delivery: format!("guid-{entry}"),
            event: "push".into(),
            hook_id: hook.map(str::to_owned),
            received_at: at,
            handled_at: at,
            outcome: Outcome::Routed,
            reason: "r".into(),
            repository: Some("octo/site".into()),
            branch: Some("main".into()),
            sha: None,
            deployments: vec![],
        };
        l.record_delivery(&record).await.unwrap();
    }
    assert_eq!(
        l.hook_id_of("Octo/Site").await.unwrap().as_deref(),
        Some("8"),
        "the latest delivery that carried one, whatever the case"
    );

    l.claim_delivery("guid-received", "e9", 1).await.unwrap();
    assert!(l.delivery_known("guid-received").await.unwrap());
    assert!(!l.delivery_known("guid-new").await.unwrap());
    let request = RedeliveryRequest {
        guid: "guid-new".into(),
        repository: "octo/site".into(),
        hook_id: "8".into(),
        github_delivery_id: 12_345_678_901,
        event: Some("push".into()),
        delivered_at: Some("2026-12-01T00:00:00Z".into()),
        github_status: Some("Invalid HTTP Response: 502".into()),
        requested_at: 5,
        status_code: None,
        error: None,
    };
    assert!(l.claim_redelivery(&request).await.unwrap());
    assert!(!l.claim_redelivery(&request).await.unwrap(), "asked once");
    assert!(l.delivery_known("guid-new").await.unwrap());
    l.finish_redelivery("guid-new", Some(202), None)
        .await
        .unwrap();
    let history = l.redelivery_history(10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].status_code, Some(202));
    assert_eq!(history[0].github_delivery_id, 12_345_678_901);
    l.release_redelivery("guid-new").await.unwrap();
    assert!(!l.delivery_known("guid-new").await.unwrap());
    assert!(
        l.claim_redelivery(&request).await.unwrap(),
        "released: asked again"
    );
    // Claimed at 5 and never answered: released only by a sweep for claims before a later time.
    assert_eq!(l.release_unanswered_redeliveries(5).await.unwrap(), 0);
    assert_eq!(l.release_unanswered_redeliveries(6).await.unwrap(), 1);
    assert!(l.claim_redelivery(&request).await.unwrap());
    l.finish_redelivery("guid-new", Some(202), None)
        .await
        .unwrap();
    assert_eq!(
        l.release_unanswered_redeliveries(i64::MAX).await.unwrap(),
        0,
        "an answered request stays"
    );

    assert!(!l.sha_attempted("app", &"b".repeat(40)).await.unwrap());
    let mut r = run("r1", "app", "d1", RunStatus::Stale, 10);
    r.sha = "b".repeat(40);
    l.insert_run(&r).await.unwrap();
    assert!(
        !l.sha_attempted("app", &"b".repeat(40)).await.unwrap(),
        "a stale push is no attempt"
    );
    let mut r = run("r2", "app", "d2", RunStatus::Failed, 11);
    r.sha = "b".repeat(40);
    r.entry = Some("x.json".into());
    l.insert_run(&r).await.unwrap();
    assert!(l.sha_attempted("app", &"b".repeat(40)).await.unwrap());
    assert!(!l.sha_attempted("web", &"b".repeat(40)).await.unwrap());
    assert!(l.entry_has_runs("app", "x.json").await.unwrap());
    assert!(!l.entry_has_runs("app", "y.json").await.unwrap());
}

#[tokio::test]
async fn reconcile_and_redelivery_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("l.sqlite3").display()
    );
    reconcile_and_redelivery(&Ledger::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn reconcile_and_redelivery_on_postgres() {
    let Some(url) = testkit::services::postgres_url() else {
        return;
    };
    reconcile_and_redelivery(&Ledger::open(&url).await.unwrap()).await;
}
