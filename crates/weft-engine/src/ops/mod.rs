//! Weft's own versions of the tensor ops where candle's generic CPU op was measurably slow:
//! convolution, GroupNorm(+SiLU) and attention at the SD shapes (`benches/ops.rs`), each running
//! its own kernel on the CPU in f32 and falling back to candle's op on every other device and
//! dtype, so CUDA and Metal builds go through candle as before; and the transposed convolution of
//! the line-art annotators, restated in candle ops around one matmul; residual additions into a
//! layer's fresh output. Each file says what candle's op did wrong.

pub mod attention;
mod attention_bf16;
mod buffer;
pub mod cast;
pub mod conv;
pub mod conv_transpose;
pub mod geglu;
pub mod gemm_bf16;
pub mod layers;
mod linear_f32;
pub mod math;
pub mod norm;
pub mod residual;
pub mod transpose;
mod winograd;

/// torch's `F.pad(.., mode="reflect")` by `pad` on both spatial axes of `[B, C, H, W]`.
pub(crate) fn reflect_pad(
    img: &candle_core::Tensor,
    pad: usize,
) -> candle_core::Result<candle_core::Tensor> {
    reflect_pad_hw(img, pad, pad)
}

/// torch's `F.pad(.., mode="reflect")` by `pad_h` rows above and below and `pad_w` columns left
/// and right of `[B, C, H, W]`.
pub(crate) fn reflect_pad_hw(
    img: &candle_core::Tensor,
    pad_h: usize,
    pad_w: usize,
) -> candle_core::Result<candle_core::Tensor> {
    let mut out = img.clone();
    for (dim, pad) in [(2, pad_h), (3, pad_w)] {
        if pad == 0 {
            continue;
        }
        let n = out.dim(dim)?;
        if pad >= n {
            candle_core::bail!("cannot reflect-pad {n} pixels by {pad}");
        }
        let index: Vec<u32> = (0..n + 2 * pad)
            .map(|i| {
                let i = i as i64 - pad as i64;
                let reflected = if i < 0 {
                    -i
                } else if i >= n as i64 {
                    2 * (n as i64 - 1) - i
                } else {
                    i
                };
                reflected as u32
            })
            .collect();
        let index = candle_core::Tensor::from_vec(index, n + 2 * pad, img.device())?;
        out = out.index_select(&index, dim)?;
    }
    Ok(out)
}

/// The largest absolute difference between two tensors, for the ops' tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}
