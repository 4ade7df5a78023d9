//! Linear, LayerNorm and Embedding layers whose weights stay at their stored precision.
//!
//! Same weights, names and results as candle-nn's layers (they run candle-nn's own forward), but
//! each widens its weights to the input's dtype first ([`crate::ops::cast`]), so an f16
//! model computes in f32 on the CPU. The constructors read `vb` as candle-nn's do. A linear layer
//! with bf16 weights multiplies with [`crate::ops::gemm_bf16`] instead on CPUs with AVX512_BF16
//! (bf16 products, f32 sums and output).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::device::compute_dtype;
use crate::ops::cast::{operand, operand_opt, to_dtype};
use crate::ops::gemm_bf16::{self, PackedWeight};

/// `x W^T + b`, as `candle_nn::Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// `W^T` for the bf16 kernel, packed on first use.
    packed: PackedWeight,
}

impl Linear {
    /// `weight`: `[out, in]`; `bias`: `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            packed: PackedWeight::default(),
        }
    }

    /// The weight, `[out, in]`, in its stored dtype.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[out]`; `None` when the layer has none.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if gemm_bf16::applies(xs, &self.weight) {
            let packed = self
                .packed
                .get_or_pack(|| gemm_bf16::pack_rhs(&self.weight.t()?))?;
            let mut dims = xs.dims().to_vec();
            let in_dim = dims.pop().unwrap_or(1);
            let rows = dims.iter().product::<usize>();
            let ys = gemm_bf16::matmul_packed_rhs(&xs.reshape((rows, in_dim))?, packed)?;
            let ys = match operand_opt(self.bias.as_ref(), xs)? {
                Some(bias) => ys.broadcast_add(&bias)?,
                None => ys,
            };
            dims.push(packed.lines());
            return ys.reshape(dims);
        }
        candle_nn::Linear::new(
            operand(&self.weight, xs)?,
            operand_opt(self.bias.as_ref(), xs)?,
        )
        .forward(xs)
    }
}

/// A linear layer with bias, read from `vb` (`weight`, `bias`).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let layer = candle_nn::linear(in_dim, out_dim, vb)?;
    Ok(Linear::new(layer.weight().clone(), layer.bias().cloned()))
}

/// A linear layer without bias, read from `vb` (`weight`).
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let layer = candle_nn::linear_no_bias(in_dim, out_dim, vb)?;
    Ok(Linear::new(layer.weight().clone(), None))
}

/// LayerNorm over the last dimension with a scale and shift, as `candle_nn::LayerNorm`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::LayerNorm::new(
            operand(&self.weight, xs)?,
            operand(&self.bias, xs)?,
            self.eps,
        )
        .forward(xs)
    }
}

impl LayerNorm {
    /// The same weights with another epsilon.
    pub fn with_eps(self, eps: f64) -> Self {
        LayerNorm { eps, ..self }
    }
}

/// A LayerNorm read from `vb` (`weight`, `bias`).
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.))?;
    Ok(LayerNorm { weight, bias, eps })
}

/// A lookup table: ids to rows, widened after the lookup (only the rows used are converted).
#[derive(Debug, Clone)]
pub struct Embedding {
    embeddings: Tensor,
}

impl Embedding {
    /// The table, `[vocab, dim]`, in its stored dtype.
    pub fn embeddings(&self) -> &Tensor {
        &self.embeddings
    }

    /// The dtype its rows come out in.
    pub fn dtype(&self) -> DType {
        compute_dtype(self.embeddings.device(), self.embeddings.dtype())
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.embeddings.dim(1)?);
        let ids_device = ids.device();
        // Looked up where the table is (RAM after a partial load), sent where the ids are.
        let ids = ids.flatten_all()?.to_device(self.embeddings.device())?;
        let rows = self.embeddings.index_select(&ids, 0)?;
        to_dtype(&rows, self.dtype())?
            .to_device(ids_device)?
            .reshape(dims)
    }
}

/// An embedding table of `count` rows of `dim`, read from `vb` (`weight`).
pub fn embedding(count: usize, dim: usize, vb: VarBuilder) -> Result<Embedding> {
    Ok(Embedding {
        embeddings: vb.get((count, dim), "weight")?,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor};

    use super::Linear;

    /// bf16 weights: the f32 product of the input and weights rounded to bf16 (the bf16 kernel
    /// sums in f32; without it, the input is not rounded), at 3-D inputs and odd sizes, with and
    /// without bias.
    #[test]
    fn bf16_linear_matches_the_rounded_f32_layer() {
        crate::ops::gemm_bf16::enable_in_this_test();
        let dev = Device::Cpu;
        let round = |t: &Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        for (batch, tokens, in_dim, out_dim, with_bias) in [
            (2, 77, 33, 65, true),
            (1, 5, 320, 7, false),
            (2, 1, 1, 1, true),
        ] {
            let xs = Tensor::randn(0f32, 1.0, (batch, tokens, in_dim), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
            let bias = with_bias.then(|| Tensor::randn(0f32, 1.0, out_dim, &dev).unwrap());
            let layer = Linear::new(
                weight.to_dtype(DType::BF16).unwrap(),
                bias.as_ref().map(|b| b.to_dtype(DType::BF16).unwrap()),
            );
            let expected = candle_nn::Linear::new(round(&weight), bias.as_ref().map(round))
                .forward(&if crate::ops::gemm_bf16::available() {
                    round(&xs)
                } else {
                    xs.clone()
                })
                .unwrap();
            let got = layer.forward(&xs).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            assert_eq!(got.dims(), &[batch, tokens, out_dim]);
            let diff = crate::ops::max_abs_diff(&got, &expected);
            assert!(diff < 1e-3, "max abs diff {diff}");
            // Twice: the second call uses the weight packed by the first.
            let again = layer.forward(&xs).unwrap();
            assert_eq!(crate::ops::max_abs_diff(&again, &got), 0.0);
        }
    }
}
