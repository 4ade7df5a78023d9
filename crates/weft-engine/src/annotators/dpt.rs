//! Pieces shared by the DPT depth networks (Depth Anything V2's DINOv2 + DPT head, MiDaS's
//! DPT-Hybrid): the pre-norm ViT block (timm's and DINOv2's, with optional layer scale), and the
//! DPT head's `scratch`: the `layerN_rn` projections, the RefineNet fusion chain and the output
//! convolutions. The published files of both use the same names for these.

use candle_core::{Module, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::ops::attention::scaled_dot_product;
use crate::ops::conv::{conv2d, Conv2d};
use crate::ops::layers::{layer_norm, linear, LayerNorm, Linear};

/// The feed-forward layer of the ViT blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ffn {
    /// `mlp.fc1` -> exact GELU -> `mlp.fc2` (timm ViT, DINOv2 ViT-S/B/L), with its hidden width.
    Mlp(usize),
    /// `mlp.w12` -> SiLU(first half) * second half -> `mlp.w3` (ViT-g), with its hidden width.
    SwiGlu(usize),
}

#[derive(Debug)]
enum FeedForward {
    Mlp { fc1: Linear, fc2: Linear },
    SwiGlu { w12: Linear, w3: Linear },
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            FeedForward::Mlp { fc1, fc2 } => fc2.forward(&fc1.forward(x)?.gelu_erf()?),
            FeedForward::SwiGlu { w12, w3 } => {
                let x12 = w12.forward(x)?;
                let half = x12.dim(D::Minus1)? / 2;
                let gated = (x12.narrow(D::Minus1, 0, half)?.silu()?
                    * x12.narrow(D::Minus1, half, half)?)?;
                w3.forward(&gated)
            }
        }
    }
}

/// A pre-norm ViT block (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp`; LayerNorm eps 1e-6),
/// with DINOv2's layer scale (`ls1.gamma`, `ls2.gamma`) where the net has it.
#[derive(Debug)]
pub struct VitBlock {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ls1: Option<Tensor>,
    norm2: LayerNorm,
    ffn: FeedForward,
    ls2: Option<Tensor>,
    heads: usize,
}

impl VitBlock {
    /// A block `dim` wide with `heads` heads.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        ffn: Ffn,
        layer_scale: bool,
    ) -> candle_core::Result<Self> {
        let d = dim;
        let ffn = match ffn {
            Ffn::Mlp(h) => FeedForward::Mlp {
                fc1: linear(d, h, vb.pp("mlp.fc1"))?,
                fc2: linear(h, d, vb.pp("mlp.fc2"))?,
            },
            Ffn::SwiGlu(h) => FeedForward::SwiGlu {
                w12: linear(d, 2 * h, vb.pp("mlp.w12"))?,
                w3: linear(h, d, vb.pp("mlp.w3"))?,
            },
        };
        let scale = |name: &str| -> candle_core::Result<Option<Tensor>> {
            layer_scale.then(|| vb.get(d, name)).transpose()
        };
        Ok(VitBlock {
            norm1: layer_norm(d, 1e-6, vb.pp("norm1"))?,
            qkv: linear(d, 3 * d, vb.pp("attn.qkv"))?,
            proj: linear(d, d, vb.pp("attn.proj"))?,
            ls1: scale("ls1.gamma")?,
            norm2: layer_norm(d, 1e-6, vb.pp("norm2"))?,
            ffn,
            ls2: scale("ls2.gamma")?,
            heads,
        })
    }

    /// `[B, N, D]` tokens through the block.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let hd = c / self.heads;
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x)?)?
            .reshape((b, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let part = |i: usize| qkv.get(i)?.contiguous();
        let attn = scaled_dot_product(&part(0)?, &part(1)?, &part(2)?)?
            .transpose(1, 2)?
            .reshape((b, n, c))?;
        let scaled = |y: Tensor, ls: &Option<Tensor>| match ls {
            Some(g) => y.broadcast_mul(g),
            None => Ok(y),
        };
        let x = (x + scaled(self.proj.forward(&attn)?, &self.ls1)?)?;
        let ff = self.ffn.forward(&self.norm2.forward(&x)?)?;
        x + scaled(ff, &self.ls2)?
    }
}

/// A 3x3 convolution's padding of 1.
pub fn padded() -> Conv2dConfig {
    Conv2dConfig {
        padding: 1,
        ..Default::default()
    }
}

/// `ResidualConvUnit`: `x + conv2(relu(conv1(relu(x))))`.
#[derive(Debug)]
struct ResidualUnit {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl ResidualUnit {
    fn new(f: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(ResidualUnit {
            conv1: conv2d(f, f, 3, padded(), vb.pp("conv1"))?,
            conv2: conv2d(f, f, 3, padded(), vb.pp("conv2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.conv1.forward(&x.relu()?)?;
        x + self.conv2.forward(&y.relu()?)?
    }
}

/// `FeatureFusionBlock`: the skip through a residual unit added, a second unit, a bilinear
/// resize (corners aligned) and a 1x1 convolution.
#[derive(Debug)]
struct Fusion {
    skip: Option<ResidualUnit>,
    unit: ResidualUnit,
    out_conv: Conv2d,
}

impl Fusion {
    fn new(f: usize, with_skip: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Fusion {
            skip: if with_skip {
                Some(ResidualUnit::new(f, vb.pp("resConfUnit1"))?)
            } else {
                None
            },
            unit: ResidualUnit::new(f, vb.pp("resConfUnit2"))?,
            out_conv: conv2d(f, f, 1, Conv2dConfig::default(), vb.pp("out_conv"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        size: (usize, usize),
    ) -> candle_core::Result<Tensor> {
        let x = match (&self.skip, skip) {
            (Some(unit), Some(s)) => (x + unit.forward(s)?)?,
            _ => x.clone(),
        };
        let x = self
            .unit
            .forward(&x)?
            .upsample_bilinear2d(size.0, size.1, true)?;
        self.out_conv.forward(&x)
    }
}

/// The DPT `scratch` up to the last fusion: `layerN_rn` (bias-free 3x3 to `features`) on the four
/// feature maps, then `refinenet4` .. `refinenet1`, each resizing to the next map's size (the
/// last one 2x).
#[derive(Debug)]
pub struct Refine {
    layer_rn: Vec<Conv2d>,
    /// refinenet1..4.
    fusion: Vec<Fusion>,
}

impl Refine {
    /// From `scratch` names, for maps of `widths` channels.
    pub fn new(vb: VarBuilder, widths: [usize; 4], features: usize) -> candle_core::Result<Self> {
        Ok(Refine {
            layer_rn: (0..4)
                .map(|i| {
                    let w = vb.pp(format!("layer{}_rn", i + 1));
                    Ok(Conv2d::new(
                        w.get((features, widths[i], 3, 3), "weight")?,
                        None,
                        padded(),
                    ))
                })
                .collect::<candle_core::Result<_>>()?,
            // refinenet4 gets no skip: its resConfUnit1 is stored but unused
            fusion: (1..=4)
                .map(|i| Fusion::new(features, i != 4, vb.pp(format!("refinenet{i}"))))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// `path_1` (at twice the first map's size) from the four maps, finest first.
    pub fn forward(&self, maps: &[Tensor; 4]) -> candle_core::Result<Tensor> {
        let mut layers = Vec::with_capacity(4);
        for (conv, x) in self.layer_rn.iter().zip(maps) {
            layers.push(conv.forward(x)?);
        }
        let size = |t: &Tensor| -> candle_core::Result<(usize, usize)> {
            let (_, _, h, w) = t.dims4()?;
            Ok((h, w))
        };
        let (h1, w1) = size(&layers[0])?;
        let path = self.fusion[3].forward(&layers[3], None, size(&layers[2])?)?;
        let path = self.fusion[2].forward(&path, Some(&layers[2]), size(&layers[1])?)?;
        let path = self.fusion[1].forward(&path, Some(&layers[1]), (h1, w1))?;
        self.fusion[0].forward(&path, Some(&layers[0]), (2 * h1, 2 * w1))
    }
}

/// The depth output: a 3x3 convolution halving the width, a bilinear resize (corners aligned),
/// a 3x3 convolution, ReLU, a 1x1 convolution to one channel, ReLU (non-negative depth).
#[derive(Debug)]
pub struct DepthOut {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
}

impl DepthOut {
    /// From the three convolutions' prefixes (`features` wide in, `hidden` wide in the middle).
    pub fn new(vb: [VarBuilder; 3], features: usize, hidden: usize) -> candle_core::Result<Self> {
        let [a, b, c] = vb;
        Ok(DepthOut {
            conv1: conv2d(features, features / 2, 3, padded(), a)?,
            conv2: conv2d(features / 2, hidden, 3, padded(), b)?,
            conv3: conv2d(hidden, 1, 1, Conv2dConfig::default(), c)?,
        })
    }

    /// `[B, 1, h, w]` from the fused features.
    pub fn forward(&self, path: &Tensor, size: (usize, usize)) -> candle_core::Result<Tensor> {
        let x = self
            .conv1
            .forward(path)?
            .upsample_bilinear2d(size.0, size.1, true)?;
        self.conv3.forward(&self.conv2.forward(&x)?.relu()?)?.relu()
    }
}
