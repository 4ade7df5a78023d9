//! Tiled processing with feathered blending, as ComfyUI's `comfy.utils.tiled_scale_multidim`
//! (2-D, integer scale factor).
//!
//! Tiles start every `tile - overlap` pixels (the last ones clamped to the edge), each output tile
//! is weighted by a mask that ramps linearly over `overlap * scale` pixels at every edge, and the
//! weighted sum is divided by the summed masks. An input that fits in one tile is processed whole.

use candle_core::{DType, Result, Tensor};

/// Tile geometry, in input pixels.
#[derive(Debug, Clone, Copy)]
pub struct TileOptions {
    /// (height, width) of a tile.
    pub tile: (usize, usize),
    /// Pixels shared by neighbouring tiles, blended linearly.
    pub overlap: usize,
    /// Output pixels per input pixel (decode) or input pixels per output pixel (encode).
    pub scale: usize,
    /// `true` when the function shrinks its input by `scale` (encode).
    pub downscale: bool,
}

impl TileOptions {
    fn scaled(&self, v: usize) -> usize {
        if self.downscale {
            // Python's round() (ties to even), as ComfyUI uses.
            (v as f64 / self.scale as f64).round_ties_even() as usize
        } else {
            v * self.scale
        }
    }
}

/// The 1-D feather weights of one tile side of `len` output pixels.
fn feather_weights(len: usize, feather: usize) -> Vec<f32> {
    let mut w = vec![1f32; len];
    if feather >= len {
        return w;
    }
    for t in 0..feather {
        let a = (t + 1) as f32 / feather as f32;
        w[t] *= a;
        w[len - 1 - t] *= a;
    }
    w
}

/// Tile start positions along one side of `size` input pixels.
fn positions(size: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if size <= tile {
        return vec![0];
    }
    let step = tile.saturating_sub(overlap).max(1);
    let end = size.saturating_sub(overlap);
    (0..end)
        .step_by(step)
        .map(|p| p.min(size - overlap))
        .collect()
}

/// Runs `function` over overlapping tiles of `samples` [B, C, H, W] and blends the results into
/// [B, out_channels, H', W'] (H' = H*scale or round(H/scale)). Computed per batch item, f32.
pub fn tiled_scale(
    samples: &Tensor,
    function: &dyn Fn(&Tensor) -> Result<Tensor>,
    out_channels: usize,
    opts: &TileOptions,
) -> Result<Tensor> {
    let (batch, _, h, w) = samples.dims4()?;
    if opts.tile.0 == 0 || opts.tile.1 == 0 || opts.scale == 0 {
        candle_core::bail!("tile size and scale must be positive");
    }
    if opts.overlap >= opts.tile.0.min(opts.tile.1) {
        candle_core::bail!(
            "tile overlap {} must be smaller than the tile",
            opts.overlap
        );
    }
    let (oh, ow) = (opts.scaled(h), opts.scaled(w));
    let device = samples.device();
    let mut outputs = Vec::with_capacity(batch);
    for b in 0..batch {
        let s = samples.narrow(0, b, 1)?;
        if h <= opts.tile.0 && w <= opts.tile.1 {
            outputs.push(function(&s)?.to_dtype(DType::F32)?);
            continue;
        }
        let mut acc = Tensor::zeros((1, out_channels, oh, ow), DType::F32, device)?;
        let mut div = Tensor::zeros((1, 1, oh, ow), DType::F32, device)?;
        let feather = opts.scaled(opts.overlap);
        for &py in &positions(h, opts.tile.0, opts.overlap) {
            for &px in &positions(w, opts.tile.1, opts.overlap) {
                let lh = opts.tile.0.min(h - py);
                let lw = opts.tile.1.min(w - px);
                let tile_in = s.narrow(2, py, lh)?.narrow(3, px, lw)?;
                let ps = function(&tile_in)?.to_dtype(DType::F32)?;
                let (_, _, th, tw) = ps.dims4()?;
                let (oy, ox) = (opts.scaled(py), opts.scaled(px));
                if oy + th > oh || ox + tw > ow {
                    candle_core::bail!("tile output {th}x{tw} at ({oy}, {ox}) overflows {oh}x{ow}");
                }
                let wy = Tensor::from_vec(feather_weights(th, feather), (1, 1, th, 1), device)?;
                let wx = Tensor::from_vec(feather_weights(tw, feather), (1, 1, 1, tw), device)?;
                let mask = wy.broadcast_mul(&wx)?;
                // Pad the weighted tile to the full canvas and accumulate.
                let place = |t: &Tensor| -> Result<Tensor> {
                    t.pad_with_zeros(2, oy, oh - oy - th)?
                        .pad_with_zeros(3, ox, ow - ox - tw)
                };
                acc = (acc + place(&ps.broadcast_mul(&mask)?)?)?;
                div = (div + place(&mask)?)?;
            }
        }
        outputs.push(acc.broadcast_div(&div)?);
    }
    Tensor::cat(&outputs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_comfyui() {
        // range(0, 8 - 2, 4 - 2) = [0, 2, 4]
        assert_eq!(positions(8, 4, 2), vec![0, 2, 4]);
        assert_eq!(positions(4, 4, 2), vec![0]);
        // range(0, 10 - 3, 5) = [0, 5], the last clamped to 10 - 3 = 7 only if past it.
        assert_eq!(positions(10, 8, 3), vec![0, 5]);
    }

    #[test]
    fn identity_function_is_reproduced() {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 9.0 * 7.0, &candle_core::Device::Cpu)
            .unwrap()
            .reshape((2, 3, 9, 7))
            .unwrap();
        let opts = TileOptions {
            tile: (4, 3),
            overlap: 1,
            scale: 1,
            downscale: false,
        };
        let y = tiled_scale(&x, &|t| Ok(t.clone()), 3, &opts).unwrap();
        let err: f32 = (y - &x)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(err < 1e-4, "{err}");
    }
}
