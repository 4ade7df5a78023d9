//! Multistep samplers that reuse earlier derivatives: ipndm, ipndm_v (from diff-sampler via
//! ComfyUI), deis, res_multistep (+ ancestral / CFG++) and gradient_estimation (+ CFG++).

use candle_core::Tensor;

use crate::sampling::model_sampling::linspace_f32;
use crate::sampling::samplers::{ancestral_step, Ctx, Res};

const MAX_ORDER: usize = 4;

fn push_history(buffer: &mut Vec<Tensor>, d: Tensor) {
    if buffer.len() == MAX_ORDER - 1 {
        buffer.remove(0);
    }
    buffer.push(d);
}

/// Returns buffer[len - k] (k = 1 is the most recent derivative).
fn back(buffer: &[Tensor], k: usize) -> &Tensor {
    &buffer[buffer.len() - k]
}

pub(super) fn ipndm(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    let mut buffer: Vec<Tensor> = Vec::new();
    for i in 0..sigmas.len() - 1 {
        let (t_cur, t_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.model(&x, t_cur)?.cond;
        ctx.step(i, &x, &denoised, t_cur)?;
        let d = ctx.lin(&[(&x, 1.0 / t_cur), (&denoised, -1.0 / t_cur)])?;
        let order = MAX_ORDER.min(i + 1);
        let h = t_next - t_cur;
        let next = if t_next == 0.0 {
            denoised
        } else {
            match order {
                1 => ctx.lin(&[(&x, 1.0), (&d, h)])?,
                2 => ctx.lin(&[(&x, 1.0), (&d, h * 1.5), (back(&buffer, 1), -h * 0.5)])?,
                3 => ctx.lin(&[
                    (&x, 1.0),
                    (&d, h * 23.0 / 12.0),
                    (back(&buffer, 1), -h * 16.0 / 12.0),
                    (back(&buffer, 2), h * 5.0 / 12.0),
                ])?,
                _ => ctx.lin(&[
                    (&x, 1.0),
                    (&d, h * 55.0 / 24.0),
                    (back(&buffer, 1), -h * 59.0 / 24.0),
                    (back(&buffer, 2), h * 37.0 / 24.0),
                    (back(&buffer, 3), -h * 9.0 / 24.0),
                ])?,
            }
        };
        push_history(&mut buffer, d);
        x = next;
    }
    Ok(x)
}

/// `sample_ipndm_v`: iPNDM with coefficients for variable step sizes.
pub(super) fn ipndm_v(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    let mut buffer: Vec<Tensor> = Vec::new();
    let t = sigmas;
    for i in 0..sigmas.len() - 1 {
        let (t_cur, t_next) = (t[i], t[i + 1]);
        let denoised = ctx.model(&x, t_cur)?.cond;
        ctx.step(i, &x, &denoised, t_cur)?;
        let d = ctx.lin(&[(&x, 1.0 / t_cur), (&denoised, -1.0 / t_cur)])?;
        let order = MAX_ORDER.min(i + 1);
        let h = t_next - t_cur;
        let next = if t_next == 0.0 {
            denoised
        } else {
            match order {
                1 => ctx.lin(&[(&x, 1.0), (&d, h)])?,
                2 => {
                    let h1 = t_cur - t[i - 1];
                    let c1 = (2.0 + h / h1) / 2.0;
                    let c2 = -(h / h1) / 2.0;
                    ctx.lin(&[(&x, 1.0), (&d, h * c1), (back(&buffer, 1), h * c2)])?
                }
                3 => {
                    let h1 = t_cur - t[i - 1];
                    let h2 = t[i - 1] - t[i - 2];
                    let temp =
                        (1.0 - h / (3.0 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2.0;
                    let c1 = (2.0 + h / h1) / 2.0 + temp;
                    let c2 = -(h / h1) / 2.0 - (1.0 + h1 / h2) * temp;
                    let c3 = temp * h1 / h2;
                    ctx.lin(&[
                        (&x, 1.0),
                        (&d, h * c1),
                        (back(&buffer, 1), h * c2),
                        (back(&buffer, 2), h * c3),
                    ])?
                }
                _ => {
                    let h1 = t_cur - t[i - 1];
                    let h2 = t[i - 1] - t[i - 2];
                    let h3 = t[i - 2] - t[i - 3];
                    let temp1 =
                        (1.0 - h / (3.0 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2.0;
                    let temp2 = ((1.0 - h / (3.0 * (h + h1))) / 2.0
                        + (1.0 - h / (2.0 * (h + h1))) * h / (6.0 * (h + h1 + h2)))
                        * (h * (h + h1) * (h + h1 + h2))
                        / (h1 * (h1 + h2) * (h1 + h2 + h3));
                    let q = h1 * (h1 + h2) / (h2 * (h2 + h3));
                    let c1 = (2.0 + h / h1) / 2.0 + temp1 + temp2;
                    let c2 =
                        -(h / h1) / 2.0 - (1.0 + h1 / h2) * temp1 - (1.0 + h1 / h2 + q) * temp2;
                    let c3 = temp1 * h1 / h2 + (h1 / h2 + q * (1.0 + h2 / h3)) * temp2;
                    let c4 = -temp2 * q * h1 / h2;
                    ctx.lin(&[
                        (&x, 1.0),
                        (&d, h * c1),
                        (back(&buffer, 1), h * c2),
                        (back(&buffer, 2), h * c3),
                        (back(&buffer, 3), h * c4),
                    ])?
                }
            }
        };
        push_history(&mut buffer, d);
        x = next;
    }
    Ok(x)
}

/// ComfyUI's `res_multistep` (second-order exponential multistep, arXiv 2308.02157).
/// `eta = 0` gives res_multistep(_cfg_pp), `eta = 1` the ancestral variants.
pub(super) fn res_multistep(
    ctx: &mut Ctx,
    x: &Tensor,
    sigmas: &[f64],
    eta: f64,
    cfg_pp: bool,
) -> Res<Tensor> {
    let mut x = x.clone();
    let mut old_denoised: Option<Tensor> = None;
    let mut old_sigma_down: f64 = 0.0;
    let phi1 = |t: f64| t.exp_m1() / t;
    let phi2 = |t: f64| (phi1(t) - 1.0) / t;
    let nan0 = |v: f64| if v.is_nan() { 0.0 } else { v };
    for i in 0..sigmas.len() - 1 {
        let (denoised, uncond) = if cfg_pp {
            let (d, u) = ctx.model_pp(&x, sigmas[i])?;
            (d, Some(u))
        } else {
            (ctx.model(&x, sigmas[i])?.cond, None)
        };
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        ctx.step(i, &x, &denoised, sigmas[i])?;
        let guide = uncond.as_ref().unwrap_or(&denoised);
        match (&old_denoised, down == 0.0) {
            (Some(old), false) => {
                let t = -sigmas[i].ln();
                let t_old = -old_sigma_down.ln();
                let t_next = -down.ln();
                let t_prev = -sigmas[i - 1].ln();
                let h = t_next - t;
                let c2 = (t_prev - t_old) / h;
                let (p1, p2) = (phi1(-h), phi2(-h));
                let b1 = nan0(p1 - p2 / c2);
                let b2 = nan0(p2 / c2);
                let e = (-h).exp();
                x = if cfg_pp {
                    // x += D_cfg - D_uncond, then the update on the uncond prediction.
                    ctx.lin(&[(&x, e), (&denoised, e), (guide, -e + h * b1), (old, h * b2)])?
                } else {
                    ctx.lin(&[(&x, e), (&denoised, h * b1), (old, h * b2)])?
                };
            }
            _ => {
                x = if cfg_pp {
                    let c = down / sigmas[i];
                    ctx.lin(&[(&denoised, 1.0), (&x, c), (guide, -c)])?
                } else {
                    let r = (down - sigmas[i]) / sigmas[i];
                    ctx.lin(&[(&x, 1.0 + r), (&denoised, -r)])?
                };
            }
        }
        if sigmas[i + 1] > 0.0 && eta > 0.0 {
            let n = ctx.noise(&x)?;
            x = ctx.lin(&[(&x, 1.0), (&n, up)])?;
        }
        old_denoised = Some(guide.clone());
        old_sigma_down = down;
    }
    Ok(x)
}

/// `sample_gradient_estimation` (ge_gamma = 2).
pub(super) fn gradient_estimation(
    ctx: &mut Ctx,
    x: &Tensor,
    sigmas: &[f64],
    cfg_pp: bool,
) -> Res<Tensor> {
    const GE_GAMMA: f64 = 2.0;
    let mut x = x.clone();
    let mut old_d: Option<Tensor> = None;
    for i in 0..sigmas.len() - 1 {
        let (denoised, guide) = if cfg_pp {
            ctx.model_pp(&x, sigmas[i])?
        } else {
            let d = ctx.model(&x, sigmas[i])?.cond;
            (d.clone(), d)
        };
        let d = ctx.lin(&[(&x, 1.0 / sigmas[i]), (&guide, -1.0 / sigmas[i])])?;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        let dt = sigmas[i + 1] - sigmas[i];
        if sigmas[i + 1] == 0.0 {
            x = denoised;
        } else {
            x = if cfg_pp {
                ctx.lin(&[(&denoised, 1.0), (&d, sigmas[i + 1])])?
            } else {
                ctx.lin(&[(&x, 1.0), (&d, dt)])?
            };
            if let (true, Some(old)) = (i >= 1, &old_d) {
                x = ctx.lin(&[
                    (&x, 1.0),
                    (&d, (GE_GAMMA - 1.0) * dt),
                    (old, -(GE_GAMMA - 1.0) * dt),
                ])?;
            }
        }
        old_d = Some(d);
    }
    Ok(x)
}

/// `deis.edm2t` constants and map: ComfyUI fits a VP (linear beta) schedule through EDM's
/// sigma range (0.002, 80) and moves every sigma to that schedule's time. Evaluated in f32 like the
/// torch/numpy original (`ln(0.002^2 + 1)` alone is 1% off in f32, and the schedule keeps that).
fn deis_vp_time(sigmas: &[f64]) -> (Vec<f32>, f32, f32) {
    const EPSILON_S: f32 = 1e-3;
    let (sigma_min, sigma_max) = (0.002f32, 80.0f32);
    let beta_d = 2.0
        * ((sigma_min * sigma_min + 1.0).ln() / EPSILON_S - (sigma_max * sigma_max + 1.0).ln())
        / (EPSILON_S - 1.0);
    let beta_min = (sigma_max * sigma_max + 1.0).ln() - 0.5 * beta_d;
    let t: Vec<f32> = sigmas
        .iter()
        .map(|&s| {
            let s = s as f32;
            ((beta_min * beta_min + 2.0 * beta_d * (s * s + 1.0).ln()).sqrt() - beta_min) / beta_d
        })
        .collect();
    (t, beta_min, beta_d + beta_min)
}

/// `deis.get_deis_coeff_list(deis_mode='tab')`: per step, the integrals of the DEIS integrand times
/// each Lagrange basis polynomial through the last `order` times, by ComfyUI's N = 10000 point
/// rectangle sum over `linspace(t_cur, t_next, N)` with width `(t_next - t_cur) / N`.
fn deis_coeffs(sigmas: &[f64], max_order: usize) -> Vec<Vec<f64>> {
    const N: usize = 10_000;
    let (t, beta_0, beta_1) = deis_vp_time(sigmas);
    let (b0, db) = (beta_0 as f64, (beta_1 - beta_0) as f64);
    let mut out = Vec::with_capacity(t.len().saturating_sub(1));
    for i in 0..t.len().saturating_sub(1) {
        let order = (i + 1).min(max_order);
        // ComfyUI also integrates up to t = 0 (an infinite integrand there) but the sampler takes an
        // Euler step into sigma = 0, so that step's coefficients are never used.
        if order == 1 || sigmas[i + 1] <= 0.0 {
            out.push(Vec::new());
            continue;
        }
        let taus = linspace_f32(t[i], t[i + 1], N);
        let dtau = ((t[i + 1] - t[i]) / N as f32) as f64;
        let prev: Vec<f64> = (0..order).map(|k| t[i - k] as f64).collect();
        // alpha in f32 as torch computes it: 1 - alpha cancels near t = 0.
        let integrand: Vec<f64> = taus
            .iter()
            .map(|&tau| {
                let alpha = (-0.5 * tau * tau * (beta_1 - beta_0) - tau * beta_0).exp();
                let d_log_alpha = -(tau as f64) * db - b0;
                -0.5 * d_log_alpha / ((alpha * (1.0 - alpha)) as f64).sqrt()
            })
            .collect();
        let coeffs = (0..order)
            .map(|j| {
                let sum: f64 = taus
                    .iter()
                    .zip(&integrand)
                    .map(|(&tau, &g)| {
                        let poly: f64 = (0..order)
                            .filter(|&k| k != j)
                            .map(|k| (tau as f64 - prev[k]) / (prev[j] - prev[k]))
                            .product();
                        g * poly
                    })
                    .sum();
                sum * dtau
            })
            .collect();
        out.push(coeffs);
    }
    out
}

/// `sample_deis` (max_order 3, deis_mode 'tab'): a linear multistep method on eps in sigma space
/// whose coefficients integrate a VP-schedule integrand (see [`deis_coeffs`]); Euler for the
/// first step and into sigma = 0.
pub(super) fn deis(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    const DEIS_MAX_ORDER: usize = 3;
    let coeffs = deis_coeffs(sigmas, DEIS_MAX_ORDER);
    let mut x = x.clone();
    let mut buffer: Vec<Tensor> = Vec::new();
    for i in 0..sigmas.len() - 1 {
        let (t_cur, t_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.model(&x, t_cur)?.cond;
        ctx.step(i, &x, &denoised, t_cur)?;
        let d = ctx.lin(&[(&x, 1.0 / t_cur), (&denoised, -1.0 / t_cur)])?;
        let mut order = DEIS_MAX_ORDER.min(i + 1);
        if t_next <= 0.0 {
            order = 1;
        }
        let c = &coeffs[i];
        let next = match order {
            1 => ctx.lin(&[(&x, 1.0), (&d, t_next - t_cur)])?,
            2 => ctx.lin(&[(&x, 1.0), (&d, c[0]), (back(&buffer, 1), c[1])])?,
            _ => ctx.lin(&[
                (&x, 1.0),
                (&d, c[0]),
                (back(&buffer, 1), c[1]),
                (back(&buffer, 2), c[2]),
            ])?,
        };
        if buffer.len() == DEIS_MAX_ORDER - 1 {
            buffer.remove(0);
        }
        buffer.push(d);
        x = next;
    }
    Ok(x)
}
