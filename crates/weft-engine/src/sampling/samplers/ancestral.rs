//! Ancestral samplers (ComfyUI's eps/v branches, not the rectified-flow `_RF` ones): step to
//! `sigma_down`, then add `sigma_up` of fresh noise from `default_noise_sampler`. Also ddpm and lcm,
//! which re-noise the same way. Noise draws happen exactly where ComfyUI draws them, so the stream
//! stays aligned with torch's.

use candle_core::Tensor;

use crate::sampling::samplers::{ancestral_step, Ctx, Res};

/// `sample_euler_ancestral` with the options `eta` and `s_noise` (both default 1).
pub(super) fn euler_ancestral(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let (eta, s_noise) = (ctx.opts.eta_or(1.0), ctx.opts.s_noise());
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if down == 0.0 {
            x = denoised;
        } else {
            // x + d * (down - sigma) with d = (x - D) / sigma, then + noise * up.
            let ratio = (down - sigmas[i]) / sigmas[i];
            let n = ctx.noise(&x)?;
            x = ctx.lin(&[(&x, 1.0 + ratio), (&denoised, -ratio), (&n, s_noise * up)])?;
        }
    }
    Ok(x)
}

/// `sample_euler_ancestral_cfg_pp` (eta = s_noise = 1) and `sample_euler_cfg_pp` (eta = s_noise = 0).
/// For eps/v models alpha = 1, so this is `x = D_cfg + sigma_down * (x - D_uncond) / sigma`.
pub(super) fn euler_ancestral_cfg_pp(
    ctx: &mut Ctx,
    x: &Tensor,
    sigmas: &[f64],
    eta: f64,
    s_noise: f64,
) -> Res<Tensor> {
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let (denoised, uncond) = ctx.model_pp(&x, sigmas[i])?;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if sigmas[i + 1] == 0.0 {
            x = denoised;
        } else {
            let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
            let c = down / sigmas[i];
            let mut next = ctx.lin(&[(&denoised, 1.0), (&x, c), (&uncond, -c)])?;
            if eta > 0.0 && s_noise > 0.0 {
                let n = ctx.noise(&x)?;
                next = ctx.lin(&[(&next, 1.0), (&n, s_noise * up)])?;
            }
            x = next;
        }
    }
    Ok(x)
}

pub(super) fn dpm_2_ancestral(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1], 1.0);
        ctx.step(i, &x, &denoised, sigmas[i])?;
        let d = ctx.lin(&[(&x, 1.0 / sigmas[i]), (&denoised, -1.0 / sigmas[i])])?;
        if down == 0.0 {
            x = ctx.lin(&[(&x, 1.0), (&d, down - sigmas[i])])?;
        } else {
            let sigma_mid = (0.5 * (sigmas[i].ln() + down.ln())).exp();
            let x2 = ctx.lin(&[(&x, 1.0), (&d, sigma_mid - sigmas[i])])?;
            let denoised2 = ctx.model(&x2, sigma_mid)?.cond;
            let d2 = ctx.lin(&[(&x2, 1.0 / sigma_mid), (&denoised2, -1.0 / sigma_mid)])?;
            let n = ctx.noise(&x)?;
            x = ctx.lin(&[(&x, 1.0), (&d2, down - sigmas[i]), (&n, up)])?;
        }
    }
    Ok(x)
}

/// `sample_dpmpp_2s_ancestral` with the options `eta` and `s_noise` (both default 1).
pub(super) fn dpmpp_2s_ancestral(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let (eta, s_noise) = (ctx.opts.eta_or(1.0), ctx.opts.s_noise());
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if down == 0.0 {
            let ratio = (down - sigmas[i]) / sigmas[i];
            x = ctx.lin(&[(&x, 1.0 + ratio), (&denoised, -ratio)])?;
        } else {
            let t = -sigmas[i].ln();
            let t_next = -down.ln();
            let h = t_next - t;
            let s = t + 0.5 * h;
            let sigma_s = (-s).exp();
            let x2 = ctx.lin(&[(&x, sigma_s / sigmas[i]), (&denoised, -(-h * 0.5).exp_m1())])?;
            let denoised2 = ctx.model(&x2, sigma_s)?.cond;
            x = ctx.lin(&[
                (&x, (-t_next).exp() / sigmas[i]),
                (&denoised2, -(-h).exp_m1()),
            ])?;
        }
        if sigmas[i + 1] > 0.0 {
            let n = ctx.noise(&x)?;
            x = ctx.lin(&[(&x, 1.0), (&n, s_noise * up)])?;
        }
    }
    Ok(x)
}

/// `sample_dpmpp_2s_ancestral_cfg_pp`: the second model call only refreshes the uncond prediction.
pub(super) fn dpmpp_2s_ancestral_cfg_pp(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let (denoised, uncond) = ctx.model_pp(&x, sigmas[i])?;
        let guidance = ctx.lin(&[(&denoised, 1.0), (&uncond, -1.0)])?;
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1], 1.0);
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if down == 0.0 {
            let ratio = (down - sigmas[i]) / sigmas[i];
            x = ctx.lin(&[(&x, 1.0 + ratio), (&uncond, -ratio)])?;
        } else {
            let t = -sigmas[i].ln();
            let t_next = -down.ln();
            let h = t_next - t;
            let s = t + 0.5 * h;
            let sigma_s = (-s).exp();
            let x2 = ctx.lin(&[(&x, sigma_s / sigmas[i]), (&uncond, -(-h * 0.5).exp_m1())])?;
            let (_, uncond2) = ctx.model_pp(&x2, sigma_s)?;
            x = ctx.lin(&[
                (&x, (-t_next).exp() / sigmas[i]),
                (&uncond2, -(-h).exp_m1()),
            ])?;
        }
        if sigmas[i + 1] > 0.0 {
            let n = ctx.noise(&x)?;
            x = ctx.lin(&[(&x, 1.0), (&n, up)])?;
        }
        x = ctx.lin(&[(&x, 1.0), (&guidance, 1.0)])?;
    }
    Ok(x)
}

/// `sample_ddpm` (`generic_step_sampler` + `DDPMSampler_step`), in VP space.
pub(super) fn ddpm(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        let (sigma, sigma_prev) = (sigmas[i], sigmas[i + 1]);
        let scale_in = 1.0 / (1.0 + sigma * sigma).sqrt();
        let alpha_cumprod = 1.0 / (sigma * sigma + 1.0);
        let alpha_cumprod_prev = 1.0 / (sigma_prev * sigma_prev + 1.0);
        let alpha = alpha_cumprod / alpha_cumprod_prev;
        // mu = sqrt(1/alpha) * (x_in - (1 - alpha) * eps / sqrt(1 - alpha_cumprod)), eps = (x - D) / sigma.
        let k = (1.0 - alpha) / (1.0 - alpha_cumprod).sqrt() / sigma;
        let a = (1.0 / alpha).sqrt();
        let mut mu = ctx.lin(&[(&x, a * (scale_in - k)), (&denoised, a * k)])?;
        if sigma_prev > 0.0 {
            let n = ctx.noise(&x)?;
            let c = ((1.0 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt();
            mu = ctx.lin(&[(&mu, 1.0), (&n, c)])?;
        }
        x = if sigmas[i + 1] != 0.0 {
            ctx.lin(&[(&mu, (1.0 + sigma_prev * sigma_prev).sqrt())])?
        } else {
            mu
        };
    }
    Ok(x)
}

/// `sample_lcm` with its defaults: `x = D`, re-noised to `sigma_next` (`noise_scaling`, not max-denoise).
pub(super) fn lcm(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        x = denoised;
        if sigmas[i + 1] > 0.0 {
            let n = ctx.noise(&x)?;
            x = ctx.lin(&[(&n, sigmas[i + 1]), (&x, 1.0)])?;
        }
    }
    Ok(x)
}
