//! Tensor maths on candle: the diffusion models (CLIP text and vision encoders, UNet, VAE,
//! ControlNet, style adapters), their
//! loaders and key maps, LoRA, the samplers and schedulers, tokenization, preprocessors and image
//! resizing, and image upscale models.
//!
//! Invariant: knows nothing about graphs, HTTP, SQL or tokio, so it can be tested with tensors
//! alone.

#![warn(missing_docs)]

pub mod allocator;
pub mod annotators;
pub mod clip;
pub mod clip_vision;
pub mod controlnet;
pub mod device;
pub mod diffusion;
pub mod fuzzing;
pub mod gligen;
pub mod hypernetwork;
pub mod load;
pub mod lora;
pub mod manager;
pub mod memory;
pub mod merge;
pub mod ops;
pub mod preprocess;
pub mod resize;
pub mod sampling;
pub mod synth;
pub mod tokenizer;
pub mod unet;
pub mod upscale;
pub mod vae;
