//! ComfyUI's `ModelSamplingDiscrete` (`comfy/model_sampling.py`): the 1000-step VP schedule of SD1.x,
//! SD2.x and SDXL expressed in sigma space, plus the eps / v-prediction denoiser formulas; and
//! `ModelSamplingContinuousEDM` (ModelSamplingContinuousEDM's node), a log-uniform table whose
//! timestep is `0.25 ln sigma`, with `sigma_data` in the input and output scalings.
//!
//! Precision follows ComfyUI: the beta schedule and cumulative products are computed in f64, then the
//! sigma table and its logarithm are stored as f32 (`set_sigmas` casts with `.float()`), and the
//! timestep <-> sigma conversions run in f32 on those tables.

use candle_core::{Result, Tensor};

/// How the 1000 betas are laid out (`make_beta_schedule` in ComfyUI's LDM utilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// LDM "linear": `linspace(sqrt(start), sqrt(end), n)^2` (diffusers calls this "scaled_linear").
    Linear,
    /// LDM "sqrt_linear": `linspace(start, end, n)` (diffusers "linear").
    SqrtLinear,
}

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// Noise prediction (SD1.x, SD2.x base 512, SDXL).
    Eps,
    /// v-prediction (SD2.x 768-v).
    V,
    /// Latent Consistency Models (ComfyUI's `LCM`): eps, blended with the input by the
    /// consistency boundary conditions at `timestep * 10`.
    Lcm,
    /// The network predicts the denoised latent itself (ComfyUI's `X0`).
    X0,
    /// Karras et al.'s EDM preconditioning (ComfyUI's `EDM`): `x · c_skip + out · c_out`.
    Edm,
}

/// Plain data describing a discrete schedule; presets cover every SD model ComfyUI's defaults build.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How the betas are spaced between `linear_start` and `linear_end`.
    pub beta_schedule: BetaSchedule,
    /// The first beta (`0.00085` for SD).
    pub linear_start: f64,
    /// The last beta (`0.012` for SD).
    pub linear_end: f64,
    /// Number of discrete timesteps (1000 for SD).
    pub timesteps: usize,
    /// Whether the model predicts noise or v.
    pub prediction: Prediction,
}

impl Config {
    /// SD1.x / SD2.x-base / SDXL: "linear" 0.00085..0.012 over 1000 steps, eps prediction.
    pub fn sd_eps() -> Self {
        Self {
            beta_schedule: BetaSchedule::Linear,
            linear_start: 0.00085,
            linear_end: 0.012,
            timesteps: 1000,
            prediction: Prediction::Eps,
        }
    }

    /// SD2.x 768-v: same schedule, v-prediction.
    pub fn sd_v() -> Self {
        Self {
            prediction: Prediction::V,
            ..Self::sd_eps()
        }
    }
}

/// The discrete VP schedule in sigma space, or the continuous EDM one ([`Self::continuous_edm`]).
#[derive(Debug, Clone)]
pub struct ModelSamplingDiscrete {
    sigmas: Vec<f32>,
    log_sigmas: Vec<f32>,
    prediction: Prediction,
    /// Timesteps per table entry: 1, or 20 for the 50-entry LCM table
    /// (`ModelSamplingDiscreteDistilled`).
    skip_steps: usize,
    /// The data's standard deviation in the input and output scalings (1 but for EDM's 0.5).
    sigma_data: f64,
    /// `ModelSamplingContinuousEDM`: timesteps are `0.25 ln sigma` rather than table indices.
    continuous: bool,
}

/// torch's CPU `linspace` for one element: the first half counts up from `start`, the second half
/// counts down from `end` (`RangeFactoriesKernel.cpp`), which keeps both endpoints exact.
pub(crate) fn linspace_f64(start: f64, end: f64, steps: usize) -> Vec<f64> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f64;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f64
            } else {
                end - step * (steps - i - 1) as f64
            }
        })
        .collect()
}

/// `linspace_f64` evaluated in f32 arithmetic, as torch does for a float32 output.
pub(crate) fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            // One rounding per element (a fused multiply-add), as torch 2.15's CPU kernel gives:
            // rounding `step * i` first is an ulp off for some elements, which shows in the SDE
            // samplers' Brownian noise (its times resolve to 1e-6).
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

impl ModelSamplingDiscrete {
    /// Builds the sigma table from a schedule description.
    pub fn new(cfg: &Config) -> Self {
        let n = cfg.timesteps.max(2);
        let betas: Vec<f64> = match cfg.beta_schedule {
            BetaSchedule::Linear => linspace_f64(cfg.linear_start.sqrt(), cfg.linear_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::SqrtLinear => linspace_f64(cfg.linear_start, cfg.linear_end, n),
        };
        let mut alphas_cumprod = 1.0f64;
        let mut sigmas = Vec::with_capacity(n);
        let mut log_sigmas = Vec::with_capacity(n);
        for beta in betas {
            alphas_cumprod *= 1.0 - beta;
            let sigma = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt();
            sigmas.push(sigma as f32);
            log_sigmas.push(sigma.ln() as f32);
        }
        Self {
            sigmas,
            log_sigmas,
            prediction: cfg.prediction,
            skip_steps: 1,
            sigma_data: 1.0,
            continuous: false,
        }
    }

    /// ComfyUI's `ModelSamplingContinuousEDM` with `set_parameters(sigma_min, sigma_max,
    /// sigma_data)`: 1000 sigmas log-uniform from `sigma_min` to `sigma_max` (torch's f32
    /// `linspace(ln min, ln max).exp()`), continuous timesteps.
    pub fn continuous_edm(
        sigma_min: f64,
        sigma_max: f64,
        sigma_data: f64,
        prediction: Prediction,
    ) -> Self {
        let sigmas: Vec<f32> = linspace_f32(sigma_min.ln() as f32, sigma_max.ln() as f32, 1000)
            .into_iter()
            .map(f32::exp)
            .collect();
        Self {
            sigmas: Vec::new(),
            log_sigmas: Vec::new(),
            prediction,
            skip_steps: 1,
            sigma_data,
            continuous: true,
        }
        .with_sigmas(sigmas)
    }

    /// The same table with another denoiser formula.
    pub fn with_prediction(self, prediction: Prediction) -> Self {
        Self { prediction, ..self }
    }

    /// `ModelSamplingDiscreteDistilled` (LCM): every `timesteps / original_timesteps`-th entry of
    /// the table counted from the top, `original_timesteps` (50) entries in all.
    pub fn distilled(self, original_timesteps: usize) -> Self {
        let n = self.sigmas.len();
        let original = original_timesteps.clamp(1, n);
        let skip = n / original;
        let mut valid = vec![0.0f32; original];
        for x in 0..original {
            valid[original - 1 - x] = self.sigmas[n - 1 - x * skip];
        }
        Self {
            skip_steps: skip,
            ..self.with_sigmas(valid)
        }
    }

    /// `rescale_zero_terminal_snr_sigmas`: shifts and scales sqrt(alpha_bar) so the last entry has
    /// (almost) zero SNR, keeping the first; in f32 like ComfyUI's float tables.
    pub fn zero_terminal_snr(self) -> Self {
        let sqrt_ab: Vec<f32> = self
            .sigmas
            .iter()
            .map(|s| (1.0 / (s * s + 1.0)).sqrt())
            .collect();
        let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
        let factor = first / (first - last);
        let mut sigmas: Vec<f32> = sqrt_ab
            .iter()
            .map(|a| {
                let a = (a - last) * factor;
                let ab = a * a;
                ((1.0 - ab) / ab).sqrt()
            })
            .collect();
        let ab_last = 4.897_345_2e-8f32;
        if let Some(last) = sigmas.last_mut() {
            *last = ((1.0 - ab_last) / ab_last).sqrt();
        }
        self.with_sigmas(sigmas)
    }

    /// `set_sigmas`: a new table (its logarithm computed in f32).
    fn with_sigmas(self, sigmas: Vec<f32>) -> Self {
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        Self {
            sigmas,
            log_sigmas,
            ..self
        }
    }

    /// The f32 sigma table, index = timestep (ascending).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Prediction type the denoiser formulas use.
    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// Smallest sigma (timestep 0): 0.0291675 for SD.
    pub fn sigma_min(&self) -> f32 {
        self.sigmas[0]
    }

    /// Largest sigma (timestep 999): 14.614642 for SD.
    pub fn sigma_max(&self) -> f32 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// `timestep(sigma)`: index of the table entry nearest in log space (first one on ties), or
    /// `0.25 ln sigma` for the continuous schedule.
    pub fn timestep(&self, sigma: f32) -> f32 {
        if self.continuous {
            return 0.25 * sigma.ln();
        }
        self.timestep_index(sigma) as f32
    }

    /// The discrete table index nearest `sigma` (what [`Self::timestep`] gives for a discrete
    /// schedule).
    fn timestep_index(&self, sigma: f32) -> usize {
        let log_sigma = sigma.ln();
        let mut best = 0;
        let mut best_dist = f32::INFINITY;
        for (i, ls) in self.log_sigmas.iter().enumerate() {
            let dist = (log_sigma - ls).abs();
            if dist < best_dist {
                best = i;
                best_dist = dist;
            }
        }
        best * self.skip_steps + (self.skip_steps - 1)
    }

    /// `sigma(timestep)`: log-linear interpolation of the table at a fractional timestep (f32
    /// maths), or `exp(timestep / 0.25)` for the continuous schedule.
    pub fn sigma(&self, timestep: f32) -> f32 {
        if self.continuous {
            return (timestep / 0.25).exp();
        }
        let last = (self.sigmas.len() - 1) as f32;
        let skip = self.skip_steps as f32;
        let t = ((timestep - (skip - 1.0)) / skip).clamp(0.0, last);
        let low = t.floor();
        let high = t.ceil();
        let w = t - low;
        let log_sigma =
            (1.0 - w) * self.log_sigmas[low as usize] + w * self.log_sigmas[high as usize];
        log_sigma.exp()
    }

    /// `percent_to_sigma`: 0% is "before the start" (a huge sigma), 100% is sigma 0.
    pub fn percent_to_sigma(&self, percent: f64) -> f64 {
        if percent <= 0.0 {
            return 999_999_999.9;
        }
        if percent >= 1.0 {
            return 0.0;
        }
        let percent = 1.0 - percent;
        if self.continuous {
            let log_min = (self.sigma_min() as f64).ln();
            return (((self.sigma_max() as f64).ln() - log_min) * percent + log_min).exp();
        }
        self.sigma((percent * 999.0) as f32) as f64
    }

    /// ComfyUI's `max_denoise`: the first sigma is at (or above) the top of the schedule.
    pub fn is_max_denoise(&self, first_sigma: f64) -> bool {
        let max_sigma = self.sigma_max() as f64;
        (max_sigma - first_sigma).abs() <= 1e-5 * max_sigma.abs().max(first_sigma.abs())
            || first_sigma > max_sigma
    }

    /// Scales the sampler state for the network input: `x / sqrt(sigma^2 + sigma_data^2)`. Shape
    /// preserved.
    pub fn calculate_input(&self, sigma: f64, x: &Tensor) -> Result<Tensor> {
        let sd = self.sigma_data;
        x.affine(1.0 / (sigma * sigma + sd * sd).sqrt(), 0.0)
    }

    /// Turns the network output into the denoised estimate D(x, sigma). Shapes `[B, C, H, W]`.
    /// eps: `x - sigma * eps`; v: `x sd^2 / (sigma^2 + sd^2) - v sigma sd / sqrt(sigma^2 + sd^2)`
    /// (`sd` = sigma_data); edm: the same with `+`; lcm: `c_out * (x - sigma * eps) + c_skip *
    /// x`; x0: the output itself.
    pub fn calculate_denoised(
        &self,
        sigma: f64,
        model_output: &Tensor,
        model_input: &Tensor,
    ) -> Result<Tensor> {
        match self.prediction {
            Prediction::Eps => model_input - model_output.affine(sigma, 0.0)?,
            Prediction::V | Prediction::Edm => {
                let sd = self.sigma_data;
                let s2 = sigma * sigma + sd * sd;
                let skip = model_input.affine(sd * sd / s2, 0.0)?;
                let out = model_output.affine(sigma * sd / s2.sqrt(), 0.0)?;
                if self.prediction == Prediction::Edm {
                    skip + out
                } else {
                    skip - out
                }
            }
            Prediction::Lcm => {
                let x0 = (model_input - model_output.affine(sigma, 0.0)?)?;
                let t = self.timestep_index(sigma as f32) as f64 * 10.0;
                const SIGMA_DATA2: f64 = 0.25;
                let c_skip = SIGMA_DATA2 / (t * t + SIGMA_DATA2);
                let c_out = t / (t * t + SIGMA_DATA2).sqrt();
                x0.affine(c_out, 0.0)? + model_input.affine(c_skip, 0.0)?
            }
            Prediction::X0 => Ok(model_output.clone()),
        }
    }

    /// The sampler's starting point: `latent + noise * sigma`, or `latent + noise * sqrt(1 + sigma^2)`
    /// for a full denoise (ComfyUI's `noise_scaling` with `max_denoise`). Shapes `[B, C, H, W]`.
    pub fn noise_scaling(
        &self,
        sigma: f64,
        noise: &Tensor,
        latent: &Tensor,
        max_denoise: bool,
    ) -> Result<Tensor> {
        let scale = if max_denoise {
            (1.0 + sigma * sigma).sqrt()
        } else {
            sigma
        };
        noise.affine(scale, 0.0)? + latent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_table_endpoints() {
        let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
        assert!(
            (ms.sigma_min() - 0.029_167_5).abs() < 1e-6,
            "{}",
            ms.sigma_min()
        );
        assert!(
            (ms.sigma_max() - 14.614_642).abs() < 1e-5,
            "{}",
            ms.sigma_max()
        );
        assert_eq!(ms.timestep(ms.sigma_max()), 999.0);
        assert_eq!(ms.timestep(ms.sigma_min()), 0.0);
        // exp(f32 ln sigma) is within an ulp or two of the table value, as in torch.
        assert!((ms.sigma(999.0) - ms.sigma_max()).abs() < 1e-5);
        assert!(ms.is_max_denoise(ms.sigma_max() as f64));
        assert!(!ms.is_max_denoise(10.0));
    }

    #[test]
    fn linspace_hits_endpoints() {
        let v = linspace_f32(999.0, 0.0, 7);
        assert_eq!(v[0], 999.0);
        assert_eq!(v[6], 0.0);
    }
}
