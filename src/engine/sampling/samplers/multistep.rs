//! Multistep samplers that reuse earlier derivatives: ipndm, ipndm_v (from diff-sampler via
//! ComfyUI), res_multistep (+ ancestral / CFG++) and gradient_estimation (+ CFG++).

use candle_core::Tensor;

use crate::engine::sampling::samplers::{ancestral_step, Ctx, Res};

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
