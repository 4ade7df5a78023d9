//! HyperTile (`comfy_extras/nodes_hypertile.py`, newer ComfyUI): the self-attention queries of
//! the widest transformer levels are cut into tiles, each attending on its own, and put back
//! after. Tile counts are picked among the divisors of the token grid with Python's `random`
//! seeded by a counter that every patched call advances (two draws per call), as ComfyUI does.
//! ComfyUI draws once for the positive and negative sides it batches into one call; the
//! denoiser rewinds the counter between Weft's two calls to match (`UNetPatches::draw_states`).
//!
//! As in ComfyUI, only the queries are tiled: the keys and values keep every token, and the
//! attention splits them into as many contiguous runs as there are tiles (its batch view).

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Result, Tensor};

use crate::diffusion::patches::{DrawState, SelfAttentionPatch, UndoAttentionPatch};

/// HyperTile's patch.
#[derive(Debug)]
pub struct HyperTile {
    /// The query widths tiled: the model's base channels times 1, 2, ... 2^max_depth.
    apply_to: Vec<usize>,
    model_channels: usize,
    /// Smallest tile side in tokens (`max(32, tile_size) // 8`).
    latent_tile_size: usize,
    /// How many of the largest tile sides to choose from (`swap_size`).
    swap_size: usize,
    /// Deeper levels get proportionally larger tiles.
    scale_depth: bool,
    /// ComfyUI's `self.counter`: the seed of the next draw.
    counter: AtomicU64,
}

impl HyperTile {
    /// The patch for a UNet whose first level has `model_channels` channels.
    pub fn new(
        model_channels: usize,
        tile_size: usize,
        swap_size: usize,
        max_depth: usize,
        scale_depth: bool,
    ) -> Self {
        HyperTile {
            apply_to: (0..=max_depth.min(16))
                .map(|d| model_channels << d)
                .collect(),
            model_channels,
            latent_tile_size: tile_size.max(32) / 8,
            swap_size,
            scale_depth,
            counter: AtomicU64::new(1),
        }
    }
}

impl SelfAttentionPatch for HyperTile {
    fn before(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        (lh, lw): (usize, usize),
    ) -> Result<(Tensor, Tensor, Tensor, UndoAttentionPatch)> {
        let unchanged: UndoAttentionPatch = Box::new(Ok);
        let (b, hw, c) = q.dims3()?;
        if !self.apply_to.contains(&c) {
            return Ok((q, k, v, unchanged));
        }
        let (h, w) = find_hw_candidates(hw, lw as f64 / lh as f64);
        let factor = if self.scale_depth {
            let depth = (c / self.model_channels.max(1)).max(1) - 1;
            1usize.checked_shl(depth as u32).unwrap_or(usize::MAX)
        } else {
            1
        };
        let min = self.latent_tile_size.saturating_mul(factor);
        let seed = self.counter.fetch_add(2, Ordering::Relaxed);
        let nh = random_divisor(h, min, self.swap_size, seed);
        let nw = random_divisor(w, min, self.swap_size, seed + 1);
        if nh * nw <= 1 {
            return Ok((q, k, v, unchanged));
        }
        let (th, tw) = (h / nh, w / nw);
        // "b (nh h nw w) c -> (b nh nw) (h w) c"
        let tiled = q
            .reshape((b, nh, th, nw, tw, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b * nh * nw, th * tw, c))?;
        let untile: UndoAttentionPatch = Box::new(move |out: Tensor| {
            let c = out.dim(2)?;
            out.reshape((b, nh, nw, th, tw, c))?
                .permute((0, 1, 3, 2, 4, 5))?
                .reshape((b, hw, c))
        });
        Ok((tiled, k, v, untile))
    }

    fn draw_state(&self) -> Option<DrawState> {
        Some(DrawState::Counter(self.counter.load(Ordering::Relaxed)))
    }

    fn set_draw_state(&self, state: &DrawState) {
        if let DrawState::Counter(state) = state {
            self.counter.store(*state, Ordering::Relaxed);
        }
    }
}

/// `find_hw_candidates`: a (first, second) factor pair of `hw` near `sqrt(hw · aspect)` ×
/// `sqrt(hw / aspect)`, else the divisor pair whose ratio is nearest `aspect`.
pub fn find_hw_candidates(hw: usize, aspect_ratio: f64) -> (usize, usize) {
    let h = (hw as f64 * aspect_ratio).sqrt().round_ties_even() as usize;
    let w = (hw as f64 / aspect_ratio).sqrt().round_ties_even() as usize;
    if h * w == hw {
        return (h, w);
    }
    if h > 0 && hw.is_multiple_of(h) {
        return (h, hw / h);
    }
    if w > 0 && hw.is_multiple_of(w) {
        return (hw / w, w);
    }
    // `iterative_closest_divisors`: the first pair with the nearest ratio.
    let mut best: Option<((usize, usize), f64)> = None;
    for i in (2..=hw).filter(|&i| hw.is_multiple_of(i)) {
        let pair = (i, hw / i);
        let distance = (pair.1 as f64 / pair.0 as f64 - aspect_ratio).abs();
        if best.is_none_or(|(_, d)| distance < d) {
            best = Some((pair, distance));
        }
    }
    best.map_or((hw, 1), |(pair, _)| pair)
}

/// `random_divisor`: `value / d` for one of the `max_options` smallest divisors `d` of `value`
/// from `min_value` up, chosen by `random.seed(counter); random.randint(0, n - 1)`.
pub fn random_divisor(value: usize, min_value: usize, max_options: usize, counter: u64) -> usize {
    let min_value = min_value.min(value).max(1);
    let options: Vec<usize> = (min_value..=value)
        .filter(|&i| value.is_multiple_of(i))
        .take(max_options.max(1))
        .map(|d| value / d)
        .collect();
    if options.is_empty() {
        return 1;
    }
    let index = PythonRandom::seeded(counter).randbelow(options.len() as u32);
    options[index as usize]
}

/// CPython's `random.Random`: MT19937 seeded from an integer (`init_by_array` over its 32-bit
/// words), with `_randbelow` by rejection on `getrandbits`.
pub struct PythonRandom {
    state: [u32; 624],
    index: usize,
}

impl PythonRandom {
    /// `random.seed(seed)` for a non-negative integer.
    pub fn seeded(seed: u64) -> Self {
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        let mut mt = [0u32; 624];
        mt[0] = 19_650_218;
        for i in 1..624 {
            let prev = mt[i - 1];
            mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624.max(key.len()) {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            let prev = mt[i - 1];
            mt[i] =
                (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        PythonRandom {
            state: mt,
            index: 624,
        }
    }

    /// The next 32 random bits (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % 624] & 0x7fff_ffff);
                let mut next = self.state[(k + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    next ^= 0x9908_b0df;
                }
                self.state[k] = next;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `_randbelow(n)` for `n > 0`: `getrandbits(n.bit_length())` until below `n`.
    pub fn randbelow(&mut self, n: u32) -> u32 {
        let bits = u32::BITS - n.leading_zeros();
        loop {
            let r = self.next_u32() >> (32 - bits);
            if r < n {
                return r;
            }
        }
    }
}
