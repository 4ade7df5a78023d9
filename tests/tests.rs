#![recursion_limit = "512"]

//! End-to-end tests: one binary, one module per area. Most start the real server on a free
//! loopback port with a fresh data folder; `engine` and `editor_format` check pure functions
//! against committed reference fixtures.

mod cli;
mod comfy_routes;
mod controlnet_nodes;
mod diffusion;
mod editor_format;
mod engine;
mod examples;
mod fuzz_corpus;
mod generate;
mod helpers;
mod image_nodes;
mod lora_nodes;
mod memory;
mod models;
mod restart;
mod security;
pub(crate) mod server;
mod userdata;
mod workflow_files;
