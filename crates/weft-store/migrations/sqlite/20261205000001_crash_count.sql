-- How many times in a row the server stopped while this prompt was running. Crash recovery
-- re-runs a prompt once; at the second crash it is quarantined (kept in history as failed, not
-- run again until re-queued by hand, which resets the count).
ALTER TABLE prompts ADD COLUMN crash_count INTEGER NOT NULL DEFAULT 0;
