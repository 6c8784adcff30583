-- One row per deploy attempt, and one per push that was superseded or stale instead of deployed.
-- Timestamps are unix milliseconds. `status` is running, success, failed, superseded, stale or
-- cancelled; `running` rows left by a crash are closed as cancelled by the next holder of the
-- deployment's lock.
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    deployment TEXT NOT NULL,
    delivery TEXT NOT NULL,
    sha TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    log_path TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_deployment ON runs (deployment, started_at);
CREATE INDEX IF NOT EXISTS runs_by_delivery ON runs (delivery);
