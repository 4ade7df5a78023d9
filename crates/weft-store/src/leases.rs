//! The shared queue's leases (PostgreSQL): a worker owns each prompt it claims until its lease
//! runs out, renews it while running, and learns there of interrupts asked on other workers.
//! A prompt whose lease ran out (its worker was killed or cut off) is recovered by any worker as
//! after a crash (`Store::recover_after_crash`). On SQLite, one worker per file, these are no-ops.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::{Backend, SqlContext, Store, StoreError};

/// Milliseconds since the Unix epoch on PostgreSQL's clock: every lease is read and written on
/// one clock, whatever the workers' clocks say.
pub(crate) const PG_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// What renewing a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Still ours; `interrupt`: another worker asked to interrupt the prompt.
    Held {
        /// An interrupt was asked for this prompt.
        interrupt: bool,
    },
    /// No longer ours (it ran out and the prompt was recovered): stop, record nothing.
    Lost,
}

/// Model files by model folder (`checkpoints`, `diffusion_models`), each by the name prompts
/// give it.
pub type ModelNames = BTreeMap<String, Vec<String>>;

/// A worker sharing the queue, as it last reported itself.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    /// Its id (`host-pid-random`).
    pub worker_id: String,
    /// Where it serves HTTP (`host:port`), or empty for a worker without HTTP.
    pub address: String,
    /// When it started, in milliseconds since the Unix epoch (database clock).
    pub started_at: i64,
    /// When it last reported, in milliseconds since the Unix epoch (database clock).
    pub seen_at: i64,
    /// The prompt it is running, if any.
    pub running: Option<String>,
    /// Its device (`cpu`, `cuda:0`).
    pub device: String,
    /// Its model budget, in bytes.
    pub memory_budget: i64,
    /// The model files it holds loaded.
    pub models: ModelNames,
}

/// What a worker reports of itself at each heartbeat.
#[derive(Debug, Clone)]
pub struct WorkerReport<'a> {
    /// Where it serves HTTP (`host:port`), or empty for a worker without HTTP.
    pub address: &'a str,
    /// The prompt it is running, if any.
    pub running: Option<&'a str>,
    /// Its device (`cpu`, `cuda:0`).
    pub device: &'a str,
    /// Its model budget, in bytes.
    pub memory_budget: i64,
    /// The model files it holds loaded.
    pub models: &'a ModelNames,
}

/// A worker id unique among live processes: host, process id and the clock's nanoseconds.
pub(crate) fn new_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "weft".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

impl Store {
    /// Renews this worker's lease on a running prompt for [`Store::lease_ms`] more, and reads
    /// whether an interrupt was asked for it. Always held on SQLite.
    pub async fn renew_lease(&self, prompt_id: &str) -> Result<Lease, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Lease::Held { interrupt: false });
        }
        let interrupt: Option<i64> = sqlx::query_scalar(&format!(
            "UPDATE prompts SET lease_until = {PG_NOW_MS} + $1 \
             WHERE prompt_id = $2 AND status = 'running' AND worker_id = $3 \
             RETURNING interrupt_requested"
        ))
        .bind(self.lease_ms)
        .bind(prompt_id)
        .bind(self.worker_id())
        .fetch_optional(&self.pool)
        .await
        .doing("renewing a lease")?;
        Ok(match interrupt {
            Some(flag) => Lease::Held {
                interrupt: flag != 0,
            },
            None => Lease::Lost,
        })
    }

    /// Asks whichever worker runs `prompt_id` to interrupt it (it reads the flag at its next
    /// renewal). False when the prompt is not running.
    pub async fn request_interrupt(&self, prompt_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE prompts SET interrupt_requested = 1 WHERE prompt_id = $1 AND status = 'running'",
        )
        .bind(prompt_id)
        .execute(&self.pool)
        .await
        .doing("asking for an interrupt")?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that this worker is alive, where it serves HTTP, what it runs and what it offers
    /// (PostgreSQL; a no-op on SQLite).
    pub async fn heartbeat(&self, report: &WorkerReport<'_>) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        let models = serde_json::to_string(report.models).unwrap_or_else(|_| "{}".into());
        sqlx::query(&format!(
            "INSERT INTO workers (worker_id, address, started_at, seen_at, running, device, \
             memory_budget, models) \
             VALUES ($1, $2, {PG_NOW_MS}, {PG_NOW_MS}, $3, $4, $5, $6) \
             ON CONFLICT (worker_id) DO UPDATE SET address = $2, seen_at = {PG_NOW_MS}, \
             running = $3, device = $4, memory_budget = $5, models = $6"
        ))
        .bind(self.worker_id())
        .bind(report.address)
        .bind(report.running)
        .bind(report.device)
        .bind(report.memory_budget)
        .bind(models)
        .execute(&self.pool)
        .await
        .doing("recording this worker")?;
        Ok(())
    }

    /// Workers seen within the last `within_ms` milliseconds, by id (empty on SQLite).
    pub async fn workers(&self, within_ms: i64) -> Result<Vec<WorkerRow>, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT worker_id, address, started_at, seen_at, running, device, memory_budget, \
             models FROM workers WHERE seen_at >= {PG_NOW_MS} - $1 ORDER BY worker_id"
        ))
        .bind(within_ms)
        .fetch_all(&self.pool)
        .await
        .doing("listing workers")?;
        Ok(rows
            .iter()
            .map(|row| WorkerRow {
                worker_id: row.get("worker_id"),
                address: row.get("address"),
                started_at: row.get("started_at"),
                seen_at: row.get("seen_at"),
                running: row.get("running"),
                device: row.get("device"),
                memory_budget: row.get("memory_budget"),
                models: serde_json::from_str(row.get::<&str, _>("models")).unwrap_or_default(),
            })
            .collect())
    }

    /// This worker is going away: its row is removed (PostgreSQL).
    pub async fn sign_off(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        sqlx::query("DELETE FROM workers WHERE worker_id = $1")
            .bind(self.worker_id())
            .execute(&self.pool)
            .await
            .doing("removing this worker")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::json;

    use super::*;
    use crate::prompts::tests::item;
    use crate::PromptStatus;

    async fn finish(store: &Store, id: &str) {
        store
            .finish(
                id,
                PromptStatus::Done,
                None,
                &json!({"9": {}}),
                &json!([]),
                &json!({}),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn workers_claim_each_prompt_once() {
        let Some((server, first)) = crate::test_postgres().await else {
            return;
        };
        let url = server.url("postgres");
        let mut workers = vec![first];
        for _ in 0..3 {
            workers.push(Store::connect(&url).await.unwrap());
        }
        for i in 0..100 {
            workers[i % 4]
                .enqueue(&item(&format!("p{i}"), i as f64))
                .await
                .unwrap();
        }
        // `front`: a negative number runs first, whoever claims.
        workers[0].enqueue(&item("urgent", -1.0)).await.unwrap();
        assert_eq!(
            workers[1].claim_next().await.unwrap().unwrap().prompt_id,
            "urgent"
        );
        finish(&workers[1], "urgent").await;

        let claims = workers.iter().map(|store| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(p) = store.claim_next().await.unwrap() {
                    finish(&store, &p.prompt_id).await;
                    mine.push(p.prompt_id);
                }
                mine
            })
        });
        let mut seen = HashSet::new();
        let mut total = 0;
        for claim in claims.collect::<Vec<_>>() {
            let mine = claim.await.unwrap();
            total += mine.len();
            seen.extend(mine);
        }
        assert_eq!(
            (total, seen.len()),
            (100, 100),
            "each prompt claimed exactly once"
        );
        assert_eq!(workers[2].history(None, None).await.unwrap().len(), 101);
        assert_eq!(workers[3].queue_remaining().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_expired_lease_is_recovered_once_then_quarantined() {
        let Some((server, store)) = crate::test_postgres().await else {
            return;
        };
        let url = server.url("postgres");
        let dead = Store::connect(&url).await.unwrap().with_lease_ms(200);
        let live = Store::connect(&url).await.unwrap().with_lease_ms(200);
        store.enqueue(&item("a", 0.0)).await.unwrap();
        store.enqueue(&item("b", 1.0)).await.unwrap();
        assert_eq!(dead.claim_next().await.unwrap().unwrap().prompt_id, "a");
        let quarantined = |id: &str, crashes, _| json!([id, crashes]);
        // Within the lease nothing is recovered; the owner renews and sees interrupts asked
        // anywhere.
        let none = live
            .recover_after_crash(2, "twice", quarantined)
            .await
            .unwrap();
        assert!(none.requeued.is_empty());
        assert!(live.request_interrupt("a").await.unwrap());
        assert!(
            !live.request_interrupt("b").await.unwrap(),
            "b is not running"
        );
        assert_eq!(
            dead.renew_lease("a").await.unwrap(),
            Lease::Held { interrupt: true }
        );
        assert_eq!(
            live.renew_lease("a").await.unwrap(),
            Lease::Lost,
            "not live's"
        );

        // The owner stops renewing: after the lease, any worker re-queues it, first in line.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let recovery = live
            .recover_after_crash(2, "twice", quarantined)
            .await
            .unwrap();
        assert_eq!(recovery.requeued, ["a"]);
        assert_eq!(dead.renew_lease("a").await.unwrap(), Lease::Lost);
        let again = live.claim_next().await.unwrap().unwrap();
        assert_eq!(again.prompt_id, "a");
        // The dead worker's late result is not recorded over the live run.
        finish(&dead, "a").await;
        assert_eq!(
            live.prompt("a").await.unwrap().unwrap().status,
            PromptStatus::Running
        );
        // A clean shutdown releases only the worker's own prompts.
        assert!(dead.release_running().await.unwrap().is_empty());
        assert_eq!(live.release_running().await.unwrap(), ["a"]);

        // Lost a second time in a row: quarantined in the history.
        assert_eq!(dead.claim_next().await.unwrap().unwrap().prompt_id, "a");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let recovery = live
            .recover_after_crash(2, "twice", quarantined)
            .await
            .unwrap();
        assert_eq!(recovery.quarantined, ["a"]);
        let entry = live.history_entry("a").await.unwrap().unwrap();
        assert_eq!(entry.status, PromptStatus::Failed);
        assert_eq!(entry.status_messages, Some(json!(["a", 2])));
    }

    #[tokio::test]
    async fn workers_list_themselves() {
        let Some((_server, store)) = crate::test_postgres().await else {
            return;
        };
        let models = ModelNames::from([
            (
                "checkpoints".to_owned(),
                vec!["sd/tiny.safetensors".to_owned()],
            ),
            (
                "diffusion_models".to_owned(),
                vec!["u.safetensors".to_owned()],
            ),
        ]);
        store
            .heartbeat(&WorkerReport {
                address: "127.0.0.1:1",
                running: Some("p"),
                device: "cpu",
                memory_budget: 1 << 30,
                models: &models,
            })
            .await
            .unwrap();
        let workers = store.workers(60_000).await.unwrap();
        assert_eq!(workers.len(), 1);
        assert_eq!(workers[0].worker_id, store.worker_id());
        assert_eq!(workers[0].running.as_deref(), Some("p"));
        assert_eq!(
            (workers[0].device.as_str(), workers[0].memory_budget),
            ("cpu", 1 << 30)
        );
        assert_eq!(workers[0].models, models);
        store.sign_off().await.unwrap();
        assert!(store.workers(60_000).await.unwrap().is_empty());
    }
}
