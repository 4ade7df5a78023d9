//! Where one stream of writes goes: the accept of a prompt, or the worker's bookkeeping.
//!
//! On SQLite a [`Writer`] holds one connection of its own, taken out of the pool and used under a
//! lock. A pooled connection costs sqlx more than the statement on a re-queue's path: each
//! release pings the connection from a task of its own, a round trip to the connection's
//! thread, and the next statement may land on another connection, whose page cache the last
//! write has made stale. SQLite writes one at a time anyway. On PostgreSQL, where a connection
//! can drop with the server and the accepts of many clients run side by side, each statement
//! takes a pooled connection as before.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};
use tokio::sync::{Mutex, MutexGuard};

/// One stream of writes; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) enum Writer {
    /// A connection from the pool for each statement.
    Pooled(AnyPool),
    /// One connection, taken from `pool` when first needed and again after it broke.
    Held {
        pool: AnyPool,
        conn: Arc<Mutex<Option<AnyConnection>>>,
    },
}

/// The connection a statement runs on, lent by a [`Writer`].
pub(crate) enum WriterConn<'a> {
    Pooled(PoolConnection<Any>),
    /// Always `Some` while lent: [`Writer::conn`] fills it before lending it.
    Held(MutexGuard<'a, Option<AnyConnection>>),
}

impl Writer {
    /// A writer holding one connection of `pool`.
    pub(crate) fn held(pool: AnyPool) -> Writer {
        Writer::Held {
            pool,
            conn: Arc::default(),
        }
    }

    /// The connection for the next statement; waits for the one before it on a held
    /// connection.
    pub(crate) async fn conn(&self) -> Result<WriterConn<'_>, sqlx::Error> {
        match self {
            Writer::Pooled(pool) => Ok(WriterConn::Pooled(pool.acquire().await?)),
            Writer::Held { pool, conn } => {
                let mut guard = conn.lock().await;
                if guard.is_none() {
                    *guard = Some(pool.acquire().await?.detach());
                }
                Ok(WriterConn::Held(guard))
            }
        }
    }
}

impl WriterConn<'_> {
    /// Passes on a statement's `result`; a failure other than the database refusing the
    /// statement (an I/O error, a crashed connection thread) lets the held connection go, so the
    /// next statement opens a fresh one.
    pub(crate) fn settle<T>(self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if let (Err(e), WriterConn::Held(mut guard)) = (&result, self) {
            if !matches!(e, sqlx::Error::Database(_) | sqlx::Error::RowNotFound) {
                *guard = None;
            }
        }
        result
    }
}

impl Deref for WriterConn<'_> {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            WriterConn::Pooled(conn) => conn,
            WriterConn::Held(guard) => guard.as_ref().expect("a lent held connection is open"),
        }
    }
}

impl DerefMut for WriterConn<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            WriterConn::Pooled(conn) => conn,
            WriterConn::Held(guard) => guard.as_mut().expect("a lent held connection is open"),
        }
    }
}
