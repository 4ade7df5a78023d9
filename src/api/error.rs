//! The one place where errors become HTTP responses, in ComfyUI's shapes.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Map, Value as Json};

use crate::exec::SubmitError;
use crate::graph::validate::NodeError;
use crate::graph::{NodeErrors, PromptError};
use crate::nodes::Registry;
use crate::paths::DataDirs;
use crate::store::StoreError;
use crate::userdata::UserDataError;
use crate::wire::errors::{message_error, plain_error, prompt_error};
use crate::wire::object_info::input_config;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A body that is not JSON, or JSON of the wrong shape.
    #[error("{0}")]
    BadRequest(String),
    /// ComfyUI's 400 with `error` and `node_errors` (already rendered).
    #[error("prompt rejected")]
    Prompt(Json),
    /// No token, or a wrong one, on a server that asks for one.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(String),
    /// ComfyUI's bare `{"error": message}` body with this status (the jobs API and the internal
    /// routes answer errors so).
    #[error("{1}")]
    Plain(StatusCode, String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // Logged with its cause chain; the client sees a generic 500.
        tracing::error!("store error: {e:#}");
        ApiError::Internal(e.to_string())
    }
}

impl From<UserDataError> for ApiError {
    fn from(e: UserDataError) -> Self {
        match e {
            UserDataError::Path(crate::paths::PathError::Empty(path)) => {
                ApiError::BadRequest(format!("path '{path}' is empty"))
            }
            UserDataError::Path(
                e @ (crate::paths::PathError::NotAFolder(..)
                | crate::paths::PathError::CannotCreate(..)),
            ) => ApiError::BadRequest(e.to_string()),
            UserDataError::Path(e) => ApiError::Forbidden(e.to_string()),
            UserDataError::BadRequest(message) => ApiError::BadRequest(message),
            UserDataError::NotFound(message) => ApiError::NotFound(message),
            UserDataError::Exists(message) => ApiError::Conflict(message),
            UserDataError::Io(message) => ApiError::Internal(message),
            UserDataError::Store(e) => e.into(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Prompt(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Plain(status, _) => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = match self {
            ApiError::Prompt(body) => body.clone(),
            ApiError::BadRequest(message) => {
                prompt_error_body("invalid_request", message, message, json!({}))
            }
            ApiError::Internal(_) => plain_error("internal_error", "internal server error"),
            ApiError::Plain(_, message) => message_error(message),
            other => plain_error(error_type(other), &other.to_string()),
        };
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized(_) = self {
            response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, WWW_AUTHENTICATE));
        }
        response.json(body)
    }
}

/// The challenge every 401 carries: a token, sent as `Authorization: Bearer`.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"weft\"";

fn error_type(error: &ApiError) -> &'static str {
    match error {
        ApiError::Unauthorized(_) => "unauthorized",
        ApiError::Forbidden(_) => "forbidden",
        ApiError::NotFound(_) => "not_found",
        ApiError::PayloadTooLarge(_) => "payload_too_large",
        ApiError::Conflict(_) => "conflict",
        _ => "error",
    }
}

fn prompt_error_body(kind: &str, message: &str, details: &str, node_errors: Json) -> Json {
    prompt_error(kind, message, details, json!({}), node_errors)
}

/// Renders a rejected submission as ComfyUI does.
pub fn submit_error(error: SubmitError, registry: &Registry, dirs: &DataDirs) -> ApiError {
    match error {
        SubmitError::Format(e) => ApiError::Prompt(prompt_error_body(
            "invalid_prompt",
            "Invalid prompt",
            &e.to_string(),
            json!({}),
        )),
        SubmitError::DuplicateId(id) => ApiError::Prompt(prompt_error_body(
            "duplicate_prompt_id",
            "Prompt id already queued",
            &format!("prompt id '{id}' is already queued or running"),
            json!({}),
        )),
        SubmitError::Store(e) => e.into(),
        e @ SubmitError::Crashed(_) => {
            tracing::error!("{e}");
            ApiError::Internal(e.to_string())
        }
        SubmitError::Invalid {
            failure,
            node_errors,
        } => {
            let body = match failure {
                PromptError::InvalidPrompt { message, details } => {
                    prompt_error_body("invalid_prompt", &message, &details, json!({}))
                }
                PromptError::NoOutputs => {
                    prompt_error_body("prompt_no_outputs", "Prompt has no outputs", "", json!({}))
                }
                PromptError::OutputsFailed => {
                    let details: Vec<String> = node_errors
                        .iter()
                        .flat_map(|n| {
                            n.errors
                                .iter()
                                .map(|e| format!("{}: {}", e.message, e.details))
                        })
                        .collect();
                    prompt_error_body(
                        "prompt_outputs_failed_validation",
                        "Prompt outputs failed validation",
                        &details.join("\n"),
                        node_errors_json(&node_errors, registry, dirs),
                    )
                }
            };
            ApiError::Prompt(body)
        }
    }
}

/// `node_errors` as ComfyUI writes it.
pub fn node_errors_json(node_errors: &[NodeErrors], registry: &Registry, dirs: &DataDirs) -> Json {
    let mut map = Map::new();
    for node in node_errors {
        let errors: Vec<Json> = node
            .errors
            .iter()
            .map(|e| error_json(e, &node.class_type, registry, dirs))
            .collect();
        map.insert(
            node.node_id.clone(),
            json!({"errors": errors, "dependent_outputs": node.dependent_outputs, "class_type": node.class_type}),
        );
    }
    Json::Object(map)
}

fn error_json(error: &NodeError, class_type: &str, registry: &Registry, dirs: &DataDirs) -> Json {
    let mut extra = Map::new();
    if let Some(name) = &error.input_name {
        extra.insert("input_name".into(), Json::from(name.as_str()));
        if let Some(input) = registry.spec(class_type).and_then(|s| s.input(name)) {
            extra.insert("input_config".into(), input_config(input, dirs, 20));
        }
    }
    if let Some(received_type) = &error.received_type {
        extra.insert("received_type".into(), Json::from(received_type.as_str()));
    }
    if let Some(value) = &error.received_value {
        extra.insert("received_value".into(), value.clone());
    }
    if let Some((node, slot)) = &error.linked_node {
        extra.insert("linked_node".into(), json!([node, slot]));
    }
    if let Some(message) = &error.exception_message {
        extra.insert("exception_message".into(), Json::from(message.as_str()));
    }
    json!({
        "type": error.kind.type_name(),
        "message": error.message,
        "details": error.details,
        "extra_info": extra,
    })
}
