//! SwinIR (Liang et al. 2021) as spandrel's `SwinIR` architecture runs it: residual Swin
//! Transformer blocks (window attention with a relative position bias, every second block on
//! windows shifted by half a window, masked where the shift wraps) between a first convolution
//! and one of SwinIR's reconstruction heads: classical (pixel-shuffle steps), lightweight (one
//! pixel shuffle), real-world (nearest 2x steps with convolutions) or none (denoising, JPEG).
//!
//! Weight names are the original's (`conv_first`, `patch_embed.norm`, `layers.N.residual_group.
//! blocks.M.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2}`,
//! `layers.N.conv`, `norm`, `conv_after_body`, the head's). The `relative_position_index` and
//! `attn_mask` buffers are computed here, for the size of each input.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::ops::conv::{conv2d, Conv2d};
use crate::ops::layers::{layer_norm, linear, LayerNorm, Linear};
use crate::upscale::pad_reflect_to_multiple;

/// How the features become the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upsampler {
    /// Classical SR: a convolution to `num_feat`, then a convolution and pixel shuffle per 2x
    /// (or one 3x), then `conv_last`.
    PixelShuffle {
        /// Channels of the upsampling convolutions.
        num_feat: usize,
    },
    /// Lightweight SR: one convolution and one pixel shuffle by the scale.
    PixelShuffleDirect,
    /// Real-world SR: a convolution to `num_feat`, then nearest 2x upsampling and a convolution
    /// per 2x, `conv_hr` and `conv_last`.
    NearestConv {
        /// Channels of the upsampling convolutions.
        num_feat: usize,
    },
    /// Denoising and JPEG: `conv_last` adds a residual to the input.
    None,
}

/// The shape of a SwinIR, read from its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Channels of the image, in and out.
    pub channels: usize,
    /// Channels of the transformer.
    pub embed_dim: usize,
    /// Blocks of each residual group.
    pub depths: Vec<usize>,
    /// Attention heads of each residual group.
    pub num_heads: Vec<usize>,
    /// Side of the attention windows.
    pub window_size: usize,
    /// Hidden channels of the blocks' MLPs.
    pub mlp_hidden: usize,
    /// The training size, which decides whether blocks shift their windows.
    pub img_size: usize,
    /// The factor from the image's size to the result's.
    pub scale: usize,
    /// The reconstruction head.
    pub upsampler: Upsampler,
    /// Whether the residual convolutions are three (`3conv`) instead of one.
    pub three_conv: bool,
    /// Whether the patch embedding has a LayerNorm (`patch_embed.norm`).
    pub patch_norm: bool,
    /// Pixel values are multiplied by this inside the net (255 for the JPEG models).
    pub img_range: f64,
}

fn conv(in_c: usize, out_c: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    let config = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    conv2d(in_c, out_c, k, config, vb)
}

fn leaky(xs: &Tensor, slope: f64) -> Result<Tensor> {
    xs.maximum(&(xs * slope)?)
}

/// SwinIR's residual convolution: one 3x3, or 3x3 to a quarter, 1x1, 3x3 back (LeakyReLU 0.2).
#[derive(Debug)]
struct Residual(Vec<Conv2d>);

impl Residual {
    fn new(vb: VarBuilder, dim: usize, three: bool) -> Result<Self> {
        if !three {
            return Ok(Self(vec![conv(dim, dim, 3, vb)?]));
        }
        let q = dim / 4;
        Ok(Self(vec![
            conv(dim, q, 3, vb.pp(0))?,
            conv(q, q, 1, vb.pp(2))?,
            conv(q, dim, 3, vb.pp(4))?,
        ]))
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut x = xs.clone();
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                x = leaky(&x, 0.2)?;
            }
            x = c.forward(&x)?;
        }
        Ok(x)
    }
}

/// A Swin Transformer block (also OneFormer's Swin backbone's, built from its own names).
#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) norm1: LayerNorm,
    pub(crate) qkv: Linear,
    pub(crate) proj: Linear,
    /// `[heads, N, N]` for N = window²: the relative position bias of each pair in a window.
    pub(crate) bias: Tensor,
    pub(crate) norm2: LayerNorm,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) heads: usize,
    pub(crate) window: usize,
    pub(crate) shift: usize,
}

/// `[heads, N, N]` for N = `ws`²: the `[(2ws-1)², heads]` table looked up at each pair's
/// relative position (Swin's `relative_position_index`).
pub(crate) fn relative_bias(table: &Tensor, ws: usize, heads: usize) -> Result<Tensor> {
    let side = 2 * ws - 1;
    let n = ws * ws;
    let index: Vec<u32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| {
            let (yi, xi, yj, xj) = (i / ws, i % ws, j / ws, j % ws);
            ((yi + ws - 1 - yj) * side + (xi + ws - 1 - xj)) as u32
        })
        .collect();
    let index = Tensor::from_vec(index, n * n, table.device())?;
    table
        .index_select(&index, 0)?
        .reshape((n, n, heads))?
        .permute((2, 0, 1))?
        .contiguous()
}

impl Block {
    fn new(vb: VarBuilder, cfg: &Config, heads: usize, shifted: bool) -> Result<Self> {
        let (dim, ws) = (cfg.embed_dim, cfg.window_size);
        let attn = vb.pp("attn");
        let side = 2 * ws - 1;
        let table = attn.get((side * side, heads), "relative_position_bias_table")?;
        let bias = relative_bias(&table, ws, heads)?;
        let mlp = vb.pp("mlp");
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            qkv: linear(dim, 3 * dim, attn.pp("qkv"))?,
            proj: linear(dim, dim, attn.pp("proj"))?,
            bias,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            fc1: linear(dim, cfg.mlp_hidden, mlp.pp("fc1"))?,
            fc2: linear(cfg.mlp_hidden, dim, mlp.pp("fc2"))?,
            heads,
            window: ws,
            // Blocks trained on images no larger than a window neither shift nor mask.
            shift: if shifted && cfg.img_size > ws {
                ws / 2
            } else {
                0
            },
        })
    }

    /// `x`: `[B, H*W, C]` tokens of an `h` x `w` image (multiples of the window).
    fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let y = self.norm1.forward(x)?.reshape((b, h, w, c))?;
        let x = (x + self.window_attention(&y)?.reshape((b, l, c))?)?;
        self.mlp(&x)
    }

    /// The (shifted) window attention of `y`, `[B, H, W, C]` with sides multiples of the window.
    pub(crate) fn window_attention(&self, y: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = y.dims4()?;
        let ws = self.window;
        let s = self.shift as i32;
        let mut y = y.clone();
        if s > 0 {
            y = y.roll(-s, 1)?.roll(-s, 2)?;
        }
        let (nh, nw) = (h / ws, w / ws);
        let n = ws * ws;
        let windows = y
            .reshape((b, nh, ws, nw, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b * nh * nw, n, c))?;
        let attended = self.attention(&windows, b, h, w)?;
        let mut y = attended
            .reshape((b, nh, nw, ws, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b, h, w, c))?;
        if s > 0 {
            y = y.roll(s, 1)?.roll(s, 2)?;
        }
        Ok(y)
    }

    /// `x` plus the MLP of its second norm.
    pub(crate) fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = self.fc1.forward(&self.norm2.forward(x)?)?.gelu_erf()?;
        x + self.fc2.forward(&hidden)?
    }

    /// Multi-head attention within each window, `windows`: `[B*nW, N, C]`.
    fn attention(&self, windows: &Tensor, b: usize, h: usize, w: usize) -> Result<Tensor> {
        let (bw, n, c) = windows.dims3()?;
        let hd = c / self.heads;
        let qkv = self
            .qkv
            .forward(windows)?
            .reshape((bw, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * (hd as f64).powf(-0.5))?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let bias = crate::ops::cast::operand(&self.bias, &q)?;
        let mut attn = q
            .matmul(&k.transpose(2, 3)?.contiguous()?)?
            .broadcast_add(&bias.unsqueeze(0)?)?;
        if self.shift > 0 {
            let mask = shift_mask(h, w, self.window, self.shift, attn.device())?;
            let nw = mask.dim(0)?;
            attn = attn
                .reshape((b, nw, self.heads, n, n))?
                .broadcast_add(&mask.unsqueeze(1)?.unsqueeze(0)?)?
                .reshape((bw, self.heads, n, n))?;
        }
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((bw, n, c))?;
        self.proj.forward(&out)
    }
}

/// SwinIR's `calculate_mask`: `[nW, N, N]`, -100 between pixels of a shifted window that came
/// from different regions of the image (the wrapped edges), else 0.
fn shift_mask(h: usize, w: usize, ws: usize, shift: usize, device: &Device) -> Result<Tensor> {
    let region = |pos: usize, len: usize| {
        if pos < len - ws {
            0
        } else if pos < len - shift {
            1
        } else {
            2
        }
    };
    let (nh, nw, n) = (h / ws, w / ws, ws * ws);
    let mut mask = Vec::with_capacity(nh * nw * n * n);
    for wy in 0..nh {
        for wx in 0..nw {
            let label = |p: usize| {
                let (y, x) = (wy * ws + p / ws, wx * ws + p % ws);
                3 * region(y, h) + region(x, w)
            };
            for i in 0..n {
                for j in 0..n {
                    mask.push(if label(i) == label(j) { 0f32 } else { -100f32 });
                }
            }
        }
    }
    Tensor::from_vec(mask, (nh * nw, n, n), device)
}

/// A residual Swin Transformer block: blocks, then a convolution on the image, plus the input.
#[derive(Debug)]
struct Rstb {
    blocks: Vec<Block>,
    conv: Residual,
    span: tracing::Span,
}

impl Rstb {
    fn new(vb: VarBuilder, cfg: &Config, layer: usize) -> Result<Self> {
        let group = vb.pp("residual_group").pp("blocks");
        let blocks = (0..cfg.depths[layer])
            .map(|i| Block::new(group.pp(i), cfg, cfg.num_heads[layer], i % 2 == 1))
            .collect::<Result<_>>()?;
        Ok(Self {
            blocks,
            conv: Residual::new(vb.pp("conv"), cfg.embed_dim, cfg.three_conv)?,
            span: tracing::trace_span!("swinir_rstb"),
        })
    }

    fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut y = x.clone();
        for block in &self.blocks {
            y = block.forward(&y, h, w)?;
        }
        let conv = self.conv.forward(&unembed(&y, h, w)?)?;
        embed(&conv)? + x
    }
}

/// `[B, C, H, W]` -> `[B, H*W, C]` tokens.
fn embed(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.transpose(1, 2)?.contiguous()
}

/// `[B, H*W, C]` tokens -> `[B, C, H, W]`.
fn unembed(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
}

/// The reconstruction head's layers.
#[derive(Debug)]
enum Head {
    PixelShuffle {
        before: Conv2d,
        /// One convolution per pixel-shuffle step, with its factor.
        steps: Vec<(Conv2d, usize)>,
        last: Conv2d,
    },
    Direct(Conv2d),
    NearestConv {
        before: Conv2d,
        ups: Vec<Conv2d>,
        hr: Conv2d,
        last: Conv2d,
    },
    None(Conv2d),
}

/// SwinIR.
#[derive(Debug)]
pub struct SwinIr {
    config: Config,
    conv_first: Conv2d,
    patch_norm: Option<LayerNorm>,
    layers: Vec<Rstb>,
    norm: LayerNorm,
    conv_after_body: Residual,
    head: Head,
    span: tracing::Span,
}

impl SwinIr {
    /// Builds the net from its weights.
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (dim, out) = (cfg.embed_dim, cfg.channels);
        let head = match &cfg.upsampler {
            Upsampler::PixelShuffle { num_feat } => {
                let nf = *num_feat;
                let factors: Vec<usize> = if cfg.scale == 3 {
                    vec![3]
                } else {
                    vec![2; cfg.scale.trailing_zeros() as usize]
                };
                let steps = factors
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| Ok((conv(nf, f * f * nf, 3, vb.pp("upsample").pp(2 * i))?, f)))
                    .collect::<Result<_>>()?;
                Head::PixelShuffle {
                    before: conv(dim, nf, 3, vb.pp("conv_before_upsample").pp(0))?,
                    steps,
                    last: conv(nf, out, 3, vb.pp("conv_last"))?,
                }
            }
            Upsampler::PixelShuffleDirect => Head::Direct(conv(
                dim,
                cfg.scale * cfg.scale * out,
                3,
                vb.pp("upsample").pp(0),
            )?),
            Upsampler::NearestConv { num_feat } => {
                let nf = *num_feat;
                Head::NearestConv {
                    before: conv(dim, nf, 3, vb.pp("conv_before_upsample").pp(0))?,
                    ups: (1..=cfg.scale.trailing_zeros() as usize)
                        .map(|i| conv(nf, nf, 3, vb.pp(format!("conv_up{i}"))))
                        .collect::<Result<_>>()?,
                    hr: conv(nf, nf, 3, vb.pp("conv_hr"))?,
                    last: conv(nf, out, 3, vb.pp("conv_last"))?,
                }
            }
            Upsampler::None => Head::None(conv(dim, out, 3, vb.pp("conv_last"))?),
        };
        Ok(Self {
            conv_first: conv(cfg.channels, dim, 3, vb.pp("conv_first"))?,
            patch_norm: if cfg.patch_norm {
                Some(layer_norm(dim, 1e-5, vb.pp("patch_embed").pp("norm"))?)
            } else {
                None
            },
            layers: (0..cfg.depths.len())
                .map(|i| Rstb::new(vb.pp("layers").pp(i), cfg, i))
                .collect::<Result<_>>()?,
            norm: layer_norm(dim, 1e-5, vb.pp("norm"))?,
            conv_after_body: Residual::new(vb.pp("conv_after_body"), dim, cfg.three_conv)?,
            head,
            config: cfg.clone(),
            span: tracing::trace_span!("swinir"),
        })
    }

    /// `x`: `[B, channels, H, W]` f32 in 0..1; returns `[B, channels, H*scale, W*scale]`, not
    /// clamped.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let cfg = &self.config;
        let (_, _, h, w) = x.dims4()?;
        let x = pad_reflect_to_multiple(x, cfg.window_size)?;
        let (_, _, hp, wp) = x.dims4()?;
        // The DIV2K mean SwinIR subtracts from RGB images (none for others).
        let mean = if cfg.channels == 3 {
            Tensor::new(&[0.4488f32, 0.4371, 0.4040], x.device())?.reshape((1, 3, 1, 1))?
        } else {
            Tensor::zeros((1, cfg.channels, 1, 1), DType::F32, x.device())?
        };
        let x = (x.broadcast_sub(&mean)? * cfg.img_range)?;
        let feat = self.conv_first.forward(&x)?;
        let mut tokens = embed(&feat)?;
        if let Some(norm) = &self.patch_norm {
            tokens = norm.forward(&tokens)?;
        }
        for layer in &self.layers {
            tokens = layer.forward(&tokens, hp, wp)?;
        }
        let body = unembed(&self.norm.forward(&tokens)?, hp, wp)?;
        let res = (self.conv_after_body.forward(&body)? + feat)?;
        let out = match &self.head {
            Head::PixelShuffle {
                before,
                steps,
                last,
            } => {
                let mut y = leaky(&before.forward(&res)?, 0.01)?;
                for (c, f) in steps {
                    y = candle_nn::ops::pixel_shuffle(&c.forward(&y)?, *f)?;
                }
                last.forward(&y)?
            }
            Head::Direct(c) => candle_nn::ops::pixel_shuffle(&c.forward(&res)?, cfg.scale)?,
            Head::NearestConv {
                before,
                ups,
                hr,
                last,
            } => {
                let mut y = leaky(&before.forward(&res)?, 0.01)?;
                for c in ups {
                    y = leaky(&c.forward_upsampled_2x(&y)?, 0.2)?;
                }
                last.forward(&leaky(&hr.forward(&y)?, 0.2)?)?
            }
            Head::None(c) => (x + c.forward(&res)?)?,
        };
        let out = (out / cfg.img_range)?.broadcast_add(&mean)?;
        out.narrow(2, 0, h * cfg.scale)?.narrow(3, 0, w * cfg.scale)
    }
}
