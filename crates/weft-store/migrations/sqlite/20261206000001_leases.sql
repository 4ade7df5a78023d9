-- Which worker runs a prompt and until when its lease holds, and an interrupt asked of that
-- worker. Used by the PostgreSQL queue that many workers share (see the postgres migrations);
-- SQLite has one worker per file, so its crash recovery stays by restart and these stay empty.
ALTER TABLE prompts ADD COLUMN worker_id TEXT;
ALTER TABLE prompts ADD COLUMN lease_until INTEGER;
ALTER TABLE prompts ADD COLUMN interrupt_requested INTEGER NOT NULL DEFAULT 0;
