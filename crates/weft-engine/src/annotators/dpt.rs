//! Pieces shared by the DPT depth networks (Depth Anything V2's DINOv2 + DPT head, MiDaS's
//! DPT-Hybrid, Zoe's MiDaS BEiT): the pre-norm ViT block (timm's and DINOv2's, with optional layer
//! scale; BEiT's, with its query/value biases and an attention bias), MiDaS's `project` readout, the
//! patch-sized transposed convolution, and the DPT head's `scratch`: the `layerN_rn` projections,
//! the RefineNet fusion chain and the output convolutions. The published files use the same names
//! for these.

use candle_core::{Module, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::ops::attention::scaled_dot_product;
use crate::ops::conv::{conv2d, Conv2d};
use crate::ops::layers::{layer_norm, linear, linear_no_bias, LayerNorm, Linear};

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

    /// A BEiT block (timm's `Beit` block): `attn.qkv` without a bias of its own but with
    /// `attn.q_bias` and `attn.v_bias` (the key's is zero), layer scale `gamma_1`/`gamma_2`, an
    /// MLP `mlp` wide.
    pub fn beit(vb: VarBuilder, dim: usize, heads: usize, mlp: usize) -> candle_core::Result<Self> {
        let d = dim;
        let qkv = linear_no_bias(d, 3 * d, vb.pp("attn.qkv"))?;
        let q = vb.get(d, "attn.q_bias")?;
        let bias = Tensor::cat(&[&q, &q.zeros_like()?, &vb.get(d, "attn.v_bias")?], 0)?;
        Ok(VitBlock {
            norm1: layer_norm(d, 1e-6, vb.pp("norm1"))?,
            qkv: Linear::new(qkv.weight().clone(), Some(bias)),
            proj: linear(d, d, vb.pp("attn.proj"))?,
            ls1: Some(vb.get(d, "gamma_1")?),
            norm2: layer_norm(d, 1e-6, vb.pp("norm2"))?,
            ffn: FeedForward::Mlp {
                fc1: linear(d, mlp, vb.pp("mlp.fc1"))?,
                fc2: linear(mlp, d, vb.pp("mlp.fc2"))?,
            },
            ls2: Some(vb.get(d, "gamma_2")?),
            heads,
        })
    }

    /// The block with another LayerNorm epsilon (transformers' DPT layers use the config's
    /// `layer_norm_eps`, 1e-12, where timm's blocks have 1e-6).
    pub fn with_layer_norm_eps(self, eps: f64) -> Self {
        VitBlock {
            norm1: self.norm1.with_eps(eps),
            norm2: self.norm2.with_eps(eps),
            ..self
        }
    }

    /// `[B, N, D]` tokens through the block.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_biased(x, None)
    }

    /// The same with `bias` (`[1, heads, N, N]`, BEiT's relative position bias) added to the
    /// attention scores before the softmax.
    pub fn forward_biased(&self, x: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let hd = c / self.heads;
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x)?)?
            .reshape((b, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let part = |i: usize| qkv.get(i)?.contiguous();
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let attn = match bias {
            None => scaled_dot_product(&q, &k, &v)?,
            // the streaming kernel takes no bias: the plain form, scaled queries as timm's
            Some(bias) => {
                let scores = (q * (1.0 / (hd as f64).sqrt()))?
                    .matmul(&k.t()?)?
                    .broadcast_add(bias)?;
                candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?
            }
        }
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

/// MiDaS's `ProjectReadout` and the 1x1 convolution after it (`act_postprocessN.0` and `.3`):
/// each patch token concatenated with the class token, `Linear(2D, D)` + GELU, as a
/// `[B, C, gh, gw]` map.
#[derive(Debug)]
pub struct Readout {
    project: Linear,
    conv: Conv2d,
}

impl Readout {
    /// From an `act_postprocessN` prefix, for `d`-wide tokens and `width` output channels.
    pub fn new(vb: VarBuilder, d: usize, width: usize) -> candle_core::Result<Self> {
        Ok(Readout {
            project: linear(2 * d, d, vb.pp("0.project.0"))?,
            conv: conv2d(d, width, 1, Conv2dConfig::default(), vb.pp("3"))?,
        })
    }

    /// `[B, 1 + gh*gw, D]` tokens (class token first) to the map.
    pub fn forward(&self, x: &Tensor, gh: usize, gw: usize) -> candle_core::Result<Tensor> {
        let (b, _, d) = x.dims3()?;
        let n = gh * gw;
        let readout = x.narrow(1, 0, 1)?.broadcast_as((b, n, d))?;
        let tokens = Tensor::cat(&[&x.narrow(1, 1, n)?, &readout], 2)?;
        let y = self.project.forward(&tokens)?.gelu_erf()?;
        self.conv
            .forward(&y.transpose(1, 2)?.reshape((b, d, gh, gw))?)
    }
}

/// `ConvTranspose2d` with kernel = stride and no padding (the DPT heads' 4x and 2x resize
/// layers): every input pixel spreads into its own `k x k` block, so it is one matmul.
#[derive(Debug)]
pub struct PatchDeconv {
    /// `[C_in, C_out * k * k]`.
    weight: Tensor,
    bias: Tensor,
    k: usize,
}

impl PatchDeconv {
    /// A `c`-channel layer with a `k x k` kernel (`weight`, `bias`).
    pub fn new(c: usize, k: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(PatchDeconv {
            weight: vb.get((c, c, k, k), "weight")?.reshape((c, c * k * k))?,
            bias: vb.get(c, "bias")?,
            k,
        })
    }

    /// `[B, C, h, w]` to `[B, C, k h, k w]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, cin, h, w) = x.dims4()?;
        let k = self.k;
        let cout = self.weight.dim(1)? / (k * k);
        let cols = x.permute((0, 2, 3, 1))?.reshape((b * h * w, cin))?;
        cols.matmul(&self.weight)?
            .reshape((b, h, w, cout, k, k))?
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape((b, cout, h * k, w * k))?
            .broadcast_add(&self.bias.reshape((1, cout, 1, 1))?)
    }
}

/// How a DPT head brings each of its four maps to its scale: 4x and 2x up, as is, 2x down.
#[derive(Debug)]
pub enum Resize {
    /// A [`PatchDeconv`].
    Deconv(PatchDeconv),
    /// Unchanged.
    Identity,
    /// A stride-2 3x3 convolution.
    Down(Conv2d),
}

impl Resize {
    /// The four resize layers of a DPT head with maps `widths` wide, from the `.0`..`.3`
    /// prefixes `vb` gives.
    pub fn dpt<'a>(
        widths: [usize; 4],
        vb: impl Fn(usize) -> VarBuilder<'a>,
    ) -> candle_core::Result<[Resize; 4]> {
        let stride2 = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        Ok([
            Resize::Deconv(PatchDeconv::new(widths[0], 4, vb(0))?),
            Resize::Deconv(PatchDeconv::new(widths[1], 2, vb(1))?),
            Resize::Identity,
            Resize::Down(conv2d(widths[3], widths[3], 3, stride2, vb(3))?),
        ])
    }

    /// The map at its new scale.
    pub fn forward(&self, x: Tensor) -> candle_core::Result<Tensor> {
        match self {
            Resize::Deconv(t) => t.forward(&x),
            Resize::Identity => Ok(x),
            Resize::Down(c) => c.forward(&x),
        }
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
        let RefinePaths {
            paths: [.., path_1],
            ..
        } = self.forward_paths(maps)?;
        Ok(path_1)
    }

    /// Every fusion's output, and `layer4_rn`'s (what Zoe's metric head reads).
    pub fn forward_paths(&self, maps: &[Tensor; 4]) -> candle_core::Result<RefinePaths> {
        let mut layers = Vec::with_capacity(4);
        for (conv, x) in self.layer_rn.iter().zip(maps) {
            layers.push(conv.forward(x)?);
        }
        let size = |t: &Tensor| -> candle_core::Result<(usize, usize)> {
            let (_, _, h, w) = t.dims4()?;
            Ok((h, w))
        };
        let (h1, w1) = size(&layers[0])?;
        let path_4 = self.fusion[3].forward(&layers[3], None, size(&layers[2])?)?;
        let path_3 = self.fusion[2].forward(&path_4, Some(&layers[2]), size(&layers[1])?)?;
        let path_2 = self.fusion[1].forward(&path_3, Some(&layers[1]), (h1, w1))?;
        let path_1 = self.fusion[0].forward(&path_2, Some(&layers[0]), (2 * h1, 2 * w1))?;
        Ok(RefinePaths {
            layer4_rn: layers.swap_remove(3),
            paths: [path_4, path_3, path_2, path_1],
        })
    }
}

/// The outputs of [`Refine::forward_paths`].
#[derive(Debug)]
pub struct RefinePaths {
    /// `layer4_rn` of the coarsest map.
    pub layer4_rn: Tensor,
    /// `refinenet4` .. `refinenet1`'s outputs (`path_4` .. `path_1`), coarsest first.
    pub paths: [Tensor; 4],
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
        Ok(self.forward_hidden(path, size)?.1)
    }

    /// The hidden map after its ReLU (`[B, hidden, h, w]`, Zoe's `out_conv` features) and the
    /// depth.
    pub fn forward_hidden(
        &self,
        path: &Tensor,
        size: (usize, usize),
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let x = self
            .conv1
            .forward(path)?
            .upsample_bilinear2d(size.0, size.1, true)?;
        let hidden = self.conv2.forward(&x)?.relu()?;
        let depth = self.conv3.forward(&hidden)?.relu()?;
        Ok((hidden, depth))
    }
}
