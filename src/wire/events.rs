//! What the executor reports while it works, and each event's JSON as ComfyUI sends it.
//!
//! The same JSON goes out on the socket and into the history's `status.messages`; `exec` builds
//! the typed events, `api` frames and routes them.

use serde_json::{json, Value as Json};

/// An executor event, named as ComfyUI names it on the WebSocket.
#[derive(Debug, Clone)]
pub enum Event {
    Status {
        queue_remaining: i64,
    },
    ExecutionStart {
        prompt_id: String,
        timestamp: i64,
    },
    ExecutionCached {
        prompt_id: String,
        nodes: Vec<String>,
        timestamp: i64,
    },
    Executing {
        prompt_id: String,
        node: Option<String>,
    },
    Progress {
        prompt_id: String,
        node: String,
        value: u64,
        max: u64,
    },
    Executed {
        prompt_id: String,
        node: String,
        output: Json,
    },
    ExecutionSuccess {
        prompt_id: String,
        timestamp: i64,
    },
    ExecutionError(Box<ExecutionErrorInfo>),
    ExecutionInterrupted {
        prompt_id: String,
        node_id: Option<String>,
        node_type: Option<String>,
        executed: Vec<String>,
        timestamp: i64,
    },
    /// A binary preview frame: a sampler step image, or with `output` an image a node sends
    /// over the socket as its result (SaveImageWebsocket), which no newer one replaces.
    Preview {
        prompt_id: String,
        node: String,
        image: Vec<u8>,
        is_png: bool,
        output: bool,
    },
    /// An event of a prompt running on another worker sharing the queue, as that worker sent
    /// it (`type` and `data`), relayed to this worker's sockets.
    Relayed {
        name: String,
        data: Json,
    },
}

/// The body of `execution_error`.
#[derive(Debug, Clone)]
pub struct ExecutionErrorInfo {
    pub prompt_id: String,
    pub node_id: String,
    pub node_type: String,
    pub executed: Vec<String>,
    pub exception_message: String,
    pub exception_type: String,
    pub traceback: Vec<String>,
    pub current_inputs: Json,
    pub current_outputs: Vec<String>,
    pub timestamp: i64,
}

impl Event {
    /// The `type` field.
    pub fn name(&self) -> &str {
        match self {
            Event::Status { .. } => "status",
            Event::ExecutionStart { .. } => "execution_start",
            Event::ExecutionCached { .. } => "execution_cached",
            Event::Executing { .. } => "executing",
            Event::Progress { .. } => "progress",
            Event::Executed { .. } => "executed",
            Event::ExecutionSuccess { .. } => "execution_success",
            Event::ExecutionError(_) => "execution_error",
            Event::ExecutionInterrupted { .. } => "execution_interrupted",
            Event::Preview { .. } => "preview",
            Event::Relayed { name, .. } => name,
        }
    }

    /// The `data` field, exactly as ComfyUI sends it (`comfyui-api.md` §1.4).
    pub fn data(&self) -> Json {
        match self {
            Event::Status { queue_remaining } => super::queue::status(*queue_remaining),
            Event::ExecutionStart {
                prompt_id,
                timestamp,
            } => json!({"prompt_id": prompt_id, "timestamp": timestamp}),
            Event::ExecutionCached {
                prompt_id,
                nodes,
                timestamp,
            } => {
                json!({"nodes": nodes, "prompt_id": prompt_id, "timestamp": timestamp})
            }
            Event::Executing {
                prompt_id,
                node: Some(node),
            } => {
                json!({"node": node, "display_node": node, "prompt_id": prompt_id})
            }
            Event::Executing {
                prompt_id,
                node: None,
            } => json!({"node": null, "prompt_id": prompt_id}),
            Event::Progress {
                prompt_id,
                node,
                value,
                max,
            } => {
                json!({"value": value, "max": max, "prompt_id": prompt_id, "node": node})
            }
            Event::Executed {
                prompt_id,
                node,
                output,
            } => {
                json!({"node": node, "display_node": node, "output": output, "prompt_id": prompt_id})
            }
            Event::ExecutionSuccess {
                prompt_id,
                timestamp,
            } => json!({"prompt_id": prompt_id, "timestamp": timestamp}),
            Event::ExecutionError(info) => json!({
                "prompt_id": info.prompt_id,
                "node_id": info.node_id,
                "node_type": info.node_type,
                "executed": info.executed,
                "exception_message": info.exception_message,
                "exception_type": info.exception_type,
                "traceback": info.traceback,
                "current_inputs": info.current_inputs,
                "current_outputs": info.current_outputs,
                "timestamp": info.timestamp,
            }),
            Event::ExecutionInterrupted {
                prompt_id,
                node_id,
                node_type,
                executed,
                timestamp,
            } => json!({
                "prompt_id": prompt_id,
                "node_id": node_id,
                "node_type": node_type,
                "executed": executed,
                "timestamp": timestamp,
            }),
            Event::Preview {
                prompt_id,
                node,
                is_png,
                ..
            } => json!({
                "node_id": node,
                "prompt_id": prompt_id,
                "display_node_id": node,
                "parent_node_id": null,
                "real_node_id": node,
                "image_type": if *is_png { "image/png" } else { "image/jpeg" },
            }),
            Event::Relayed { data, .. } => data.clone(),
        }
    }

    /// `[type, data]` as stored in the history's `status.messages`.
    pub fn history_message(&self) -> Json {
        json!([self.name(), self.data()])
    }
}
