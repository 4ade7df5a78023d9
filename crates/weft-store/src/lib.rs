//! Durable state in SQLite (through sqlx): the prompt queue and its history (also listed as jobs),
//! saved workflows and image records. The schema lives in `migrations/`, which run at open.
//!
//! Invariant: the only place with SQL. Imports no other Weft layer; documents are opaque JSON here.
//! A prompt row is written (and committed) before its id is handed to the client, so a crash never
//! loses an accepted prompt.

#![warn(missing_docs)]

mod jobs;
mod prompts;
mod workflows;

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use jobs::{JobFilter, JobOrder};
pub use prompts::{NewPrompt, PromptRow, PromptStatus, Recovery};
pub use workflows::{
    FileImport, FileMove, FileSave, WorkflowFileRow, WorkflowRow, WorkflowVersionRow,
};

/// A store failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query or transaction failed (also returned when `enqueue` finds the id already queued).
    #[error("database error while {doing}: {source}")]
    Sql {
        /// What the store was doing, as a phrase for the message (`"reading a workflow"`).
        doing: &'static str,
        /// The underlying sqlx error.
        source: sqlx::Error,
    },
    /// The schema migrations failed while opening the database.
    #[error("could not run database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A prompt row holds text that does not parse as JSON.
    #[error("stored JSON for prompt '{prompt_id}' is corrupt: {source}")]
    CorruptJson {
        /// The id of the prompt whose row is corrupt.
        prompt_id: String,
        /// The JSON parse error.
        source: serde_json::Error,
    },
}

pub(crate) trait SqlContext<T> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError>;
}

impl<T> SqlContext<T> for Result<T, sqlx::Error> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sql { doing, source })
    }
}

/// The database handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` in WAL mode and runs the migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .doing("building connection options")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed prompt survives power loss, not just a process kill.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .doing("opening the database")?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
