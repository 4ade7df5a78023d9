//! End-to-end tests: one binary, one module per area. Each starts the real server on a free
//! loopback port with a fresh data folder.

mod engine;
mod helpers;
mod image_nodes;
mod restart;
mod server;
