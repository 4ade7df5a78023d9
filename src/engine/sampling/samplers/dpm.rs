//! DPM-Solver family in log-sigma time `t = -ln sigma`: dpm_fast (`DPMSolver.dpm_solver_fast`),
//! dpmpp_2m and dpmpp_2m_cfg_pp.

use candle_core::Tensor;

use crate::engine::sampling::model_sampling::linspace_f32;
use crate::engine::sampling::samplers::{Ctx, Res};

fn sigma_of(t: f64) -> f64 {
    (-t).exp()
}

/// `eps = (x - D(x, sigma(t))) / sigma(t)`, also returning D for the callback.
fn eps(ctx: &mut Ctx, x: &Tensor, t: f64) -> Res<(Tensor, Tensor)> {
    let sigma = sigma_of(t);
    let denoised = ctx.model(x, sigma)?.cond;
    let e = ctx.lin(&[(x, 1.0 / sigma), (&denoised, -1.0 / sigma)])?;
    Ok((e, denoised))
}

/// ComfyUI's `dpm_fast`: `n = len(sigmas) - 1` model calls spread over `floor(n/3) + 1` steps of
/// order 3 (then 2, 1 or n % 3) from `sigmas[0]` to the last non-zero sigma. No final denoise.
pub(super) fn dpm_fast(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let n = sigmas.len() - 1;
    let mut sigma_min = sigmas[n];
    if sigma_min == 0.0 {
        sigma_min = sigmas[n - 1];
    }
    let sigma_max = sigmas[0];
    // ComfyUI builds t from f32 tensors and `torch.linspace` in f32.
    let t_start = -(sigma_max as f32).ln();
    let t_end = -(sigma_min as f32).ln();
    let m = n / 3 + 1;
    let ts: Vec<f64> = linspace_f32(t_start, t_end, m + 1)
        .into_iter()
        .map(|t| t as f64)
        .collect();
    let orders: Vec<usize> = if n.is_multiple_of(3) {
        [vec![3; m.saturating_sub(2)], vec![2, 1]].concat()
    } else {
        [vec![3; m - 1], vec![n % 3]].concat()
    };
    let mut x = x.clone();
    for (i, &order) in orders.iter().enumerate() {
        let (t, t_next) = (ts[i], ts[i + 1]);
        let h = t_next - t;
        let (e, denoised) = eps(ctx, &x, t)?;
        ctx.step(i, &x, &denoised, sigma_of(t))?;
        let sn = sigma_of(t_next);
        x = match order {
            1 => ctx.lin(&[(&x, 1.0), (&e, -sn * h.exp_m1())])?,
            2 => {
                let r1 = 0.5;
                let s1 = t + r1 * h;
                let u1 = ctx.lin(&[(&x, 1.0), (&e, -sigma_of(s1) * (r1 * h).exp_m1())])?;
                let (e1, _) = eps(ctx, &u1, s1)?;
                let c = sn / (2.0 * r1) * h.exp_m1();
                ctx.lin(&[(&x, 1.0), (&e, -sn * h.exp_m1() + c), (&e1, -c)])?
            }
            _ => {
                let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
                let s1 = t + r1 * h;
                let s2 = t + r2 * h;
                let u1 = ctx.lin(&[(&x, 1.0), (&e, -sigma_of(s1) * (r1 * h).exp_m1())])?;
                let (e1, _) = eps(ctx, &u1, s1)?;
                let c2 = sigma_of(s2) * (r2 / r1) * ((r2 * h).exp_m1() / (r2 * h) - 1.0);
                let u2 = ctx.lin(&[
                    (&x, 1.0),
                    (&e, -sigma_of(s2) * (r2 * h).exp_m1() + c2),
                    (&e1, -c2),
                ])?;
                let (e2, _) = eps(ctx, &u2, s2)?;
                let c3 = sn / r2 * (h.exp_m1() / h - 1.0);
                ctx.lin(&[(&x, 1.0), (&e, -sn * h.exp_m1() + c3), (&e2, -c3)])?
            }
        };
    }
    Ok(x)
}

pub(super) fn dpmpp_2m(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    let mut old_denoised: Option<Tensor> = None;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if sigmas[i + 1] == 0.0 {
            x = denoised.clone();
        } else {
            let t = -sigmas[i].ln();
            let t_next = -sigmas[i + 1].ln();
            let h = t_next - t;
            let ratio = sigmas[i + 1] / sigmas[i];
            let c = -(-h).exp_m1();
            x = match &old_denoised {
                None => ctx.lin(&[(&x, ratio), (&denoised, c)])?,
                Some(old) => {
                    let h_last = t + sigmas[i - 1].ln();
                    let r = h_last / h;
                    ctx.lin(&[
                        (&x, ratio),
                        (&denoised, c * (1.0 + 1.0 / (2.0 * r))),
                        (old, -c / (2.0 * r)),
                    ])?
                }
            };
        }
        old_denoised = Some(denoised);
    }
    Ok(x)
}

pub(super) fn dpmpp_2m_cfg_pp(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    let mut old_uncond: Option<Tensor> = None;
    for i in 0..sigmas.len() - 1 {
        let (denoised, uncond) = ctx.model_pp(&x, sigmas[i])?;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if sigmas[i + 1] == 0.0 {
            // exp(-h) = 0 when sigma_next = 0: x = denoised.
            x = denoised.clone();
        } else {
            let t = -sigmas[i].ln();
            let t_next = -sigmas[i + 1].ln();
            let h = t_next - t;
            let e = (-h).exp();
            x = match &old_uncond {
                None => ctx.lin(&[(&denoised, 1.0), (&uncond, -e), (&x, e)])?,
                Some(old) => {
                    let h_last = t + sigmas[i - 1].ln();
                    let r = h_last / h;
                    let c = -(-h).exp_m1() / (2.0 * r);
                    ctx.lin(&[(&denoised, 1.0 + c), (&uncond, -e), (old, -c), (&x, e)])?
                }
            };
        }
        old_uncond = Some(uncond);
    }
    Ok(x)
}
