#![recursion_limit = "512"]

//! End-to-end tests: one binary, one module per area. Most start the real server on a free
//! loopback port with a fresh data folder; `engine` and `editor_format` check pure functions
//! against committed reference fixtures.

mod access;
mod annotators_depth;
mod annotators_hed;
mod annotators_lineart;
mod annotators_midas;
mod annotators_mlsd;
mod annotators_normalbae;
mod annotators_oneformer;
mod annotators_openpose;
mod annotators_uniformer;
mod annotators_zoe;
mod cli;
mod clip_vision_nodes;
mod comfy_routes;
mod controlnet_nodes;
mod custom_sampling_nodes;
mod diffusion;
mod editor_format;
mod engine;
mod examples;
mod fuzz_corpus;
mod generate;
mod gligen_nodes;
mod helpers;
mod image_conditioning_nodes;
mod image_edit_nodes;
mod image_nodes;
mod latent_nodes;
mod lora_nodes;
mod memory;
mod model_merging_nodes;
mod model_patch_nodes;
mod models;
mod restart;
mod security;
pub(crate) mod server;
mod upscale_nodes;
mod userdata;
mod workers;
mod workflow_files;
