//! Runs: one row per deploy attempt. (Interface fixed here; the worker work fills it in.)

use super::{Ledger, LedgerError};

impl Ledger {
    /// Deployments whose latest run for `delivery` ended `failed` or `cancelled` (and that have no
    /// successful run for it): a redelivery of this delivery should queue these again.
    pub async fn failed_deployments_of_delivery(
        &self,
        delivery: &str,
    ) -> Result<Vec<String>, LedgerError> {
        let _ = delivery;
        Ok(Vec::new())
    }
}
