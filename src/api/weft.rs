//! Weft's own endpoints under `/api/weft/`: queue control beyond ComfyUI, cache inspection and
//! the workflow library.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value as Json};

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::store::{ModelNames, WorkflowRow, WorkflowVersionRow};
use crate::userdata::{workflow_file_name, WORKFLOWS};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/queue/state", web::get().to(queue_state))
        .route("/queue/pause", web::post().to(pause))
        .route("/queue/resume", web::post().to(resume))
        .route("/queue/{id}/cancel", web::post().to(cancel))
        .route("/queue/{id}/front", web::post().to(front))
        .route("/queue/{id}/requeue", web::post().to(requeue))
        .route("/cache", web::get().to(cache))
        .route("/workers", web::get().to(workers))
        .route("/workflows", web::get().to(list_workflows))
        .route("/workflows", web::post().to(create_workflow))
        .route("/workflows/{id}", web::get().to(get_workflow))
        .route("/workflows/{id}", web::put().to(update_workflow))
        .route("/workflows/{id}", web::delete().to(delete_workflow))
        .route("/workflows/{id}/versions", web::get().to(workflow_versions))
        .route(
            "/workflows/{id}/versions/{version}/restore",
            web::post().to(restore_version),
        );
}

async fn queue_state(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.exec.store();
    Ok(HttpResponse::Ok().json(json!({
        "paused": state.exec.is_paused().await?,
        "running": state.exec.running_prompt(),
        "pending": store.pending().await?.iter().map(|p| p.prompt_id.clone()).collect::<Vec<_>>(),
    })))
}

/// The workers running prompts from this queue, with what each offers (device, model budget,
/// the model files it holds loaded by folder, and its checkpoints apart): on PostgreSQL every
/// worker seen lately, on SQLite this one.
async fn workers(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let exec = &state.exec;
    let store = exec.store();
    let this = store.worker_id();
    let workers: Vec<Json> = if store.is_shared() {
        store
            .workers(exec.worker_seen_within_ms())
            .await?
            .into_iter()
            .map(|w| {
                json!({
                    "worker_id": w.worker_id,
                    "address": w.address,
                    "running": w.running,
                    "started_at": w.started_at,
                    "seen_at": w.seen_at,
                    "device": w.device,
                    "memory_budget": w.memory_budget,
                    "checkpoints": checkpoints(&w.models),
                    "models": w.models,
                    "this": w.worker_id == this,
                })
            })
            .collect()
    } else {
        let (device, memory_budget, models) = exec.offer();
        vec![json!({
            "worker_id": this,
            "address": exec.address(),
            "running": exec.running_prompt(),
            "device": device,
            "memory_budget": memory_budget,
            "checkpoints": checkpoints(&models),
            "models": models,
            "this": true,
        })]
    };
    Ok(HttpResponse::Ok().json(json!({
        "database": if store.is_shared() { "postgres" } else { "sqlite" },
        "paused": exec.is_paused().await?,
        "workers": workers,
    })))
}

/// The checkpoints among a worker's loaded model files.
fn checkpoints(models: &ModelNames) -> &[String] {
    models.get("checkpoints").map_or(&[], Vec::as_slice)
}

/// Pauses the queue: every worker sharing it stops taking prompts (the running ones finish).
async fn pause(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.exec.set_paused(true).await?;
    Ok(HttpResponse::Ok().json(json!({"paused": true})))
}

async fn resume(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.exec.set_paused(false).await?;
    Ok(HttpResponse::Ok().json(json!({"paused": false})))
}

async fn cancel(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if state.exec.cancel(&id).await? {
        Ok(HttpResponse::Ok().json(json!({"cancelled": id})))
    } else {
        Err(ApiError::NotFound(format!(
            "prompt '{id}' is not pending or running"
        )))
    }
}

async fn front(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if state.exec.move_to_front(&id).await? {
        Ok(HttpResponse::Ok().json(json!({"moved": id})))
    } else {
        Err(ApiError::NotFound(format!("prompt '{id}' is not pending")))
    }
}

async fn requeue(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    match state.exec.requeue(&id).await? {
        Some(number) => Ok(HttpResponse::Ok().json(json!({"prompt_id": id, "number": number}))),
        None => Err(ApiError::NotFound(format!(
            "prompt '{id}' is not a finished prompt that can be queued again"
        ))),
    }
}

/// What the cache holds and what the last prompt did, node by node.
async fn cache(state: web::Data<AppState>) -> HttpResponse {
    let (entries, used, budget, report) = state.exec.cache_state();
    let entries: Vec<Json> = entries
        .iter()
        .map(|e| {
            json!({"key": e.key.short_hex(), "class_type": e.class_type, "node_id": e.node_id, "bytes": e.bytes, "hits": e.hits})
        })
        .collect();
    let last_prompt = report.map(|r| {
        json!({
            "prompt_id": r.prompt_id,
            "nodes": r.nodes.iter().map(|n| json!({
                "node_id": n.node_id,
                "class_type": n.class_type,
                "status": n.status.as_str(),
                "reason": n.reason,
                "key": n.key,
                "millis": n.millis,
            })).collect::<Vec<_>>(),
        })
    });
    HttpResponse::Ok().json(json!({"used_bytes": used, "budget_bytes": budget, "entries": entries, "last_prompt": last_prompt}))
}

#[derive(Deserialize)]
struct WorkflowBody<'a> {
    name: Option<String>,
    description: Option<String>,
    #[serde(borrow)]
    workflow: Option<&'a RawValue>,
}

fn workflow_json(row: &WorkflowRow, with_content: bool) -> Json {
    let mut value = json!({
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "version": row.version,
        "path": format!("{WORKFLOWS}/{}", row.file),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    });
    if with_content {
        value["workflow"] = serde_json::from_str(&row.content).unwrap_or(Json::Null);
    }
    value
}

fn parse_body(body: &[u8]) -> Result<WorkflowBody<'_>, ApiError> {
    crate::api::check_json_memory(body)?;
    let parsed: WorkflowBody<'_> = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    match parsed.workflow {
        None => Err(ApiError::BadRequest(
            "field 'workflow' (the editor-format workflow) is required".into(),
        )),
        Some(raw) if !raw.get().trim_start().starts_with('{') => Err(ApiError::BadRequest(
            "field 'workflow' must be a JSON object".into(),
        )),
        Some(_) => Ok(parsed),
    }
}

async fn list_workflows(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = state.exec.store().workflows().await?;
    Ok(HttpResponse::Ok().json(
        rows.iter()
            .map(|r| workflow_json(r, false))
            .collect::<Vec<_>>(),
    ))
}

async fn create_workflow(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let parsed = parse_body(&body)?;
    let name = parsed
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("field 'name' is required".into()))?;
    let content = parsed.workflow.map(RawValue::get).unwrap_or("{}");
    let id = uuid::Uuid::new_v4().to_string();
    let row = state
        .exec
        .store()
        .create_workflow(
            &id,
            &name,
            parsed.description.as_deref().unwrap_or(""),
            content,
            &workflow_file_name(&name),
        )
        .await?;
    Ok(HttpResponse::Created().json(workflow_json(&row, false)))
}

/// The stored workflow, with the editor JSON exactly as it was saved.
async fn get_workflow(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let row = state
        .exec
        .store()
        .workflow(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workflow '{id}'")))?;
    // Built by hand so the workflow's own bytes are returned untouched.
    let head = workflow_json(&row, false).to_string();
    let body = format!(
        "{},\"workflow\":{}}}",
        head.trim_end_matches('}'),
        row.content
    );
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

async fn update_workflow(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let parsed = parse_body(&body)?;
    let current = state
        .exec
        .store()
        .workflow(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workflow '{id}'")))?;
    let renamed = parsed
        .name
        .filter(|n| !n.trim().is_empty() && *n != current.name);
    let name = renamed.clone().unwrap_or(current.name);
    let description = parsed.description.unwrap_or(current.description);
    let content = parsed.workflow.map(RawValue::get).unwrap_or("{}");
    let store = state.exec.store();
    let mut row = store
        .update_workflow(&id, &name, &description, content)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workflow '{id}'")))?;
    // A new name renames the file too (in the same folder), so `/userdata` shows the name.
    if let Some(name) = renamed {
        let file = match current.file.rsplit_once('/') {
            Some((folder, _)) => format!("{folder}/{}", workflow_file_name(&name)),
            None => workflow_file_name(&name),
        };
        row = store
            .rename_workflow_file(&id, &file)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no workflow '{id}'")))?;
    }
    Ok(HttpResponse::Ok().json(workflow_json(&row, false)))
}

async fn delete_workflow(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if state.exec.store().delete_workflow(&id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound(format!("no workflow '{id}'")))
    }
}

fn version_json(row: &WorkflowVersionRow) -> Json {
    json!({"version": row.version, "name": row.name, "description": row.description, "saved_at": row.saved_at})
}

async fn workflow_versions(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let versions = state.exec.store().workflow_versions(&id).await?;
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!("no workflow '{id}'")));
    }
    Ok(HttpResponse::Ok().json(versions.iter().map(version_json).collect::<Vec<_>>()))
}

/// Saves an old version's content as the newest version (nothing is overwritten).
async fn restore_version(
    state: web::Data<AppState>,
    path: web::Path<(String, i64)>,
) -> Result<HttpResponse, ApiError> {
    let (id, version) = path.into_inner();
    let versions = state.exec.store().workflow_versions(&id).await?;
    let old = versions
        .iter()
        .find(|v| v.version == version)
        .ok_or_else(|| ApiError::NotFound(format!("workflow '{id}' has no version {version}")))?;
    let row = state
        .exec
        .store()
        .update_workflow(&id, &old.name, &old.description, &old.content)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no workflow '{id}'")))?;
    Ok(HttpResponse::Ok().json(workflow_json(&row, false)))
}
