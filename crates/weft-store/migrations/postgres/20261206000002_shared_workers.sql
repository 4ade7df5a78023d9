-- What a worker offers, for placement and `GET /api/weft/workers`: its device, its model
-- budget in bytes, and the checkpoints it holds loaded (a JSON array of names as prompts give
-- them, `ckpt_name`).
ALTER TABLE workers ADD COLUMN device TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN memory_budget BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN checkpoints TEXT NOT NULL DEFAULT '[]';

-- The queue's pause, one flag for every worker (one row); a claim reads it in its statement.
CREATE TABLE queue_control (
    id     BIGINT PRIMARY KEY CHECK (id = 1),
    paused BIGINT NOT NULL DEFAULT 0
);
INSERT INTO queue_control (id, paused) VALUES (1, 0);

-- Notifications over NOTIFY's 8000-byte payload limit: the payload is kept here and the
-- notification carries its id; rows older than a minute are deleted as new ones come.
CREATE TABLE notify_spill (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
