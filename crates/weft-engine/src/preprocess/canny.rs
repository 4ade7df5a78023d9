//! ComfyUI's core `Canny` node (`comfy_extras/nodes_canny.py`): `kornia.filters.canny(image, low, high)` with
//! kornia's defaults (kernel_size 5, sigma 1, hysteresis, eps 1e-6), edges repeated to 3 channels.
//!
//! Reproduced from kornia 0.9 (`filters/canny.py`, `gaussian.py`, `sobel.py`, `kernels.py`,
//! `color/gray.py`), in f32 like the reference:
//! 1. grey = 0.299 R + 0.587 G + 0.114 B (a 1-channel image is used as is);
//! 2. separable 5-tap Gaussian, sigma 1, taps `exp(-n^2/2)` normalised, torch "reflect" border;
//! 3. **unnormalised** 3x3 Sobel (`spatial_gradient(normalized=False)`), replicate border;
//! 4. magnitude `sqrt(gx^2 + gy^2 + eps)`; direction `round(atan2(gy, gx) * 4/pi)` (half to even);
//!    non-maximum suppression against the two neighbours along that direction, where a horizontal or
//!    vertical direction index (0 or 2) also keeps ties, and a pixel must beat `sqrt(eps)`;
//! 5. weak = magnitude > low, strong = magnitude > high (strict), hysteresis by 8-connected propagation.
//!
//! kornia iterates its hysteresis step (a weak pixel with a strong neighbour becomes strong) until nothing
//! changes; its fixed point is exactly "weak pixels 8-connected to a strong one through weak pixels", which
//! a flood fill computes in one pass.
//! Version note: matched to kornia 0.9.0, what `pip install kornia` gives today (ComfyUI asks for >= 0.7.1).
//! Older kornia releases did the non-maximum suppression with convolution kernels and no tie rule, so on
//! exact magnitude ties (flat synthetic images) their edges can sit one pixel apart; not checked here.
//! The thresholds compare against the unnormalised Sobel magnitude (up to about 2.6 for a blurred unit step),
//! which is how ComfyUI's 0.01..0.99 range is read.

use candle_core::{Device, Tensor};

use super::{tensor_to_f32_images, PreprocessError, Result};

const OP: &str = "Canny";

/// Options of ComfyUI's `Canny` node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CannyOptions {
    /// Weak-edge threshold on the Sobel magnitude (node input `low_threshold`, 0.01..0.99, default 0.4).
    pub low_threshold: f32,
    /// Strong-edge threshold (node input `high_threshold`, 0.01..0.99, default 0.8).
    pub high_threshold: f32,
}

impl Default for CannyOptions {
    fn default() -> Self {
        Self {
            low_threshold: 0.4,
            high_threshold: 0.8,
        }
    }
}

/// ComfyUI `Canny`: image `[B, H, W, C]` f32 (C = 1 or 3) to edges `[B, H, W, 3]` f32 of 0.0/1.0.
///
/// Errors when the thresholds are not `0 < low <= high` (kornia's check) or the image is under 3x3
/// (torch's reflect padding of 2 needs it).
pub fn canny(image: &Tensor, opts: &CannyOptions) -> Result<Tensor> {
    let _span = tracing::trace_span!("canny_kornia").entered();
    if !(opts.low_threshold > 0.0 && opts.low_threshold <= opts.high_threshold) {
        return Err(PreprocessError::BadOption {
            op: OP,
            name: "low_threshold",
            reason: format!(
                "need 0 < low_threshold <= high_threshold, got {} and {}",
                opts.low_threshold, opts.high_threshold
            ),
        });
    }
    let (imgs, h, w, c) = tensor_to_f32_images(OP, image)?;
    if c != 1 && c != 3 {
        return Err(PreprocessError::BadShape {
            op: OP,
            shape: image.dims().to_vec(),
        });
    }
    if h < 3 || w < 3 {
        return Err(PreprocessError::TooSmall {
            op: OP,
            height: h,
            width: w,
            reason: "reflect padding needs 3x3",
        });
    }
    let mut out = Vec::with_capacity(imgs.len() * h * w * 3);
    for img in &imgs {
        let gray = to_gray(img, c);
        let edges = canny_plane(&gray, h, w, opts.low_threshold, opts.high_threshold);
        for e in edges {
            let v = if e { 1.0f32 } else { 0.0 };
            out.extend_from_slice(&[v, v, v]);
        }
    }
    to_tensor(out, imgs.len(), h, w, image.device())
}

fn to_tensor(data: Vec<f32>, b: usize, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(data, (b, h, w, 3), dev)
        .map_err(|source| PreprocessError::Candle { op: OP, source })
}

/// kornia `rgb_to_grayscale`: `r * 0.299`, then `+ g * 0.587`, then `+ b * 0.114`, in f32.
fn to_gray(img: &[f32], c: usize) -> Vec<f32> {
    if c == 1 {
        return img.to_vec();
    }
    img.chunks_exact(3)
        .map(|p| p[0] * 0.299f32 + p[1] * 0.587f32 + p[2] * 0.114f32)
        .collect()
}

/// kornia `get_gaussian_kernel1d(5, 1.0)` in f32: exp computed in f64 and rounded (torch's f32 exp is
/// faithful to within an ulp), normalised by the f32 sum.
fn gaussian_kernel5() -> [f32; 5] {
    let mut k = [0f32; 5];
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f64 - 2.0;
        *v = (-(x * x) / 2.0).exp() as f32;
    }
    let sum: f32 = k.iter().sum();
    k.map(|v| v / sum)
}

/// torch "reflect" index (edge not repeated), valid for offsets up to n - 1.
#[inline]
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let j = if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    };
    j as usize
}

#[inline]
fn clamp_idx(i: isize, n: usize) -> usize {
    i.clamp(0, n as isize - 1) as usize
}

/// Separable 5-tap blur, horizontal then vertical (kornia `filter2d_separable`), taps summed in order.
fn blur(src: &[f32], h: usize, w: usize) -> Vec<f32> {
    let k = gaussian_kernel5();
    let mut tmp = vec![0f32; h * w];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for x in 0..w {
            let mut acc = 0f32;
            for (t, kv) in k.iter().enumerate() {
                acc += row[reflect(x as isize + t as isize - 2, w)] * kv;
            }
            tmp[y * w + x] = acc;
        }
    }
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0f32;
            for (t, kv) in k.iter().enumerate() {
                acc += tmp[reflect(y as isize + t as isize - 2, h) * w + x] * kv;
            }
            out[y * w + x] = acc;
        }
    }
    out
}

/// Unnormalised Sobel gradients with a replicated border (kornia `spatial_gradient(normalized=False)`).
fn sobel(src: &[f32], h: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
    let mut gx = vec![0f32; h * w];
    let mut gy = vec![0f32; h * w];
    for y in 0..h {
        let ym = clamp_idx(y as isize - 1, h);
        let yp = clamp_idx(y as isize + 1, h);
        for x in 0..w {
            let xm = clamp_idx(x as isize - 1, w);
            let xp = clamp_idx(x as isize + 1, w);
            let p = |yy: usize, xx: usize| src[yy * w + xx];
            // Correlation order of torch's conv2d kernel rows: top, middle, bottom.
            gx[y * w + x] = (-p(ym, xm) + p(ym, xp))
                + (-2.0 * p(y, xm) + 2.0 * p(y, xp))
                + (-p(yp, xm) + p(yp, xp));
            gy[y * w + x] = (-p(ym, xm) - 2.0 * p(ym, x) - p(ym, xp))
                + (p(yp, xm) + 2.0 * p(yp, x) + p(yp, xp));
        }
    }
    (gx, gy)
}

/// The edge map of one grey plane (`true` = edge).
pub(crate) fn canny_plane(gray: &[f32], h: usize, w: usize, low: f32, high: f32) -> Vec<bool> {
    const EPS: f32 = 1e-6;
    // kornia's `_WINDOW_OFFSETS` as (dy, dx), indexed by the rounded direction modulo 8.
    const OFFSETS: [(isize, isize); 8] = [
        (0, 1),
        (1, 1),
        (1, 0),
        (1, -1),
        (0, -1),
        (-1, -1),
        (-1, 0),
        (-1, 1),
    ];
    let blurred = blur(gray, h, w);
    let (gx, gy) = sobel(&blurred, h, w);
    let mag: Vec<f32> = gx
        .iter()
        .zip(&gy)
        .map(|(&a, &b)| (a * a + b * b + EPS).sqrt())
        .collect();
    // Outside the image the gradients are zero-padded, so the magnitude there is sqrt(eps).
    let floor = EPS.sqrt();
    let mag_at = |y: isize, x: isize| -> f32 {
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            floor
        } else {
            mag[y as usize * w + x as usize]
        }
    };
    let four_over_pi = (4.0 / std::f64::consts::PI) as f32;
    // 0 = none, 1 = weak, 2 = strong.
    let mut state = vec![0u8; h * w];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let m = mag[i];
            let mut angle = gy[i].atan2(gx[i]);
            if angle.is_nan() {
                angle = 0.0;
            }
            let a45 = (angle * four_over_pi).round_ties_even();
            let pos = a45.rem_euclid(8.0) as usize % 8;
            let neg = (a45 + 4.0).rem_euclid(8.0) as usize % 8;
            let beats = |dir: usize| -> bool {
                let (dy, dx) = OFFSETS[dir];
                let n = mag_at(y as isize + dy, x as isize + dx);
                m > n || ((dir == 0 || dir == 2) && m == n)
            };
            let is_max = beats(pos) && beats(neg) && m > floor;
            let m = if is_max { m } else { 0.0 };
            state[i] = u8::from(m > low) + u8::from(m > high);
        }
    }
    hysteresis(&mut state, h, w);
    state.into_iter().map(|s| s == 2).collect()
}

/// Promote every weak pixel (1) 8-connected to a strong one (2) through weak pixels.
pub(crate) fn hysteresis(state: &mut [u8], h: usize, w: usize) {
    let mut stack: Vec<usize> = (0..state.len()).filter(|&i| state[i] == 2).collect();
    while let Some(i) = stack.pop() {
        let (y, x) = ((i / w) as isize, (i % w) as isize);
        for dy in -1..=1isize {
            for dx in -1..=1isize {
                let (ny, nx) = (y + dy, x + dx);
                if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                    continue;
                }
                let j = ny as usize * w + nx as usize;
                if state[j] == 1 {
                    state[j] = 2;
                    stack.push(j);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_sums_to_one_and_is_symmetric() {
        let k = gaussian_kernel5();
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(k[0], k[4]);
        assert_eq!(k[1], k[3]);
    }

    #[test]
    fn vertical_step_gives_one_column() {
        // A unit step between columns 3 and 4 of an 8x8 image: kornia keeps the left column of the ridge
        // (ties are kept towards the positive direction), so exactly one edge column appears.
        let (h, w) = (8, 8);
        let img: Vec<f32> = (0..h * w)
            .map(|i| if i % w >= 4 { 1.0 } else { 0.0 })
            .collect();
        let edges = canny_plane(&img, h, w, 0.4, 0.8);
        let cols: Vec<usize> = (0..w)
            .filter(|&x| (0..h).all(|y| edges[y * w + x]))
            .collect();
        assert_eq!(cols.len(), 1, "{edges:?}");
        assert_eq!(edges.iter().filter(|&&e| e).count(), h);
    }

    #[test]
    fn rejects_bad_thresholds() {
        let t = Tensor::zeros((1, 4, 4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let o = CannyOptions {
            low_threshold: 0.9,
            high_threshold: 0.1,
        };
        assert!(matches!(
            canny(&t, &o),
            Err(PreprocessError::BadOption { .. })
        ));
    }
}
