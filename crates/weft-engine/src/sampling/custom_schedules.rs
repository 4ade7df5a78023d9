//! The sigma lists of ComfyUI's custom-sampling scheduler nodes that take no KSampler scheduler
//! name (`get_sigmas_polyexponential`, `get_sigmas_vp`, `get_sigmas_laplace` of
//! `comfy/k_diffusion/sampling.py`, `AlignYourStepsScheduler`) and the sigma-list operations
//! (`FlipSigmas`, `SplitSigmasDenoise`).
//!
//! torch computes the first three in f32 (a float32 `linspace` with Python-float scalars), so they
//! are computed in f32 here; Align Your Steps interpolates in numpy's f64.

use crate::sampling::model_sampling::linspace_f32;

/// `get_sigmas_polyexponential`: a polynomial in log sigma, plus a trailing 0.
pub fn polyexponential(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f32> {
    let (lmin, lmax) = (sigma_min.ln() as f32, sigma_max.ln() as f32);
    let mut out: Vec<f32> = ramp(1.0, 0.0, n)
        .into_iter()
        .map(|r| (r.powf(rho as f32) * (lmax - lmin) + lmin).exp())
        .collect();
    out.push(0.0);
    out
}

/// `get_sigmas_vp`: the continuous VP schedule, plus a trailing 0.
pub fn vp(n: usize, beta_d: f64, beta_min: f64, eps_s: f64) -> Vec<f32> {
    let (beta_d, beta_min) = (beta_d as f32, beta_min as f32);
    let mut out: Vec<f32> = ramp(1.0, eps_s as f32, n)
        .into_iter()
        .map(|t| (beta_d * t * t / 2.0 + beta_min * t).exp_m1().sqrt())
        .collect();
    out.push(0.0);
    out
}

/// `get_sigmas_laplace`: `n` sigmas clamped to `[sigma_min, sigma_max]`, without a trailing 0
/// (as ComfyUI returns it: sampling then stops at the last sigma).
pub fn laplace(n: usize, sigma_min: f64, sigma_max: f64, mu: f64, beta: f64) -> Vec<f32> {
    const EPSILON: f32 = 1e-5;
    let (mu, beta) = (mu as f32, beta as f32);
    let (lo, hi) = (sigma_min as f32, sigma_max as f32);
    ramp(0.0, 1.0, n)
        .into_iter()
        .map(|x| {
            let d = 0.5 - x;
            // torch.sign is 0 at 0.
            let sign = if d > 0.0 {
                1.0
            } else if d < 0.0 {
                -1.0
            } else {
                0.0
            };
            let lmb = mu - beta * sign * (1.0 - 2.0 * d.abs() + EPSILON).ln();
            // torch.clamp(min, max) applies min first, then max.
            lmb.exp().max(lo).min(hi)
        })
        .collect()
}

fn ramp(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 0 {
        Vec::new()
    } else {
        linspace_f32(start, end, n)
    }
}

/// Align Your Steps' model types, in ComfyUI's order.
pub const AYS_MODEL_TYPES: &[&str] = &["SD1", "SDXL", "SVD"];

/// The published 10-step noise levels for each of [`AYS_MODEL_TYPES`].
const AYS_NOISE_LEVELS: [[f64; 11]; 3] = [
    [
        14.6146412293,
        6.4745760956,
        3.8636745985,
        2.6946151520,
        1.8841921177,
        1.3943805092,
        0.9642583904,
        0.6523686016,
        0.3977456272,
        0.1515232662,
        0.0291671582,
    ],
    [
        14.6146412293,
        6.3184485287,
        3.7681790315,
        2.1811480769,
        1.3405244945,
        0.8620721141,
        0.5550693289,
        0.3798540708,
        0.2332364134,
        0.1114188177,
        0.0291671582,
    ],
    [
        700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002,
    ],
];

/// `AlignYourStepsScheduler.get_sigmas`: the model type's noise levels, log-linearly interpolated
/// to `steps + 1` values, the last `round(steps * denoise) + 1` of them with the final one set to
/// 0. `None` for an unknown model type.
pub fn align_your_steps(model_type: &str, steps: usize, denoise: f64) -> Option<Vec<f32>> {
    let index = AYS_MODEL_TYPES.iter().position(|t| *t == model_type)?;
    let mut total = steps;
    if denoise < 1.0 {
        if denoise <= 0.0 {
            return Some(Vec::new());
        }
        total = crate::sampling::schedulers::round_half_even(steps as f64 * denoise) as usize;
    }
    let levels = &AYS_NOISE_LEVELS[index];
    let mut sigmas: Vec<f64> = if steps + 1 == levels.len() {
        levels.to_vec()
    } else {
        loglinear_interp(levels, steps + 1)
    };
    let keep = (total + 1).min(sigmas.len());
    sigmas.drain(..sigmas.len() - keep);
    if let Some(last) = sigmas.last_mut() {
        *last = 0.0;
    }
    Some(sigmas.into_iter().map(|s| s as f32).collect())
}

/// `loglinear_interp`: `np.interp` of the reversed log levels on evenly spaced points.
fn loglinear_interp(levels: &[f64], num: usize) -> Vec<f64> {
    let ys: Vec<f64> = levels.iter().rev().map(|v| v.ln()).collect();
    let last = (ys.len() - 1) as f64;
    let mut out: Vec<f64> = (0..num)
        .map(|i| {
            let x = if num == 1 {
                0.0
            } else {
                i as f64 / (num - 1) as f64
            };
            // np.linspace(0, 1, len) puts xs[k] at k / last; find the segment holding x.
            let pos = x * last;
            let k = (pos.floor() as usize).min(ys.len() - 2);
            let (x0, x1) = (k as f64 / last, (k + 1) as f64 / last);
            let w = (x - x0) / (x1 - x0);
            (ys[k] + w * (ys[k + 1] - ys[k])).exp()
        })
        .collect();
    out.reverse();
    out
}

/// `FlipSigmas`: the list reversed, with a leading 0 raised to 0.0001.
pub fn flip(sigmas: &[f32]) -> Vec<f32> {
    let mut out: Vec<f32> = sigmas.iter().rev().copied().collect();
    if let Some(first) = out.first_mut() {
        if *first == 0.0 {
            *first = 0.0001;
        }
    }
    out
}

/// `SplitSigmasDenoise`: with `total = round(steps * denoise)`, the high part is
/// `sigmas[:-total]` and the low part `sigmas[-(total + 1):]` (Python slicing, so `total = 0`
/// gives an empty high part).
pub fn split_denoise(sigmas: &[f32], denoise: f64) -> (Vec<f32>, Vec<f32>) {
    let n = sigmas.len();
    let steps = n.saturating_sub(1);
    let total = crate::sampling::schedulers::round_half_even(steps as f64 * denoise) as usize;
    // sigmas[:-0] is empty in Python.
    let high = if total == 0 {
        Vec::new()
    } else {
        sigmas[..n.saturating_sub(total)].to_vec()
    };
    let low = sigmas[n.saturating_sub(total + 1)..].to_vec();
    (high, low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_raises_a_leading_zero() {
        assert_eq!(flip(&[3.0, 1.0, 0.0]), vec![0.0001, 1.0, 3.0]);
        assert!(flip(&[]).is_empty());
    }

    #[test]
    fn split_denoise_follows_python_slices() {
        let s = [4.0, 3.0, 2.0, 1.0, 0.0];
        assert_eq!(
            split_denoise(&s, 0.5),
            (vec![4.0, 3.0, 2.0], vec![2.0, 1.0, 0.0])
        );
        assert_eq!(split_denoise(&s, 0.0), (vec![], vec![0.0]));
        assert_eq!(split_denoise(&s, 1.0), (vec![4.0], s.to_vec()));
    }

    #[test]
    fn ays_ten_steps_are_the_table() {
        let s = align_your_steps("SD1", 10, 1.0).expect("known type");
        assert_eq!(s.len(), 11);
        assert_eq!(s[0], 14.614_641);
        assert_eq!(s[10], 0.0);
        assert!(align_your_steps("SD3", 10, 1.0).is_none());
    }
}
