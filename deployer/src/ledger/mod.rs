//! The ledger: what happened to every delivery and every run, in SQLite or PostgreSQL.
//!
//! Queries go through sqlx's `Any` driver with `$N` placeholders, which both backends accept,
//! and are checked at run time, so building never needs a live database. Each backend has its
//! own migration folder because their DDL differs.

mod deliveries;
mod reconcile;
mod runs;

pub use deliveries::{Claim, DeliveryRecord, Outcome};
pub use reconcile::{ReconcileState, RedeliveryRequest};
pub use runs::Fence;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("unsupported database URL (use sqlite: or postgres://)")]
    UnsupportedUrl,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A read-only command found no ledger (the service creates it on first start).
    #[error("no ledger yet at {where_} (the service creates it on first start)")]
    Missing { where_: String },
}

impl LedgerError {
    /// Is this the ledger being unavailable (down, unreachable, read-only, restarting, or busy:
    /// write-locked by another connection) rather than something wrong with the request? Such
    /// errors are nobody's fault: the work waits and is tried again.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Database(e) => is_outage(e),
            Self::UnsupportedUrl | Self::Migrate(_) | Self::Missing { .. } => false,
        }
    }

    /// Is this the ledger refusing writes (a file the service cannot write, a read-only
    /// standby)? Waiting does not fix that: an operator must.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Self::Database(e) if is_read_only(e))
    }
}

/// SQLite's SQLITE_READONLY (8, and its extended codes) or PostgreSQL's 25006.
pub fn is_read_only(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        sqlite
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == 8)
    } else if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        pg.code() == "25006"
    } else {
        false
    }
}

/// The file of an SQLite URL (`sqlite://PATH?…` or `sqlite:PATH`), if it names one.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// See [`LedgerError::is_outage`].
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // Extended result codes keep the primary code in the low byte:
                // 5 SQLITE_BUSY, 6 SQLITE_LOCKED, 8 SQLITE_READONLY (and their variants).
                sqlite
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 8))
            } else if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                let code = pg.code();
                // 08: connection exception; 53: insufficient resources; 25006: read-only
                // transaction (a standby); 57P01-57P03: shutting down, cannot connect now;
                // 40001/40P01: serialization failure, deadlock.
                code.starts_with("08")
                    || code.starts_with("53")
                    || matches!(
                        code,
                        "25006" | "57P01" | "57P02" | "57P03" | "40001" | "40P01"
                    )
            } else {
                false
            }
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Result<Self, LedgerError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(LedgerError::UnsupportedUrl)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Ledger {
    pool: AnyPool,
    backend: Backend,
}

impl Ledger {
    /// Connects without migrating (for read-only CLI commands and for `migrate` itself).
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        let backend = Backend::of_url(url)?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await?;
        Ok(Self { pool, backend })
    }

    /// Connects for reading only, creating nothing: an SQLite file is opened `mode=ro`, and a
    /// database without the ledger's tables is [`LedgerError::Missing`] (no migration runs).
    pub async fn open_read_only(url: &str) -> Result<Self, LedgerError> {
        let backend = Backend::of_url(url)?;
        let url = match (backend, sqlite_file(url)) {
            (Backend::Sqlite, Some(path)) => {
                if !std::path::Path::new(path).exists() {
                    return Err(LedgerError::Missing {
                        where_: path.to_owned(),
                    });
                }
                format!("sqlite://{path}?mode=ro")
            }
            _ => url.to_owned(),
        };
        let ledger = Self::connect(&url).await?;
        let where_ = sqlite_file(&url).map_or_else(|| redacted(&url), str::to_owned);
        match sqlx::query("SELECT 1 FROM runs LIMIT 1")
            .fetch_optional(ledger.pool())
            .await
        {
            Ok(_) => Ok(ledger),
            Err(e) if is_outage(&e) => Err(e.into()),
            // No `runs` table: a file or database nothing has migrated yet.
            Err(_) => Err(LedgerError::Missing { where_ }),
        }
    }

    /// Can the ledger be written? Probes with a write that changes nothing (a read-only
    /// SQLite file or PostgreSQL standby refuses any write statement).
    pub async fn check_writable(&self) -> Result<(), LedgerError> {
        sqlx::query("UPDATE fences SET token = token WHERE name = $1")
            .bind("durhack-deployer writability probe")
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Connects and applies every pending migration.
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        let ledger = Self::connect(url).await?;
        ledger.migrate().await?;
        Ok(ledger)
    }

    pub async fn migrate(&self) -> Result<(), LedgerError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Does the database answer at all? (Tells a failure of one entry from an outage.)
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}
