//! ComfyUI's tiled scaling (`comfy.utils.tiled_scale`, which calls `tiled_scale_multidim`): the
//! image is cut into overlapping square tiles, each is scaled on its own, and the results are
//! blended with a mask that ramps linearly over the overlap at every tile edge, then divided by the
//! summed masks. An image that fits one tile is scaled whole.

use candle_core::{Device, Tensor};

/// ComfyUI's `get_tiled_scale_steps`: the tiles of one image, as its progress bar counts them.
pub fn steps(width: usize, height: usize, tile: usize, overlap: usize) -> usize {
    let along = |len: usize| {
        if len <= tile {
            1
        } else {
            (len - overlap).div_ceil(tile.saturating_sub(overlap).max(1))
        }
    };
    along(height) * along(width)
}

/// The tile origins along one side of `len` pixels.
fn positions(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if len <= tile {
        return vec![0];
    }
    let step = tile.saturating_sub(overlap).max(1);
    let mut list: Vec<usize> = (0..len - overlap.min(len)).step_by(step).collect();
    if list.is_empty() {
        list.push(0);
    }
    if list.last().is_some_and(|&p| p + tile < len) {
        list.push(len - tile);
    }
    list
}

/// The blending weights along one side of a scaled tile: `(t + 1) / feather` for the `t`-th
/// pixel from either edge (both, where they meet), none when the tile is not longer than the
/// ramp.
fn ramp(len: usize, feather: usize) -> Vec<f32> {
    let mut weights = vec![1f32; len];
    if feather < len {
        for t in 0..feather {
            let a = ((t + 1) as f64 / feather as f64) as f32;
            weights[t] *= a;
            weights[len - 1 - t] *= a;
        }
    }
    weights
}

/// Scales `samples` (`[B, C, H, W]` f32 on the CPU) by `scale` with `function` applied to tiles
/// of at most `tile` x `tile` pixels overlapping by `overlap`; `function` must return
/// `[1, out_channels, h * scale, w * scale]` for an `h` x `w` tile. `after_tile` runs after each
/// tile (progress, interrupt), and its error stops the work. Returns `[B, out_channels, H *
/// scale, W * scale]` f32 on the CPU.
pub fn tiled_scale<E: From<candle_core::Error>>(
    samples: &Tensor,
    tile: usize,
    overlap: usize,
    scale: usize,
    out_channels: usize,
    mut function: impl FnMut(&Tensor) -> Result<Tensor, E>,
    mut after_tile: impl FnMut() -> Result<(), E>,
) -> Result<Tensor, E> {
    let (batch, _, height, width) = samples.dims4()?;
    let (out_h, out_w) = (height * scale, width * scale);
    let mut results = Vec::with_capacity(batch);
    for b in 0..batch {
        let image = samples.narrow(0, b, 1)?;
        if height <= tile && width <= tile {
            results.push(checked(function(&image)?, out_channels, out_h, out_w)?);
            after_tile()?;
            continue;
        }
        let mut out = vec![0f32; out_channels * out_h * out_w];
        let mut weight = vec![0f32; out_h * out_w];
        let feather = overlap * scale;
        for &y in &positions(height, tile, overlap) {
            for &x in &positions(width, tile, overlap) {
                let y = y.min(height.saturating_sub(overlap));
                let x = x.min(width.saturating_sub(overlap));
                let (h, w) = (tile.min(height - y), tile.min(width - x));
                let part = image.narrow(2, y, h)?.narrow(3, x, w)?;
                let scaled = checked(function(&part)?, out_channels, h * scale, w * scale)?;
                let values = scaled.flatten_all()?.to_vec1::<f32>()?;
                let (th, tw) = (h * scale, w * scale);
                let (rows, cols) = (ramp(th, feather), ramp(tw, feather));
                let (oy, ox) = (y * scale, x * scale);
                for (r, &wy) in rows.iter().enumerate() {
                    let at = (oy + r) * out_w + ox;
                    for (c, &wx) in cols.iter().enumerate() {
                        weight[at + c] += wy * wx;
                    }
                    for ch in 0..out_channels {
                        let src = &values[(ch * th + r) * tw..][..tw];
                        let dst = &mut out[ch * out_h * out_w + at..][..tw];
                        for ((d, &s), &wx) in dst.iter_mut().zip(src).zip(&cols) {
                            *d += s * (wy * wx);
                        }
                    }
                }
                after_tile()?;
            }
        }
        for ch in out.chunks_mut(out_h * out_w) {
            for (v, &w) in ch.iter_mut().zip(&weight) {
                *v /= w;
            }
        }
        results.push(Tensor::from_vec(
            out,
            (1, out_channels, out_h, out_w),
            &Device::Cpu,
        )?);
    }
    Ok(Tensor::cat(&results, 0)?)
}

/// `t` as f32 on the CPU, after checking it has the shape a tile must scale to.
fn checked(t: Tensor, channels: usize, h: usize, w: usize) -> candle_core::Result<Tensor> {
    if t.dims() != [1, channels, h, w] {
        candle_core::bail!(
            "a tile scaled to {:?}, expected {:?}",
            t.dims(),
            [1, channels, h, w]
        );
    }
    t.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_image_as_comfyui_places_them() {
        assert_eq!(positions(14, 12, 4), vec![0, 8]);
        assert_eq!(positions(22, 12, 4), vec![0, 8, 16]);
        assert_eq!(positions(512, 512, 32), vec![0]);
        assert_eq!(steps(1000, 600, 512, 32), 2 * 3);
        assert_eq!(steps(512, 100, 512, 32), 1);
    }

    #[test]
    fn the_ramp_multiplies_twice_where_edges_meet() {
        assert_eq!(ramp(4, 2), vec![0.5, 1.0, 1.0, 0.5]);
        assert_eq!(ramp(3, 2), vec![0.5, 1.0, 0.5]);
        assert_eq!(ramp(2, 2), vec![1.0, 1.0]);
    }

    #[test]
    fn an_identity_blend_gives_the_nearest_upscale_back() {
        let image = Tensor::arange(0f32, 2.0 * 10.0 * 9.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 10, 9))
            .unwrap();
        let nearest = |t: &Tensor| -> candle_core::Result<Tensor> {
            let (_, _, h, w) = t.dims4()?;
            t.upsample_nearest2d(h * 2, w * 2)
        };
        let mut tiles = 0;
        let out = tiled_scale(&image, 4, 1, 2, 2, nearest, || {
            tiles += 1;
            Ok::<(), candle_core::Error>(())
        })
        .unwrap();
        let want = nearest(&image).unwrap();
        let diff = (out - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
        assert_eq!(tiles, 9);
    }
}
