//! Notifications between the workers sharing a PostgreSQL queue (`LISTEN`/`NOTIFY`), and the
//! queue's pause flag. Both go through a small native PostgreSQL pool beside the `Any` pool: a
//! listener needs a connection of its own, and `pg_notify` returns `void`, which the `Any`
//! driver cannot decode. On SQLite (one worker per file) there is nothing to tell: publishing
//! is a no-op and there is no listener. Preview images travel by reference: kept in `previews`,
//! their row's id sent.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use crate::leases::PG_NOW_MS;
use crate::{Backend, SqlContext, Store, StoreError};

/// NOTIFY's payload limit is 8000 bytes; larger payloads are kept in `notify_spill` and the
/// notification carries [`SPILLED`] and the row's id.
const MAX_PAYLOAD: usize = 7900;
const SPILLED: &str = "@spill:";
/// Spilled payloads older than this are deleted as new ones come (every listener has read them
/// long before).
const SPILL_KEEP_MS: i64 = 60_000;

/// Previews older than this are deleted as new ones are kept: a preview is relayed within
/// milliseconds, or is stale.
const PREVIEW_KEEP_MS: i64 = 10_000;

/// A notification: its channel and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The channel it was sent on.
    pub channel: String,
    /// What was sent, whatever its size.
    pub payload: String,
}

/// A connection listening on some channels (PostgreSQL).
pub struct Listener {
    listener: PgListener,
    pool: PgPool,
}

impl Listener {
    /// The next notification. If the connection was lost, it reconnects and listens again;
    /// whatever was sent meanwhile is lost (callers keep a slow poll as a safety net).
    pub async fn recv(&mut self) -> Result<Notification, StoreError> {
        let notification = self
            .listener
            .recv()
            .await
            .doing("waiting for notifications")?;
        let channel = notification.channel().to_owned();
        let payload = match notification.payload().strip_prefix(SPILLED) {
            Some(id) => {
                let id: i64 = id.parse().unwrap_or(-1);
                sqlx::query_scalar("SELECT payload FROM notify_spill WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .doing("reading a long notification")?
                    .unwrap_or_default()
            }
            None => notification.payload().to_owned(),
        };
        Ok(Notification { channel, payload })
    }
}

/// The native pool used for notifications, for the store to keep.
pub(crate) async fn notify_pool(url: &str) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url).doing("reading the database URL")?;
    // One connection for a listener, two to publish from, one to read previews with.
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .doing("connecting to PostgreSQL for notifications")
}

impl Store {
    fn notify_pool(&self) -> Option<&PgPool> {
        match self.backend {
            Backend::Sqlite => None,
            Backend::Postgres => self.notify.as_ref(),
        }
    }

    /// Listens on `channels` (PostgreSQL); `None` on SQLite.
    pub async fn listen(&self, channels: &[&str]) -> Result<Option<Listener>, StoreError> {
        let Some(pool) = self.notify_pool() else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool)
            .await
            .doing("connecting a listener")?;
        listener
            .listen_all(channels.iter().copied())
            .await
            .doing("listening for notifications")?;
        Ok(Some(Listener {
            listener,
            pool: pool.clone(),
        }))
    }

    /// Sends `payload` to every listener on `channel`, this worker's included (PostgreSQL; a
    /// no-op on SQLite). Delivered in the order sent.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        let Some(pool) = self.notify_pool() else {
            return Ok(());
        };
        let spilled;
        let payload = if payload.len() > MAX_PAYLOAD {
            let mut tx = pool.begin().await.doing("keeping a long notification")?;
            sqlx::query(&format!(
                "DELETE FROM notify_spill WHERE created_at < {PG_NOW_MS} - $1"
            ))
            .bind(SPILL_KEEP_MS)
            .execute(&mut *tx)
            .await
            .doing("deleting old long notifications")?;
            let id: i64 = sqlx::query_scalar(&format!(
                "INSERT INTO notify_spill (payload, created_at) VALUES ($1, {PG_NOW_MS}) RETURNING id"
            ))
            .bind(payload)
            .fetch_one(&mut *tx)
            .await
            .doing("keeping a long notification")?;
            tx.commit().await.doing("keeping a long notification")?;
            spilled = format!("{SPILLED}{id}");
            &spilled
        } else {
            payload
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(pool)
            .await
            .doing("sending a notification")?;
        Ok(())
    }

    /// Keeps a preview image of `prompt_id` for the other workers and returns its id, a
    /// sequence number (PostgreSQL; `None` on SQLite, where no other worker reads it). Previews
    /// older than [`PREVIEW_KEEP_MS`] are deleted in the same statement.
    pub async fn keep_preview(
        &self,
        prompt_id: &str,
        image: &[u8],
    ) -> Result<Option<i64>, StoreError> {
        let Some(pool) = self.notify_pool() else {
            return Ok(None);
        };
        let id = sqlx::query_scalar(&format!(
            "WITH stale AS (DELETE FROM previews WHERE created_at < {PG_NOW_MS} - $3) \
             INSERT INTO previews (prompt_id, image, created_at) VALUES ($1, $2, {PG_NOW_MS}) \
             RETURNING id"
        ))
        .bind(prompt_id)
        .bind(image)
        .bind(PREVIEW_KEEP_MS)
        .fetch_one(pool)
        .await
        .doing("keeping a preview for the other workers")?;
        Ok(Some(id))
    }

    /// A preview another worker kept, with how many milliseconds ago (database clock) it was
    /// kept; `None` once deleted (stale) or on SQLite.
    pub async fn preview(&self, id: i64) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let Some(pool) = self.notify_pool() else {
            return Ok(None);
        };
        sqlx::query_as(&format!(
            "SELECT image, {PG_NOW_MS} - created_at FROM previews WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await
        .doing("reading another worker's preview")
    }

    /// Pauses or resumes the shared queue: no worker claims a prompt while it is paused
    /// (PostgreSQL; SQLite's one worker keeps its pause in memory).
    pub async fn set_paused(&self, paused: bool) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        sqlx::query("UPDATE queue_control SET paused = $1 WHERE id = 1")
            .bind(i64::from(paused))
            .execute(&self.pool)
            .await
            .doing("pausing or resuming the queue")?;
        Ok(())
    }

    /// Whether the shared queue is paused (always false on SQLite).
    pub async fn is_paused(&self) -> Result<bool, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(false);
        }
        let paused: Option<i64> =
            sqlx::query_scalar("SELECT paused FROM queue_control WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .doing("reading whether the queue is paused")?;
        Ok(paused.is_some_and(|p| p != 0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::prompts::tests::item;
    use crate::Store;

    #[tokio::test]
    async fn notifications_reach_every_listener_in_order_whatever_their_size() {
        let Some((server, store)) = crate::test_postgres().await else {
            return;
        };
        let other = Store::connect(&server.url("postgres")).await.unwrap();
        let mut listener = other.listen(&["a", "b"]).await.unwrap().unwrap();
        let long = "x".repeat(20_000);
        store.notify("a", "one").await.unwrap();
        store.notify("c", "not listened to").await.unwrap();
        store.notify("b", &long).await.unwrap();
        store.notify("a", "three").await.unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
                .await
                .expect("a notification in time")
                .unwrap();
            got.push((n.channel, n.payload.len()));
        }
        assert_eq!(
            got,
            [("a".into(), 3), ("b".into(), 20_000), ("a".into(), 5)]
        );
        // SQLite: nothing to listen to, publishing does nothing.
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(&dir.path().join("q.db")).await.unwrap();
        assert!(sqlite.listen(&["a"]).await.unwrap().is_none());
        sqlite.notify("a", "x").await.unwrap();
    }

    #[tokio::test]
    async fn previews_are_kept_by_reference_and_deleted_when_stale() {
        let Some((server, store)) = crate::test_postgres().await else {
            return;
        };
        let other = Store::connect(&server.url("postgres")).await.unwrap();
        let first = store.keep_preview("p", &[1, 2, 3]).await.unwrap().unwrap();
        let second = store.keep_preview("p", &[4]).await.unwrap().unwrap();
        assert!(second > first);
        let (image, age) = other.preview(first).await.unwrap().unwrap();
        assert_eq!(image, [1, 2, 3]);
        assert!((0..10_000).contains(&age), "{age}");
        // A stale row goes as the next preview is kept.
        sqlx::query("UPDATE previews SET created_at = created_at - 60000 WHERE id = $1")
            .bind(first)
            .execute(&store.pool)
            .await
            .unwrap();
        store.keep_preview("q", &[5]).await.unwrap();
        assert!(other.preview(first).await.unwrap().is_none());
        assert!(other.preview(second).await.unwrap().is_some());
        // SQLite: one worker, nothing to keep.
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(&dir.path().join("q.db")).await.unwrap();
        assert!(sqlite.keep_preview("p", &[1]).await.unwrap().is_none());
        assert!(sqlite.preview(1).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_listener_whose_connection_dies_listens_again() {
        let Some((server, store)) = crate::test_postgres().await else {
            return;
        };
        let other = Store::connect(&server.url("postgres")).await.unwrap();
        let mut listener = other.listen(&["a"]).await.unwrap().unwrap();
        store.notify("a", "before").await.unwrap();
        assert_eq!(listener.recv().await.unwrap().payload, "before");
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(killed, [true]);
        // What is sent while it reconnects is lost; what comes after arrives.
        let sender = tokio::spawn(async move {
            loop {
                store.notify("a", "after").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let n = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Ok(n) = listener.recv().await {
                    return n;
                }
            }
        })
        .await
        .expect("notifications again after reconnecting");
        sender.abort();
        assert_eq!(n.payload, "after");
    }

    #[tokio::test]
    async fn a_paused_queue_is_claimed_by_no_worker() {
        let Some((server, store)) = crate::test_postgres().await else {
            return;
        };
        let other = Store::connect(&server.url("postgres")).await.unwrap();
        store.enqueue(&item("a", 0.0)).await.unwrap();
        store.enqueue(&item("b", 1.0)).await.unwrap();
        store.set_paused(true).await.unwrap();
        assert!(other.is_paused().await.unwrap());
        assert!(other.claim_next().await.unwrap().is_none());
        store.set_paused(false).await.unwrap();
        assert!(!other.is_paused().await.unwrap());
        // Passing over a prompt claims the next one.
        let claimed = other.claim_next_except(&["a".into()]).await.unwrap();
        assert_eq!(claimed.unwrap().prompt.prompt_id, "b");
        assert_eq!(store.claim_next().await.unwrap().unwrap().prompt_id, "a");
    }
}
