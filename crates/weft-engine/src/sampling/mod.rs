//! ComfyUI-exact sampling maths in sigma space: torch-compatible noise, the discrete VP model
//! schedule, the KSampler schedulers and the k-diffusion samplers.
//!
//! Everything here is pure tensor maths: the model is reached only through the
//! [`samplers::Denoiser`] trait, so this module knows nothing about UNets, graphs or HTTP.
pub mod brownian;
pub mod custom_schedules;
pub mod model_sampling;
pub mod rng;
pub mod samplers;
pub mod schedulers;

/// Errors of the sampling layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SamplingError {
    /// No implemented sampler has this ComfyUI name.
    #[error("unknown sampler '{0}'")]
    UnknownSampler(String),
    /// No implemented scheduler has this ComfyUI name.
    #[error("unknown scheduler '{0}'")]
    UnknownScheduler(String),
    /// The step callback asked to stop.
    #[error("sampling interrupted at step {step}")]
    Interrupted {
        /// The 0-based step whose callback stopped it.
        step: usize,
    },
    /// A CFG++ sampler ran with a denoiser that returned no unconditional prediction.
    #[error("sampler '{sampler}' needs the unconditional prediction but the denoiser gave none")]
    MissingUncond {
        /// The sampler's ComfyUI name.
        sampler: &'static str,
    },
    /// The sigma schedule does not suit the sampler.
    #[error("sampler '{sampler}' cannot run on these sigmas: {reason}")]
    InvalidSigmas {
        /// The sampler's ComfyUI name.
        sampler: &'static str,
        /// What is wrong with the sigmas.
        reason: String,
    },
    /// An adaptive step-size sampler (`dpm_adaptive`) got a non-finite error estimate.
    #[error("sampler '{sampler}' diverged at attempt {step} (non-finite error estimate)")]
    Diverged {
        /// The sampler's ComfyUI name.
        sampler: &'static str,
        /// The 0-based attempt that diverged.
        step: usize,
    },
    /// The denoiser or the sampler's own tensor maths failed.
    #[error("tensor error in sampler '{sampler}': {source}")]
    Tensor {
        /// The sampler's ComfyUI name.
        sampler: &'static str,
        /// The tensor error.
        source: candle_core::Error,
    },
}
