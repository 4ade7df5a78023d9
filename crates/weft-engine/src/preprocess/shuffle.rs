//! comfyui_controlnet_aux `ShufflePreprocessor` (`ContentShuffleDetector`): a random smooth flow field warps
//! the image.
//!
//! The flow comes from `make_noise_disk`: numpy `default_rng(seed).uniform(0, 1, (H // 256 + 2, W // 256 + 2,
//! 1))`, enlarged to `(H + 512, W + 512)` with `cv2.resize` INTER_CUBIC (f64), cropped at 256, min-max
//! normalised and scaled to `W - 1` (x, drawn first) and `H - 1` (y); then `cv2.remap` INTER_LINEAR with a
//! black border. numpy's generator is reproduced here bit for bit ([`NumpyPcg64`]: `SeedSequence` seeding,
//! PCG64 XSL-RR, 53-bit doubles), so any seed > 0 gives the reference's flow.
//! Seed 0 is the reference's "no generator" case, which draws from numpy's global, unseeded state and cannot
//! be reproduced; here it is simply PCG64 seeded with 0.

use candle_core::Tensor;

use super::aux::{detect_resolution, resize_image_with_pad};
use super::cv::{remap_linear, resize_cubic_f64, Interpolation};
use super::{run_aux, Result};
use crate::sampling::rng::{int_words, seed_sequence};

const OP: &str = "ShufflePreprocessor";

/// Options of `ShufflePreprocessor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShuffleOptions {
    /// `seed` (0..2^64-1).
    pub seed: u64,
    /// `resolution` (default 512).
    pub resolution: u32,
}

impl Default for ShuffleOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            resolution: 512,
        }
    }
}

/// `ShufflePreprocessor`: `[B, H, W, C]` to `[B, H', W', 3]`. Every image of the batch gets the same flow
/// (the reference re-seeds per image).
pub fn shuffle(image: &Tensor, opts: &ShuffleOptions) -> Result<Tensor> {
    let _span = tracing::trace_span!("shuffle").entered();
    run_aux(OP, image, |img| {
        let p = resize_image_with_pad(
            OP,
            img,
            detect_resolution(opts.resolution),
            Interpolation::Cubic,
        )?;
        let (h, w) = (p.image.height, p.image.width);
        let mut rng = NumpyPcg64::new(opts.seed);
        let fx = noise_disk(h, w, 256, &mut rng);
        let fy = noise_disk(h, w, 256, &mut rng);
        let map_x: Vec<f32> = fx.iter().map(|&v| (v * (w as f64 - 1.0)) as f32).collect();
        let map_y: Vec<f32> = fy.iter().map(|&v| (v * (h as f64 - 1.0)) as f32).collect();
        let warped = remap_linear(&p.image, &map_x, &map_y, h, w);
        Ok(p.remove_pad(&warped))
    })
}

/// `make_noise_disk(H, W, 1, F, rng)` as f64, `H x W`.
fn noise_disk(h: usize, w: usize, f: usize, rng: &mut NumpyPcg64) -> Vec<f64> {
    let (nh, nw) = (h / f + 2, w / f + 2);
    let noise: Vec<f64> = (0..nh * nw).map(|_| rng.next_f64()).collect();
    let (bh, bw) = (h + 2 * f, w + 2 * f);
    let big = resize_cubic_f64(&noise, nh, nw, bh, bw);
    let mut out: Vec<f64> = (0..h)
        .flat_map(|y| big[(y + f) * bw + f..(y + f) * bw + f + w].iter().copied())
        .collect();
    let min = out.iter().copied().fold(f64::INFINITY, f64::min);
    out.iter_mut().for_each(|v| *v -= min);
    let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    out.iter_mut().for_each(|v| *v /= max);
    out
}

/// numpy's `np.random.default_rng(seed)` (PCG64 seeded through `SeedSequence`) for integer seeds, with
/// `random()` / `uniform(0, 1)` doubles.
#[derive(Debug, Clone)]
pub struct NumpyPcg64 {
    state: u128,
    inc: u128,
}

const PCG_MULT: u128 = (2549297995355413924u128 << 64) | 4865540595714422341u128;

impl NumpyPcg64 {
    /// `np.random.default_rng(seed)`.
    pub fn new(seed: u64) -> Self {
        let words = seed_sequence_state(seed);
        let s = ((words[0] as u128) << 64) | words[1] as u128;
        let i = ((words[2] as u128) << 64) | words[3] as u128;
        let mut rng = Self {
            state: 0,
            inc: (i << 1) | 1,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(s);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// Next 64-bit output (XSL-RR of the stepped state).
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let v = ((self.state >> 64) as u64) ^ (self.state as u64);
        v.rotate_right((self.state >> 122) as u32)
    }

    /// `rng.random()`: 53 random bits over 2^53.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9007199254740992.0)
    }
}

/// `SeedSequence(seed).generate_state(4, np.uint64)`.
fn seed_sequence_state(seed: u64) -> [u64; 4] {
    let mut entropy = Vec::new();
    int_words(seed, &mut entropy);
    let words = seed_sequence(&entropy, &[], 4, 8);
    let mut out = [0u64; 4];
    for (o, pair) in out.iter_mut().zip(words.chunks_exact(2)) {
        *o = pair[0] as u64 | ((pair[1] as u64) << 32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_default_rng() {
        // /opt/refpy numpy 2.4: np.random.default_rng(12345).random(3)
        let mut r = NumpyPcg64::new(12345);
        let got: Vec<f64> = (0..3).map(|_| r.next_f64()).collect();
        let want = [0.22733602246716966, 0.31675833970975287, 0.7973654573327341];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{got:?}");
        }
    }
}
