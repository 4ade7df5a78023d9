//! The one-request generation API's compiler: a JSON request naming a prompt, models, LoRAs,
//! ControlNets, a scheduler and hyperparameters becomes an ordinary API-format graph, which is
//! then queued like any other prompt (`api/generate.rs`).
//!
//! - `request.rs`: parsing, with errors that name the field.
//! - `models.rs`: finding the files the request names, and their model families.
//! - `schedulers.rs`: friendly scheduler names → ComfyUI sampler + scheduler.
//! - `compile.rs`: the graph.

pub mod compile;
pub mod models;
pub mod request;
pub mod schedulers;

pub use compile::{compile, Compiled};
pub use request::{parse, GenerateRequest, RequestError};
