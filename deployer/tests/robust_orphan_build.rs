//! Attack (promise 4): SIGKILL the daemon that holds a deployment's Redis lock while its build
//! runs. The build is in its own process group and nothing ties it to the daemon's life (no
//! PR_SET_PDEATHSIG, no kill_on_drop), so it keeps running; the lock's key expires after
//! `lock_ttl` and the other daemon starts its own run of the same entry, in the same tree, while
//! the orphaned build is still going: "its commands are stopped before the lock could expire"
//! does not hold.

mod robust_support;

use std::path::Path;
use std::time::Duration;

use robust_support::two_daemons;
use robust_support::{DeploymentSpec, Setup, push_payload, send_signed, wait_for};
use testkit::git::Remote;

const REPO: &str = "attack/orphan";

fn starts(dir: &Path) -> Vec<(u32, i32)> {
    std::fs::read_to_string(dir.join("events"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.split(' ');
            (p.next()? == "start").then_some(())?;
            Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

#[test]
fn a_sigkilled_holders_build_outlives_its_lock_and_overlaps_the_next_holder() {
    let Some(redis) = testkit::services::private_redis() else {
        return;
    };
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    let repo = Remote::new("main");
    let spec = DeploymentSpec {
        name: "app".into(),
        repository: REPO.into(),
        branch: "main".into(),
        remote: repo.url(),
        body: format!(
            "commands = [[\"sh\", \"-c\", \"echo start $PPID $$ >> {m}/events; while [ ! -e {m}/go ]; do echo tick $$ >> {m}/ticks; sleep 0.2; done\"]]"
        ),
    };
    let setup = Setup::new(
        &format!("redis_url = \"{}\"\nlock_ttl = \"3s\"", redis.url()),
        vec![spec],
    );
    let (mut a, mut b) = two_daemons(&setup);
    a.start();
    b.start();
    let sha = repo.commit("c1", &[("v", "1")]);
    repo.push();
    assert_eq!(
        send_signed(
            a.port,
            "push",
            "orphan-1",
            &push_payload(REPO, "main", None, &sha)
        )
        .unwrap(),
        202
    );
    let (holder, build) = wait_for(
        "the first build",
        || starts(marks.path()).first().copied(),
        || format!("A:\n{}\nB:\n{}", a.log(), b.log()),
    );
    if holder == a.pid() {
        a.kill9();
    } else {
        b.kill9();
    }
    let (other, second) = wait_for(
        "the other daemon's build after the key expired",
        || starts(marks.path()).get(1).copied(),
        || format!("A:\n{}\nB:\n{}", a.log(), b.log()),
    );
    let orphan_alive = alive(build);
    std::thread::sleep(Duration::from_millis(600));
    let ticks = std::fs::read_to_string(marks.path().join("ticks")).unwrap_or_default();
    let orphan_ticks_after = ticks
        .lines()
        .rev()
        .take(6)
        .filter(|l| l.ends_with(&build.to_string()))
        .count();
    eprintln!(
        "killed daemon {holder}; its build {build} alive when daemon {other} started build {second}: {orphan_alive}; \
         orphan ticks in the last 6 lines: {orphan_ticks_after}"
    );
    std::fs::write(marks.path().join("go"), "").unwrap();
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(build),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(
        !orphan_alive,
        "the SIGKILLed holder's build ({build}) still ran when the next holder started its own ({second})"
    );
}
