//! ComfyUI's settings routes (`app/app_settings.py`): the user's `comfy.settings.json`, read
//! whole or by id, merged into or set by id.

use actix_web::{web, HttpResponse};
use serde_json::Value as Json;

use crate::api::error::ApiError;
use crate::api::AppState;

fn parse(body: &[u8]) -> Result<Json, ApiError> {
    crate::api::check_json_memory(body)?;
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))
}

/// `GET /settings`: every setting (`{}` when none).
pub async fn get_settings(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.user.settings().await?))
}

/// `GET /settings/{id}`: the setting's value, `null` when it is not set.
pub async fn get_setting(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut settings = state.user.settings().await?;
    Ok(HttpResponse::Ok().json(settings.remove(id.as_str()).unwrap_or(Json::Null)))
}

/// `POST /settings {id: value, …}`: merged into the settings (the body's values win); 200
/// with no body.
pub async fn post_settings(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let Json::Object(new) = parse(&body)? else {
        return Err(ApiError::BadRequest(
            "the settings must be a JSON object of setting ids and values".into(),
        ));
    };
    state
        .user
        .change_settings(move |settings| settings.extend(new))
        .await?;
    Ok(HttpResponse::Ok().finish())
}

/// `POST /settings/{id}` with the value as the JSON body; 200 with no body.
pub async fn post_setting(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let value = parse(&body)?;
    let id = id.into_inner();
    state
        .user
        .change_settings(move |settings| {
            settings.insert(id, value);
        })
        .await?;
    Ok(HttpResponse::Ok().finish())
}
