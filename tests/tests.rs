//! End-to-end tests: one binary, one module per area. Each starts the real server on a free
//! loopback port with a fresh data folder.

mod editor_format;
mod helpers;
mod image_nodes;
mod restart;
mod server;
