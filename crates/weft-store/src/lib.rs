//! Durable state in SQLite or PostgreSQL (through sqlx's `Any` driver): the prompt queue and its
//! history (also listed as jobs), saved workflows and image records. The schema lives in
//! `migrations/sqlite` and `migrations/postgres` (the same tables, each in its dialect), which run
//! at open.
//!
//! One SQL text serves both databases wherever their dialects agree (placeholders are `$1`, `$2`,
//! …, which SQLite reads too); the few statements that differ are chosen by [`Backend`] next to
//! each other. SQLite is the embedded default, one server per file; PostgreSQL lets many workers
//! share one queue: each claims with `FOR UPDATE SKIP LOCKED` and holds a lease on its prompt
//! (`leases`), and they tell each other of events through `LISTEN`/`NOTIFY` (`notify`).
//!
//! Invariant: the only place with SQL. Imports no other Weft layer; documents are opaque JSON here.
//! A prompt row is written (and committed) before its id is handed to the client, so a crash never
//! loses an accepted prompt.

#![warn(missing_docs)]

mod jobs;
mod leases;
mod notify;
mod prompts;
pub mod testing;
mod workflows;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyPool, ConnectOptions, Executor, Transaction};

use writer::Writer;

pub use jobs::{JobFilter, JobOrder};
pub use leases::{Lease, ModelNames, WorkerReport, WorkerRow};
pub use notify::{Listener, Notification};
pub use prompts::{Claimed, NewPrompt, PromptRow, PromptStatus, QueueNumber, Queued, Recovery};
pub use workflows::{
    FileImport, FileMove, FileSave, WorkflowFileRow, WorkflowRow, WorkflowVersionRow,
};

/// A store failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `enqueue` found a prompt with this id still queued or running.
    #[error("prompt id '{0}' is already queued")]
    AlreadyQueued(String),
    /// A query or transaction failed.
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

/// Which database a store is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One file, one server (the default).
    Sqlite,
    /// A server many workers share.
    Postgres,
}

/// The database handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Where a new prompt is written: on SQLite one connection of `pool`, held (`writer`).
    accept: Writer,
    /// Where a prompt's own bookkeeping is written (its claim, its end, its image records). On
    /// SQLite a connection of its own at `synchronous = NORMAL`: these commits survive a killed
    /// process as every commit does in WAL mode, and skip the fsync that `FULL` adds for power
    /// loss, which would lose at most a claim (the prompt runs again) or an ending (recovered
    /// as an interrupted run). The accept of a prompt stays `FULL` and its fsync carries these
    /// writes to disk too. On PostgreSQL the pool.
    bookkeeping: Writer,
    backend: Backend,
    /// This process's worker id: the owner written into the prompts it claims.
    worker_id: Arc<str>,
    /// How long a claim or a renewal holds a prompt, in milliseconds (PostgreSQL).
    lease_ms: i64,
    /// A native pool for `LISTEN`/`NOTIFY` (PostgreSQL).
    notify: Option<sqlx::PgPool>,
}

/// How long a lease holds unless told otherwise: a worker renews well within it, and a killed
/// worker's prompt runs elsewhere after at most this long.
pub const DEFAULT_LEASE_MS: i64 = 30_000;

pub(crate) type Tx = Transaction<'static, Any>;

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` in WAL mode and runs the
    /// migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let url = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .to_url_lossy();
        let options = AnyConnectOptions::from_url(&url).doing("building connection options")?;
        sqlx::any::install_default_drivers();
        // FULL: a committed prompt survives power loss, not just a process kill.
        let pool = sqlite_pool(&options, 4, "FULL").await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let mut store = Store::new(pool, Backend::Sqlite);
        store.accept = Writer::held(store.pool.clone());
        store.bookkeeping = Writer::held(sqlite_pool(&options, 1, "NORMAL").await?);
        Ok(store)
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user@host/db`, or
    /// `postgres:///db?host=/run/postgresql` for a unix socket) and runs the migrations, which
    /// take an advisory lock, so workers starting together migrate once.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Sql {
                doing: "reading the database URL",
                source: sqlx::Error::Configuration(
                    "expected a postgres:// or postgresql:// URL".into(),
                ),
            });
        }
        let options = AnyConnectOptions::from_str(url).doing("reading the database URL")?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .doing("connecting to PostgreSQL")?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let mut store = Store::new(pool, Backend::Postgres);
        store.notify = Some(notify::notify_pool(url).await?);
        Ok(store)
    }

    fn new(pool: AnyPool, backend: Backend) -> Store {
        Store {
            accept: Writer::Pooled(pool.clone()),
            bookkeeping: Writer::Pooled(pool.clone()),
            pool,
            backend,
            worker_id: leases::new_worker_id().into(),
            lease_ms: DEFAULT_LEASE_MS,
            notify: None,
        }
    }

    /// The same store with leases of `lease_ms` milliseconds.
    pub fn with_lease_ms(mut self, lease_ms: i64) -> Store {
        self.lease_ms = lease_ms.max(1);
        self
    }

    /// How long a claim or a renewal holds a prompt, in milliseconds.
    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// True when other processes may run prompts from the same queue (PostgreSQL): crash
    /// recovery is then by lease, not at start.
    pub fn is_shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// This process's worker id (`host:pid:random`), as written into the prompts it claims.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// A write transaction: SQLite takes the write lock at once (`BEGIN IMMEDIATE`), so two
    /// writers never deadlock upgrading; PostgreSQL locks rows as it goes.
    pub(crate) async fn begin_write(&self, doing: &'static str) -> Result<Tx, StoreError> {
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        self.pool.begin_with(begin).await.doing(doing)
    }

    /// The statement for this database: `sqlite` or `postgres`, for the few that differ.
    pub(crate) fn dialect<T>(&self, sqlite: T, postgres: T) -> T {
        match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        }
    }
}

/// A pool on the SQLite file in WAL mode at the given `synchronous` level.
async fn sqlite_pool(
    options: &AnyConnectOptions,
    connections: u32,
    synchronous: &'static str,
) -> Result<AnyPool, StoreError> {
    AnyPoolOptions::new()
        .max_connections(connections)
        // sqlx pings a pooled connection before lending it, a round trip to its SQLite thread
        // on every statement; a connection to a local file does not go stale.
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(
                    format!(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;"
                    )
                    .as_str(),
                )
                .await?;
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await
        .doing("opening the database")
}

/// A store on a fresh throw-away PostgreSQL server, or None (the test skips) when none can be
/// started; keep the server alive as long as the store.
#[cfg(test)]
pub(crate) async fn test_postgres() -> Option<(testing::TestPostgres, Store)> {
    let server = testing::TestPostgres::start()?;
    let store = Store::connect(&server.url("postgres"))
        .await
        .expect("connect to the test server");
    Some((server, store))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
