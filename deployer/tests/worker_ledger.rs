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
    l.finish_run("e1", RunStatus::Failed, 60, Some("boom"))
        .await
        .unwrap();
    let e1 = l.run("e1").await.unwrap().unwrap();
    assert_eq!(
        (e1.status, e1.error.as_deref()),
        (RunStatus::Failed, Some("boom"))
    );
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
