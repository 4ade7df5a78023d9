//! The domain classifier of a multi-domain ZoeDepth (transformers'
//! `ZoeDepthMultipleMetricDepthEstimationHeads`: `patch_transformer` and `mlp_classifier`, from
//! the original ZoeD_NK), which picks the bins head (NYU indoors, KITTI outdoors) per batch: the
//! bottleneck map through a 1x1 convolution into tokens, a zero token in front, sinusoidal
//! positions (`sin` then `cos` halves), four post-norm transformer encoder layers (ReLU MLP,
//! LayerNorm eps 1e-5), then the first token through a two-layer MLP to one logit per domain.
//! Widths are read from the weights under `router.`; the heads come from the config.

use std::collections::HashMap;

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::ops::attention::scaled_dot_product;
use crate::ops::conv::{conv2d, Conv2d};
use crate::ops::layers::{layer_norm, linear, LayerNorm, Linear};

/// The encoder layers the classifier runs: `range(4)` in transformers, whatever the config says.
const LAYERS: usize = 4;
/// `nn.LayerNorm`'s default epsilon.
const NORM_EPS: f64 = 1e-5;

/// The shape of the classifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Input width (the bottleneck's).
    pub input: usize,
    /// Token width (`patch_transformer_hidden_size`, 128).
    pub hidden: usize,
    /// Attention heads (`patch_transformer_num_attention_heads`).
    pub heads: usize,
    /// MLP width of the encoder layers.
    pub mlp: usize,
    /// Hidden width of the classifier.
    pub classifier: usize,
    /// Domains (logits).
    pub domains: usize,
}

impl RouterConfig {
    /// From the tensor shapes under `router.`, with `heads` attention heads.
    pub fn detect(
        shapes: &HashMap<String, Vec<usize>>,
        heads: usize,
    ) -> std::result::Result<Self, String> {
        let dim = |name: &str, i: usize| -> std::result::Result<usize, String> {
            let name = format!("router.{name}");
            shapes
                .get(&name)
                .and_then(|s| s.get(i).copied())
                .ok_or_else(|| format!("missing tensor '{name}' (not a multi-domain ZoeDepth?)"))
        };
        let layer = "patch_transformer.transformer_encoder";
        if !shapes.contains_key(&format!("router.{layer}.{}.norm2.weight", LAYERS - 1)) {
            return Err(format!(
                "the domain classifier runs {LAYERS} encoder layers"
            ));
        }
        let hidden = dim("patch_transformer.embedding_convPxP.weight", 0)?;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(format!(
                "{heads} attention heads do not divide the classifier's width {hidden}"
            ));
        }
        Ok(RouterConfig {
            input: dim("patch_transformer.embedding_convPxP.weight", 1)?,
            hidden,
            heads,
            mlp: dim(&format!("{layer}.0.linear1.weight"), 0)?,
            classifier: dim("mlp_classifier.linear1.weight", 0)?,
            domains: dim("mlp_classifier.linear2.weight", 0)?,
        })
    }
}

/// `ZoeDepthTransformerEncoderLayer`: post-norm self-attention and ReLU MLP.
#[derive(Debug)]
struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    linear1: Linear,
    linear2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
    heads: usize,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &RouterConfig) -> candle_core::Result<Self> {
        let d = cfg.hidden;
        let attn = vb.pp("self_attn");
        Ok(EncoderLayer {
            query: linear(d, d, attn.pp("query"))?,
            key: linear(d, d, attn.pp("key"))?,
            value: linear(d, d, attn.pp("value"))?,
            out: linear(d, d, attn.pp("out_proj"))?,
            linear1: linear(d, cfg.mlp, vb.pp("linear1"))?,
            linear2: linear(cfg.mlp, d, vb.pp("linear2"))?,
            norm1: layer_norm(d, NORM_EPS, vb.pp("norm1"))?,
            norm2: layer_norm(d, NORM_EPS, vb.pp("norm2"))?,
            heads: cfg.heads,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let split = |l: &Linear| -> candle_core::Result<Tensor> {
            l.forward(x)?
                .reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let attn = scaled_dot_product(
            &split(&self.query)?,
            &split(&self.key)?,
            &split(&self.value)?,
        )?
        .transpose(1, 2)?
        .reshape((b, n, d))?;
        let x = self.norm1.forward(&(x + self.out.forward(&attn)?)?)?;
        let ff = self.linear2.forward(&self.linear1.forward(&x)?.relu()?)?;
        self.norm2.forward(&(x + ff)?)
    }
}

/// The domain classifier.
#[derive(Debug)]
pub struct Router {
    embed: Conv2d,
    layers: Vec<EncoderLayer>,
    classifier: [Linear; 2],
}

impl Router {
    /// From `vb` at `router`.
    pub fn new(vb: VarBuilder, cfg: &RouterConfig) -> candle_core::Result<Self> {
        let pt = vb.pp("patch_transformer");
        let mlp = vb.pp("mlp_classifier");
        Ok(Router {
            embed: conv2d(
                cfg.input,
                cfg.hidden,
                1,
                Conv2dConfig::default(),
                pt.pp("embedding_convPxP"),
            )?,
            layers: (0..LAYERS)
                .map(|i| EncoderLayer::new(pt.pp(format!("transformer_encoder.{i}")), cfg))
                .collect::<candle_core::Result<_>>()?,
            classifier: [
                linear(cfg.hidden, cfg.classifier, mlp.pp("linear1"))?,
                linear(cfg.classifier, cfg.domains, mlp.pp("linear2"))?,
            ],
        })
    }

    /// The domain logits `[B, domains]` of the bottleneck map `[B, C, h, w]` (after `conv2`).
    pub fn logits(&self, bottleneck: &Tensor) -> candle_core::Result<Tensor> {
        let tokens = self.embed.forward(bottleneck)?.flatten_from(2)?;
        let (b, d, n) = tokens.dims3()?;
        let zero = Tensor::zeros((b, d, 1), tokens.dtype(), tokens.device())?;
        let tokens = Tensor::cat(&[&zero, &tokens], 2)?.transpose(1, 2)?;
        let mut x = tokens.broadcast_add(&positions(n + 1, d, tokens.device())?)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        let first = x.narrow(1, 0, 1)?.squeeze(1)?;
        let [l1, l2] = &self.classifier;
        l2.forward(&l1.forward(&first)?.relu()?)
    }
}

/// `positional_encoding_1d`, in f32 as torch has it: position `p` times
/// `exp(i * -ln(10000) / d)` for even `i`, the sines of those then their cosines; `[1, n, d]`.
fn positions(n: usize, d: usize, device: &candle_core::Device) -> candle_core::Result<Tensor> {
    let step = -(10000f32.ln()) / d as f32;
    let div: Vec<f32> = (0..d).step_by(2).map(|i| (i as f32 * step).exp()).collect();
    let mut out = Vec::with_capacity(n * d);
    for p in 0..n {
        let angles = div.iter().map(|v| p as f32 * v);
        out.extend(angles.clone().map(f32::sin));
        out.extend(angles.map(f32::cos));
    }
    Tensor::from_vec(out, (1, n, d), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_sines_then_cosines() {
        let p: Vec<Vec<f32>> = positions(3, 4, &candle_core::Device::Cpu)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        // torch: positional_encoding_1d(1, 3, 4)[0, 2] = sin 2, sin 0.02, cos 2, cos 0.02
        let want = [2f32.sin(), 0.02f32.sin(), 2f32.cos(), 0.02f32.cos()];
        for (a, b) in p[2].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?}", p[2]);
        }
        assert_eq!(p[0], [0.0, 0.0, 1.0, 1.0]);
    }
}
