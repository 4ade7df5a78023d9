//! `POST /api/weft/generate`: one JSON request → a workflow graph (`crate::generate`) → queued
//! like any other prompt. `POST /api/weft/generate/compile` returns the graph without queueing.

use actix_web::{web, HttpResponse};
use rand::Rng;
use serde_json::{json, Map, Value as Json};

use crate::api::error::{node_errors_json, submit_error, ApiError};
use crate::api::{blocking, parse_json_body, AppState};
use crate::editor_format::api_to_editor;
use crate::exec::Submission;
use crate::generate::{self, Compiled, GenerateRequest, RequestError};
use crate::wire::errors::prompt_error;
use crate::wire::queue::number_json;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/generate", web::post().to(post_generate))
        .route("/generate/compile", web::post().to(post_compile));
}

fn request_error(e: RequestError) -> ApiError {
    ApiError::Prompt(prompt_error(
        "invalid_generate_request",
        &e.to_string(),
        &e.message,
        json!({"field": e.field}),
        json!({}),
    ))
}

/// Parses and compiles a body; a request without a seed gets a random one (as the editor's
/// "randomize" does), reported back in `resolved.seed`.
fn compile(
    state: &AppState,
    body: &[u8],
) -> Result<(GenerateRequest, Json, Compiled, Json), ApiError> {
    let body = parse_json_body(body)?;
    let request = generate::parse(&body).map_err(request_error)?;
    let seed = rand::thread_rng().gen_range(0..(1u64 << 50));
    let compiled = generate::compile(&request, state.exec.dirs(), seed).map_err(request_error)?;
    let catalog = state.exec.registry().catalog(state.exec.dirs());
    let workflow = api_to_editor(&compiled.prompt, &catalog).map_err(|e| {
        ApiError::Internal(format!(
            "the compiled graph does not convert to the editor format: {e}"
        ))
    })?;
    Ok((request, body, compiled, workflow))
}

/// [`compile`] off the async workers: it reads checkpoint headers and lists model folders.
async fn compile_blocking(
    state: &web::Data<AppState>,
    body: web::Bytes,
) -> Result<(GenerateRequest, Json, Compiled, Json), ApiError> {
    let state = state.clone();
    blocking(move || compile(&state, &body)).await
}

async fn post_compile(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (_, _, compiled, workflow) = compile_blocking(&state, body).await?;
    Ok(HttpResponse::Ok().json(json!({
        "prompt": compiled.prompt,
        "workflow": workflow,
        "resolved": compiled.resolved,
    })))
}

async fn post_generate(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (request, body, compiled, workflow) = compile_blocking(&state, body).await?;
    let mut extra_data = Map::new();
    // Saved images embed the editor workflow, as images from the editor do, and the request.
    extra_data.insert(
        "extra_pnginfo".into(),
        json!({"workflow": workflow, "weft_generate_request": body}),
    );
    let submission = Submission {
        prompt: compiled.prompt.clone(),
        extra_data,
        client_id: request.client_id.clone(),
        front: false,
        number: None,
        prompt_id: None,
        targets: None,
    };
    match state.exec.submit(submission).await {
        Ok(submitted) => Ok(HttpResponse::Ok().json(json!({
            "prompt_id": submitted.prompt_id,
            "number": number_json(submitted.number),
            "node_errors": node_errors_json(&submitted.node_errors, state.exec.registry(), state.exec.dirs()),
            "prompt": compiled.prompt,
            "workflow": workflow,
            "resolved": compiled.resolved,
        }))),
        Err(e) => Err(submit_error(e, state.exec.registry(), state.exec.dirs())),
    }
}
