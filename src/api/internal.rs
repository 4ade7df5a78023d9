//! ComfyUI's `/internal/*` routes, which only its frontend uses: recent log lines (its terminal
//! panel) and the subscription to `logs` socket events, the model folders' paths, and the files
//! of a data folder. Served at `/internal` only, as ComfyUI does.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::Value as Json;

use crate::api::error::ApiError;
use crate::api::{blocking, parse_json_body, AppState};
use crate::paths::{FolderType, MODEL_FOLDERS};
use crate::wire;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/logs", web::get().to(logs))
        .route("/logs/raw", web::get().to(logs_raw))
        .route("/logs/subscribe", web::patch().to(subscribe_logs))
        .route("/folder_paths", web::get().to(folder_paths))
        .route("/files/{type}", web::get().to(files));
}

/// `GET /internal/logs`: the recent lines as one string of `"{time} - {line}"`.
async fn logs() -> HttpResponse {
    HttpResponse::Ok().json(wire::logs::text(&crate::logs::recent()))
}

/// The terminal size ComfyUI reports: its own terminal's; Weft has none behind the frontend, so
/// `COLUMNS`/`LINES` when set, else 80×24 (Python's fallback).
fn terminal_size() -> (u16, u16) {
    let read = |name: &str, default: u16| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u16>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(default)
    };
    (read("COLUMNS", 80), read("LINES", 24))
}

/// `GET /internal/logs/raw`: `{entries: [{t, m}], size: {cols, rows}}`.
async fn logs_raw() -> HttpResponse {
    let (cols, rows) = terminal_size();
    HttpResponse::Ok().json(wire::logs::raw(&crate::logs::recent(), cols, rows))
}

/// `PATCH /internal/logs/subscribe` with `{"enabled": bool, "clientId": "…"}`: whether that
/// client's socket gets a `logs` event with each new line (until it disconnects).
async fn subscribe_logs(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = parse_json_body(&body)?;
    let invalid = |message: &str| ApiError::Plain(StatusCode::BAD_REQUEST, message.to_owned());
    let client_id = match body.get("clientId") {
        Some(Json::String(id)) if !id.is_empty() => id.clone(),
        Some(_) => return Err(invalid("clientId must be a non-empty string")),
        None => return Err(invalid("clientId is required")),
    };
    let enabled = match body.get("enabled") {
        Some(Json::Bool(enabled)) => *enabled,
        Some(_) => return Err(invalid("enabled must be true or false")),
        None => return Err(invalid("enabled is required")),
    };
    state.hub.subscribe_logs(&client_id, enabled);
    Ok(HttpResponse::Ok().finish())
}

/// `GET /internal/folder_paths`: every model folder's paths, in search order.
async fn folder_paths(state: web::Data<AppState>) -> HttpResponse {
    let dirs = state.exec.dirs();
    let folders: Vec<(&str, Vec<std::path::PathBuf>)> = MODEL_FOLDERS
        .iter()
        .map(|name| (*name, dirs.model_folders(name).unwrap_or_default()))
        .collect();
    HttpResponse::Ok().json(wire::models::folder_paths(&folders))
}

/// `GET /internal/files/{input|output|temp}`: the names of the folder's visible files at its top
/// level, newest first.
async fn files(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let folder = FolderType::parse(&path).ok_or_else(|| {
        ApiError::Plain(
            StatusCode::BAD_REQUEST,
            format!(
                "Invalid directory type '{}': the type must be input, output or temp",
                path.as_str()
            ),
        )
    })?;
    let names = blocking(move || Ok(state.exec.dirs().list_folder_files(folder))).await?;
    Ok(HttpResponse::Ok().json(names))
}
