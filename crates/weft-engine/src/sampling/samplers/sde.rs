//! Stochastic exponential-integrator samplers in half-log-SNR time `lambda = -ln sigma` (eps/v
//! models, where alpha = 1): dpmpp_sde, dpmpp_2m_sde (midpoint / heun), dpmpp_3m_sde (Brownian-tree
//! noise queried per step, see the module docs of `samplers`), and er_sde, seeds_2, seeds_3 (default noise sampler).
//! dpmpp_sde, dpmpp_2m_sde and dpmpp_3m_sde take the sampler nodes' `eta`, `s_noise` (and `r`,
//! `solver_type`); the others run with ComfyUI's defaults, eta = 1 and s_noise = 1.

use candle_core::Tensor;

use crate::sampling::samplers::{ancestral_step, Ctx, Res};

/// `sample_dpmpp_sde` with the options `eta`, `s_noise` (default 1) and `r` (default 1/2).
pub(super) fn dpmpp_sde(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let (eta, s_noise) = (ctx.opts.eta_or(1.0), ctx.opts.s_noise());
    let r = ctx.opts.r.unwrap_or(0.5);
    let fac = 1.0 / (2.0 * r);
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if sigmas[i + 1] == 0.0 {
            x = denoised;
            continue;
        }
        let ls = -sigmas[i].ln();
        let sigma_s1_f32 = midpoint_sigma(sigmas[i], sigmas[i + 1], r);
        let sigma_s1 = sigma_s1_f32 as f64;
        // Step 1: ancestral step to sigma_s1.
        let (sd, su) = ancestral_step(sigmas[i], sigma_s1, eta);
        let h_ = -sd.ln() - ls;
        let n = ctx.noise_between(&x, sigmas[i] as f32, sigma_s1_f32)?;
        let x2 = ctx.lin(&[
            (&x, (-h_).exp()),
            (&denoised, -(-h_).exp_m1()),
            (&n, s_noise * su),
        ])?;
        let denoised2 = ctx.model(&x2, sigma_s1)?.cond;
        // Step 2: ancestral step to sigma_next with the blended prediction.
        let (sd, su) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        let h_ = -sd.ln() - ls;
        let c = -(-h_).exp_m1();
        let n = ctx.noise_between(&x, sigmas[i] as f32, sigmas[i + 1] as f32)?;
        x = ctx.lin(&[
            (&x, (-h_).exp()),
            (&denoised, c * (1.0 - fac)),
            (&denoised2, c * fac),
            (&n, s_noise * su),
        ])?;
    }
    Ok(x)
}

/// dpmpp_sde's intermediate sigma `exp(-(lambda_s + r * h))` with `lambda = -ln sigma`, in f32 as
/// torch computes it from ComfyUI's f32 sigmas: the Brownian tree is queried at exactly this time.
/// (`ln`/`exp` are correctly rounded here; torch's SIMD ones are within an ulp of that.)
fn midpoint_sigma(sigma: f64, sigma_next: f64, r: f64) -> f32 {
    let lambda = |s: f64| -(s.ln() as f32);
    let (ls, lt) = (lambda(sigma), lambda(sigma_next));
    let ls1 = ls + (lt - ls) * r as f32;
    (-(ls1 as f64)).exp() as f32
}

/// `sample_dpmpp_2m_sde` with the options `eta` and `s_noise` (default 1); `heun` is
/// `solver_type == "heun"`. No noise is drawn when `eta` is 0, as in ComfyUI.
pub(super) fn dpmpp_2m_sde(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64], heun: bool) -> Res<Tensor> {
    let (eta, s_noise) = (ctx.opts.eta_or(1.0), ctx.opts.s_noise());
    let mut x = x.clone();
    let mut old_denoised: Option<Tensor> = None;
    let mut h_last = 0.0;
    let mut h = 0.0;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if sigmas[i + 1] == 0.0 {
            x = denoised.clone();
        } else {
            let (ls, lt) = (-sigmas[i].ln(), -sigmas[i + 1].ln());
            h = lt - ls;
            let h_eta = h * (eta + 1.0);
            let a = -(-h_eta).exp_m1();
            let mut terms: Vec<(&Tensor, f64)> = vec![
                (&x, sigmas[i + 1] / sigmas[i] * (-h * eta).exp()),
                (&denoised, a),
            ];
            let c = match &old_denoised {
                Some(_) => {
                    let r = h_last / h;
                    if heun {
                        (a / -h_eta + 1.0) / r
                    } else {
                        0.5 * a / r
                    }
                }
                None => 0.0,
            };
            if let Some(old) = &old_denoised {
                terms[1].1 += c;
                terms.push((old, -c));
            }
            let n;
            if eta != 0.0 {
                n = ctx.noise_between(&x, sigmas[i] as f32, sigmas[i + 1] as f32)?;
                let amount = sigmas[i + 1] * (-(-2.0 * h * eta).exp_m1()).sqrt() * s_noise;
                terms.push((&n, amount));
            }
            x = ctx.lin(&terms)?;
        }
        old_denoised = Some(denoised);
        h_last = h;
    }
    Ok(x)
}

/// `sample_dpmpp_3m_sde` with the options `eta` and `s_noise` (default 1); no noise is drawn
/// when `eta` is 0, as in ComfyUI.
pub(super) fn dpmpp_3m_sde(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let (eta, s_noise) = (ctx.opts.eta_or(1.0), ctx.opts.s_noise());
    let mut x = x.clone();
    let (mut den1, mut den2): (Option<Tensor>, Option<Tensor>) = (None, None);
    let (mut h, mut h1, mut h2): (Option<f64>, Option<f64>, Option<f64>) = (None, None, None);
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if sigmas[i + 1] == 0.0 {
            x = denoised.clone();
        } else {
            let (ls, lt) = (-sigmas[i].ln(), -sigmas[i + 1].ln());
            let hh = lt - ls;
            h = Some(hh);
            let h_eta = hh * (eta + 1.0);
            let a = -(-h_eta).exp_m1();
            let phi2 = (-h_eta).exp_m1() / h_eta + 1.0;
            let mut terms: Vec<(Tensor, f64)> = vec![
                (x.clone(), sigmas[i + 1] / sigmas[i] * (-hh * eta).exp()),
                (denoised.clone(), a),
            ];
            match (&den1, &den2, h1, h2) {
                (Some(d1t), Some(d2t), Some(h1v), Some(h2v)) => {
                    let r0 = h1v / hh;
                    let r1 = h2v / hh;
                    let phi3 = phi2 / h_eta - 0.5;
                    let q = r0 / (r0 + r1);
                    // x += phi2*d1 - phi3*d2 with d1 = d1_0 (1 + q) - d1_1 q, d2 = (d1_0 - d1_1) / (r0 + r1).
                    let ca = phi2 * (1.0 + q) - phi3 / (r0 + r1);
                    let cb = -phi2 * q + phi3 / (r0 + r1);
                    terms[1].1 += ca / r0;
                    terms.push((d1t.clone(), -ca / r0 + cb / r1));
                    terms.push((d2t.clone(), -cb / r1));
                }
                (Some(d1t), _, Some(h1v), _) => {
                    let r = h1v / hh;
                    terms[1].1 += phi2 / r;
                    terms.push((d1t.clone(), -phi2 / r));
                }
                _ => {}
            }
            if eta != 0.0 {
                let n = ctx.noise_between(&x, sigmas[i] as f32, sigmas[i + 1] as f32)?;
                let amount = sigmas[i + 1] * (-(-2.0 * hh * eta).exp_m1()).sqrt() * s_noise;
                terms.push((n, amount));
            }
            let refs: Vec<(&Tensor, f64)> = terms.iter().map(|(t, c)| (t, *c)).collect();
            x = ctx.lin(&refs)?;
        }
        den2 = den1.take();
        den1 = Some(denoised);
        h2 = h1;
        h1 = h;
    }
    Ok(x)
}

/// ER-SDE-Solver-3 with ComfyUI's default noise scaler `x (exp(x^0.3) + 10)` and 200-point sums.
pub(super) fn er_sde(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    const POINTS: usize = 200;
    let scaler = |v: f64| v * (v.powf(0.3).exp() + 10.0);
    // er_lambda = sigma / alpha = sigma for eps/v models.
    let lambdas = sigmas;
    let mut x = x.clone();
    let mut old_denoised: Option<Tensor> = None;
    let mut old_denoised_d: Option<Tensor> = None;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        let stage = 3.min(i + 1);
        if sigmas[i + 1] == 0.0 {
            x = denoised.clone();
        } else {
            let (ls, lt) = (lambdas[i], lambdas[i + 1]);
            let r = scaler(lt) / scaler(ls);
            x = ctx.lin(&[(&x, r), (&denoised, 1.0 - r)])?;
            if stage >= 2 {
                if let Some(old) = &old_denoised {
                    let dt = lt - ls;
                    let step = -dt / POINTS as f64;
                    let (mut s, mut s_u) = (0.0, 0.0);
                    for k in 0..POINTS {
                        let pos = lt + k as f64 * step;
                        let sp = scaler(pos);
                        s += 1.0 / sp;
                        s_u += (pos - ls) / sp;
                    }
                    s *= step;
                    s_u *= step;
                    let dd = 1.0 / (ls - lambdas[i - 1]);
                    let denoised_d = ctx.lin(&[(&denoised, dd), (old, -dd)])?;
                    x = ctx.lin(&[(&x, 1.0), (&denoised_d, dt + s * scaler(lt))])?;
                    if stage >= 3 {
                        if let Some(old_d) = &old_denoised_d {
                            let du = 2.0 / (ls - lambdas[i - 2]);
                            let coef = (dt * dt / 2.0 + s_u * scaler(lt)) * du;
                            x = ctx.lin(&[(&x, 1.0), (&denoised_d, coef), (old_d, -coef)])?;
                        }
                    }
                    old_denoised_d = Some(denoised_d);
                }
            }
            let mut amp = (lt * lt - ls * ls * r * r).sqrt();
            if amp.is_nan() {
                amp = 0.0;
            }
            let n = ctx.noise(&x)?;
            x = ctx.lin(&[(&x, 1.0), (&n, amp)])?;
        }
        old_denoised = Some(denoised);
    }
    Ok(x)
}

fn phi1(h: f64) -> f64 {
    h.exp_m1()
}

fn phi2(h: f64) -> f64 {
    (h.exp_m1() - h) / h
}

/// SEEDS-2 (r = 1/2, phi_1 solver, eta = 1).
pub(super) fn seeds_2(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    const R: f64 = 0.5;
    const ETA: f64 = 1.0;
    let fac = 1.0 / (2.0 * R);
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if sigmas[i + 1] == 0.0 {
            x = denoised;
            continue;
        }
        let (ls, lt) = (-sigmas[i].ln(), -sigmas[i + 1].ln());
        let h = lt - ls;
        let h_eta = h * (ETA + 1.0);
        let sigma_s1 = (-(ls + R * (lt - ls))).exp();
        let n1 = ctx.noise(&x)?;
        let sde1 = (-(-2.0 * R * h * ETA).exp_m1()).sqrt();
        let x2 = ctx.lin(&[
            (&x, sigma_s1 / sigmas[i] * (-R * h * ETA).exp()),
            (&denoised, -phi1(-R * h_eta)),
            (&n1, sde1 * sigma_s1),
        ])?;
        let denoised2 = ctx.model(&x2, sigma_s1)?.cond;
        let c = -phi1(-h_eta);
        let seg = (R - 1.0) * h * ETA;
        let n2 = ctx.noise(&x)?;
        let sn = sigmas[i + 1];
        x = ctx.lin(&[
            (&x, sn / sigmas[i] * (-h * ETA).exp()),
            (&denoised, c * (1.0 - fac)),
            (&denoised2, c * fac),
            (&n1, sde1 * seg.exp() * sn),
            (&n2, (-(2.0 * seg).exp_m1()).sqrt() * sn),
        ])?;
    }
    Ok(x)
}

/// SEEDS-3 (r1 = 1/3, r2 = 2/3, eta = 1).
pub(super) fn seeds_3(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    const R1: f64 = 1.0 / 3.0;
    const R2: f64 = 2.0 / 3.0;
    const ETA: f64 = 1.0;
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if sigmas[i + 1] == 0.0 {
            x = denoised;
            continue;
        }
        let (ls, lt) = (-sigmas[i].ln(), -sigmas[i + 1].ln());
        let h = lt - ls;
        let h_eta = h * (ETA + 1.0);
        let s1 = (-(ls + R1 * (lt - ls))).exp();
        let s2 = (-(ls + R2 * (lt - ls))).exp();
        // Step 1.
        let n1 = ctx.noise(&x)?;
        let k1 = (-(-2.0 * R1 * h * ETA).exp_m1()).sqrt();
        let x2 = ctx.lin(&[
            (&x, s1 / sigmas[i] * (-R1 * h * ETA).exp()),
            (&denoised, -phi1(-R1 * h_eta)),
            (&n1, k1 * s1),
        ])?;
        let denoised2 = ctx.model(&x2, s1)?.cond;
        // Step 2: the SDE noise so far is k1 * n1, carried with exp(segment) plus a fresh draw.
        let a32 = R2 / R1 * phi2(-R2 * h_eta);
        let a31 = phi1(-R2 * h_eta) - a32;
        let seg2 = (R1 - R2) * h * ETA;
        let n2 = ctx.noise(&x)?;
        let k2 = (-(2.0 * seg2).exp_m1()).sqrt();
        let x3 = ctx.lin(&[
            (&x, s2 / sigmas[i] * (-R2 * h * ETA).exp()),
            (&denoised, -a31),
            (&denoised2, -a32),
            (&n1, k1 * seg2.exp() * s2),
            (&n2, k2 * s2),
        ])?;
        let denoised3 = ctx.model(&x3, s2)?.cond;
        // Step 3.
        let b3 = phi2(-h_eta) / R2;
        let b1 = phi1(-h_eta) - b3;
        let seg3 = (R2 - 1.0) * h * ETA;
        let n3 = ctx.noise(&x)?;
        let k3 = (-(2.0 * seg3).exp_m1()).sqrt();
        let sn = sigmas[i + 1];
        x = ctx.lin(&[
            (&x, sn / sigmas[i] * (-h * ETA).exp()),
            (&denoised, -b1),
            (&denoised3, -b3),
            (&n1, k1 * seg2.exp() * seg3.exp() * sn),
            (&n2, k2 * seg3.exp() * sn),
            (&n3, k3 * sn),
        ])?;
    }
    Ok(x)
}
