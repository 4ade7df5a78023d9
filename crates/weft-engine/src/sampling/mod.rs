//! ComfyUI-exact sampling maths in sigma space: torch-compatible noise, the discrete VP model
//! schedule, the KSampler schedulers and the k-diffusion samplers.
//!
//! Everything here is pure tensor maths: the model is reached only through the
//! [`samplers::Denoiser`] trait, so this module knows nothing about UNets, graphs or HTTP.
pub mod model_sampling;
pub mod rng;
pub mod samplers;
pub mod schedulers;

/// Errors of the sampling layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SamplingError {
    #[error("unknown sampler '{0}'")]
    UnknownSampler(String),
    #[error("unknown scheduler '{0}'")]
    UnknownScheduler(String),
    #[error("sampling interrupted at step {step}")]
    Interrupted { step: usize },
    #[error("sampler '{sampler}' needs the unconditional prediction but the denoiser gave none")]
    MissingUncond { sampler: &'static str },
    #[error("sampler '{sampler}' cannot run on these sigmas: {reason}")]
    InvalidSigmas {
        sampler: &'static str,
        reason: String,
    },
    #[error("sampler '{sampler}' diverged at attempt {step} (non-finite error estimate)")]
    Diverged { sampler: &'static str, step: usize },
    #[error("tensor error in sampler '{sampler}': {source}")]
    Tensor {
        sampler: &'static str,
        source: candle_core::Error,
    },
}
