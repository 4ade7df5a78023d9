//! comfyui_controlnet_aux `CannyEdgePreprocessor`: `cv2.Canny(img, low, high)` (aperture 3, L1 gradient) on
//! the resized, padded 3-channel image.
//!
//! Written here rather than with `imageproc::edges::canny`, which blurs first (sigma 1.4), uses an L2
//! magnitude on one grey channel and other direction bins, so its edges differ from cv2's. OpenCV's Canny is
//! integer arithmetic (`imgproc/src/canny.cpp`), reproduced exactly:
//! - 3x3 Sobel per channel in int16 with a replicated border; per pixel the channel with the largest
//!   `|dx| + |dy|` wins (first channel on ties);
//! - non-maximum suppression with the tangent test `|dy| << 15` vs `|dx| * 13573` (tan 22.5 deg in Q15): the
//!   "left"/"up" neighbour must be strictly smaller, the other one smaller or equal; diagonals strictly;
//! - candidates need `m > floor(low)`, seeds `m > floor(high)`; hysteresis is 8-connected.

use candle_core::Tensor;

use super::aux::{detect_resolution, hwc3, resize_image_with_pad};
use super::canny::hysteresis;
use super::cv::Interpolation;
use super::{run_aux, ImageU8, PreprocessError, Result};

const OP: &str = "CannyEdgePreprocessor";

/// Options of `CannyEdgePreprocessor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CannyEdgeOptions {
    /// `low_threshold`, 0..255 on the L1 Sobel magnitude (default 100).
    pub low_threshold: f64,
    /// `high_threshold`, 0..255 (default 200).
    pub high_threshold: f64,
    /// `resolution` (short side the image is resized to; default 512).
    pub resolution: u32,
    /// The detector's `upscale_method` when enlarging (INTER_CUBIC).
    pub upscale_method: Interpolation,
}

impl Default for CannyEdgeOptions {
    fn default() -> Self {
        Self {
            low_threshold: 100.0,
            high_threshold: 200.0,
            resolution: 512,
            upscale_method: Interpolation::Cubic,
        }
    }
}

/// `CannyEdgePreprocessor`: `[B, H, W, C]` to `[B, H', W', 3]` of 0/1, H' x W' the resized size.
pub fn canny_edge(image: &Tensor, opts: &CannyEdgeOptions) -> Result<Tensor> {
    let _span = tracing::trace_span!("canny_edge").entered();
    if !(opts.low_threshold >= 0.0 && opts.high_threshold >= 0.0) {
        return Err(PreprocessError::BadOption {
            op: OP,
            name: "low_threshold",
            reason: format!(
                "thresholds must be >= 0, got {} and {}",
                opts.low_threshold, opts.high_threshold
            ),
        });
    }
    run_aux(OP, image, |img| {
        let padded = resize_image_with_pad(
            OP,
            img,
            detect_resolution(opts.resolution),
            opts.upscale_method,
        )?;
        let edges = cv_canny(&padded.image, opts.low_threshold, opts.high_threshold);
        Ok(hwc3(&padded.remove_pad(&edges)))
    })
}

/// `cv2.Canny(img, low, high)` (apertureSize 3, L2gradient False): a one-channel 0/255 edge map.
pub fn cv_canny(img: &ImageU8, low: f64, high: f64) -> ImageU8 {
    let (h, w, c) = (img.height, img.width, img.channels);
    let (low, high) = if low > high { (high, low) } else { (low, high) };
    let (low, high) = (low.floor() as i32, high.floor() as i32);
    let mut dx = vec![0i32; h * w];
    let mut dy = vec![0i32; h * w];
    let mut mag = vec![0i32; h * w];
    let cl = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    for y in 0..h {
        let (ym, yp) = (cl(y as isize - 1, h), cl(y as isize + 1, h));
        for x in 0..w {
            let (xm, xp) = (cl(x as isize - 1, w), cl(x as isize + 1, w));
            let mut best: Option<(i32, i32, i32)> = None;
            for ch in 0..c {
                let p = |yy: usize, xx: usize| img.at(yy, xx, ch) as i32;
                let gx =
                    (p(ym, xp) - p(ym, xm)) + 2 * (p(y, xp) - p(y, xm)) + (p(yp, xp) - p(yp, xm));
                let gy =
                    (p(yp, xm) + 2 * p(yp, x) + p(yp, xp)) - (p(ym, xm) + 2 * p(ym, x) + p(ym, xp));
                let m = gx.abs() + gy.abs();
                if best.is_none_or(|(_, _, bm)| m > bm) {
                    best = Some((gx, gy, m));
                }
            }
            let (gx, gy, m) = best.unwrap_or((0, 0, 0));
            dx[y * w + x] = gx;
            dy[y * w + x] = gy;
            mag[y * w + x] = m;
        }
    }
    const SHIFT: i32 = 15;
    const TG22: i64 = 13573; // (int)(tan(22.5 deg) * 2^15 + 0.5)
    let m_at = |y: isize, x: isize| -> i32 {
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            0
        } else {
            mag[y as usize * w + x as usize]
        }
    };
    let mut state = vec![0u8; h * w];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            let m = mag[i];
            if m <= low {
                continue;
            }
            let (xs, ys) = (dx[i], dy[i]);
            let ax = xs.abs() as i64;
            let ay = (ys.abs() as i64) << SHIFT;
            let tg22x = ax * TG22;
            let is_max = if ay < tg22x {
                m > m_at(y, x - 1) && m >= m_at(y, x + 1)
            } else {
                let tg67x = tg22x + (ax << (SHIFT + 1));
                if ay > tg67x {
                    m > m_at(y - 1, x) && m >= m_at(y + 1, x)
                } else {
                    let s: isize = if (xs ^ ys) < 0 { -1 } else { 1 };
                    m > m_at(y - 1, x - s) && m > m_at(y + 1, x + s)
                }
            };
            if is_max {
                state[i] = if m > high { 2 } else { 1 };
            }
        }
    }
    hysteresis(&mut state, h, w);
    ImageU8 {
        height: h,
        width: w,
        channels: 1,
        data: state
            .into_iter()
            .map(|s| if s == 2 { 255 } else { 0 })
            .collect(),
    }
}
