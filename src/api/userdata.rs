//! ComfyUI's user routes (`app/user_manager.py`): `/users`, `/userdata` and `/v2/userdata`
//! listings, and `/userdata/{file}` (read, save, delete, move). Single-user, as ComfyUI without
//! `--multi-user`: the `Comfy-User` header is ignored. The user folder and the workflow
//! library behind `workflows/` are `crate::userdata`'s; the JSON is `wire::userdata`'s.

use actix_files::NamedFile;
use actix_web::http::header::{self, ContentDisposition, DispositionType};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::userdata::{Stored, UserDataError, UserFiles};
use crate::wire::userdata::{listing_entry, saved_file, single_user, user_error};

/// ComfyUI's query flags: `true` in any case is true.
fn flag(value: &Option<String>) -> bool {
    value
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// `overwrite`: true unless exactly `false`, as ComfyUI reads it.
fn overwrite(value: &Option<String>) -> bool {
    value.as_deref() != Some("false")
}

/// `GET /users`: `{"storage": "server", "migrated": <the user's folder exists>}`.
pub async fn get_users(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(single_user(state.user.migrated()))
}

/// `POST /users {"username": …}`: the new user's id, or 400 `{"error": …}`.
pub async fn post_users(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    crate::api::check_json_memory(&body)?;
    let body: Json = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    let Some(name) = body.get("username").and_then(Json::as_str) else {
        return Ok(HttpResponse::BadRequest().json(user_error("username not provided")));
    };
    match state.user.add_user(name).await {
        Ok(id) => Ok(HttpResponse::Ok().json(id)),
        Err(UserDataError::BadRequest(message)) => {
            Ok(HttpResponse::BadRequest().json(user_error(&message)))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    dir: Option<String>,
    recurse: Option<String>,
    full_info: Option<String>,
    split: Option<String>,
}

/// `GET /userdata?dir=…&recurse=…&full_info=…&split=…`: the files under `dir`.
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let dir = query.dir.as_deref().unwrap_or_default();
    if dir.is_empty() {
        return Err(ApiError::BadRequest(
            "the query parameter 'dir' (the folder to list) is required".into(),
        ));
    }
    let (full_info, split) = (flag(&query.full_info), flag(&query.split));
    let files = state.user.list(dir, flag(&query.recurse)).await?;
    Ok(HttpResponse::Ok().json(
        files
            .into_iter()
            .map(|info| listing_entry(info, full_info, split))
            .collect::<Vec<_>>(),
    ))
}

#[derive(Deserialize)]
pub struct TreeQuery {
    path: Option<String>,
}

/// `GET /v2/userdata?path=…`: every file and folder under `path`. A path that leaves the user
/// folder is a 400 here, as in ComfyUI.
pub async fn tree(
    state: web::Data<AppState>,
    query: web::Query<TreeQuery>,
) -> Result<HttpResponse, ApiError> {
    let path = query.path.as_deref().unwrap_or_default();
    let entries = state.user.tree(path).await.map_err(|e| match e {
        UserDataError::Path(e) => ApiError::BadRequest(e.to_string()),
        other => other.into(),
    })?;
    Ok(HttpResponse::Ok().json(entries))
}

/// `GET /userdata/{file}`: the file, as a download (`Content-Disposition: attachment`,
/// `nosniff`, never a type a browser would run), except `user.css`, served inline as CSS.
pub async fn get_file(
    state: web::Data<AppState>,
    req: HttpRequest,
    file: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    serve(&state, &req, file.into_inner()).await
}

/// `GET /user.css`: the user's stylesheet, which the frontend's page links beside itself.
pub async fn user_css(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    serve(&state, &req, "user.css".to_owned()).await
}

async fn serve(
    state: &AppState,
    req: &HttpRequest,
    file: String,
) -> Result<HttpResponse, ApiError> {
    let css = UserFiles::is_user_css(&file);
    let disposition = ContentDisposition {
        disposition: if css {
            DispositionType::Inline
        } else {
            DispositionType::Attachment
        },
        parameters: Vec::new(),
    };
    let stored = match (
        state.user.open(&file).await,
        UserFiles::default_content(&file),
    ) {
        (Err(UserDataError::NotFound(_)), Some((mime, body))) => {
            return Ok(HttpResponse::Ok()
                .content_type(mime)
                .insert_header((header::CONTENT_DISPOSITION, disposition))
                .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .body(body));
        }
        (opened, _) => opened?,
    };
    let mut response = match stored {
        Stored::Workflow(row) => HttpResponse::Ok()
            .content_type("application/json")
            .insert_header((header::CONTENT_DISPOSITION, disposition))
            .body(row.content),
        Stored::File(path) => {
            let mime = if css {
                mime_guess::mime::TEXT_CSS
            } else {
                let mime = mime_guess::from_path(&path).first_or_octet_stream();
                if crate::api::files::document_like(&mime) {
                    mime_guess::mime::APPLICATION_OCTET_STREAM
                } else {
                    mime
                }
            };
            NamedFile::open_async(&path)
                .await
                .map_err(|e| ApiError::NotFound(format!("cannot open '{file}': {e}")))?
                .set_content_type(mime)
                .set_content_disposition(disposition)
                .into_response(req)
        }
    };
    // `nosniff` is on every response (`app.rs`).
    if !css {
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(crate::api::files::USER_FILE_CSP),
        );
    }
    Ok(response)
}

#[derive(Deserialize)]
pub struct SaveQuery {
    overwrite: Option<String>,
    full_info: Option<String>,
}

/// `POST /userdata/{file}?overwrite=…&full_info=…`: stores the body as the file (409 when it
/// exists and `overwrite=false`); answers its path, or its details with `full_info=true`.
pub async fn post_file(
    state: web::Data<AppState>,
    file: web::Path<String>,
    query: web::Query<SaveQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let info = state
        .user
        .save(&file, body.to_vec(), overwrite(&query.overwrite))
        .await?;
    Ok(HttpResponse::Ok().json(saved_file(info, flag(&query.full_info))))
}

/// `DELETE /userdata/{file}`: 204.
pub async fn delete_file(
    state: web::Data<AppState>,
    file: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.user.delete(&file).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /userdata/{file}/move/{dest}?overwrite=…&full_info=…`: renames the file; answers as
/// a save does.
pub async fn move_file(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    query: web::Query<SaveQuery>,
) -> Result<HttpResponse, ApiError> {
    let (file, dest) = path.into_inner();
    let info = state
        .user
        .move_file(&file, &dest, overwrite(&query.overwrite))
        .await?;
    Ok(HttpResponse::Ok().json(saved_file(info, flag(&query.full_info))))
}
