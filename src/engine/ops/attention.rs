//! Scaled dot-product attention.
//!
//! Why our own: the plain form materialises all [B*H, N, M] scores at once (1 GiB for the UNet's
//! 4096-token self-attention at batch 2, 64 MiB for the VAE's) and scales them in a pass of their
//! own. On the CPU in f32 this folds the scale into the (small) queries and works through the
//! queries in chunks whose scores stay under [`SCORE_BUDGET`] floats. Other devices and dtypes
//! keep the plain form with the softmax in f32.

use candle_core::{DType, Device, Result, Tensor, D};

/// Most score floats one query chunk may hold (32 MiB).
const SCORE_BUDGET: usize = 8 << 20;

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
    let keys = k.dim(2)?;
    let q = (q * scale)?;
    let k_t = k.t()?;
    let rows = (SCORE_BUDGET / (batch * heads * keys).max(1)).clamp(1, queries.max(1));
    let mut outs = Vec::with_capacity(queries.div_ceil(rows));
    for first in (0..queries).step_by(rows) {
        let count = rows.min(queries - first);
        let scores = q.narrow(2, first, count)?.matmul(&k_t)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(v)?);
    }
    Tensor::cat(&outs, 2)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use crate::engine::ops::attention::scaled_dot_product;

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let scale = 1.0 / (q.dim(3).unwrap() as f64).sqrt();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    fn check(batch: usize, heads: usize, queries: usize, keys: usize, dim: usize) {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 2.0, (batch, heads, queries, dim), &dev).unwrap();
        let k = Tensor::randn(0f32, 2.0, (batch, heads, keys, dim), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (batch, heads, keys, dim), &dev).unwrap();
        let got = scaled_dot_product(&q, &k, &v).unwrap();
        assert_eq!(got.dims(), &[batch, heads, queries, dim]);
        let diff = (got - reference(&q, &k, &v))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
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
        // 2 x 4 x 1100 keys is over 1/1000 of the budget, so 1100 queries take several chunks.
        check(2, 4, 2100, 1100, 5);
    }
}
