-- Queue items and their history live in one table: a prompt is one row from the moment it is
-- accepted until it is deleted from history. Status: pending, running, done, failed,
-- interrupted, cancelled.
CREATE TABLE prompts (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id        TEXT    NOT NULL UNIQUE,
    number           REAL    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'interrupted', 'cancelled')),
    prompt           TEXT    NOT NULL,
    extra_data       TEXT    NOT NULL,
    outputs_to_execute TEXT  NOT NULL,
    client_id        TEXT,
    reason           TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    -- History parts, written when the prompt finishes.
    outputs          TEXT,
    status_messages  TEXT,
    meta             TEXT,
    in_history       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX prompts_pending ON prompts (status, number, seq);
CREATE INDEX prompts_history ON prompts (in_history, finished_at, seq);

-- Saved workflows (editor format) with every previous version kept.
CREATE TABLE workflows (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    version     INTEGER NOT NULL,
    content     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE workflow_versions (
    workflow_id TEXT    NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    content     TEXT    NOT NULL,
    saved_at    INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

-- Every image a node wrote, so outputs can be found by prompt without scanning folders.
CREATE TABLE images (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id   TEXT    NOT NULL,
    node_id     TEXT    NOT NULL,
    filename    TEXT    NOT NULL,
    subfolder   TEXT    NOT NULL,
    folder_type TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX images_prompt ON images (prompt_id);
