//! Locks in Redis, Dragonfly or Valkey: `SET key token NX PX ttl` with a random token, renewed
//! while held, released by compare-and-delete so a holder never deletes someone else's lock.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use tokio_util::sync::CancellationToken;

use super::LockError;

/// Long enough to ride out a short hiccup, short enough that a crashed holder's lock frees itself
/// soon; renewed every third of it.
pub const TTL: Duration = Duration::from_secs(30);
const RENEW_EVERY: Duration = Duration::from_secs(10);
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
}

#[derive(Debug)]
pub struct RedisGuard {
    client: Client,
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
        })
    }

    pub(super) async fn try_acquire(
        &self,
        key: &str,
        lost: CancellationToken,
    ) -> Result<Option<RedisGuard>, LockError> {
        let mut con = connect(&self.client).await?;
        let token = random_token();
        let sent = Instant::now();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(&mut con)
            .await?;
        if set.is_none() {
            return Ok(None);
        }
        let stop_renewing = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            self.client.clone(),
            con,
            key.to_owned(),
            token.clone(),
            stop_renewing.clone(),
            lost,
            sent,
        ));
        Ok(Some(RedisGuard {
            client: self.client.clone(),
            key: key.to_owned(),
            token,
            stop_renewing: stop_renewing.drop_guard(),
            renewer,
        }))
    }
}

impl RedisGuard {
    pub(super) async fn release(self) {
        drop(self.stop_renewing);
        let _ = self.renewer.await;
        let released = async {
            let mut con = connect(&self.client).await?;
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

async fn connect(client: &Client) -> Result<MultiplexedConnection, LockError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT));
    tokio::time::timeout(
        IO_TIMEOUT * 2,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| LockError::Timeout)?
    .map_err(LockError::from)
}

/// Keeps the key alive; fires `lost` when the key was taken over, or when no renewal has
/// succeeded for a whole TTL (from then on another process may hold it).
async fn renew(
    client: Client,
    con: MultiplexedConnection,
    key: String,
    token: String,
    stop: CancellationToken,
    lost: CancellationToken,
    set_at: Instant,
) {
    let script = Script::new(RENEW);
    let mut con = Some(con);
    // When the last successful command was sent: the key expires no earlier than TTL after it.
    let mut renewed_at = set_at;
    loop {
        let wait = if renewed_at.elapsed() < RENEW_EVERY {
            RENEW_EVERY - renewed_at.elapsed()
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let sent = Instant::now();
        let attempt = async {
            let c = match &mut con {
                Some(c) => c,
                None => con.insert(connect(&client).await?),
            };
            let n: i64 = script
                .key(&key)
                .arg(&token)
                .arg(TTL.as_millis() as u64)
                .invoke_async(c)
                .await?;
            Ok::<_, LockError>(n)
        };
        match attempt.await {
            Ok(1) => renewed_at = sent,
            Ok(_) if stop.is_cancelled() => return,
            Ok(_) => {
                tracing::error!(lock = %key, "lock taken over by another holder");
                lost.cancel();
                return;
            }
            Err(e) => {
                con = None;
                tracing::warn!(lock = %key, error = %e, "cannot renew a lock; retrying");
                if renewed_at.elapsed() >= TTL {
                    tracing::error!(lock = %key, "lock expired while the store was unreachable");
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source");
    hex::encode(bytes)
}
