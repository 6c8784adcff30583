//! Dispatcher and delivery ledger, against SQLite and against the running PostgreSQL: routing of
//! GitHub-shaped events, deduplication, redelivery of a failed deploy, order, and repeats after a
//! crash.

mod ingest_support;

use std::time::Duration;

use deployer::config::Config;
use deployer::dispatch::{self, DeployRequest, deploy_queue_dir, inbox_dir};
use deployer::http::{AppState, app};
use deployer::ledger::{DeliveryRecord, Ledger, Outcome};
use deployer::queue::{Entry, Queue};
use deployer::worker::{Run, RunStatus};
use ingest_support::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Env {
    _dir: tempfile::TempDir,
    config: Config,
    ledger: Ledger,
    inbox: Queue,
}

async fn env(url: Option<String>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let top = url
        .as_ref()
        .map(|u| format!("database_url = \"{u}\""))
        .unwrap_or_default();
    let config = config(dir.path(), &top);
    let ledger = Ledger::open(&config.effective_database_url())
        .await
        .unwrap();
    let inbox = Queue::open(inbox_dir(&config)).unwrap();
    Env {
        _dir: dir,
        config,
        ledger,
        inbox,
    }
}

impl Env {
    /// Receives a delivery through the real endpoint; returns its inbox entry name (found in
    /// the inbox, or in the ledger if a running dispatcher got to it first).
    async fn receive(&self, event: &str, delivery: &str, payload: &Value) -> String {
        let known = |names: Vec<String>, receipts: Vec<DeliveryRecord>| {
            let mut all: Vec<String> = names
                .into_iter()
                .filter(|n| n.ends_with(&format!("-{delivery}.json")))
                .collect();
            all.extend(receipts.into_iter().map(|r| r.entry));
            all
        };
        let before = known(
            self.inbox.list().unwrap(),
            self.ledger.receipts_of_delivery(delivery).await.unwrap(),
        );
        let state = AppState::new(&self.config, self.inbox.clone());
        let res = app(state)
            .oneshot(signed(event, delivery, &to_vec(payload)))
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        for _ in 0..600 {
            let now = known(
                self.inbox.list().unwrap(),
                self.ledger.receipts_of_delivery(delivery).await.unwrap(),
            );
            if let Some(new) = now.into_iter().find(|n| !before.contains(n)) {
                return new;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the entry of {delivery} is neither in the inbox nor in the ledger");
    }

    async fn record(&self, entry: &str) -> DeliveryRecord {
        for _ in 0..600 {
            if let Some(r) = self.ledger.delivery_record(entry).await.unwrap() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{entry} was not recorded within 30 s");
    }

    fn deploys(&self, deployment: &str) -> Vec<(String, DeployRequest)> {
        let q = Queue::open(deploy_queue_dir(&self.config, deployment)).unwrap();
        q.list()
            .unwrap()
            .into_iter()
            .map(|n| {
                let r = serde_json::from_slice(&q.read(&n).unwrap().unwrap()).unwrap();
                (n, r)
            })
            .collect()
    }

    fn entry(&self, name: &str) -> Entry {
        Entry {
            name: name.to_owned(),
            contents: self.inbox.read(name).unwrap().unwrap(),
        }
    }

    fn start_dispatcher(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let token = CancellationToken::new();
        let t = token.clone();
        let config = std::sync::Arc::new(self.config.clone());
        let ledger = self.ledger.clone();
        let h = tokio::spawn(async move { dispatch::run(config, ledger, t).await.unwrap() });
        (token, h)
    }
}

async fn routing_dedup_and_redelivery(url: Option<String>) {
    let e = env(url).await;
    let (stop, dispatcher) = e.start_dispatcher();

    let r = e
        .record(&e.receive("ping", "p-1", &ping("octo-org/site")).await)
        .await;
    assert_eq!(r.outcome, Outcome::Ignored);
    assert!(r.reason.contains("ping"), "{}", r.reason);
    assert_eq!(r.hook_id.as_deref(), Some("468051229"));

    // Two enabled deployments on one repository and branch both get it; the disabled one and the
    // one on another branch do not.
    let main_push = push("octo-org/site", "main", &sha(1), &sha(2));
    let first = e.receive("push", "push-1", &main_push).await;
    let r = e.record(&first).await;
    assert_eq!(r.outcome, Outcome::Routed, "{}", r.reason);
    assert_eq!(r.deployments, vec!["app", "web"]);
    assert_eq!(
        (r.repository.as_deref(), r.branch.as_deref()),
        (Some("octo-org/site"), Some("main"))
    );
    assert_eq!(r.sha.as_deref(), Some(sha(2).as_str()));
    for d in ["app", "web"] {
        let deploys = e.deploys(d);
        assert_eq!(deploys.len(), 1, "{d}");
        let (name, req) = &deploys[0];
        assert_eq!(name, &first, "named after the inbox entry");
        assert_eq!(req.deployment, d);
        assert_eq!(req.delivery, "push-1");
        assert_eq!(req.repository, "octo-org/site");
        assert_eq!(req.branch, "main");
        assert_eq!(req.sha, sha(2));
        assert_eq!(req.before.as_deref(), Some(sha(1).as_str()));
        assert_eq!(req.source, "webhook");
        assert_eq!(req.received_at_ms, r.received_at);
    }
    assert!(e.deploys("old").is_empty() && e.deploys("staging").is_empty());

    let r = e
        .record(
            &e.receive(
                "push",
                "push-2",
                &push("octo-org/site", "staging", ZERO, &sha(3)),
            )
            .await,
        )
        .await;
    assert_eq!(
        (r.outcome, r.deployments.clone()),
        (Outcome::Routed, vec!["staging".to_owned()])
    );
    assert_eq!(
        e.deploys("staging")[0].1.before,
        None,
        "a new branch has no previous head"
    );

    for (event, delivery, payload, why) in [
        (
            "push",
            "del-1",
            branch_deletion("octo-org/site", "main", &sha(2)),
            "deleted",
        ),
        (
            "push",
            "tag-1",
            tag_push("octo-org/site", "v1.0.0", &sha(2)),
            "tag",
        ),
        (
            "push",
            "other-1",
            push("octo-org/site", "feature", &sha(1), &sha(4)),
            "no enabled deployment",
        ),
        (
            "push",
            "other-2",
            push("someone/else", "main", &sha(1), &sha(4)),
            "no enabled deployment",
        ),
        (
            "pull_request",
            "pr-1",
            pull_request("octo-org/site", &sha(5)),
            "pull_request",
        ),
        (
            "workflow_run",
            "wf-1",
            workflow_run("octo-org/site", "main", &sha(2)),
            "workflow_run",
        ),
    ] {
        let r = e.record(&e.receive(event, delivery, &payload).await).await;
        assert_eq!(r.outcome, Outcome::Ignored, "{delivery}");
        assert!(r.deployments.is_empty());
        assert!(r.reason.contains(why), "{delivery}: {}", r.reason);
    }
    assert_eq!(e.deploys("app").len(), 1, "nothing else reached app");

    // A redelivery of a delivery that is handled (deploys queued or done) is a duplicate.
    let again = e.receive("push", "push-1", &main_push).await;
    let r = e.record(&again).await;
    assert_eq!(r.outcome, Outcome::Duplicate, "{}", r.reason);
    assert!(r.deployments.is_empty());
    assert_eq!((e.deploys("app").len(), e.deploys("web").len()), (1, 1));

    // web's deploy failed and app's worked: a redelivery runs web again, and only web.
    for (id, deployment, status) in [
        ("run-a", "app", RunStatus::Success),
        ("run-w", "web", RunStatus::Failed),
    ] {
        e.ledger
            .insert_run(&Run {
                id: id.into(),
                deployment: deployment.into(),
                delivery: "push-1".into(),
                sha: sha(2),
                source: "webhook".into(),
                status,
                started_at: 1,
                finished_at: Some(2),
                log_path: None,
                error: None,
                entry: None,
            })
            .await
            .unwrap();
    }
    let retry = e.receive("push", "push-1", &main_push).await;
    let r = e.record(&retry).await;
    assert_eq!(
        (r.outcome, r.deployments.clone()),
        (Outcome::Routed, vec!["web".to_owned()]),
        "{}",
        r.reason
    );
    assert_eq!(e.deploys("app").len(), 1);
    let web = e.deploys("web");
    assert_eq!(web.len(), 2);
    assert_eq!(web[1].0, retry);
    assert_eq!(web[1].1.delivery, "push-1");

    // History: newest first, every receipt.
    let history = e.ledger.delivery_history(100).await.unwrap();
    assert_eq!(history.len(), 11);
    assert_eq!(history[0].entry, retry);
    assert_eq!(history[1].entry, again);
    let receipts = e.ledger.receipts_of_delivery("push-1").await.unwrap();
    let outcomes: Vec<Outcome> = receipts.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![Outcome::Routed, Outcome::Duplicate, Outcome::Routed]
    );
    assert_eq!(e.ledger.delivery_history(3).await.unwrap().len(), 3);
    assert!(e.inbox.list().unwrap().is_empty(), "the inbox is drained");

    stop.cancel();
    dispatcher.await.unwrap();
}

#[tokio::test]
async fn routing_dedup_and_redelivery_on_sqlite() {
    routing_dedup_and_redelivery(None).await;
}

#[tokio::test]
async fn routing_dedup_and_redelivery_on_postgres() {
    let Some(url) = testkit::services::postgres_url() else {
        return;
    };
    routing_dedup_and_redelivery(Some(url)).await;
}

/// The steps a crash can interrupt, repeated: nothing doubles.
async fn repeats_after_a_crash(url: Option<String>) {
    let e = env(url).await;
    let payload = push("octo-org/site", "main", &sha(1), &sha(2));
    let name = e.receive("push", "crash-1", &payload).await;
    let entry = e.entry(&name);

    // Died after claiming, before queueing: the claim is this entry's, so it routes normally.
    e.ledger.claim_delivery("crash-1", &name, 1).await.unwrap();
    dispatch::handle(&e.config, &e.ledger, &entry)
        .await
        .unwrap();
    // Died after recording, before removing the inbox file: handled again, changes nothing.
    dispatch::handle(&e.config, &e.ledger, &entry)
        .await
        .unwrap();
    assert_eq!(
        e.ledger
            .receipts_of_delivery("crash-1")
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(e.deploys("app").len(), 1);
    assert_eq!(e.deploys("web").len(), 1);

    // Died after queueing for one deployment, before recording: the repeat overwrites it.
    let name2 = e
        .receive(
            "push",
            "crash-2",
            &push("octo-org/site", "main", &sha(2), &sha(3)),
        )
        .await;
    e.ledger.claim_delivery("crash-2", &name2, 1).await.unwrap();
    let q = Queue::open(deploy_queue_dir(&e.config, "app")).unwrap();
    q.push_named(&name2, b"{\"partial\": true}").unwrap();
    dispatch::handle(&e.config, &e.ledger, &e.entry(&name2))
        .await
        .unwrap();
    let app = e.deploys("app");
    assert_eq!(app.len(), 2);
    assert_eq!(app[1].1.sha, sha(3));
    assert_eq!(
        e.ledger
            .delivery_record(&name2)
            .await
            .unwrap()
            .unwrap()
            .outcome,
        Outcome::Routed
    );

    // A damaged inbox entry is moved aside, not lost and not blocking.
    let bad = e.inbox.push("broken-1", b"{ not json").unwrap();
    dispatch::handle(&e.config, &e.ledger, &e.entry(&bad))
        .await
        .unwrap();
    let aside = Queue::open(dispatch::unreadable_dir(&e.config)).unwrap();
    assert_eq!(aside.list().unwrap(), vec![bad]);
}

#[tokio::test]
async fn repeats_after_a_crash_on_sqlite() {
    repeats_after_a_crash(None).await;
}

#[tokio::test]
async fn repeats_after_a_crash_on_postgres() {
    let Some(url) = testkit::services::postgres_url() else {
        return;
    };
    repeats_after_a_crash(Some(url)).await;
}

/// Entries are handled in name (arrival) order: of two receipts of one delivery id, the earlier
/// one is routed and the later one is the duplicate, however many there are.
#[tokio::test]
async fn the_inbox_is_drained_in_arrival_order() {
    let e = env(None).await;
    let mut pairs = Vec::new();
    for i in 0..15 {
        let delivery = format!("order-{i}");
        let payload = push("octo-org/site", "main", &sha(i), &sha(i + 1));
        let a = e.receive("push", &delivery, &payload).await;
        let b = e.receive("push", &delivery, &payload).await;
        pairs.push((a, b));
    }
    let (stop, dispatcher) = e.start_dispatcher();
    for (a, b) in &pairs {
        assert_eq!(e.record(a).await.outcome, Outcome::Routed, "{a}");
        assert_eq!(e.record(b).await.outcome, Outcome::Duplicate, "{b}");
    }
    let names: Vec<String> = e.deploys("app").into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        pairs.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>()
    );
    stop.cancel();
    dispatcher.await.unwrap();
}

/// A ledger that is down (here: locked by another writer) holds entries back in order; they are
/// handled once it is back, and the endpoint kept answering 202 throughout.
#[tokio::test]
async fn a_busy_ledger_delays_but_loses_nothing() {
    let e = env(None).await;
    let url = e.config.effective_database_url();
    let blocker = Ledger::connect(&url).await.unwrap();
    let mut conn = blocker.pool().acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *conn)
        .await
        .unwrap();

    let (stop, dispatcher) = e.start_dispatcher();
    let mut names = Vec::new();
    for i in 0..3 {
        names.push(
            e.receive(
                "push",
                &format!("busy-{i}"),
                &push("octo-org/site", "main", &sha(i), &sha(i + 1)),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        e.inbox.list().unwrap().len(),
        3,
        "nothing handled while the ledger is locked"
    );

    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    drop(conn);
    for n in &names {
        assert_eq!(e.record(n).await.outcome, Outcome::Routed);
    }
    assert_eq!(e.deploys("app").len(), 3);
    stop.cancel();
    dispatcher.await.unwrap();
}
