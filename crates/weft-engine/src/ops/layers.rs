//! Linear, LayerNorm and Embedding layers whose weights stay at their stored precision.
//!
//! Same weights, names and results as candle-nn's layers (they run candle-nn's own forward), but
//! each widens its weights to the input's dtype first ([`crate::ops::cast`]), so an f16
//! model computes in f32 on the CPU. The constructors read `vb` as candle-nn's do.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::device::compute_dtype;
use crate::ops::cast::{operand, operand_opt, to_dtype};

/// `x W^T + b`, as `candle_nn::Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `weight`: `[out, in]`; `bias`: `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
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
