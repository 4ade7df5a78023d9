//! `/prompt`, `/queue`, `/history`, `/interrupt`, `/free`.

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value as Json};

use crate::api::error::{node_errors_json, submit_error, ApiError};
use crate::api::{parse_json_body, AppState};
use crate::exec::Submission;
use crate::wire::errors::prompt_error;
use crate::wire::queue::{exec_info, history_entry, number_json, queue_item};

/// `POST /prompt`: validate, queue, answer with the id. Nothing runs in the handler.
pub async fn post_prompt(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = parse_json_body(&body)?;
    let Some(prompt) = body.get("prompt").cloned() else {
        return Err(ApiError::Prompt(prompt_error(
            "no_prompt",
            "No prompt provided",
            "No prompt provided",
            json!({}),
            json!({}),
        )));
    };
    let mut extra_data = match body.get("extra_data") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(map)) => map.clone(),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "extra_data must be a JSON object".into(),
            ))
        }
    };
    // Weft addition: an editor-format workflow is converted here, and kept as the workflow that
    // saved images embed.
    let prompt = if crate::graph::Workflow::looks_like_editor_format(&prompt) {
        let converted = {
            let (state, prompt) = (state.clone(), prompt.clone());
            crate::api::blocking(move || crate::api::convert::editor_to_prompt(&state, &prompt))
                .await?
        };
        let pnginfo = extra_data
            .entry("extra_pnginfo")
            .or_insert_with(|| json!({}));
        if let Some(info) = pnginfo.as_object_mut() {
            info.entry("workflow").or_insert(prompt);
        }
        converted
    } else {
        prompt
    };
    let client_id = body
        .get("client_id")
        .and_then(Json::as_str)
        .map(str::to_owned);
    let front = body
        .get("front")
        .is_some_and(|f| f.as_bool().unwrap_or(!f.is_null()));
    let number = match body.get("number") {
        None | Some(Json::Null) => None,
        Some(n) => Some(queue_number(n)?),
    };
    let prompt_id = match body.get("prompt_id") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s.is_empty() => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let targets = match body.get("partial_execution_targets") {
        None | Some(Json::Null) => None,
        Some(Json::Array(items)) => Some(
            items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect(),
        ),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "partial_execution_targets must be a list of node ids".into(),
            ))
        }
    };
    let submission = Submission {
        prompt,
        extra_data,
        client_id,
        front,
        number,
        prompt_id,
        targets,
    };
    match state.exec.submit(submission).await {
        Ok(submitted) => Ok(HttpResponse::Ok().json(json!({
            "prompt_id": submitted.prompt_id,
            "number": number_json(submitted.number),
            "node_errors": node_errors_json(&submitted.node_errors, state.exec.registry(), state.exec.dirs()),
        }))),
        Err(e) => Err(submit_error(e, state.exec.registry(), state.exec.dirs())),
    }
}

/// The largest `number` a client may give, in magnitude: 2^50. The counter goes on from the
/// highest number queued, one at a time; floats count in ones only up to 2^53, so from 2^50 there
/// are still 7×10^15 prompts before two would tie (from 1e308, every later prompt ties).
pub const MAX_QUEUE_NUMBER: f64 = (1u64 << 50) as f64;

/// A client's `number` (ComfyUI's queue position): a finite JSON number within
/// ±[`MAX_QUEUE_NUMBER`].
fn queue_number(value: &Json) -> Result<f64, ApiError> {
    let number = value
        .as_f64()
        .ok_or_else(|| ApiError::BadRequest(format!("number must be a number, got {value}")))?;
    if !number.is_finite() || number.abs() > MAX_QUEUE_NUMBER {
        return Err(ApiError::BadRequest(format!(
            "number {value} is out of range: the queue takes numbers from -{max} to {max}",
            max = MAX_QUEUE_NUMBER as u64
        )));
    }
    Ok(number)
}

/// `GET /prompt`.
pub async fn get_prompt(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let remaining = state.exec.store().queue_remaining().await?;
    Ok(HttpResponse::Ok().json(exec_info(remaining)))
}

/// `GET /queue`: running and pending items, pending in the order they will run.
pub async fn get_queue(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let running = state.exec.store().running().await?;
    let pending = state.exec.store().pending().await?;
    Ok(HttpResponse::Ok().json(json!({
        "queue_running": running.iter().map(queue_item).collect::<Vec<_>>(),
        "queue_pending": pending.iter().map(queue_item).collect::<Vec<_>>(),
    })))
}

fn id_list(value: Option<&Json>) -> Vec<String> {
    value
        .and_then(Json::as_array)
        .map(|ids| {
            ids.iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `POST /queue`: `{"clear": true}` and/or `{"delete": [ids]}`.
pub async fn post_queue(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = parse_json_body(&body)?;
    if body.get("clear").and_then(Json::as_bool).unwrap_or(false) {
        state.exec.clear_pending().await?;
    }
    let ids = id_list(body.get("delete"));
    if !ids.is_empty() {
        state.exec.delete_pending(&ids).await?;
    }
    Ok(HttpResponse::Ok().finish())
}

#[derive(serde::Deserialize)]
pub struct HistoryQuery {
    max_items: Option<String>,
    offset: Option<String>,
}

fn parse_count(name: &str, value: Option<&String>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("{name} must be an integer, got '{v}'")))
        })
        .transpose()
}

/// `GET /history`.
pub async fn get_history(
    state: web::Data<AppState>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let max_items = parse_count("max_items", query.max_items.as_ref())?;
    let offset = parse_count("offset", query.offset.as_ref())?;
    let rows = state.exec.store().history(max_items, offset).await?;
    let map: Map<String, Json> = rows
        .iter()
        .map(|r| (r.prompt_id.clone(), history_entry(r)))
        .collect();
    Ok(HttpResponse::Ok().json(Json::Object(map)))
}

/// `GET /history/{prompt_id}`: the entry, or `{}`.
pub async fn get_history_entry(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let prompt_id = path.into_inner();
    let mut map = Map::new();
    if let Some(row) = state.exec.store().history_entry(&prompt_id).await? {
        map.insert(prompt_id, history_entry(&row));
    }
    Ok(HttpResponse::Ok().json(Json::Object(map)))
}

/// `POST /history`: `{"clear": true}` and/or `{"delete": [ids]}`.
pub async fn post_history(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = parse_json_body(&body)?;
    if body.get("clear").and_then(Json::as_bool).unwrap_or(false) {
        state.exec.store().clear_history().await?;
    }
    let ids = id_list(body.get("delete"));
    if !ids.is_empty() {
        state.exec.store().delete_history(&ids).await?;
    }
    Ok(HttpResponse::Ok().finish())
}

/// `POST /interrupt`: optional `{"prompt_id"}`; a body that is not JSON counts as `{}`.
pub async fn post_interrupt(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let body: Json = crate::api::check_json_memory(&body)
        .ok()
        .and_then(|()| serde_json::from_slice(&body).ok())
        .unwrap_or(json!({}));
    let prompt_id = body.get("prompt_id").and_then(Json::as_str);
    if let Err(e) = state.exec.interrupt_anywhere(prompt_id).await {
        tracing::error!("cannot ask another worker to interrupt: {e:#}");
    }
    HttpResponse::Ok().finish()
}

/// `POST /free`: `{"unload_models": bool, "free_memory": bool}`.
pub async fn post_free(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = parse_json_body(&body)?;
    let unload = body
        .get("unload_models")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let free = body
        .get("free_memory")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    state.exec.free(unload, free);
    Ok(HttpResponse::Ok().finish())
}
