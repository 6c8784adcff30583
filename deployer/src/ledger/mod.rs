//! The ledger: what happened to every delivery and every run, in SQLite or PostgreSQL.
//!
//! Queries go through sqlx's `Any` driver with `$N` placeholders, which both backends accept,
//! and are checked at run time, so building never needs a live database. Each backend has its
//! own migration folder because their DDL differs.

mod deliveries;
mod runs;

pub use deliveries::{Claim, DeliveryRecord, Outcome};
pub use runs::Fence;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
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
