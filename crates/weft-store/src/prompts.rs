//! The queue and history: one row per prompt, from acceptance to deletion.

use serde_json::Value as Json;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::leases::PG_NOW_MS;
use crate::{now_ms, Backend, SqlContext, Store, StoreError};

/// Where a prompt is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptStatus {
    /// Queued, waiting for its turn.
    Pending,
    /// Claimed by the executor and being run.
    Running,
    /// Finished successfully; in the history.
    Done,
    /// A node or the executor failed; in the history with a reason.
    Failed,
    /// Stopped on request, or left running by a crash and recovered at restart; in the history.
    Interrupted,
    /// Taken off the queue before it ran; not in the history.
    Cancelled,
}

impl PromptStatus {
    /// The value stored in the `status` column (`"pending"`, `"done"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            PromptStatus::Pending => "pending",
            PromptStatus::Running => "running",
            PromptStatus::Done => "done",
            PromptStatus::Failed => "failed",
            PromptStatus::Interrupted => "interrupted",
            PromptStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> PromptStatus {
        match s {
            "pending" => PromptStatus::Pending,
            "running" => PromptStatus::Running,
            "done" => PromptStatus::Done,
            "failed" => PromptStatus::Failed,
            "interrupted" => PromptStatus::Interrupted,
            _ => PromptStatus::Cancelled,
        }
    }
}

/// What crash recovery did with the prompts a crash left running, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Back in the queue, to run again (they had not crashed the server before).
    pub requeued: Vec<String>,
    /// Running at too many crashes in a row: failed history entries, not run again.
    pub quarantined: Vec<String>,
}

/// A prompt to put in the queue.
#[derive(Debug, Clone)]
pub struct NewPrompt {
    /// The prompt's id, a UUID chosen by the client or the server.
    pub prompt_id: String,
    /// ComfyUI's queue `number`: lower runs first; negative for prompts sent with `front`.
    pub number: QueueNumber,
    /// The API-format workflow to run.
    pub prompt: Json,
    /// ComfyUI's `extra_data` object (`extra_pnginfo`, `client_id`, …).
    pub extra_data: Json,
    /// Ids of the output nodes to run (those that validated).
    pub outputs_to_execute: Vec<String>,
    /// The WebSocket client that submitted it, for routing progress events; None if not given.
    pub client_id: Option<String>,
}

/// Where a new prompt goes in the queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueNumber {
    /// This number (the client's own).
    Given(f64),
    /// One more than any number handed out so far, negated with `front`: taken in the same
    /// transaction as the insert, so two prompts sent at once never share a number.
    Next {
        /// ComfyUI's `front`: before every prompt queued so far.
        front: bool,
    },
}

/// One stored prompt with its history parts.

#[derive(Debug, Clone)]
pub struct PromptRow {
    /// Insertion order, increasing; breaks ties between equal queue numbers.
    pub seq: i64,
    /// The prompt's id, a UUID chosen by the client or the server.
    pub prompt_id: String,
    /// ComfyUI's queue `number`: lower runs first; negative for prompts sent with `front`.
    pub number: f64,
    /// Where the prompt is in its life.
    pub status: PromptStatus,
    /// The API-format workflow to run.
    pub prompt: Json,
    /// ComfyUI's `extra_data` object, as stored at submission.
    pub extra_data: Json,
    /// Ids of the output nodes to run.
    pub outputs_to_execute: Vec<String>,
    /// The WebSocket client that submitted it; None if not given.
    pub client_id: Option<String>,
    /// Why it did not complete (failed or interrupted); None otherwise.
    pub reason: Option<String>,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When it started running, in milliseconds since the Unix epoch; None if it never ran.
    pub started_at: Option<i64>,
    /// When it finished or was cancelled, in milliseconds since the Unix epoch; None before that.
    pub finished_at: Option<i64>,
    /// The history's `outputs`, by node id (`{"9": {"images": [...]}}`); None until finished.
    pub outputs: Option<Json>,
    /// The history's `status.messages`, `[event, data]` pairs; None until finished.
    pub status_messages: Option<Json>,
    /// The history's `meta`, by output node id; None until finished.
    pub meta: Option<Json>,
}

pub(crate) const COLUMNS: &str =
    "seq, prompt_id, number, status, prompt, extra_data, outputs_to_execute, client_id, \
     reason, created_at, started_at, finished_at, outputs, status_messages, meta";

fn parse_json(prompt_id: &str, text: &str) -> Result<Json, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::CorruptJson {
        prompt_id: prompt_id.to_owned(),
        source,
    })
}

fn parse_optional_json(prompt_id: &str, text: Option<String>) -> Result<Option<Json>, StoreError> {
    text.map(|t| parse_json(prompt_id, &t)).transpose()
}

fn row_to_prompt(row: &AnyRow) -> Result<PromptRow, StoreError> {
    let prompt_id: String = row.get("prompt_id");
    let outputs_to_execute: Json =
        parse_json(&prompt_id, row.get::<&str, _>("outputs_to_execute"))?;
    Ok(PromptRow {
        seq: row.get("seq"),
        number: row.get("number"),
        status: PromptStatus::parse(row.get::<&str, _>("status")),
        prompt: parse_json(&prompt_id, row.get::<&str, _>("prompt"))?,
        extra_data: parse_json(&prompt_id, row.get::<&str, _>("extra_data"))?,
        outputs_to_execute: outputs_to_execute
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        client_id: row.get("client_id"),
        reason: row.get("reason"),
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        outputs: parse_optional_json(&prompt_id, row.get("outputs"))?,
        status_messages: parse_optional_json(&prompt_id, row.get("status_messages"))?,
        meta: parse_optional_json(&prompt_id, row.get("meta"))?,
        prompt_id,
    })
}

pub(crate) fn rows_to_prompts(rows: &[AnyRow]) -> Result<Vec<PromptRow>, StoreError> {
    rows.iter().map(row_to_prompt).collect()
}

/// One more than the largest queue number's magnitude so far, as SQL over `hi` and `lo`, the
/// largest and smallest numbers (NULL when no prompt is stored). Read apart, each from the
/// `number` index: one `MAX(ABS(number))` would scan every prompt ever run (10 ms a submit at
/// 100,000). The magnitude is never negative, so SQLite's truncating cast is a floor.
fn next_number_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "COALESCE(CAST(CAST(MAX(hi, -lo) AS INTEGER) + 1 AS REAL), 0.0)",
        Backend::Postgres => "COALESCE(floor(GREATEST(hi, -lo)) + 1, 0.0)",
    }
}

/// How many prompts are queued or running besides the one whose id is the SQL `id`: read in a
/// write's `RETURNING`, it gives `status`'s count with that write's round trip. The written row
/// is left out and its own part added by the caller, so the figure does not depend on whether the
/// subquery sees the row before the write (PostgreSQL) or after it (SQLite).
fn queued_besides(id: &str) -> String {
    format!("(SELECT COUNT(*) FROM prompts AS other WHERE other.{IN_QUEUE} AND other.prompt_id <> {id})")
}

/// The rows `status` counts: queued or running.
const IN_QUEUE: &str = "status IN ('pending', 'running')";

/// What [`Store::enqueue`] stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Queued {
    /// The prompt's queue number.
    pub number: f64,
    /// Prompts queued or running, this one included, as the write left them.
    pub queue_remaining: i64,
}

/// What [`Store::claim_next_except`] took.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The prompt, now running.
    pub prompt: PromptRow,
    /// Prompts queued or running, this one included, as the claim left them.
    pub queue_remaining: i64,
}

/// The `hi` and `lo` that [`next_number_sql`] reads.
const NUMBER_BOUNDS: &str = "(SELECT (SELECT MAX(number) FROM prompts) AS hi, \
     (SELECT MIN(number) FROM prompts) AS lo) AS bounds";

impl Store {
    /// The next queue number: one more than any number handed out so far.
    pub async fn next_number(&self) -> Result<f64, StoreError> {
        sqlx::query_scalar(&format!(
            "SELECT {} FROM {NUMBER_BOUNDS}",
            next_number_sql(self.backend)
        ))
        .fetch_one(&self.pool)
        .await
        .doing("reading the queue counter")
    }

    /// Stores a new pending prompt and returns its queue number and the queue's length. Replaces
    /// an older prompt with
    /// the same id that is no longer queued or running (ComfyUI lets a client reuse a prompt id;
    /// its history is overwritten); one still queued or running is
    /// [`StoreError::AlreadyQueued`].
    pub async fn enqueue(&self, item: &NewPrompt) -> Result<Queued, StoreError> {
        Ok(self.insert(item, false).await?.0)
    }

    /// [`Store::enqueue`] for a worker with nothing to do: the prompt is stored already claimed
    /// by this worker, as [`Store::claim_next`] would leave it, so the worker runs it without a
    /// claim of its own. The caller hands it over; only a worker alone on its queue may (on a
    /// shared one the prompt is for whichever worker is best placed).
    pub async fn enqueue_claimed(&self, item: NewPrompt) -> Result<Claimed, StoreError> {
        let (queued, seq, now) = self.insert(&item, true).await?;
        // The row the worker runs is what was written, moved rather than read back.
        Ok(Claimed {
            prompt: PromptRow {
                seq,
                prompt_id: item.prompt_id,
                number: queued.number,
                status: PromptStatus::Running,
                prompt: item.prompt,
                extra_data: item.extra_data,
                outputs_to_execute: item.outputs_to_execute,
                client_id: item.client_id,
                reason: None,
                created_at: now,
                started_at: Some(now),
                finished_at: None,
                outputs: None,
                status_messages: None,
                meta: None,
            },
            queue_remaining: queued.queue_remaining,
        })
    }

    /// Stores `item`, pending or (`claimed`) running on this worker; returns what was stored,
    /// the row's `seq` and the time written as its creation (and start).
    async fn insert(
        &self,
        item: &NewPrompt,
        claimed: bool,
    ) -> Result<(Queued, i64, i64), StoreError> {
        let now = now_ms();
        // A new id, nearly always: one statement, atomic by itself, its number computed in it.
        // Each statement is a round trip to the database.
        let upsert = " WHERE true ON CONFLICT (prompt_id) DO NOTHING";
        let mut conn = self.accept.conn().await.doing("storing a new prompt")?;
        let inserted = self
            .insert_prompt(&mut *conn, item, claimed, now, upsert)
            .await;
        if let Some(stored) = conn.settle(inserted).doing("storing a new prompt")? {
            return Ok((stored.0, stored.1, now));
        }
        let mut tx = self.begin_write("starting to enqueue").await?;
        sqlx::query(
            "DELETE FROM prompts WHERE prompt_id = $1 AND status NOT IN ('pending', 'running')",
        )
        .bind(&item.prompt_id)
        .execute(&mut *tx)
        .await
        .doing("replacing an old prompt with the same id")?;
        let stored = match self.insert_prompt(&mut *tx, item, claimed, now, "").await {
            Ok(Some(stored)) => stored,
            // What the delete left with this id is queued or running.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::AlreadyQueued(item.prompt_id.clone()))
            }
            other => other
                .doing("storing a new prompt")?
                .ok_or(StoreError::AlreadyQueued(item.prompt_id.clone()))?,
        };
        tx.commit().await.doing("committing a new prompt")?;
        Ok((stored.0, stored.1, now))
    }

    /// Inserts `item` as pending or (`claimed`) running on this worker, created (and started)
    /// at `now`, `tail` ending the statement (an upsert clause or nothing); returns what was
    /// stored and its `seq`, or `None` where the upsert inserted nothing.
    async fn insert_prompt<'e>(
        &self,
        db: impl sqlx::Executor<'e, Database = sqlx::Any>,
        item: &NewPrompt,
        claimed: bool,
        now: i64,
        tail: &str,
    ) -> Result<Option<(Queued, i64)>, sqlx::Error> {
        // The number is bound and read (times 0 where the next one is computed) in every case:
        // sqlx's Any driver gives PostgreSQL no type for a NULL or an unread parameter.
        let next = next_number_sql(self.backend);
        let (number, given) = match item.number {
            QueueNumber::Given(number) => ("$2".to_owned(), number),
            QueueNumber::Next { front: false } => (format!("({next}) + 0 * $2"), 0.0),
            QueueNumber::Next { front: true } => (format!("-({next}) + 0 * $2"), 0.0),
        };
        // A claimed row is as `claim_next_except` leaves one: running, started now, this
        // worker's, under a lease.
        let row: Option<(f64, i64, i64)> = sqlx::query_as(&format!(
            "INSERT INTO prompts (prompt_id, number, status, prompt, extra_data, outputs_to_execute, client_id, created_at, \
             started_at, worker_id, lease_until) \
             SELECT $1, {number}, CASE WHEN $8 = 1 THEN 'running' ELSE 'pending' END, $3, $4, $5, $6, $7, \
             CASE WHEN $8 = 1 THEN $7 END, CASE WHEN $8 = 1 THEN $9 END, CASE WHEN $8 = 1 THEN {} + $10 END \
             FROM {NUMBER_BOUNDS}{tail} \
             RETURNING number, {} + 1, seq",
            self.dialect("$7", PG_NOW_MS),
            queued_besides("$1")
        ))
        .bind(&item.prompt_id)
        .bind(given)
        .bind(item.prompt.to_string())
        .bind(item.extra_data.to_string())
        .bind(Json::from(item.outputs_to_execute.clone()).to_string())
        .bind(&item.client_id)
        .bind(now)
        .bind(i64::from(claimed))
        .bind(self.worker_id())
        .bind(self.lease_ms)
        .fetch_optional(db)
        .await?;
        Ok(row.map(|(number, queue_remaining, seq)| {
            (
                Queued {
                    number,
                    queue_remaining,
                },
                seq,
            )
        }))
    }

    /// Takes the first pending prompt (lowest number, then oldest) and marks it running, owned by
    /// this worker under a lease, in one statement, so two workers could never take the same
    /// prompt: SQLite's write lock serialises claims; on PostgreSQL each worker locks the row it
    /// takes and skips rows others have locked, so claims do not wait on each other.
    pub async fn claim_next(&self) -> Result<Option<PromptRow>, StoreError> {
        Ok(self.claim_next_except(&[]).await?.map(|c| c.prompt))
    }

    /// [`Store::claim_next`] passing over the prompts in `skip` (left for a better placed
    /// worker). On a shared queue, nothing is claimed while the queue is paused
    /// ([`Store::set_paused`]): the flag is read in the claiming statement.
    pub async fn claim_next_except(&self, skip: &[String]) -> Result<Option<Claimed>, StoreError> {
        // One statement, so one round trip and SQLite's own atomicity: the subquery picks the
        // row and the update marks it in the same write.
        let skipped = if skip.is_empty() {
            String::new()
        } else {
            let places: Vec<String> = (4..4 + skip.len()).map(|i| format!("${i}")).collect();
            format!(" AND prompt_id NOT IN ({})", places.join(", "))
        };
        let sql = format!(
            "UPDATE prompts SET status = 'running', started_at = $1, worker_id = $2, \
             lease_until = {} + $3, interrupt_requested = 0 \
             WHERE seq = (SELECT seq FROM prompts WHERE status = 'pending'{skipped}{} \
             ORDER BY number, seq LIMIT 1{}) RETURNING {COLUMNS}, {} + 1 AS queue_remaining",
            self.dialect("$1", PG_NOW_MS),
            self.dialect(
                "",
                " AND NOT EXISTS (SELECT 1 FROM queue_control WHERE paused <> 0)"
            ),
            self.dialect("", " FOR UPDATE OF prompts SKIP LOCKED"),
            queued_besides("prompts.prompt_id")
        );
        let mut query = sqlx::query(&sql)
            .bind(now_ms())
            .bind(self.worker_id())
            .bind(self.lease_ms);
        for id in skip {
            query = query.bind(id);
        }
        let mut conn = self
            .bookkeeping
            .conn()
            .await
            .doing("claiming the next prompt")?;
        let row = query.fetch_optional(&mut *conn).await;
        let row = conn.settle(row).doing("claiming the next prompt")?;
        row.map(|row| {
            Ok(Claimed {
                prompt: row_to_prompt(&row)?,
                queue_remaining: row.get("queue_remaining"),
            })
        })
        .transpose()
    }

    /// Records how a prompt ended and makes it part of the history; returns how many prompts are
    /// still queued or running.
    pub async fn finish(
        &self,
        prompt_id: &str,
        status: PromptStatus,
        reason: Option<&str>,
        outputs: &Json,
        status_messages: &Json,
        meta: &Json,
    ) -> Result<i64, StoreError> {
        // On a shared queue only while this worker still owns it: a worker whose lease ran out
        // must not overwrite the run of whichever worker took the prompt over.
        // The count comes back with the write (the prompt, ended, no longer counts), so the
        // `status` event after a run costs no round trip of its own.
        let sql = format!(
            "{} RETURNING {}",
            self.dialect(
                "UPDATE prompts SET status = $1, reason = $2, finished_at = $3, outputs = $4, status_messages = $5, meta = $6, \
                 in_history = 1 WHERE prompt_id = $7",
                "UPDATE prompts SET status = $1, reason = $2, finished_at = $3, outputs = $4, status_messages = $5, meta = $6, \
                 in_history = 1, lease_until = NULL WHERE prompt_id = $7 AND status = 'running' AND worker_id = $8",
            ),
            queued_besides("$7")
        );
        let query = sqlx::query_scalar(&sql)
            .bind(status.as_str())
            .bind(reason)
            .bind(now_ms())
            .bind(outputs.to_string())
            .bind(status_messages.to_string())
            .bind(meta.to_string())
            .bind(prompt_id);
        let query = match self.backend {
            Backend::Sqlite => query,
            Backend::Postgres => query.bind(self.worker_id()),
        };
        let mut conn = self
            .bookkeeping
            .conn()
            .await
            .doing("recording a finished prompt")?;
        let remaining = query.fetch_optional(&mut *conn).await;
        let remaining = conn
            .settle(remaining)
            .doing("recording a finished prompt")?;
        match remaining {
            Some(remaining) => Ok(remaining),
            // Nothing written (on a shared queue, the lease was lost): counted on its own.
            None => self.queue_remaining().await,
        }
    }

    /// After a restart: each prompt left running by a crash has its crash count raised. One that
    /// has now been running at `quarantine_after` crashes in a row is quarantined: a failed history
    /// entry with `reason` and the messages `quarantined(prompt_id, crashes, now)` gives (the store
    /// keeps documents opaque; their shape is the caller's). The others go back to pending under
    /// their old number, so they run again first. Pending prompts are untouched.
    pub async fn recover_after_crash(
        &self,
        quarantine_after: i64,
        reason: &str,
        quarantined: impl Fn(&str, i64, i64) -> serde_json::Value,
    ) -> Result<Recovery, StoreError> {
        let mut tx = self.begin_write("starting crash recovery").await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(&self.dialect(
            "SELECT prompt_id, crash_count + 1 FROM prompts WHERE status = 'running' ORDER BY seq"
                .to_owned(),
            format!(
                "SELECT prompt_id, crash_count + 1 FROM prompts WHERE status = 'running' \
                 AND lease_until < {PG_NOW_MS} ORDER BY seq FOR UPDATE SKIP LOCKED"
            ),
        ))
        .fetch_all(&mut *tx)
        .await
        .doing("finding prompts left running")?;
        let now = now_ms();
        let mut recovery = Recovery::default();
        for (id, crashes) in rows {
            if crashes >= quarantine_after {
                sqlx::query(
                    "UPDATE prompts SET status = 'failed', crash_count = $1, reason = $2, finished_at = $3, \
                     outputs = COALESCE(outputs, '{}'), status_messages = $4, meta = COALESCE(meta, '{}'), \
                     in_history = 1, worker_id = NULL, lease_until = NULL WHERE prompt_id = $5",
                )
                .bind(crashes)
                .bind(reason)
                .bind(now)
                .bind(quarantined(&id, crashes, now).to_string())
                .bind(&id)
                .execute(&mut *tx)
                .await
                .doing("quarantining a prompt")?;
                recovery.quarantined.push(id);
            } else {
                sqlx::query(
                    "UPDATE prompts SET status = 'pending', crash_count = $1, started_at = NULL, \
                     worker_id = NULL, lease_until = NULL WHERE prompt_id = $2",
                )
                .bind(crashes)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .doing("re-queueing a prompt left running")?;
                recovery.requeued.push(id);
            }
        }
        tx.commit().await.doing("committing crash recovery")?;
        Ok(recovery)
    }

    /// At a clean shutdown: prompts this worker is running go back to pending, their crash count
    /// untouched (stopping the server is not a crash). Returns their ids. On SQLite every running
    /// prompt is this worker's.
    pub async fn release_running(&self) -> Result<Vec<String>, StoreError> {
        let query = match self.backend {
            Backend::Sqlite => sqlx::query_scalar(
                "UPDATE prompts SET status = 'pending', started_at = NULL WHERE status = 'running' \
                 RETURNING prompt_id",
            ),
            Backend::Postgres => sqlx::query_scalar(
                "UPDATE prompts SET status = 'pending', started_at = NULL, worker_id = NULL, \
                 lease_until = NULL WHERE status = 'running' AND worker_id = $1 RETURNING prompt_id",
            )
            .bind(self.worker_id()),
        };
        query
            .fetch_all(&self.pool)
            .await
            .doing("releasing the running prompt at shutdown")
    }

    /// Pending prompts in the order they will run.
    pub async fn pending(&self) -> Result<Vec<PromptRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM prompts WHERE status = 'pending' ORDER BY number, seq"
        ))
        .fetch_all(&self.pool)
        .await
        .doing("listing pending prompts")?;
        rows_to_prompts(&rows)
    }

    /// The first `limit` pending prompts in the order they will run.
    pub async fn pending_head(&self, limit: i64) -> Result<Vec<PromptRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM prompts WHERE status = 'pending' ORDER BY number, seq LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .doing("listing the next prompts")?;
        rows_to_prompts(&rows)
    }

    /// The prompt being run, if any.
    pub async fn running(&self) -> Result<Vec<PromptRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM prompts WHERE status = 'running' ORDER BY seq"
        ))
        .fetch_all(&self.pool)
        .await
        .doing("listing running prompts")?;
        rows_to_prompts(&rows)
    }

    /// Pending plus running, as `queue_remaining` counts them.
    pub async fn queue_remaining(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM prompts WHERE {IN_QUEUE}"))
            .fetch_one(&self.pool)
            .await
            .doing("counting the queue")
    }

    /// Cancels pending prompts by id; returns the ids that were pending.
    pub async fn cancel_pending(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut cancelled = Vec::new();
        for id in ids {
            let done = sqlx::query(
                "UPDATE prompts SET status = 'cancelled', finished_at = $1 WHERE prompt_id = $2 AND status = 'pending'",
            )
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await
            .doing("cancelling a prompt")?;
            if done.rows_affected() > 0 {
                cancelled.push(id.clone());
            }
        }
        Ok(cancelled)
    }

    /// Cancels every pending prompt; returns how many.
    pub async fn cancel_all_pending(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE prompts SET status = 'cancelled', finished_at = $1 WHERE status = 'pending'",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .doing("clearing the queue")?;
        Ok(done.rows_affected())
    }

    /// Moves a pending prompt ahead of every other pending one. False if it is not pending.
    pub async fn move_to_front(&self, prompt_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write("starting to reorder the queue").await?;
        let min: Option<f64> =
            sqlx::query_scalar("SELECT MIN(number) FROM prompts WHERE status = 'pending'")
                .fetch_one(&mut *tx)
                .await
                .doing("reading the queue front")?;
        let done = sqlx::query(
            "UPDATE prompts SET number = $1 WHERE prompt_id = $2 AND status = 'pending'",
        )
        .bind(min.unwrap_or(0.0) - 1.0)
        .bind(prompt_id)
        .execute(&mut *tx)
        .await
        .doing("moving a prompt to the front")?;
        tx.commit().await.doing("committing the new order")?;
        Ok(done.rows_affected() > 0)
    }

    /// Puts a finished (interrupted, failed, quarantined, cancelled or done) prompt back at the end
    /// of the queue under the same id, with its crash count cleared. Returns its new number, or None if no such finished prompt exists.
    pub async fn requeue(&self, prompt_id: &str) -> Result<Option<f64>, StoreError> {
        let number = self.next_number().await?;
        let done = sqlx::query(
            "UPDATE prompts SET status = 'pending', number = $1, reason = NULL, started_at = NULL, finished_at = NULL, \
             outputs = NULL, status_messages = NULL, meta = NULL, in_history = 0, crash_count = 0 \
             WHERE prompt_id = $2 AND status NOT IN ('pending', 'running')",
        )
        .bind(number)
        .bind(prompt_id)
        .execute(&self.pool)
        .await
        .doing("re-queueing a prompt")?;
        Ok((done.rows_affected() > 0).then_some(number))
    }

    /// History entries, oldest first. `offset`/`max_items` follow ComfyUI: without an offset,
    /// `max_items` takes the newest entries.
    pub async fn history(
        &self,
        max_items: Option<i64>,
        offset: Option<i64>,
    ) -> Result<Vec<PromptRow>, StoreError> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM prompts WHERE in_history = 1")
            .fetch_one(&self.pool)
            .await
            .doing("counting history")?;
        let (start, count) = match (offset, max_items) {
            (Some(offset), max) => (offset.max(0), max.unwrap_or(total).max(0)),
            (None, Some(max)) => ((total - max.max(0)).max(0), max.max(0)),
            (None, None) => (0, total),
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM prompts WHERE in_history = 1 ORDER BY finished_at, seq LIMIT $1 OFFSET $2"
        ))
        .bind(count)
        .bind(start)
        .fetch_all(&self.pool)
        .await
        .doing("reading history")?;
        rows_to_prompts(&rows)
    }

    /// Any stored prompt by id (queued, running or finished).
    pub async fn prompt(&self, prompt_id: &str) -> Result<Option<PromptRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM prompts WHERE prompt_id = $1"
        ))
        .bind(prompt_id)
        .fetch_optional(&self.pool)
        .await
        .doing("reading a prompt")?;
        row.as_ref().map(row_to_prompt).transpose()
    }

    /// One history entry, or None while it is not finished.
    pub async fn history_entry(&self, prompt_id: &str) -> Result<Option<PromptRow>, StoreError> {
        Ok(self
            .prompt(prompt_id)
            .await?
            .filter(|p| p.outputs.is_some()))
    }

    /// Removes finished prompts from history (the queue is untouched).
    pub async fn delete_history(&self, ids: &[String]) -> Result<(), StoreError> {
        for id in ids {
            sqlx::query("DELETE FROM prompts WHERE prompt_id = $1 AND in_history = 1")
                .bind(id)
                .execute(&self.pool)
                .await
                .doing("deleting a history entry")?;
        }
        Ok(())
    }

    /// Removes every history entry; pending and running prompts are untouched.
    pub async fn clear_history(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM prompts WHERE in_history = 1")
            .execute(&self.pool)
            .await
            .doing("clearing history")?;
        Ok(())
    }

    /// Records an image a node wrote.
    pub async fn record_image(
        &self,
        prompt_id: &str,
        node_id: &str,
        filename: &str,
        subfolder: &str,
        folder_type: &str,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO images (prompt_id, node_id, filename, subfolder, folder_type, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(prompt_id)
        .bind(node_id)
        .bind(filename)
        .bind(subfolder)
        .bind(folder_type)
        .bind(now_ms());
        let mut conn = self.bookkeeping.conn().await.doing("recording an image")?;
        let done = query.execute(&mut *conn).await;
        conn.settle(done).doing("recording an image")?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn item(id: &str, number: f64) -> NewPrompt {
        NewPrompt {
            prompt_id: id.into(),
            number: QueueNumber::Given(number),
            prompt: json!({}),
            extra_data: json!({}),
            outputs_to_execute: vec!["9".into()],
            client_id: None,
        }
    }

    #[tokio::test]
    async fn queue_order_claim_and_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).await.unwrap();
        store.enqueue(&item("a", 0.0)).await.unwrap();
        store.enqueue(&item("b", 1.0)).await.unwrap();
        store.enqueue(&item("c", -2.0)).await.unwrap();
        assert_eq!(store.next_number().await.unwrap(), 3.0);
        let order: Vec<String> = store
            .pending()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.prompt_id)
            .collect();
        assert_eq!(order, ["c", "a", "b"]);
        assert!(store.move_to_front("b").await.unwrap());
        let claimed = store.claim_next().await.unwrap().unwrap();
        assert_eq!(claimed.prompt_id, "b");
        assert!(
            store.enqueue(&item("b", 5.0)).await.is_err(),
            "a running id cannot be reused"
        );

        // Simulate a crash: reopen the same file. The prompt left running runs again, first.
        drop(store);
        let store = Store::open(&dir.path().join("db.sqlite")).await.unwrap();
        let quarantined = |id: &str, crashes, _| json!([id, crashes]);
        let recovery = store
            .recover_after_crash(2, "killed twice", quarantined)
            .await
            .unwrap();
        assert_eq!(recovery.requeued, ["b"]);
        assert!(recovery.quarantined.is_empty());
        assert_eq!(store.claim_next().await.unwrap().unwrap().prompt_id, "b");

        // Running at a second crash in a row: quarantined, in the history, not run again.
        drop(store);
        let store = Store::open(&dir.path().join("db.sqlite")).await.unwrap();
        let recovery = store
            .recover_after_crash(2, "killed twice", quarantined)
            .await
            .unwrap();
        assert_eq!(recovery.quarantined, ["b"]);
        let entry = store.history_entry("b").await.unwrap().unwrap();
        assert_eq!(entry.status, PromptStatus::Failed);
        assert_eq!(entry.reason.as_deref(), Some("killed twice"));
        assert_eq!(entry.status_messages, Some(json!(["b", 2])));
        assert_eq!(store.queue_remaining().await.unwrap(), 2);

        // Re-queued by hand, it starts again from no crashes: one more crash re-runs it.
        assert!(store.requeue("b").await.unwrap().is_some());
        let order: Vec<String> = store
            .pending()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.prompt_id)
            .collect();
        assert_eq!(order, ["c", "a", "b"]);
        store.cancel_all_pending().await.unwrap();
        assert!(store.requeue("b").await.unwrap().is_some());
        assert_eq!(store.claim_next().await.unwrap().unwrap().prompt_id, "b");
        let recovery = store
            .recover_after_crash(2, "killed twice", quarantined)
            .await
            .unwrap();
        assert_eq!(recovery.requeued, ["b"]);
    }

    #[tokio::test]
    async fn a_prompt_stored_claimed_is_as_a_claim_leaves_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        stored_claimed(Store::open(&path).await.unwrap()).await;
        // Left running by a crash, it is recovered as the claimed one is: both run again.
        let store = Store::open(&path).await.unwrap();
        let mut recovery = store
            .recover_after_crash(2, "killed twice", |_, _, _| json!([]))
            .await
            .unwrap();
        recovery.requeued.sort();
        assert_eq!(recovery.requeued, ["a", "h"]);
        assert_eq!(store.claim_next().await.unwrap().unwrap().prompt_id, "a");
        assert_eq!(store.claim_next().await.unwrap().unwrap().prompt_id, "h");
    }

    #[tokio::test]
    async fn a_prompt_stored_claimed_is_as_a_claim_leaves_one_on_postgres() {
        if let Some((_server, store)) = crate::test_postgres().await {
            stored_claimed(store).await;
        }
    }

    /// Stores "h" claimed behind one pending prompt, and leaves it running.
    async fn stored_claimed(store: Store) {
        store.enqueue(&item("a", 0.0)).await.unwrap();
        let claimed = store.enqueue_claimed(item("h", 1.0)).await.unwrap();
        assert_eq!(claimed.queue_remaining, 2);
        let row = claimed.prompt;
        assert_eq!((row.prompt_id.as_str(), row.number), ("h", 1.0));
        assert_eq!(row.status, PromptStatus::Running);
        assert_eq!(row.started_at, Some(row.created_at));
        // What the database holds is what the worker was handed.
        let running = store.running().await.unwrap();
        assert_eq!(running.len(), 1);
        let stored = &running[0];
        assert_eq!(
            (stored.seq, &stored.prompt, &stored.outputs_to_execute),
            (row.seq, &row.prompt, &row.outputs_to_execute)
        );
        assert_eq!(stored.started_at, row.started_at);
        // It is this worker's, under a lease like any claim, and not claimed again.
        assert!(matches!(
            store.renew_lease("h").await,
            Ok(crate::Lease::Held { interrupt: false })
        ));
        assert_eq!(store.claim_next().await.unwrap().unwrap().prompt_id, "a");
        assert!(store.claim_next().await.unwrap().is_none());
        assert!(matches!(
            store.enqueue_claimed(item("h", 2.0)).await,
            Err(StoreError::AlreadyQueued(id)) if id == "h"
        ));
    }

    #[tokio::test]
    async fn enqueue_numbers_and_reused_ids() {
        let dir = tempfile::tempdir().unwrap();
        enqueue_numbers(Store::open(&dir.path().join("db.sqlite")).await.unwrap()).await;
    }

    #[tokio::test]
    async fn enqueue_numbers_and_reused_ids_on_postgres() {
        if let Some((_server, store)) = crate::test_postgres().await {
            enqueue_numbers(store).await;
        }
    }

    async fn enqueue_numbers(store: Store) {
        let next = |id: &str, front: bool| NewPrompt {
            number: QueueNumber::Next { front },
            ..item(id, 0.0)
        };
        // Each write also says how long the queue is after it (the `status` events' count).
        let cases = [
            (next("a", false), 0.0, 1),
            (next("b", false), 1.0, 2),
            (next("c", true), -2.0, 3),
            (item("d", 7.5), 7.5, 4),
            (next("e", false), 8.0, 5),
            (next("f", true), -9.0, 6),
        ];
        for (prompt, number, queue_remaining) in cases {
            let queued = store.enqueue(&prompt).await.unwrap();
            let expected = Queued {
                number,
                queue_remaining,
            };
            assert_eq!(queued, expected, "{}", prompt.prompt_id);
        }
        // A pending id and a running one cannot be queued again.
        assert!(matches!(
            store.enqueue(&next("a", false)).await,
            Err(StoreError::AlreadyQueued(id)) if id == "a"
        ));
        let running = store.claim_next_except(&[]).await.unwrap().unwrap();
        assert_eq!(running.prompt.prompt_id, "f");
        assert_eq!(running.queue_remaining, 6);
        assert!(matches!(
            store.enqueue(&item("f", 3.0)).await,
            Err(StoreError::AlreadyQueued(_))
        ));
        // A finished one is replaced: out of the history, pending again under its new number.
        let done = PromptStatus::Done;
        let remaining = store
            .finish("f", done, None, &json!({}), &json!([]), &json!({}))
            .await
            .unwrap();
        assert_eq!(remaining, 5);
        assert_eq!(store.queue_remaining().await.unwrap(), 5);
        assert!(store.history_entry("f").await.unwrap().is_some());
        // Its old number is gone with it, so the next is one past the largest left.
        assert_eq!(
            store.enqueue(&next("f", false)).await.unwrap(),
            Queued {
                number: 9.0,
                queue_remaining: 6
            }
        );
        assert!(store.history_entry("f").await.unwrap().is_none());
        let pending: Vec<(String, f64)> = store
            .pending()
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.prompt_id, p.number))
            .collect();
        let expected = [
            ("c", -2.0),
            ("a", 0.0),
            ("b", 1.0),
            ("d", 7.5),
            ("e", 8.0),
            ("f", 9.0),
        ];
        let expected: Vec<(String, f64)> = expected
            .iter()
            .map(|(id, n)| ((*id).to_owned(), *n))
            .collect();
        assert_eq!(pending, expected);
    }

    #[tokio::test]
    async fn history_paging_follows_comfyui() {
        let dir = tempfile::tempdir().unwrap();
        history_paging(Store::open(&dir.path().join("db.sqlite")).await.unwrap()).await;
    }

    #[tokio::test]
    async fn history_paging_on_postgres() {
        if let Some((_server, store)) = crate::test_postgres().await {
            history_paging(store).await;
        }
    }

    async fn history_paging(store: Store) {
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            store.enqueue(&item(id, i as f64)).await.unwrap();
            let p = store.claim_next().await.unwrap().unwrap();
            store
                .finish(
                    &p.prompt_id,
                    PromptStatus::Done,
                    None,
                    &json!({}),
                    &json!([]),
                    &json!({}),
                )
                .await
                .unwrap();
        }
        let ids = |rows: Vec<PromptRow>| rows.into_iter().map(|p| p.prompt_id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.history(None, None).await.unwrap()),
            ["a", "b", "c", "d"]
        );
        assert_eq!(ids(store.history(Some(2), None).await.unwrap()), ["c", "d"]);
        assert_eq!(
            ids(store.history(Some(2), Some(1)).await.unwrap()),
            ["b", "c"]
        );
        assert_eq!(ids(store.history(None, Some(3)).await.unwrap()), ["d"]);
        assert!(store.history(None, Some(9)).await.unwrap().is_empty());
        store.delete_history(&["b".into()]).await.unwrap();
        assert_eq!(
            ids(store.history(None, None).await.unwrap()),
            ["a", "c", "d"]
        );
    }
}
