//! `/api/jobs` and `/api/jobs/{id}`: ComfyUI's jobs API over the queue and the history (the
//! frontend's queue and history panels read it). Served under `/api` only, as ComfyUI does.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::store::{JobFilter, JobOrder};
use crate::wire::jobs::{job, job_list, JobStatus};

/// Largest `ids` filter, as ComfyUI's.
const MAX_IDS: usize = 100;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Plain(StatusCode::BAD_REQUEST, message.into())
}

#[derive(serde::Deserialize)]
pub struct JobsQuery {
    status: Option<String>,
    workflow_id: Option<String>,
    ids: Option<String>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

impl JobsQuery {
    /// The store filter, with ComfyUI's checks and messages.
    fn filter(&self) -> Result<JobFilter, ApiError> {
        let statuses = match self.status.as_deref().filter(|s| !s.is_empty()) {
            None => JobStatus::ALL.to_vec(),
            Some(list) => {
                let names: Vec<String> = list
                    .split(',')
                    .map(|s| s.trim().to_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect();
                let unknown: Vec<&str> = names
                    .iter()
                    .filter(|n| JobStatus::parse(n).is_none())
                    .map(String::as_str)
                    .collect();
                if !unknown.is_empty() {
                    return Err(invalid(format!(
                        "Invalid status value(s): {}. Valid values: {}",
                        unknown.join(", "),
                        JobStatus::all_names()
                    )));
                }
                names.iter().filter_map(|n| JobStatus::parse(n)).collect()
            }
        };
        let order = match self
            .sort_by
            .as_deref()
            .map(str::to_lowercase)
            .as_deref()
            .unwrap_or("created_at")
        {
            "created_at" => JobOrder::Created,
            "execution_duration" => JobOrder::ExecutionDuration,
            _ => {
                return Err(invalid(
                    "sort_by must be 'created_at' or 'execution_duration'",
                ))
            }
        };
        let descending = match self
            .sort_order
            .as_deref()
            .map(str::to_lowercase)
            .as_deref()
            .unwrap_or("desc")
        {
            "desc" => true,
            "asc" => false,
            _ => return Err(invalid("sort_order must be 'asc' or 'desc'")),
        };
        let limit = match self.limit.as_deref() {
            None => None,
            Some(text) => match text.trim().parse::<i64>() {
                Ok(n) if n > 0 => Some(n),
                Ok(_) => return Err(invalid("limit must be a positive integer")),
                Err(_) => return Err(invalid("limit must be an integer")),
            },
        };
        let offset = match self.offset.as_deref() {
            None => 0,
            Some(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|_| invalid("offset must be an integer"))?
                .max(0),
        };
        let ids = match self.ids.as_deref() {
            None => None,
            Some(list) => {
                let mut ids: Vec<String> = Vec::new();
                for id in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                    if !ids.iter().any(|seen| seen == id) {
                        ids.push(id.to_owned());
                    }
                }
                if ids.len() > MAX_IDS {
                    return Err(invalid(format!(
                        "ids must contain at most {MAX_IDS} values"
                    )));
                }
                Some(ids)
            }
        };
        Ok(JobFilter {
            statuses: statuses.into_iter().map(JobStatus::stored).collect(),
            workflow_id: self.workflow_id.clone().filter(|w| !w.is_empty()),
            ids,
            order,
            descending,
            limit,
            offset,
        })
    }
}

/// `GET /api/jobs?status=pending,in_progress&workflow_id=&ids=&sort_by=created_at|execution_duration&sort_order=desc|asc&limit=&offset=`.
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<JobsQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = query.filter()?;
    let (rows, total) = state.exec.store().jobs(&filter).await?;
    let jobs = rows.iter().filter_map(|row| job(row, false)).collect();
    Ok(HttpResponse::Ok().json(job_list(jobs, filter.offset, filter.limit, total)))
}

/// `GET /api/jobs/{id}`: one job; a finished one with its outputs, status and workflow.
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    state
        .exec
        .store()
        .prompt(&id)
        .await?
        .and_then(|row| job(&row, true))
        .map(|job| HttpResponse::Ok().json(job))
        .ok_or_else(|| ApiError::Plain(StatusCode::NOT_FOUND, format!("Job not found: {id}")))
}

/// What cancelling one job came to.
enum Cancelled {
    /// Taken out of the queue, interrupted (or to be, once it starts), or cancelled before.
    Yes,
    /// No job has this id.
    Unknown,
    /// Completed or failed; its status.
    Finished(&'static str),
}

async fn cancel_job(state: &AppState, id: &str) -> Result<Cancelled, ApiError> {
    if state.exec.cancel(id).await? {
        return Ok(Cancelled::Yes);
    }
    let Some(row) = state.exec.store().prompt(id).await? else {
        return Ok(Cancelled::Unknown);
    };
    // Cancelling twice is not an error (a double click, a retried request); a prompt taken off
    // the queue before it ran has no job status, and counts as cancelled too.
    Ok(match JobStatus::of(row.status) {
        None | Some(JobStatus::Cancelled) => Cancelled::Yes,
        Some(status) => Cancelled::Finished(status.name()),
    })
}

/// `POST /api/jobs/{id}/cancel`: a pending job leaves the queue, a running one is interrupted.
/// 404 for an unknown id, 409 for a job that completed or failed.
pub async fn cancel(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    match cancel_job(&state, &id).await? {
        Cancelled::Yes => Ok(HttpResponse::Ok().json(serde_json::json!({
            "id": id,
            "cancelled": true,
        }))),
        Cancelled::Unknown => Err(ApiError::Plain(
            StatusCode::NOT_FOUND,
            format!("Job not found: {id}"),
        )),
        Cancelled::Finished(status) => Err(ApiError::Plain(
            StatusCode::CONFLICT,
            format!("Job {id} has already finished ({status})"),
        )),
    }
}

#[derive(serde::Deserialize)]
pub struct CancelMany {
    job_ids: Vec<String>,
}

/// `POST /api/jobs/cancel` `{"job_ids": [...]}`: cancels each; says which were cancelled, which
/// are unknown and which had finished.
pub async fn cancel_many(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    crate::api::check_json_memory(&body)?;
    let request: CancelMany = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("expected {{\"job_ids\": [\"<id>\", ...]}}: {e}")))?;
    if request.job_ids.len() > MAX_IDS {
        return Err(invalid(format!(
            "job_ids must contain at most {MAX_IDS} values"
        )));
    }
    let (mut cancelled, mut not_found, mut finished) = (Vec::new(), Vec::new(), Vec::new());
    for id in request.job_ids {
        match cancel_job(&state, &id).await? {
            Cancelled::Yes => cancelled.push(id),
            Cancelled::Unknown => not_found.push(id),
            Cancelled::Finished(_) => finished.push(id),
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "cancelled": cancelled,
        "not_found": not_found,
        "already_finished": finished,
    })))
}
