//! How ControlNet residuals are scaled, timed and combined, following ComfyUI's `comfy/controlnet.py`
//! (`ControlBase.control_merge`, `get_control`'s timestep range) and its `ControlNetApply*` nodes.
//!
//! - strength multiplies every residual (ComfyUI's default), or follows "soft injection"
//!   (lllyasviel's guess mode, A1111's "ControlNet is more important"): down residual `k` of `n`
//!   gets `strength * 0.825^(n - k)` and the mid residual `strength`, so for SD1 (n = 12) the
//!   familiar `0.825^(12 - k)`.
//! - shuffle ControlNets average every residual over space (ComfyUI turns this on for files named
//!   `*_shuffle`).
//! - several ControlNets on one cond sum their residuals.
//! - a control applies only while the sampling position is inside its [start, end] window.

use candle_core::{Result, Tensor};

use crate::engine::resize::{common_upscale, Crop, UpscaleMethod};
use crate::engine::unet::ControlResiduals;

/// The base of soft-injection scaling (lllyasviel `cldm`: `0.825 ** (12 - i)`).
pub const SOFT_INJECTION_BASE: f64 = 0.825;

/// How the strength is spread over the residuals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ControlScaling {
    /// Every residual times the strength (ComfyUI).
    Constant,
    /// Down residual `k` of `n` times `strength * base^(n - k)`, mid times `strength`.
    Soft { base: f64 },
}

/// The factor for each of `n_down` down residuals and for the mid residual.
pub fn residual_scales(n_down: usize, strength: f64, scaling: ControlScaling) -> (Vec<f64>, f64) {
    match scaling {
        ControlScaling::Constant => (vec![strength; n_down], strength),
        ControlScaling::Soft { base } => (
            (0..n_down)
                .map(|k| strength * base.powi((n_down - k) as i32))
                .collect(),
            strength,
        ),
    }
}

/// The residuals times the strength (see [`residual_scales`]), in their own dtype.
pub fn scale_residuals(
    residuals: &ControlResiduals,
    strength: f64,
    scaling: ControlScaling,
) -> Result<ControlResiduals> {
    let (down_scales, mid_scale) = residual_scales(residuals.down.len(), strength, scaling);
    let down = residuals
        .down
        .iter()
        .zip(down_scales)
        .map(|(t, s)| t.affine(s, 0.0))
        .collect::<Result<Vec<_>>>()?;
    Ok(ControlResiduals {
        down,
        mid: residuals.mid.affine(mid_scale, 0.0)?,
    })
}

/// Replaces every residual by its spatial mean, broadcast back to its size (ComfyUI's
/// `global_average_pooling`, used by shuffle ControlNets).
pub fn global_average_pool(residuals: &ControlResiduals) -> Result<ControlResiduals> {
    let pool = |t: &Tensor| -> Result<Tensor> {
        let (b, c, h, w) = t.dims4()?;
        t.mean_keepdim(3)?
            .mean_keepdim(2)?
            .broadcast_as((b, c, h, w))?
            .contiguous()
    };
    Ok(ControlResiduals {
        down: residuals.down.iter().map(pool).collect::<Result<_>>()?,
        mid: pool(&residuals.mid)?,
    })
}

/// The sum of two controls' residuals (several ControlNets applied to the same cond).
pub fn sum_residuals(a: &ControlResiduals, b: &ControlResiduals) -> Result<ControlResiduals> {
    if a.down.len() != b.down.len() {
        candle_core::bail!(
            "cannot combine controls with {} and {} down residuals",
            a.down.len(),
            b.down.len()
        );
    }
    let down = a
        .down
        .iter()
        .zip(&b.down)
        .map(|(x, y)| x + y.to_dtype(x.dtype())?)
        .collect::<Result<Vec<_>>>()?;
    Ok(ControlResiduals {
        down,
        mid: (&a.mid + b.mid.to_dtype(a.mid.dtype())?)?,
    })
}

/// Whether a control with window [`start`, `end`] (fractions of the schedule, ComfyUI's
/// `start_percent`/`end_percent`) applies at `sigma_percent`, the schedule position of the current
/// sigma (0 = first, 1 = last). Both ends are inclusive, as ComfyUI's sigma comparison is.
///
/// ComfyUI compares sigmas, not percents: it turns the window into sigmas with the model's
/// `percent_to_sigma` and skips the control when `sigma > sigma(start)` or `sigma < sigma(end)`;
/// [`active_at_sigma`] does exactly that when the caller has those sigmas.
pub fn active_at(sigma_percent: f64, start: f64, end: f64) -> bool {
    start <= sigma_percent && sigma_percent <= end
}

/// ComfyUI's test in sigma space: active while `sigma_end <= sigma <= sigma_start`, where
/// `sigma_start = percent_to_sigma(start)` (huge for start 0) and `sigma_end =
/// percent_to_sigma(end)` (0 for end 1).
pub fn active_at_sigma(sigma: f64, sigma_start: f64, sigma_end: f64) -> bool {
    !(sigma > sigma_start || sigma < sigma_end)
}

/// Resizes a hint image [B, C, H, W] (values in [0, 1]) to `ratio` times the latent size the way
/// ComfyUI's `get_control` does: nearest-exact, center crop to the target aspect first. ControlNets
/// use ratio 8.
pub fn prepare_hint(
    image: &Tensor,
    latent_h: usize,
    latent_w: usize,
    ratio: usize,
) -> Result<Tensor> {
    let (h, w) = (latent_h * ratio, latent_w * ratio);
    let (_, _, ih, iw) = image.dims4()?;
    if (ih, iw) == (h, w) {
        return Ok(image.clone());
    }
    common_upscale(image, w, h, UpscaleMethod::NearestExact, Crop::Center)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_scales_follow_cldm_guess_mode() {
        let (down, mid) = residual_scales(
            12,
            1.0,
            ControlScaling::Soft {
                base: SOFT_INJECTION_BASE,
            },
        );
        for (k, s) in down.iter().enumerate() {
            assert!((s - 0.825f64.powi(12 - k as i32)).abs() < 1e-12);
        }
        assert_eq!(mid, 1.0);
        let (down, mid) = residual_scales(9, 0.5, ControlScaling::Constant);
        assert_eq!(down, vec![0.5; 9]);
        assert_eq!(mid, 0.5);
    }

    #[test]
    fn window_is_inclusive() {
        assert!(active_at(0.0, 0.0, 1.0));
        assert!(active_at(1.0, 0.0, 1.0));
        assert!(active_at(0.5, 0.5, 0.5));
        assert!(!active_at(0.49, 0.5, 1.0));
        assert!(!active_at(0.81, 0.0, 0.8));
        assert!(active_at_sigma(14.6, 1e9, 0.0));
        assert!(!active_at_sigma(14.6, 10.0, 0.0));
        assert!(!active_at_sigma(0.5, 10.0, 1.0));
        assert!(active_at_sigma(1.0, 10.0, 1.0));
    }
}
