//! Redelivery: GitHub never retries a failed webhook delivery, so we ask it to.
//!
//! At start-up and every `reconcile_interval`, for each repository of an enabled deployment
//! whose hook id is known (the deployment's `hook_id`, else the `X-GitHub-Hook-ID` of the
//! repository's latest received delivery), the hook's recent deliveries are listed, newest
//! first, following the `Link: rel="next"` cursor, for at most [`MAX_PAGES`] pages and back to
//! [`WINDOW`] ago. Each delivery GitHub marked failed whose guid the ledger does not have
//! (neither received nor asked for) is redelivered once: the request is claimed in the ledger
//! (insert-if-absent on the guid) before it is sent, so two passes or two daemons ask once.
//!
//! A rate-limited answer (403/429 with `x-ratelimit-remaining: 0` or `retry-after`) ends the
//! whole pass at once, and no pass starts before the time GitHub gave. Other errors are logged
//! and the repository is tried again at the next pass.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::now_ms;
use crate::github::{ApiError, DeliveriesClient, HookDelivery};
use crate::ledger::{Ledger, LedgerError, RedeliveryRequest};

/// How far back deliveries are looked at: GitHub keeps (and redelivers) three days of them.
pub const WINDOW: Duration = Duration::from_secs(3 * 86400);
/// Pages read per repository and pass.
pub const MAX_PAGES: usize = 10;
const PER_PAGE: u32 = 100;
/// A claimed request with no answer recorded after this was abandoned (each request gives up
/// after 10 s).
const ABANDONED_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// The redelivery loop's state.
#[derive(Debug)]
pub struct Redeliverer {
    client: DeliveriesClient,
    ledger: Ledger,
    /// Repository -> configured hook id (`None`: learn it from received deliveries).
    repositories: BTreeMap<String, Option<u64>>,
    /// No request before this (a rate limit's `retry-after` or reset).
    paused_until: Option<Instant>,
}

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassEnd {
    Done,
    RateLimited,
}

impl Redeliverer {
    /// `None` without a GitHub token.
    pub fn from_config(config: &Config, ledger: Ledger) -> Option<Self> {
        let client = DeliveriesClient::from_config(config)?;
        let mut repositories: BTreeMap<String, Option<u64>> = BTreeMap::new();
        for d in config.enabled_deployments() {
            let hook = repositories
                .entry(d.repository.to_ascii_lowercase())
                .or_default();
            if hook.is_none() {
                *hook = d.hook_id;
            }
        }
        Some(Self {
            client,
            ledger,
            repositories,
            paused_until: None,
        })
    }

    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        tracing::info!(
            repositories = self.repositories.len(),
            "redelivering failed webhook deliveries"
        );
        loop {
            if self.paused_until.is_none_or(|t| Instant::now() >= t) {
                self.paused_until = None;
                // Shutdown does not wait for GitHub: a request claimed but never answered is
                // released by a later pass (see `release_abandoned`).
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = self.pass(&shutdown) => {}
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One pass over every repository; stops at the first rate limit.
    pub async fn pass(&mut self, shutdown: &CancellationToken) -> PassEnd {
        self.release_abandoned().await;
        let repositories: Vec<(String, Option<u64>)> = self
            .repositories
            .iter()
            .map(|(r, h)| (r.clone(), *h))
            .collect();
        for (repository, configured) in repositories {
            if shutdown.is_cancelled() {
                break;
            }
            let hook_id = match configured {
                Some(id) => id,
                None => match self.ledger.hook_id_of(&repository).await {
                    Ok(Some(id)) => match id.parse::<u64>() {
                        Ok(id) => id,
                        Err(_) => {
                            tracing::warn!(%repository, hook_id = %id, "the received hook id is not a number; set hook_id in the config");
                            continue;
                        }
                    },
                    Ok(None) => {
                        tracing::debug!(%repository, "no hook id yet (no delivery received, none configured)");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(%repository, error = %e, "cannot read the hook id");
                        continue;
                    }
                },
            };
            match self.repository(&repository, hook_id, shutdown).await {
                Ok(asked) if asked > 0 => {
                    tracing::info!(%repository, hook_id, asked, "asked GitHub to redeliver failed deliveries");
                }
                Ok(_) => {}
                Err(RedeliverError::Api(ApiError::RateLimited {
                    status,
                    retry_after,
                })) => {
                    tracing::warn!(%repository, status, ?retry_after, "GitHub rate limit: redelivery paused until the next pass");
                    self.paused_until = retry_after.map(|d| Instant::now() + d);
                    return PassEnd::RateLimited;
                }
                Err(e) => {
                    tracing::warn!(%repository, hook_id, error = %e, "redelivery pass failed; tried again at the next pass");
                }
            }
        }
        PassEnd::Done
    }

    /// Releases claims whose request never got an answer recorded (the process stopped or died
    /// between claim and answer), long after any request could still be in flight, so that they
    /// are asked again.
    async fn release_abandoned(&self) {
        let before = now_ms() - i64::try_from(ABANDONED_AFTER.as_millis()).unwrap_or(i64::MAX);
        match self.ledger.release_unanswered_redeliveries(before).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                requests = n,
                "released redelivery requests that never got an answer"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot release unanswered redelivery requests"),
        }
    }

    /// Lists `repository`'s recent deliveries and redelivers the failed ones we never had;
    /// the number of redeliveries asked for.
    async fn repository(
        &self,
        repository: &str,
        hook_id: u64,
        shutdown: &CancellationToken,
    ) -> Result<usize, RedeliverError> {
        let oldest = time::OffsetDateTime::now_utc() - WINDOW;
        let mut asked = 0;
        let mut page = self
            .client
            .first_page(repository, hook_id, PER_PAGE)
            .await?;
        for pages in 1.. {
            let mut reached_window_end = false;
            for delivery in &page.deliveries {
                if delivered_before(delivery, oldest) {
                    reached_window_end = true;
                    continue;
                }
                if !delivery.failed() || self.ledger.delivery_known(&delivery.guid).await? {
                    continue;
                }
                if self.redeliver(repository, hook_id, delivery).await? {
                    asked += 1;
                }
            }
            let Some(next) = page.next.take() else { break };
            if reached_window_end || pages >= MAX_PAGES || shutdown.is_cancelled() {
                break;
            }
            page = self.client.page(&next).await?;
        }
        Ok(asked)
    }

    /// Claims and sends one redelivery. `Ok(false)` when another pass claimed it first. A
    /// request that never reached GitHub (rate limit, network, 5xx) is released, to be asked
    /// again later; one GitHub refused (4xx) is kept with the reason, and not asked again.
    async fn redeliver(
        &self,
        repository: &str,
        hook_id: u64,
        delivery: &HookDelivery,
    ) -> Result<bool, RedeliverError> {
        let request = RedeliveryRequest {
            guid: delivery.guid.clone(),
            repository: repository.to_owned(),
            hook_id: hook_id.to_string(),
            github_delivery_id: delivery.id,
            event: Some(delivery.event.clone()),
            delivered_at: Some(delivery.delivered_at.clone()),
            github_status: Some(delivery.status.chars().take(200).collect()),
            requested_at: now_ms(),
            status_code: None,
            error: None,
        };
        if !self.ledger.claim_redelivery(&request).await? {
            return Ok(false);
        }
        match self
            .client
            .redeliver(repository, hook_id, delivery.id)
            .await
        {
            Ok(status) => {
                tracing::info!(guid = %delivery.guid, id = delivery.id, event = %delivery.event, github_status = %delivery.status, "redelivery requested");
                self.ledger
                    .finish_redelivery(&delivery.guid, Some(i64::from(status)), None)
                    .await?;
                Ok(true)
            }
            Err(ApiError::Refused { status, body }) if (400..500).contains(&status) => {
                tracing::warn!(guid = %delivery.guid, status, "GitHub refused the redelivery; not asked again");
                let error = format!("refused: {body}");
                self.ledger
                    .finish_redelivery(&delivery.guid, Some(i64::from(status)), Some(&error))
                    .await?;
                Ok(true)
            }
            Err(e) => {
                if let Err(release) = self.ledger.release_redelivery(&delivery.guid).await {
                    tracing::warn!(guid = %delivery.guid, error = %release, "cannot release an unsent redelivery request");
                }
                Err(e.into())
            }
        }
    }
}

/// Is `delivery` older than `oldest`? (An unreadable date counts as inside the window.)
fn delivered_before(delivery: &HookDelivery, oldest: time::OffsetDateTime) -> bool {
    time::OffsetDateTime::parse(
        &delivery.delivered_at,
        &time::format_description::well_known::Rfc3339,
    )
    .is_ok_and(|at| at < oldest)
}
