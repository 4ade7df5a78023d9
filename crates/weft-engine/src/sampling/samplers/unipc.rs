//! UniPC as ComfyUI runs it (`comfy/extra_samplers/uni_pc.py`, `sample_unipc`): the multistep
//! "B(h)" UniPC of Zhao et al. (predictor UniP + corrector UniC, data prediction, order
//! `min(3, len(sigmas) - 2)` with lower orders for the first and last steps), variant bh1
//! (`B(h) = h`) or bh2 (`B(h) = e^h - 1`).
//!
//! ComfyUI converts the VE state to the VP state `x / sqrt(1 + sigma_0^2)`, runs UniPC with its
//! "time" being sigma itself (`SigmaConvert`: alpha = 1/sqrt(1+sigma^2)), replaces a final sigma of
//! 0 by 0.001 and returns `x_vp / alpha(last)`. The model is asked for eps at the VE input
//! `x_vp * sqrt(1+sigma^2)` and that eps is turned back into x0, exactly as below.

use candle_core::Tensor;

use crate::sampling::samplers::{Ctx, Res};

/// ComfyUI's `SigmaConvert` marginals of a sigma. Evaluated in f32 as torch does on the f32
/// sigma tensor: near sigma = 0.001 `1 - alpha^2` cancels badly in f32 and ComfyUI's result carries
/// that (a ~2% error in the std of the final step), so the f32 evaluation is part of the behaviour.
#[derive(Debug, Clone, Copy)]
struct Vp {
    alpha: f32,
    std: f32,
    lambda: f32,
}

fn vp(sigma: f32) -> Vp {
    let log_mean = 0.5f32 * (1.0f32 / (sigma * sigma + 1.0)).ln();
    let one_minus = 1.0f32 - (2.0f32 * log_mean).exp();
    Vp {
        alpha: log_mean.exp(),
        std: one_minus.sqrt(),
        lambda: log_mean - 0.5 * one_minus.ln(),
    }
}

/// Solves the small dense system `a x = b` (Gaussian elimination, partial pivoting), the
/// `torch.linalg.solve` of the UniPC coefficients (n <= 3).
pub(super) fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (dst, src) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *dst -= f * src;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// `UniPC.data_prediction_fn` through ComfyUI's `predict_eps_sigma`: x0 of the VP state at `sigma`.
fn data_prediction(ctx: &mut Ctx, x: &Tensor, sigma: f32) -> Res<Tensor> {
    let m = vp(sigma);
    let scale = (sigma * sigma + 1.0f32).sqrt();
    let x_in = ctx.lin(&[(x, scale as f64)])?;
    let denoised = ctx.model(&x_in, sigma as f64)?.cond;
    let eps = ctx.lin(&[
        (&x_in, 1.0 / sigma as f64),
        (&denoised, -1.0 / sigma as f64),
    ])?;
    ctx.lin(&[
        (x, 1.0 / m.alpha as f64),
        (&eps, -(m.std as f64) / m.alpha as f64),
    ])
}

/// `multistep_uni_pc_bh_update`: one step from the last of `ts` to `t` using the last `order`
/// model values. Returns the new state and, when the corrector ran, the model value at the
/// predicted state (ComfyUI keeps that one, not a re-evaluation at the corrected state).
#[allow(clippy::too_many_arguments)]
fn bh_update(
    ctx: &mut Ctx,
    x: &Tensor,
    models: &[Tensor],
    ts: &[f32],
    t: f32,
    order: usize,
    use_corrector: bool,
    bh2: bool,
) -> Res<(Tensor, Option<Tensor>)> {
    let n = models.len();
    let m0 = &models[n - 1];
    let p0 = vp(ts[n - 1]);
    let pt = vp(t);
    let h = pt.lambda - p0.lambda;
    let mut rks: Vec<f64> = Vec::with_capacity(order);
    let mut d1s: Vec<Tensor> = Vec::with_capacity(order);
    for i in 1..order {
        let rk = (vp(ts[n - 1 - i]).lambda - p0.lambda) / h;
        rks.push(rk as f64);
        d1s.push(ctx.lin(&[
            (&models[n - 1 - i], 1.0 / rk as f64),
            (m0, -1.0 / rk as f64),
        ])?);
    }
    rks.push(1.0);
    let hh = -(h as f64);
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let b_h = if bh2 { hh.exp_m1() } else { hh };
    let mut r_mat: Vec<Vec<f64>> = Vec::with_capacity(order);
    let mut b: Vec<f64> = Vec::with_capacity(order);
    let mut factorial = 1.0;
    for i in 1..=order {
        r_mat.push(rks.iter().map(|r| r.powi(i as i32 - 1)).collect());
        b.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    let (alpha_t, ratio) = (pt.alpha as f64, (pt.std / p0.std) as f64);
    let x_base = ctx.lin(&[(x, ratio), (m0, -alpha_t * h_phi_1)])?;
    let x_pred = if d1s.is_empty() {
        x_base.clone()
    } else {
        let rhos_p = if order == 2 {
            vec![0.5]
        } else {
            let sub: Vec<Vec<f64>> = r_mat[..order - 1]
                .iter()
                .map(|row| row[..order - 1].to_vec())
                .collect();
            solve(sub, b[..order - 1].to_vec())
        };
        let mut terms: Vec<(&Tensor, f64)> = vec![(&x_base, 1.0)];
        terms.extend(
            d1s.iter()
                .zip(&rhos_p)
                .map(|(d, r)| (d, -alpha_t * b_h * r)),
        );
        ctx.lin(&terms)?
    };
    if !use_corrector {
        return Ok((x_pred, None));
    }
    let rhos_c = if order == 1 {
        vec![0.5]
    } else {
        solve(r_mat, b)
    };
    let model_t = data_prediction(ctx, &x_pred, t)?;
    let c_last = rhos_c[rhos_c.len() - 1];
    let mut terms: Vec<(&Tensor, f64)> = vec![(&x_base, 1.0)];
    terms.extend(
        d1s.iter()
            .zip(&rhos_c)
            .map(|(d, r)| (d, -alpha_t * b_h * r)),
    );
    terms.push((&model_t, -alpha_t * b_h * c_last));
    terms.push((m0, alpha_t * b_h * c_last));
    let x_corr = ctx.lin(&terms)?;
    Ok((x_corr, Some(model_t)))
}

/// `sample_unipc(variant = bh1 | bh2)`. The callback runs after each step with ComfyUI's values:
/// the VP-scaled state after the step and the newest model value.
pub(super) fn uni_pc(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64], bh2: bool) -> Res<Tensor> {
    let mut ts: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
    let last = ts.len() - 1;
    if ts[last] == 0.0 {
        ts[last] = 0.001;
    }
    let steps = last;
    let order = 3.min(ts.len().saturating_sub(2));
    let mut x = ctx.lin(&[(x, 1.0 / (1.0f32 + ts[0] * ts[0]).sqrt() as f64)])?;
    let mut models: Vec<Tensor> = Vec::with_capacity(order.max(1));
    let mut t_prev: Vec<f32> = Vec::with_capacity(order.max(1));
    for step_index in 0..steps {
        if step_index == 0 {
            models.push(data_prediction(ctx, &x, ts[0])?);
            t_prev.push(ts[0]);
        } else if step_index < order {
            let t = ts[step_index];
            let (next, model_x) = bh_update(ctx, &x, &models, &t_prev, t, step_index, true, bh2)?;
            x = next;
            let model_x = match model_x {
                Some(m) => m,
                None => data_prediction(ctx, &x, t)?,
            };
            models.push(model_x);
            t_prev.push(t);
        } else {
            let extra_final = usize::from(step_index == steps - 1);
            #[allow(clippy::needless_range_loop)]
            for step in step_index..=step_index + extra_final {
                let t = ts[step];
                let step_order = order.min(steps + 1 - step);
                let use_corrector = step != steps;
                let (next, model_x) =
                    bh_update(ctx, &x, &models, &t_prev, t, step_order, use_corrector, bh2)?;
                x = next;
                // Shift the history; ComfyUI leaves the newest model slot holding the previous
                // value when the final step skips the model.
                let newest = match (step < steps, model_x) {
                    (true, Some(m)) => m,
                    (true, None) => data_prediction(ctx, &x, t)?,
                    (false, _) => models[models.len() - 1].clone(),
                };
                if models.len() >= order.max(1) {
                    models.remove(0);
                    t_prev.remove(0);
                }
                models.push(newest);
                t_prev.push(t);
            }
        }
        let newest = models[models.len() - 1].clone();
        ctx.step(step_index, &x, &newest, sigmas[step_index])?;
    }
    ctx.lin(&[(&x, 1.0 / vp(ts[last]).alpha as f64)])
}
