//! Normal map from a depth image, by the MiDaS annotator's gradient formula (ControlNet
//! `annotator/midas/__init__.py`, kept in comfyui_controlnet_aux's `MidasDetector` normal path).
//!
//! Reference chosen: that formula applied to a depth IMAGE instead of the network's raw prediction:
//! `depth = channel 0 as f32 0..255`, `x = Sobel_x(depth)`, `y = Sobel_y(depth)` (3x3, reflect-101),
//! `z = 2 pi`, x and y zeroed where the min-max normalised depth is below `bg_threshold`, the vector
//! normalised, and `uint8(clip(n * 127.5 + 127.5))` per component (R = x, G = y, B = z).
//! Because the input is a 0..255 depth image, the slope scale differs from MiDaS's raw depth (whose
//! magnitude is model dependent), so the same image gives flatter normals than the Midas node would.

use candle_core::Tensor;

use super::aux::{detect_resolution, resize_image_with_pad};
use super::cv::{sobel3_f32, Interpolation};
use super::{run_aux, ImageU8, Result};

const OP: &str = "NormalFromDepth";

/// Options of the normal-from-depth preprocessor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormalFromDepthOptions {
    /// `bg_threshold` on the min-max normalised depth (MiDaS default 0.1).
    pub bg_threshold: f32,
    /// The constant z component (`a`, MiDaS default 2 pi).
    pub a: f32,
    /// `resolution` (default 512).
    pub resolution: u32,
}

impl Default for NormalFromDepthOptions {
    fn default() -> Self {
        Self {
            bg_threshold: 0.1,
            a: (std::f64::consts::PI * 2.0) as f32,
            resolution: 512,
        }
    }
}

/// Normal map `[B, H', W', 3]` from a depth image `[B, H, W, C]` (channel 0 is the depth, near = bright).
pub fn normal_from_depth(image: &Tensor, opts: &NormalFromDepthOptions) -> Result<Tensor> {
    let _span = tracing::trace_span!("normal_from_depth").entered();
    run_aux(OP, image, |img| {
        let p = resize_image_with_pad(
            OP,
            img,
            detect_resolution(opts.resolution),
            Interpolation::Cubic,
        )?;
        let (h, w, c) = (p.image.height, p.image.width, p.image.channels);
        let depth: Vec<f32> = p
            .image
            .data
            .chunks_exact(c)
            .map(|px| px[0] as f32)
            .collect();
        let mut out = ImageU8::zeros(h, w, 3);
        for (px, n) in out.data.chunks_exact_mut(3).zip(gradient_normals(
            &depth,
            h,
            w,
            opts.a,
            opts.bg_threshold,
        )) {
            px.copy_from_slice(&n);
        }
        Ok(p.remove_pad(&out))
    })
}

/// MiDaS's normal of a depth plane (`MidasDetector.__call__`'s `depth_and_normal` branch, numpy in
/// f32): the 3x3 Sobel gradients x and y (reflect-101), zeroed where the min-max normalised depth
/// is below `bg_threshold`, with `z = a`, normalised, as `uint8(clip(n * 127.5 + 127.5))` per
/// component `[x, y, z]`.
pub fn gradient_normals(
    depth: &[f32],
    h: usize,
    w: usize,
    a: f32,
    bg_threshold: f32,
) -> Vec<[u8; 3]> {
    let min = depth.iter().copied().fold(f32::INFINITY, f32::min);
    let max_shifted = depth
        .iter()
        .map(|&d| d - min)
        .fold(f32::NEG_INFINITY, f32::max);
    let gx = sobel3_f32(depth, h, w, true);
    let gy = sobel3_f32(depth, h, w, false);
    (0..h * w)
        .map(|i| {
            // A flat depth gives 0 / 0 = NaN here, which never compares below the threshold: as in numpy.
            let background = (depth[i] - min) / max_shifted < bg_threshold;
            let (x, y) = if background {
                (0.0, 0.0)
            } else {
                (gx[i], gy[i])
            };
            let norm = (x * x + y * y + a * a).sqrt();
            [x, y, a].map(|v| ((v / norm) * 127.5 + 127.5).clamp(0.0, 255.0) as u8)
        })
        .collect()
}
