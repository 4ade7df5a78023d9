//! The antialiased uint8 resize of torchvision (`resize(uint8 tensor, antialias=True)` on the CPU,
//! torch's native uint8 kernel: Pillow's separable resampling with 16-bit fixed-point weights),
//! which transformers' image processors run since v5: Hugging Face-layout annotators (MiDaS's
//! `DPTImageProcessor`) see their input through it.
//!
//! Per axis, as torch's `_compute_index_ranges_int16_weights`: the filter's support widened by
//! the scale when shrinking, taps normalised in f64, then rounded to integers at the largest
//! precision that keeps every weight within 15 bits; the horizontal pass first, each pass rounded
//! (`+ 2^(p-1)`, `>> p`) and clamped to 0..255.

use super::ImageU8;

/// The filters of Pillow's `resample` numbers 2 and 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `BILINEAR` (2): the triangle, support 1.
    Bilinear,
    /// `BICUBIC` (3): Keys' cubic with a = -0.5, support 2.
    Bicubic,
}

impl Filter {
    /// The filter of a Pillow resample number, if it is one of these.
    pub fn from_pil(resample: u64) -> Option<Filter> {
        match resample {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// One axis: per output index, the first source index and the integer weights; the precision.
struct AxisTaps {
    taps: Vec<(usize, Vec<i32>)>,
    precision: u32,
}

/// One axis of torch's antialiased resize (`_compute_index_ranges_weights`): per output index,
/// the first source index and the normalised weights of the taps from there.
pub fn axis_weights(filter: Filter, input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let (support, inv) = if scale >= 1.0 {
        (filter.support() * scale, 1.0 / scale)
    } else {
        (filter.support(), 1.0)
    };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            // C's truncating casts, as torch's
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64)
                .min(input as i64)
                .max(lo as i64) as usize;
            let mut w: Vec<f64> = (lo..hi)
                .map(|j| filter.weight((j as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (lo, w)
        })
        .collect()
}

fn axis_taps(filter: Filter, input: usize, output: usize) -> AxisTaps {
    let float = axis_weights(filter, input, output);
    let max = float
        .iter()
        .flat_map(|(_, w)| w.iter().copied())
        .fold(0f64, f64::max);
    let mut precision = 0u32;
    while precision < 22 && ((0.5 + max * f64::from(1u32 << (precision + 1))) as i64) < (1 << 15) {
        precision += 1;
    }
    let one = f64::from(1u32 << precision);
    let taps = float
        .into_iter()
        .map(|(lo, w)| {
            let q = w
                .iter()
                .map(|&v| {
                    let v = v * one;
                    if v < 0.0 {
                        (v - 0.5) as i32
                    } else {
                        (v + 0.5) as i32
                    }
                })
                .collect();
            (lo, q)
        })
        .collect();
    AxisTaps { taps, precision }
}

/// One pass along rows (`horizontal`) or columns of an interleaved uint8 image.
fn pass(img: &ImageU8, out_len: usize, filter: Filter, horizontal: bool) -> ImageU8 {
    let (h, w, c) = (img.height, img.width, img.channels);
    let (oh, ow) = if horizontal {
        (h, out_len)
    } else {
        (out_len, w)
    };
    let axis = axis_taps(filter, if horizontal { w } else { h }, out_len);
    let round = 1i64 << axis.precision.saturating_sub(1);
    let mut out = ImageU8::zeros(oh, ow, c);
    for y in 0..oh {
        for x in 0..ow {
            let (o, fixed) = if horizontal { (x, y) } else { (y, x) };
            let (lo, weights) = &axis.taps[o];
            for ch in 0..c {
                let mut acc = round;
                for (k, &wt) in weights.iter().enumerate() {
                    let (sy, sx) = if horizontal {
                        (fixed, lo + k)
                    } else {
                        (lo + k, fixed)
                    };
                    acc += i64::from(img.at(sy, sx, ch)) * i64::from(wt);
                }
                out.data[(y * ow + x) * c + ch] = (acc >> axis.precision).clamp(0, 255) as u8;
            }
        }
    }
    out
}

/// `img` resized to `height x width` (an axis of the same length is left as it is).
pub fn resize_u8_antialias(img: &ImageU8, height: usize, width: usize, filter: Filter) -> ImageU8 {
    if img.height == height && img.width == width {
        return img.clone();
    }
    let mut out = img.clone();
    if width != img.width {
        out = pass(&out, width, filter, true);
    }
    if height != img.height {
        out = pass(&out, height, filter, false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_at_their_precision() {
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for (i, o) in [(256, 192), (64, 192), (512, 384), (100, 77)] {
                let axis = axis_taps(filter, i, o);
                for (_, w) in &axis.taps {
                    let sum: i32 = w.iter().sum();
                    assert!((sum - (1 << axis.precision)).abs() <= w.len() as i32);
                }
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let mut img = ImageU8::zeros(50, 70, 3);
        img.data.iter_mut().for_each(|v| *v = 200);
        let out = resize_u8_antialias(&img, 33, 91, Filter::Bicubic);
        assert!(out.data.iter().all(|&v| v == 200));
    }
}
