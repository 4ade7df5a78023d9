//! The k-diffusion samplers as ComfyUI runs them (`comfy/k_diffusion/sampling.py`, `comfy/samplers.py`).
//!
//! A sampler walks `x` down a sigma schedule, calling a [`Denoiser`] (the engine's UNet + CFG) once or
//! more per step. The loop, the progress callback and the interrupt check are shared; the update
//! rules live in one file per family.
//!
//! Noise: ancestral/stochastic samplers draw from ComfyUI's `default_noise_sampler`, i.e. a torch CPU
//! generator seeded with `seed + 1` that yields `randn(x.shape)` per call (`NoiseSource::Default`),
//! which is bit-compatible with ComfyUI when its sampling runs on the CPU. (On a CUDA device ComfyUI
//! seeds a CUDA generator instead, which is not reproduced.) The SDE samplers (dpmpp_sde,
//! dpmpp_2m_sde(_heun), dpmpp_3m_sde and their `_gpu` twins) draw from ComfyUI's
//! `BrownianTreeNoiseSampler` over `[min positive sigma, max sigma]` seeded with `seed`, i.e.
//! torchsde's Brownian tree, reproduced bit for bit in [`crate::sampling::brownian`]; each draw
//! names its step (`noise_between`). (The `_gpu` twins build the same tree on the CUDA device in
//! ComfyUI, whose generator is not reproduced; on the CPU they match.) sa_solver(_pece) uses the
//! default noise sampler, as in ComfyUI.
//!
//! Callback quirks kept from ComfyUI: uni_pc(_bh2) reports after each step with the VP-scaled state
//! (`x / sqrt(1 + sigma^2)`); dpm_adaptive reports every attempt (accepted or rejected) after it ran.

mod ancestral;
mod basic;
mod dpm;
mod multistep;
mod options;
mod sa_solver;
mod sde;
mod unipc;

use candle_core::Tensor;

use crate::sampling::brownian::BrownianNoise;
use crate::sampling::model_sampling::{Config, ModelSamplingDiscrete};
use crate::sampling::rng::TorchGenerator;
use crate::sampling::SamplingError;

pub use options::{SamplerConfig, SamplerOptions, SolverType};

/// Output of one model evaluation at `(x, sigma)`.
#[derive(Debug, Clone)]
pub struct Denoised {
    /// The CFG-combined denoised prediction D(x, sigma), same shape as `x`.
    pub cond: Tensor,
    /// The unconditional denoised prediction; the `*_cfg_pp` samplers need it.
    pub uncond: Option<Tensor>,
}

/// The model as the samplers see it. The engine implements this for UNet + CFG.
pub trait Denoiser {
    /// Denoise `x` (`[B, C, H, W]`, f32) at noise level `sigma`; outputs have the shape of `x`.
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> candle_core::Result<Denoised>;
}

/// What the per-step callback sees (ComfyUI's `callback({'x', 'i', 'sigma', 'denoised'})`).
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// 0-based step index.
    pub step: usize,
    /// Number of steps (`sigmas.len() - 1`; for dpm_fast the NFE budget).
    pub total: usize,
    /// The state before this step's update.
    pub x: &'a Tensor,
    /// This step's denoised prediction (for previews).
    pub denoised: &'a Tensor,
    /// The step's sigma.
    pub sigma: f64,
}

/// Returned by a callback to stop sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

/// The per-step callback type.
pub type StepCallback<'a> = dyn FnMut(StepInfo<'_>) -> Result<(), Interrupted> + 'a;

macro_rules! samplers {
    ($($variant:ident => $name:literal,)*) => {
        /// A sampler that is implemented here, named as in ComfyUI.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Sampler {
            $(
                #[doc = concat!("ComfyUI's `", $name, "`.")]
                $variant,
            )*
        }

        /// Names of the implemented samplers, in ComfyUI's `KSampler.SAMPLERS` order.
        pub const SAMPLER_NAMES: &[&str] = &[$($name,)*];

        impl Sampler {
            /// Every implemented sampler, in [`SAMPLER_NAMES`] order.
            pub const ALL: &'static [Sampler] = &[$(Sampler::$variant,)*];

            /// The ComfyUI name.
            pub fn name(self) -> &'static str {
                match self { $(Sampler::$variant => $name,)* }
            }
        }
    };
}

samplers! {
    Euler => "euler",
    EulerCfgPp => "euler_cfg_pp",
    EulerAncestral => "euler_ancestral",
    EulerAncestralCfgPp => "euler_ancestral_cfg_pp",
    Heun => "heun",
    Heunpp2 => "heunpp2",
    Dpm2 => "dpm_2",
    Dpm2Ancestral => "dpm_2_ancestral",
    Lms => "lms",
    DpmFast => "dpm_fast",
    DpmAdaptive => "dpm_adaptive",
    Dpmpp2sAncestral => "dpmpp_2s_ancestral",
    Dpmpp2sAncestralCfgPp => "dpmpp_2s_ancestral_cfg_pp",
    DpmppSde => "dpmpp_sde",
    DpmppSdeGpu => "dpmpp_sde_gpu",
    Dpmpp2m => "dpmpp_2m",
    Dpmpp2mCfgPp => "dpmpp_2m_cfg_pp",
    Dpmpp2mSde => "dpmpp_2m_sde",
    Dpmpp2mSdeGpu => "dpmpp_2m_sde_gpu",
    Dpmpp2mSdeHeun => "dpmpp_2m_sde_heun",
    Dpmpp2mSdeHeunGpu => "dpmpp_2m_sde_heun_gpu",
    Dpmpp3mSde => "dpmpp_3m_sde",
    Dpmpp3mSdeGpu => "dpmpp_3m_sde_gpu",
    Ddpm => "ddpm",
    Lcm => "lcm",
    Ipndm => "ipndm",
    IpndmV => "ipndm_v",
    Deis => "deis",
    ResMultistep => "res_multistep",
    ResMultistepCfgPp => "res_multistep_cfg_pp",
    ResMultistepAncestral => "res_multistep_ancestral",
    ResMultistepAncestralCfgPp => "res_multistep_ancestral_cfg_pp",
    GradientEstimation => "gradient_estimation",
    GradientEstimationCfgPp => "gradient_estimation_cfg_pp",
    ErSde => "er_sde",
    Seeds2 => "seeds_2",
    Seeds3 => "seeds_3",
    SaSolver => "sa_solver",
    SaSolverPece => "sa_solver_pece",
    Ddim => "ddim",
    UniPc => "uni_pc",
    UniPcBh2 => "uni_pc_bh2",
}

/// Which noise a sampler consumes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseKind {
    /// Deterministic: no noise after the initial latent noise.
    None,
    /// `default_noise_sampler`: torch CPU generator seeded with `seed + 1`.
    Default,
    /// `BrownianTreeNoiseSampler`: torchsde's Brownian tree seeded with `seed`.
    Brownian,
}

impl Sampler {
    /// Parses a ComfyUI sampler name; names not implemented here are an error (never aliased).
    pub fn from_name(name: &str) -> Result<Self, SamplingError> {
        Self::ALL
            .iter()
            .copied()
            .find(|s| s.name() == name)
            .ok_or_else(|| SamplingError::UnknownSampler(name.to_string()))
    }

    /// The noise this sampler consumes.
    pub fn noise_kind(self) -> NoiseKind {
        use Sampler::*;
        match self {
            EulerAncestral
            | EulerAncestralCfgPp
            | Dpm2Ancestral
            | Dpmpp2sAncestral
            | Dpmpp2sAncestralCfgPp
            | Ddpm
            | Lcm
            | ResMultistepAncestral
            | ResMultistepAncestralCfgPp
            | ErSde
            | Seeds2
            | Seeds3
            | SaSolver
            | SaSolverPece => NoiseKind::Default,
            // Its ancestral noise (eta > 0) comes from an unseeded generator in ComfyUI; the seeded
            // default sampler is used here so that runs repeat.
            DpmAdaptive => NoiseKind::Default,
            DpmppSde | DpmppSdeGpu | Dpmpp2mSde | Dpmpp2mSdeGpu | Dpmpp2mSdeHeun
            | Dpmpp2mSdeHeunGpu | Dpmpp3mSde | Dpmpp3mSdeGpu => NoiseKind::Brownian,
            _ => NoiseKind::None,
        }
    }

    /// Runs the sampler from `x` (already noise-scaled, see `ModelSamplingDiscrete::noise_scaling`)
    /// down `sigmas`; `seed` is the KSampler noise seed. Returns the final latent (shape of `x`).
    pub fn sample(
        self,
        denoiser: &mut dyn Denoiser,
        x: &Tensor,
        sigmas: &[f32],
        seed: u64,
        callback: &mut StepCallback<'_>,
    ) -> Result<Tensor, SamplingError> {
        self.sample_with(
            &SamplerOptions::default(),
            denoiser,
            x,
            sigmas,
            seed,
            callback,
        )
    }

    /// [`Sampler::sample`] with the options a sampler node set (ComfyUI's `extra_options`);
    /// options the sampler does not take are ignored, as ComfyUI's keyword arguments would be.
    pub fn sample_with(
        self,
        options: &SamplerOptions,
        denoiser: &mut dyn Denoiser,
        x: &Tensor,
        sigmas: &[f32],
        seed: u64,
        callback: &mut StepCallback<'_>,
    ) -> Result<Tensor, SamplingError> {
        let span = tracing::trace_span!(
            "sampler",
            name = self.name(),
            steps = sigmas.len().saturating_sub(1)
        );
        let _enter = span.enter();
        let sigmas: Vec<f64> = sigmas.iter().map(|&s| s as f64).collect();
        let noise = match self.noise_kind() {
            NoiseKind::None => NoiseSource::Off,
            NoiseKind::Default => {
                NoiseSource::Default(TorchGenerator::manual_seed(seed.wrapping_add(1)))
            }
            NoiseKind::Brownian => NoiseSource::Brownian(brownian_noise(x, &sigmas, seed)),
        };
        let mut ctx = Ctx {
            name: self.name(),
            denoiser,
            callback,
            noise,
            total: sigmas.len().saturating_sub(1),
            opts: options,
        };
        if sigmas.len() <= 1 {
            return Ok(x.clone());
        }
        use Sampler::*;
        match self {
            // ComfyUI maps "ddim" to sample_euler (comfy/samplers.py ksampler()).
            Euler | Ddim => basic::euler(&mut ctx, x, &sigmas),
            EulerCfgPp => ancestral::euler_ancestral_cfg_pp(&mut ctx, x, &sigmas, 0.0, 0.0),
            EulerAncestral => ancestral::euler_ancestral(&mut ctx, x, &sigmas),
            EulerAncestralCfgPp => {
                let (eta, s_noise) = (options.eta_or(1.0), options.s_noise());
                ancestral::euler_ancestral_cfg_pp(&mut ctx, x, &sigmas, eta, s_noise)
            }
            Heun => basic::heun(&mut ctx, x, &sigmas),
            Heunpp2 => basic::heunpp2(&mut ctx, x, &sigmas),
            Dpm2 => basic::dpm_2(&mut ctx, x, &sigmas),
            Dpm2Ancestral => ancestral::dpm_2_ancestral(&mut ctx, x, &sigmas),
            Lms => basic::lms(&mut ctx, x, &sigmas),
            DpmFast => dpm::dpm_fast(&mut ctx, x, &sigmas),
            DpmAdaptive => dpm::dpm_adaptive(&mut ctx, x, &sigmas),
            Dpmpp2sAncestral => ancestral::dpmpp_2s_ancestral(&mut ctx, x, &sigmas),
            Dpmpp2sAncestralCfgPp => ancestral::dpmpp_2s_ancestral_cfg_pp(&mut ctx, x, &sigmas),
            // The *_gpu variants only move ComfyUI's Brownian tree to the GPU; the maths is the same.
            DpmppSde | DpmppSdeGpu => sde::dpmpp_sde(&mut ctx, x, &sigmas),
            Dpmpp2m => dpm::dpmpp_2m(&mut ctx, x, &sigmas),
            Dpmpp2mCfgPp => dpm::dpmpp_2m_cfg_pp(&mut ctx, x, &sigmas),
            Dpmpp2mSde | Dpmpp2mSdeGpu => {
                let heun = options.solver_type == Some(SolverType::Heun);
                sde::dpmpp_2m_sde(&mut ctx, x, &sigmas, heun)
            }
            Dpmpp2mSdeHeun | Dpmpp2mSdeHeunGpu => sde::dpmpp_2m_sde(&mut ctx, x, &sigmas, true),
            Dpmpp3mSde | Dpmpp3mSdeGpu => sde::dpmpp_3m_sde(&mut ctx, x, &sigmas),
            Ddpm => ancestral::ddpm(&mut ctx, x, &sigmas),
            Lcm => ancestral::lcm(&mut ctx, x, &sigmas),
            Ipndm => multistep::ipndm(&mut ctx, x, &sigmas),
            IpndmV => multistep::ipndm_v(&mut ctx, x, &sigmas),
            Deis => multistep::deis(&mut ctx, x, &sigmas),
            ResMultistep => multistep::res_multistep(&mut ctx, x, &sigmas, 0.0, false),
            ResMultistepCfgPp => multistep::res_multistep(&mut ctx, x, &sigmas, 0.0, true),
            ResMultistepAncestral => multistep::res_multistep(&mut ctx, x, &sigmas, 1.0, false),
            ResMultistepAncestralCfgPp => multistep::res_multistep(&mut ctx, x, &sigmas, 1.0, true),
            GradientEstimation => multistep::gradient_estimation(&mut ctx, x, &sigmas, false),
            GradientEstimationCfgPp => multistep::gradient_estimation(&mut ctx, x, &sigmas, true),
            ErSde => sde::er_sde(&mut ctx, x, &sigmas),
            Seeds2 => sde::seeds_2(&mut ctx, x, &sigmas),
            Seeds3 => sde::seeds_3(&mut ctx, x, &sigmas),
            SaSolver => sa_solver::sa_solver(&mut ctx, x, &sigmas, false, sa_solver_tau_interval()),
            SaSolverPece => {
                sa_solver::sa_solver(&mut ctx, x, &sigmas, true, sa_solver_tau_interval())
            }
            UniPc => unipc::uni_pc(&mut ctx, x, &sigmas, false),
            UniPcBh2 => unipc::uni_pc(&mut ctx, x, &sigmas, true),
        }
    }
}

/// ComfyUI's default SA-Solver SDE interval `(percent_to_sigma(0.2), percent_to_sigma(0.8))`, taken
/// from the SD1/SDXL discrete schedule (linear betas 0.00085..0.012), which every eps/v model this
/// engine runs shares.
fn sa_solver_tau_interval() -> (f64, f64) {
    let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
    (ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8))
}

/// ComfyUI's `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=True)`, with
/// `sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()` in f32 as the samplers take them.
fn brownian_noise(x: &Tensor, sigmas: &[f64], seed: u64) -> BrownianNoise {
    // The sigmas came in as f32, so this is exact.
    let sigmas = sigmas.iter().map(|&s| s as f32);
    let max = sigmas.clone().fold(f32::NEG_INFINITY, f32::max);
    let min = sigmas.filter(|&s| s > 0.0).fold(f32::INFINITY, f32::min);
    // No positive sigma means no step ever draws noise; any interval will do.
    let (min, max) = if min.is_finite() {
        (min, max)
    } else {
        (0.0, 0.0)
    };
    BrownianNoise::new(x.dims(), min, max, seed)
}

enum NoiseSource {
    Off,
    Default(TorchGenerator),
    Brownian(BrownianNoise),
}

/// Shared state of one sampling run: the model, the callback and the noise stream.
pub(crate) struct Ctx<'a, 'b> {
    name: &'static str,
    denoiser: &'a mut dyn Denoiser,
    callback: &'a mut StepCallback<'b>,
    noise: NoiseSource,
    total: usize,
    opts: &'a SamplerOptions,
}

type Res<T> = Result<T, SamplingError>;

impl Ctx<'_, '_> {
    fn err(&self, source: candle_core::Error) -> SamplingError {
        SamplingError::Tensor {
            sampler: self.name,
            source,
        }
    }

    /// One model evaluation.
    fn model(&mut self, x: &Tensor, sigma: f64) -> Res<Denoised> {
        let _span = tracing::trace_span!("denoise", sigma).entered();
        self.denoiser
            .denoise(x, sigma)
            .map_err(|e| SamplingError::Tensor {
                sampler: self.name,
                source: e,
            })
    }

    /// One model evaluation that must carry the unconditional prediction (CFG++).
    fn model_pp(&mut self, x: &Tensor, sigma: f64) -> Res<(Tensor, Tensor)> {
        let d = self.model(x, sigma)?;
        match d.uncond {
            Some(u) => Ok((d.cond, u)),
            None => Err(SamplingError::MissingUncond { sampler: self.name }),
        }
    }

    fn step(&mut self, step: usize, x: &Tensor, denoised: &Tensor, sigma: f64) -> Res<()> {
        let info = StepInfo {
            step,
            total: self.total,
            x,
            denoised,
            sigma,
        };
        (self.callback)(info).map_err(|Interrupted| SamplingError::Interrupted { step })
    }

    /// `noise_sampler(sigma, sigma_next)` of a sampler whose noise does not depend on the step: a
    /// unit normal tensor shaped like `like`.
    fn noise(&mut self, like: &Tensor) -> Res<Tensor> {
        let r = match &mut self.noise {
            NoiseSource::Default(g) => g.randn(like.shape(), like.device()),
            NoiseSource::Off => Tensor::zeros_like(like),
            NoiseSource::Brownian(_) => Err(candle_core::Error::Msg(
                "the Brownian tree is queried with the step's sigmas".into(),
            )),
        };
        let r = r.and_then(|t| t.to_dtype(like.dtype()));
        r.map_err(|e| self.err(e))
    }

    /// `noise_sampler(sigma, sigma_next)` for the step `sigma -> sigma_next` (f32 values, as ComfyUI
    /// passes its f32 sigmas): the Brownian tree's noise over that interval, or [`Self::noise`].
    fn noise_between(&mut self, like: &Tensor, sigma: f32, sigma_next: f32) -> Res<Tensor> {
        let NoiseSource::Brownian(tree) = &mut self.noise else {
            return self.noise(like);
        };
        let data = tree.sample(sigma, sigma_next);
        let r = Tensor::from_vec(data, like.shape(), like.device())
            .and_then(|t| t.to_dtype(like.dtype()));
        r.map_err(|e| self.err(e))
    }

    /// `sum_k c_k * t_k`, the workhorse of every update rule.
    fn lin(&self, terms: &[(&Tensor, f64)]) -> Res<Tensor> {
        lin(terms).map_err(|e| self.err(e))
    }
}

fn lin(terms: &[(&Tensor, f64)]) -> candle_core::Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (t, c) in terms {
        let term = if *c == 1.0 {
            (*t).clone()
        } else {
            t.affine(*c, 0.0)?
        };
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty linear combination".into()))
}

/// `get_ancestral_step(sigma_from, sigma_to, eta)` -> (sigma_down, sigma_up).
pub(crate) fn ancestral_step(sigma_from: f64, sigma_to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let up = (eta
        * (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .sqrt())
    .min(sigma_to);
    let down = (sigma_to * sigma_to - up * up).sqrt();
    (down, up)
}
