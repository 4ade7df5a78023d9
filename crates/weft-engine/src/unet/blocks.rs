//! Building blocks shared by the UNet (and so the ControlNet, through its encoder) and the VAE, in diffusers layout.
//!
//! These follow diffusers exactly (exact erf GELU in GeGLU, f32 softmax), so parity with
//! `diffusers.UNet2DConditionModel` is limited by float rounding only.

use std::sync::Arc;

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::diffusion::patches::{
    AttentionReplace, CrossAttentionPatch, MiddlePatch, SelfAttentionPatch,
};
use crate::ops::attention::scaled_dot_product_in_layer;
use crate::ops::conv::{conv2d, Conv2d};
use crate::ops::layers::{self, LayerNorm, Linear};
use crate::ops::norm::{group_norm, GroupNorm};
use crate::ops::residual;
use crate::ops::transpose::swap_last_two;

/// A 3x3 (or other odd) convolution with "same" padding.
pub(crate) fn conv_same(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: kernel / 2,
        ..Default::default()
    };
    conv2d(in_channels, out_channels, kernel, cfg, vb)
}

/// ResnetBlock2D: GroupNorm-SiLU-conv twice, an optional time embedding added in between, and a
/// 1x1 shortcut when the channel count changes.
#[derive(Debug)]
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    span: tracing::Span,
}

/// Settings of a [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// `None` for the VAE, which has no time embedding.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

impl ResnetBlock2D {
    pub(crate) fn new(vb: VarBuilder, cfg: ResnetConfig) -> Result<Self> {
        let norm1 = group_norm(cfg.groups, cfg.in_channels, cfg.eps, vb.pp("norm1"))?;
        let conv1 = conv_same(cfg.in_channels, cfg.out_channels, 3, vb.pp("conv1"))?;
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => Some(layers::linear(t, cfg.out_channels, vb.pp("time_emb_proj"))?),
            None => None,
        };
        let norm2 = group_norm(cfg.groups, cfg.out_channels, cfg.eps, vb.pp("norm2"))?;
        let conv2 = conv_same(cfg.out_channels, cfg.out_channels, 3, vb.pp("conv2"))?;
        let conv_shortcut = if cfg.in_channels != cfg.out_channels {
            Some(conv2d(
                cfg.in_channels,
                cfg.out_channels,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        let span = tracing::trace_span!("resnet");
        Ok(Self {
            norm1,
            conv1,
            time_emb_proj,
            norm2,
            conv2,
            conv_shortcut,
            span,
        })
    }

    /// `xs`: [B, C_in, H, W]; `temb`: [B, T] (already SiLU-free; the SiLU is applied here).
    /// Returns [B, C_out, H, W].
    pub(crate) fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = self.conv1.forward(&self.norm1.forward_silu(xs)?)?;
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let t = proj
                    .forward(&temb.silu()?)?
                    .unsqueeze(D::Minus1)?
                    .unsqueeze(D::Minus1)?;
                residual::add_channels_into(h, &t)?
            }
            _ => h,
        };
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        residual::add_into(h, &shortcut)
    }
}

/// Multi-head attention as in diffusers `Attention` (to_q/to_k/to_v without bias in the UNet,
/// with bias in the VAE; to_out.0 with bias).
#[derive(Debug)]
pub(crate) struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    span: tracing::Span,
}

impl Attention {
    pub(crate) fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let lin = |i, o, vb| {
            if qkv_bias {
                layers::linear(i, o, vb)
            } else {
                layers::linear_no_bias(i, o, vb)
            }
        };
        let to_q = lin(query_dim, inner, vb.pp("to_q"))?;
        let to_k = lin(context_dim, inner, vb.pp("to_k"))?;
        let to_v = lin(context_dim, inner, vb.pp("to_v"))?;
        let to_out = layers::linear(inner, query_dim, vb.pp("to_out").pp("0"))?;
        let span = tracing::trace_span!("attention");
        Ok(Self {
            to_q,
            to_k,
            to_v,
            to_out,
            heads,
            span,
        })
    }

    /// `[B, N, H·D]` seen as `[B, H, N, D]`, not copied: the attention reads each head's rows
    /// where they lie, so q, k and v are not copied apart for every layer.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, c) = xs.dims3()?;
        xs.reshape((b, n, self.heads, c / self.heads))?
            .transpose(1, 2)
    }

    /// Attention with queries from `q_src` and keys and values from `k_src`/`v_src`, the
    /// attention itself replaced by `replace` if given (ComfyUI's `attn1` replace patch: it maps
    /// the projected q, k, v, `[B, N, inner]`, to the output before `to_out`). When a
    /// self-attention patch gave the queries another batch, the keys and values are viewed with
    /// the queries' batch, as ComfyUI's attention functions view them.
    pub(crate) fn attend(
        &self,
        q_src: &Tensor,
        k_src: &Tensor,
        v_src: &Tensor,
        replace: Option<&dyn AttentionReplace>,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let q = self.to_q.forward(q_src)?;
        let (mut k, mut v) = (self.to_k.forward(k_src)?, self.to_v.forward(v_src)?);
        let (batch, _, inner) = q.dims3()?;
        if k.dim(0)? != batch {
            k = k.reshape((batch, (), inner))?;
            v = v.reshape((batch, (), inner))?;
        }
        let out = match replace {
            Some(replace) => replace.attention(&q, &k, &v, self.heads)?,
            None => {
                let (q, k, v) = (
                    self.split_heads(&q)?,
                    self.split_heads(&k)?,
                    self.split_heads(&v)?,
                );
                let out = scaled_dot_product_in_layer(self.to_q.weight(), &q, &k, &v)?;
                let (b, h, n, d) = out.dims4()?;
                out.transpose(1, 2)?.reshape((b, n, h * d))?
            }
        };
        self.to_out.forward(&out)
    }
}

/// Rows at a time through a [`FeedForward`]: its projection is 8 times as wide as its input (84 MB
/// at SD1.5's 64x64 level with CFG in f32, 168 MB at SDXL's at 1024²), a chunk's 10 MB. The 512²
/// SD1.5 step peaked at 3743-3762 MiB instead of 3804-3848 MiB, at the same speed within this
/// machine's noise (9.3-10.4 s per step either way, alternating). Well above the rows where
/// [`Linear`] turns to its few-rows form (284 for SD1.5's 320 → 2560).
const FEED_FORWARD_ROWS: usize = 1024;

/// [`FEED_FORWARD_ROWS`] where the layers' products pack their weights on every call (f32
/// layers: gemm packs both weights again for each chunk, on one thread while the other cores
/// wait). Alternating, same binary: the f32 512² SD1.5 step took 8.57-10.02 s with 1024 rows and
/// 8.48-8.94 s with 4096, and peaked no higher (3716-3719 MiB against 3686-3716). bf16 layers
/// keep their weights packed, so they keep the smaller chunks (4096 rows peaked 64 MiB higher).
const FEED_FORWARD_ROWS_REPACKED: usize = 4096;

/// GeGLU feed-forward: proj to 2*inner, value * gelu(gate) with the exact erf GELU, then back.
#[derive(Debug)]
pub(crate) struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub(crate) fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        let proj = layers::linear(dim, inner * 2, vb.pp("net").pp("0").pp("proj"))?;
        let out = layers::linear(inner, dim, vb.pp("net").pp("2"))?;
        Ok(Self { proj, out })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut dims = xs.dims().to_vec();
        let width = dims.pop().unwrap_or(1);
        let rows = dims.iter().product::<usize>();
        let chunk = if self.proj.keeps_its_weight_packed(xs) {
            FEED_FORWARD_ROWS
        } else {
            FEED_FORWARD_ROWS_REPACKED
        };
        if rows <= chunk {
            return self.rows_forward(xs);
        }
        let flat = xs.reshape((rows, width))?;
        let parts = (0..rows)
            .step_by(chunk)
            .map(|start| self.rows_forward(&flat.narrow(0, start, chunk.min(rows - start))?))
            .collect::<Result<Vec<_>>>()?;
        let ys = Tensor::cat(&parts, 0)?;
        dims.push(ys.dim(1)?);
        ys.reshape(dims)
    }

    fn rows_forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(xs)?;
        self.out.forward(&crate::ops::geglu::geglu(&h)?)
    }
}

/// The middle patches a transformer applies to its blocks, with its index among the UNet's
/// transformers (ComfyUI's `transformer_index`).
#[derive(Clone, Copy, Default)]
pub(crate) struct MiddlePatches<'a> {
    pub patches: &'a [Arc<dyn MiddlePatch>],
    pub transformer_index: usize,
}

impl MiddlePatches<'_> {
    fn apply(&self, mut xs: Tensor) -> Result<Tensor> {
        for patch in self.patches {
            xs = patch.patch(xs, self.transformer_index)?;
        }
        Ok(xs)
    }
}

#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    span: tracing::Span,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            norm1: layers::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, head_dim, false)?,
            norm2: layers::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, head_dim, false)?,
            norm3: layers::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            span: tracing::trace_span!("transformer_block"),
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        context: &Tensor,
        self_attention: Option<&dyn AttentionReplace>,
        hooks: &SelfAttentionHooks<'_>,
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let normed = self.norm1.forward(xs)?;
        // ComfyUI's order: every attn1 patch, the attention (or its replacement), then every
        // attn1 output patch.
        let (mut q, mut k, mut v) = (normed.clone(), normed.clone(), normed);
        let mut undo = Vec::with_capacity(hooks.patches.len());
        for patch in hooks.patches {
            let before = patch.before(q, k, v, hooks.latent_hw)?;
            (q, k, v) = (before.0, before.1, before.2);
            undo.push(before.3);
        }
        let mut attended = self.attn1.attend(&q, &k, &v, self_attention)?;
        // `to_out`'s output is fresh; what a patch's undo returns may not be.
        let fresh = undo.is_empty();
        for undo in undo {
            attended = undo(attended)?;
        }
        let sum = match fresh {
            true => residual::add_into(attended, xs)?,
            false => (attended + xs)?,
        };
        let xs = hooks.middle.apply(sum)?;
        let (mut q, mut k, mut v) = (self.norm2.forward(&xs)?, context.clone(), context.clone());
        for patch in hooks.cross_patches {
            (q, k, v) = patch.before(q, k, v)?;
        }
        // Both outputs are fresh (each layer's `to_out`/`out` has just written them).
        let xs = residual::add_into(self.attn2.attend(&q, &k, &v, None)?, &xs)?;
        residual::add_into(self.ff.forward(&self.norm3.forward(&xs)?)?, &xs)
    }
}

/// What a model's patches change in the attention of a [`Transformer2D`]'s blocks.
#[derive(Clone, Copy, Default)]
pub(crate) struct SelfAttentionHooks<'a> {
    /// Replaces the attention of the first block, and of the others (`attn1` replace patches).
    pub(crate) replace: [Option<&'a dyn AttentionReplace>; 2],
    /// `attn1_patch`es with their output patches, in order.
    pub(crate) patches: &'a [Arc<dyn SelfAttentionPatch>],
    /// `attn2_patch`es on the cross-attention, in order.
    pub(crate) cross_patches: &'a [Arc<dyn CrossAttentionPatch>],
    /// The UNet input's (h, w), which the patches lay tokens out by.
    pub(crate) latent_hw: (usize, usize),
    /// `middle_patch`es (GLIGEN), with the transformer's index.
    pub(crate) middle: MiddlePatches<'a>,
}

/// Input/output projection of a [`Transformer2D`]: a 1x1 conv (SD1) or a linear layer (SD2/XL).
#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// Settings of a [`Transformer2D`] (diffusers `Transformer2DModel`, LDM `SpatialTransformer`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transformer2DConfig {
    pub channels: usize,
    pub context_dim: usize,
    pub heads: usize,
    pub depth: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
}

/// GroupNorm, projection in, `depth` transformer blocks, projection out, residual.
#[derive(Debug)]
pub(crate) struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
    span: tracing::Span,
}

impl Transformer2D {
    pub(crate) fn new(vb: VarBuilder, cfg: Transformer2DConfig) -> Result<Self> {
        let c = cfg.channels;
        let norm = group_norm(cfg.groups, c, 1e-6, vb.pp("norm"))?;
        let proj = |vb: VarBuilder| -> Result<Projection> {
            if cfg.use_linear_projection {
                Ok(Projection::Linear(layers::linear(c, c, vb)?))
            } else {
                Ok(Projection::Conv(conv2d(c, c, 1, Default::default(), vb)?))
            }
        };
        let proj_in = proj(vb.pp("proj_in"))?;
        let vb_blocks = vb.pp("transformer_blocks");
        let blocks = (0..cfg.depth)
            .map(|i| BasicTransformerBlock::new(vb_blocks.pp(i), c, cfg.context_dim, cfg.heads))
            .collect::<Result<Vec<_>>>()?;
        let proj_out = proj(vb.pp("proj_out"))?;
        let span = tracing::trace_span!("transformer2d", depth = cfg.depth);
        Ok(Self {
            norm,
            proj_in,
            blocks,
            proj_out,
            span,
        })
    }

    /// `xs`: [B, C, H, W]; `context`: [B, M, C_ctx], with the blocks' self-attention patched and
    /// the `middle` patches applied in every block. Returns [B, C, H, W].
    pub(crate) fn forward_with(
        &self,
        xs: &Tensor,
        context: &Tensor,
        hooks: &SelfAttentionHooks<'_>,
    ) -> Result<Tensor> {
        let [first, rest] = hooks.replace;
        let _enter = self.span.enter();
        let (b, c, h, w) = xs.dims4()?;
        // [B, C, H*W] and [B, H*W, C] are each other's transposes (on every core on the CPU).
        let to_tokens =
            |t: &Tensor| -> Result<Tensor> { swap_last_two(&t.reshape((b, c, h * w))?, None) };
        let normed = self.norm.forward(xs)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?)?,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let self_attention = if i == 0 { first } else { rest };
            tokens = block.forward(&tokens, context, self_attention, hooks)?;
        }
        let to_image =
            |t: &Tensor| -> Result<Tensor> { swap_last_two(t, None)?.reshape((b, c, h, w)) };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(&tokens)?)?,
            Projection::Linear(lin) => to_image(&lin.forward(&tokens)?)?,
        };
        residual::add_into(out, xs)
    }
}

/// Stride-2 3x3 convolution (`downsamplers.0.conv`). `asymmetric_pad` is the VAE variant, which
/// pads right/bottom by one and uses no conv padding.
#[derive(Debug)]
pub(crate) struct Downsample2D {
    conv: Conv2d,
    asymmetric_pad: bool,
}

impl Downsample2D {
    pub(crate) fn new(vb: VarBuilder, channels: usize, asymmetric_pad: bool) -> Result<Self> {
        let cfg = Conv2dConfig {
            stride: 2,
            padding: if asymmetric_pad { 0 } else { 1 },
            ..Default::default()
        };
        let conv = conv2d(channels, channels, 3, cfg, vb.pp("conv"))?;
        Ok(Self {
            conv,
            asymmetric_pad,
        })
    }

    /// [B, C, H, W] -> [B, C, ceil(H/2), ceil(W/2)].
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.asymmetric_pad {
            let xs = xs
                .pad_with_zeros(D::Minus1, 0, 1)?
                .pad_with_zeros(D::Minus2, 0, 1)?;
            self.conv.forward(&xs)
        } else {
            self.conv.forward(xs)
        }
    }
}

/// Nearest-neighbour upsampling followed by a 3x3 conv (`upsamplers.0.conv`).
#[derive(Debug)]
pub(crate) struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub(crate) fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv_same(channels, channels, 3, vb.pp("conv"))?,
        })
    }

    /// [B, C, H, W] -> [B, C, out_h, out_w] (2x unless the skip it meets has another size).
    pub(crate) fn forward(&self, xs: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        if (out_h, out_w) == (2 * h, 2 * w) {
            return self.conv.forward_upsampled_2x(xs);
        }
        self.conv.forward(&xs.upsample_nearest2d(out_h, out_w)?)
    }
}

/// Sinusoidal embedding [cos(t f_k), sin(t f_k)] with f_k = exp(-ln(10000) k / (dim/2)), computed
/// in f32 on the host exactly in the order diffusers' `get_timestep_embedding` uses, whatever the
/// model dtype. `values`: one scalar per row. Returns [rows, dim] f32.
pub fn sinusoidal_embedding(
    values: &[f32],
    dim: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let log_period = (10000f64).ln() as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|k| ((-log_period * k as f32) / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(values.len() * dim);
    for &t in values {
        out.extend(freqs.iter().map(|f| (t * f).cos()));
        out.extend(freqs.iter().map(|f| (t * f).sin()));
        // Odd sizes get a zero column, as in diffusers.
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_vec(out, (values.len(), dim), device)
}

/// diffusers `TimestepEmbedding`: linear_1, SiLU, linear_2.
#[derive(Debug)]
pub(crate) struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub(crate) fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: layers::linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: layers::linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }

    /// [B, in_dim] -> [B, out_dim].
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(xs)?.silu()?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// The feed-forward in chunks of rows gives what one pass over all rows gives: more rows
    /// than a chunk (and not a multiple of it), in f32 and on bf16 weights.
    #[test]
    fn the_feed_forward_in_chunks_matches_one_pass() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::BF16] {
            let ff = FeedForward::new(crate::synth::synth_var_builder(dtype, &dev), 16).unwrap();
            let rows = 2 * FEED_FORWARD_ROWS_REPACKED + 37;
            let xs = Tensor::randn(0f32, 1.0, (2, rows / 2 + 1, 16), &dev).unwrap();
            let chunked = ff.forward(&xs).unwrap();
            let whole = ff.rows_forward(&xs).unwrap();
            assert_eq!(chunked.dims(), [2, rows / 2 + 1, 16]);
            let diff = crate::ops::max_abs_diff(&chunked, &whole);
            assert!(diff <= 1e-5, "{dtype:?}: {diff}");
        }
    }
}
