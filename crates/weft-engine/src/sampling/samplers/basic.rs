//! Karras-ODE samplers in sigma space: euler, heun, heunpp2, dpm_2, lms (`sample_euler` etc.).
//! `d = (x - D) / sigma` is the ODE derivative; every step moves `x` by `d * (sigma_next - sigma)`.
//! The churn options (`s_churn`) stay at ComfyUI's defaults (0), so no noise is drawn.

use candle_core::Tensor;

use crate::sampling::samplers::{Ctx, Res};

fn to_d(ctx: &Ctx, x: &Tensor, sigma: f64, denoised: &Tensor) -> Res<Tensor> {
    ctx.lin(&[(x, 1.0 / sigma), (denoised, -1.0 / sigma)])
}

pub(super) fn euler(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        let d = to_d(ctx, &x, sigmas[i], &denoised)?;
        x = ctx.lin(&[(&x, 1.0), (&d, sigmas[i + 1] - sigmas[i])])?;
    }
    Ok(x)
}

pub(super) fn heun(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        let d = to_d(ctx, &x, sigmas[i], &denoised)?;
        let dt = sigmas[i + 1] - sigmas[i];
        if sigmas[i + 1] == 0.0 {
            x = ctx.lin(&[(&x, 1.0), (&d, dt)])?;
        } else {
            let x2 = ctx.lin(&[(&x, 1.0), (&d, dt)])?;
            let denoised2 = ctx.model(&x2, sigmas[i + 1])?.cond;
            let d2 = to_d(ctx, &x2, sigmas[i + 1], &denoised2)?;
            x = ctx.lin(&[(&x, 1.0), (&d, dt / 2.0), (&d2, dt / 2.0)])?;
        }
    }
    Ok(x)
}

/// `sample_heunpp2`: Heun++ with weights from `sigmas[0]`; plain Heun on the penultimate step.
pub(super) fn heunpp2(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    let s_end = sigmas[sigmas.len() - 1];
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        let d = to_d(ctx, &x, sigmas[i], &denoised)?;
        let dt = sigmas[i + 1] - sigmas[i];
        if sigmas[i + 1] == s_end {
            x = ctx.lin(&[(&x, 1.0), (&d, dt)])?;
        } else if sigmas[i + 2] == s_end {
            let x2 = ctx.lin(&[(&x, 1.0), (&d, dt)])?;
            let denoised2 = ctx.model(&x2, sigmas[i + 1])?.cond;
            let d2 = to_d(ctx, &x2, sigmas[i + 1], &denoised2)?;
            let w2 = sigmas[i + 1] / (2.0 * sigmas[0]);
            let w1 = 1.0 - w2;
            x = ctx.lin(&[(&x, 1.0), (&d, w1 * dt), (&d2, w2 * dt)])?;
        } else {
            let x2 = ctx.lin(&[(&x, 1.0), (&d, dt)])?;
            let denoised2 = ctx.model(&x2, sigmas[i + 1])?.cond;
            let d2 = to_d(ctx, &x2, sigmas[i + 1], &denoised2)?;
            let dt2 = sigmas[i + 2] - sigmas[i + 1];
            let x3 = ctx.lin(&[(&x2, 1.0), (&d2, dt2)])?;
            let denoised3 = ctx.model(&x3, sigmas[i + 2])?.cond;
            let d3 = to_d(ctx, &x3, sigmas[i + 2], &denoised3)?;
            let w = 3.0 * sigmas[0];
            let w2 = sigmas[i + 1] / w;
            let w3 = sigmas[i + 2] / w;
            let w1 = 1.0 - w2 - w3;
            x = ctx.lin(&[(&x, 1.0), (&d, w1 * dt), (&d2, w2 * dt), (&d3, w3 * dt)])?;
        }
    }
    Ok(x)
}

/// `sample_dpm_2`: midpoint in log sigma (geometric mean of sigma and sigma_next).
pub(super) fn dpm_2(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let mut x = x.clone();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        ctx.step(i, &x, &denoised, sigmas[i])?;
        let d = to_d(ctx, &x, sigmas[i], &denoised)?;
        if sigmas[i + 1] == 0.0 {
            x = ctx.lin(&[(&x, 1.0), (&d, sigmas[i + 1] - sigmas[i])])?;
        } else {
            let sigma_mid = (0.5 * (sigmas[i].ln() + sigmas[i + 1].ln())).exp();
            let x2 = ctx.lin(&[(&x, 1.0), (&d, sigma_mid - sigmas[i])])?;
            let denoised2 = ctx.model(&x2, sigma_mid)?.cond;
            let d2 = to_d(ctx, &x2, sigma_mid, &denoised2)?;
            x = ctx.lin(&[(&x, 1.0), (&d2, sigmas[i + 1] - sigmas[i])])?;
        }
    }
    Ok(x)
}

/// Integral over [t[i], t[i+1]] of the j-th Lagrange basis polynomial through t[i], ..., t[i-order+1].
/// ComfyUI uses scipy `quad`, which is exact for these (degree `order - 1`) polynomials; so is the
/// Gauss-Legendre rule used here, with enough points for the degree (`n` points: exact to `2n - 1`).
fn linear_multistep_coeff(order: usize, t: &[f64], i: usize, j: usize) -> f64 {
    let (a, b) = (t[i], t[i + 1]);
    let basis = |tau: f64| {
        let mut prod = 1.0;
        for k in 0..order {
            if k != j {
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k]);
            }
        }
        prod
    };
    let half = 0.5 * (b - a);
    let mid = 0.5 * (a + b);
    gauss_legendre(order.div_ceil(2).max(4))
        .into_iter()
        .map(|(n, w)| w * basis(mid + half * n))
        .sum::<f64>()
        * half
}

/// The `n`-point Gauss-Legendre nodes and weights on [-1, 1] (Newton's method on P_n).
fn gauss_legendre(n: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|k| {
            let mut x = (std::f64::consts::PI * (k as f64 + 0.75) / (n as f64 + 0.5)).cos();
            let mut derivative = 1.0;
            for _ in 0..100 {
                // P_n(x) and P_n'(x) by the three-term recurrence.
                let (mut p0, mut p1) = (1.0, x);
                for m in 2..=n {
                    let p2 = ((2 * m - 1) as f64 * x * p1 - (m - 1) as f64 * p0) / m as f64;
                    p0 = p1;
                    p1 = p2;
                }
                derivative = n as f64 * (x * p1 - p0) / (x * x - 1.0);
                let dx = p1 / derivative;
                x -= dx;
                if dx.abs() < 1e-15 {
                    break;
                }
            }
            (x, 2.0 / ((1.0 - x * x) * derivative * derivative))
        })
        .collect()
}

/// `sample_lms` (option `order`, default 4): linear multistep on the stored derivatives; the last step returns D.
pub(super) fn lms(ctx: &mut Ctx, x: &Tensor, sigmas: &[f64]) -> Res<Tensor> {
    let order = ctx.opts.order.unwrap_or(4).max(1);
    // ComfyUI integrates on the f32 sigma table as numpy values.
    let mut x = x.clone();
    let mut ds: Vec<Tensor> = Vec::new();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.model(&x, sigmas[i])?.cond;
        let d = to_d(ctx, &x, sigmas[i], &denoised)?;
        ds.push(d);
        if ds.len() > order {
            ds.remove(0);
        }
        ctx.step(i, &x, &denoised, sigmas[i])?;
        if sigmas[i + 1] == 0.0 {
            x = denoised;
        } else {
            let cur_order = (i + 1).min(order);
            let mut terms: Vec<(&Tensor, f64)> = vec![(&x, 1.0)];
            for (j, d) in ds.iter().rev().enumerate().take(cur_order) {
                terms.push((d, linear_multistep_coeff(cur_order, sigmas, i, j)));
            }
            x = ctx.lin(&terms)?;
        }
    }
    Ok(x)
}
