//! Locks: flock and Redis locks exclude each other's holders, two sets of workers on one state
//! never run the same deployment at once, and deploys wait out a Redis outage.

mod worker_support;

use std::time::Duration;

use deployer::lock::{LocalLocks, Locks, RedisLocks, deploy_lock};
use deployer::worker::RunStatus;
use testkit::git::head;
use testkit::services::{private_redis, redis_url};
use worker_support::{Env, parse, with_status};

async fn exclusive(locks: &Locks, key: &str) {
    let a = locks
        .try_acquire(key)
        .await
        .unwrap()
        .expect("free at first");
    assert!(
        locks.try_acquire(key).await.unwrap().is_none(),
        "a held lock was handed out twice"
    );
    a.release().await;
    let b = locks
        .try_acquire(key)
        .await
        .unwrap()
        .expect("free after release");
    b.release().await;
}

#[tokio::test]
async fn local_locks_exclude_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let locks = Locks::Local(LocalLocks::new(dir.path().to_owned()));
    exclusive(&locks, &deploy_lock("app")).await;
    exclusive(&locks, deployer::lock::NGINX_LOCK).await;
    assert!(locks.try_acquire("somebody:else").await.is_err());
}

#[tokio::test]
async fn redis_locks_exclude_and_release_only_their_own_key() {
    let Some(url) = redis_url() else {
        return;
    };
    let locks = Locks::Redis(RedisLocks::new(&url).unwrap());
    let key = deploy_lock(&format!("locktest-{}", std::process::id()));
    exclusive(&locks, &key).await;

    // Compare-and-delete: a holder whose key was taken over does not delete the new owner's.
    let a = locks.try_acquire(&key).await.unwrap().unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("someone-else")
        .query_async(&mut con)
        .await
        .unwrap();
    a.release().await;
    let owner: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some("someone-else"));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "our SET had no TTL");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
}

/// Two sets of workers (as two deployer processes would run them) on one state dir and one
/// queue. Every deploy makes a directory that must not exist yet, so an overlap fails a run.
async fn two_processes_never_overlap(top: &str) {
    let body = r#"commands = [["sh", "-c", "mkdir ../running || { echo OVERLAP; exit 7; }; sleep 0.3; rmdir ../running"]]"#;
    let mut env = Env::new(top, body).await;
    env.start().await;
    let other = parse(&worker_support::config_text(
        env.state.path(),
        &env.repo,
        top,
        body,
    ));
    let _other_shutdown = env.start_other(other).await;
    let mut last = String::new();
    for wave in 0..4 {
        last = env.repo.commit(&format!("wave {wave}"), &[]);
        env.repo.push();
        env.enqueue(&last, &format!("push-{wave}"));
        // An operator redeploy of the same commit: deployed again, never alongside.
        env.enqueue_from(&last, &format!("cli-{wave}"), "cli");
        env.wait_idle().await;
    }
    let runs = env.wait_idle().await;
    assert!(
        with_status(&runs, RunStatus::Failed).is_empty(),
        "two runs overlapped: {runs:#?}"
    );
    assert!(
        with_status(&runs, RunStatus::Success).len() >= 4,
        "{runs:#?}"
    );
    assert_eq!(head(&env.deploy_path()), last);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_local_locks_never_run_one_deployment_at_once() {
    two_processes_never_overlap("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_redis_locks_never_run_one_deployment_at_once() {
    let Some(url) = redis_url() else {
        return;
    };
    two_processes_never_overlap(&format!("redis_url = \"{url}\"")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_wait_while_redis_is_down_and_resume_when_it_returns() {
    let Some(mut redis) = private_redis() else {
        return;
    };
    let mut env = Env::new(
        &format!("redis_url = \"{}\"", redis.url()),
        r#"commands = [["true"]]"#,
    )
    .await;
    env.start().await;
    let first = env.repo.commit("first", &[]);
    env.repo.push();
    env.enqueue(&first, "d1");
    env.wait_runs("the first deploy", |r| {
        r.iter().any(|r| r.status == RunStatus::Success)
    })
    .await;

    redis.stop();
    let second = env.repo.commit("second", &[]);
    env.repo.push();
    env.enqueue(&second, "d2");
    // Long enough for the worker to have tried (and failed) to take the lock a few times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.runs().await.len(), 1, "a deploy ran without its lock");
    assert_eq!(env.queue().list().unwrap().len(), 1);

    redis.start();
    let runs = env
        .wait_runs("the deploy after Redis returned", |r| {
            with_status(r, RunStatus::Success).len() == 2
        })
        .await;
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(head(&env.deploy_path()), second);
    env.wait_idle().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_redis_lock_is_taken_over_stops_and_is_redone_later() {
    let Some(redis) = private_redis() else {
        return;
    };
    let mut env = Env::new(
        &format!("redis_url = \"{}\"", redis.url()),
        r#"commands = [["sh", "-c", "echo attempt >> ../attempts; echo $$ > ../started; while [ ! -e ../go ]; do sleep 0.05; done"]]"#,
    )
    .await;
    let sha = env.repo.commit("c", &[]);
    env.repo.push();
    env.start().await;
    env.enqueue(&sha, "d1");
    let started = env.state.path().join("started");
    worker_support::wait_for_file(&started).await;
    let first_pid: i32 = std::fs::read_to_string(&started)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::fs::remove_file(&started).unwrap();

    // Someone else now holds the key (as after an expiry during an outage).
    let client = redis::Client::open(redis.url().as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let key = deploy_lock("app");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("another-process")
        .query_async(&mut con)
        .await
        .unwrap();
    let runs = env
        .wait_runs("the run stopped at the next renewal", |r| {
            r.iter().any(|r| r.status == RunStatus::Cancelled)
        })
        .await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(
        env.queue().list().unwrap().len(),
        1,
        "the push stays queued"
    );
    let proc_gone = || {
        !std::path::Path::new(&format!("/proc/{first_pid}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{first_pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
    };
    let start = std::time::Instant::now();
    while !proc_gone() {
        assert!(
            start.elapsed() < worker_support::DEADLINE,
            "the build went on without its lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The other holder lets go: the push is redone.
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    std::fs::write(env.state.path().join("go"), "").unwrap();
    let runs = env
        .wait_runs("the redo", |r| {
            r.iter().any(|r| r.status == RunStatus::Success)
        })
        .await;
    assert_eq!(runs.len(), 2, "{runs:#?}");
    env.wait_idle().await;
    let attempts = std::fs::read_to_string(env.state.path().join("attempts")).unwrap();
    assert_eq!(attempts.lines().count(), 2);
    env.stop().await;
}
