-- no-transaction
-- (SQLite cannot switch to WAL inside a transaction; every statement here is idempotent.)
-- WAL lets `durhack-deployer history` and `status` read while the daemon writes. The mode is
-- stored in the database file, so setting it once here holds for every later connection.
PRAGMA journal_mode = WAL;

-- The deduplication claim: the first inbox entry that carried each delivery id. Inserted with
-- ON CONFLICT DO NOTHING, so exactly one entry per id ever owns the claim.
CREATE TABLE IF NOT EXISTS delivery_claims (
    delivery TEXT PRIMARY KEY,
    entry TEXT NOT NULL,
    claimed_at BIGINT NOT NULL
);

-- One row per received delivery (per inbox entry, so a redelivery has its own row), written once
-- its routing is done. Timestamps are unix milliseconds. `outcome` is routed, duplicate or
-- ignored; `deployments` is a JSON array of the deployments it was queued for.
CREATE TABLE IF NOT EXISTS deliveries (
    entry TEXT PRIMARY KEY,
    delivery TEXT NOT NULL,
    event TEXT NOT NULL,
    hook_id TEXT,
    received_at BIGINT NOT NULL,
    handled_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    repository TEXT,
    branch TEXT,
    sha TEXT,
    deployments TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_by_received ON deliveries (received_at);
CREATE INDEX IF NOT EXISTS deliveries_by_delivery ON deliveries (delivery);
