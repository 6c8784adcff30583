//! Locks in Redis, Dragonfly or Valkey: `SET key token NX PX ttl` with a random token, renewed
//! while held, released by compare-and-delete so a holder never deletes someone else's lock.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use tokio_util::sync::CancellationToken;

use super::LockError;

/// The default TTL (`lock_ttl`): long enough to ride out a short hiccup, short enough that a
/// crashed holder's lock frees itself soon. The key is renewed every third of the TTL, and the
/// holder counts the lock as lost once half the TTL has passed since the last renewal that
/// succeeded (measured from when it was sent): at that moment the key still has at least half
/// its TTL to live, so the holder has stopped well before anyone else can take it over.
pub const TTL: Duration = crate::config::DEFAULT_LOCK_TTL;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

const RENEW: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
else
  return 0
end";

const RELEASE: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
else
  return 0
end";

#[derive(Debug, Clone)]
pub struct RedisLocks {
    client: Client,
    ttl: Duration,
}

#[derive(Debug)]
pub struct RedisGuard {
    client: Client,
    io_timeout: Duration,
    key: String,
    token: String,
    /// Stops the renewal when the guard is dropped without `release`.
    stop_renewing: tokio_util::sync::DropGuard,
    renewer: tokio::task::JoinHandle<()>,
}

impl RedisLocks {
    pub fn new(url: &str) -> Result<Self, LockError> {
        Ok(Self {
            client: Client::open(url)?,
            ttl: TTL,
        })
    }

    /// The same store with another TTL (`lock_ttl`).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    pub(super) async fn try_acquire(
        &self,
        key: &str,
        lost: CancellationToken,
    ) -> Result<Option<RedisGuard>, LockError> {
        let mut con = connect(&self.client, self.io_timeout()).await?;
        let token = random_token();
        let sent = Instant::now();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut con)
            .await?;
        if set.is_none() {
            return Ok(None);
        }
        let stop_renewing = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            Renewal {
                client: self.client.clone(),
                key: key.to_owned(),
                token: token.clone(),
                ttl: self.ttl,
                io_timeout: self.io_timeout(),
            },
            con,
            stop_renewing.clone(),
            lost,
            sent,
        ));
        Ok(Some(RedisGuard {
            client: self.client.clone(),
            io_timeout: self.io_timeout(),
            key: key.to_owned(),
            token,
            stop_renewing: stop_renewing.drop_guard(),
            renewer,
        }))
    }
}

impl RedisGuard {
    /// Does the key still hold our token?
    pub(super) async fn verify(&self) -> Result<bool, LockError> {
        let mut con = connect(&self.client, self.io_timeout).await?;
        let value: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut con)
            .await?;
        Ok(value.as_deref() == Some(self.token.as_str()))
    }

    pub(super) async fn release(self) {
        drop(self.stop_renewing);
        let _ = self.renewer.await;
        let released = async {
            let mut con = connect(&self.client, self.io_timeout).await?;
            let _: i64 = Script::new(RELEASE)
                .key(&self.key)
                .arg(&self.token)
                .invoke_async(&mut con)
                .await?;
            Ok::<_, LockError>(())
        };
        if let Err(e) = released.await {
            tracing::warn!(lock = %self.key, error = %e, "could not release a lock; it expires by itself");
        }
    }
}

impl RedisLocks {
    /// No single command may take longer than a sixth of the TTL (nor 5 s), so a hung store is
    /// noticed while the lock is still ours.
    fn io_timeout(&self) -> Duration {
        IO_TIMEOUT.min(self.ttl / 6)
    }
}

async fn connect(
    client: &Client,
    io_timeout: Duration,
) -> Result<MultiplexedConnection, LockError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(io_timeout))
        .set_response_timeout(Some(io_timeout));
    tokio::time::timeout(
        io_timeout * 2,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| LockError::Timeout)?
    .map_err(LockError::from)
}

struct Renewal {
    client: Client,
    key: String,
    token: String,
    ttl: Duration,
    io_timeout: Duration,
}

/// Keeps the key alive, renewing every TTL/3; fires `lost` when the key was taken over or is
/// gone (a Redis restarted without persistence, a FLUSHALL), or as soon as TTL/2 has passed
/// without a successful renewal (a store that is down, or hung), whichever comes first.
async fn renew(
    r: Renewal,
    con: MultiplexedConnection,
    stop: CancellationToken,
    lost: CancellationToken,
    set_at: Instant,
) {
    let script = Script::new(RENEW);
    let renew_every = r.ttl / 3;
    let lost_after = r.ttl / 2;
    let retry_every = (r.ttl / 20).max(Duration::from_millis(100));
    let key = &r.key;
    let mut con = Some(con);
    // When the last successful command was sent: the key expires no earlier than TTL after it.
    let mut renewed_at = set_at;
    let mut failing = false;
    loop {
        let next = if failing {
            Instant::now() + retry_every
        } else {
            renewed_at + renew_every
        };
        let give_up = renewed_at + lost_after;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next.min(give_up).into()) => {}
        }
        if Instant::now() >= give_up {
            tracing::error!(lock = %key, "no renewal succeeded for half the lock's TTL: counting the lock as lost");
            lost.cancel();
            return;
        }
        let sent = Instant::now();
        let attempt = async {
            let c = match &mut con {
                Some(c) => c,
                None => con.insert(connect(&r.client, r.io_timeout).await?),
            };
            let n: i64 = script
                .key(key)
                .arg(&r.token)
                .arg(r.ttl.as_millis() as u64)
                .invoke_async(c)
                .await?;
            Ok::<_, LockError>(n)
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(give_up.into()) => {
                tracing::error!(lock = %key, "no renewal succeeded for half the lock's TTL: counting the lock as lost");
                lost.cancel();
                return;
            }
            r = attempt => r,
        };
        match result {
            Ok(1) => {
                renewed_at = sent;
                failing = false;
            }
            Ok(_) if stop.is_cancelled() => return,
            Ok(_) => {
                tracing::error!(lock = %key, "lock key gone or taken over by another holder");
                lost.cancel();
                return;
            }
            Err(e) => {
                con = None;
                failing = true;
                tracing::warn!(lock = %key, error = %e, "cannot renew a lock; retrying");
            }
        }
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source");
    hex::encode(bytes)
}
