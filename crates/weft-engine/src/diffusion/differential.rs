//! Differential Diffusion (`comfy_extras/nodes_differential_diffusion.py`): a soft inpainting
//! mask becomes, at each step, the binary mask of the pixels whose value reaches the step's
//! progress through the schedule, so stronger mask values are resampled for longer.

use candle_core::{DType, Result, Tensor};

use super::patches::DenoiseMaskFunction;
use crate::sampling::model_sampling::ModelSamplingDiscrete;

/// The patch; `strength` below 1 blends the binary mask with the original one.
#[derive(Debug, Clone)]
pub struct DifferentialDiffusion {
    /// 1 = the binary mask alone; 0 = the original mask (ComfyUI treats 0 as 1, see `mask`).
    pub strength: f64,
}

impl DenoiseMaskFunction for DifferentialDiffusion {
    fn mask(
        &self,
        sigma: f64,
        mask: &Tensor,
        schedule: &[f64],
        sampling: &ModelSamplingDiscrete,
    ) -> Result<Tensor> {
        let (Some(&first), Some(&last)) = (schedule.first(), schedule.last()) else {
            return Ok(mask.clone());
        };
        let sigma_min = sampling.sigma_min() as f64;
        let sigma_to = if last > sigma_min { last } else { sigma_min };
        let ts = |s: f64| sampling.timestep(s as f32);
        let (ts_from, ts_to, current) = (ts(first), ts(sigma_to), ts(sigma));
        // Integer timesteps divided as torch does (true division, NaN/inf when from == to).
        let threshold = (current - ts_to) / (ts_from - ts_to);
        let binary = mask.ge(threshold as f64)?.to_dtype(DType::F32)?;
        // ComfyUI's `if strength and strength < 1`: 0 counts as "not set".
        if self.strength != 0.0 && self.strength < 1.0 {
            binary.affine(self.strength, 0.0)? + mask.affine(1.0 - self.strength, 0.0)?
        } else {
            Ok(binary)
        }
    }
}
