//! comfyui_controlnet_aux `ColorPreprocessor` (`ColorDetector`, T2I colour palette).

use candle_core::Tensor;

use super::aux::{detect_resolution, hwc3};
use super::cv::{resize, Interpolation};
use super::{run_aux, PreprocessError, Result};

const OP: &str = "ColorPreprocessor";

/// Options of `ColorPreprocessor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorOptions {
    /// `resolution` (default 512).
    pub resolution: u32,
}

impl Default for ColorOptions {
    fn default() -> Self {
        Self { resolution: 512 }
    }
}

/// `ColorPreprocessor`: `[B, H, W, C]` to `[B, H', W', 3]`.
///
/// No padding here (unlike the other aux nodes): the short side is resized to `resolution` with INTER_AREA
/// (`cv2_resize_shortest_edge`, long side `round(long / short * res)`), shrunk to `(w // 64, h // 64)` with
/// INTER_CUBIC and blown back up with INTER_NEAREST, giving 64x64 colour blocks.
pub fn color(image: &Tensor, opts: &ColorOptions) -> Result<Tensor> {
    let _span = tracing::trace_span!("color").entered();
    run_aux(OP, image, |img| {
        let img = hwc3(img);
        let res = detect_resolution(opts.resolution);
        let (h, w) = (img.height, img.width);
        let (nh, nw) = if h < w {
            (
                res,
                (w as f64 / h as f64 * res as f64).round_ties_even() as usize,
            )
        } else {
            (
                (h as f64 / w as f64 * res as f64).round_ties_even() as usize,
                res,
            )
        };
        let img = resize(&img, nw, nh, Interpolation::Area);
        if nw < 64 || nh < 64 {
            return Err(PreprocessError::TooSmall {
                op: OP,
                height: nh,
                width: nw,
                reason: "needs 64x64 after resizing",
            });
        }
        let small = resize(&img, nw / 64, nh / 64, Interpolation::Cubic);
        Ok(hwc3(&resize(&small, nw, nh, Interpolation::Nearest)))
    })
}
