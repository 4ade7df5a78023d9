//! Error shapes: the body of a rejected prompt and the `exception_type` names of
//! `execution_error`.

use serde_json::{json, Value as Json};

use crate::nodes::NodeError;

/// A node failed validation again when its turn came (files changed since it was queued).
pub const VALIDATION_ERROR: &str = "weft.ValidationError";
/// A node panicked; the panic was caught and the server goes on.
pub const PANIC: &str = "weft.Panic";
/// A prompt the server stopped under twice in a row: kept in history, not run again by itself.
pub const QUARANTINED: &str = "weft.Quarantined";
/// The worker itself failed (node panics are caught; this is the rest).
pub const EXECUTOR_ERROR: &str = "weft.ExecutorError";

/// The `exception_type` reported in `execution_error` for a node's failure.
pub fn exception_type(error: &NodeError) -> &'static str {
    match error {
        NodeError::Input { .. } => "weft.InputError",
        NodeError::Interrupted => "weft.Interrupted",
        NodeError::File { .. } => "weft.FileError",
        NodeError::Tensor(_) => "weft.TensorError",
        NodeError::Failed(_) => "weft.NodeError",
        NodeError::OutOfMemory { .. } => "weft.OutOfMemory",
    }
}

/// The 400 body of a rejected prompt: `{error: {type, message, details, extra_info}, node_errors}`.
pub fn prompt_error(
    kind: &str,
    message: &str,
    details: &str,
    extra_info: Json,
    node_errors: Json,
) -> Json {
    json!({
        "error": {"type": kind, "message": message, "details": details, "extra_info": extra_info},
        "node_errors": node_errors,
    })
}

/// A body for errors outside prompts: `{error: {type, message}}`.
pub fn plain_error(kind: &str, message: &str) -> Json {
    json!({"error": {"type": kind, "message": message}})
}

/// The bare `{"error": message}` body that ComfyUI's jobs and internal routes answer errors with.
pub fn message_error(message: &str) -> Json {
    json!({ "error": message })
}
