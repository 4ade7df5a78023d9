//! DPM-Solver family in log-sigma time `t = -ln sigma`: dpm_fast (`DPMSolver.dpm_solver_fast`),
//! dpm_adaptive (`DPMSolver.dpm_solver_adaptive`),
//! dpmpp_2m and dpmpp_2m_cfg_pp.

use candle_core::Tensor;

use crate::sampling::model_sampling::linspace_f32;
use crate::sampling::samplers::{Ctx, Res};
use crate::sampling::SamplingError;

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

/// k-diffusion's `PIDStepSizeController` (ComfyUI defaults: pcoeff 0, icoeff 1, dcoeff 0).
struct PidStepSize {
    h: f64,
    b: [f64; 3],
    accept_safety: f64,
    errs: Option<[f64; 3]>,
}

impl PidStepSize {
    fn new(h: f64, pcoeff: f64, icoeff: f64, dcoeff: f64, order: f64, accept_safety: f64) -> Self {
        let b = [
            (pcoeff + icoeff + dcoeff) / order,
            -(pcoeff + 2.0 * dcoeff) / order,
            dcoeff / order,
        ];
        Self {
            h,
            b,
            accept_safety,
            errs: None,
        }
    }

    /// Scales `h` by the limited PID factor; returns whether the step is accepted.
    fn propose_step(&mut self, error: f64) -> bool {
        const EPS: f64 = 1e-8;
        let inv_error = 1.0 / (error + EPS);
        let errs = self.errs.get_or_insert([inv_error; 3]);
        errs[0] = inv_error;
        let factor = errs[0].powf(self.b[0]) * errs[1].powf(self.b[1]) * errs[2].powf(self.b[2]);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= self.accept_safety;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}

fn sigma_f32(t: f32) -> f32 {
    (-t).exp()
}

/// ComfyUI's `dpm_adaptive`: `DPMSolver.dpm_solver_adaptive` from `sigmas[0]` to the last non-zero
/// sigma; the schedule's intermediate sigmas are ignored and there is no final denoise. Options and
/// defaults: order 3 (or 2), rtol 0.05, atol 0.0078, h_init 0.05, pcoeff 0, icoeff 1, dcoeff 0
/// (an I-controller), accept_safety 0.81, eta 0, s_noise 1. An order-3 attempt costs 3 model calls
/// (DPM-Solver-2 with r1 = 1/3 and DPM-Solver-3 share their first two), order 2 costs 2
/// (DPM-Solver-1 and -2).
///
/// As in ComfyUI the callback runs after every attempt, accepted or rejected, with the attempt
/// index as `step` (the number of attempts is not known in advance; `total` is `len(sigmas) - 1`),
/// the state after the attempt and the denoised prediction at the attempt's start.
/// Times are kept in f32 like the torch scalars they mirror, so the step sizes match ComfyUI's.
pub(super) fn dpm_adaptive(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let o = ctx.opts.clone();
    let order = o.order.unwrap_or(3);
    let (rtol, atol) = (o.rtol.unwrap_or(0.05), o.atol.unwrap_or(0.0078));
    let h_init = o.h_init.unwrap_or(0.05);
    let (eta, s_noise) = (o.eta_or(0.0), o.s_noise());
    if order != 2 && order != 3 {
        return Err(SamplingError::InvalidSigmas {
            sampler: ctx.name,
            reason: format!("order must be 2 or 3, got {order}"),
        });
    }
    let n = sigmas.len() - 1;
    let mut sigma_min = sigmas[n];
    if sigma_min == 0.0 {
        sigma_min = sigmas[n - 1];
    }
    let sigma_max = sigmas[0];
    if sigma_min <= 0.0 || sigma_max <= 0.0 {
        return Err(SamplingError::InvalidSigmas {
            sampler: ctx.name,
            reason: "sigma_min and sigma_max must not be 0".into(),
        });
    }
    let t_start = -(sigma_max as f32).ln();
    let t_end = -(sigma_min as f32).ln();
    let forward = t_end > t_start;
    let mut pid = PidStepSize::new(
        if forward { h_init } else { -h_init },
        o.pcoeff.unwrap_or(0.0),
        o.icoeff.unwrap_or(1.0),
        o.dcoeff.unwrap_or(0.0),
        order as f64,
        o.accept_safety.unwrap_or(0.81),
    );
    let numel = x.elem_count() as f64;
    let mut s = t_start;
    let mut x = x.clone();
    let mut x_prev = x.clone();
    let mut attempt = 0usize;
    while if forward {
        s < t_end - 1e-5
    } else {
        s > t_end + 1e-5
    } {
        let t = if forward {
            (s + pid.h as f32).min(t_end)
        } else {
            (s + pid.h as f32).max(t_end)
        };
        // With eta, the deterministic step stops at the ancestral sigma_down and noise makes up
        // the rest.
        let (t_, su) = if eta != 0.0 {
            // In f32, like the torch scalars.
            let (ss, st) = (sigma_f32(s), sigma_f32(t));
            let eta = eta as f32;
            let up = (eta * (st * st * (ss * ss - st * st) / (ss * ss)).sqrt()).min(st);
            let sd = (st * st - up * up).sqrt();
            let t_ = t_end.min(-sd.ln());
            let st_ = sigma_f32(t_);
            (t_, (st * st - st_ * st_).sqrt() as f64)
        } else {
            (t, 0.0)
        };
        let (e, denoised) = eps(ctx, &x, s as f64)?;
        let (x_low, x_high) = if order == 2 {
            adaptive_pair_2(ctx, &x, &e, s, t_)?
        } else {
            adaptive_pair_3(ctx, &x, &e, s, t_)?
        };
        let error = error_norm(&x_low, &x_high, &x_prev, rtol, atol).map_err(|err| ctx.err(err))?
            / numel.sqrt();
        if !error.is_finite() {
            return Err(SamplingError::Diverged {
                sampler: ctx.name,
                step: attempt,
            });
        }
        if pid.propose_step(error) {
            x_prev = x_low;
            let n = ctx.noise(&x_high)?;
            x = ctx.lin(&[(&x_high, 1.0), (&n, su * s_noise)])?;
            s = t;
        }
        ctx.step(attempt, &x, &denoised, sigma_f32(s) as f64)?;
        attempt += 1;
    }
    Ok(x)
}

/// Order 2: DPM-Solver-1 (low) and DPM-Solver-2 with r1 = 1/2 (high), 1 extra model call.
fn adaptive_pair_2(ctx: &mut Ctx, x: &Tensor, e: &Tensor, s: f32, t: f32) -> Res<(Tensor, Tensor)> {
    let r1 = 0.5f32;
    let h = t - s;
    let s1 = s + r1 * h;
    let (h, r1d) = (h as f64, r1 as f64);
    let sn = sigma_f32(t) as f64;
    let x_low = ctx.lin(&[(x, 1.0), (e, -sn * h.exp_m1())])?;
    let u1 = ctx.lin(&[(x, 1.0), (e, -(sigma_f32(s1) as f64) * (r1d * h).exp_m1())])?;
    let (e1, _) = eps(ctx, &u1, s1 as f64)?;
    let c = sn / (2.0 * r1d) * h.exp_m1();
    let x_high = ctx.lin(&[(x, 1.0), (e, -sn * h.exp_m1() + c), (&e1, -c)])?;
    Ok((x_low, x_high))
}

/// Order 3: DPM-Solver-2 with r1 = 1/3 (low) and DPM-Solver-3 (high), 2 extra model calls.
fn adaptive_pair_3(ctx: &mut Ctx, x: &Tensor, e: &Tensor, s: f32, t: f32) -> Res<(Tensor, Tensor)> {
    let (r1, r2) = (1.0f32 / 3.0, 2.0f32 / 3.0);
    let h = t - s;
    let (s1, s2) = (s + r1 * h, s + r2 * h);
    let (h, r1d, r2d) = (h as f64, r1 as f64, r2 as f64);
    let sn = sigma_f32(t) as f64;
    let u1 = ctx.lin(&[(x, 1.0), (e, -(sigma_f32(s1) as f64) * (r1d * h).exp_m1())])?;
    let (e1, _) = eps(ctx, &u1, s1 as f64)?;
    let c_low = sn / (2.0 * r1d) * h.exp_m1();
    let x_low = ctx.lin(&[(x, 1.0), (e, -sn * h.exp_m1() + c_low), (&e1, -c_low)])?;
    let c2 = sigma_f32(s2) as f64 * (r2d / r1d) * ((r2d * h).exp_m1() / (r2d * h) - 1.0);
    let u2 = ctx.lin(&[
        (x, 1.0),
        (e, -(sigma_f32(s2) as f64) * (r2d * h).exp_m1() + c2),
        (&e1, -c2),
    ])?;
    let (e2, _) = eps(ctx, &u2, s2 as f64)?;
    let c3 = sn / r2d * (h.exp_m1() / h - 1.0);
    let x_high = ctx.lin(&[(x, 1.0), (e, -sn * h.exp_m1() + c3), (&e2, -c3)])?;
    Ok((x_low, x_high))
}

/// `||(x_low - x_high) / max(atol, rtol * max(|x_low|, |x_prev|))||_2` in f32 like torch.
fn error_norm(
    x_low: &Tensor,
    x_high: &Tensor,
    x_prev: &Tensor,
    rtol: f64,
    atol: f64,
) -> candle_core::Result<f64> {
    let delta = x_low
        .abs()?
        .maximum(&x_prev.abs()?)?
        .affine(rtol, 0.0)?
        .maximum(atol)?;
    let ratio = ((x_low - x_high)? / delta)?;
    let sq = ratio
        .sqr()?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    Ok(sq.sqrt())
}
