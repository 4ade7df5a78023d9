//! ComfyUI's KSampler schedulers (`comfy/samplers.py SCHEDULER_HANDLERS`) and the sigma-list nodes
//! (KarrasScheduler, ExponentialScheduler, SDTurboScheduler, SplitSigmas), plus KSampler's rules for
//! `denoise < 1`, the samplers that discard the penultimate sigma, and KSamplerAdvanced's step window.
//!
//! Every schedule returns f32 sigmas ending in 0 (except where ComfyUI does not append one), exactly
//! like ComfyUI's `torch.FloatTensor` results.

use crate::sampling::model_sampling::{linspace_f32, ModelSamplingDiscrete};
use crate::sampling::SamplingError;

/// `KSampler.SCHEDULERS`, in ComfyUI's order.
pub const SCHEDULER_NAMES: &[&str] = &[
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
];

/// Samplers for which KSampler computes `steps + 1` sigmas and drops the penultimate one.
pub const DISCARD_PENULTIMATE_SIGMA_SAMPLERS: &[&str] =
    &["dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"];

/// One of the nine KSampler schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// `simple`: evenly spaced entries of the model's sigma table.
    Simple,
    /// `sgm_uniform`: uniform in timestep, without the end point.
    SgmUniform,
    /// `karras`: Karras et al. (rho = 7) between the model's sigma min and max.
    Karras,
    /// `exponential`: log-uniform between the model's sigma min and max.
    Exponential,
    /// `ddim_uniform`: every `1000/steps`-th table entry, as DDIM.
    DdimUniform,
    /// `beta`: timesteps at Beta(0.6, 0.6) quantiles.
    Beta,
    /// `normal`: uniform in timestep, end point included.
    Normal,
    /// `linear_quadratic`: linear then quadratic (Mochi's schedule).
    LinearQuadratic,
    /// `kl_optimal`: the KL-optimal schedule (uniform in `atan(sigma)`).
    KlOptimal,
}

impl Scheduler {
    /// All schedulers in `SCHEDULER_NAMES` order.
    pub const ALL: [Scheduler; 9] = [
        Scheduler::Simple,
        Scheduler::SgmUniform,
        Scheduler::Karras,
        Scheduler::Exponential,
        Scheduler::DdimUniform,
        Scheduler::Beta,
        Scheduler::Normal,
        Scheduler::LinearQuadratic,
        Scheduler::KlOptimal,
    ];

    /// Parses a ComfyUI scheduler name.
    pub fn from_name(name: &str) -> Result<Self, SamplingError> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| SamplingError::UnknownScheduler(name.to_string()))
    }

    /// The ComfyUI name.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Simple => "simple",
            Scheduler::SgmUniform => "sgm_uniform",
            Scheduler::Karras => "karras",
            Scheduler::Exponential => "exponential",
            Scheduler::DdimUniform => "ddim_uniform",
            Scheduler::Beta => "beta",
            Scheduler::Normal => "normal",
            Scheduler::LinearQuadratic => "linear_quadratic",
            Scheduler::KlOptimal => "kl_optimal",
        }
    }

    /// `calculate_sigmas(model_sampling, scheduler, steps)`: `steps + 1` sigmas for most schedulers.
    pub fn sigmas(self, ms: &ModelSamplingDiscrete, steps: usize) -> Vec<f32> {
        let (smin, smax) = (ms.sigma_min() as f64, ms.sigma_max() as f64);
        match self {
            Scheduler::Simple => simple(ms, steps),
            Scheduler::SgmUniform => normal(ms, steps, true),
            Scheduler::Karras => karras(steps, smin, smax, 7.0),
            Scheduler::Exponential => exponential(steps, smin, smax),
            Scheduler::DdimUniform => ddim_uniform(ms, steps),
            Scheduler::Beta => beta(ms, steps, 0.6, 0.6),
            Scheduler::Normal => normal(ms, steps, false),
            Scheduler::LinearQuadratic => linear_quadratic(ms, steps, 0.025, None),
            Scheduler::KlOptimal => kl_optimal(steps, smin, smax),
        }
    }
}

/// `simple_scheduler`: every `1000/steps`-th table entry from the top.
pub fn simple(ms: &ModelSamplingDiscrete, steps: usize) -> Vec<f32> {
    let table = ms.sigmas();
    let n = table.len();
    if steps == 0 {
        return vec![0.0];
    }
    let ss = n as f64 / steps as f64;
    let mut out: Vec<f32> = (0..steps)
        .map(|x| {
            let back = 1 + (x as f64 * ss) as usize;
            table[n - back.min(n)]
        })
        .collect();
    out.push(0.0);
    out
}

/// `ddim_scheduler` ("ddim_uniform"): table entries 1, 1+ss, ... reversed, after a leading 0.
pub fn ddim_uniform(ms: &ModelSamplingDiscrete, steps: usize) -> Vec<f32> {
    let table = ms.sigmas();
    let mut steps = steps.max(1);
    let mut sigs = Vec::new();
    if (table[1] as f64).abs() <= 1e-5 {
        steps += 1;
    } else {
        sigs.push(0.0);
    }
    let ss = (table.len() / steps).max(1);
    let mut x = 1;
    while x < table.len() {
        sigs.push(table[x]);
        x += ss;
    }
    sigs.reverse();
    sigs
}

/// `normal_scheduler` (and "sgm_uniform" with `sgm = true`): uniform in timestep space.
pub fn normal(ms: &ModelSamplingDiscrete, steps: usize, sgm: bool) -> Vec<f32> {
    let start = ms.timestep(ms.sigma_max());
    let end = ms.timestep(ms.sigma_min());
    let mut append_zero = true;
    let timesteps = if sgm {
        let mut t = linspace_f32(start, end, steps + 1);
        t.pop();
        t
    } else {
        let mut steps = steps;
        if (ms.sigma(end) as f64).abs() <= 1e-5 {
            steps += 1;
            append_zero = false;
        }
        if steps == 0 {
            Vec::new()
        } else {
            linspace_f32(start, end, steps)
        }
    };
    let mut sigs: Vec<f32> = timesteps.into_iter().map(|t| ms.sigma(t)).collect();
    if append_zero {
        sigs.push(0.0);
    }
    sigs
}

/// `get_sigmas_karras` (also the KarrasScheduler node): `n` sigmas plus a trailing 0.
pub fn karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f32> {
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let ramp = linspace_f32(0.0, 1.0, n.max(1));
    // In f32 as torch runs it (each Python float rounded to f32 first), so the sigmas have torch's
    // bits: the SDE samplers' Brownian tree resolves times to 1e-6, where one ulp of a sigma shows.
    let (span, top) = ((min_inv_rho - max_inv_rho) as f32, max_inv_rho as f32);
    let mut out: Vec<f32> = if n == 0 {
        Vec::new()
    } else {
        ramp.into_iter()
            .map(|r| ((r * span + top) as f64).powf(rho) as f32)
            .collect()
    };
    out.push(0.0);
    out
}

/// `get_sigmas_exponential` (also the ExponentialScheduler node): log-uniform, plus a trailing 0.
pub fn exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f32> {
    let mut out: Vec<f32> = if n == 0 {
        Vec::new()
    } else {
        linspace_f32(sigma_max.ln() as f32, sigma_min.ln() as f32, n)
            .into_iter()
            .map(|l| l.exp())
            .collect()
    };
    out.push(0.0);
    out
}

/// `beta_scheduler`: timesteps at the Beta(alpha, beta) quantiles, consecutive duplicates dropped.
pub fn beta(ms: &ModelSamplingDiscrete, steps: usize, alpha: f64, beta: f64) -> Vec<f32> {
    let table = ms.sigmas();
    let total = (table.len() - 1) as f64;
    let mut sigs = Vec::with_capacity(steps + 1);
    let mut last_t = -1.0;
    for i in 0..steps {
        // numpy: 1 - linspace(0, 1, steps, endpoint=False) = 1 - i * (1 / steps).
        let q = 1.0 - i as f64 * (1.0 / steps as f64);
        let t = round_half_even(beta_ppf(q, alpha, beta) * total);
        if t != last_t {
            sigs.push(table[(t as usize).min(table.len() - 1)]);
        }
        last_t = t;
    }
    sigs.push(0.0);
    sigs
}

/// `linear_quadratic_schedule` (Mochi): linear then quadratic in `1 - sigma/sigma_max`.
pub fn linear_quadratic(
    ms: &ModelSamplingDiscrete,
    steps: usize,
    threshold_noise: f64,
    linear_steps: Option<usize>,
) -> Vec<f32> {
    let sigma_max = ms.sigma_max();
    let schedule: Vec<f64> = if steps <= 1 {
        vec![1.0, 0.0]
    } else {
        let linear_steps = linear_steps.unwrap_or(steps / 2).max(1);
        let mut s: Vec<f64> = (0..linear_steps)
            .map(|i| i as f64 * threshold_noise / linear_steps as f64)
            .collect();
        let diff = linear_steps as f64 - threshold_noise * steps as f64;
        let quadratic_steps = (steps - linear_steps.min(steps)) as f64;
        let quadratic_coef = diff / (linear_steps as f64 * quadratic_steps * quadratic_steps);
        let linear_coef = threshold_noise / linear_steps as f64
            - 2.0 * diff / (quadratic_steps * quadratic_steps);
        let constant = quadratic_coef * (linear_steps * linear_steps) as f64;
        for i in linear_steps..steps {
            let i = i as f64;
            s.push(quadratic_coef * i * i + linear_coef * i + constant);
        }
        s.push(1.0);
        s.into_iter().map(|x| 1.0 - x).collect()
    };
    // FloatTensor(schedule) * sigma_max: the list is rounded to f32 first, then multiplied in f32.
    schedule.into_iter().map(|x| x as f32 * sigma_max).collect()
}

/// `kl_optimal_scheduler`: `tan` of a linear blend of `atan(sigma)`, plus a trailing 0.
pub fn kl_optimal(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f32> {
    let mut out: Vec<f32> = (0..n)
        .map(|i| {
            let u = (i as f32 / (n as f32 - 1.0)) as f64;
            (u * sigma_min.atan() + (1.0 - u) * sigma_max.atan()).tan() as f32
        })
        .collect();
    out.push(0.0);
    out
}

/// `SDTurboScheduler.get_sigmas`: the top of `[999, 899, ..., 99]` from `10 - int(10 * denoise)` on.
pub fn sd_turbo(ms: &ModelSamplingDiscrete, steps: usize, denoise: f64) -> Vec<f32> {
    let start = 10usize.saturating_sub((10.0 * denoise) as usize);
    let timesteps: Vec<f32> = (1..=10).rev().map(|k| (k * 100 - 1) as f32).collect();
    let end = (start + steps).min(timesteps.len());
    let mut out: Vec<f32> = timesteps
        .get(start..end)
        .unwrap_or(&[])
        .iter()
        .map(|&t| ms.sigma(t))
        .collect();
    out.push(0.0);
    out
}

/// `SplitSigmas`: `(sigmas[..=step], sigmas[step..])`, clamped like Python slicing.
pub fn split_sigmas(sigmas: &[f32], step: usize) -> (Vec<f32>, Vec<f32>) {
    let high = sigmas[..(step + 1).min(sigmas.len())].to_vec();
    let low = sigmas[step.min(sigmas.len())..].to_vec();
    (high, low)
}

/// `KSampler.calculate_sigmas` + `set_steps`: the sigmas KSampler hands to the sampler.
///
/// `denoise >= 0.9999`: the full schedule. `denoise <= 0`: empty. Otherwise the schedule for
/// `int(steps / denoise)` steps, keeping its last `steps + 1` entries. Samplers in
/// [`DISCARD_PENULTIMATE_SIGMA_SAMPLERS`] compute one extra step and drop the penultimate sigma.
pub fn ksampler_sigmas(
    ms: &ModelSamplingDiscrete,
    scheduler: Scheduler,
    sampler_name: &str,
    steps: usize,
    denoise: f64,
) -> Vec<f32> {
    let calc = |steps: usize| {
        if DISCARD_PENULTIMATE_SIGMA_SAMPLERS.contains(&sampler_name) {
            let mut s = scheduler.sigmas(ms, steps + 1);
            if s.len() >= 2 {
                s.remove(s.len() - 2);
            }
            s
        } else {
            scheduler.sigmas(ms, steps)
        }
    };
    if denoise > 0.9999 {
        return calc(steps);
    }
    if denoise <= 0.0 {
        return Vec::new();
    }
    let new_steps = (steps as f64 / denoise) as usize;
    let sigmas = calc(new_steps);
    let keep = (steps + 1).min(sigmas.len());
    sigmas[sigmas.len() - keep..].to_vec()
}

/// KSamplerAdvanced's window (`KSampler.sample` with `start_step` / `last_step`).
///
/// Returns `None` when `start_step` is past the schedule: ComfyUI then returns the input latent as is.
pub fn step_window(
    sigmas: &[f32],
    start_step: Option<usize>,
    last_step: Option<usize>,
    force_full_denoise: bool,
) -> Option<Vec<f32>> {
    let mut s = sigmas.to_vec();
    if let Some(last) = last_step {
        if last + 1 < s.len() {
            s.truncate(last + 1);
            if force_full_denoise {
                if let Some(v) = s.last_mut() {
                    *v = 0.0;
                }
            }
        }
    }
    if let Some(start) = start_step {
        if start + 1 < s.len() {
            s.drain(..start);
        } else {
            return None;
        }
    }
    Some(s)
}

pub(crate) fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// Regularised incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes form).
fn betainc(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// Lanczos log-gamma (g = 7, n = 9), accurate to ~1e-15 for the positive arguments used here.
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Inverse of `betainc` by bisection (monotone; 200 halvings reach f64 resolution).
fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if betainc(a, b, mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= f64::EPSILON * mid {
            break;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::model_sampling::Config;

    #[test]
    fn names_round_trip_in_order() {
        let names: Vec<&str> = Scheduler::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, SCHEDULER_NAMES);
        assert!(Scheduler::from_name("nope").is_err());
    }

    #[test]
    fn karras_20_steps_matches_reference_doc() {
        let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
        let s = Scheduler::Karras.sigmas(&ms, 20);
        assert_eq!(s.len(), 21);
        for (got, want) in s.iter().zip([14.6146f32, 11.7254, 9.3402, 7.3836]) {
            assert!((got - want).abs() < 1e-3, "{s:?}");
        }
    }

    #[test]
    fn beta_ppf_is_symmetric() {
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-12);
        assert!((betainc(0.6, 0.6, 0.3) + betainc(0.6, 0.6, 0.7) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn denoise_and_discard_rules() {
        let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
        let full = ksampler_sigmas(&ms, Scheduler::Normal, "euler", 20, 0.5);
        let forty = Scheduler::Normal.sigmas(&ms, 40);
        assert_eq!(full, forty[forty.len() - 21..].to_vec());
        let d = ksampler_sigmas(&ms, Scheduler::Karras, "dpm_2", 10, 1.0);
        let k11 = Scheduler::Karras.sigmas(&ms, 11);
        assert_eq!(d.len(), 11);
        assert_eq!(d[9], k11[9]);
        assert_eq!(d[10], 0.0);
        assert!(ksampler_sigmas(&ms, Scheduler::Karras, "euler", 10, 0.0).is_empty());
    }

    #[test]
    fn split_and_window() {
        let s = [4.0f32, 3.0, 2.0, 1.0, 0.0];
        assert_eq!(
            split_sigmas(&s, 2),
            (vec![4.0, 3.0, 2.0], vec![2.0, 1.0, 0.0])
        );
        assert_eq!(
            step_window(&s, Some(1), Some(3), true),
            Some(vec![3.0, 2.0, 0.0])
        );
        assert_eq!(step_window(&s, Some(4), None, false), None);
    }
}
