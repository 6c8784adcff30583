-- Issue 14: reconciliation with the branch head, and redelivery of failed GitHub deliveries.
--
-- The hook id of a repository is the `hook_id` of its latest received delivery (the
-- X-GitHub-Hook-ID header, already kept in `deliveries`); this index makes that lookup cheap.
CREATE INDEX IF NOT EXISTS deliveries_by_repository ON deliveries (repository, received_at);

-- What the last reconcile pass saw for each deployment: the remote branch head (NULL when the
-- branch was missing or the remote could not be read, with the reason in `note`), when, and
-- what the pass did about it (`queued`, `deployed`, `busy`, `attempted`, `error`, ...).
CREATE TABLE IF NOT EXISTS reconcile_state (
    deployment TEXT PRIMARY KEY,
    remote_head TEXT,
    checked_at BIGINT NOT NULL,
    action TEXT NOT NULL,
    note TEXT NOT NULL
);

-- Every redelivery the deployer asked GitHub for (POST .../deliveries/{id}/attempts), at most one
-- per delivery guid: a delivery is asked for once, whatever GitHub answers. `status_code` is
-- GitHub's answer (NULL when no answer came), `error` a one-line reason when it was not 2xx.
CREATE TABLE IF NOT EXISTS redelivery_requests (
    guid TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    hook_id TEXT NOT NULL,
    github_delivery_id BIGINT NOT NULL,
    event TEXT,
    delivered_at TEXT,
    github_status TEXT,
    requested_at BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS redelivery_requests_by_time ON redelivery_requests (requested_at);
