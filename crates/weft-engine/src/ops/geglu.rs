//! GEGLU's gate, `value * gelu(gate)` over the two halves of a feed-forward projection, in one
//! pass on the CPU.
//!
//! Why our own: candle ran it as two strided narrows, a GELU through libm's `erff` one element at
//! a time, and a multiply, writing two intermediate tensors the size of the product (2 x 42 MB
//! per SD1.5 block at 512x512). Here each row is read once and the product written once, with
//! the vectorised [`math::gelu_erf`]. f32 and bf16 (read and written as stored, computed in
//! f32) on the CPU; every other device and dtype goes through candle's ops as before.
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, D};
use half::bf16;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::ops::{buffer, math};

/// `h[.., :n] * gelu_erf(h[.., n:])` for `h` whose last dimension is `2n`.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    let width = h.dim(D::Minus1)?;
    if width % 2 != 0 {
        candle_core::bail!("geglu needs an even last dimension, got {:?}", h.dims());
    }
    let inner = width / 2;
    let native = matches!(h.device(), Device::Cpu) && matches!(h.dtype(), DType::F32 | DType::BF16);
    if !native {
        let value = h.narrow(D::Minus1, 0, inner)?;
        let gate = h.narrow(D::Minus1, inner, inner)?;
        return value * gate.gelu_erf()?;
    }
    h.contiguous()?.apply_op1_no_bwd(&Geglu)
}

struct Geglu;

/// Rows per task: enough to amortise a task, few enough to share a UNet block's 8192 rows.
const ROWS_PER_TASK: usize = 16;

/// A task's rows, `dst[j] = value[j] * gelu(gate[j])` through `T`, as a `WithSimd` so that the
/// loop is compiled for the CPU's widest vectors (a closure handed to `dispatch` was not
/// inlined into it, and ran one element at a time).
struct Rows<'a, T, G, P> {
    src: &'a [T],
    dst: &'a mut [T],
    inner: usize,
    get: G,
    put: P,
}

impl<T: Copy, G: Fn(T) -> f32, P: Fn(f32) -> T> WithSimd for Rows<'_, T, G, P> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Self {
            src,
            dst,
            inner,
            get,
            put,
        } = self;
        for (dst, src) in dst.chunks_exact_mut(inner).zip(src.chunks_exact(2 * inner)) {
            let (value, gate) = src.split_at(inner);
            for ((d, &v), &g) in dst.iter_mut().zip(value).zip(gate) {
                *d = put(get(v) * math::gelu_erf(get(g)));
            }
        }
    }
}

fn rows<T: Copy + Send + Sync + Default>(
    src: &[T],
    inner: usize,
    get: impl Fn(T) -> f32 + Sync,
    put: impl Fn(f32) -> T + Sync,
) -> Vec<T> {
    let mut dst = buffer::zeros::<T>(src.len() / 2);
    if inner > 0 {
        dst.par_chunks_mut(inner * ROWS_PER_TASK)
            .zip(src.par_chunks(2 * inner * ROWS_PER_TASK))
            .for_each(|(dst, src)| {
                pulp::Arch::new().dispatch(Rows {
                    src,
                    dst,
                    inner,
                    get: &get,
                    put: &put,
                })
            });
    }
    dst
}

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "weft-geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("geglu needs a contiguous tensor".into()))?;
        let mut dims = layout.dims().to_vec();
        let inner = dims.last().copied().unwrap_or(0) / 2;
        if let Some(last) = dims.last_mut() {
            *last = inner;
        }
        let out = match storage {
            CpuStorage::F32(s) => CpuStorage::F32(rows(&s[start..end], inner, |x| x, |x| x)),
            CpuStorage::BF16(s) => {
                CpuStorage::BF16(rows(&s[start..end], inner, bf16::to_f32, bf16::from_f32))
            }
            _ => candle_core::bail!("geglu on the CPU takes f32 or bf16"),
        };
        Ok((out, Shape::from_dims(&dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(h: &Tensor) -> Result<Tensor> {
        let inner = h.dim(D::Minus1)? / 2;
        h.narrow(D::Minus1, 0, inner)? * h.narrow(D::Minus1, inner, inner)?.gelu_erf()?
    }

    /// The largest difference, and the largest value of `want`.
    fn max_diff(got: Tensor, want: Tensor) -> Result<(f32, f32)> {
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok((diff, scale))
    }

    #[test]
    fn matches_candles_narrow_gelu_multiply_in_f32_and_bf16() -> Result<()> {
        // 37 rows: tasks of 16 rows and a short last one; a non-contiguous input too.
        let h = (Tensor::randn(0f32, 2.0, (37, 2 * 70), &Device::Cpu)? * 1.5)?;
        let got = geglu(&h)?;
        assert_eq!(got.dims(), [37, 70]);
        let (diff, scale) = max_diff(got, reference(&h)?)?;
        assert!(
            diff <= 1e-6 * scale,
            "f32 differs by {diff} (values up to {scale})"
        );

        let t = h.reshape((2 * 70, 37))?.t()?;
        let (diff, scale) = max_diff(geglu(&t)?, reference(&t)?)?;
        assert!(diff <= 1e-6 * scale, "transposed input differs by {diff}");

        let b = h.to_dtype(DType::BF16)?;
        let got = geglu(&b)?.to_dtype(DType::F32)?;
        let (diff, scale) = max_diff(got, reference(&b)?.to_dtype(DType::F32)?)?;
        assert!(
            diff <= scale / 128.0,
            "bf16 differs by {diff} (values up to {scale})"
        );
        Ok(())
    }

    #[test]
    fn an_odd_width_is_an_error() -> Result<()> {
        let h = Tensor::zeros((2, 5), DType::F32, &Device::Cpu)?;
        let err = geglu(&h).unwrap_err().to_string();
        assert!(
            err.contains("even last dimension") && err.contains("[2, 5]"),
            "{err}"
        );
        Ok(())
    }
}
