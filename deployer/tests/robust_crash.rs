//! Crash suite: a stream of signed pushes for two deployments of one repository with a few
//! hundred real commits, while the real daemon is killed with SIGKILL at random moments (during
//! runs, right after an acknowledgement, in the middle of bursts of concurrent deliveries that
//! arrive out of order, and force pushes onto commits off the history that the next push rewrites
//! away) and restarted. At the end every delivery answered 2xx is in the ledger exactly once and
//! has exactly one terminal outcome for the deployment it was routed to, each deployment's tree
//! is at its branch head, no queue entry is left and no delivery has two successful runs.
//!
//! Bounded by default; `DURHACK_LONG_SUITES=1` (or `scripts/soak.sh`) for the long version.
//! `DURHACK_SEED=<n>` replays a run.

mod robust_support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use deployer::worker::RunStatus;
use robust_support::{
    Daemon, DeploymentSpec, LedgerView, Rng, Setup, long, push_payload, send_signed, wait_for,
};
use testkit::git::{Remote, git};
use testkit::prereq;

const REPOSITORY: &str = "robust/crash-app";

#[derive(Debug, Clone)]
struct Sent {
    delivery: String,
    deployment: &'static str,
    sha: String,
    /// `Some(status)` when an answer came back; `None` when the daemon died first.
    answer: Option<u16>,
}

/// One deployment's branch as the test pushes it forward through the shared history.
#[derive(Debug)]
struct Branch {
    deployment: &'static str,
    branch: &'static str,
    /// Index into the history of the commit the branch is at (or last was, before a force
    /// push onto a commit off the history).
    at: Option<usize>,
    /// The commit the branch is at in the remote.
    head: Option<String>,
}

struct Stream<'a> {
    repo: &'a Remote,
    history: &'a [String],
    branches: [Branch; 2],
    sent: Vec<Sent>,
    next_id: u64,
}

impl Stream<'_> {
    /// Moves `branch` forward by `steps` commits in the remote; returns the pushes (before,
    /// after) GitHub would send, one per step as if pushed one at a time.
    fn advance(&mut self, b: usize, steps: usize) -> Vec<(Option<String>, String)> {
        let mut pushes = Vec::new();
        for _ in 0..steps {
            let branch = &mut self.branches[b];
            let next = branch.at.map_or(0, |i| i + 1);
            if next >= self.history.len() {
                break;
            }
            let before = branch.head.clone();
            let after = self.history[next].clone();
            // Forced: after a diverging force push this rewrites the branch back onto the
            // history (the diverged commit is force-pushed away).
            git(
                &self.repo.work(),
                &[
                    "push",
                    "--quiet",
                    "--force",
                    "origin",
                    &format!("+{after}:refs/heads/{}", branch.branch),
                ],
            );
            branch.at = Some(next);
            branch.head = Some(after.clone());
            pushes.push((before, after));
        }
        pushes
    }

    /// Force-pushes `branch` onto a new commit whose parent is a few commits back: the commits
    /// in between leave the branch. Returns the push GitHub would send.
    fn diverge(&mut self, b: usize, back: usize) -> Option<(Option<String>, String)> {
        let at = self.branches[b].at?;
        let base = &self.history[at.saturating_sub(back)];
        self.next_id += 1;
        let tree = format!("{}^{{tree}}", self.history[at]);
        let message = format!("diverged {}", self.next_id);
        let sha = git(
            &self.repo.work(),
            &["commit-tree", &tree, "-p", base, "-m", &message],
        );
        let branch = &mut self.branches[b];
        git(
            &self.repo.work(),
            &[
                "push",
                "--quiet",
                "--force",
                "origin",
                &format!("+{sha}:refs/heads/{}", branch.branch),
            ],
        );
        let before = branch.head.replace(sha.clone());
        Some((before, sha))
    }

    fn send_diverged(&mut self, port: u16, b: usize, back: usize) -> Option<Sent> {
        let (before, after) = self.diverge(b, back)?;
        let (mut sent, body) = self.prepare(b, before, after);
        sent.answer = send_signed(port, "push", &sent.delivery, &body).ok();
        self.sent.push(sent.clone());
        Some(sent)
    }

    fn delivery_id(&mut self) -> String {
        self.next_id += 1;
        format!(
            "crash-{:06}-{:08x}",
            self.next_id,
            self.next_id * 2654435761 % (1 << 32)
        )
    }

    fn prepare(&mut self, b: usize, before: Option<String>, after: String) -> (Sent, Vec<u8>) {
        let (name, deployment) = (self.branches[b].branch, self.branches[b].deployment);
        let body = push_payload(REPOSITORY, name, before.as_deref(), &after);
        let sent = Sent {
            delivery: self.delivery_id(),
            deployment,
            sha: after,
            answer: None,
        };
        (sent, body)
    }

    fn send_one(&mut self, port: u16, b: usize, steps: usize) -> Option<Sent> {
        let (before, after) = self.advance(b, steps).pop()?;
        let (mut sent, body) = self.prepare(b, before, after);
        sent.answer = send_signed(port, "push", &sent.delivery, &body).ok();
        self.sent.push(sent.clone());
        Some(sent)
    }

    /// Several pushes sent at once, in shuffled order, each on its own connection.
    fn burst(
        &mut self,
        port: u16,
        rng: &mut Rng,
        size: usize,
        kill_after: Option<Duration>,
        daemon: &mut Daemon,
    ) -> usize {
        let mut batch = Vec::new();
        for _ in 0..size {
            let b = rng.below(2) as usize;
            for (before, after) in self.advance(b, 1) {
                batch.push(self.prepare(b, before, after));
            }
        }
        rng.shuffle(&mut batch);
        let n = batch.len();
        let handles: Vec<_> = batch
            .into_iter()
            .map(|(mut sent, body)| {
                std::thread::spawn(move || {
                    sent.answer = send_signed(port, "push", &sent.delivery, &body).ok();
                    sent
                })
            })
            .collect();
        if let Some(after) = kill_after {
            std::thread::sleep(after);
            daemon.kill9();
        }
        for h in handles {
            self.sent.push(h.join().unwrap());
        }
        n
    }
}

/// Waits (bounded) until some run of either deployment is `running`, so the kill lands in one.
fn wait_for_a_running_run(ledger: &LedgerView, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        for d in ["alpha", "beta"] {
            if ledger
                .try_runs(d)
                .is_some_and(|runs| runs.iter().any(|r| r.status == RunStatus::Running))
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn deliveries_survive_sigkill_at_random_moments() {
    if !prereq::require(
        "git",
        prereq::have_program("git"),
        "deploys check out real commits",
    ) {
        return;
    }
    let started = Instant::now();
    let mut rng = Rng::from_env("robust_crash");
    let (commits, kills_wanted, deliveries_wanted) =
        if long() { (600, 30, 400) } else { (300, 6, 70) };

    // A few hundred real commits, each changing files, built before anything is pushed.
    let repo = Remote::new("main");
    let mut history = Vec::with_capacity(commits);
    for i in 0..commits {
        let version = format!("{i}\n");
        let part = format!("src/part-{}.txt", i % 17);
        let content = format!("part touched by commit {i}\n");
        history.push(repo.commit(
            &format!("commit {i}"),
            &[
                ("version.txt", version.as_str()),
                (part.as_str(), content.as_str()),
            ],
        ));
    }
    eprintln!(
        "[robust_crash] {commits} commits made in {:?}",
        started.elapsed()
    );

    // A build that takes a moment, so kills land inside runs; it records what it built.
    let body =
        r#"commands = [["sh", "-c", "sleep 0.15; cat version.txt > ../$DEPLOY_NAME.built"]]"#;
    let spec = |name: &str, branch: &str| DeploymentSpec {
        name: name.into(),
        repository: REPOSITORY.into(),
        branch: branch.into(),
        remote: repo.url(),
        body: body.into(),
    };
    let setup = Setup::new("", vec![spec("alpha", "main"), spec("beta", "release")]);
    let mut daemon = Daemon::new(&setup);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());

    let mut stream = Stream {
        repo: &repo,
        history: &history,
        branches: [
            Branch {
                deployment: "alpha",
                branch: "main",
                at: None,
                head: None,
            },
            Branch {
                deployment: "beta",
                branch: "release",
                at: None,
                head: None,
            },
        ],
        sent: Vec::new(),
        next_id: 0,
    };
    let mut kills: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut forced: BTreeMap<&'static str, u32> = BTreeMap::new();
    let port = setup.port;
    while kills.values().sum::<u32>() < kills_wanted || stream.sent.len() < deliveries_wanted {
        let kills_so_far: u32 = kills.values().sum();
        let may_kill = kills_so_far < kills_wanted;
        match rng.below(6) {
            // Ordinary traffic: one push, a step or several ahead.
            0 => {
                let b = rng.below(2) as usize;
                let steps = rng.range(1, 4) as usize;
                stream.send_one(port, b, steps);
            }
            // A burst that arrives out of order, maybe cut short by a kill.
            1 => {
                let size = rng.range(3, 10) as usize;
                let kill = may_kill && rng.chance(60);
                let after = kill.then(|| Duration::from_millis(rng.range(0, 40)));
                stream.burst(port, &mut rng, size, after, &mut daemon);
                if kill {
                    *kills.entry("during a burst").or_default() += 1;
                }
            }
            // Killed right after the 202 went out.
            2 if may_kill => {
                let b = rng.below(2) as usize;
                stream.send_one(port, b, 1);
                daemon.kill9();
                *kills.entry("right after an acknowledgement").or_default() += 1;
            }
            // Killed while a deploy runs.
            3 if may_kill => {
                let b = rng.below(2) as usize;
                stream.send_one(port, b, rng.range(1, 3) as usize);
                let landed = wait_for_a_running_run(&ledger, Duration::from_secs(5));
                std::thread::sleep(Duration::from_millis(rng.range(0, 100)));
                daemon.kill9();
                let what = if landed {
                    "during a run"
                } else {
                    "waiting for a run (none started within 5 s)"
                };
                *kills.entry(what).or_default() += 1;
            }
            // Killed at an arbitrary moment.
            4 if may_kill => {
                std::thread::sleep(Duration::from_millis(rng.range(0, 400)));
                daemon.kill9();
                *kills.entry("at a random moment").or_default() += 1;
            }
            // A force push: the branch moves onto a commit off the history, whose delivery
            // races the next push that rewrites it away again.
            5 => {
                let b = rng.below(2) as usize;
                let back = rng.range(1, 3) as usize;
                stream.send_diverged(port, b, back);
                *forced.entry(stream.branches[b].deployment).or_default() += 1;
            }
            _ => {
                let b = rng.below(2) as usize;
                stream.send_one(port, b, 1);
            }
        }
        if !daemon.is_running() {
            daemon.kill9();
            daemon.start();
        }
    }

    // The last word for each deployment: a push answered by a daemon left alone.
    let mut newest = HashMap::new();
    for b in 0..2 {
        let sent = stream
            .send_one(port, b, 1)
            .expect("the history is longer than the pushes");
        assert_eq!(sent.answer, Some(202), "the final push is accepted");
        newest.insert(sent.deployment, sent.sha);
    }

    let context = || {
        format!(
            "queued: {:?}\nalpha runs: {:#?}\nbeta runs: {:#?}\ndaemon log tail:\n{}",
            setup.queued(),
            ledger
                .try_runs("alpha")
                .map(|r| r.into_iter().rev().take(5).collect::<Vec<_>>()),
            ledger
                .try_runs("beta")
                .map(|r| r.into_iter().rev().take(5).collect::<Vec<_>>()),
            daemon.log()
        )
    };
    wait_for(
        "both deployments at their newest pushed commit with nothing queued or running",
        || {
            let settled = ["alpha", "beta"].iter().all(|d| {
                ledger.deployed(d).as_deref() == newest.get(d).map(String::as_str)
                    && ledger
                        .runs(d)
                        .iter()
                        .all(|r| r.status != RunStatus::Running)
            }) && setup.queued().is_empty();
            settled.then_some(())
        },
        context,
    );
    let status = daemon.terminate();
    assert!(
        status.success(),
        "graceful stop after the storm: {status}\n{}",
        daemon.log()
    );

    // ---- the accounting ----
    let records = ledger.deliveries();
    let mut records_per_delivery: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        *records_per_delivery.entry(r.delivery.as_str()).or_default() += 1;
    }
    let acked: Vec<&Sent> = stream
        .sent
        .iter()
        .filter(|s| s.answer == Some(202))
        .collect();
    let unanswered: Vec<&Sent> = stream.sent.iter().filter(|s| s.answer.is_none()).collect();
    let other: Vec<&Sent> = stream
        .sent
        .iter()
        .filter(|s| s.answer.is_some_and(|a| a != 202))
        .collect();
    let unanswered_recorded = unanswered
        .iter()
        .filter(|s| records_per_delivery.contains_key(s.delivery.as_str()))
        .count();
    let mut runs_by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut successes: HashMap<(String, String), usize> = HashMap::new();
    let mut terminal_of: HashMap<(String, String), Vec<RunStatus>> = HashMap::new();
    for d in ["alpha", "beta"] {
        for r in ledger.runs(d) {
            *runs_by_status.entry(r.status.to_string()).or_default() += 1;
            if r.status == RunStatus::Success {
                *successes
                    .entry((d.to_owned(), r.delivery.clone()))
                    .or_default() += 1;
            }
            if !matches!(r.status, RunStatus::Running | RunStatus::Cancelled) {
                terminal_of
                    .entry((d.to_owned(), r.delivery.clone()))
                    .or_default()
                    .push(r.status);
            }
        }
    }
    let leftover_files = setup.queue_files();
    if !leftover_files.is_empty() {
        eprintln!("[robust_crash] files left in the queue directories: {leftover_files:?}");
    }
    let kills_total: u32 = kills.values().sum();
    eprintln!(
        "[robust_crash] {} deliveries sent: {} answered 202, {} unanswered (daemon killed; {} of \
         them recorded anyway), {} other answers; {kills_total} SIGKILLs {kills:?}; {} daemon \
         starts ({} retried after EADDRINUSE); force pushes {forced:?}; {} ledger records; runs by status {runs_by_status:?}; {} queue files left \
         (temporaries included); took {:?}",
        stream.sent.len(),
        acked.len(),
        unanswered.len(),
        unanswered_recorded,
        other.len(),
        daemon.starts,
        daemon.bind_retries,
        records.len(),
        leftover_files.len(),
        started.elapsed()
    );

    assert!(other.is_empty(), "answers other than 202: {other:#?}");
    assert!(kills_total >= kills_wanted, "{kills:?}");
    let not_once: Vec<(&str, usize)> = acked
        .iter()
        .map(|s| {
            let n = records_per_delivery
                .get(s.delivery.as_str())
                .copied()
                .unwrap_or(0);
            (s.delivery.as_str(), n)
        })
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(
        not_once.is_empty(),
        "{} of {} acknowledged deliveries are not in the ledger exactly once: {not_once:?}",
        not_once.len(),
        acked.len()
    );
    let not_one_outcome: Vec<(&str, Option<&Vec<RunStatus>>)> = acked
        .iter()
        .map(|s| {
            let outcomes = terminal_of.get(&(s.deployment.to_owned(), s.delivery.clone()));
            (s.delivery.as_str(), outcomes)
        })
        .filter(|(_, o)| o.is_none_or(|o| o.len() != 1 || o[0] == RunStatus::Failed))
        .collect();
    assert!(
        not_one_outcome.is_empty(),
        "{} of {} acknowledged pushes do not have exactly one terminal outcome (deployed, \
         superseded or stale) for the deployment they were routed to: {not_one_outcome:?}",
        not_one_outcome.len(),
        acked.len()
    );
    let twice: Vec<_> = successes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "deliveries with more than one successful run: {twice:?}"
    );
    assert_eq!(
        runs_by_status.get("running"),
        None,
        "runs left running: {runs_by_status:?}"
    );
    assert!(
        setup.queued().is_empty(),
        "queue entries left: {:?}",
        setup.queued()
    );
    for d in ["alpha", "beta"] {
        let want = &newest[d];
        assert_eq!(ledger.deployed(d).as_ref(), Some(want), "{d}: ledger");
        assert_eq!(
            &testkit::git::head(&setup.deploy_path(d)),
            want,
            "{d}: working tree"
        );
        let index = history.iter().position(|h| h == want).unwrap();
        let built = std::fs::read_to_string(setup.dir.path().join(format!("deploy/{d}.built")))
            .unwrap_or_default();
        assert_eq!(built.trim(), index.to_string(), "{d}: the build output");
    }
}
