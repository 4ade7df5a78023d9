//! Weights kept at the precision they are stored in and widened where a layer uses them.
//!
//! SD checkpoints ship in f16 (or bf16). On the CPU the models keep those weights as they are,
//! half the memory of f32, and every layer widens its weight to the input's dtype (f32) just
//! before its matmul or convolution, the way ComfyUI's `manual_cast` runs `--fp16-unet`: the
//! arithmetic is f32 as before and the result is the same to the bit, because widening f16 or
//! bf16 to f32 is exact. Why not candle's `to_dtype`: it converts element by element on one
//! thread; this converts with the CPU's F16C instructions (the `half` crate picks them at run
//! time) on every core, which keeps the cost per UNet step small beside its arithmetic.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::ops::buffer;

/// Elements one task converts (256 KiB of f32: big enough to amortise the task, small enough to
/// spread a layer's weight over every core).
const CHUNK: usize = 64 << 10;

/// `t` in `dtype`: the same tensor when it already is, a parallel widening for f16/bf16 -> f32
/// on the CPU, candle's conversion otherwise.
pub fn to_dtype(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        return Ok(t.clone());
    }
    let widens = matches!(t.device(), Device::Cpu)
        && dtype == DType::F32
        && matches!(t.dtype(), DType::F16 | DType::BF16 | DType::F8E4M3);
    if widens {
        t.contiguous()?.apply_op1_no_bwd(&Widen)
    } else {
        t.to_dtype(dtype)
    }
}

/// A layer's weight ready to meet its input `xs`: on `xs`'s device (a weight kept in RAM by a
/// partial load, `engine::load::placement`, crosses to the GPU here, per call) and in its dtype.
pub fn operand(weight: &Tensor, xs: &Tensor) -> Result<Tensor> {
    let weight = if weight.device().same_device(xs.device()) {
        weight.clone()
    } else {
        weight.to_device(xs.device())?
    };
    to_dtype(&weight, xs.dtype())
}

/// An optional weight (a bias) as [`operand`].
pub fn operand_opt(weight: Option<&Tensor>, xs: &Tensor) -> Result<Option<Tensor>> {
    weight.map(|w| operand(w, xs)).transpose()
}

struct Widen;

impl CustomOp1 for Widen {
    fn name(&self) -> &'static str {
        "weft-widen"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("widening needs a contiguous tensor".into()))?;
        let mut out = buffer::zeros(end - start);
        match storage {
            CpuStorage::F16(src) => out
                .par_chunks_mut(CHUNK)
                .zip(src[start..end].par_chunks(CHUNK))
                .for_each(|(dst, src)| src.convert_to_f32_slice(dst)),
            CpuStorage::BF16(src) => out
                .par_chunks_mut(CHUNK)
                .zip(src[start..end].par_chunks(CHUNK))
                .for_each(|(dst, src)| src.convert_to_f32_slice(dst)),
            CpuStorage::F8E4M3(src) => {
                // 256 values: a table is faster than decoding each byte.
                let table: Vec<f32> = (0..=255u8)
                    .map(|b| float8::F8E4M3::from_bits(b).to_f32())
                    .collect();
                out.par_chunks_mut(CHUNK)
                    .zip(src[start..end].par_chunks(CHUNK))
                    .for_each(|(dst, src)| {
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d = table[usize::from(s.to_bits())];
                        }
                    })
            }
            _ => candle_core::bail!("only f16, bf16 and f8e4m3 widen to f32"),
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_exact_and_keeps_the_shape() {
        let values: Vec<f32> = (0..200_000)
            .map(|i| ((i as f32) * 0.37).sin() * 60.0)
            .collect();
        let t = Tensor::from_vec(values, (400, 500), &Device::Cpu).unwrap();
        for half in [DType::F16, DType::BF16] {
            let stored = t.to_dtype(half).unwrap();
            let ours = to_dtype(&stored, DType::F32).unwrap();
            let candle = stored.to_dtype(DType::F32).unwrap();
            assert_eq!(ours.dims(), &[400, 500]);
            assert_eq!(
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                candle.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            // A transposed (non-contiguous) view widens to the same values.
            let tr = to_dtype(&stored.t().unwrap(), DType::F32).unwrap();
            assert_eq!(
                tr.to_vec2::<f32>().unwrap(),
                candle.t().unwrap().to_vec2::<f32>().unwrap()
            );
        }
        // Same dtype: the same storage, no copy.
        let same = to_dtype(&t, DType::F32).unwrap();
        assert_eq!(same.id(), t.id());
    }
}
