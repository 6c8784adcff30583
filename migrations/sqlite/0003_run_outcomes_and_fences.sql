-- Issue 10: one terminal outcome per deploy-queue entry, and fencing tokens for the locks.
--
-- `entry` is the deploy-queue entry (the idempotency key, unique per receipt) a row answers for;
-- rows written before this migration have none. A (deployment, entry) has at most one terminal
-- row (success, failed, superseded, stale, ignored); `running` and `cancelled` rows may repeat,
-- since a run interrupted by a crash is closed as cancelled and redone.
ALTER TABLE runs ADD COLUMN entry TEXT;
CREATE UNIQUE INDEX runs_one_outcome_per_entry ON runs (deployment, entry)
    WHERE entry IS NOT NULL
    AND status IN ('success', 'failed', 'superseded', 'stale', 'ignored');
CREATE INDEX runs_by_entry ON runs (deployment, entry);

-- Fencing tokens: each holder of a lock takes the next token of the lock's name right after
-- acquiring it. Success is recorded, and sites are published, only while the holder's token is
-- still the latest, so a holder that lost its lock to another can never do either.
CREATE TABLE fences (
    name TEXT PRIMARY KEY,
    token BIGINT NOT NULL
);
