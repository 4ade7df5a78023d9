//! Gaussian-difference line extractors of comfyui_controlnet_aux: `Scribble_XDoG_Preprocessor`
//! (`ScribbleXDog_Detector`) and `LineartStandardPreprocessor` (`LineartStandardDetector`).

use candle_core::Tensor;

use super::aux::{detect_resolution, hwc3, resize_image_with_pad};
use super::cv::{gaussian_blur_f32, Interpolation};
use super::{run_aux, ImageU8, PreprocessError, Result};

/// Options of `Scribble_XDoG_Preprocessor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScribbleXdogOptions {
    /// `threshold`, 1..64 (default 32).
    pub threshold: u32,
    /// `resolution` (default 512).
    pub resolution: u32,
}

impl Default for ScribbleXdogOptions {
    fn default() -> Self {
        Self {
            threshold: 32,
            resolution: 512,
        }
    }
}

/// `Scribble_XDoG_Preprocessor`: `[B, H, W, C]` to `[B, H', W', 3]` of 0/1.
///
/// `g1 = blur(x, 0.5)`, `g2 = blur(x, 5.0)` (f32, per channel), `dog = uint8(clip(255 - min_c(g2 - g1)))`,
/// white where `2 * (255 - dog) > threshold`. That product is numpy uint8 arithmetic in the reference and
/// wraps modulo 256, so a very strong line (`255 - dog >= 128`) can come out black; kept as is.
pub fn scribble_xdog(image: &Tensor, opts: &ScribbleXdogOptions) -> Result<Tensor> {
    const OP: &str = "Scribble_XDoG_Preprocessor";
    let _span = tracing::trace_span!("scribble_xdog").entered();
    run_aux(OP, image, |img| {
        let p = resize_image_with_pad(
            OP,
            img,
            detect_resolution(opts.resolution),
            Interpolation::Cubic,
        )?;
        let (h, w, c) = (p.image.height, p.image.width, p.image.channels);
        let x: Vec<f32> = p.image.data.iter().map(|&v| v as f32).collect();
        let g1 = gaussian_blur_f32(&x, h, w, c, 0.5);
        let g2 = gaussian_blur_f32(&x, h, w, c, 5.0);
        let mut out = ImageU8::zeros(h, w, 1);
        for (i, o) in out.data.iter_mut().enumerate() {
            let m = (0..c)
                .map(|k| g2[i * c + k] - g1[i * c + k])
                .fold(f32::INFINITY, f32::min);
            let dog = (255.0 - m).clamp(0.0, 255.0) as u8;
            let v = (255 - dog).wrapping_mul(2);
            *o = if v as u32 > opts.threshold { 255 } else { 0 };
        }
        Ok(hwc3(&p.remove_pad(&out)))
    })
}

/// Options of `LineartStandardPreprocessor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineartStandardOptions {
    /// `guassian_sigma` (sic, the node's spelling), default 6.0.
    pub gaussian_sigma: f64,
    /// `intensity_threshold`, default 8.
    pub intensity_threshold: f32,
    /// `resolution` (default 512).
    pub resolution: u32,
}

impl Default for LineartStandardOptions {
    fn default() -> Self {
        Self {
            gaussian_sigma: 6.0,
            intensity_threshold: 8.0,
            resolution: 512,
        }
    }
}

/// `LineartStandardPreprocessor`: `[B, H, W, C]` to `[B, H', W', 3]`.
///
/// `intensity = clip(min_c(blur(x, sigma) - x), 0, 255)`, divided by `max(16, median(intensity[intensity >
/// threshold]))` (16 when no pixel passes: numpy's NaN median loses to 16 in Python's `max`), times 127,
/// clipped and truncated to uint8.
pub fn lineart_standard(image: &Tensor, opts: &LineartStandardOptions) -> Result<Tensor> {
    const OP: &str = "LineartStandardPreprocessor";
    let _span = tracing::trace_span!("lineart_standard").entered();
    if !(opts.gaussian_sigma > 0.0 && opts.gaussian_sigma <= 100.0) {
        return Err(PreprocessError::BadOption {
            op: OP,
            name: "guassian_sigma",
            reason: format!("must be in (0, 100], got {}", opts.gaussian_sigma),
        });
    }
    run_aux(OP, image, |img| {
        let p = resize_image_with_pad(
            OP,
            img,
            detect_resolution(opts.resolution),
            Interpolation::Cubic,
        )?;
        let (h, w, c) = (p.image.height, p.image.width, p.image.channels);
        let x: Vec<f32> = p.image.data.iter().map(|&v| v as f32).collect();
        let g = gaussian_blur_f32(&x, h, w, c, opts.gaussian_sigma);
        let intensity: Vec<f32> = (0..h * w)
            .map(|i| {
                (0..c)
                    .map(|k| g[i * c + k] - x[i * c + k])
                    .fold(f32::INFINITY, f32::min)
                    .clamp(0.0, 255.0)
            })
            .collect();
        let mut sel: Vec<f32> = intensity
            .iter()
            .copied()
            .filter(|&v| v > opts.intensity_threshold)
            .collect();
        let median = median_f32(&mut sel);
        let div = match median {
            Some(m) if m > 16.0 => m,
            _ => 16.0,
        };
        let mut out = ImageU8::zeros(h, w, 1);
        for (o, &v) in out.data.iter_mut().zip(&intensity) {
            *o = ((v / div) * 127.0).clamp(0.0, 255.0) as u8;
        }
        Ok(hwc3(&p.remove_pad(&out)))
    })
}

/// numpy's median of an f32 array: middle element, or the f32 mean of the two middle ones.
fn median_f32(v: &mut [f32]) -> Option<f32> {
    if v.is_empty() {
        return None;
    }
    // A selection, not a sort: a 512² map has up to 262k values.
    let n = v.len();
    let (below, &mut upper, _) = v.select_nth_unstable_by(n / 2, f32::total_cmp);
    Some(if n % 2 == 1 {
        upper
    } else {
        let lower = below.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (lower + upper) / 2.0
    })
}
