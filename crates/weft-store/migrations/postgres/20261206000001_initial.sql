-- The schema of migrations/sqlite as of its 20261206000001_leases, in PostgreSQL's dialect: the
-- same tables, columns and meanings (see the SQLite files for the comments), integers as BIGINT
-- and documents as TEXT, so both read back as the same types.
CREATE TABLE prompts (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prompt_id        TEXT    NOT NULL UNIQUE,
    number           DOUBLE PRECISION NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'interrupted', 'cancelled')),
    prompt           TEXT    NOT NULL,
    extra_data       TEXT    NOT NULL,
    outputs_to_execute TEXT  NOT NULL,
    client_id        TEXT,
    reason           TEXT,
    created_at       BIGINT  NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    outputs          TEXT,
    status_messages  TEXT,
    meta             TEXT,
    in_history       BIGINT  NOT NULL DEFAULT 0,
    crash_count      BIGINT  NOT NULL DEFAULT 0,
    -- The worker running it (`Store::worker_id`) and, in milliseconds of the database's clock,
    -- until when its lease holds; a running prompt whose lease ran out is recovered as after a
    -- crash. An interrupt asked on another worker is set here; the owner reads it as it renews.
    worker_id        TEXT,
    lease_until      BIGINT,
    interrupt_requested BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX prompts_pending ON prompts (status, number, seq);
CREATE INDEX prompts_history ON prompts (in_history, finished_at, seq);

CREATE TABLE workflows (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    version     BIGINT  NOT NULL,
    content     TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    file        TEXT    NOT NULL
);
CREATE UNIQUE INDEX workflows_file ON workflows (file);

CREATE TABLE workflow_versions (
    workflow_id TEXT    NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version     BIGINT  NOT NULL,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    content     TEXT    NOT NULL,
    saved_at    BIGINT  NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE workflow_file_imports (
    file        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    imported_at BIGINT  NOT NULL,
    PRIMARY KEY (file, sha256)
);

CREATE TABLE images (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prompt_id   TEXT    NOT NULL,
    node_id     TEXT    NOT NULL,
    filename    TEXT    NOT NULL,
    subfolder   TEXT    NOT NULL,
    folder_type TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX images_prompt ON images (prompt_id);

-- Workers that share this queue: each writes its row at start and as it renews its leases.
CREATE TABLE workers (
    worker_id   TEXT    PRIMARY KEY,
    address     TEXT    NOT NULL,
    started_at  BIGINT  NOT NULL,
    seen_at     BIGINT  NOT NULL,
    running     TEXT
);
