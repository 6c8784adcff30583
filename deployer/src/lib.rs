//! durhack-deployer: verified GitHub webhooks → durable filesystem queues → per-deployment
//! workers that check out, build, restart and publish nginx sites through the root helper.
//!
//! Where things live:
//! - [`config`]: the TOML configuration and its validation;
//! - [`http`]: the axum router, where a webhook is verified and written to the inbox;
//! - [`queue`]: the filesystem queues (one directory per queue, one file per entry);
//! - [`dispatch`]: the dispatcher that deduplicates in the ledger and routes pushes;
//! - [`ledger`]: deliveries and runs in SQLite or PostgreSQL;
//! - [`worker`]: one worker per deployment: coalescing, git, commands, sites, reporting;
//! - [`lock`]: Redis-protocol and local locks;
//! - [`github`]: commit statuses;
//! - [`reconcile`]: compares remote branch heads with what is deployed, and asks GitHub to
//!   redeliver failed deliveries;
//! - [`health`]: which supervised components are down, for `GET /`;
//! - [`daemon`]: `run(config, shutdown)`, which starts all of the above;
//! - [`cli`]: the command-line interface.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dispatch;
pub mod github;
pub mod health;
pub mod http;
pub mod ledger;
pub mod lock;
pub mod presence;
pub mod queue;
pub mod reconcile;
pub mod worker;

pub use daemon::run;
