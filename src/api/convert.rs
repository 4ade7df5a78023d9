//! `POST /api/weft/convert`: editor format ⇄ API format, and workflows recovered from PNGs.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value as Json};

use crate::api::error::ApiError;
use crate::api::{blocking, AppState};
use crate::editor_format::{
    api_to_editor, editor_to_api, EditorConversion, MAX_EDITOR_WORKFLOW_BYTES,
};
use crate::graph::Workflow;
use crate::wire::errors::prompt_error;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/convert", web::post().to(convert));
}

fn conversion(state: &AppState, editor: &Json) -> Result<EditorConversion, ApiError> {
    let catalog = state.exec.registry().catalog(state.exec.dirs());
    editor_to_api(editor, &catalog)
        .map_err(|e| ApiError::BadRequest(format!("cannot convert the editor workflow: {e}")))
}

/// Converts an editor workflow for queueing; a workflow with node types Weft lacks is refused,
/// naming them.
pub fn editor_to_prompt(state: &AppState, editor: &Json) -> Result<Json, ApiError> {
    let converted = conversion(state, editor)?;
    if !converted.missing_node_types.is_empty() {
        let names = converted.missing_node_types.join(", ");
        return Err(ApiError::Prompt(prompt_error(
            "missing_node_type",
            &format!(
                "Cannot execute because this workflow uses node types Weft does not have: {names}"
            ),
            &names,
            json!({"missing_node_types": converted.missing_node_types}),
            json!({}),
        )));
    }
    Ok(converted.prompt)
}

/// The text chunks of a PNG (`prompt`, `workflow`, …), decompressed within
/// [`MAX_PNG_TEXT_BYTES`](crate::api::png_text::MAX_PNG_TEXT_BYTES).
fn png_text(bytes: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    crate::api::png_text::png_text_chunks(bytes).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn conversion_json(converted: EditorConversion) -> Json {
    json!({
        "prompt": converted.prompt,
        "missing_node_types": converted.missing_node_types,
        "missing_models": converted.missing_models.iter().map(|(node, input, value)| json!({"node_id": node, "input": input, "value": value})).collect::<Vec<_>>(),
        "warnings": converted.warnings,
    })
}

#[derive(serde::Deserialize)]
pub struct ConvertQuery {
    to: Option<String>,
}

/// Body: an editor workflow (→ `{prompt, missing_node_types, missing_models, warnings}`), an API
/// prompt with `?to=editor` (→ the editor workflow), or a PNG (→ `{workflow, prompt}` as embedded,
/// with the API prompt converted from the workflow when the PNG has only that).
async fn convert(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
    query: web::Query<ConvertQuery>,
) -> Result<HttpResponse, ApiError> {
    if body.len() > MAX_EDITOR_WORKFLOW_BYTES {
        return Err(ApiError::PayloadTooLarge(format!(
            "a workflow is limited to {} MB",
            MAX_EDITOR_WORKFLOW_BYTES / (1024 * 1024)
        )));
    }
    let is_png = body.starts_with(b"\x89PNG\r\n\x1a\n")
        || req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("image/png"));
    // Conversion lists model folders (to report missing models): off the async workers.
    let to_editor = query.to.as_deref() == Some("editor");
    let response = blocking(move || convert_body(&state, &body, is_png, to_editor)).await?;
    Ok(HttpResponse::Ok().json(response))
}

fn convert_body(
    state: &AppState,
    body: &[u8],
    is_png: bool,
    to_editor: bool,
) -> Result<Json, ApiError> {
    if is_png {
        let chunks = png_text(body)?;
        let chunk = |key: &str| {
            chunks
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| serde_json::from_str::<Json>(v).ok())
        };
        let workflow = chunk("workflow");
        let mut prompt = chunk("prompt");
        if workflow.is_none() && prompt.is_none() {
            return Err(ApiError::BadRequest(
                "the PNG has no embedded workflow or prompt".into(),
            ));
        }
        // The workflow alone is enough to open the image in an editor: a prompt that cannot be
        // made from it is reported beside it, not instead of it.
        let mut warnings = Vec::new();
        if prompt.is_none() {
            if let Some(workflow) = &workflow {
                match conversion(state, workflow) {
                    Ok(converted) => prompt = Some(converted.prompt),
                    Err(e) => warnings.push(e.to_string()),
                }
            }
        }
        return Ok(json!({"workflow": workflow, "prompt": prompt, "warnings": warnings}));
    }
    crate::api::check_json_memory(body)?;
    let input: Json = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    if to_editor {
        let prompt = input.get("prompt").cloned().unwrap_or(input);
        let catalog = state.exec.registry().catalog(state.exec.dirs());
        let editor = api_to_editor(&prompt, &catalog)
            .map_err(|e| ApiError::BadRequest(format!("cannot convert the prompt: {e}")))?;
        return Ok(editor);
    }
    let editor = input
        .get("workflow")
        .filter(|w| Workflow::looks_like_editor_format(w))
        .cloned()
        .unwrap_or(input);
    if !Workflow::looks_like_editor_format(&editor) {
        return Err(ApiError::BadRequest("expected an editor-format workflow (with nodes and links); use ?to=editor to convert an API prompt".into()));
    }
    Ok(conversion_json(conversion(state, &editor)?))
}
