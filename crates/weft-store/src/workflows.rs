//! Saved workflows with their version history. Content is stored as the exact text given, so a
//! workflow loaded back is byte-identical to what was saved.

use sqlx::Row;

use crate::{now_ms, SqlContext, Store, StoreError};

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
    /// When version 1 was saved, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When the current version was saved, in milliseconds since the Unix epoch.
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

fn to_workflow(row: &sqlx::sqlite::SqliteRow) -> WorkflowRow {
    WorkflowRow {
        id: row.get("id"),
        name: row.get("name"),
        description: row.get("description"),
        version: row.get("version"),
        content: row.get("content"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

impl Store {
    /// Saves a new workflow as version 1.
    pub async fn create_workflow(
        &self,
        id: &str,
        name: &str,
        description: &str,
        content: &str,
    ) -> Result<WorkflowRow, StoreError> {
        let now = now_ms();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .doing("starting to save a workflow")?;
        sqlx::query(
            "INSERT INTO workflows (id, name, description, version, content, created_at, updated_at) VALUES (?, ?, ?, 1, ?, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(description)
        .bind(content)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .doing("saving a workflow")?;
        sqlx::query(
            "INSERT INTO workflow_versions (workflow_id, version, name, description, content, saved_at) VALUES (?, 1, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(description)
        .bind(content)
        .bind(now)
        .execute(&mut *tx)
        .await
        .doing("saving a workflow version")?;
        tx.commit().await.doing("committing a workflow")?;
        Ok(WorkflowRow {
            id: id.into(),
            name: name.into(),
            description: description.into(),
            version: 1,
            content: content.into(),
            created_at: now,
            updated_at: now,
        })
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .doing("starting to update a workflow")?;
        let version: Option<i64> = sqlx::query_scalar("SELECT version FROM workflows WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .doing("reading a workflow version")?;
        let Some(version) = version else {
            return Ok(None);
        };
        let next = version + 1;
        sqlx::query("UPDATE workflows SET name = ?, description = ?, version = ?, content = ?, updated_at = ? WHERE id = ?")
            .bind(name)
            .bind(description)
            .bind(next)
            .bind(content)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .doing("updating a workflow")?;
        sqlx::query(
            "INSERT INTO workflow_versions (workflow_id, version, name, description, content, saved_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(next)
        .bind(name)
        .bind(description)
        .bind(content)
        .bind(now)
        .execute(&mut *tx)
        .await
        .doing("saving a workflow version")?;
        tx.commit().await.doing("committing a workflow update")?;
        self.workflow(id).await
    }

    /// The current version of the workflow `id`, or None if there is no such workflow.
    pub async fn workflow(&self, id: &str) -> Result<Option<WorkflowRow>, StoreError> {
        let row = sqlx::query("SELECT * FROM workflows WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .doing("reading a workflow")?;
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

    /// Deletes a workflow and its versions; false if there was none.
    pub async fn delete_workflow(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM workflows WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .doing("deleting a workflow")?;
        Ok(done.rows_affected() > 0)
    }

    /// Every kept version of a workflow, oldest first.
    pub async fn workflow_versions(&self, id: &str) -> Result<Vec<WorkflowVersionRow>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM workflow_versions WHERE workflow_id = ? ORDER BY version")
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
}
