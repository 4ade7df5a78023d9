#![recursion_limit = "512"]

//! End-to-end tests: one binary, one module per area. Each starts the real server on a free
//! loopback port with a fresh data folder.

mod cli;
mod diffusion;
mod engine;
mod helpers;
mod image_nodes;
mod models;
mod restart;
pub(crate) mod server;
