//! `flock` locks on `state_dir/locks/*.lock`: respected by every process on this host, and
//! released by the kernel when the holder dies, so a crash never leaves one stuck.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::LockError;

#[derive(Debug, Clone)]
pub struct LocalLocks {
    dir: PathBuf,
}

#[derive(Debug)]
pub struct LocalGuard {
    _flock: Flock<File>,
}

impl LocalLocks {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// `durhack-deployer:deploy:<name>` is `deploy-<name>.lock` and `durhack-deployer:nginx` is
    /// `nginx.lock`: the prefix keeps a deployment called `nginx` apart from the nginx lock.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, LockError> {
        let rest = key
            .strip_prefix("durhack-deployer:")
            .ok_or_else(|| LockError::BadKey(key.to_owned()))?;
        let file = match rest.split_once(':') {
            Some(("deploy", name)) if crate::config::valid_deployment_name(name) => {
                format!("deploy-{name}.lock")
            }
            None if rest == "nginx" => "nginx.lock".to_owned(),
            _ => return Err(LockError::BadKey(key.to_owned())),
        };
        Ok(self.dir.join(file))
    }

    pub(super) async fn try_acquire(&self, key: &str) -> Result<Option<LocalGuard>, LockError> {
        let path = self.path_of(key)?;
        let io = |source| LockError::File {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // Each open() is its own open file description, so two workers of one process exclude
        // each other just as two processes do.
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Ok(Some(LocalGuard { _flock: flock })),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(io(std::io::Error::from(errno))),
        }
    }
}
