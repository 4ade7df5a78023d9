//! Weft: a node-graph image-generation workflow server, wire-compatible with ComfyUI.
//!
//! The server crate. Layers, in reading order (see ARCHITECTURE.md): the library crates `graph`
//! (workflows, declarations, validation, plans), `editor_format` (ComfyUI's editor format),
//! `engine` (tensor maths) and `store` (SQLite), re-exported here; then `nodes` (node classes),
//! `exec` (queue worker, cache, events), `generate` (the one-request compiler), `api` (HTTP and
//! WebSocket). `paths` turns names into files for `nodes`, `generate` and `api`; `logs` keeps recent
//! log lines for `api`; `userdata` is the user folder (settings, the frontend's files, the workflow
//! library as `workflows/`) for `api`; `app` wires everything together.

/// glibc's malloc with huge pages for large blocks (see `engine::allocator`).
#[global_allocator]
static ALLOCATOR: weft_engine::allocator::HugePages = weft_engine::allocator::HugePages;

pub mod api;
pub mod app;
pub mod exec;
pub mod fuzzing;
pub mod generate;
pub mod images;
pub mod logs;
pub mod nodes;
pub mod paths;
pub mod userdata;
pub mod wire;

// The library crates, under the names the server's modules use.
pub use weft_editor_format as editor_format;
pub use weft_engine as engine;
pub use weft_graph as graph;
pub use weft_store as store;
