//! SA-Solver (stochastic Adams, arXiv 2309.05019) as ComfyUI runs it (`sample_sa_solver`,
//! `comfy/k_diffusion/sa_solver.py`): data prediction in lambda = -ln sigma, predictor order 3,
//! corrector order 4 (lower near the end when the schedule ends at 0), tau = 1 inside ComfyUI's
//! default sigma interval `[percent_to_sigma(0.8), percent_to_sigma(0.2)]` and 0 outside, noise from
//! the default noise sampler (no difference to ComfyUI there). `pece` re-evaluates the model at
//! each corrected state (sa_solver_pece).

use candle_core::Tensor;

use crate::sampling::samplers::unipc::solve;
use crate::sampling::samplers::{Ctx, Res};

const PREDICTOR_ORDER: usize = 3;
const CORRECTOR_ORDER: usize = 4;

/// `compute_stochastic_adams_b_coeffs` (not the simple order-2 variant): the integrals of
/// `exp((1 + tau^2) lambda)` times each Lagrange basis polynomial through `lambdas`, from
/// `lambda_s` to `lambda_t`, scaled by alpha_t = sigma_next * exp(lambda_t).
fn b_coeffs(sigma_next: f64, lambdas: &[f64], lambda_s: f64, lambda_t: f64, tau: f64) -> Vec<f64> {
    let k = lambdas.len();
    let tau_mul = 1.0 + tau * tau;
    let decay = (-tau_mul * (lambda_t - lambda_s)).exp();
    // Integration by parts: I_p = sum_{j<=p} (-1)^(p-j) p!/j! / tau_mul^(p-j) (t^j - s^j e^{-tau_mul h}),
    // with exp(tau_mul t) factored out.
    let terms: Vec<f64> = (0..k)
        .map(|p| lambda_t.powi(p as i32) - lambda_s.powi(p as i32) * decay)
        .collect();
    let exp_coeffs: Vec<f64> = (0..k)
        .map(|p| {
            (0..=p)
                .map(|j| {
                    let ratio: f64 = ((j + 1)..=p).map(|v| v as f64).product();
                    let scale = if tau > 0.0 {
                        tau_mul.powi((p - j) as i32)
                    } else {
                        1.0
                    };
                    let sign = if (p - j) % 2 == 0 { 1.0 } else { -1.0 };
                    sign * ratio / scale * terms[j]
                })
                .sum()
        })
        .collect();
    // Solve V^T c = exp_coeffs with V the (increasing) Vandermonde matrix of `lambdas`.
    let vt: Vec<Vec<f64>> = (0..k)
        .map(|p| lambdas.iter().map(|l| l.powi(p as i32)).collect())
        .collect();
    let alpha_t = sigma_next * lambda_t.exp();
    solve(vt, exp_coeffs)
        .into_iter()
        .map(|c| c * alpha_t)
        .collect()
}

/// `sample_sa_solver(use_pece)` with ComfyUI's defaults; `tau_interval` is
/// `(percent_to_sigma(0.2), percent_to_sigma(0.8))` of the model's schedule.
pub(super) fn sa_solver(
    ctx: &mut Ctx,
    x: &Tensor,
    sigmas: &[f64],
    pece: bool,
    tau_interval: (f64, f64),
) -> Res<Tensor> {
    let (start_sigma, end_sigma) = tau_interval;
    let tau_func = |sigma: f64| {
        if start_sigma >= sigma && sigma >= end_sigma {
            1.0
        } else {
            0.0
        }
    };
    let max_used = PREDICTOR_ORDER.max(CORRECTOR_ORDER);
    let lambdas: Vec<f64> = sigmas.iter().map(|s| -s.ln()).collect();
    let n = sigmas.len();
    let lower_order_to_end = sigmas[n - 1] == 0.0;
    let mut x_pred = x.clone();
    let mut x = x.clone();
    let (mut h, mut tau_t) = (0.0f64, 0.0f64);
    let mut noise: Option<Tensor> = None;
    let mut preds: Vec<Tensor> = Vec::with_capacity(max_used + 1);
    for i in 0..n - 1 {
        let mut denoised = ctx.model(&x_pred, sigmas[i])?.cond;
        ctx.step(i, &x_pred, &denoised, sigmas[i])?;
        preds.push(denoised.clone());
        if preds.len() > max_used {
            preds.remove(0);
        }
        let mut p_used = PREDICTOR_ORDER.min(preds.len());
        let mut c_used = if i == 0 || (sigmas[i + 1] == 0.0 && !pece) {
            0
        } else {
            CORRECTOR_ORDER.min(preds.len())
        };
        if lower_order_to_end {
            p_used = p_used.min(n - 2 - i);
            c_used = c_used.min(n - 1 - i);
        }
        // Corrector.
        if c_used == 0 {
            x = x_pred.clone();
        } else {
            let b = b_coeffs(
                sigmas[i],
                &lambdas[i + 1 - c_used..=i],
                lambdas[i - 1],
                lambdas[i],
                tau_t,
            );
            let mut terms: Vec<(&Tensor, f64)> =
                vec![(&x, sigmas[i] / sigmas[i - 1] * (-(tau_t * tau_t) * h).exp())];
            terms.extend(
                preds[preds.len() - c_used..]
                    .iter()
                    .zip(&b)
                    .map(|(p, c)| (p, *c)),
            );
            if let (true, Some(nz)) = (tau_t > 0.0, &noise) {
                terms.push((nz, 1.0));
            }
            x = ctx.lin(&terms)?;
            if pece {
                denoised = ctx.model(&x, sigmas[i])?.cond;
                let last = preds.len() - 1;
                preds[last] = denoised.clone();
            }
        }
        // Predictor.
        if sigmas[i + 1] == 0.0 {
            x_pred = denoised;
        } else {
            tau_t = tau_func(sigmas[i + 1]);
            let b = b_coeffs(
                sigmas[i + 1],
                &lambdas[i + 1 - p_used..=i],
                lambdas[i],
                lambdas[i + 1],
                tau_t,
            );
            h = lambdas[i + 1] - lambdas[i];
            let mut terms: Vec<(&Tensor, f64)> =
                vec![(&x, sigmas[i + 1] / sigmas[i] * (-(tau_t * tau_t) * h).exp())];
            terms.extend(
                preds[preds.len() - p_used..]
                    .iter()
                    .zip(&b)
                    .map(|(p, c)| (p, *c)),
            );
            x_pred = ctx.lin(&terms)?;
            if tau_t > 0.0 {
                let nz = ctx.noise(&x)?;
                let nz = ctx.lin(&[(
                    &nz,
                    sigmas[i + 1] * (-(-2.0 * tau_t * tau_t * h).exp_m1()).sqrt(),
                )])?;
                x_pred = ctx.lin(&[(&x_pred, 1.0), (&nz, 1.0)])?;
                noise = Some(nz);
            }
        }
    }
    Ok(x_pred)
}
