//! Weft's own `UNet2DConditionModel` (SD1.x, SD2.x, SDXL base and refiner) in diffusers layout.
//!
//! The weight tree is diffusers' (`down_blocks.0.resnets.0.conv1.weight`, ...). LDM single-file
//! checkpoints are renamed at the loading boundary (`crate::load`), never here.
//!
//! The encoder half (embeddings, `conv_in`, down blocks, mid block) is `encoder::UNetEncoder`,
//! which the ControlNet builds on too; this file adds the up path.

pub mod blocks;
pub(crate) mod encoder;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::diffusion::patches::UNetPatches;
use crate::ops::conv::Conv2d;
use crate::ops::norm::{group_norm, GroupNorm};

use crate::unet::blocks::{
    conv_same, sinusoidal_embedding, MiddlePatches, ResnetBlock2D, SelfAttentionHooks,
    Transformer2D, Upsample2D,
};
use crate::unet::encoder::{resnet, transformer, UNetEncoder};

/// How attention heads are chosen per level.
#[derive(Debug, Clone, PartialEq)]
pub enum AttentionHeads {
    /// A fixed number of heads per level (SD1.x: 8 everywhere). This is what diffusers' config
    /// field `attention_head_dim` really holds: diffusers uses it as the head *count*.
    PerLevel(Vec<usize>),
    /// A fixed head width; heads = channels / width (LDM `num_head_channels`, 64 for SD2/XL).
    HeadDim(usize),
}

/// Architecture of a [`UNet2DConditionModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// Channels of the latent input (4; 9 for inpainting models).
    pub in_channels: usize,
    /// Channels of the prediction (4).
    pub out_channels: usize,
    /// Output channels per level (diffusers `block_out_channels`).
    pub block_out_channels: Vec<usize>,
    /// Resnets per down level (up levels have one more).
    pub layers_per_block: usize,
    /// Transformer blocks per level; 0 = no attention at that level.
    pub transformer_depth: Vec<usize>,
    /// Transformer blocks of the mid block's attention.
    pub mid_transformer_depth: usize,
    /// How many attention heads each level uses.
    pub heads: AttentionHeads,
    /// Cross-attention context width (768 SD1, 1024 SD2, 2048 SDXL, 1280 refiner).
    pub context_dim: usize,
    /// Linear (SD2/XL) or 1x1 conv (SD1) projection in and out of each transformer.
    pub use_linear_projection: bool,
    /// Width of the `y` vector fed to `add_embedding` (SDXL 2816, refiner 2560); `None` for SD1/2.
    pub adm_in_channels: Option<usize>,
    /// Groups of every GroupNorm (32).
    pub norm_num_groups: usize,
    /// Epsilon of every GroupNorm (`1e-5`).
    pub norm_eps: f64,
}

impl UNetConfig {
    /// Stable Diffusion 1.x.
    pub fn sd15() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            transformer_depth: vec![1, 1, 1, 0],
            mid_transformer_depth: 1,
            heads: AttentionHeads::PerLevel(vec![8, 8, 8, 8]),
            context_dim: 768,
            use_linear_projection: false,
            adm_in_channels: None,
            norm_num_groups: 32,
            norm_eps: 1e-5,
        }
    }

    /// Stable Diffusion 2.x (512 base and 768-v share the architecture). diffusers writes
    /// `attention_head_dim: [5, 10, 20, 20]`, which it uses as head counts: 320/5 = 64, so every
    /// head is 64 wide, the same as LDM's `num_head_channels: 64`.
    pub fn sd21() -> Self {
        Self {
            context_dim: 1024,
            use_linear_projection: true,
            heads: AttentionHeads::HeadDim(64),
            ..Self::sd15()
        }
    }

    /// SDXL base: 3 levels, no attention on the first, transformer depth [0, 2, 10] (mid 10),
    /// `add_embedding` from 2816 = pooled 1280 + 6 x 256 size embeddings.
    pub fn sdxl_base() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280],
            layers_per_block: 2,
            transformer_depth: vec![0, 2, 10],
            mid_transformer_depth: 10,
            heads: AttentionHeads::HeadDim(64),
            context_dim: 2048,
            use_linear_projection: true,
            adm_in_channels: Some(2816),
            norm_num_groups: 32,
            norm_eps: 1e-5,
        }
    }

    /// SDXL refiner: 384 channels x [1, 2, 4, 4], attention depth 4 on the two middle levels and
    /// the mid block, context 1280 (bigG only), `add_embedding` from 2560 = pooled 1280 +
    /// 5 x 256 (original size, crop, aesthetic score).
    pub fn sdxl_refiner() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![384, 768, 1536, 1536],
            layers_per_block: 2,
            transformer_depth: vec![0, 4, 4, 0],
            mid_transformer_depth: 4,
            heads: AttentionHeads::HeadDim(64),
            context_dim: 1280,
            use_linear_projection: true,
            adm_in_channels: Some(2560),
            norm_num_groups: 32,
            norm_eps: 1e-5,
        }
    }

    /// A tiny SD1-shaped UNet for the crate's tests: 32/64/64 channels, context 48.
    #[cfg(test)]
    pub(crate) fn tiny_sd1() -> Self {
        Self {
            block_out_channels: vec![32, 64, 64],
            transformer_depth: vec![1, 1, 0],
            heads: AttentionHeads::PerLevel(vec![8, 8, 8]),
            context_dim: 48,
            ..Self::sd15()
        }
    }

    /// Heads of the attention at `level` with `channels` channels.
    pub fn heads_at(&self, level: usize, channels: usize) -> usize {
        match &self.heads {
            AttentionHeads::PerLevel(v) => v.get(level).copied().or(v.last().copied()).unwrap_or(1),
            AttentionHeads::HeadDim(d) => (channels / (*d).max(1)).max(1),
        }
    }

    /// Time embedding width (4 x the first level's channels).
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels.first().copied().unwrap_or(0) * 4
    }

    /// Checks the invariants the model builder relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return Err("unet config has no levels".into());
        }
        if self.transformer_depth.len() != levels {
            return Err(format!(
                "unet config has {} transformer depths for {levels} levels",
                self.transformer_depth.len()
            ));
        }
        if let AttentionHeads::PerLevel(v) = &self.heads {
            if v.is_empty() {
                return Err("unet config has an empty head list".into());
            }
        }
        if self.layers_per_block == 0 || self.norm_num_groups == 0 {
            return Err(
                "unet config needs at least one resnet per level and one norm group".into(),
            );
        }
        for &c in &self.block_out_channels {
            if c == 0 || c % self.norm_num_groups != 0 {
                return Err(format!(
                    "{c} channels do not split into {} groups",
                    self.norm_num_groups
                ));
            }
        }
        Ok(())
    }
}

/// ControlNet residuals in diffusers order: `down[0]` is added to the `conv_in` output skip, then
/// one per resnet/attention pair and downsampler; `mid` is added after the mid block.
#[derive(Debug, Clone)]
pub struct ControlResiduals {
    /// One `[B, C, H, W]` per encoder skip, shaped like that skip.
    pub down: Vec<Tensor>,
    /// `[B, C, H, W]` shaped like the mid block's output.
    pub mid: Tensor,
}

impl ControlResiduals {
    /// The sum of two ControlNets' residuals, in `self`'s dtypes.
    pub fn sum(&self, other: &ControlResiduals) -> Result<ControlResiduals> {
        if self.down.len() != other.down.len() {
            candle_core::bail!(
                "cannot combine controls with {} and {} down residuals",
                self.down.len(),
                other.down.len()
            );
        }
        let down = self
            .down
            .iter()
            .zip(&other.down)
            .map(|(a, b)| a + b.to_dtype(a.dtype())?)
            .collect::<Result<Vec<_>>>()?;
        let mid = (&self.mid + other.mid.to_dtype(self.mid.dtype())?)?;
        Ok(ControlResiduals { down, mid })
    }
}

/// T2I-Adapter features that enter the UNet's encoder (ComfyUI's `input` and `middle` controls):
/// `input[k]`, when present, is added to the hidden state right after skip `k` is produced
/// (diffusers skip order: 0 = conv_in, then each resnet/attention pair and downsampler), before it
/// is kept as a skip and fed to the next block; `mid` is added after the mid block.
#[derive(Debug, Clone)]
pub struct EncoderAdditions {
    /// One slot per encoder skip (or none at all), each `[B, C, H, W]` like its skip; `None`
    /// where nothing is added.
    pub input: Vec<Option<Tensor>>,
    /// Added to the mid block's output; `None` when nothing is.
    pub mid: Option<Tensor>,
}

impl EncoderAdditions {
    /// Every addition times `strength`.
    pub fn scaled(&self, strength: f64) -> Result<Self> {
        let scale = |t: &Tensor| t.affine(strength, 0.0);
        Ok(Self {
            input: self
                .input
                .iter()
                .map(|t| t.as_ref().map(scale).transpose())
                .collect::<Result<_>>()?,
            mid: self.mid.as_ref().map(scale).transpose()?,
        })
    }

    /// The sum of two adapters' additions, slot by slot (ComfyUI's `control_merge`).
    pub fn sum(&self, other: &EncoderAdditions) -> Result<EncoderAdditions> {
        fn add(a: Option<&Tensor>, b: Option<&Tensor>) -> Result<Option<Tensor>> {
            Ok(match (a, b) {
                (Some(a), Some(b)) => Some((a + b.to_dtype(a.dtype())?)?),
                (a, b) => a.or(b).cloned(),
            })
        }
        if self.input.len() != other.input.len() {
            candle_core::bail!(
                "cannot combine adapters with {} and {} input slots",
                self.input.len(),
                other.input.len()
            );
        }
        let input = self
            .input
            .iter()
            .zip(&other.input)
            .map(|(a, b)| add(a.as_ref(), b.as_ref()))
            .collect::<Result<_>>()?;
        let mid = add(self.mid.as_ref(), other.mid.as_ref())?;
        Ok(EncoderAdditions { input, mid })
    }
}

/// Everything the controls on one conditioning add to a UNet evaluation: ControlNet residuals on
/// the skips and after the mid block, T2I-Adapter additions inside the encoder. Several controls
/// add up ([`UNetControl::sum`]).
#[derive(Debug, Clone, Default)]
pub struct UNetControl {
    /// ControlNet residuals; `None` when no ControlNet is active.
    pub residuals: Option<ControlResiduals>,
    /// T2I-Adapter additions; `None` when no adapter is active.
    pub encoder: Option<EncoderAdditions>,
}

impl UNetControl {
    /// Both controls at once: each part is the sum of the parts present.
    pub fn sum(&self, other: &UNetControl) -> Result<UNetControl> {
        let residuals = match (&self.residuals, &other.residuals) {
            (Some(a), Some(b)) => Some(a.sum(b)?),
            (a, b) => a.as_ref().or(b.as_ref()).cloned(),
        };
        let encoder = match (&self.encoder, &other.encoder) {
            (Some(a), Some(b)) => Some(a.sum(b)?),
            (a, b) => a.as_ref().or(b.as_ref()).cloned(),
        };
        Ok(UNetControl { residuals, encoder })
    }
}

#[derive(Debug)]
pub(crate) struct UpLevel {
    pub(crate) resnets: Vec<ResnetBlock2D>,
    pub(crate) attentions: Vec<Transformer2D>,
    pub(crate) upsampler: Option<Upsample2D>,
    pub(crate) span: tracing::Span,
}

/// The denoising UNet of SD1.x/SD2.x/SDXL: the encoder half (embeddings, `conv_in`, down blocks,
/// mid block; shared with the ControlNet, see `unet/encoder.rs`), then the up path over its
/// skips.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    pub(crate) encoder: UNetEncoder,
    pub(crate) up: Vec<UpLevel>,
    pub(crate) conv_norm_out: GroupNorm,
    pub(crate) conv_out: Conv2d,
    config: UNetConfig,
    span: tracing::Span,
}

impl UNet2DConditionModel {
    /// Builds the model from diffusers-named weights under `vb`.
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let ch = &cfg.block_out_channels;
        let levels = ch.len();
        let encoder = UNetEncoder::new(vb.clone(), cfg, "unet")?;

        // Channels of every skip, in push order, so the up path knows what it concatenates.
        let mut skips = encoder.skip_channels().to_vec();
        let mut up = Vec::with_capacity(levels);
        let vb_up = vb.pp("up_blocks");
        let mut prev = ch[levels - 1];
        for i in 0..levels {
            let level = levels - 1 - i;
            let out = ch[level];
            let depth = cfg.transformer_depth[level];
            let vb_l = vb_up.pp(i);
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..=cfg.layers_per_block {
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("unet skip bookkeeping".into()))?;
                let input = if j == 0 { prev } else { out };
                resnets.push(resnet(cfg, vb_l.pp("resnets").pp(j), input + skip, out)?);
                if depth > 0 {
                    let vb_a = vb_l.pp("attentions").pp(j);
                    attentions.push(transformer(cfg, vb_a, level, out, depth)?);
                }
            }
            let upsampler = if i + 1 < levels {
                Some(Upsample2D::new(vb_l.pp("upsamplers").pp(0), out)?)
            } else {
                None
            };
            prev = out;
            let span = tracing::trace_span!("up_block", level = i);
            up.push(UpLevel {
                resnets,
                attentions,
                upsampler,
                span,
            });
        }

        let groups = cfg.norm_num_groups;
        let conv_norm_out = group_norm(groups, ch[0], cfg.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = conv_same(ch[0], cfg.out_channels, 3, vb.pp("conv_out"))?;
        Ok(Self {
            encoder,
            up,
            conv_norm_out,
            conv_out,
            config: cfg.clone(),
            span: tracing::trace_span!("unet"),
        })
    }

    /// The architecture this model was built with.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The dtype it computes in: f32 on the CPU, the weights' on a GPU.
    pub fn dtype(&self) -> DType {
        self.encoder.dtype()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.encoder.device()
    }

    /// Number of ControlNet down residuals this UNet takes (12 for SD1.5, 9 for SDXL).
    pub fn num_skips(&self) -> usize {
        self.encoder.skip_channels().len()
    }

    /// One denoiser evaluation.
    ///
    /// - `xs`: [B, C_in, H, W] latents (any float dtype; computed in the model dtype and returned
    ///   in `xs`'s dtype).
    /// - `timesteps`: `[B]` f32 (discrete timestep values, fractional allowed); the sinusoidal
    ///   embedding is computed in f32 even for f16 models.
    /// - `context`: [B, N, context_dim].
    /// - `y`: [B, adm_in_channels] for SDXL (see [`sdxl_adm`]); must be `None` for SD1/2.
    /// - `control`: ControlNet residuals, already scaled by the strength.
    ///
    /// Returns [B, C_out, H, W].
    pub fn forward(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
        control: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        let control = UNetControl {
            residuals: control.cloned(),
            encoder: None,
        };
        self.forward_controlled(xs, timesteps, context, y, &control)
    }

    /// [`Self::forward`] with every kind of control: ControlNet residuals added to the skips and
    /// after the mid block, and T2I-Adapter additions inside the encoder (`control.encoder.input`
    /// has [`Self::num_skips`] entries, each `None` or shaped like that skip; see
    /// [`EncoderAdditions`]), all already scaled by their strengths.
    pub fn forward_controlled(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
        control: &UNetControl,
    ) -> Result<Tensor> {
        let none = UNetPatches::default();
        self.forward_patched(xs, timesteps, context, y, control, &none, 0.0)
    }

    /// [`Self::forward_controlled`] with a model's UNet patches (FreeU's output-block patch,
    /// PatchModelAddDownscale's input-block one) applied where ComfyUI's `openaimodel.py` applies
    /// them; `sigma` is the step's noise level, which some patches depend on.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_patched(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
        control: &UNetControl,
        patches: &UNetPatches,
        sigma: f64,
    ) -> Result<Tensor> {
        let (input, mid) = match &control.encoder {
            Some(e) => (e.input.as_slice(), e.mid.as_ref()),
            None => (&[][..], None),
        };
        let control = control.residuals.as_ref();
        let _enter = self.span.enter();
        if !input.is_empty() && input.len() != self.num_skips() {
            candle_core::bail!(
                "adapter gave {} input residuals, this unet has {} input blocks",
                input.len(),
                self.num_skips()
            );
        }
        let in_dtype = xs.dtype();
        let dtype = self.dtype();
        let (batch, _, latent_h, latent_w) = xs.dims4()?;
        let hooks = SelfAttentionHooks {
            replace: [None, None],
            patches: &patches.self_attention,
            cross_patches: &patches.cross_attention,
            latent_hw: (latent_h, latent_w),
            middle: MiddlePatches {
                patches: &patches.middle,
                transformer_index: 0,
            },
        };
        let t = self.encoder.timesteps(timesteps, batch)?;
        let xs = xs.to_dtype(dtype)?;
        let context = context.to_dtype(dtype)?;
        let emb = self.encoder.embedding(&t, None, y)?;

        let mut skips = Vec::with_capacity(self.num_skips());
        let mut h = self
            .encoder
            .down_with(&xs, &emb, &context, &hooks, |k, h| {
                let mut h = match input.get(k) {
                    Some(Some(r)) => (h + r.to_dtype(dtype)?)?,
                    _ => h,
                };
                for patch in &patches.input_block {
                    h = patch.patch(h, k, sigma)?;
                }
                skips.push(h.clone());
                for patch in &patches.input_block_after_skip {
                    h = patch.patch(h, k, sigma)?;
                }
                Ok(h)
            })?;

        if let Some(control) = control {
            if control.down.len() != skips.len() {
                candle_core::bail!(
                    "controlnet gave {} down residuals, this unet has {} skips",
                    control.down.len(),
                    skips.len()
                );
            }
            for (skip, residual) in skips.iter_mut().zip(control.down.iter()) {
                *skip = (&*skip + residual.to_dtype(dtype)?)?;
            }
        }

        let mid_attention = patches.mid_self_attention.as_deref();
        let first = patches
            .mid_first_self_attention
            .as_deref()
            .or(mid_attention);
        // ComfyUI's `transformer_index`: the down blocks' transformers, the mid block's, then the
        // up blocks'.
        let mut transformer_index = self.encoder.down_transformers();
        let mid_hooks = SelfAttentionHooks {
            replace: [first, mid_attention],
            middle: MiddlePatches {
                transformer_index,
                ..hooks.middle
            },
            ..hooks
        };
        h = self.encoder.mid_with(&h, &emb, &context, &mid_hooks)?;
        if let Some(mid) = mid {
            h = (h + mid.to_dtype(dtype)?)?;
        }
        if let Some(control) = control {
            h = (h + control.mid.to_dtype(dtype)?)?;
        }

        for level in &self.up {
            let _enter = level.span.enter();
            for (j, resnet) in level.resnets.iter().enumerate() {
                let mut skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("unet skip bookkeeping".into()))?;
                for patch in &patches.output_block {
                    (h, skip) = patch.patch(h, skip)?;
                }
                h = Tensor::cat(&[&h, &skip], 1)?;
                h = resnet.forward(&h, Some(&emb))?;
                if let Some(attn) = level.attentions.get(j) {
                    transformer_index += 1;
                    let hooks = SelfAttentionHooks {
                        middle: MiddlePatches {
                            transformer_index,
                            ..hooks.middle
                        },
                        ..hooks
                    };
                    h = attn.forward_with(&h, &context, &hooks)?;
                }
            }
            if let Some(upsampler) = &level.upsampler {
                // Upsample to the size of the skip it meets next, which also covers latents whose
                // size is not a multiple of 2^levels (diffusers' `upsample_size`).
                let (_, _, sh, sw) = skips
                    .last()
                    .ok_or_else(|| candle_core::Error::Msg("unet skip bookkeeping".into()))?
                    .dims4()?;
                h = upsampler.forward(&h, sh, sw)?;
            }
        }

        let h = self.conv_norm_out.forward_silu(&h)?;
        self.conv_out.forward(&h)?.to_dtype(in_dtype)
    }
}

/// SDXL's `y` vector: `[pooled, E(v_0), E(v_1), ...]` where E is the 256-wide sinusoidal
/// embedding (computed in f32) of each size value, as diffusers' `add_time_proj`.
///
/// - base: `values` = [orig_h, orig_w, crop_top, crop_left, target_h, target_w] (2816 wide)
/// - refiner: `values` = [orig_h, orig_w, crop_top, crop_left, aesthetic_score] (2560 wide)
///
/// `pooled`: [B, P]; `values`: one row of size values per batch item. Returns [B, P + 256 n] f32.
pub fn sdxl_adm(pooled: &Tensor, values: &[Vec<f32>]) -> Result<Tensor> {
    let (batch, _) = pooled.dims2()?;
    if values.len() != batch {
        candle_core::bail!(
            "sdxl adm got {} size rows for a batch of {batch}",
            values.len()
        );
    }
    let n = values.first().map(|v| v.len()).unwrap_or(0);
    if values.iter().any(|v| v.len() != n) {
        candle_core::bail!("sdxl adm size rows have different lengths");
    }
    let flat: Vec<f32> = values.iter().flatten().copied().collect();
    let emb = sinusoidal_embedding(&flat, 256, pooled.device())?.reshape((batch, n * 256))?;
    Tensor::cat(&[&pooled.to_dtype(DType::F32)?, &emb], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bf16 weights on the CPU (bf16 matmuls through `ops::gemm_bf16` where the CPU has
    /// AVX512_BF16, f32 arithmetic on widened weights otherwise) stay near the f32 model: a
    /// tiny SD1-shaped UNet with the same synthetic weights, at CFG batch 2.
    #[test]
    fn bf16_weights_stay_near_the_f32_model() {
        crate::ops::gemm_bf16::enable_in_this_test();
        use crate::synth::synth_var_builder;
        let config = UNetConfig::tiny_sd1();
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 16, 16), &dev).unwrap();
        let t = Tensor::new(&[999f32, 500.0], &dev).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (2, 7, 48), &dev).unwrap();
        let run = |dtype| {
            let unet = UNet2DConditionModel::new(synth_var_builder(dtype, &dev), &config).unwrap();
            unet.forward(&x, &t, &ctx, None, None).unwrap()
        };
        let (reference, bf16) = (run(DType::F32), run(DType::BF16));
        assert_eq!(bf16.dtype(), DType::F32);
        let diff = (&bf16 - &reference).unwrap().abs().unwrap();
        let max = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
        let mean = diff.mean_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = reference
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!(
            "bf16 vs f32 unet: max abs {max:.3e}, mean abs {mean:.3e} (mean |out| {scale:.3e}), \
             bf16 kernel {}",
            crate::ops::gemm_bf16::available()
        );
        assert!(
            mean < 0.02 * scale && max < 0.2 * scale.max(1.0),
            "{max} {mean} {scale}"
        );
    }

    fn full(v: f32) -> Tensor {
        Tensor::full(v, (1, 1, 2, 2), &Device::Cpu).unwrap()
    }

    fn value(t: &Tensor) -> f32 {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn controls_sum_part_by_part_and_slot_by_slot() {
        let controlnet = UNetControl {
            residuals: Some(ControlResiduals {
                down: vec![full(1.0), full(2.0)],
                mid: full(3.0),
            }),
            encoder: None,
        };
        let adapter = |first: Option<f32>, mid: Option<f32>| UNetControl {
            residuals: None,
            encoder: Some(EncoderAdditions {
                input: vec![first.map(full), None],
                mid: mid.map(full),
            }),
        };
        let sum = controlnet
            .sum(&adapter(Some(0.5), None))
            .unwrap()
            .sum(&adapter(Some(0.25), Some(4.0)))
            .unwrap()
            .sum(&controlnet)
            .unwrap();
        let residuals = sum.residuals.unwrap();
        assert_eq!(value(&residuals.down[1]), 4.0);
        assert_eq!(value(&residuals.mid), 6.0);
        let encoder = sum.encoder.unwrap();
        assert_eq!(value(encoder.input[0].as_ref().unwrap()), 0.75);
        assert!(encoder.input[1].is_none());
        assert_eq!(value(encoder.mid.as_ref().unwrap()), 4.0);
        // Controls for different UNets do not combine.
        let short = UNetControl {
            residuals: None,
            encoder: Some(EncoderAdditions {
                input: vec![None],
                mid: None,
            }),
        };
        assert!(adapter(None, None).sum(&short).is_err());
    }
}
