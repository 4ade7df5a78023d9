//! Scaled dot-product attention.
//!
//! Why our own: the plain form materialises all [B*H, N, M] scores at once (1 GiB for the UNet's
//! 4096-token self-attention at batch 2), scales them in a pass of their own and runs a softmax
//! with one libm `exp` per score; streaming that much memory cost more than the two matmuls. On
//! the CPU in f32 this folds the scale into the (small) queries and, one head at a time, works
//! through the queries in chunks whose scores fit in `SCORE_BUDGET` floats (about one core's L2
//! cache), with a vectorised softmax in place (see [`crate::ops::math`]). Heads run in
//! parallel when there are enough of them. Other devices and dtypes keep the plain form with the
//! softmax in f32.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Tensor, D};
use rayon::prelude::*;

use crate::ops::math::softmax_rows_in_place;

/// Most score floats one query chunk may hold (1 MiB) when heads run in parallel.
const SCORE_BUDGET: usize = 256 << 10;

/// The same when one head at a time is split over all threads (16 MiB).
const SCORE_BUDGET_ONE_HEAD: usize = 4 << 20;

/// softmax(q kᵀ / sqrt(d)) v over [B, H, N, D] queries and [B, H, M, D] keys and values, the
/// softmax in f32. Returns [B, H, N, D] in q's dtype.
pub fn scaled_dot_product(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let dtype = q.dtype();
    let head_dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let cpu_kernel =
        matches!(q.device(), Device::Cpu) && [q, k, v].iter().all(|t| t.dtype() == DType::F32);
    if !cpu_kernel {
        let q = q.to_dtype(DType::F32)?;
        let k = k.to_dtype(DType::F32)?;
        let v = v.to_dtype(DType::F32)?;
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        return probs.matmul(&v)?.to_dtype(dtype);
    }
    let (batch, heads, queries, _) = q.dims4()?;
    let (_, _, keys, value_dim) = v.dims4()?;
    let q = (q * scale)?.reshape((batch * heads, queries, head_dim))?;
    let k = k.reshape((batch * heads, keys, head_dim))?;
    let v = v.reshape((batch * heads, keys, value_dim))?;
    // With fewer heads than threads (the VAE's single head), each matmul is split over the
    // threads instead, and larger chunks keep gemm from re-packing the keys for every few rows.
    let parallel_heads = batch * heads >= rayon::current_num_threads();
    let budget = if parallel_heads {
        SCORE_BUDGET
    } else {
        SCORE_BUDGET_ONE_HEAD
    };
    let rows = (budget / keys.max(1)).clamp(1, queries.max(1));
    let one_head = |head: usize| -> Result<Tensor> {
        let (q, k_t, v) = (q.get(head)?, k.get(head)?.t()?, v.get(head)?);
        let mut chunks = Vec::with_capacity(queries.div_ceil(rows));
        for first in (0..queries).step_by(rows) {
            let scores = q
                .narrow(0, first, rows.min(queries - first))?
                .matmul(&k_t)?;
            scores.inplace_op1(&SoftmaxLastDim)?;
            chunks.push(scores.matmul(&v)?);
        }
        Tensor::cat(&chunks, 0)
    };
    let outs = if parallel_heads {
        (0..batch * heads)
            .into_par_iter()
            .map(one_head)
            .collect::<Result<Vec<_>>>()?
    } else {
        (0..batch * heads)
            .map(one_head)
            .collect::<Result<Vec<_>>>()?
    };
    Tensor::stack(&outs, 0)?.reshape((batch, heads, queries, value_dim))
}

/// Softmax over the last dimension of a contiguous f32 tensor, in place.
struct SoftmaxLastDim;

impl InplaceOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "weft-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("softmax needs a contiguous tensor".into()))?;
        let len = layout.dims().last().copied().unwrap_or(1);
        match storage {
            CpuStorage::F32(data) => {
                softmax_rows_in_place(&mut data[start..end], len);
                Ok(())
            }
            _ => candle_core::bail!("weft softmax is f32 only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use crate::ops::attention::scaled_dot_product;

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (q, k, v) = (
            q.contiguous().unwrap(),
            k.contiguous().unwrap(),
            v.contiguous().unwrap(),
        );
        let scale = 1.0 / (q.dim(3).unwrap() as f64).sqrt();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v)
            .unwrap()
    }

    fn check(batch: usize, heads: usize, queries: usize, keys: usize, dim: usize) {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 2.0, (batch, heads, queries, dim), &dev).unwrap();
        let k = Tensor::randn(0f32, 2.0, (batch, heads, keys, dim), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (batch, heads, keys, dim), &dev).unwrap();
        let got = scaled_dot_product(&q, &k, &v).unwrap();
        assert_eq!(got.dims(), &[batch, heads, queries, dim]);
        let diff = crate::ops::max_abs_diff(&got, &reference(&q, &k, &v));
        assert!(diff < 1e-4, "max abs diff {diff}");
    }

    #[test]
    fn self_and_cross_attention_match_the_plain_form() {
        check(2, 3, 17, 17, 8);
        check(1, 1, 5, 77, 12);
        check(3, 2, 1, 1, 4);
    }

    #[test]
    fn chunked_queries_match_the_plain_form() {
        // 256 Ki scores / 1100 keys = 238 query rows per chunk, so 700 queries take three chunks.
        check(2, 3, 700, 1100, 5);
    }

    #[test]
    fn non_contiguous_inputs_match_the_plain_form() {
        let dev = Device::Cpu;
        // [B, N, H, D] projections seen as [B, H, N, D], as the UNet's heads are.
        let heads = |n: usize| {
            Tensor::randn(0f32, 1.0, (2, n, 4, 6), &dev)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
        };
        let (q, k, v) = (heads(9), heads(11), heads(11));
        let got = scaled_dot_product(&q, &k, &v).unwrap();
        let diff = crate::ops::max_abs_diff(&got, &reference(&q, &k, &v));
        assert!(diff < 1e-4, "max abs diff {diff}");
    }
}
