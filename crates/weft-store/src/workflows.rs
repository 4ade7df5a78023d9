//! Saved workflows with their version history. Content is stored as the exact text given, so a
//! workflow loaded back is byte-identical to what was saved.
//!
//! Each workflow is also a file name (`file`, unique): its path under the user folder's
//! `workflows/`, through which ComfyUI's frontend lists, opens, saves, renames and deletes it.
//! The `*_workflow_file` methods are that view; they keep the library the one copy.

use sqlx::Row;

use crate::{now_ms, SqlContext, Store, StoreError, Tx};

/// The current version of a saved workflow.
#[derive(Debug, Clone)]
pub struct WorkflowRow {
    /// The workflow's id, chosen by the caller at creation (the server uses a UUID).
    pub id: String,
    /// The name shown in workflow lists.
    pub name: String,
    /// Free text about the workflow; empty when none was given.
    pub description: String,
    /// The current version number: 1 at creation, one more per update.
    pub version: i64,
    /// The workflow document (editor-format JSON), byte for byte as saved.
    pub content: String,
    /// Its file: the path under the user folder's `workflows/` (`sub/name.json`), unique.
    pub file: String,
    /// When version 1 was saved, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When the current version was saved (or the file renamed), in milliseconds since the
    /// Unix epoch.
    pub updated_at: i64,
}

/// One kept version.
#[derive(Debug, Clone)]
pub struct WorkflowVersionRow {
    /// The version number, from 1.
    pub version: i64,
    /// The workflow's name as of this version.
    pub name: String,
    /// The workflow's description as of this version; may be empty.
    pub description: String,
    /// The workflow document of this version, byte for byte as saved.
    pub content: String,
    /// When this version was saved, in milliseconds since the Unix epoch.
    pub saved_at: i64,
}

/// A workflow as a file in a listing: no content.
#[derive(Debug, Clone)]
pub struct WorkflowFileRow {
    /// The workflow's id.
    pub id: String,
    /// Its path under `workflows/`.
    pub file: String,
    /// The current content's size in bytes.
    pub size: i64,
    /// When version 1 was saved, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When the current version was saved, in milliseconds since the Unix epoch.
    pub updated_at: i64,
}

/// What [`Store::save_workflow_file`] did.
#[derive(Debug, Clone)]
pub enum FileSave {
    /// No workflow had that file: a new one was created (version 1).
    Created(WorkflowRow),
    /// The workflow with that file got a new version.
    Updated(WorkflowRow),
    /// A workflow has that file and `overwrite` was false; nothing changed.
    Exists,
}

/// What [`Store::move_workflow_file`] did.
#[derive(Debug, Clone)]
pub enum FileMove {
    /// The workflow now has the new file (and the new name).
    Moved(WorkflowRow),
    /// No workflow has the source file.
    NoSource,
    /// Another workflow has the destination file and `overwrite` was false; nothing changed.
    Exists,
}

/// What [`Store::import_workflow_file`] did.
#[derive(Debug, Clone)]
pub enum FileImport {
    /// A new workflow was created from the file.
    Created(WorkflowRow),
    /// The workflow with that file got the file's content as a new version.
    NewVersion(WorkflowRow),
    /// The workflow with that file already has this content.
    Unchanged,
    /// This file with this content was imported before; nothing changed.
    AlreadyImported,
}

fn to_workflow(row: &sqlx::any::AnyRow) -> WorkflowRow {
    WorkflowRow {
        id: row.get("id"),
        name: row.get("name"),
        description: row.get("description"),
        version: row.get("version"),
        content: row.get("content"),
        file: row.get("file"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

async fn row_by_id(tx: &mut Tx, id: &str) -> Result<Option<WorkflowRow>, StoreError> {
    let row = sqlx::query("SELECT * FROM workflows WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .doing("reading a workflow")?;
    Ok(row.as_ref().map(to_workflow))
}

async fn row_by_file(tx: &mut Tx, file: &str) -> Result<Option<WorkflowRow>, StoreError> {
    let row = sqlx::query("SELECT * FROM workflows WHERE file = $1")
        .bind(file)
        .fetch_optional(&mut **tx)
        .await
        .doing("reading a workflow by file")?;
    Ok(row.as_ref().map(to_workflow))
}

/// `wanted` if no other workflow has it, else `stem (2).ext`, `stem (3).ext`, …
async fn free_file(tx: &mut Tx, wanted: &str, except_id: &str) -> Result<String, StoreError> {
    let (stem, ext) = match wanted.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.contains('/') => (stem, format!(".{ext}")),
        _ => (wanted, String::new()),
    };
    let mut candidate = wanted.to_owned();
    let mut n = 2;
    loop {
        let holder: Option<String> = sqlx::query_scalar("SELECT id FROM workflows WHERE file = $1")
            .bind(&candidate)
            .fetch_optional(&mut **tx)
            .await
            .doing("looking for a free workflow file name")?;
        match holder {
            None => return Ok(candidate),
            Some(id) if id == except_id => return Ok(candidate),
            Some(_) => {
                candidate = format!("{stem} ({n}){ext}");
                n += 1;
            }
        }
    }
}

async fn insert_workflow(
    tx: &mut Tx,
    id: &str,
    name: &str,
    description: &str,
    content: &str,
    file: &str,
    now: i64,
) -> Result<WorkflowRow, StoreError> {
    sqlx::query(
        "INSERT INTO workflows (id, name, description, version, content, file, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(name)
    .bind(description)
    .bind(content)
    .bind(file)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await
    .doing("saving a workflow")?;
    insert_version(tx, id, 1, name, description, content, now).await?;
    Ok(WorkflowRow {
        id: id.into(),
        name: name.into(),
        description: description.into(),
        version: 1,
        content: content.into(),
        file: file.into(),
        created_at: now,
        updated_at: now,
    })
}

async fn insert_version(
    tx: &mut Tx,
    id: &str,
    version: i64,
    name: &str,
    description: &str,
    content: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO workflow_versions (workflow_id, version, name, description, content, saved_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(version)
    .bind(name)
    .bind(description)
    .bind(content)
    .bind(now)
    .execute(&mut **tx)
    .await
    .doing("saving a workflow version")?;
    Ok(())
}

/// Saves `content` as the next version of `current` (name and description as given).
async fn add_version(
    tx: &mut Tx,
    current: &WorkflowRow,
    name: &str,
    description: &str,
    content: &str,
    now: i64,
) -> Result<WorkflowRow, StoreError> {
    let next = current.version + 1;
    sqlx::query("UPDATE workflows SET name = $1, description = $2, version = $3, content = $4, updated_at = $5 WHERE id = $6")
        .bind(name)
        .bind(description)
        .bind(next)
        .bind(content)
        .bind(now)
        .bind(&current.id)
        .execute(&mut **tx)
        .await
        .doing("updating a workflow")?;
    insert_version(tx, &current.id, next, name, description, content, now).await?;
    Ok(WorkflowRow {
        name: name.into(),
        description: description.into(),
        version: next,
        content: content.into(),
        updated_at: now,
        ..current.clone()
    })
}

async fn delete_by_id(tx: &mut Tx, id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM workflows WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await
        .doing("deleting a workflow")?;
    Ok(())
}

impl Store {
    /// Saves a new workflow as version 1, with the file `file` or, when another workflow has
    /// it, the first free `stem (n).json`.
    pub async fn create_workflow(
        &self,
        id: &str,
        name: &str,
        description: &str,
        content: &str,
        file: &str,
    ) -> Result<WorkflowRow, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write("starting to save a workflow").await?;
        let file = free_file(&mut tx, file, id).await?;
        let row = insert_workflow(&mut tx, id, name, description, content, &file, now).await?;
        tx.commit().await.doing("committing a workflow")?;
        Ok(row)
    }

    /// Saves a new version of an existing workflow; the previous one stays in its history.
    /// Returns None when there is no such workflow.
    pub async fn update_workflow(
        &self,
        id: &str,
        name: &str,
        description: &str,
        content: &str,
    ) -> Result<Option<WorkflowRow>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write("starting to update a workflow").await?;
        let Some(current) = row_by_id(&mut tx, id).await? else {
            return Ok(None);
        };
        let row = add_version(&mut tx, &current, name, description, content, now).await?;
        tx.commit().await.doing("committing a workflow update")?;
        Ok(Some(row))
    }

    /// Gives a workflow the file `wanted` or, when another workflow has it, the first free
    /// `stem (n).json`; no new version. None when there is no such workflow.
    pub async fn rename_workflow_file(
        &self,
        id: &str,
        wanted: &str,
    ) -> Result<Option<WorkflowRow>, StoreError> {
        let mut tx = self
            .begin_write("starting to rename a workflow file")
            .await?;
        let Some(current) = row_by_id(&mut tx, id).await? else {
            return Ok(None);
        };
        if current.file == wanted {
            return Ok(Some(current));
        }
        let file = free_file(&mut tx, wanted, id).await?;
        let now = now_ms();
        sqlx::query("UPDATE workflows SET file = $1, updated_at = $2 WHERE id = $3")
            .bind(&file)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .doing("renaming a workflow file")?;
        tx.commit().await.doing("committing a workflow rename")?;
        Ok(Some(WorkflowRow {
            file,
            updated_at: now,
            ..current
        }))
    }

    /// The current version of the workflow `id`, or None if there is no such workflow.
    pub async fn workflow(&self, id: &str) -> Result<Option<WorkflowRow>, StoreError> {
        let row = sqlx::query("SELECT * FROM workflows WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .doing("reading a workflow")?;
        Ok(row.as_ref().map(to_workflow))
    }

    /// The workflow whose file is `file` (its path under `workflows/`), if any.
    pub async fn workflow_by_file(&self, file: &str) -> Result<Option<WorkflowRow>, StoreError> {
        let row = sqlx::query("SELECT * FROM workflows WHERE file = $1")
            .bind(file)
            .fetch_optional(&self.pool)
            .await
            .doing("reading a workflow by file")?;
        Ok(row.as_ref().map(to_workflow))
    }

    /// All saved workflows, most recently updated first.
    pub async fn workflows(&self) -> Result<Vec<WorkflowRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM workflows ORDER BY updated_at DESC, id")
            .fetch_all(&self.pool)
            .await
            .doing("listing workflows")?;
        Ok(rows.iter().map(to_workflow).collect())
    }

    /// Every workflow as a file (without content), by file name.
    pub async fn workflow_files(&self) -> Result<Vec<WorkflowFileRow>, StoreError> {
        let rows = sqlx::query(self.dialect(
            "SELECT id, file, length(CAST(content AS BLOB)) AS size, created_at, updated_at FROM workflows ORDER BY file",
            "SELECT id, file, octet_length(content)::BIGINT AS size, created_at, updated_at FROM workflows ORDER BY file COLLATE \"C\"",
        ))
        .fetch_all(&self.pool)
        .await
        .doing("listing workflow files")?;
        Ok(rows
            .iter()
            .map(|row| WorkflowFileRow {
                id: row.get("id"),
                file: row.get("file"),
                size: row.get("size"),
                created_at: row.get("created_at"),
                updated_at: row.get("updated_at"),
            })
            .collect())
    }

    /// Deletes a workflow and its versions; false if there was none.
    pub async fn delete_workflow(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM workflows WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .doing("deleting a workflow")?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes the workflow whose file is `file`, with its versions; false if there was none.
    pub async fn delete_workflow_file(&self, file: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM workflows WHERE file = $1")
            .bind(file)
            .execute(&self.pool)
            .await
            .doing("deleting a workflow by file")?;
        Ok(done.rows_affected() > 0)
    }

    /// Every kept version of a workflow, oldest first.
    pub async fn workflow_versions(&self, id: &str) -> Result<Vec<WorkflowVersionRow>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM workflow_versions WHERE workflow_id = $1 ORDER BY version")
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .doing("listing workflow versions")?;
        Ok(rows
            .iter()
            .map(|row| WorkflowVersionRow {
                version: row.get("version"),
                name: row.get("name"),
                description: row.get("description"),
                content: row.get("content"),
                saved_at: row.get("saved_at"),
            })
            .collect())
    }

    /// Saves `content` as the file `file`, in one transaction: a new version of the workflow
    /// that has it (unless `overwrite` is false), else a new workflow `new_id` named `name`.
    pub async fn save_workflow_file(
        &self,
        new_id: &str,
        file: &str,
        name: &str,
        content: &str,
        overwrite: bool,
    ) -> Result<FileSave, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write("starting to save a workflow file").await?;
        let saved = match row_by_file(&mut tx, file).await? {
            Some(_) if !overwrite => return Ok(FileSave::Exists),
            Some(current) => FileSave::Updated(
                add_version(
                    &mut tx,
                    &current,
                    &current.name,
                    &current.description,
                    content,
                    now,
                )
                .await?,
            ),
            None => FileSave::Created(
                insert_workflow(&mut tx, new_id, name, "", content, file, now).await?,
            ),
        };
        tx.commit().await.doing("committing a workflow file")?;
        Ok(saved)
    }

    /// Renames the workflow with the file `from` to the file `to` and the name `name` (no new
    /// version). A workflow that has `to` is deleted first when `overwrite` is true, as a file
    /// moved over another replaces it.
    pub async fn move_workflow_file(
        &self,
        from: &str,
        to: &str,
        name: &str,
        overwrite: bool,
    ) -> Result<FileMove, StoreError> {
        let mut tx = self.begin_write("starting to move a workflow file").await?;
        let Some(source) = row_by_file(&mut tx, from).await? else {
            return Ok(FileMove::NoSource);
        };
        if from == to {
            return Ok(FileMove::Moved(source));
        }
        if let Some(target) = row_by_file(&mut tx, to).await? {
            if !overwrite {
                return Ok(FileMove::Exists);
            }
            delete_by_id(&mut tx, &target.id).await?;
        }
        let now = now_ms();
        sqlx::query("UPDATE workflows SET file = $1, name = $2, updated_at = $3 WHERE id = $4")
            .bind(to)
            .bind(name)
            .bind(now)
            .bind(&source.id)
            .execute(&mut *tx)
            .await
            .doing("moving a workflow file")?;
        tx.commit().await.doing("committing a workflow move")?;
        Ok(FileMove::Moved(WorkflowRow {
            file: to.into(),
            name: name.into(),
            updated_at: now,
            ..source
        }))
    }

    /// Imports a workflow file found on disk (`file` under `workflows/`, whose content hashes
    /// to `sha256`), once per file and content: a new workflow `new_id` named `name`, or a new
    /// version of the workflow that has the file when its content differs.
    pub async fn import_workflow_file(
        &self,
        new_id: &str,
        file: &str,
        name: &str,
        content: &str,
        sha256: &str,
    ) -> Result<FileImport, StoreError> {
        let now = now_ms();
        let mut tx = self
            .begin_write("starting to import a workflow file")
            .await?;
        let seen: Option<i64> = sqlx::query_scalar(
            "SELECT imported_at FROM workflow_file_imports WHERE file = $1 AND sha256 = $2",
        )
        .bind(file)
        .bind(sha256)
        .fetch_optional(&mut *tx)
        .await
        .doing("reading the workflow imports")?;
        if seen.is_some() {
            return Ok(FileImport::AlreadyImported);
        }
        let outcome = match row_by_file(&mut tx, file).await? {
            Some(current) if current.content == content => FileImport::Unchanged,
            Some(current) => FileImport::NewVersion(
                add_version(
                    &mut tx,
                    &current,
                    &current.name,
                    &current.description,
                    content,
                    now,
                )
                .await?,
            ),
            None => FileImport::Created(
                insert_workflow(&mut tx, new_id, name, "", content, file, now).await?,
            ),
        };
        sqlx::query(
            "INSERT INTO workflow_file_imports (file, sha256, imported_at) VALUES ($1, $2, $3)",
        )
        .bind(file)
        .bind(sha256)
        .bind(now)
        .execute(&mut *tx)
        .await
        .doing("recording a workflow import")?;
        tx.commit().await.doing("committing a workflow import")?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_are_unique_and_follow_saves_moves_and_imports() {
        let dir = tempfile::tempdir().unwrap();
        workflow_files(Store::open(&dir.path().join("t.db")).await.unwrap()).await;
    }

    #[tokio::test]
    async fn workflow_files_on_postgres() {
        if let Some((_server, store)) = crate::test_postgres().await {
            workflow_files(store).await;
        }
    }

    async fn workflow_files(store: Store) {
        let a = store
            .create_workflow("a", "flow", "", "{}", "flow.json")
            .await
            .unwrap();
        assert_eq!(a.file, "flow.json");
        let b = store
            .create_workflow("b", "flow", "", "{}", "flow.json")
            .await
            .unwrap();
        assert_eq!(b.file, "flow (2).json", "a taken name gets a number");

        // Saving a file: a version of the workflow that has it, or a new workflow.
        let FileSave::Updated(row) = store
            .save_workflow_file("x", "flow.json", "flow", r#"{"v":2}"#, true)
            .await
            .unwrap()
        else {
            panic!("expected an update");
        };
        assert_eq!((row.id.as_str(), row.version), ("a", 2));
        assert!(matches!(
            store
                .save_workflow_file("x", "flow.json", "flow", "{}", false)
                .await
                .unwrap(),
            FileSave::Exists
        ));
        assert!(matches!(
            store
                .save_workflow_file("c", "sub/new.json", "new", "{}", false)
                .await
                .unwrap(),
            FileSave::Created(_)
        ));

        // Moving: refused onto a taken file unless overwriting, which replaces it.
        assert!(matches!(
            store
                .move_workflow_file("flow.json", "sub/new.json", "new", false)
                .await
                .unwrap(),
            FileMove::Exists
        ));
        assert!(matches!(
            store
                .move_workflow_file("nope.json", "x.json", "x", false)
                .await
                .unwrap(),
            FileMove::NoSource
        ));
        let FileMove::Moved(moved) = store
            .move_workflow_file("flow.json", "sub/new.json", "new", true)
            .await
            .unwrap()
        else {
            panic!("expected a move");
        };
        assert_eq!((moved.id.as_str(), moved.name.as_str()), ("a", "new"));
        assert_eq!(moved.version, 2, "a move is not a new version");
        assert!(store.workflow("c").await.unwrap().is_none());
        let files: Vec<String> = store
            .workflow_files()
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.file)
            .collect();
        assert_eq!(files, ["flow (2).json", "sub/new.json"]);

        // Importing: once per file and content.
        let imported = store
            .import_workflow_file("d", "disk.json", "disk", "{}", "h1")
            .await
            .unwrap();
        assert!(matches!(imported, FileImport::Created(_)));
        assert!(matches!(
            store
                .import_workflow_file("d2", "disk.json", "disk", "{}", "h1")
                .await
                .unwrap(),
            FileImport::AlreadyImported
        ));
        assert!(matches!(
            store
                .import_workflow_file("d2", "disk.json", "disk", "{\"b\":1}", "h2")
                .await
                .unwrap(),
            FileImport::NewVersion(_)
        ));
        assert!(store.delete_workflow_file("disk.json").await.unwrap());
        assert!(matches!(
            store
                .import_workflow_file("d3", "disk.json", "disk", "{}", "h1")
                .await
                .unwrap(),
            FileImport::AlreadyImported
        ));
        let renamed = store
            .rename_workflow_file("b", "sub/new.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(renamed.file, "sub/new (2).json");
    }
}
