//! The HTTP and WebSocket API, wire-compatible with ComfyUI, plus Weft's own routes under
//! `/api/weft/`.
//!
//! Invariant: the only layer that knows ComfyUI's HTTP shapes. Handlers are thin: they parse,
//! call `exec` (or `store` for reads) and map the result; no handler waits on a node, and file IO
//! runs on the blocking pool ([`blocking`]). Errors become responses only in `error.rs`.

pub mod access;
pub mod convert;
mod custom_nodes;
mod encoding;
pub mod error;
pub(crate) mod files;
mod generate;
mod info;
mod internal;
mod jobs;
mod mask;
mod models;
mod origin;
pub(crate) mod png_text;
mod prompt;
mod settings;
mod templates;
mod userdata;
mod weft;
pub mod ws;

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::Value as Json;

use crate::api::error::ApiError;
use crate::exec::Executor;
use crate::userdata::UserFiles;

pub use access::{access_guard, Access};
pub use encoding::content_encoding_guard;
pub use ws::Hub;

/// Settings the API needs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub max_upload_bytes: usize,
    /// The built editor (`web/dist`); `None` or missing serves a page that says how to build it.
    pub web_root: Option<PathBuf>,
    /// The hosts answered and the token asked for ([`access`]).
    pub access: Access,
}

/// Shared by every handler.
pub struct AppState {
    pub exec: Arc<Executor>,
    pub hub: Hub,
    pub config: ApiConfig,
    /// The user folder (settings, the frontend's files, the workflow library as `workflows/`).
    pub user: Arc<UserFiles>,
}

/// Runs `work` on actix's blocking pool: anything that reads files (checkpoint headers, model
/// folder listings for combos, images) must not stall the async workers that serve every other
/// request and socket.
pub async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> Result<R, ApiError> + Send + 'static,
) -> Result<R, ApiError> {
    web::block(work)
        .await
        .map_err(|e| ApiError::Internal(format!("a blocking task failed: {e}")))?
}

/// Bytes a parsed JSON element may take, counted per separator (`,` `[` `{`): serde_json's 32-byte
/// `Value`, a map entry's key and index, and a growing vector's slack.
const JSON_BYTES_PER_ELEMENT: usize = 48;
/// Parsed JSON may take this much whatever the body's size, so small bodies are never refused.
const JSON_MEMORY_FLOOR: usize = 64 << 20;
/// Beyond the floor, parsed JSON may take this many times the body's bytes. Real workflows take
/// 4 to 13 times (number-dense link lists are the densest); `[0,0,0,…]` takes 24.
const JSON_MEMORY_FACTOR: usize = 16;

/// Refuses, before parsing, a body whose JSON would take far more memory than its bytes: a 90 MB
/// body of `[0,0,0,…]` (under the upload limit) used to inflate to gigabytes and abort the
/// server. One pass over the bytes, strings skipped, nothing built.
pub fn check_json_memory(body: &[u8]) -> Result<(), ApiError> {
    let mut elements = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' | b'[' | b'{' => elements += 1,
            _ => {}
        }
    }
    let needed = elements.saturating_mul(JSON_BYTES_PER_ELEMENT);
    let allowed = JSON_MEMORY_FLOOR.max(body.len().saturating_mul(JSON_MEMORY_FACTOR));
    if needed > allowed {
        return Err(ApiError::BadRequest(format!(
            "the JSON body holds {elements} elements in {} bytes; parsing it would take about \
             {} MB, more than {} MB allowed for a body this size",
            body.len(),
            needed >> 20,
            allowed >> 20
        )));
    }
    Ok(())
}

/// Parses a JSON body whatever its Content-Type (ComfyUI's clients send JSON as form data).
pub fn parse_json_body(body: &[u8]) -> Result<Json, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Json::Object(Default::default()));
    }
    check_json_memory(body)?;
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))
}

/// The ComfyUI routes; registered at `/` and again under `/api`. (`/internal/*` and
/// `/templates/*` are served at their paths only, `/api/jobs` under `/api` only, as in ComfyUI.)
fn comfy_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/prompt", web::post().to(prompt::post_prompt))
        .route("/prompt", web::get().to(prompt::get_prompt))
        .route("/queue", web::get().to(prompt::get_queue))
        .route("/queue", web::post().to(prompt::post_queue))
        .route("/history", web::get().to(prompt::get_history))
        .route("/history", web::post().to(prompt::post_history))
        .route(
            "/history/{prompt_id}",
            web::get().to(prompt::get_history_entry),
        )
        .route("/interrupt", web::post().to(prompt::post_interrupt))
        .route("/free", web::post().to(prompt::post_free))
        .route("/object_info", web::get().to(info::object_info))
        .route("/object_info/{class}", web::get().to(info::object_info_one))
        .route("/docs/{class}/{file}", web::get().to(info::node_docs))
        .route("/system_stats", web::get().to(info::system_stats))
        .route("/models", web::get().to(info::models))
        .route("/models/{folder}", web::get().to(info::models_in))
        .route("/embeddings", web::get().to(info::embeddings))
        .route("/extensions", web::get().to(info::extensions))
        .route("/features", web::get().to(info::features))
        .route("/upload/image", web::post().to(files::upload_image))
        .route("/upload/mask", web::post().to(mask::upload_mask))
        .route("/view", web::get().to(files::view))
        .route(
            "/view_metadata/{folder}",
            web::get().to(models::view_metadata),
        )
        .route("/experiment/models", web::get().to(models::folders))
        .route("/experiment/models/{folder}", web::get().to(models::files))
        .route(
            "/experiment/models/preview/{folder}/{path_index}/{filename:.*}",
            web::get().to(models::preview),
        )
        .route("/i18n", web::get().to(custom_nodes::i18n))
        .route(
            "/workflow_templates",
            web::get().to(custom_nodes::workflow_templates),
        )
        .route(
            "/global_subgraphs",
            web::get().to(custom_nodes::global_subgraphs),
        )
        .route(
            "/global_subgraphs/{id}",
            web::get().to(custom_nodes::global_subgraph),
        )
        .route("/users", web::get().to(userdata::get_users))
        .route("/users", web::post().to(userdata::post_users))
        .route("/userdata", web::get().to(userdata::list))
        .route("/v2/userdata", web::get().to(userdata::tree))
        .route("/userdata/{file}", web::get().to(userdata::get_file))
        .route("/userdata/{file}", web::post().to(userdata::post_file))
        .route("/userdata/{file}", web::delete().to(userdata::delete_file))
        .route(
            "/userdata/{file}/move/{dest}",
            web::post().to(userdata::move_file),
        )
        .route("/settings", web::get().to(settings::get_settings))
        .route("/settings", web::post().to(settings::post_settings))
        .route("/settings/{id}", web::get().to(settings::get_setting))
        .route("/settings/{id}", web::post().to(settings::post_setting))
        .route("/ws", web::get().to(ws::connect));
}

/// ComfyUI routes that exist under `/api` only (ComfyUI declares them with the prefix).
fn api_only_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/jobs", web::get().to(jobs::list))
        .route("/jobs/cancel", web::post().to(jobs::cancel_many))
        .route("/jobs/{id}", web::get().to(jobs::get))
        .route("/jobs/{id}/cancel", web::post().to(jobs::cancel));
}

/// Registers every route on an actix app.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let max_body = state.config.max_upload_bytes;
        let web_root = state.config.web_root.clone();
        cfg.app_data(state)
            .app_data(web::PayloadConfig::new(max_body))
            .service(
                web::scope("/api/weft")
                    .configure(weft::routes)
                    .configure(generate::routes)
                    .configure(convert::routes),
            )
            .service(
                web::scope("/api")
                    .configure(api_only_routes)
                    .configure(comfy_routes),
            )
            .service(web::scope("/internal").configure(internal::routes))
            .service(web::scope("/templates").configure(templates::routes))
            .route("/user.css", web::get().to(userdata::user_css))
            .configure(comfy_routes);
        match web_root.filter(|root| root.join("index.html").is_file()) {
            Some(root) => {
                let editor = is_weft_editor(&root);
                let files = actix_files::Files::new("/", root).index_file("index.html");
                if editor {
                    cfg.service(
                        web::scope("")
                            .wrap(
                                actix_web::middleware::DefaultHeaders::new()
                                    .add((header::CONTENT_SECURITY_POLICY, EDITOR_CSP)),
                            )
                            .service(files),
                    );
                } else {
                    // Another frontend (ComfyUI's, which needs inline styles, workers and
                    // more): served as it is, without a policy it was not written for.
                    cfg.service(files);
                }
            }
            None => {
                cfg.route("/", web::get().to(editor_missing));
            }
        }
    }
}

/// The Content-Security-Policy of Weft's own editor (`web/dist`): its scripts and styles come
/// from the server, images also from `blob:` (previews) and `data:`, connections (HTTP and the
/// socket) go to the server alone, and no other site may frame it.
pub const EDITOR_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob: data:; media-src 'self' blob: data:; font-src 'self' data:; \
    connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'self'; \
    form-action 'self'; frame-ancestors 'none'";

/// Whether the web root holds Weft's editor (its `index.html` says so in a `generator` meta tag)
/// rather than another frontend, such as ComfyUI's.
fn is_weft_editor(root: &std::path::Path) -> bool {
    std::fs::read_to_string(root.join("index.html"))
        .is_ok_and(|html| html.contains(r#"<meta name="generator" content="weft-editor""#))
}

async fn editor_missing() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, "default-src 'none'"))
        .body(
        "<!doctype html><title>Weft</title><h1>Weft is running</h1>\
         <p>The editor is not built. The API is available at <code>/prompt</code>, <code>/object_info</code>, \
         <code>/ws</code>; see the README.</p>",
    )
}
