//! comfyui_controlnet_aux `TilePreprocessor` (`TileDetector`): area downscale then `pyrUp` back.

use candle_core::Tensor;

use super::aux::hwc3;
use super::cv::{pyr_up, resize, Interpolation};
use super::{run_aux, PreprocessError, Result};

const OP: &str = "TilePreprocessor";

/// Options of `TilePreprocessor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileOptions {
    /// `pyrUp_iters`, 1..10 (default 3).
    pub pyr_up_iters: u32,
}

impl Default for TileOptions {
    fn default() -> Self {
        Self { pyr_up_iters: 3 }
    }
}

/// `TilePreprocessor`: `[B, H, W, C]` to `[B, H64, W64, 3]` with `H64 = round(H / 64) * 64` (half to even).
///
/// The node's `resolution` input reaches the detector but the detector ignores it (it never calls
/// `resize_image_with_pad`), so it is not an option here. The image is resized with INTER_AREA to
/// `(W64 / 2^n, H64 / 2^n)` and `pyrUp` n times.
pub fn tile(image: &Tensor, opts: &TileOptions) -> Result<Tensor> {
    let _span = tracing::trace_span!("tile").entered();
    if !(1..=10).contains(&opts.pyr_up_iters) {
        return Err(PreprocessError::BadOption {
            op: OP,
            name: "pyrUp_iters",
            reason: format!("must be in 1..=10, got {}", opts.pyr_up_iters),
        });
    }
    run_aux(OP, image, |img| {
        let img = hwc3(img);
        let h64 = (img.height as f64 / 64.0).round_ties_even() as usize * 64;
        let w64 = (img.width as f64 / 64.0).round_ties_even() as usize * 64;
        let (sh, sw) = (h64 >> opts.pyr_up_iters, w64 >> opts.pyr_up_iters);
        if sh < 2 || sw < 2 {
            return Err(PreprocessError::TooSmall {
                op: OP,
                height: img.height,
                width: img.width,
                reason: "tile size is empty",
            });
        }
        let mut m = resize(&img, sw, sh, Interpolation::Area);
        for _ in 0..opts.pyr_up_iters {
            m = pyr_up(&m);
        }
        Ok(m)
    })
}
