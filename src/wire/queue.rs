//! The queue's and the history's shapes: status, queue items, history entries and their `meta`.

use serde_json::{json, Value as Json};

use crate::store::{PromptRow, PromptStatus};

/// `exec_info`, as `GET /prompt` answers it.
pub fn exec_info(queue_remaining: i64) -> Json {
    json!({"exec_info": {"queue_remaining": queue_remaining}})
}

/// The `status` message's data (the socket's greeting adds the client's `sid`).
pub fn status(queue_remaining: i64) -> Json {
    json!({"status": exec_info(queue_remaining)})
}

/// A queue number as ComfyUI prints it: an integer when it is one (front-of-queue numbers are
/// negative, fractional ones come from clients).
pub fn number_json(number: f64) -> Json {
    if number.fract() == 0.0 && number.abs() < 9.0e15 {
        Json::from(number as i64)
    } else {
        json!(number)
    }
}

/// One queue item: `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
pub fn queue_item(row: &PromptRow) -> Json {
    json!([
        number_json(row.number),
        row.prompt_id,
        row.prompt,
        row.extra_data,
        row.outputs_to_execute
    ])
}

/// One history entry in ComfyUI's shape.
pub fn history_entry(row: &PromptRow) -> Json {
    let status_str = if row.status == PromptStatus::Done {
        "success"
    } else {
        "error"
    };
    let mut status = json!({
        "status_str": status_str,
        "completed": row.status == PromptStatus::Done,
        "messages": row.status_messages.clone().unwrap_or(json!([])),
    });
    if let Some(reason) = &row.reason {
        // Weft addition: why a prompt did not complete (for example, a crash while it ran).
        status["reason"] = Json::from(reason.as_str());
    }
    json!({
        "prompt": queue_item(row),
        "outputs": row.outputs.clone().unwrap_or(json!({})),
        "status": status,
        "meta": row.meta.clone().unwrap_or(json!({})),
    })
}

/// A node's entry in a history entry's `meta`.
pub fn node_meta(node_id: &str) -> Json {
    json!({"node_id": node_id, "display_node": node_id, "parent_node": null, "real_node_id": node_id})
}

/// The history messages of a prompt quarantined because the server stopped while it ran, at
/// `crashes` restarts in a row: `execution_error` with every field clients parse, on no node.
pub fn quarantined(prompt_id: &str, timestamp: i64, why: &str) -> Json {
    json!([error_on_no_node(
        prompt_id,
        timestamp,
        crate::wire::errors::QUARANTINED,
        why
    )])
}

/// The history message of a prompt whose worker failed (node panics are caught; this is the rest).
pub fn executor_crashed(prompt_id: &str, why: &str) -> Json {
    error_on_no_node(
        prompt_id,
        crate::store::now_ms(),
        crate::wire::errors::EXECUTOR_ERROR,
        why,
    )
}

/// An `execution_error` history message with every field clients parse, on no node.
fn error_on_no_node(prompt_id: &str, timestamp: i64, exception_type: &str, why: &str) -> Json {
    json!(["execution_error", {
        "prompt_id": prompt_id, "node_id": "", "node_type": "", "executed": [],
        "exception_message": why, "exception_type": exception_type, "traceback": [why],
        "current_inputs": {}, "current_outputs": [], "timestamp": timestamp,
    }])
}
