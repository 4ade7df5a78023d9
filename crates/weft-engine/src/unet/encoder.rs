//! The encoder half of the UNet, the part a ControlNet copies: the time embedding (with an
//! optional class embedding and SDXL's `y` embedding), `conv_in`, the down blocks and the mid
//! block. [`UNet2DConditionModel`](super::UNet2DConditionModel) adds the up path to it,
//! [`ControlNetModel`](crate::controlnet::ControlNetModel) the hint embedding and the zero
//! convolutions.
//!
//! Weight names are diffusers' (`time_embedding`, `add_embedding`, `conv_in`, `down_blocks.N`,
//! `mid_block`), under the builder the model gives.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::conv::Conv2d;
use crate::unet::blocks::{
    conv_same, sinusoidal_embedding, Downsample2D, MiddlePatches, ResnetBlock2D, ResnetConfig,
    SelfAttentionHooks, TimestepEmbedding, Transformer2D, Transformer2DConfig,
};
use crate::unet::UNetConfig;

/// A resnet of `cfg`'s UNet from `in_channels` to `out_channels`, taking the time embedding.
pub(crate) fn resnet(
    cfg: &UNetConfig,
    vb: VarBuilder,
    in_channels: usize,
    out_channels: usize,
) -> Result<ResnetBlock2D> {
    ResnetBlock2D::new(
        vb,
        ResnetConfig {
            in_channels,
            out_channels,
            temb_channels: Some(cfg.time_embed_dim()),
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
        },
    )
}

/// A transformer of `cfg`'s UNet at `level`, `channels` wide and `depth` blocks deep.
pub(crate) fn transformer(
    cfg: &UNetConfig,
    vb: VarBuilder,
    level: usize,
    channels: usize,
    depth: usize,
) -> Result<Transformer2D> {
    Transformer2D::new(
        vb,
        Transformer2DConfig {
            channels,
            context_dim: cfg.context_dim,
            heads: cfg.heads_at(level, channels),
            depth,
            groups: cfg.norm_num_groups,
            use_linear_projection: cfg.use_linear_projection,
        },
    )
}

#[derive(Debug)]
struct DownLevel {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
    span: tracing::Span,
}

/// The embeddings, `conv_in`, the down blocks and the mid block of a UNet.
#[derive(Debug)]
pub(crate) struct UNetEncoder {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TimestepEmbedding>,
    down: Vec<DownLevel>,
    mid_resnets: [ResnetBlock2D; 2],
    mid_attention: Transformer2D,
    /// Channels of every skip, in diffusers order (`conv_in`, then each resnet/attention pair and
    /// downsampler).
    skip_channels: Vec<usize>,
    /// Width of the sinusoidal timestep embedding (the first level's channels).
    time_channels: usize,
    /// The model this encoder belongs to ("unet", "controlnet"), for error messages.
    model: &'static str,
    dtype: DType,
    device: Device,
}

impl UNetEncoder {
    /// Builds the encoder of `cfg` (already validated) from diffusers-named weights under `vb`;
    /// `model` names the model in error messages.
    pub(crate) fn new(vb: VarBuilder, cfg: &UNetConfig, model: &'static str) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let levels = ch.len();
        let temb = cfg.time_embed_dim();

        let conv_in = conv_same(cfg.in_channels, ch[0], 3, vb.pp("conv_in"))?;
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], temb)?;
        let add_embedding = match cfg.adm_in_channels {
            Some(adm) => Some(TimestepEmbedding::new(vb.pp("add_embedding"), adm, temb)?),
            None => None,
        };

        let mut skip_channels = vec![ch[0]];
        let mut down = Vec::with_capacity(levels);
        let vb_down = vb.pp("down_blocks");
        let mut prev = ch[0];
        for (level, &out) in ch.iter().enumerate() {
            let vb_l = vb_down.pp(level);
            let depth = cfg.transformer_depth[level];
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..cfg.layers_per_block {
                let input = if j == 0 { prev } else { out };
                resnets.push(resnet(cfg, vb_l.pp("resnets").pp(j), input, out)?);
                if depth > 0 {
                    let vb_a = vb_l.pp("attentions").pp(j);
                    attentions.push(transformer(cfg, vb_a, level, out, depth)?);
                }
                skip_channels.push(out);
            }
            let downsampler = if level + 1 < levels {
                skip_channels.push(out);
                Some(Downsample2D::new(
                    vb_l.pp("downsamplers").pp(0),
                    out,
                    false,
                )?)
            } else {
                None
            };
            prev = out;
            down.push(DownLevel {
                resnets,
                attentions,
                downsampler,
                span: tracing::trace_span!("down_block", level),
            });
        }

        let last = ch[levels - 1];
        let vb_mid = vb.pp("mid_block");
        let mid_resnets = [
            resnet(cfg, vb_mid.pp("resnets").pp(0), last, last)?,
            resnet(cfg, vb_mid.pp("resnets").pp(1), last, last)?,
        ];
        let mid_attention = transformer(
            cfg,
            vb_mid.pp("attentions").pp(0),
            levels - 1,
            last,
            cfg.mid_transformer_depth,
        )?;
        Ok(Self {
            conv_in,
            time_embedding,
            add_embedding,
            down,
            mid_resnets,
            mid_attention,
            skip_channels,
            time_channels: ch[0],
            model,
            dtype: crate::device::compute_dtype(vb.device(), vb.dtype()),
            device: vb.device().clone(),
        })
    }

    /// The dtype it computes in: f32 on the CPU, the weights' on a GPU.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Channels of every skip, in diffusers order: `conv_in`, then each resnet/attention pair
    /// and downsampler.
    pub(crate) fn skip_channels(&self) -> &[usize] {
        &self.skip_channels
    }

    /// `timesteps` ([B], any float dtype) as f32 values, checked against the batch size.
    pub(crate) fn timesteps(&self, timesteps: &Tensor, batch: usize) -> Result<Vec<f32>> {
        let t: Vec<f32> = timesteps.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        if t.len() != batch {
            candle_core::bail!(
                "{} got {} timesteps for a batch of {batch}",
                self.model,
                t.len()
            );
        }
        Ok(t)
    }

    /// The embedding the resnets take, in the model dtype: the time embedding of `t` (its
    /// sinusoidal embedding computed in f32), plus `class` ([1 or B, temb], added as diffusers
    /// adds a class embedding; the union ControlNet's control type), plus the embedding of `y`
    /// ([B, adm_in_channels], SDXL's size and pooled vector), which the model must take exactly
    /// when it has an `add_embedding`.
    pub(crate) fn embedding(
        &self,
        t: &[f32],
        class: Option<&Tensor>,
        y: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t_emb = sinusoidal_embedding(t, self.time_channels, &self.device)?;
        let mut emb = self.time_embedding.forward(&t_emb.to_dtype(self.dtype)?)?;
        if let Some(class) = class {
            emb = emb.broadcast_add(class)?;
        }
        match (&self.add_embedding, y) {
            (Some(add), Some(y)) => emb = (emb + add.forward(&y.to_dtype(self.dtype)?)?)?,
            (Some(_), None) => candle_core::bail!("this {} needs the y (adm) vector", self.model),
            (None, Some(_)) => candle_core::bail!("this {} takes no y (adm) vector", self.model),
            (None, None) => {}
        }
        Ok(emb)
    }

    /// `conv_in` and the down blocks on `xs` ([B, C_in, H, W], the model dtype), with the
    /// embedding `emb` and `context` ([B, N, context_dim], the model dtype). Every skip goes
    /// through `skip(k, h)` as it is produced (`k` in diffusers order, see
    /// [`Self::skip_channels`]), which returns the hidden state to go on with. Returns the
    /// hidden state for the mid block.
    pub(crate) fn down(
        &self,
        xs: &Tensor,
        emb: &Tensor,
        context: &Tensor,
        skip: impl FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.down_with(xs, emb, context, &SelfAttentionHooks::default(), skip)
    }

    /// The number of transformers in the down blocks (the mid block's is the next index).
    pub(crate) fn down_transformers(&self) -> usize {
        self.down.iter().map(|level| level.attentions.len()).sum()
    }

    /// [`Self::down`] with the transformers' self-attention patched and the `middle` patches
    /// applied in every transformer, each with its index (the down blocks' are numbered from 0).
    pub(crate) fn down_with(
        &self,
        xs: &Tensor,
        emb: &Tensor,
        context: &Tensor,
        hooks: &SelfAttentionHooks<'_>,
        mut skip: impl FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut transformer_index = 0;
        let mut k = 0;
        let mut next = |h: Tensor| {
            k += 1;
            skip(k - 1, h)
        };
        let mut h = next(self.conv_in.forward(xs)?)?;
        for level in &self.down {
            let _enter = level.span.enter();
            for (j, resnet) in level.resnets.iter().enumerate() {
                h = resnet.forward(&h, Some(emb))?;
                if let Some(attn) = level.attentions.get(j) {
                    let hooks = SelfAttentionHooks {
                        middle: MiddlePatches {
                            transformer_index,
                            ..hooks.middle
                        },
                        ..*hooks
                    };
                    h = attn.forward_with(&h, context, &hooks)?;
                    transformer_index += 1;
                }
                h = next(h)?;
            }
            if let Some(downsampler) = &level.downsampler {
                h = next(downsampler.forward(&h)?)?;
            }
        }
        Ok(h)
    }

    /// The mid block (resnet, attention, resnet) on the down blocks' output `h`.
    pub(crate) fn mid(&self, h: &Tensor, emb: &Tensor, context: &Tensor) -> Result<Tensor> {
        self.mid_with(h, emb, context, &SelfAttentionHooks::default())
    }

    /// [`Self::mid`] with the mid block's self-attentions patched (PAG's perturbed pass, SAG's
    /// recording one) and the `middle` patches applied (the caller sets the transformer index).
    pub(crate) fn mid_with(
        &self,
        h: &Tensor,
        emb: &Tensor,
        context: &Tensor,
        hooks: &SelfAttentionHooks<'_>,
    ) -> Result<Tensor> {
        let _enter = tracing::trace_span!("mid_block").entered();
        let h = self.mid_resnets[0].forward(h, Some(emb))?;
        let h = self.mid_attention.forward_with(&h, context, hooks)?;
        self.mid_resnets[1].forward(&h, Some(emb))
    }
}
