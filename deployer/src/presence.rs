//! Is a daemon running on this `state_dir`? Every daemon holds a shared `flock` on
//! `state_dir/daemon.lock` for as long as it runs; the kernel drops it when the process ends,
//! however it ends (SIGKILL and power loss included), so there is no stale pid file to judge and
//! no pid reuse to be fooled by. Several daemons may share one state directory (each holds the
//! lock shared); a probe asks for it exclusively without waiting.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {errno}")]
    Lock { path: PathBuf, errno: nix::Error },
}

/// `state_dir/daemon.lock`.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("daemon.lock")
}

/// Held by a running daemon; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct DaemonPresence {
    _lock: Flock<File>,
}

/// Takes the shared lock that says "a daemon runs here", creating the file if needed. Blocks
/// only for the instant a probe holds it exclusively.
pub fn announce(state_dir: &Path) -> Result<DaemonPresence, PresenceError> {
    let path = lock_path(state_dir);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| PresenceError::Open {
            path: path.clone(),
            source,
        })?;
    let lock = Flock::lock(file, FlockArg::LockShared)
        .map_err(|(_, errno)| PresenceError::Lock { path, errno })?;
    Ok(DaemonPresence { _lock: lock })
}

/// Does a daemon hold `state_dir` right now? Creates nothing: no lock file means no daemon
/// has ever run here.
pub fn daemon_running(state_dir: &Path) -> bool {
    let Ok(file) = File::open(lock_path(state_dir)) else {
        return false;
    };
    // The probe's own exclusive lock is released at once when the Flock is dropped.
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_probe) => false,
        // EWOULDBLOCK: held by a daemon. Anything else (no flock support) counts as not known
        // to run, which is what a caller without this file would assume too.
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// The deployments with a deploy under way in this process, for the message on Ctrl-C.
static RUNNING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn running_list() -> std::sync::MutexGuard<'static, Vec<String>> {
    // A panic while holding this lock cannot leave the list inconsistent.
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks a deploy of `deployment` as under way until dropped.
#[derive(Debug)]
pub struct RunningDeploy {
    deployment: String,
}

impl RunningDeploy {
    pub fn start(deployment: &str) -> Self {
        running_list().push(deployment.to_owned());
        Self {
            deployment: deployment.to_owned(),
        }
    }
}

impl Drop for RunningDeploy {
    fn drop(&mut self) {
        let mut list = running_list();
        if let Some(i) = list.iter().position(|d| *d == self.deployment) {
            list.remove(i);
        }
    }
}

/// The deployments with a deploy under way in this process, sorted.
pub fn running_deploys() -> Vec<String> {
    let mut list = running_list().clone();
    list.sort();
    list.dedup();
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_is_seen_while_it_holds_the_lock_and_not_after() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!daemon_running(dir.path()), "no lock file: no daemon");
        assert!(!lock_path(dir.path()).exists(), "probing creates nothing");
        let first = announce(dir.path()).unwrap();
        let second = announce(dir.path()).unwrap();
        assert!(daemon_running(dir.path()));
        drop(first);
        assert!(daemon_running(dir.path()), "the second still runs");
        drop(second);
        assert!(!daemon_running(dir.path()));
    }
}
