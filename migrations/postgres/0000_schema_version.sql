-- Placeholder so the migrator has a history from the first release; real tables follow.
CREATE TABLE IF NOT EXISTS deployer_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
