-- Preview images of prompts running on one worker, for the workers whose sockets relay them: the
-- image is kept here and the notification carries the row's id, which is also its sequence
-- number; rows older than a few seconds are deleted as new ones come.
CREATE TABLE previews (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prompt_id  TEXT   NOT NULL,
    image      BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);

-- The model files a worker holds loaded, by model folder, as prompts name them (a JSON object:
-- `{"checkpoints": [...], "diffusion_models": [...]}`); it replaces the checkpoints alone.
ALTER TABLE workers DROP COLUMN checkpoints;
ALTER TABLE workers ADD COLUMN models TEXT NOT NULL DEFAULT '{}';
