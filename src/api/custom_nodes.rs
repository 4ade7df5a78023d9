//! What ComfyUI's custom nodes contribute to the frontend, answered as ComfyUI answers with none
//! installed (Weft loads no custom nodes): translations (`/i18n`), example workflows
//! (`/workflow_templates`) and subgraph blueprints (`/global_subgraphs`).

use actix_web::{web, HttpResponse};
use serde_json::{json, Value as Json};

/// `GET /i18n`: translations by locale from custom nodes' `locales/` folders; none.
pub async fn i18n() -> HttpResponse {
    HttpResponse::Ok().json(json!({}))
}

/// `GET /workflow_templates`: example workflow names by custom node; none.
pub async fn workflow_templates() -> HttpResponse {
    HttpResponse::Ok().json(json!({}))
}

/// `GET /global_subgraphs`: subgraph blueprints by id; none.
pub async fn global_subgraphs() -> HttpResponse {
    HttpResponse::Ok().json(json!({}))
}

/// `GET /global_subgraphs/{id}`: `null`, ComfyUI's answer for an id it does not know.
pub async fn global_subgraph(_id: web::Path<String>) -> HttpResponse {
    HttpResponse::Ok().json(Json::Null)
}
