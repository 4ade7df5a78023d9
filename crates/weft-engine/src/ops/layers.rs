//! Linear, LayerNorm and Embedding layers whose weights stay at their stored precision.
//!
//! Same weights, names and results as candle-nn's layers (they run candle-nn's own forward), but
//! each widens its weights to the input's dtype first ([`crate::ops::cast`]), so an f16
//! model computes in f32 on the CPU. The constructors read `vb` as candle-nn's do. A linear layer
//! with bf16 weights multiplies with [`crate::ops::gemm_bf16`] instead on CPUs with AVX512_BF16
//! (bf16 products, f32 sums and output), and an f32 one with few rows beside its weight computes
//! `(W x^T)^T` on the CPU, so gemm does not repack the weight (`Linear::few_rows_forward`): the
//! same sums, in another order. Any other f32 linear layer on the CPU is one gemm call into an
//! output that starts as the bias ([`crate::ops::linear_f32`]), not candle's matmul (one
//! `memset` on the calling thread) and a second pass for the bias.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::device::compute_dtype;
use crate::ops::cast::{operand, operand_opt, to_dtype};
use crate::ops::gemm_bf16::{self, PackedWeight};
use crate::ops::{buffer, linear_f32, transpose};

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

    /// Whether `xs` goes through the layer's packed bf16 weight ([`gemm_bf16`]), packed once,
    /// rather than a product that packs the weight again on every call.
    pub fn keeps_its_weight_packed(&self, xs: &Tensor) -> bool {
        gemm_bf16::applies(xs, &self.weight)
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
            let bias = operand_opt(self.bias.as_ref(), xs)?
                .map(|bias| bias.to_vec1::<f32>())
                .transpose()?;
            let ys = gemm_bf16::matmul_packed_rhs_bias(
                &xs.reshape((rows, in_dim))?,
                packed,
                bias.as_deref(),
            )?;
            dims.push(packed.lines());
            return ys.reshape(dims);
        }
        if let Some(ys) = self.few_rows_forward(xs)? {
            return Ok(ys);
        }
        if let Some(ys) = self.cpu_f32_forward(xs)? {
            return Ok(ys);
        }
        candle_nn::Linear::new(
            operand(&self.weight, xs)?,
            operand_opt(self.bias.as_ref(), xs)?,
        )
        .forward(xs)
    }
}

impl Linear {
    /// `x W^T + b` for an f32 input on the CPU through [`linear_f32`] (no serial zeroing, the
    /// bias written before the product instead of added after it); `None` elsewhere.
    fn cpu_f32_forward(&self, xs: &Tensor) -> Result<Option<Tensor>> {
        if !matches!(xs.device(), Device::Cpu) || xs.dtype() != DType::F32 {
            return Ok(None);
        }
        let (out_dim, in_dim) = self.weight.dims2()?;
        let mut dims = xs.dims().to_vec();
        if dims.pop() != Some(in_dim) {
            candle_core::bail!(
                "linear: an input of {:?} for a layer of {in_dim} inputs",
                xs.dims()
            );
        }
        let rows = dims.iter().product::<usize>();
        let weight = operand(&self.weight, xs)?;
        let bias = operand_opt(self.bias.as_ref(), xs)?;
        let what = "a linear layer";
        let ys = buffer::with_f32(xs, what, |x| {
            buffer::with_f32(&weight, what, |w| match &bias {
                Some(bias) => buffer::with_f32(bias, what, |b| {
                    linear_f32::linear(x, (rows, in_dim), w, out_dim, Some(b))
                })?,
                None => linear_f32::linear(x, (rows, in_dim), w, out_dim, None),
            })?
        })??;
        dims.push(out_dim);
        Ok(Some(Tensor::from_vec(ys, dims, &Device::Cpu)?))
    }

    /// `x W^T + b` as `(W x^T)^T + b`, for an f32 input on the CPU with few rows (tokens) beside
    /// the weight's size; `None` where the usual product is cheaper.
    ///
    /// Why: the product `x W^T` writes rows of `out` values, so gemm's kernel runs along `out`
    /// and must first copy the whole `[out, in]` weight into its panel layout, on every call.
    /// For a small latent (a 64x64 image: 64 tokens, 4 at the deepest level) or the 77 tokens
    /// of a cross-attention's keys and values, that copy of the weight costs more than the
    /// product (43% of a 64x64 SD1.5 step was gemm's packing). `W x^T` runs along the tokens
    /// and reads the weight where it lies; what it costs instead is packing `x` and turning
    /// the `[out, rows]` result around (with the bias added in the same pass).
    fn few_rows_forward(&self, xs: &Tensor) -> Result<Option<Tensor>> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let mut dims = xs.dims().to_vec();
        let rows = dims[..dims.len().saturating_sub(1)]
            .iter()
            .product::<usize>();
        let cpu_f32 = matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32;
        if !cpu_f32 || rows * (in_dim + out_dim) >= out_dim * in_dim {
            return Ok(None);
        }
        let weight = operand(&self.weight, xs)?.contiguous()?;
        let xs_2d = xs.reshape((rows, in_dim))?;
        let product = weight.matmul(&xs_2d.t()?)?;
        let ys = transpose::swap_last_two(&product, operand_opt(self.bias.as_ref(), xs)?.as_ref())?;
        dims.pop();
        dims.push(out_dim);
        Ok(Some(ys.reshape(dims)?))
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

    /// f32 on the CPU: the same values as candle-nn's layer whichever way the product runs
    /// (few rows: `W x^T` turned around; many: `x W^T`), for 2-, 3- and 4-D and transposed
    /// inputs, with and without bias.
    #[test]
    fn f32_linear_matches_candle_nn_for_few_and_many_rows() {
        let dev = Device::Cpu;
        for (shape, in_dim, out_dim, with_bias) in [
            (vec![3], 64, 96, true),
            (vec![2, 77], 768, 320, true),
            (vec![2, 5, 7], 40, 33, false),
            (vec![1, 4096], 32, 48, true),
            (vec![1], 1, 1, true),
        ] {
            let mut dims = shape.clone();
            dims.push(in_dim);
            let xs = Tensor::randn(0f32, 1.0, dims, &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev).unwrap();
            let bias = with_bias.then(|| Tensor::randn(0f32, 1.0, out_dim, &dev).unwrap());
            let layer = Linear::new(weight.clone(), bias.clone());
            let expected = candle_nn::Linear::new(weight, bias).forward(&xs).unwrap();
            let got = layer.forward(&xs).unwrap();
            assert_eq!(got.dims(), expected.dims());
            let diff = crate::ops::max_abs_diff(&got, &expected);
            assert!(
                diff < 1e-4,
                "{shape:?} x {in_dim} -> {out_dim}: max abs diff {diff}"
            );
        }
        // A transposed input (rows not contiguous) gives the same as its copy.
        let xs = Tensor::randn(0f32, 1.0, (64, 5), &dev)
            .unwrap()
            .t()
            .unwrap();
        let layer = Linear::new(Tensor::randn(0f32, 1.0, (128, 64), &dev).unwrap(), None);
        let diff = crate::ops::max_abs_diff(
            &layer.forward(&xs).unwrap(),
            &layer.forward(&xs.contiguous().unwrap()).unwrap(),
        );
        assert!(diff < 1e-5, "{diff}");
    }
}
