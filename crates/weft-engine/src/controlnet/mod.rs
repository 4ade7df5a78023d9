//! Spatial guidance for the UNet: ControlNet (lllyasviel's `cldm`, diffusers `ControlNetModel`)
//! and T2I-Adapter (TencentARC, diffusers `T2IAdapter`), with ComfyUI's ways of scaling, timing
//! and combining their residuals.
//!
//! - this file: [`ControlNetConfig`] and [`ControlNetModel`], the UNet's own encoder half
//!   (`unet/encoder.rs`: embeddings, `conv_in`, down blocks, mid block) plus the hint embedding
//!   and the zero convolutions. It produces the [`ControlResiduals`] that
//!   `UNet2DConditionModel::forward` takes. [`check_compatible`] checks a ControlNet against a
//!   UNet.
//! - [`apply`]: strength (constant or soft injection), global average pooling, the start/end
//!   percent window, and [`apply::AppliedControl`], the `ControlHint` the sampler evaluates for
//!   every kind of control.
//! - [`adapter`]: T2I-Adapters (SD1 full and light, SDXL full), whose features enter the UNet's
//!   encoder (`EncoderAdditions`) rather than its skips.
//! - [`union`]: the parts a union ControlNet (ControlNet++) adds, and its control types; a union
//!   ControlNet is a [`ControlNetModel`] with [`ControlNetConfig::union`] set.
//! - [`control_lora`]: Stability's Control-LoRA files, built on the sampled model's UNet weights
//!   ([`base`]: those weights and the sources that read them).
//!
//! Loading, a file per job: [`load`] (the entry points: any control file, safetensors or pickle,
//! in the LDM (`control_model.`-prefixed or bare) or diffusers layout), [`format`](mod@format) (what a file
//! holds), [`keymap`] (LDM and diffusers names), [`detect`] (the config, read off the tensor
//! shapes or a `config.json`), [`union_file`] (union ControlNets' tensors), [`adapter_file`]
//! (T2I-Adapter files) and `difference` (difference ControlNets, built on the base model).
//!
//! Weight names are diffusers' (`controlnet_cond_embedding.blocks.0.weight`,
//! `controlnet_down_blocks.3.weight`); LDM names are renamed in [`keymap`].

pub mod adapter;
pub mod adapter_file;
pub mod apply;
pub mod base;
pub mod control_lora;
pub mod detect;
pub(crate) mod difference;
pub mod format;
pub mod keymap;
pub mod load;
pub mod union;
pub mod union_file;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::load::detect::ModelFamily;
use crate::ops::conv::{conv2d, Conv2d};
use crate::unet::blocks::conv_same;
use crate::unet::encoder::UNetEncoder;
use crate::unet::{ControlResiduals, UNetConfig};

/// Architecture of a [`ControlNetModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetConfig {
    /// The encoder, described as the UNet it copies: levels, resnets per level, transformer depths
    /// (which "mid"/"small" SDXL ControlNets reduce), heads, context width, `y` width.
    /// `out_channels` is unused.
    pub encoder: UNetConfig,
    /// Channels of the hint image (3: RGB in [0, 1]).
    pub hint_channels: usize,
    /// Channels of the hint embedding's stages (diffusers `conditioning_embedding_out_channels`,
    /// 16, 32, 96, 256 in every released model). Each stage after the first halves the size, so
    /// the hint is `2^(len - 1)` (8) times the latent size.
    pub hint_block_channels: Vec<usize>,
    /// The union (ControlNet++) parts, for union ControlNets.
    pub union: Option<union::UnionConfig>,
}

impl ControlNetConfig {
    /// The ControlNet of a UNet with the standard hint embedding (what `ControlNetModel.from_unet`
    /// and lllyasviel's training scripts build).
    pub fn for_unet(unet: &UNetConfig) -> Self {
        Self {
            encoder: unet.clone(),
            hint_channels: 3,
            hint_block_channels: vec![16, 32, 96, 256],
            union: None,
        }
    }

    /// SD1.x ControlNets (lllyasviel/ControlNet, ControlNet 1.1).
    pub fn sd15() -> Self {
        Self::for_unet(&UNetConfig::sd15())
    }

    /// SD2.x ControlNets.
    pub fn sd21() -> Self {
        Self::for_unet(&UNetConfig::sd21())
    }

    /// Full-size SDXL ControlNets (diffusers controlnet-*-sdxl-1.0).
    pub fn sdxl() -> Self {
        Self::for_unet(&UNetConfig::sdxl_base())
    }

    /// The model family whose UNet this ControlNet controls, by the same rules as checkpoint
    /// detection: a `y` input means SDXL, linear transformer projections SD2, else SD1.
    pub fn family(&self) -> ModelFamily {
        let e = &self.encoder;
        match e.adm_in_channels {
            Some(a) if a == 2560 || a.checked_sub(5 * 256) == Some(e.context_dim) => {
                ModelFamily::SdxlRefiner
            }
            Some(_) => ModelFamily::SdxlBase,
            None if e.use_linear_projection => ModelFamily::Sd2,
            None => ModelFamily::Sd1,
        }
    }

    /// Down residuals produced: `conv_in`, one per resnet, one per downsampler (12 SD1, 9 SDXL).
    pub fn num_down_residuals(&self) -> usize {
        let levels = self.encoder.block_out_channels.len();
        1 + levels * self.encoder.layers_per_block + levels.saturating_sub(1)
    }

    /// How many times larger than the latent the hint is (8).
    pub fn hint_downscale(&self) -> usize {
        let stages = self.hint_block_channels.len().saturating_sub(1) as u32;
        1usize.checked_shl(stages).unwrap_or(usize::MAX)
    }

    /// Checks the invariants the model builder relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.encoder.validate()?;
        if self.hint_channels == 0 {
            return Err("controlnet config has no hint channels".into());
        }
        if self.hint_block_channels.is_empty() || self.hint_block_channels.len() > 8 {
            return Err(format!(
                "controlnet hint embedding has {} stages, expected 1 to 8",
                self.hint_block_channels.len()
            ));
        }
        if let Some(u) = &self.union {
            u.validate(self.encoder.block_out_channels[0])?;
        }
        Ok(())
    }
}

/// Which family a UNet config belongs to (the rules of [`ControlNetConfig::family`]).
fn unet_family(unet: &UNetConfig) -> ModelFamily {
    ControlNetConfig::for_unet(unet).family()
}

/// Checks that a ControlNet can control a UNet: same family, and residuals of the UNet's skip
/// count, channels and latent width. Transformer depths may differ ("mid"/"small" SDXL
/// ControlNets).
///
/// The error is a lowercase sentence naming both sides, for the node to show.
pub fn check_compatible(
    controlnet: &ControlNetConfig,
    unet: &UNetConfig,
) -> std::result::Result<(), String> {
    let (cf, uf) = (controlnet.family(), unet_family(unet));
    let name = |f: ModelFamily| match f {
        ModelFamily::Sd1 => "sd1.x",
        ModelFamily::Sd2 => "sd2.x",
        ModelFamily::SdxlBase => "sdxl",
        ModelFamily::SdxlRefiner => "sdxl refiner",
    };
    let e = &controlnet.encoder;
    if cf != uf || e.context_dim != unet.context_dim || e.adm_in_channels != unet.adm_in_channels {
        return Err(format!(
            "this is an {} controlnet (context width {}, y width {}) and the model is {} (context \
             width {}, y width {}); use a controlnet made for the model's family",
            name(cf),
            e.context_dim,
            e.adm_in_channels.unwrap_or(0),
            name(uf),
            unet.context_dim,
            unet.adm_in_channels.unwrap_or(0),
        ));
    }
    if e.block_out_channels != unet.block_out_channels
        || e.layers_per_block != unet.layers_per_block
    {
        return Err(format!(
            "the controlnet's levels {:?} x {} resnets do not match the model's {:?} x {}",
            e.block_out_channels,
            e.layers_per_block,
            unet.block_out_channels,
            unet.layers_per_block
        ));
    }
    // Inpainting UNets take 9 channels (latent + mask + masked image); the ControlNet still sees
    // the plain latent, so compare with the UNet's output (latent) width.
    if e.in_channels != unet.out_channels {
        return Err(format!(
            "the controlnet takes {}-channel latents and the model produces {}",
            e.in_channels, unet.out_channels
        ));
    }
    Ok(())
}

/// The hint embedding (LDM `input_hint_block`, diffusers `controlnet_cond_embedding`): conv_in,
/// then per stage a same-size conv and a stride-2 conv, then conv_out, SiLU after all but the
/// last.
#[derive(Debug)]
struct HintEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
    span: tracing::Span,
}

impl HintEmbedding {
    fn new(vb: VarBuilder, cfg: &ControlNetConfig, out_channels: usize) -> Result<Self> {
        let ch = &cfg.hint_block_channels;
        let first = ch.first().copied().unwrap_or(16);
        let last = ch.last().copied().unwrap_or(first);
        let conv_in = conv_same(cfg.hint_channels, first, 3, vb.pp("conv_in"))?;
        let vb_blocks = vb.pp("blocks");
        let mut blocks = Vec::with_capacity(2 * ch.len().saturating_sub(1));
        for (i, pair) in ch.windows(2).enumerate() {
            let (c_in, c_out) = (pair[0], pair[1]);
            blocks.push(conv_same(c_in, c_in, 3, vb_blocks.pp(2 * i))?);
            let stride2 = Conv2dConfig {
                padding: 1,
                stride: 2,
                ..Default::default()
            };
            blocks.push(conv2d(c_in, c_out, 3, stride2, vb_blocks.pp(2 * i + 1))?);
        }
        let conv_out = conv_same(last, out_channels, 3, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            blocks,
            conv_out,
            span: tracing::trace_span!("hint_embedding"),
        })
    }

    /// [B, C_hint, H, W] -> [B, C0, H / 2^stages, W / 2^stages].
    fn forward(&self, hint: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut h = self.conv_in.forward(hint)?.silu()?;
        for conv in &self.blocks {
            h = conv.forward(&h)?.silu()?;
        }
        self.conv_out.forward(&h)
    }
}

/// A ControlNet: the UNet's encoder and mid block fed with the latent plus the embedded hint, with
/// a 1x1 "zero" convolution on every skip and on the mid block's output.
#[derive(Debug)]
pub struct ControlNetModel {
    encoder: UNetEncoder,
    hint_embedding: HintEmbedding,
    zero_convs: Vec<Conv2d>,
    mid_out: Conv2d,
    union: Option<union::UnionBlocks>,
    config: ControlNetConfig,
    span: tracing::Span,
}

impl ControlNetModel {
    /// Builds the model from diffusers-named weights under `vb`.
    pub fn new(vb: VarBuilder, cfg: &ControlNetConfig) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let enc = &cfg.encoder;
        let ch = &enc.block_out_channels;
        let zero_conv = |vb: VarBuilder, c: usize| conv2d(c, c, 1, Default::default(), vb);

        let encoder = UNetEncoder::new(vb.clone(), enc, "controlnet")?;
        let hint_embedding = HintEmbedding::new(vb.pp("controlnet_cond_embedding"), cfg, ch[0])?;
        let vb_zero = vb.pp("controlnet_down_blocks");
        let zero_convs = encoder
            .skip_channels()
            .iter()
            .enumerate()
            .map(|(k, &c)| zero_conv(vb_zero.pp(k), c))
            .collect::<Result<Vec<_>>>()?;
        let last = ch[ch.len() - 1];
        let mid_out = zero_conv(vb.pp("controlnet_mid_block"), last)?;
        let union = match &cfg.union {
            Some(u) => Some(union::UnionBlocks::new(
                vb.clone(),
                u,
                ch[0],
                enc.time_embed_dim(),
            )?),
            None => None,
        };
        Ok(Self {
            encoder,
            hint_embedding,
            zero_convs,
            mid_out,
            union,
            config: cfg.clone(),
            span: tracing::trace_span!("controlnet"),
        })
    }

    /// The architecture this model was built with.
    pub fn config(&self) -> &ControlNetConfig {
        &self.config
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.encoder.dtype()
    }

    /// Runs the ControlNet on one denoiser input.
    ///
    /// - `xs`: [B, C, h, w], the same (c_in-scaled) latent the UNet gets.
    /// - `timesteps`: `[B]` f32, the UNet's timesteps.
    /// - `context`: [B, N, context_dim] (ComfyUI: the cond's `crossattn_controlnet` if set, else
    ///   its `c_crossattn`).
    /// - `y`: [B, adm_in_channels] for SDXL, `None` otherwise.
    /// - `hint`: [1 or a divisor of B, hint_channels, 8h, 8w], RGB in [0, 1] (see
    ///   [`apply::prepare_hint`]); a smaller batch is repeated, as ComfyUI's
    ///   `broadcast_image_to` does.
    ///
    /// Returns unscaled residuals in `xs`'s dtype: `down` has [`ControlNetConfig::num_down_residuals`]
    /// tensors shaped like the UNet's skips, `mid` is shaped like the mid block's output.
    ///
    /// A union ControlNet runs as with no control type set ("auto"); see [`Self::forward_typed`].
    pub fn forward(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
        hint: &Tensor,
    ) -> Result<ControlResiduals> {
        self.forward_typed(xs, timesteps, context, y, hint, None)
    }

    /// Whether this is a union (ControlNet++) ControlNet.
    pub fn is_union(&self) -> bool {
        self.union.is_some()
    }

    /// [`Self::forward`] with a union control type (an index into
    /// [`union::UNION_CONTROL_TYPES`]); `None` is ComfyUI's "auto". Plain ControlNets ignore the
    /// type, as ComfyUI's do; a union ControlNet refuses a type beyond those it was trained with.
    pub fn forward_typed(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
        hint: &Tensor,
        control_type: Option<usize>,
    ) -> Result<ControlResiduals> {
        let _enter = self.span.enter();
        let in_dtype = xs.dtype();
        let dtype = self.dtype();
        let (batch, _, h, w) = xs.dims4()?;
        let t = self.encoder.timesteps(timesteps, batch)?;
        let (hint_batch, hint_c, hint_h, hint_w) = hint.dims4()?;
        let f = self.config.hint_downscale();
        if hint_c != self.config.hint_channels || hint_h != h * f || hint_w != w * f {
            candle_core::bail!(
                "controlnet hint is {hint_c}x{hint_h}x{hint_w}, expected {}x{}x{} for a {h}x{w} \
                 latent",
                self.config.hint_channels,
                h * f,
                w * f
            );
        }
        if hint_batch == 0 || batch % hint_batch != 0 {
            candle_core::bail!(
                "controlnet hint batch {hint_batch} does not divide the batch {batch}"
            );
        }
        let xs = xs.to_dtype(dtype)?;
        let context = context.to_dtype(dtype)?;

        let control_type_emb = match &self.union {
            Some(u) => Some(u.type_embedding(control_type, dtype)?),
            None => None,
        };
        let emb = self.encoder.embedding(&t, control_type_emb.as_ref(), y)?;

        // The hint is embedded once per distinct image, then repeated over the batch.
        let guided = self.hint_embedding.forward(&hint.to_dtype(dtype)?)?;
        // Per hint item, so repeating over the batch afterwards gives the same result.
        let guided = match (&self.union, control_type) {
            (Some(u), Some(t)) => u.merge(&guided, t)?,
            _ => guided,
        };
        let guided = if hint_batch == batch || hint_batch == 1 {
            guided
        } else {
            Tensor::cat(&vec![&guided; batch / hint_batch], 0)?
        };
        let mut down = Vec::with_capacity(self.zero_convs.len());
        let h = self.encoder.down(&xs, &emb, &context, |k, h| {
            // The hint enters after conv_in, before the first skip.
            let h = if k == 0 { h.broadcast_add(&guided)? } else { h };
            let zero = self.zero_convs.get(k).ok_or_else(|| {
                candle_core::Error::Msg("controlnet zero conv bookkeeping".into())
            })?;
            down.push(zero.forward(&h)?.to_dtype(in_dtype)?);
            Ok(h)
        })?;
        let h = self.encoder.mid(&h, &emb, &context)?;
        let mid = self.mid_out.forward(&h)?.to_dtype(in_dtype)?;
        Ok(ControlResiduals { down, mid })
    }
}
