//! The CFG-level patches of ComfyUI's guidance nodes, as [`patches`](super::patches) hooks:
//! RescaleCFG (`nodes_model_advanced.py`), CFGZeroStar (`nodes_cfg.py`), Epsilon Scaling
//! (`nodes_eps.py`), APG (`nodes_apg.py`), TCFG (`nodes_tcfg.py`), Perp-Neg (`nodes_perpneg.py`)
//! and PerturbedAttentionGuidance (`nodes_pag.py`).

use std::sync::{Arc, Mutex};

use candle_core::{Result, Tensor};

use super::patches::{batch, AttentionReplace, CfgArgs, CfgFunction, PostCfg, PreCfg};
use super::{CondEntry, LatentOperation};

/// RescaleCFG: CFG in v-prediction space, its std rescaled towards the positive prediction's
/// (`multiplier` 0 = plain CFG).
#[derive(Debug, Clone)]
pub struct RescaleCfg {
    /// How much of the rescaled result to use (0 to 1).
    pub multiplier: f64,
}

impl CfgFunction for RescaleCfg {
    fn cfg(&self, args: &CfgArgs<'_>) -> Result<Tensor> {
        let Some(uncond) = args.uncond else {
            return Ok(args.cond.clone());
        };
        if self.multiplier == 0.0 {
            // The formula reduces to plain CFG; computing it as such keeps the image identical to
            // the unpatched one.
            return uncond + ((args.cond - uncond)? * args.cond_scale)?;
        }
        let s = args.sigma;
        let root = (s * s + 1.0).sqrt();
        // x / (s^2 + 1) minus the v-prediction of each side: v = (x/(s^2+1) - D) * sqrt(s^2+1) / s.
        let x = args.x.affine(1.0 / (s * s + 1.0), 0.0)?;
        let to_v = |d: &Tensor| -> Result<Tensor> { (&x - d)?.affine(root / s, 0.0) };
        let (cond_v, uncond_v) = (to_v(args.cond)?, to_v(uncond)?);
        let x_cfg = (&uncond_v + ((&cond_v - &uncond_v)? * args.cond_scale)?)?;
        let ro_pos = batch::std(&cond_v)?;
        let ro_cfg = batch::std(&x_cfg)?;
        let ratio: Vec<f64> = ro_pos.iter().zip(&ro_cfg).map(|(p, c)| p / c).collect();
        let rescaled = batch::scale(&x_cfg, &ratio)?;
        let m = self.multiplier;
        let x_final = (rescaled.affine(m, 0.0)? + x_cfg.affine(1.0 - m, 0.0)?)?;
        // ComfyUI returns x_orig - (x - x_final * s / root); the denoised result is its complement.
        &x - x_final.affine(s / root, 0.0)?
    }
}

/// CFGZeroStar: scales the negative prediction by the optimal `alpha = <c, u> / |u|^2` of the
/// noise predictions (`c = x - cond`, `u = x - uncond`).
#[derive(Debug, Clone, Copy)]
pub struct CfgZeroStar;

impl PostCfg for CfgZeroStar {
    fn post_cfg(&self, args: &CfgArgs<'_>, denoised: Tensor) -> Result<Tensor> {
        // Without a negative prediction ComfyUI's uncond_denoised is zero: nothing changes.
        let Some(uncond) = args.uncond else {
            return Ok(denoised);
        };
        let pos = (args.x - args.cond)?;
        let neg = (args.x - uncond)?;
        let dot = batch::dot(&pos, &neg)?;
        let norm = batch::dot(&neg, &neg)?;
        // out + uncond * (alpha - 1) + scale * uncond * (1 - alpha)
        let k: Vec<f64> = dot
            .iter()
            .zip(&norm)
            .map(|(d, n)| (d / (n + 1e-8) - 1.0) * (1.0 - args.cond_scale))
            .collect();
        denoised + batch::scale(uncond, &k)?
    }
}

/// Epsilon Scaling: divides the predicted noise `x - denoised` by `scaling_factor`.
#[derive(Debug, Clone)]
pub struct EpsilonScaling {
    /// The divisor of the predicted noise (1 = no change).
    pub scaling_factor: f64,
}

impl PostCfg for EpsilonScaling {
    fn post_cfg(&self, args: &CfgArgs<'_>, denoised: Tensor) -> Result<Tensor> {
        if self.scaling_factor == 1.0 {
            // No change; skipping `x - (x - denoised)` keeps the result bit-identical.
            return Ok(denoised);
        }
        let factor = if self.scaling_factor == 0.0 {
            1e-9
        } else {
            self.scaling_factor
        };
        args.x - (args.x - denoised)?.affine(1.0 / factor, 0.0)?
    }
}

/// A pre-CFG hook that needs both predictions, as APG's and TCFG's, which return their input
/// when the negative side was skipped.
trait PairPreCfg: Send + Sync + std::fmt::Debug {
    fn pre_cfg_pair(
        &self,
        args: &CfgArgs<'_>,
        cond: Tensor,
        uncond: Tensor,
    ) -> Result<(Tensor, Tensor)>;
}

impl<T: PairPreCfg> PreCfg for T {
    fn pre_cfg(
        &self,
        args: &CfgArgs<'_>,
        cond: Tensor,
        uncond: Option<Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        match uncond {
            Some(uncond) => {
                let (cond, uncond) = self.pre_cfg_pair(args, cond, uncond)?;
                Ok((cond, Some(uncond)))
            }
            None => Ok((cond, None)),
        }
    }
}

/// APG (Adaptive Projected Guidance): the guidance `cond - uncond`, optionally averaged with
/// momentum and norm-clipped, split into the part parallel to `cond` (scaled by `eta`) and the
/// orthogonal rest.
#[derive(Debug)]
pub struct Apg {
    /// Scale of the guidance parallel to the positive prediction (1 = plain CFG's).
    pub eta: f64,
    /// The guidance's norm is clipped to this (0 = no clipping).
    pub norm_threshold: f64,
    /// Weight of the running average of the guidance (0 = none).
    pub momentum: f64,
    /// The running average and the last sigma; ComfyUI keeps them in the patch's closure, so
    /// they persist across runs and restart when sigma goes up.
    state: Mutex<(Option<Tensor>, Option<f64>)>,
}

impl Apg {
    /// A fresh patch (no running average yet).
    pub fn new(eta: f64, norm_threshold: f64, momentum: f64) -> Self {
        Apg {
            eta,
            norm_threshold,
            momentum,
            state: Mutex::new((None, None)),
        }
    }
}

impl PairPreCfg for Apg {
    fn pre_cfg_pair(
        &self,
        args: &CfgArgs<'_>,
        cond: Tensor,
        uncond: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let mut guidance = (&cond - &uncond)?;
        {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (running, prev_sigma) = &mut *state;
            if prev_sigma.is_some_and(|p| args.sigma > p) {
                *running = None;
            }
            *prev_sigma = Some(args.sigma);
            if self.momentum > 0.0 {
                let avg = match running.take() {
                    None => guidance.clone(),
                    Some(avg) => (avg.affine(self.momentum, 0.0)? + &guidance)?,
                };
                guidance = avg.clone();
                *running = Some(avg);
            }
        }
        if self.norm_threshold > 0.0 {
            let norms = batch::dot(&guidance, &guidance)?;
            let scales: Vec<f64> = norms
                .iter()
                .map(|n| (self.norm_threshold / n.sqrt()).min(1.0))
                .collect();
            guidance = batch::scale(&guidance, &scales)?;
        }
        // project(guidance, cond): v1 = cond / max(|cond|, 1e-12) per batch element.
        let cond_norm: Vec<f64> = batch::dot(&cond, &cond)?
            .into_iter()
            .map(|n| 1.0 / n.sqrt().max(1e-12))
            .collect();
        let v1 = batch::scale(&cond, &cond_norm)?;
        let parallel = batch::scale(&v1, &batch::dot(&guidance, &v1)?)?;
        let orthogonal = (&guidance - &parallel)?;
        let modified = (orthogonal + parallel.affine(self.eta, 0.0)?)?;
        let new_cond =
            ((&uncond + modified)? + (&cond - &uncond)?.affine(1.0 / args.cond_scale, 0.0)?)?;
        Ok((new_cond, uncond))
    }
}

/// TCFG (Tangential Damping CFG): keeps only the part of the negative noise prediction along the
/// first right-singular vector of `[uncond_score; cond_score]`.
#[derive(Debug, Clone, Copy)]
pub struct Tcfg;

impl PairPreCfg for Tcfg {
    fn pre_cfg_pair(
        &self,
        args: &CfgArgs<'_>,
        cond: Tensor,
        uncond: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let c = (args.x - &cond)?;
        let u = (args.x - &uncond)?;
        let (uu, cc, uc) = (
            batch::dot(&u, &u)?,
            batch::dot(&c, &c)?,
            batch::dot(&u, &c)?,
        );
        // The top eigenvector (a, b) of the 2x2 Gram matrix A A^T gives v1 = (a u + b c) / s1 with
        // s1^2 its eigenvalue; then (u . v1) v1 = (a uu + b uc) / s1^2 * (a u + b c). The sign of
        // v1 cancels, as with torch's SVD.
        let mut ka = Vec::with_capacity(uu.len());
        let mut kb = Vec::with_capacity(uu.len());
        for i in 0..uu.len() {
            let (p, q, r) = (uu[i], cc[i], uc[i]);
            let half = 0.5 * (p - q);
            let lambda = 0.5 * (p + q) + (half * half + r * r).sqrt();
            let (mut a, mut b) = if r.abs() > 0.0 {
                (lambda - q, r)
            } else if p >= q {
                (1.0, 0.0)
            } else {
                (0.0, 1.0)
            };
            let len = (a * a + b * b).sqrt();
            if len > 0.0 {
                a /= len;
                b /= len;
            }
            let k = if lambda > 0.0 {
                (a * p + b * r) / lambda
            } else {
                0.0
            };
            ka.push(k * a);
            kb.push(k * b);
        }
        let u_td = (batch::scale(&u, &ka)? + batch::scale(&c, &kb)?)?;
        Ok((cond, (args.x - u_td)?))
    }
}

/// ComfyUI's `perp_neg` on denoised predictions: with `pos = cond - empty` and
/// `neg = uncond - empty`, the part of `neg` perpendicular to `pos` (projections over the whole
/// batch, as torch's `sum()` and `norm()`), scaled by `neg_scale`, is subtracted:
/// `empty + cfg * (pos - neg_scale * perp)`.
pub fn perp_neg(
    cond: &Tensor,
    uncond: &Tensor,
    empty: &Tensor,
    neg_scale: f64,
    cond_scale: f64,
) -> Result<Tensor> {
    let pos = (cond - empty)?;
    let neg = (uncond - empty)?;
    let whole = |a: &Tensor, b: &Tensor| -> Result<f64> {
        (a * b)?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()
    };
    let k = whole(&neg, &pos)? / whole(&pos, &pos)?;
    let perp = (&neg - pos.affine(k, 0.0)?)?;
    empty + (pos - perp.affine(neg_scale, 0.0)?)?.affine(cond_scale, 0.0)?
}

/// The PerpNeg node's CFG function: Perp-Neg against the prediction for `empty`.
#[derive(Debug, Clone)]
pub struct PerpNeg {
    /// The empty prompt (`empty_conditioning`), evaluated as an extra conditioning.
    pub empty: [Arc<Vec<CondEntry>>; 1],
    /// Weight of the perpendicular negative.
    pub neg_scale: f64,
}

impl CfgFunction for PerpNeg {
    fn cfg(&self, args: &CfgArgs<'_>) -> Result<Tensor> {
        let (Some(uncond), Some(empty)) = (args.uncond, args.extra.first()) else {
            return Ok(args.cond.clone());
        };
        perp_neg(args.cond, uncond, empty, self.neg_scale, args.cond_scale)
    }

    fn extra_conds(&self) -> &[Arc<Vec<CondEntry>>] {
        &self.empty
    }
}

/// PerturbedAttentionGuidance: the positive prediction is computed again with the middle block's
/// self-attention replaced by its values (identity attention), and the combined prediction moves
/// away from that perturbed one: `denoised + (cond - perturbed) * scale`.
#[derive(Debug, Clone)]
pub struct PerturbedAttention {
    /// Guidance scale (0 = off).
    pub scale: f64,
}

/// PAG's `perturbed_attention`: the attention output is `v`.
#[derive(Debug, Clone, Copy)]
struct IdentityAttention;

impl AttentionReplace for IdentityAttention {
    fn attention(&self, _q: &Tensor, _k: &Tensor, v: &Tensor, _heads: usize) -> Result<Tensor> {
        Ok(v.clone())
    }
}

impl PostCfg for PerturbedAttention {
    fn post_cfg(&self, args: &CfgArgs<'_>, denoised: Tensor) -> Result<Tensor> {
        let Some(eval) = args.eval_positive else {
            candle_core::bail!("PerturbedAttentionGuidance needs the model to run again");
        };
        if self.scale == 0.0 {
            return Ok(denoised);
        }
        let perturbed = eval(&|unet| unet.mid_self_attention = Some(Arc::new(IdentityAttention)))?;
        denoised + (args.cond - perturbed)?.affine(self.scale, 0.0)?
    }
}

/// LatentApplyOperationCFG's pre-CFG function: the operation applied to the guidance
/// `cond - uncond` (the negative added back), or to `cond` when the negative side was skipped.
#[derive(Debug, Clone)]
pub struct CfgOperation(pub Arc<dyn LatentOperation>);

impl PreCfg for CfgOperation {
    fn pre_cfg(
        &self,
        _args: &CfgArgs<'_>,
        cond: Tensor,
        uncond: Option<Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let cond = match &uncond {
            Some(uncond) => (self.0.apply(&(&cond - uncond)?)? + uncond)?,
            None => self.0.apply(&cond)?,
        };
        Ok((cond, uncond))
    }
}
