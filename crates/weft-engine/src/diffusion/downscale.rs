//! PatchModelAddDownscale (`comfy_extras/nodes_model_downscale.py`, "Kohya Deep Shrink"): while
//! sigma is inside a window, one input block's output is downscaled, and the up path scales its
//! hidden state back to the size of the skip it meets.

use candle_core::{DType, Device, Result, Tensor};

use super::patches::{InputBlockPatch, OutputBlockPatch};
use crate::resize::{common_upscale, Crop, UpscaleMethod};
use crate::sampling::schedulers::round_half_even;

/// The input-block half: shrink block `block`'s output by `factor` for sigmas in
/// `[sigma_end, sigma_start]`.
#[derive(Debug, Clone)]
pub struct DownscaleBlock {
    /// The LDM input block index.
    pub block: usize,
    /// Divisor of the width and height.
    pub factor: f64,
    /// The window's upper sigma (`percent_to_sigma(start_percent)`).
    pub sigma_start: f64,
    /// The window's lower sigma (`percent_to_sigma(end_percent)`).
    pub sigma_end: f64,
    /// How to shrink.
    pub method: UpscaleMethod,
}

impl InputBlockPatch for DownscaleBlock {
    fn patch(&self, h: Tensor, block: usize, sigma: f64) -> Result<Tensor> {
        if block != self.block || sigma > self.sigma_start || sigma < self.sigma_end {
            return Ok(h);
        }
        let (_, _, height, width) = h.dims4()?;
        // Python's round() of `size * (1 / factor)`.
        let scale = 1.0 / self.factor;
        let w = round_half_even(width as f64 * scale) as usize;
        let hh = round_half_even(height as f64 * scale) as usize;
        resize(&h, w.max(1), hh.max(1), self.method)
    }
}

/// The output-block half: bring `h` to the skip's size when they differ.
#[derive(Debug, Clone)]
pub struct UpscaleToSkip {
    /// How to grow.
    pub method: UpscaleMethod,
}

impl OutputBlockPatch for UpscaleToSkip {
    fn patch(&self, h: Tensor, skip: Tensor) -> Result<(Tensor, Tensor)> {
        let (_, _, sh, sw) = skip.dims4()?;
        if h.dim(2)? == sh {
            return Ok((h, skip));
        }
        Ok((resize(&h, sw, sh, self.method)?, skip))
    }
}

/// `common_upscale` on the host in f32, back to `h`'s device and dtype.
fn resize(h: &Tensor, width: usize, height: usize, method: UpscaleMethod) -> Result<Tensor> {
    let host = h.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    common_upscale(&host, width, height, method, Crop::Disabled)?
        .to_device(h.device())?
        .to_dtype(h.dtype())
}
