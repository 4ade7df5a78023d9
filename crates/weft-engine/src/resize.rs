//! Image and latent resizing with ComfyUI's semantics (`comfy.utils.common_upscale`).
//!
//! Written here rather than taken from the `image` crate because ComfyUI resizes with
//! `torch.nn.functional.interpolate` (no antialiasing, `align_corners=False`, adaptive average
//! pooling for `area`), and users expect the same pixels; the `image` crate's filters widen their
//! support when downscaling. Lanczos goes through 8-bit pixels as ComfyUI's PIL path does.

use candle_core::{Device, Result, Tensor};

/// The resampling methods ComfyUI offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpscaleMethod {
    /// `nearest-exact`: the source pixel whose centre is nearest.
    NearestExact,
    /// `bilinear`: linear interpolation between the two nearest source pixels per axis.
    Bilinear,
    /// `area`: the mean of the covered source pixels (adaptive average pooling).
    Area,
    /// `bicubic`: PyTorch's cubic convolution (A = -0.75) over 4 source pixels per axis.
    Bicubic,
    /// `lanczos`: PIL's Lanczos-3 on 8-bit quantized values.
    Lanczos,
    /// `bislerp`: bilinear in two passes (width, then height), each point a spherical
    /// interpolation of the two source vectors across the channels, their norms interpolated
    /// linearly (`comfy.utils.bislerp`).
    Bislerp,
    /// `interpolate(mode="bicubic", antialias=True)`, which ComfyUI's CLIP vision preprocessing
    /// uses (not among the node's choices): Keys' cubic with A = -0.5 whose support widens by the
    /// scale when downscaling, taps cut at the border and renormalised, as PIL's filter.
    BicubicAntialias,
}

impl UpscaleMethod {
    /// The method for ComfyUI's `upscale_method` name (`"nearest-exact"`, `"bilinear"`, ...);
    /// `None` for an unknown name.
    pub fn parse(name: &str) -> Option<UpscaleMethod> {
        match name {
            "nearest-exact" => Some(UpscaleMethod::NearestExact),
            "bilinear" => Some(UpscaleMethod::Bilinear),
            "area" => Some(UpscaleMethod::Area),
            "bicubic" => Some(UpscaleMethod::Bicubic),
            "lanczos" => Some(UpscaleMethod::Lanczos),
            "bislerp" => Some(UpscaleMethod::Bislerp),
            _ => None,
        }
    }
}

/// Crop before scaling: ComfyUI's `"disabled"` or `"center"` (crop to the target aspect first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crop {
    /// Scale the whole input, changing its aspect ratio if needed.
    Disabled,
    /// Cut equal margins off the longer axis to the target aspect, then scale.
    Center,
}

/// Resizes `[N, C, H, W]` f32 to `[N, C, height, width]`.
pub fn common_upscale(
    samples: &Tensor,
    width: usize,
    height: usize,
    method: UpscaleMethod,
    crop: Crop,
) -> Result<Tensor> {
    let (n, c, old_h, old_w) = samples.dims4()?;
    let mut samples = samples.clone();
    if crop == Crop::Center && old_h > 0 && old_w > 0 && width > 0 && height > 0 {
        let old_aspect = old_w as f64 / old_h as f64;
        let new_aspect = width as f64 / height as f64;
        let (mut x, mut y) = (0usize, 0usize);
        // Python's `round` takes halves to the even neighbour (a 10x6 latent cut to 3:2 keeps
        // its width).
        if old_aspect > new_aspect {
            x = ((old_w as f64 - old_w as f64 * (new_aspect / old_aspect)) / 2.0).round_ties_even()
                as usize;
        } else if old_aspect < new_aspect {
            y = ((old_h as f64 - old_h as f64 * (old_aspect / new_aspect)) / 2.0).round_ties_even()
                as usize;
        }
        samples = samples
            .narrow(2, y, old_h - 2 * y)?
            .narrow(3, x, old_w - 2 * x)?;
    }
    let (_, _, in_h, in_w) = samples.dims4()?;
    if method == UpscaleMethod::Bislerp {
        return bislerp(&samples, width, height);
    }
    let data: Vec<f32> = samples.contiguous()?.flatten_all()?.to_vec1()?;
    let planes = n * c;
    let quantize = method == UpscaleMethod::Lanczos;
    let data = if quantize {
        data.iter().map(|v| to_u8_level(*v)).collect()
    } else {
        data
    };
    let rows = axis_weights(method, in_h, height);
    let cols = axis_weights(method, in_w, width);

    // Horizontal pass, then vertical pass.
    let mut tmp = vec![0f32; planes * in_h * width];
    for p in 0..planes {
        for y in 0..in_h {
            let src = &data[(p * in_h + y) * in_w..(p * in_h + y + 1) * in_w];
            let dst = &mut tmp[(p * in_h + y) * width..(p * in_h + y + 1) * width];
            for (x, taps) in cols.iter().enumerate() {
                dst[x] = taps.iter().map(|&(i, w)| src[i] * w).sum();
            }
        }
    }
    if quantize {
        // PIL keeps its intermediate image in 8 bits too: the horizontal pass is rounded and
        // clipped before the vertical one (Lanczos overshoots are cut there).
        for v in &mut tmp {
            *v = (*v * 255.0).round().clamp(0.0, 255.0) / 255.0;
        }
    }
    let mut out = vec![0f32; planes * height * width];
    for p in 0..planes {
        for (y, taps) in rows.iter().enumerate() {
            for x in 0..width {
                out[(p * height + y) * width + x] = taps
                    .iter()
                    .map(|&(i, w)| tmp[(p * in_h + i) * width + x] * w)
                    .sum();
            }
        }
    }
    if quantize {
        // PIL rounds its 8-bit output.
        for v in &mut out {
            *v = (*v * 255.0).clamp(0.0, 255.0).round() / 255.0;
        }
    }
    Tensor::from_vec(out, (n, c, height, width), &Device::Cpu)?.to_device(samples.device())
}

/// Resizes an IMAGE `[B, H, W, C]`.
pub fn resize_image(
    image: &Tensor,
    width: usize,
    height: usize,
    method: UpscaleMethod,
    crop: Crop,
) -> Result<Tensor> {
    let nchw = image.permute((0, 3, 1, 2))?;
    common_upscale(&nchw, width, height, method, crop)?
        .permute((0, 2, 3, 1))?
        .contiguous()
}

/// numpy's `astype(uint8)` after `clip(255 * x)`: truncation.
fn to_u8_level(v: f32) -> f32 {
    (v * 255.0).clamp(0.0, 255.0).trunc() / 255.0
}

type Taps = Vec<(usize, f32)>;

/// For each output index along one axis, the source indices and weights.
fn axis_weights(method: UpscaleMethod, input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f64 / output.max(1) as f64;
    let last = input.saturating_sub(1);
    (0..output)
        .map(|o| match method {
            UpscaleMethod::NearestExact => {
                let i = (((o as f64 + 0.5) * scale).floor() as usize).min(last);
                vec![(i, 1.0)]
            }
            // `common_upscale` resamples bislerp itself; its taps would be the bilinear ones.
            UpscaleMethod::Bilinear | UpscaleMethod::Bislerp => {
                let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(last);
                let i1 = (i0 + 1).min(last);
                let l = (src - i0 as f64) as f32;
                vec![(i0, 1.0 - l), (i1, l)]
            }
            UpscaleMethod::Bicubic => {
                let src = (o as f64 + 0.5) * scale - 0.5;
                let i = src.floor();
                let t = src - i;
                let w = cubic_weights(t);
                (0..4)
                    .map(|k| {
                        let idx = (i as i64 - 1 + k as i64).clamp(0, last as i64) as usize;
                        (idx, w[k] as f32)
                    })
                    .collect()
            }
            UpscaleMethod::Area => {
                let start = (o * input) / output;
                let end = ((o + 1) * input).div_ceil(output);
                let count = (end - start).max(1) as f32;
                (start..end.min(input)).map(|i| (i, 1.0 / count)).collect()
            }
            UpscaleMethod::Lanczos => lanczos_taps(o, scale, input),
            UpscaleMethod::BicubicAntialias => antialias_cubic_taps(o, input, output),
        })
        .collect()
}

/// `comfy.utils.bislerp` on `[N, C, H, W]`: along the width, then along the height, each output
/// point slerps the channel vectors of its two source points.
fn bislerp(samples: &Tensor, width: usize, height: usize) -> Result<Tensor> {
    let (n, c, h, w) = samples.dims4()?;
    let data: Vec<f32> = samples
        .to_dtype(candle_core::DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1()?;
    // Width pass: `[N, C, H, W]` → `[N, C, H, width]`.
    let cols = bislerp_axis(w, width);
    let mut wide = vec![0f32; n * c * h * width];
    let (mut b1, mut b2, mut out) = (vec![0f32; c], vec![0f32; c], vec![0f32; c]);
    for b in 0..n {
        for y in 0..h {
            for (x, &(i1, i2, r)) in cols.iter().enumerate() {
                for ch in 0..c {
                    let row = ((b * c + ch) * h + y) * w;
                    (b1[ch], b2[ch]) = (data[row + i1], data[row + i2]);
                }
                slerp(&b1, &b2, r, &mut out);
                for ch in 0..c {
                    wide[((b * c + ch) * h + y) * width + x] = out[ch];
                }
            }
        }
    }
    // Height pass: → `[N, C, height, width]`.
    let rows = bislerp_axis(h, height);
    let mut tall = vec![0f32; n * c * height * width];
    for b in 0..n {
        for (y, &(i1, i2, r)) in rows.iter().enumerate() {
            for x in 0..width {
                for ch in 0..c {
                    let plane = (b * c + ch) * h;
                    (b1[ch], b2[ch]) = (
                        wide[(plane + i1) * width + x],
                        wide[(plane + i2) * width + x],
                    );
                }
                slerp(&b1, &b2, r, &mut out);
                for ch in 0..c {
                    tall[((b * c + ch) * height + y) * width + x] = out[ch];
                }
            }
        }
    }
    Tensor::from_vec(tall, (n, c, height, width), &Device::Cpu)?
        .to_dtype(samples.dtype())?
        .to_device(samples.device())
}

/// `generate_bilinear_data`: per output index, the two source indices and the ratio, as ComfyUI
/// gets them by bilinearly resizing `arange(old)` (and `arange(old) + 1`, its last entry kept at
/// `old - 1`) with torch's f32 arithmetic, then truncating.
fn bislerp_axis(old: usize, new: usize) -> Vec<(usize, usize, f32)> {
    let scale = old as f32 / new as f32;
    let last = old.saturating_sub(1);
    let next = |i: usize| (i + 1).min(last) as f32;
    (0..new)
        .map(|o| {
            // torch's `compute_source_index_and_lambda` (`align_corners=False`).
            let (i0, i1, l0, l1) = if old == new {
                (o, o, 1.0f32, 0.0f32)
            } else {
                let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(last);
                let l1 = (src - i0 as f32).clamp(0.0, 1.0);
                let i1 = if i0 < last { i0 + 1 } else { i0 };
                (i0, i1, 1.0 - l1, l1)
            };
            let first = i0 as f32 * l0 + i1 as f32 * l1;
            let second = next(i0) * l0 + next(i1) * l1;
            let truncate = |v: f32| (v.max(0.0) as usize).min(last);
            (truncate(first), truncate(second), first - first.floor())
        })
        .collect()
}

/// ComfyUI's `slerp` of one pair of channel vectors at ratio `r` into `out`: the unit vectors'
/// spherical interpolation scaled by the linearly interpolated norms; `b1` itself where they
/// (nearly) coincide, the linear interpolation where they are (nearly) opposite.
fn slerp(b1: &[f32], b2: &[f32], r: f32, out: &mut [f32]) {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let (n1, n2) = (norm(b1), norm(b2));
    let unit = |x: f32, n: f32| if n == 0.0 { 0.0 } else { x / n };
    let dot: f32 = b1
        .iter()
        .zip(b2)
        .map(|(&a, &b)| unit(a, n1) * unit(b, n2))
        .sum();
    // Python's thresholds, rounded to f32 as torch compares an f32 tensor with them.
    if dot > (1.0f64 - 1e-5) as f32 {
        out.copy_from_slice(b1);
        return;
    }
    if dot < (1e-5f64 - 1.0) as f32 {
        for ((o, &a), &b) in out.iter_mut().zip(b1).zip(b2) {
            *o = a * (1.0 - r) + b * r;
        }
        return;
    }
    let omega = dot.acos();
    let so = omega.sin();
    let (w1, w2) = (((1.0 - r) * omega).sin() / so, (r * omega).sin() / so);
    let scale = n1 * (1.0 - r) + n2 * r;
    for ((o, &a), &b) in out.iter_mut().zip(b1).zip(b2) {
        *o = (w1 * unit(a, n1) + w2 * unit(b, n2)) * scale;
    }
}

/// PyTorch's bicubic convolution weights (A = -0.75) for offset `t` in [0, 1).
pub(crate) fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Torch's `_upsample_bicubic2d_aa` weights (`HelperInterpCubic::aa_filter`, A = -0.5), in
/// torch's float arithmetic for f32 tensors: the window `[center - support + 0.5, center +
/// support + 0.5)` truncated toward zero and kept inside the input, weights normalised to sum 1.
fn antialias_cubic_taps(o: usize, input: usize, output: usize) -> Taps {
    const A: f32 = -0.5;
    let filter = |x: f32| {
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
        } else {
            0.0
        }
    };
    let scale = input as f32 / output.max(1) as f32;
    let support: f32 = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale: f32 = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let center = (scale as f64 * (o as f64 + 0.5)) as f32;
    // `static_cast<int64_t>` truncates toward zero.
    let start = ((center as f64 - support as f64 + 0.5) as i64).max(0) as usize;
    let end = ((center as f64 + support as f64 + 0.5) as i64).clamp(0, input as i64) as usize;
    let mut taps: Vec<(usize, f32)> = (start..end)
        .map(|i| {
            let x = ((i as f64 - center as f64 + 0.5) * invscale as f64) as f32;
            (i, filter(x))
        })
        .collect();
    let total: f32 = taps.iter().map(|t| t.1).sum();
    if total != 0.0 {
        for t in &mut taps {
            t.1 /= total;
        }
    }
    taps
}

/// PIL-style Lanczos-3: the kernel widens when downscaling, weights normalised.
fn lanczos_taps(o: usize, scale: f64, input: usize) -> Taps {
    let support_scale = scale.max(1.0);
    let support = 3.0 * support_scale;
    let center = (o as f64 + 0.5) * scale;
    let start = ((center - support).floor().max(0.0)) as usize;
    let end = ((center + support).ceil() as usize).min(input);
    let sinc = |x: f64| {
        if x == 0.0 {
            1.0
        } else {
            (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
        }
    };
    let kernel = |x: f64| {
        if x.abs() < 3.0 {
            sinc(x) * sinc(x / 3.0)
        } else {
            0.0
        }
    };
    let mut taps: Vec<(usize, f64)> = (start..end)
        .map(|i| (i, kernel((i as f64 + 0.5 - center) / support_scale)))
        .collect();
    let total: f64 = taps.iter().map(|t| t.1).sum();
    if total != 0.0 {
        for t in &mut taps {
            t.1 /= total;
        }
    }
    taps.into_iter().map(|(i, w)| (i, w as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(values: &[f32], h: usize, w: usize) -> Tensor {
        Tensor::from_vec(values.to_vec(), (1, 1, h, w), &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    // Expected values from torch.nn.functional.interpolate on the same 1x1x2x2 input
    // ([[0, 1], [2, 3]] to 4x4, align_corners=False), computed by hand from PyTorch's formulas.
    #[test]
    fn bilinear_upscale_matches_torch() {
        let out = common_upscale(
            &plane(&[0., 1., 2., 3.], 2, 2),
            4,
            4,
            UpscaleMethod::Bilinear,
            Crop::Disabled,
        )
        .unwrap();
        let expected = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in flat(&out).iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn area_downscale_averages_blocks() {
        let input: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = common_upscale(
            &plane(&input, 4, 4),
            2,
            2,
            UpscaleMethod::Area,
            Crop::Disabled,
        )
        .unwrap();
        assert_eq!(flat(&out), vec![2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn nearest_exact_and_center_crop() {
        let input: Vec<f32> = (0..8).map(|v| v as f32).collect();
        // 2x4 -> 2x2 with center crop keeps the middle two columns.
        let out = common_upscale(
            &plane(&input, 2, 4),
            2,
            2,
            UpscaleMethod::NearestExact,
            Crop::Center,
        )
        .unwrap();
        assert_eq!(flat(&out), vec![1.0, 2.0, 5.0, 6.0]);
    }

    #[test]
    fn bicubic_keeps_constants() {
        let out = common_upscale(
            &plane(&[0.5; 9], 3, 3),
            7,
            5,
            UpscaleMethod::Bicubic,
            Crop::Disabled,
        )
        .unwrap();
        assert!(flat(&out).iter().all(|v| (v - 0.5).abs() < 1e-6));
        let out = common_upscale(
            &plane(&[0.5; 9], 3, 3),
            2,
            2,
            UpscaleMethod::Lanczos,
            Crop::Disabled,
        )
        .unwrap();
        assert!(flat(&out).iter().all(|v| (v - 127.0 / 255.0).abs() < 1e-6));
    }
}
