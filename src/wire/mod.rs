//! ComfyUI's wire format: every JSON shape a ComfyUI client reads, built in one place.
//!
//! `exec` reports typed [`Event`]s and the store keeps typed rows; here they become ComfyUI's
//! socket messages, history entries, queue items and status, along with the exception type names
//! of `execution_error`, the bodies of rejected prompts, `/object_info`'s declarations, the jobs
//! API's job records, the nodes' help pages, the log entries of `/internal/logs`, the model browser's listings and the
//! user folder's answers (`/users`, `/userdata` listings and saves). `api` only routes and frames.
//! Any change here is a change to what clients see, so the tests compare
//! these shapes with ComfyUI's.

pub mod errors;
pub mod events;
pub mod jobs;
pub mod logs;
pub mod models;
pub mod node_docs;
pub mod object_info;
pub mod queue;
pub mod userdata;

pub use events::{Event, ExecutionErrorInfo};
