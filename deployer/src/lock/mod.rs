//! Locks that keep two deployer processes (say, the old and the new one during a self-update)
//! from deploying the same thing at once: through Redis (or Dragonfly, Valkey) when `redis_url`
//! is set, otherwise `flock` on files under `state_dir/locks`.
//!
//! Acquiring waits for as long as it takes: while another holder has the lock, and while Redis
//! is unreachable (with backoff), because running unlocked is never an option and the queue
//! entry waiting for the lock is durable. Only shutdown ends the wait.

mod local;
mod redis;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;

pub use self::local::LocalLocks;
pub use self::redis::RedisLocks;

/// The lock held around sites changes plus the nginx reload, shared by every deployment.
pub const NGINX_LOCK: &str = "durhack-deployer:nginx";

/// The lock held around a deployment's run.
pub fn deploy_lock(deployment: &str) -> String {
    format!("durhack-deployer:deploy:{deployment}")
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock store: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("lock store: timed out")]
    Timeout,
    #[error("lock file {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("lock key `{0}` is not one of the deployer's")]
    BadKey(String),
}

/// Where locks live.
#[derive(Debug, Clone)]
pub enum Locks {
    Redis(RedisLocks),
    Local(LocalLocks),
}

/// A held lock. `lost()` fires if the lock can no longer be vouched for (its Redis key expired
/// or was taken over); whatever it protects must then stop.
#[derive(Debug)]
pub struct LockGuard {
    key: String,
    lost: CancellationToken,
    inner: GuardInner,
}

#[derive(Debug)]
enum GuardInner {
    Redis(Box<self::redis::RedisGuard>),
    Local(self::local::LocalGuard),
}

impl LockGuard {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Is the lock still ours, asked of the store now (not only what the renewal last saw)?
    /// `Ok(false)` (the key is gone or another holder's) also fires [`Self::lost`]. Local
    /// `flock` locks cannot be taken over while held.
    pub async fn verify(&self) -> Result<bool, LockError> {
        let ours = match &self.inner {
            GuardInner::Redis(g) => g.verify().await?,
            GuardInner::Local(_) => true,
        };
        if !ours {
            self.lost.cancel();
        }
        Ok(ours)
    }

    /// Releases the lock now (dropping the guard releases it too, less promptly for Redis,
    /// where the key then lives until its TTL).
    pub async fn release(self) {
        match self.inner {
            GuardInner::Redis(g) => g.release().await,
            GuardInner::Local(g) => drop(g),
        }
    }
}

const POLL_HELD: Duration = Duration::from_millis(250);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Locks {
    pub fn from_config(config: &Config) -> Result<Self, LockError> {
        match &config.redis_url {
            Some(url) => Ok(Self::Redis(RedisLocks::new(url)?.with_ttl(config.lock_ttl))),
            None => Ok(Self::Local(LocalLocks::new(config.locks_dir()))),
        }
    }

    /// One attempt: `Ok(None)` when someone else holds `key`, `Err` when the store is
    /// unreachable.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<LockGuard>, LockError> {
        let lost = CancellationToken::new();
        let inner = match self {
            Self::Redis(r) => r
                .try_acquire(key, lost.clone())
                .await?
                .map(|g| GuardInner::Redis(Box::new(g))),
            Self::Local(l) => l.try_acquire(key).await?.map(GuardInner::Local),
        };
        Ok(inner.map(|inner| LockGuard {
            key: key.to_owned(),
            lost,
            inner,
        }))
    }

    /// Waits until `key` is ours; `None` when `cancel` fires first.
    pub async fn acquire(&self, key: &str, cancel: &CancellationToken) -> Option<LockGuard> {
        let mut backoff = BACKOFF_FIRST;
        let mut waiting_logged = false;
        loop {
            let wait = match self.try_acquire(key).await {
                Ok(Some(guard)) => return Some(guard),
                Ok(None) => {
                    if !waiting_logged {
                        tracing::info!(lock = key, "waiting for a lock held elsewhere");
                        waiting_logged = true;
                    }
                    backoff = BACKOFF_FIRST;
                    POLL_HELD
                }
                Err(e) => {
                    tracing::warn!(lock = key, error = %e, retry_in = ?backoff, "cannot take a lock; retrying");
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    wait
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
