//! Weft: a node-graph image-generation workflow server, wire-compatible with ComfyUI.
//!
//! Layers, in reading order (see ARCHITECTURE.md): `graph` (workflows, declarations, validation,
//! plans), `engine` (tensor maths), `nodes` (node classes), `store` (SQLite), `exec` (queue worker,
//! cache, events), `api` (HTTP and WebSocket). `paths` is a leaf shared by `nodes` and `api`;
//! `app` wires everything together.

pub mod api;
pub mod app;
pub mod engine;
pub mod exec;
pub mod generate;
pub mod graph;
pub mod nodes;
pub mod paths;
pub mod store;
