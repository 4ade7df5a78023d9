//! comfyui_controlnet_aux `BinaryPreprocessor` (`BinaryDetector`): grey threshold, Otsu for 0 or 255.

use candle_core::Tensor;

use super::aux::{detect_resolution, hwc3, resize_image_with_pad};
use super::cv::{otsu_threshold, rgb_to_gray, Interpolation};
use super::{run_aux, ImageU8, PreprocessError, Result};

const OP: &str = "BinaryPreprocessor";

/// Options of `BinaryPreprocessor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BinaryOptions {
    /// `bin_threshold`, 0..255 (default 100); 0 or 255 selects Otsu's threshold.
    pub bin_threshold: u32,
    /// `resolution` (default 512).
    pub resolution: u32,
}

impl Default for BinaryOptions {
    fn default() -> Self {
        Self {
            bin_threshold: 100,
            resolution: 512,
        }
    }
}

/// `BinaryPreprocessor`: `[B, H, W, C]` to `[B, H', W', 3]`, white where the OpenCV grey value is above the
/// threshold (`255 - THRESH_BINARY_INV`).
pub fn binary(image: &Tensor, opts: &BinaryOptions) -> Result<Tensor> {
    let _span = tracing::trace_span!("binary").entered();
    if opts.bin_threshold > 255 {
        return Err(PreprocessError::BadOption {
            op: OP,
            name: "bin_threshold",
            reason: format!("must be in 0..=255, got {}", opts.bin_threshold),
        });
    }
    run_aux(OP, image, |img| {
        let p = resize_image_with_pad(
            OP,
            img,
            detect_resolution(opts.resolution),
            Interpolation::Cubic,
        )?;
        let gray = rgb_to_gray(&p.image);
        let t = if opts.bin_threshold == 0 || opts.bin_threshold == 255 {
            otsu_threshold(&gray)
        } else {
            opts.bin_threshold as u8
        };
        let out = ImageU8 {
            height: gray.height,
            width: gray.width,
            channels: 1,
            data: gray
                .data
                .iter()
                .map(|&g| if g > t { 255 } else { 0 })
                .collect(),
        };
        Ok(hwc3(&p.remove_pad(&out)))
    })
}
