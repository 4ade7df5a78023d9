//! Weft's own `AutoencoderKL` (SD1.x/SD2.x/SDXL VAE) in diffusers layout, with tiled encode/decode.
//!
//! `encode`/`decode` work on raw latents; the `*_scaled` helpers apply the family's scaling factor
//! (0.18215 for SD1/SD2, 0.13025 for SDXL) the way ComfyUI's latent formats do. Images are in
//! [-1, 1], NCHW.

pub mod tiled;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::attention::scaled_dot_product_in_layer;
use crate::ops::conv::{conv2d, Conv2d};
use crate::ops::layers;
use crate::ops::norm::{group_norm, GroupNorm};

use crate::unet::blocks::{conv_same, Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};

/// Architecture and latent scaling of an [`AutoEncoderKL`].
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Image channels the encoder takes (3, RGB).
    pub in_channels: usize,
    /// Image channels the decoder gives (3, RGB).
    pub out_channels: usize,
    /// Channels per level, encoder order (diffusers `block_out_channels`; `[128, 256, 512, 512]`).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level (decoder levels have one more).
    pub layers_per_block: usize,
    /// Latent channels (4).
    pub latent_channels: usize,
    /// Groups of every GroupNorm (32).
    pub norm_num_groups: usize,
    /// Multiplies raw latents before the UNet sees them (and divides before decoding).
    pub scaling_factor: f64,
}

impl VaeConfig {
    /// The SD1.x/SD2.x VAE (scaling factor 0.18215).
    pub fn sd() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
        }
    }

    /// The SDXL VAE: same architecture, scaling factor 0.13025.
    pub fn sdxl() -> Self {
        Self {
            scaling_factor: 0.13025,
            ..Self::sd()
        }
    }

    /// Pixels per latent pixel along each side (8 for the real VAEs).
    pub fn downscale_factor(&self) -> usize {
        let shift = self.block_out_channels.len().saturating_sub(1) as u32;
        1usize.checked_shl(shift).unwrap_or(usize::MAX)
    }
}

/// The VAE's single-head self-attention over all pixels, with a residual connection.
#[derive(Debug)]
struct AttentionBlock {
    group_norm: GroupNorm,
    to_q: layers::Linear,
    to_k: layers::Linear,
    to_v: layers::Linear,
    to_out: layers::Linear,
    span: tracing::Span,
}

impl AttentionBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: group_norm(groups, channels, 1e-6, vb.pp("group_norm"))?,
            to_q: layers::linear(channels, channels, vb.pp("to_q"))?,
            to_k: layers::linear(channels, channels, vb.pp("to_k"))?,
            to_v: layers::linear(channels, channels, vb.pp("to_v"))?,
            to_out: layers::linear(channels, channels, vb.pp("to_out").pp("0"))?,
            span: tracing::trace_span!("vae_attention"),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, c, h, w) = xs.dims4()?;
        let tokens = self
            .group_norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        let q = self.to_q.forward(&tokens)?.unsqueeze(1)?;
        let k = self.to_k.forward(&tokens)?.unsqueeze(1)?;
        let v = self.to_v.forward(&tokens)?.unsqueeze(1)?;
        let out = scaled_dot_product_in_layer(self.to_q.weight(), &q, &k, &v)?.squeeze(1)?;
        let out = self
            .to_out
            .forward(&out)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + xs
    }
}

#[derive(Debug)]
struct MidBlock {
    resnet_0: ResnetBlock2D,
    attention: AttentionBlock,
    resnet_1: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let rc = resnet_config(channels, channels, groups);
        Ok(Self {
            resnet_0: ResnetBlock2D::new(vb.pp("resnets").pp(0), rc)?,
            attention: AttentionBlock::new(vb.pp("attentions").pp(0), channels, groups)?,
            resnet_1: ResnetBlock2D::new(vb.pp("resnets").pp(1), rc)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.resnet_0.forward(xs, None)?;
        let xs = self.attention.forward(&xs)?;
        self.resnet_1.forward(&xs, None)
    }
}

fn resnet_config(in_channels: usize, out_channels: usize, groups: usize) -> ResnetConfig {
    ResnetConfig {
        in_channels,
        out_channels,
        temb_channels: None,
        groups,
        eps: 1e-6,
    }
}

#[derive(Debug)]
struct Encoder {
    conv_in: Conv2d,
    down: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    span: tracing::Span,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let conv_in = conv_same(cfg.in_channels, ch[0], 3, vb.pp("conv_in"))?;
        let mut down = Vec::new();
        let mut prev = ch[0];
        for (i, &out) in ch.iter().enumerate() {
            let vb_l = vb.pp("down_blocks").pp(i);
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let input = if j == 0 { prev } else { out };
                    ResnetBlock2D::new(vb_l.pp("resnets").pp(j), resnet_config(input, out, g))
                })
                .collect::<Result<Vec<_>>>()?;
            let downsampler = if i + 1 < ch.len() {
                Some(Downsample2D::new(vb_l.pp("downsamplers").pp(0), out, true)?)
            } else {
                None
            };
            down.push((resnets, downsampler));
            prev = out;
        }
        let last = prev;
        Ok(Self {
            conv_in,
            down,
            mid: MidBlock::new(vb.pp("mid_block"), last, g)?,
            conv_norm_out: group_norm(g, last, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv_same(last, 2 * cfg.latent_channels, 3, vb.pp("conv_out"))?,
            span: tracing::trace_span!("vae_encoder"),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut h = self.conv_in.forward(xs)?;
        for (resnets, downsampler) in &self.down {
            for resnet in resnets {
                h = resnet.forward(&h, None)?;
            }
            if let Some(d) = downsampler {
                h = d.forward(&h)?;
            }
        }
        let h = self.mid.forward(&h)?;
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}

#[derive(Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    span: tracing::Span,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let levels = ch.len();
        let last = ch[levels - 1];
        let conv_in = conv_same(cfg.latent_channels, last, 3, vb.pp("conv_in"))?;
        let mid = MidBlock::new(vb.pp("mid_block"), last, g)?;
        let mut up = Vec::new();
        let mut prev = last;
        for i in 0..levels {
            let out = ch[levels - 1 - i];
            let vb_l = vb.pp("up_blocks").pp(i);
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| {
                    let input = if j == 0 { prev } else { out };
                    ResnetBlock2D::new(vb_l.pp("resnets").pp(j), resnet_config(input, out, g))
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if i + 1 < levels {
                Some(Upsample2D::new(vb_l.pp("upsamplers").pp(0), out)?)
            } else {
                None
            };
            up.push((resnets, upsampler));
            prev = out;
        }
        Ok(Self {
            conv_in,
            mid,
            up,
            conv_norm_out: group_norm(g, prev, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv_same(prev, cfg.out_channels, 3, vb.pp("conv_out"))?,
            span: tracing::trace_span!("vae_decoder"),
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let h = self.conv_in.forward(z)?;
        let mut h = self.mid.forward(&h)?;
        for (resnets, upsampler) in &self.up {
            for resnet in resnets {
                h = resnet.forward(&h, None)?;
            }
            if let Some(u) = upsampler {
                let (_, _, hh, ww) = h.dims4()?;
                h = u.forward(&h, hh * 2, ww * 2)?;
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}

/// The diagonal Gaussian the encoder predicts.
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    /// [B, C_latent, h, w]
    pub mean: Tensor,
    /// [B, C_latent, h, w], clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
}

impl LatentDistribution {
    /// The mean (what ComfyUI's VAE Encode returns).
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }

    /// `mean + exp(logvar / 2) * noise`; `noise` has the mean's shape.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        let std = (&self.logvar * 0.5)?.exp()?;
        &self.mean + std.mul(noise)?
    }
}

/// The KL autoencoder of Stable Diffusion.
#[derive(Debug)]
pub struct AutoEncoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    config: VaeConfig,
    /// The diffusers-named weights it was built from (shared with its layers), for saving.
    weights: Option<std::sync::Arc<std::collections::HashMap<String, Tensor>>>,
}

impl AutoEncoderKL {
    /// The dtype it computes in (inputs must be converted to it): f32 on the CPU.
    pub fn dtype(&self) -> DType {
        let weight = self.quant_conv.weight();
        crate::device::compute_dtype(weight.device(), weight.dtype())
    }

    /// The device the weights live on (inputs must be moved to it).
    pub fn device(&self) -> &candle_core::Device {
        self.quant_conv.weight().device()
    }

    /// Builds the VAE from diffusers-named weights under `vb`.
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        if cfg.block_out_channels.is_empty() || cfg.norm_num_groups == 0 {
            candle_core::bail!("vae config has no levels or no norm groups");
        }
        if let Some(c) = cfg
            .block_out_channels
            .iter()
            .find(|c| **c == 0 || **c % cfg.norm_num_groups != 0)
        {
            candle_core::bail!(
                "vae level of {c} channels does not split into {} groups",
                cfg.norm_num_groups
            );
        }
        let lc = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), cfg)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg)?,
            quant_conv: conv2d(2 * lc, 2 * lc, 1, Default::default(), vb.pp("quant_conv"))?,
            post_quant_conv: conv2d(lc, lc, 1, Default::default(), vb.pp("post_quant_conv"))?,
            config: cfg.clone(),
            weights: None,
        })
    }

    /// Keeps the diffusers-named weights the VAE was built from (VAESave, CheckpointSave).
    pub fn with_weights(mut self, weights: std::collections::HashMap<String, Tensor>) -> Self {
        self.weights = Some(std::sync::Arc::new(weights));
        self
    }

    /// The weights it was built from, when its loader kept them.
    pub fn weights(&self) -> Option<&std::collections::HashMap<String, Tensor>> {
        self.weights.as_deref()
    }

    /// The architecture and scaling factor.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// `images`: [B, 3, H, W] in [-1, 1] -> the raw (unscaled) latent distribution,
    /// [B, C_latent, H/f, W/f] each.
    pub fn encode(&self, images: &Tensor) -> Result<LatentDistribution> {
        let moments = self.quant_conv.forward(&self.encoder.forward(images)?)?;
        let lc = self.config.latent_channels;
        let mean = moments.narrow(1, 0, lc)?;
        let logvar = moments.narrow(1, lc, lc)?.clamp(-30f32, 20f32)?;
        Ok(LatentDistribution { mean, logvar })
    }

    /// Raw latents [B, C_latent, h, w] -> images [B, 3, h f, w f] in about [-1, 1] (unclamped).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decoder
            .forward(&self.post_quant_conv.forward(latents)?)
    }

    /// Images -> scaled latents (the distribution's mode times the scaling factor), the latent the
    /// samplers work on.
    pub fn encode_scaled(&self, images: &Tensor) -> Result<Tensor> {
        self.encode(images)?.mean * self.config.scaling_factor
    }

    /// Scaled latents -> images.
    pub fn decode_scaled(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode(&(latents / self.config.scaling_factor)?)
    }

    /// Tiled [`Self::decode`] on raw latents; `tile` and `overlap` are in latent pixels (ComfyUI's
    /// VAEDecodeTiled node takes image pixels, e.g. 512/64, and divides them by 8). Tiles are
    /// blended with a linear feathered mask as `comfy.utils.tiled_scale_multidim` does.
    pub fn decode_tiled(&self, latents: &Tensor, tile: usize, overlap: usize) -> Result<Tensor> {
        let f = self.config.downscale_factor();
        let opts = tiled::TileOptions {
            tile: (tile, tile),
            overlap,
            scale: f,
            downscale: false,
        };
        tiled::tiled_scale(
            latents,
            &|t| self.decode(t),
            self.config.out_channels,
            &opts,
        )
    }

    /// Tiled [`Self::encode`] (mode) on images: `tile` and `overlap` in image pixels.
    pub fn encode_tiled(&self, images: &Tensor, tile: usize, overlap: usize) -> Result<Tensor> {
        let f = self.config.downscale_factor();
        let opts = tiled::TileOptions {
            tile: (tile, tile),
            overlap,
            scale: f,
            downscale: true,
        };
        let encode = |t: &Tensor| -> Result<Tensor> { Ok(self.encode(t)?.mean) };
        tiled::tiled_scale(images, &encode, self.config.latent_channels, &opts)
    }
}
