//! The options ComfyUI's sampler nodes pass to a k-diffusion sampler (`comfy.samplers.ksampler(name,
//! extra_options)`): every field left `None` takes the sampler function's own default, so
//! `SamplerOptions::default()` is exactly what KSampler runs.

/// `solver_type` of `sample_dpmpp_2m_sde`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverType {
    /// The default: the second-order correction `0.5 * (-h_eta).expm1().neg() / r`.
    Midpoint,
    /// Heun's correction `((-h_eta).expm1().neg() / -h_eta + 1) / r`.
    Heun,
}

/// Keyword options of the sampler functions; `None` keeps the function's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplerOptions {
    /// Ancestral noise amount (`eta`): 1 for the ancestral/SDE samplers, 0 for dpm_adaptive.
    pub eta: Option<f64>,
    /// Multiplier on the added noise (`s_noise`, default 1).
    pub s_noise: Option<f64>,
    /// dpmpp_sde's intermediate step as a fraction of the log-sigma step (`r`, default 1/2).
    pub r: Option<f64>,
    /// dpmpp_2m_sde's second-order rule.
    pub solver_type: Option<SolverType>,
    /// lms's order (default 4) or dpm_adaptive's (2 or 3, default 3).
    pub order: Option<usize>,
    /// dpm_adaptive's relative tolerance (default 0.05).
    pub rtol: Option<f64>,
    /// dpm_adaptive's absolute tolerance (default 0.0078).
    pub atol: Option<f64>,
    /// dpm_adaptive's first step in log-sigma time (default 0.05).
    pub h_init: Option<f64>,
    /// dpm_adaptive's PID controller gains (defaults 0, 1, 0: an I-controller).
    pub pcoeff: Option<f64>,
    /// See `pcoeff`.
    pub icoeff: Option<f64>,
    /// See `pcoeff`.
    pub dcoeff: Option<f64>,
    /// dpm_adaptive's acceptance threshold on the step factor (default 0.81).
    pub accept_safety: Option<f64>,
}

impl SamplerOptions {
    /// `eta`, or the sampler's default.
    pub fn eta_or(&self, default: f64) -> f64 {
        self.eta.unwrap_or(default)
    }

    /// `s_noise`, default 1.
    pub fn s_noise(&self) -> f64 {
        self.s_noise.unwrap_or(1.0)
    }
}

/// ComfyUI's SAMPLER value (`KSAMPLER`): a sampler and the options its node set.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Which sampler function runs.
    pub sampler: super::Sampler,
    /// Its keyword options.
    pub options: SamplerOptions,
}

impl SamplerConfig {
    /// The sampler with its defaults (KSamplerSelect, KSampler).
    pub fn plain(sampler: super::Sampler) -> Self {
        SamplerConfig {
            sampler,
            options: SamplerOptions::default(),
        }
    }
}
