//! Job listings: the queue and the history as one filtered, sorted, paged list of prompts
//! (what ComfyUI's `/api/jobs` serves).

use crate::prompts::{rows_to_prompts, COLUMNS};
use crate::{PromptRow, PromptStatus, SqlContext, Store, StoreError};

/// What a job listing is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobOrder {
    /// When the prompt was accepted.
    #[default]
    Created,
    /// How long it ran (finished minus started); prompts that have not finished count as 0.
    ExecutionDuration,
}

/// Which prompts a job listing holds, in what order, and which page of them.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// The statuses to include; empty matches nothing.
    pub statuses: Vec<PromptStatus>,
    /// Only prompts whose `extra_data.extra_pnginfo.workflow.id` is this.
    pub workflow_id: Option<String>,
    /// Only these prompt ids (`None`: any id; an empty list matches nothing).
    pub ids: Option<Vec<String>>,
    /// The sort key.
    pub order: JobOrder,
    /// Largest first.
    pub descending: bool,
    /// At most this many rows (`None`: all).
    pub limit: Option<i64>,
    /// Rows to skip before the first one returned.
    pub offset: i64,
}

impl Store {
    /// One page of prompts matching `filter`, and how many match in all.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<(Vec<PromptRow>, i64), StoreError> {
        let empty_ids = filter.ids.as_ref().is_some_and(Vec::is_empty);
        if filter.statuses.is_empty() || empty_ids {
            return Ok((Vec::new(), 0));
        }
        // Placeholders `$1`, `$2`, … in the order the values are bound below.
        let mut bound = 0;
        let mut marks = |n: usize| {
            let marks: Vec<String> = (bound + 1..=bound + n).map(|i| format!("${i}")).collect();
            bound += n;
            marks.join(", ")
        };
        let mut conditions = vec![format!("status IN ({})", marks(filter.statuses.len()))];
        if filter.workflow_id.is_some() {
            let mark = marks(1);
            conditions.push(format!(
                "{} = {mark}",
                self.dialect(
                    "json_extract(extra_data, '$.extra_pnginfo.workflow.id')",
                    "(extra_data::jsonb #>> '{extra_pnginfo,workflow,id}')",
                )
            ));
        }
        if let Some(ids) = &filter.ids {
            conditions.push(format!("prompt_id IN ({})", marks(ids.len())));
        }
        let (limit, offset) = (marks(1), marks(1));
        let condition = conditions.join(" AND ");
        let direction = if filter.descending { "DESC" } else { "ASC" };
        let order = match filter.order {
            JobOrder::Created => format!("created_at {direction}, seq {direction}"),
            JobOrder::ExecutionDuration => format!(
                "CASE WHEN started_at IS NOT NULL AND finished_at IS NOT NULL \
                 THEN finished_at - started_at ELSE 0 END {direction}, seq ASC"
            ),
        };
        let count_sql = format!("SELECT COUNT(*) FROM prompts WHERE {condition}");
        let rows_sql = format!(
            "SELECT {COLUMNS} FROM prompts WHERE {condition} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
        );

        // One read transaction, so the page and the total describe the same moment.
        let begin = self.dialect("BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ");
        let mut tx = self
            .pool
            .begin_with(begin)
            .await
            .doing("starting to list jobs")?;
        let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
        let mut rows = sqlx::query(&rows_sql);
        for status in &filter.statuses {
            count = count.bind(status.as_str());
            rows = rows.bind(status.as_str());
        }
        if let Some(workflow_id) = &filter.workflow_id {
            count = count.bind(workflow_id);
            rows = rows.bind(workflow_id);
        }
        for id in filter.ids.iter().flatten() {
            count = count.bind(id);
            rows = rows.bind(id);
        }
        let total = count.fetch_one(&mut *tx).await.doing("counting jobs")?;
        let rows = rows
            // No limit: the largest one (PostgreSQL refuses SQLite's -1).
            .bind(filter.limit.unwrap_or(i64::MAX))
            .bind(filter.offset.max(0))
            .fetch_all(&mut *tx)
            .await
            .doing("listing jobs")?;
        tx.commit().await.doing("finishing the jobs listing")?;
        Ok((rows_to_prompts(&rows)?, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewPrompt, QueueNumber};
    use serde_json::json;

    fn item(id: &str, number: f64, workflow_id: Option<&str>) -> NewPrompt {
        let extra_data = match workflow_id {
            Some(w) => json!({"extra_pnginfo": {"workflow": {"id": w}}}),
            None => json!({}),
        };
        NewPrompt {
            prompt_id: id.into(),
            number: QueueNumber::Given(number),
            prompt: json!({}),
            extra_data,
            outputs_to_execute: vec!["9".into()],
            client_id: None,
        }
    }

    fn ids(rows: &[PromptRow]) -> Vec<&str> {
        rows.iter().map(|r| r.prompt_id.as_str()).collect()
    }

    #[tokio::test]
    async fn jobs_filter_sort_and_page() {
        let dir = tempfile::tempdir().unwrap();
        jobs_scenario(Store::open(&dir.path().join("db.sqlite")).await.unwrap()).await;
    }

    #[tokio::test]
    async fn jobs_on_postgres() {
        if let Some((_server, store)) = crate::test_postgres().await {
            jobs_scenario(store).await;
        }
    }

    async fn jobs_scenario(store: Store) {
        for (i, (id, workflow)) in [("a", Some("w1")), ("b", None), ("c", Some("w1"))]
            .into_iter()
            .enumerate()
        {
            store.enqueue(&item(id, i as f64, workflow)).await.unwrap();
        }
        // a finishes, b fails, c stays pending; d is pending then cancelled.
        for (status, _) in [(PromptStatus::Done, "a"), (PromptStatus::Failed, "b")] {
            let p = store.claim_next().await.unwrap().unwrap();
            store
                .finish(
                    &p.prompt_id,
                    status,
                    None,
                    &json!({}),
                    &json!([]),
                    &json!({}),
                )
                .await
                .unwrap();
        }
        store.enqueue(&item("d", 9.0, None)).await.unwrap();
        store.cancel_pending(&["d".into()]).await.unwrap();

        let all = JobFilter {
            statuses: vec![
                PromptStatus::Pending,
                PromptStatus::Running,
                PromptStatus::Done,
                PromptStatus::Failed,
                PromptStatus::Interrupted,
            ],
            ..JobFilter::default()
        };
        let (rows, total) = store.jobs(&all).await.unwrap();
        assert_eq!((ids(&rows), total), (vec!["a", "b", "c"], 3));
        let newest_first = JobFilter {
            descending: true,
            ..all.clone()
        };
        let (rows, _) = store.jobs(&newest_first).await.unwrap();
        assert_eq!(ids(&rows), ["c", "b", "a"]);
        let page = JobFilter {
            limit: Some(1),
            offset: 1,
            ..newest_first.clone()
        };
        let (rows, total) = store.jobs(&page).await.unwrap();
        assert_eq!((ids(&rows), total), (vec!["b"], 3));
        let beyond = JobFilter {
            offset: 7,
            ..newest_first.clone()
        };
        let (rows, total) = store.jobs(&beyond).await.unwrap();
        assert_eq!((rows.len(), total), (0, 3));
        let failed = JobFilter {
            statuses: vec![PromptStatus::Failed],
            ..all.clone()
        };
        assert_eq!(ids(&store.jobs(&failed).await.unwrap().0), ["b"]);
        let workflow = JobFilter {
            workflow_id: Some("w1".into()),
            ..all.clone()
        };
        assert_eq!(ids(&store.jobs(&workflow).await.unwrap().0), ["a", "c"]);
        let by_id = JobFilter {
            ids: Some(vec!["c".into(), "d".into(), "zz".into()]),
            ..all.clone()
        };
        assert_eq!(ids(&store.jobs(&by_id).await.unwrap().0), ["c"]);
        let none = JobFilter {
            ids: Some(Vec::new()),
            ..all.clone()
        };
        assert_eq!(store.jobs(&none).await.unwrap().1, 0);
        let longest = JobFilter {
            order: JobOrder::ExecutionDuration,
            descending: true,
            ..all
        };
        assert_eq!(store.jobs(&longest).await.unwrap().0.len(), 3);
    }
}
