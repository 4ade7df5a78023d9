-- Each library workflow is also the user-data file `workflows/<file>` that ComfyUI's frontend
-- lists, opens and saves (`/userdata/workflows%2F<file>`): `file` is its path under
-- `workflows/`, unique. Existing workflows get their name as the file name ('/' and '\' become
-- '_'); names that would clash get their id added.
ALTER TABLE workflows ADD COLUMN file TEXT;
UPDATE workflows SET file = replace(replace(trim(name), '/', '_'), '\', '_') || '.json';
UPDATE workflows SET file = substr(file, 1, length(file) - 5) || ' (' || id || ').json'
    WHERE file IN (SELECT file FROM workflows GROUP BY file HAVING count(*) > 1);
CREATE UNIQUE INDEX workflows_file ON workflows (file);

-- Workflow files found in the user folder and copied into the library at start, by path under
-- `workflows/` and content hash: a file is imported once, so a workflow deleted or renamed in
-- the library does not come back from the file it was imported from.
CREATE TABLE workflow_file_imports (
    file        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    imported_at INTEGER NOT NULL,
    PRIMARY KEY (file, sha256)
);
