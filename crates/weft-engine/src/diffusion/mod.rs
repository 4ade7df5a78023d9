//! A diffusion model ready to sample: the UNet with its model sampling and latent format, the
//! conditioning entries ComfyUI attaches to prompts, and the CFG denoiser the samplers call.
//!
//! Follows `comfy/samplers.py` (`calc_cond_batch`, `get_area_and_mult`, `cfg_function`,
//! `KSamplerX0Inpaint`) and `comfy/model_base.py` (`SDXL.encode_adm`, `SDXLRefiner.encode_adm`,
//! `SD21UNCLIP.encode_adm`; the unCLIP part is in `unclip`).

pub mod concat;
pub mod differential;
pub mod downscale;
pub mod freeu;
pub mod guidance;
pub mod hypertile;
pub mod patches;
pub mod sag;
pub mod tome;
pub mod unclip;

use crate::device::{to_compute, to_host};
use std::sync::Arc;

use patches::ModelPatches;

use candle_core::{DType, Device, Result, Tensor};

use crate::load::detect::{ModelFamily, Prediction};
use crate::sampling::model_sampling::{Config as SamplingConfig, ModelSamplingDiscrete};
use crate::sampling::samplers::{Denoised, Denoiser};
use crate::unet::{sdxl_adm, UNet2DConditionModel, UNetControl};

/// How a family's latents look: channels, the VAE scale, and the fast latent→RGB projection used
/// for previews (`comfy/latent_formats.py`).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentFormat {
    /// Latent channels (4 for SD1.x/SD2.x/SDXL).
    pub channels: usize,
    /// Multiplier from VAE latents to the model's latent space (`0.18215` SD1.x, `0.13025` SDXL).
    pub scale_factor: f64,
    /// Per latent channel (rows), its contribution to R, G and B for previews.
    pub rgb_factors: [[f32; 3]; 4],
    /// Added to each RGB value before the preview is mapped from `[-1, 1]` to 0–255.
    pub rgb_bias: [f32; 3],
    /// Per-channel (mean, std) the VAE's latents are standardised with before the scale
    /// (Playground v2.5's `latents_mean`/`latents_std`); `None` for a plain scale.
    pub standardise: Option<([f32; 4], [f32; 4])>,
}

impl LatentFormat {
    /// SD1.x/SD2.x latents (ComfyUI's `SD15`).
    pub fn sd15() -> Self {
        LatentFormat {
            channels: 4,
            scale_factor: 0.18215,
            rgb_factors: [
                [0.3512, 0.2297, 0.3227],
                [0.3250, 0.4974, 0.2350],
                [-0.2829, 0.1762, 0.2721],
                [-0.2120, -0.2616, -0.7177],
            ],
            rgb_bias: [0.0; 3],
            standardise: None,
        }
    }

    /// SDXL latents (ComfyUI's `SDXL`).
    pub fn sdxl() -> Self {
        LatentFormat {
            channels: 4,
            scale_factor: 0.13025,
            rgb_factors: [
                [0.3651, 0.4232, 0.4341],
                [-0.2533, -0.0042, 0.1068],
                [0.1076, 0.1111, -0.0362],
                [-0.3165, -0.2492, -0.2188],
            ],
            rgb_bias: [0.1084, -0.0175, -0.0011],
            standardise: None,
        }
    }

    /// Playground v2.5's SDXL latents (ComfyUI's `SDXL_Playground_2_5`).
    pub fn sdxl_playground_2_5() -> Self {
        LatentFormat {
            channels: 4,
            scale_factor: 0.5,
            rgb_factors: [
                [0.3920, 0.4054, 0.4549],
                [-0.2634, -0.0196, 0.0653],
                [0.0568, 0.1687, -0.0755],
                [-0.3112, -0.2359, -0.2076],
            ],
            rgb_bias: [0.0; 3],
            standardise: Some((
                [-1.6574, 1.886, -1.383, 2.5155],
                [8.4927, 5.9022, 6.5498, 5.2299],
            )),
        }
    }

    /// A VAE latent `[B, C, h, w]` in the model's space (ComfyUI's `process_in`).
    pub fn process_in(&self, latent: &Tensor) -> Result<Tensor> {
        match self.standardise {
            None => latent * self.scale_factor,
            Some((mean, std)) => {
                let (mean, std) = (
                    self.per_channel(&mean, latent)?,
                    self.per_channel(&std, latent)?,
                );
                (latent.broadcast_sub(&mean)? * self.scale_factor)?.broadcast_div(&std)
            }
        }
    }

    /// A sampled latent back in the VAE's space (ComfyUI's `process_out`).
    pub fn process_out(&self, latent: &Tensor) -> Result<Tensor> {
        match self.standardise {
            None => latent / self.scale_factor,
            Some((mean, std)) => {
                let (mean, std) = (
                    self.per_channel(&mean, latent)?,
                    self.per_channel(&std, latent)?,
                );
                (latent.broadcast_mul(&std)? / self.scale_factor)?.broadcast_add(&mean)
            }
        }
    }

    /// `values` as a `[1, C, 1, 1]` tensor like `like`.
    fn per_channel(&self, values: &[f32; 4], like: &Tensor) -> Result<Tensor> {
        Tensor::from_slice(values, (1, 4, 1, 1), like.device())?.to_dtype(like.dtype())
    }

    /// The latent format a model family uses.
    pub fn for_family(family: ModelFamily) -> Self {
        match family {
            ModelFamily::Sd1 | ModelFamily::Sd2 => Self::sd15(),
            ModelFamily::SdxlBase | ModelFamily::SdxlRefiner => Self::sdxl(),
        }
    }

    /// An 8-bit RGB preview of the first latent of a batch, `[B, C, h, w]` → (pixels, w, h).
    pub fn preview_rgb(&self, latent: &Tensor) -> Result<(Vec<u8>, usize, usize)> {
        let first = latent
            .get(0)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let (c, h, w) = first.dims3()?;
        let data: Vec<f32> = first.flatten_all()?.to_vec1()?;
        let mut out = Vec::with_capacity(h * w * 3);
        for p in 0..h * w {
            for rgb in 0..3 {
                let mut v = self.rgb_bias[rgb];
                for ch in 0..c.min(4) {
                    v += data[ch * h * w + p] * self.rgb_factors[ch][rgb];
                }
                out.push((((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8);
            }
        }
        Ok((out, w, h))
    }
}

/// A function from latent to latent (ComfyUI's `LATENT_OPERATION`): applied to samples by a
/// node, or inside CFG through [`DiffusionModel::with_cfg_operation`].
pub trait LatentOperation: std::fmt::Debug + Send + Sync {
    /// The operation applied to `latent` (`[B, C, h, w]`, f32).
    fn apply(&self, latent: &Tensor) -> Result<Tensor>;
}

/// A UNet with everything needed to sample it. Cloning is cheap: the UNet and its weights are
/// shared; a clone differs only in its patches and model sampling (see [`patches`]).
#[derive(Debug, Clone)]
pub struct DiffusionModel {
    /// The denoising network, shared by every patched clone.
    pub unet: Arc<UNet2DConditionModel>,
    /// Which architecture the checkpoint was detected as.
    pub family: ModelFamily,
    /// What the UNet predicts (epsilon or v), which picks the sampling config.
    pub prediction: Prediction,
    /// The sigma schedule and input/output scaling (ComfyUI's `ModelSamplingDiscrete`).
    pub sampling: ModelSamplingDiscrete,
    /// How this family's latents are scaled and previewed.
    pub latent: LatentFormat,
    /// Bytes of weights held, for memory budgets.
    pub bytes: usize,
    /// The UNet's diffusers-named weights (shared with the model), for LoRA patching.
    pub weights: Option<Arc<std::collections::HashMap<String, Tensor>>>,
    /// Sampling-time hooks set by patch nodes (ComfyUI's `model_options`).
    pub patches: ModelPatches,
}

impl DiffusionModel {
    /// Wraps `unet` with the family's latent format and the discrete model sampling for
    /// `prediction`; no weights are kept (see [`DiffusionModel::with_weights`]).
    pub fn new(
        unet: UNet2DConditionModel,
        family: ModelFamily,
        prediction: Prediction,
        bytes: usize,
    ) -> Self {
        let sampling = ModelSamplingDiscrete::new(&match prediction {
            Prediction::Epsilon => SamplingConfig::sd_eps(),
            Prediction::V => SamplingConfig::sd_v(),
        });
        DiffusionModel {
            unet: Arc::new(unet),
            family,
            prediction,
            sampling,
            latent: LatentFormat::for_family(family),
            bytes,
            weights: None,
            patches: ModelPatches::default(),
        }
    }

    /// This model with another UNet and its weights (a LoRA's), keeping the patches and model
    /// sampling, as ComfyUI's patched model keeps its `model_options` under a LoRA.
    pub fn with_unet(
        &self,
        unet: UNet2DConditionModel,
        weights: std::collections::HashMap<String, Tensor>,
    ) -> Self {
        DiffusionModel {
            unet: Arc::new(unet),
            weights: Some(Arc::new(weights)),
            ..self.clone()
        }
    }

    /// The same model with `operation` applied to the guidance before CFG: to `cond − uncond`
    /// (and `uncond` added back) when the negative side is evaluated, else to `cond`.
    pub fn with_cfg_operation(&self, operation: Arc<dyn LatentOperation>) -> DiffusionModel {
        self.patched(|p| p.pre_cfg.push(Arc::new(guidance::CfgOperation(operation))))
    }

    /// Keeps the weights the UNet was built from.
    pub fn with_weights(mut self, weights: std::collections::HashMap<String, Tensor>) -> Self {
        self.weights = Some(Arc::new(weights));
        self
    }

    /// Whether the UNet takes a `y` vector: SDXL's pooled/size vector, or an SD2.1 unCLIP
    /// model's image embedding.
    pub fn uses_adm(&self) -> bool {
        matches!(
            self.family,
            ModelFamily::SdxlBase | ModelFamily::SdxlRefiner
        ) || self.is_unclip()
    }

    /// An SD2.1 unCLIP model: the SD2 family with an adm input (`label_emb`), which takes the
    /// noise-augmented CLIP vision embedding and its level (ComfyUI's `SD21UNCLIP`).
    pub fn is_unclip(&self) -> bool {
        self.family == ModelFamily::Sd2 && self.unet.config().adm_in_channels.is_some()
    }
}

/// Which side of CFG a conditioning list is (the SDXL refiner's aesthetic score depends on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptType {
    /// The prompt CFG steers towards; the SDXL refiner's default aesthetic score is 6.0.
    Positive,
    /// The prompt CFG steers away from; the SDXL refiner's default aesthetic score is 2.5.
    Negative,
}

/// Where a conditioning entry applies, in latent units.
#[derive(Debug, Clone, PartialEq)]
pub enum Area {
    /// `(height, width, y, x)` in latent pixels (ComfyUI stores pixel/8).
    Latent {
        /// Rows covered.
        height: usize,
        /// Columns covered.
        width: usize,
        /// Top row.
        y: usize,
        /// Left column.
        x: usize,
    },
    /// Fractions of the latent (ConditioningSetAreaPercentage).
    Percentage {
        /// Fraction of the latent's height covered.
        height: f64,
        /// Fraction of the latent's width covered.
        width: f64,
        /// Top edge as a fraction of the height.
        y: f64,
        /// Left edge as a fraction of the width.
        x: f64,
    },
}

/// SDXL size conditioning; missing values default as ComfyUI's `encode_adm` does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SizeConditioning {
    /// Original image width in pixels; `None` = the latent width × 8.
    pub width: Option<f32>,
    /// Original image height in pixels; `None` = the latent height × 8.
    pub height: Option<f32>,
    /// Left crop offset in pixels; `None` = 0.
    pub crop_w: Option<f32>,
    /// Top crop offset in pixels; `None` = 0.
    pub crop_h: Option<f32>,
    /// Target width in pixels (SDXL base only); `None` = `width`.
    pub target_width: Option<f32>,
    /// Target height in pixels (SDXL base only); `None` = `height`.
    pub target_height: Option<f32>,
    /// Aesthetic score (SDXL refiner only); `None` = 6.0 positive, 2.5 negative.
    pub aesthetic_score: Option<f32>,
}

/// A control (ControlNet, T2I-Adapter, ...) attached to a conditioning entry.
pub trait ControlHint: Send + Sync + std::fmt::Debug {
    /// What this control adds to the UNet evaluation of `x_in` (already `c_in`-scaled) at `sigma`,
    /// scaled by its strength, or `None` when it is not active at this sigma. `model` is the model
    /// being sampled; `context` and `y` are the entry's, in the UNet's dtype and batch.
    fn control(
        &self,
        x_in: &Tensor,
        timesteps: &Tensor,
        sigma: f64,
        context: &Tensor,
        y: Option<&Tensor>,
        model: &DiffusionModel,
    ) -> Result<Option<UNetControl>>;
}

/// One entry of a CONDITIONING list (`[context, {pooled_output, area, mask, strength, …}]`).
#[derive(Debug, Clone)]
pub struct CondEntry {
    /// `[1, tokens, context_dim]`.
    pub context: Tensor,
    /// `[1, pooled_dim]`, when the encoder has one.
    pub pooled: Option<Tensor>,
    /// Where the entry applies; `None` = the whole latent (ComfyUI's `area`).
    pub area: Option<Area>,
    /// `[1 or B, H, W]` at any resolution; resized to the latent at sampling time.
    pub mask: Option<Tensor>,
    /// Multiplier on `mask` (ComfyUI's `mask_strength`).
    pub mask_strength: f64,
    /// Shrink the area to the mask's non-zero bounding box (ComfyUI's `set_area_to_bounds`).
    pub set_area_to_bounds: bool,
    /// Weight of this entry's prediction where it applies (ComfyUI's `strength`); areas are
    /// feathered over 8 latent pixels at inner edges.
    pub strength: f64,
    /// SDXL size/crop/aesthetic conditioning for the `y` vector.
    pub size: SizeConditioning,
    /// Controls in the order they were applied; what they add is summed.
    pub controls: Vec<Arc<dyn ControlHint>>,
    /// The controls also go to the negative side when it has none (ComfyUI's
    /// `control_apply_to_uncond`, set by the old ControlNetApply; see `share_controls`).
    pub control_apply_to_uncond: bool,
    /// The part of the schedule, as (start, end) fractions, in which the entry counts (ComfyUI's
    /// `start_percent`/`end_percent`, ConditioningSetTimestepRange); None for all of it.
    pub percent_range: Option<(f64, f64)>,
    /// `[B, C, h, w]` VAE latent (unscaled) that inpainting and InstructPix2Pix UNets take as
    /// extra input channels (ComfyUI's `concat_latent_image`; see [`concat`]).
    pub concat_latent_image: Option<Tensor>,
    /// `[B, 1, H, W]` mask for an inpainting UNet's mask channel (ComfyUI's `concat_mask`); the
    /// sampler's noise mask when `None`.
    pub concat_mask: Option<Tensor>,
    /// `[1, tokens, context_dim]` text the ControlNets on this entry attend to instead of
    /// `context` (ComfyUI's `cross_attn_controlnet`, CLIPTextEncodeControlnet).
    pub controlnet_context: Option<Tensor>,
    /// The pooled output encoded with `controlnet_context` (ComfyUI's
    /// `pooled_output_controlnet`); kept with the entry, no SD ControlNet reads it.
    pub controlnet_pooled: Option<Tensor>,
    /// GLIGEN text boxes (ComfyUI's `gligen`): while the entry is evaluated, the UNet runs with
    /// their middle patch too. They also go to the negative side when it has none (see
    /// `share_with_negative`).
    pub gligen: Option<crate::gligen::Grounding>,
    /// unCLIPConditioning's image embeddings in the order applied (ComfyUI's
    /// `unclip_conditioning`): an unCLIP model's `y`, SDXL's pooled output ("revision").
    pub unclip: Vec<unclip::UnclipCond>,
}

impl CondEntry {
    /// An entry covering the whole latent at strength 1 with no mask, controls or size overrides.
    pub fn new(context: Tensor, pooled: Option<Tensor>) -> Self {
        CondEntry {
            context,
            pooled,
            area: None,
            mask: None,
            mask_strength: 1.0,
            set_area_to_bounds: false,
            strength: 1.0,
            size: SizeConditioning::default(),
            controls: Vec::new(),
            control_apply_to_uncond: false,
            percent_range: None,
            concat_latent_image: None,
            concat_mask: None,
            controlnet_context: None,
            controlnet_pooled: None,
            gligen: None,
            unclip: Vec::new(),
        }
    }

    /// Bytes held by the entry's tensors (controls not counted).
    pub fn byte_size(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        [
            &self.pooled,
            &self.mask,
            &self.concat_latent_image,
            &self.concat_mask,
            &self.controlnet_context,
            &self.controlnet_pooled,
        ]
        .into_iter()
        .map(|t| t.as_ref().map_or(0, bytes))
        .sum::<usize>()
            + bytes(&self.context)
            + self.gligen.as_ref().map_or(0, |g| g.byte_size())
            + self
                .unclip
                .iter()
                .map(|u| bytes(&u.image_embeds))
                .sum::<usize>()
    }
}

/// A conditioning entry resolved against a latent: area, multiplier and SDXL vector.
struct PreparedCond {
    context: Tensor,
    y: Option<Tensor>,
    /// (height, width, y, x) in latent pixels.
    area: (usize, usize, usize, usize),
    /// `[B, C, area_h, area_w]` weights.
    mult: Tensor,
    controls: Vec<Arc<dyn ControlHint>>,
    /// (highest, lowest) sigma at which the entry counts: ComfyUI skips it above the first and
    /// below the second (`timestep_start`, `timestep_end`).
    sigmas: Option<(f64, f64)>,
    /// The entry's own inputs for the UNet's extra channels.
    concat: concat::PreparedConcat,
    /// What the entry's ControlNets attend to instead of `context`.
    controlnet_context: Option<Tensor>,
    /// The entry's own UNet patch (its GLIGEN boxes), added to the model's while it is evaluated.
    middle: Option<Arc<dyn patches::MiddlePatch>>,
}

impl PreparedCond {
    /// Whether the entry counts at `sigma` (ComfyUI skips it outside `timestep_start..end`).
    fn active_at(&self, sigma: f64) -> bool {
        self.sigmas
            .is_none_or(|(highest, lowest)| sigma <= highest && sigma >= lowest)
    }
}

/// The CFG denoiser over conditioning lists, with optional inpainting mask.
pub struct CfgDenoiser<'a> {
    model: &'a DiffusionModel,
    positive: Vec<PreparedCond>,
    negative: Vec<PreparedCond>,
    cfg: f64,
    /// Skip the negative side at cfg 1 (ComfyUI's cfg1 optimisation), unless the sampler needs it.
    need_uncond: bool,
    inpaint: Option<Inpaint>,
    /// The run's sigmas, for patches that depend on the whole schedule.
    schedule: Vec<f64>,
    /// How the predictions combine.
    mode: Mode,
    latent_shape: Vec<usize>,
    /// The CFG function's extra conditionings (PerpNeg's empty prompt), prepared.
    extra: Vec<Vec<PreparedCond>>,
    /// The scaled input latent, for inpainting UNets' masked-image channels (ComfyUI's
    /// `latent_image`); zeros when not given.
    latent_image: Option<Tensor>,
    /// The sampler's seed, which unCLIP's noise augmentation draws from.
    seed: u64,
    /// While both sides run as shares of one ComfyUI batch: the token count ComfyUI pads both
    /// text contexts to (the least common multiple, repeating the shorter), which dropout masks
    /// drawn over the context depend on.
    batch_tokens: std::cell::Cell<Option<usize>>,
}

/// How a guider combines predictions (ComfyUI's `CFGGuider` and its subclasses).
#[derive(Debug, Clone, Copy)]
pub enum Guidance<'c> {
    /// `CFGGuider`/`BasicGuider`: the model's CFG with its patches.
    Cfg,
    /// `DualCFGGuider`: `middle` is `cond2`; the denoiser's cfg is `cfg_conds` and `cfg2`
    /// `cfg_cond2_negative`; `nested` is the "nested" style.
    Dual {
        /// The second conditioning (evaluated as a negative prompt).
        middle: &'c [CondEntry],
        /// Scale between `middle` and the negative.
        cfg2: f64,
        /// ComfyUI's "nested" style instead of "regular".
        nested: bool,
    },
    /// `PerpNegGuider`: the negative's part perpendicular to the positive, both relative to the
    /// empty prompt's prediction, is subtracted.
    PerpNeg {
        /// The empty prompt.
        empty: &'c [CondEntry],
        /// Weight of the perpendicular negative.
        neg_scale: f64,
    },
}

enum Mode {
    Cfg,
    Dual {
        middle: Vec<PreparedCond>,
        cfg2: f64,
        nested: bool,
    },
    PerpNeg {
        empty: Vec<PreparedCond>,
        neg_scale: f64,
    },
}

struct Inpaint {
    /// 1 where the sampler may change the latent, `[B, C, h, w]`.
    mask: Tensor,
    latent: Tensor,
    noise: Tensor,
}

impl<'a> CfgDenoiser<'a> {
    /// Prepares conditioning for latents of `latent_shape` (`[B, C, h, w]`); `seed` is the
    /// sampler's (unCLIP embeddings are noised from it, as ComfyUI's `encode_adm`).
    pub fn new(
        model: &'a DiffusionModel,
        positive: &[CondEntry],
        negative: Option<&[CondEntry]>,
        cfg: f64,
        latent_shape: &[usize],
        sampler_needs_uncond: bool,
        seed: u64,
    ) -> Result<Self> {
        let negative = negative.map(|list| share_with_negative(positive, list));
        let prep =
            |list: &[CondEntry], prompt_type| prepare(model, list, latent_shape, prompt_type, seed);
        let positive = prep(positive, PromptType::Positive)?;
        let negative = match negative {
            Some(list) => prep(list.as_slice(), PromptType::Negative)?,
            None => Vec::new(),
        };
        let need_uncond = !negative.is_empty()
            && (sampler_needs_uncond
                || model.patches.disable_cfg1_optimization
                || (cfg - 1.0).abs() > 1e-9);
        let extra = match &model.patches.cfg_function {
            Some(f) => f
                .extra_conds()
                .iter()
                .map(|list| prep(list.as_slice(), PromptType::Negative))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        Ok(CfgDenoiser {
            model,
            positive,
            negative,
            cfg,
            need_uncond,
            inpaint: None,
            schedule: Vec::new(),
            mode: Mode::Cfg,
            extra,
            latent_shape: latent_shape.to_vec(),
            latent_image: None,
            seed,
            batch_tokens: std::cell::Cell::new(None),
        })
    }

    /// Combines the predictions as `guidance` says (DualCFGGuider, PerpNegGuider) instead of
    /// plain CFG.
    pub fn with_guidance(mut self, guidance: Guidance<'_>) -> Result<Self> {
        let prep = |list: &[CondEntry]| {
            prepare(
                self.model,
                list,
                &self.latent_shape,
                PromptType::Negative,
                self.seed,
            )
        };
        self.mode = match guidance {
            Guidance::Cfg => Mode::Cfg,
            Guidance::Dual {
                middle,
                cfg2,
                nested,
            } => Mode::Dual {
                middle: prep(middle)?,
                cfg2,
                nested,
            },
            Guidance::PerpNeg { empty, neg_scale } => Mode::PerpNeg {
                empty: prep(empty)?,
                neg_scale,
            },
        };
        Ok(self)
    }

    /// Tells the denoiser the run's sigmas (DifferentialDiffusion's mask depends on them).
    pub fn with_schedule(mut self, sigmas: &[f32]) -> Self {
        self.schedule = sigmas.iter().map(|&s| s as f64).collect();
        self
    }

    /// Tells the denoiser the scaled input latent, which an inpainting UNet sees through its
    /// masked-image channels when no conditioning entry brings its own image.
    pub fn with_latent_image(mut self, latent_image: Tensor) -> Self {
        self.latent_image = Some(latent_image);
        self
    }

    /// Keeps the latent outside `mask` (1 = resample) fixed, as ComfyUI's `KSamplerX0Inpaint`.
    /// `mask`: `[B or 1, 1 or C, h, w]` already at latent size; `latent` the scaled input latent.
    pub fn with_inpaint(mut self, mask: Tensor, latent: Tensor, noise: Tensor) -> Result<Self> {
        let mask = mask.broadcast_as(latent.shape())?.contiguous()?;
        self.inpaint = Some(Inpaint {
            mask,
            latent,
            noise,
        });
        Ok(self)
    }

    /// The combined prediction and the negative one (for CFG++ samplers) at `(x, sigma)`.
    fn guide(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Option<Tensor>)> {
        let patches = &self.model.patches;
        let sampling = &self.model.sampling;
        let eval_positive = |change: &dyn Fn(&mut patches::UNetPatches)| {
            let mut unet = patches.unet.clone();
            change(&mut unet);
            self.eval_list_with(&self.positive, x, sigma, &unet)
        };
        // A re-run of the negative conditioning counts as a positive side, as in ComfyUI.
        let eval_negative_at =
            |x_at: &Tensor| self.eval_list_with(&self.negative, x_at, sigma, &patches.unet);
        let reruns = patches::Reruns {
            positive: Some(&eval_positive),
            negative_at: Some(&eval_negative_at),
        };
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
        // A conditioning ComfyUI leaves out predicts zeros (calc_cond_batch's empty sum).
        let eval_or_zeros = |list: &[PreparedCond], skip: bool| -> Result<Tensor> {
            if skip {
                x.zeros_like()
            } else {
                self.eval_list(list, x, sigma)
            }
        };
        let negative_or_zeros = |skip: bool| -> Result<Tensor> {
            if skip {
                x.zeros_like()
            } else {
                self.eval_negative(x, sigma)
            }
        };
        match &self.mode {
            Mode::Cfg => {
                let (cond, uncond) = if self.need_uncond {
                    let (cond, uncond) = self.eval_both_sides(x, sigma)?;
                    (cond, Some(uncond))
                } else {
                    let cond = self.eval_list(&self.positive, x, sigma)?;
                    // ComfyUI still calls a CFG function that evaluates its own conditionings,
                    // with the skipped negative predicting zeros.
                    let uncond = (!self.extra.is_empty())
                        .then(|| x.zeros_like())
                        .transpose()?;
                    (cond, uncond)
                };
                let extra = self
                    .extra
                    .iter()
                    .map(|list| self.eval_list(list, x, sigma))
                    .collect::<Result<Vec<_>>>()?;
                patches.combine(x, sigma, self.cfg, sampling, cond, uncond, &extra, reruns)
            }
            Mode::Dual {
                middle,
                cfg2,
                nested,
            } => {
                let (cfg1, cfg2) = (self.cfg, *cfg2);
                let skip_negative = !nested && near(cfg2, 1.0);
                let skip_middle = skip_negative && near(cfg1, 1.0);
                let negative = negative_or_zeros(skip_negative)?;
                let middle = eval_or_zeros(middle, skip_middle)?;
                let positive = self.eval_list(&self.positive, x, sigma)?;
                if *nested {
                    let text = patches.cfg_and_post(
                        x,
                        sigma,
                        cfg1,
                        sampling,
                        (&positive, Some(&middle)),
                        &[],
                        reruns,
                    )?;
                    let result = (&negative + ((text - &negative)? * cfg2)?)?;
                    Ok((result, Some(negative)))
                } else {
                    let base = patches.cfg_and_post(
                        x,
                        sigma,
                        cfg2,
                        sampling,
                        (&middle, Some(&negative)),
                        &[],
                        reruns,
                    )?;
                    let result = (base + ((&positive - &middle)? * cfg1)?)?;
                    Ok((result, Some(negative)))
                }
            }
            Mode::PerpNeg { empty, neg_scale } => {
                let skip_negative = near(*neg_scale, 0.0);
                let skip_empty = skip_negative && near(self.cfg, 1.0);
                let positive = self.eval_list(&self.positive, x, sigma)?;
                let negative = negative_or_zeros(skip_negative)?;
                let empty = eval_or_zeros(empty, skip_empty)?;
                let (positive, negative) = if skip_negative {
                    (positive, negative)
                } else {
                    let (p, n) = patches.pre_cfg_all(
                        x,
                        sigma,
                        self.cfg,
                        sampling,
                        positive,
                        Some(negative),
                    )?;
                    let n = n.ok_or_else(|| {
                        candle_core::Error::Msg("a pre-CFG hook dropped the negative".into())
                    })?;
                    (p, n)
                };
                let mut result =
                    guidance::perp_neg(&positive, &negative, &empty, *neg_scale, self.cfg)?;
                let args = patches::CfgArgs {
                    x,
                    sigma,
                    cond_scale: self.cfg,
                    cond: &positive,
                    uncond: Some(&negative),
                    sampling,
                    extra: &[],
                    eval_positive: Some(&eval_positive),
                    eval_negative_at: Some(&eval_negative_at),
                };
                for hook in &patches.post_cfg {
                    result = hook.post_cfg(&args, result)?;
                }
                Ok((result, Some(negative)))
            }
        }
    }

    /// The positive and negative predictions, with the random draws of the UNet's patches
    /// (HyperTile, ToMe, hypernetwork dropout) as ComfyUI's: where it batches the two sides
    /// (negative first) Weft does too when the UNet is unpatched
    /// ([`Self::eval_both_in_one_call`]); with patches, which draw once for ComfyUI's batch,
    /// Weft runs two calls, rewinds the draws between them and tells each call its share;
    /// where ComfyUI does not batch, it runs the negative side first, and so does Weft.
    fn eval_both_sides(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Tensor)> {
        let unet = &self.model.patches.unet;
        if !self.batched_by_comfy(sigma) {
            let uncond = self.eval_negative(x, sigma)?;
            return Ok((self.eval_list(&self.positive, x, sigma)?, uncond));
        }
        if let Some(both) = self.eval_both_in_one_call(x, sigma)? {
            return Ok(both);
        }
        let states = unet.draw_states();
        self.batch_tokens.set(self.batch_token_count(sigma));
        unet.set_batch_slot(patches::BatchSlot { index: 1, count: 2 });
        let cond = self.eval_list(&self.positive, x, sigma);
        unet.restore_draw_states(&states);
        unet.set_batch_slot(patches::BatchSlot { index: 0, count: 2 });
        let uncond = self.eval_negative(x, sigma);
        unet.set_batch_slot(patches::BatchSlot::ALONE);
        self.batch_tokens.set(None);
        Ok((cond?, uncond?))
    }

    /// Whether ComfyUI evaluates the positive and negative sides at `sigma` as one batched UNet
    /// call (`calc_cond_batch` concatenates entries of one area with the same controls and
    /// patches): one active entry a side, alike but for the text and mask. Weft runs them as
    /// one call too unless something on the UNet differs or draws random numbers per call
    /// (HyperTile), in which case it runs two whose draws add up to the one.
    fn batched_by_comfy(&self, sigma: f64) -> bool {
        let active = |list: &[PreparedCond]| -> Vec<usize> {
            (0..list.len())
                .filter(|&i| list[i].active_at(sigma))
                .collect()
        };
        let (pos, neg) = (active(&self.positive), active(&self.negative));
        let (&[p], &[n]) = (pos.as_slice(), neg.as_slice()) else {
            return false;
        };
        let (p, n) = (&self.positive[p], &self.negative[n]);
        // `CONDCrossAttn.can_concat`: contexts of other lengths batch when the shorter repeats
        // at most 4 times into their least common multiple.
        let (tp, tn) = (p.context.dim(1).unwrap_or(0), n.context.dim(1).unwrap_or(0));
        if tp != tn && (tp.min(tn) == 0 || lcm(tp, tn) / tp.min(tn) > 4) {
            return false;
        }
        let same_controls = p.controls.len() == n.controls.len()
            && p.controls
                .iter()
                .zip(&n.controls)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        let same_middle = match (&p.middle, &n.middle) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        p.area == n.area && same_controls && same_middle
    }

    /// The token count ComfyUI's batch of the two sides pads their contexts to, where it differs
    /// from either's own.
    fn batch_token_count(&self, sigma: f64) -> Option<usize> {
        let active = |list: &[PreparedCond]| {
            list.iter()
                .find(|c| c.active_at(sigma))
                .and_then(|c| c.context.dim(1).ok())
        };
        let (tp, tn) = (active(&self.positive)?, active(&self.negative)?);
        (tp != tn).then(|| lcm(tp, tn))
    }

    fn eval_list(&self, list: &[PreparedCond], x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.eval_list_with(list, x, sigma, &self.model.patches.unet)
    }

    /// The negative side's evaluation: [`Self::eval_list`] with the patches that act on it only.
    fn eval_negative(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let patches = &self.model.patches;
        match &patches.uncond_mid_first_self_attention {
            Some(replace) => {
                let mut unet = patches.unet.clone();
                unet.mid_first_self_attention = Some(Arc::clone(replace));
                self.eval_list_with(&self.negative, x, sigma, &unet)
            }
            None => self.eval_list(&self.negative, x, sigma),
        }
    }

    /// [`Self::eval_list`] with the given UNet patches instead of the model's.
    fn eval_list_with(
        &self,
        list: &[PreparedCond],
        x: &Tensor,
        sigma: f64,
        unet_patches: &patches::UNetPatches,
    ) -> Result<Tensor> {
        let mut sum = WeightedSum::new(x)?;
        for cond in list.iter().filter(|c| c.active_at(sigma)) {
            let (ah, aw, ay, ax) = cond.area;
            let EntryInputs {
                x_area,
                x_in,
                timesteps,
                context,
                y,
            } = self.entry_inputs(cond, x, sigma)?;
            let (dtype, device) = (self.model.unet.dtype(), self.model.unet.device());
            let batched = |t: &Tensor| to_compute(t, device, dtype)?.repeat((x.dim(0)?, 1, 1));
            let mut control = UNetControl::default();
            if !cond.controls.is_empty() {
                let control_context = match &cond.controlnet_context {
                    Some(c) => batched(c)?,
                    None => context.clone(),
                };
                for hint in &cond.controls {
                    let own = hint.control(
                        &x_in,
                        &timesteps,
                        sigma,
                        &control_context,
                        y.as_ref(),
                        self.model,
                    )?;
                    if let Some(own) = own {
                        control = control.sum(&own)?;
                    }
                }
            }
            // Inpainting and InstructPix2Pix UNets take their extra channels after x (ComfyUI's
            // `c_concat`, cut to the entry's area like x); controls see x alone.
            let concat = cond.concat.build(
                self.model.concat_kind(),
                x,
                self.inpaint.as_ref().map(|i| &i.mask),
                self.latent_image.as_ref(),
            )?;
            let unet_in = match concat {
                Some(concat) => {
                    let concat = concat.narrow(2, ay, ah)?.narrow(3, ax, aw)?;
                    Tensor::cat(&[&x_in, &to_compute(&concat, device, dtype)?], 1)?
                }
                None => x_in.clone(),
            };
            // ComfyUI appends a conditioning's own patches to the model's.
            let with_own;
            let unet_patches = match &cond.middle {
                Some(patch) => {
                    let mut patches = unet_patches.clone();
                    patches.middle.push(Arc::clone(patch));
                    with_own = patches;
                    &with_own
                }
                None => unet_patches,
            };
            let output = self.model.unet.forward_patched(
                &unet_in,
                &timesteps,
                &context,
                y.as_ref(),
                &control,
                unet_patches,
                sigma,
            )?;
            sum.add(cond, self.denoised(sigma, &output, &x_area)?)?;
        }
        sum.finish()
    }

    /// What the UNet takes for entry `cond` at `x`: the entry's area of `x` and its scaled
    /// input, the timesteps, and the text (and SDXL vector) once per latent of the batch, in the
    /// model's dtype on its device.
    fn entry_inputs(&self, cond: &PreparedCond, x: &Tensor, sigma: f64) -> Result<EntryInputs> {
        let batch = x.dim(0)?;
        let (ah, aw, ay, ax) = cond.area;
        let x_area = x.narrow(2, ay, ah)?.narrow(3, ax, aw)?.contiguous()?;
        // The sampler's values are f32 on the host; the model's inputs go to its device.
        let (dtype, device) = (self.model.unet.dtype(), self.model.unet.device());
        let x_in = to_compute(
            &self.model.sampling.calculate_input(sigma, &x_area)?,
            device,
            dtype,
        )?;
        let timestep = self.model.sampling.timestep(sigma as f32);
        let timesteps = Tensor::full(timestep, batch, device)?;
        let mut context = to_compute(&cond.context, device, dtype)?.repeat((batch, 1, 1))?;
        if let Some(tokens) = self.batch_tokens.get() {
            // `CONDCrossAttn.concat`: repeated, which changes nothing but the draws.
            let own = context.dim(1)?;
            if own != tokens && own > 0 && tokens.is_multiple_of(own) {
                context = context.repeat((1, tokens / own, 1))?;
            }
        }
        let y = match &cond.y {
            Some(y) => Some(to_compute(y, device, dtype)?.repeat((batch, 1))?),
            None => None,
        };
        Ok(EntryInputs {
            x_area,
            x_in,
            timesteps,
            context,
            y,
        })
    }

    /// The UNet's output for `x_area` as the denoised latent, on the host.
    fn denoised(&self, sigma: f64, output: &Tensor, x_area: &Tensor) -> Result<Tensor> {
        self.model
            .sampling
            .calculate_denoised(sigma, &to_host(output)?, x_area)
    }

    /// Both sides in one UNet call of twice the batch, as ComfyUI runs them, where that is
    /// plainly the same computation as two calls: one entry a side that ComfyUI batches
    /// ([`Self::batched_by_comfy`]), and nothing that differs between the sides but the text and
    /// the weights (no controls, GLIGEN boxes, extra input channels or UNet patches, which may
    /// draw random numbers per call). `None` otherwise, for the two calls.
    ///
    /// Why: at small latents a UNet call costs reading its weights (3.4 GB in f32 for SD1.5),
    /// whatever the batch; one call for both sides reads them once.
    fn eval_both_in_one_call(&self, x: &Tensor, sigma: f64) -> Result<Option<(Tensor, Tensor)>> {
        let patches = &self.model.patches;
        if !patches.unet.is_empty()
            || patches.uncond_mid_first_self_attention.is_some()
            || self.model.concat_kind().is_some()
        {
            return Ok(None);
        }
        let active = |list: &[PreparedCond]| list.iter().position(|c| c.active_at(sigma));
        let (Some(p), Some(n)) = (active(&self.positive), active(&self.negative)) else {
            return Ok(None);
        };
        let (positive, negative) = (&self.positive[p], &self.negative[n]);
        let plain = |c: &PreparedCond| c.controls.is_empty() && c.middle.is_none();
        if !plain(positive) || !plain(negative) {
            return Ok(None);
        }
        self.batch_tokens.set(self.batch_token_count(sigma));
        let inputs = self
            .entry_inputs(positive, x, sigma)
            .and_then(|p| Ok((p, self.entry_inputs(negative, x, sigma)?)));
        self.batch_tokens.set(None);
        let (p, n) = inputs?;
        let y = match (&p.y, &n.y) {
            (Some(p), Some(n)) => Some(Tensor::cat(&[p, n], 0)?),
            (None, None) => None,
            _ => return Ok(None),
        };
        let output = self.model.unet.forward_patched(
            &Tensor::cat(&[&p.x_in, &n.x_in], 0)?,
            &Tensor::cat(&[&p.timesteps, &n.timesteps], 0)?,
            &Tensor::cat(&[&p.context, &n.context], 0)?,
            y.as_ref(),
            &UNetControl::default(),
            &patches.unet,
            sigma,
        )?;
        let batch = x.dim(0)?;
        let side = |cond: &PreparedCond, half: usize, x_area: &Tensor| -> Result<Tensor> {
            let mut sum = WeightedSum::new(x)?;
            let output = output.narrow(0, half * batch, batch)?;
            sum.add(cond, self.denoised(sigma, &output, x_area)?)?;
            sum.finish()
        };
        Ok(Some((
            side(positive, 0, &p.x_area)?,
            side(negative, 1, &n.x_area)?,
        )))
    }
}

/// An entry's UNet inputs ([`CfgDenoiser::entry_inputs`]).
struct EntryInputs {
    x_area: Tensor,
    x_in: Tensor,
    timesteps: Tensor,
    context: Tensor,
    y: Option<Tensor>,
}

/// The entries' denoised latents, each weighted by its multiplier over its area, divided by
/// the multipliers' sum (`calc_cond_batch`'s `out_conds / out_counts`).
struct WeightedSum {
    out: Tensor,
    counts: Tensor,
}

impl WeightedSum {
    fn new(x: &Tensor) -> Result<Self> {
        let dims = x.dims4()?;
        Ok(WeightedSum {
            out: Tensor::zeros(dims, DType::F32, x.device())?,
            counts: Tensor::full(1e-37f32, dims, x.device())?,
        })
    }

    fn add(&mut self, cond: &PreparedCond, denoised: Tensor) -> Result<()> {
        let (batch, channels, _, _) = self.out.dims4()?;
        let (ah, aw, ay, ax) = cond.area;
        let weighted = (denoised * &cond.mult)?;
        let area = [0..batch, 0..channels, ay..ay + ah, ax..ax + aw];
        let area_of = |t: &Tensor| t.narrow(2, ay, ah)?.narrow(3, ax, aw);
        self.out = self
            .out
            .slice_assign(&area, &(area_of(&self.out)? + weighted)?)?;
        self.counts = self
            .counts
            .slice_assign(&area, &(area_of(&self.counts)? + &cond.mult)?)?;
        Ok(())
    }

    fn finish(self) -> Result<Tensor> {
        self.out / self.counts
    }
}

impl Denoiser for CfgDenoiser<'_> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Denoised> {
        // The step's mask (a patch may reshape it per sigma) serves both blends, as in ComfyUI's
        // KSamplerX0Inpaint.
        let mask = match &self.inpaint {
            Some(inpaint) => Some(match &self.model.patches.denoise_mask {
                Some(f) => f.mask(sigma, &inpaint.mask, &self.schedule, &self.model.sampling)?,
                None => inpaint.mask.clone(),
            }),
            None => None,
        };
        let x = match (&self.inpaint, &mask) {
            (Some(inpaint), Some(mask)) => {
                let known = (&inpaint.latent + inpaint.noise.affine(sigma, 0.0)?)?;
                let keep = mask.affine(-1.0, 1.0)?;
                ((x * mask)? + (known * &keep)?)?
            }
            _ => x.clone(),
        };
        let (result, uncond) = self.guide(&x, sigma)?;
        let apply_mask = |t: Tensor| -> Result<Tensor> {
            match (&self.inpaint, &mask) {
                (Some(inpaint), Some(mask)) => {
                    (t * mask)? + (&inpaint.latent * mask.affine(-1.0, 1.0)?)?
                }
                _ => Ok(t),
            }
        };
        Ok(Denoised {
            cond: apply_mask(result)?,
            uncond: uncond.map(apply_mask).transpose()?,
        })
    }
}

/// The negative entries with the positive side's controls and GLIGEN boxes where ComfyUI gives
/// them (`apply_empty_x_to_equal_area` for `control`, then for `gligen`).
fn share_with_negative(positive: &[CondEntry], negative: &[CondEntry]) -> Vec<CondEntry> {
    let mut negative = negative.to_vec();
    let whole = |e: &CondEntry| e.area.is_none();
    let controls = positive
        .iter()
        .filter(|e| e.control_apply_to_uncond && whole(e) && !e.controls.is_empty())
        .map(|e| e.controls.clone())
        .collect();
    share_kind(
        controls,
        &mut negative,
        |e| !e.controls.is_empty(),
        |e, controls| e.controls = controls,
    );
    let gligen = positive
        .iter()
        .filter(|e| whole(e))
        .filter_map(|e| e.gligen.clone())
        .collect();
    share_kind(
        gligen,
        &mut negative,
        |e| e.gligen.is_some(),
        |e, gligen| e.gligen = Some(gligen),
    );
    negative
}

/// `apply_empty_x_to_equal_area` for one kind of value: when no whole-latent negative entry `has`
/// one of its own, each of the whole-latent positive entries' values (`shared`, in order) is
/// `put` on the whole-latent negative entries taken in turn, a later value replacing an earlier
/// one when there are more values than entries.
fn share_kind<T>(
    shared: Vec<T>,
    negative: &mut [CondEntry],
    has: impl Fn(&CondEntry) -> bool,
    put: impl Fn(&mut CondEntry, T),
) {
    let whole = |e: &CondEntry| e.area.is_none();
    if negative.iter().any(|e| whole(e) && has(e)) {
        return;
    }
    let free: Vec<usize> = (0..negative.len())
        .filter(|&i| whole(&negative[i]))
        .collect();
    if free.is_empty() {
        return;
    }
    for (k, value) in shared.into_iter().enumerate() {
        put(&mut negative[free[k % free.len()]], value);
    }
}

fn prepare(
    model: &DiffusionModel,
    list: &[CondEntry],
    latent_shape: &[usize],
    prompt_type: PromptType,
    seed: u64,
) -> Result<Vec<PreparedCond>> {
    let &[batch, channels, h, w] = latent_shape else {
        candle_core::bail!("latent must be [B, C, h, w], got {latent_shape:?}");
    };
    let device = Device::Cpu;
    let mut prepared = Vec::with_capacity(list.len());
    for entry in list {
        // The mask at latent size, and the area it bounds.
        let mask = match &entry.mask {
            Some(mask) => {
                let mask = match mask.rank() {
                    2 => mask.unsqueeze(0)?,
                    _ => mask.clone(),
                };
                let resized = crate::resize::common_upscale(
                    &mask.unsqueeze(1)?.to_dtype(DType::F32)?,
                    w,
                    h,
                    crate::resize::UpscaleMethod::Bilinear,
                    crate::resize::Crop::Disabled,
                )?
                .squeeze(1)?;
                Some(resized)
            }
            None => None,
        };
        let mut area = match &entry.area {
            Some(Area::Latent {
                height,
                width,
                y,
                x,
            }) => {
                let ah = (*height).min(h.saturating_sub(*y)).max(1);
                let aw = (*width).min(w.saturating_sub(*x)).max(1);
                (ah, aw, (*y).min(h - ah), (*x).min(w - aw))
            }
            Some(Area::Percentage {
                height,
                width,
                y,
                x,
            }) => {
                let ah = ((height * h as f64).round() as usize).clamp(1, h);
                let aw = ((width * w as f64).round() as usize).clamp(1, w);
                let ay = ((y * h as f64).round() as usize).min(h - ah);
                let ax = ((x * w as f64).round() as usize).min(w - aw);
                (ah, aw, ay, ax)
            }
            None => (h, w, 0, 0),
        };
        if let (Some(mask), true) = (&mask, entry.set_area_to_bounds) {
            area = mask_bounds(mask, h, w)?;
        }
        let (ah, aw, ay, ax) = area;
        let mult = match &mask {
            Some(mask) => {
                let m = mask.narrow(1, ay, ah)?.narrow(2, ax, aw)?;
                let m = if m.dim(0)? == batch {
                    m
                } else {
                    m.narrow(0, 0, 1)?.repeat((batch, 1, 1))?
                };
                (m.unsqueeze(1)?.repeat((1, channels, 1, 1))?
                    * (entry.mask_strength * entry.strength))?
            }
            None => {
                let mut rows = vec![entry.strength as f32; ah];
                let mut cols = vec![1.0f32; aw];
                if entry.area.is_some() {
                    // ComfyUI feathers the edges of an area that does not touch the border over 8
                    // latent pixels.
                    feather(&mut rows, ay != 0, ay + ah < h);
                    feather(&mut cols, ax != 0, ax + aw < w);
                }
                let rows = Tensor::from_vec(rows, (ah, 1), &device)?;
                let cols = Tensor::from_vec(cols, (1, aw), &device)?;
                rows.broadcast_mul(&cols)?
                    .reshape((1, 1, ah, aw))?
                    .repeat((batch, channels, 1, 1))?
            }
        };
        let y = if model.uses_adm() {
            Some(adm_vector(model, entry, h, w, prompt_type, seed)?)
        } else {
            None
        };
        prepared.push(PreparedCond {
            context: entry.context.clone(),
            y,
            area,
            mult,
            controls: entry.controls.clone(),
            sigmas: entry.percent_range.map(|(start, end)| {
                (
                    model.sampling.percent_to_sigma(start),
                    model.sampling.percent_to_sigma(end),
                )
            }),
            concat: concat::PreparedConcat::new(model, entry, latent_shape)?,
            controlnet_context: entry.controlnet_context.clone(),
            middle: entry
                .gligen
                .as_ref()
                .map(|g| g.patch(batch, ah, aw))
                .transpose()?,
        });
    }
    Ok(prepared)
}

fn feather(values: &mut [f32], start: bool, end: bool) {
    const RR: usize = 8;
    let n = values.len();
    for t in 0..RR.min(n) {
        let factor = (t + 1) as f32 / RR as f32;
        if start {
            values[t] *= factor;
        }
        if end {
            values[n - 1 - t] *= factor;
        }
    }
}

/// The bounding box `(h, w, y, x)` of the non-zero part of a `[B, h, w]` mask.
fn mask_bounds(mask: &Tensor, h: usize, w: usize) -> Result<(usize, usize, usize, usize)> {
    let flat: Vec<f32> = mask.max(0)?.flatten_all()?.to_vec1()?;
    let (mut y0, mut y1, mut x0, mut x1) = (h, 0, w, 0);
    for y in 0..h {
        for x in 0..w {
            if flat[y * w + x] > 0.0 {
                y0 = y0.min(y);
                y1 = y1.max(y + 1);
                x0 = x0.min(x);
                x1 = x1.max(x + 1);
            }
        }
    }
    if y1 <= y0 || x1 <= x0 {
        return Ok((h, w, 0, 0));
    }
    Ok((y1 - y0, x1 - x0, y0, x0))
}

/// The UNet's `y`: SDXL's pooled output (or its unCLIP "revision" replacement) plus size
/// embeddings (`SDXL.encode_adm` / `SDXLRefiner.encode_adm`), or an unCLIP model's image
/// embedding (`SD21UNCLIP.encode_adm`: zeros without one).
fn adm_vector(
    model: &DiffusionModel,
    entry: &CondEntry,
    h: usize,
    w: usize,
    prompt_type: PromptType,
    seed: u64,
) -> Result<Tensor> {
    let adm_channels = model.unet.config().adm_in_channels.unwrap_or(0);
    // ComfyUI passes the sampler's seed minus 10 (two's complement below 10).
    let unclip_seed = seed.wrapping_sub(10);
    if model.is_unclip() {
        if entry.unclip.is_empty() {
            return Tensor::zeros((1, adm_channels), DType::F32, &Device::Cpu);
        }
        let augmentor = unclip::NoiseAugmentor::new(adm_channels / 2);
        return unclip::unclip_adm(
            &entry.unclip,
            &augmentor,
            unclip::UNCLIP_MERGE_NOISE,
            unclip_seed,
        );
    }
    let pooled = if !entry.unclip.is_empty() {
        // SDXL's pooled width: what the size embeddings leave of the adm input.
        let sizes = match model.family {
            ModelFamily::SdxlRefiner => 5,
            _ => 6,
        };
        let dim = adm_channels.saturating_sub(sizes * 256);
        let augmentor = unclip::NoiseAugmentor::new(dim);
        unclip::unclip_adm(
            &entry.unclip,
            &augmentor,
            unclip::SDXL_MERGE_NOISE,
            unclip_seed,
        )?
        .narrow(1, 0, dim)?
    } else {
        match &entry.pooled {
            Some(p) => p.to_dtype(DType::F32)?,
            None => candle_core::bail!(
                "this SDXL model needs a pooled text output; use a CLIP from an SDXL checkpoint"
            ),
        }
    };
    let pooled = if pooled.rank() == 1 {
        pooled.unsqueeze(0)?
    } else {
        pooled.narrow(0, 0, 1)?
    };
    let s = &entry.size;
    let width = s.width.unwrap_or((w * 8) as f32);
    let height = s.height.unwrap_or((h * 8) as f32);
    let crop_w = s.crop_w.unwrap_or(0.0);
    let crop_h = s.crop_h.unwrap_or(0.0);
    let values = match model.family {
        ModelFamily::SdxlRefiner => {
            let default_score = if prompt_type == PromptType::Negative {
                2.5
            } else {
                6.0
            };
            vec![
                height,
                width,
                crop_h,
                crop_w,
                s.aesthetic_score.unwrap_or(default_score),
            ]
        }
        _ => vec![
            height,
            width,
            crop_h,
            crop_w,
            s.target_height.unwrap_or(height),
            s.target_width.unwrap_or(width),
        ],
    };
    sdxl_adm(&pooled, &[values])
}

/// Broadcasts a noise mask `[B?, h', w']` or `[B, 1, h', w']` to the latent's shape, resized
/// bilinearly as ComfyUI's `prepare_mask` does.
pub fn prepare_noise_mask(mask: &Tensor, latent_shape: &[usize]) -> Result<Tensor> {
    let &[batch, channels, h, w] = latent_shape else {
        candle_core::bail!("latent must be [B, C, h, w], got {latent_shape:?}");
    };
    let mask = match mask.rank() {
        2 => mask.unsqueeze(0)?.unsqueeze(0)?,
        3 => mask.unsqueeze(1)?,
        _ => mask.narrow(1, 0, 1)?,
    };
    let resized = crate::resize::common_upscale(
        &mask.to_dtype(DType::F32)?,
        w,
        h,
        crate::resize::UpscaleMethod::Bilinear,
        crate::resize::Crop::Disabled,
    )?;
    let b = resized.dim(0)?;
    let resized = if b == batch {
        resized
    } else {
        let repeats = batch.div_ceil(b);
        resized.repeat((repeats, 1, 1, 1))?.narrow(0, 0, batch)?
    };
    resized.repeat((1, channels, 1, 1))?.contiguous()
}

/// The least common multiple (`math.lcm`).
fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if a == 0 || b == 0 {
        0
    } else {
        a / gcd(a, b) * b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    impl std::fmt::Debug for Named {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl ControlHint for Named {
        fn control(
            &self,
            _: &Tensor,
            _: &Tensor,
            _: f64,
            _: &Tensor,
            _: Option<&Tensor>,
            _: &DiffusionModel,
        ) -> Result<Option<UNetControl>> {
            Ok(None)
        }
    }

    fn entry(controls: &[&'static str], to_uncond: bool, area: bool) -> CondEntry {
        let mut e = CondEntry::new(
            Tensor::zeros((1, 1, 1), DType::F32, &Device::Cpu).unwrap(),
            None,
        );
        e.controls = controls
            .iter()
            .map(|&n| Arc::new(Named(n)) as Arc<dyn ControlHint>)
            .collect();
        e.control_apply_to_uncond = to_uncond;
        if area {
            e.area = Some(Area::Latent {
                height: 1,
                width: 1,
                y: 0,
                x: 0,
            });
        }
        e
    }

    fn names(list: &[CondEntry]) -> Vec<Vec<String>> {
        list.iter()
            .map(|e| e.controls.iter().map(|c| format!("{c:?}")).collect())
            .collect()
    }

    #[test]
    fn controls_reach_the_negative_side_as_comfyui_gives_them() {
        let n = |s: &str| s.to_owned();
        // The old node's control goes to the control-less negative entry.
        let shared =
            share_with_negative(&[entry(&["a"], true, false)], &[entry(&[], false, false)]);
        assert_eq!(names(&shared), [vec![n("a")]]);
        // Not without the flag (ControlNetApplyAdvanced), nor from an area entry.
        for positive in [entry(&["a"], false, false), entry(&["a"], true, true)] {
            let kept = share_with_negative(&[positive], &[entry(&[], false, false)]);
            assert_eq!(names(&kept), [Vec::<String>::new()]);
        }
        // A negative entry with a control of its own: nothing changes anywhere.
        let kept = share_with_negative(
            &[entry(&["a"], true, false)],
            &[entry(&[], false, false), entry(&["b"], false, false)],
        );
        assert_eq!(names(&kept), [vec![], vec![n("b")]]);
        // Taken in turn over the whole-latent negative entries; a later one replaces an earlier.
        let positive = [
            entry(&["a"], true, false),
            entry(&["b", "c"], true, false),
            entry(&["d"], true, false),
        ];
        let negative = [
            entry(&[], false, false),
            entry(&[], false, true),
            entry(&[], false, false),
        ];
        assert_eq!(
            names(&share_with_negative(&positive, &negative)),
            [vec![n("d")], vec![], vec![n("b"), n("c")]]
        );
    }

    /// GLIGEN boxes go to the negative side as ComfyUI's `apply_empty_x_to_equal_area` gives
    /// them: from every whole-latent positive entry, to the whole-latent negative entries in turn,
    /// unless one of those has boxes of its own.
    #[test]
    fn gligen_boxes_reach_the_negative_side_as_comfyui_gives_them() {
        use crate::gligen::{FuserConfig, Gligen, GligenConfig, Grounding, TextBox};
        let config = GligenConfig {
            key_dim: 8,
            position_in_dim: 8,
            position_out_dim: 8,
            fusers: vec![FuserConfig::for_dims(8, 768)],
        };
        let vb = crate::synth::synth_var_builder(DType::F32, &Device::Cpu);
        let model = Arc::new(Gligen::new(vb, &config).unwrap());
        let text_box = TextBox {
            embedding: Tensor::zeros((1, 8), DType::F32, &Device::Cpu).unwrap(),
            height: 1,
            width: 1,
            y: 0,
            x: 0,
        };
        // An entry whose grounding has `boxes` boxes (0: none).
        let grounded = |boxes: usize, area: bool| {
            let mut e = entry(&[], false, area);
            e.gligen = (boxes > 0).then(|| Grounding {
                model: Arc::clone(&model),
                boxes: vec![text_box.clone(); boxes],
            });
            e
        };
        let counts = |list: &[CondEntry]| -> Vec<usize> {
            list.iter()
                .map(|e| e.gligen.as_ref().map_or(0, |g| g.boxes.len()))
                .collect()
        };
        let positive = [grounded(1, false), grounded(2, true), grounded(3, false)];
        let negative = [grounded(0, false), grounded(0, true), grounded(0, false)];
        assert_eq!(
            counts(&share_with_negative(&positive, &negative)),
            [1, 0, 3]
        );
        let own = [grounded(0, false), grounded(4, false)];
        assert_eq!(counts(&share_with_negative(&positive, &own)), [0, 4]);
    }

    /// `latent · 2`.
    #[derive(Debug)]
    struct Double;

    impl LatentOperation for Double {
        fn apply(&self, latent: &Tensor) -> Result<Tensor> {
            latent * 2.0
        }
    }

    fn tiny_model() -> DiffusionModel {
        use crate::synth::synth_var_builder;
        use crate::unet::UNetConfig;
        let vb = synth_var_builder(DType::F32, &Device::Cpu);
        let unet = UNet2DConditionModel::new(vb, &UNetConfig::tiny_sd1()).unwrap();
        DiffusionModel::new(unet, ModelFamily::Sd1, Prediction::Epsilon, 0)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// LatentApplyOperationCFG's pre-CFG step: `op(cond − uncond) + uncond` before CFG mixes
    /// them, `op(cond)` when the negative side is not evaluated (cfg 1).
    #[test]
    fn cfg_operations_act_on_the_guidance_before_cfg() {
        let model = tiny_model();
        let doubled = model.with_cfg_operation(Arc::new(Double));
        let context = |v: f32| Tensor::full(v, (1, 4, 48), &Device::Cpu).unwrap();
        let (positive, negative) = (
            [CondEntry::new(context(0.3), None)],
            [CondEntry::new(context(-0.2), None)],
        );
        let shape = [1, 4, 8, 8];
        let x = Tensor::full(0.5f32, &shape[..], &Device::Cpu).unwrap();
        let denoise = |model: &DiffusionModel, cfg: f64| {
            CfgDenoiser::new(model, &positive, Some(&negative), cfg, &shape, true, 0)
                .unwrap()
                .denoise(&x, 5.0)
                .unwrap()
        };
        let (plain, patched) = (denoise(&model, 3.0), denoise(&doubled, 3.0));
        let uncond = plain.uncond.unwrap();
        // uncond + 3 · (2 (cond − uncond) + uncond − uncond) = uncond + 2 (plain − uncond).
        let expected = (&uncond + ((&plain.cond - &uncond).unwrap() * 2.0).unwrap()).unwrap();
        assert!(max_diff(&patched.cond, &expected) < 1e-4);
        assert!(
            max_diff(&patched.cond, &plain.cond) > 1e-3,
            "the operation changed something"
        );
        assert!(
            max_diff(&patched.uncond.unwrap(), &uncond) == 0.0,
            "uncond is left alone"
        );
        let single = |model: &DiffusionModel| {
            CfgDenoiser::new(model, &positive, None, 1.0, &shape, false, 0)
                .unwrap()
                .denoise(&x, 5.0)
                .unwrap()
                .cond
        };
        let expected = (single(&model) * 2.0).unwrap();
        assert!(max_diff(&single(&doubled), &expected) < 1e-5);
    }

    /// Leaves the UNet as it is, but makes it a patched one.
    #[derive(Debug)]
    struct NoOp;

    impl patches::OutputBlockPatch for NoOp {
        fn patch(&self, h: Tensor, skip: Tensor) -> Result<(Tensor, Tensor)> {
            Ok((h, skip))
        }
    }

    /// Both sides in one UNet call of twice the batch give what two calls give (a model with a
    /// patch runs two), for two latents and texts of different lengths (padded to their least
    /// common multiple, as ComfyUI's batch does).
    #[test]
    fn both_sides_in_one_call_match_two_calls() {
        let model = tiny_model();
        let patched = model.patched(|p| p.unet.output_block.push(Arc::new(NoOp)));
        let context = |v: f32, tokens: usize| {
            Tensor::arange(0f32, (tokens * 48) as f32, &Device::Cpu)
                .and_then(|t| t.affine(0.001, f64::from(v)))
                .and_then(|t| t.reshape((1, tokens, 48)))
                .unwrap()
        };
        let (positive, negative) = (
            [CondEntry::new(context(0.3, 4), None)],
            [CondEntry::new(context(-0.2, 8), None)],
        );
        let shape = [2, 4, 8, 8];
        let x = Tensor::randn(0f32, 1.0, &shape[..], &Device::Cpu).unwrap();
        let denoise = |model: &DiffusionModel| {
            let mut denoiser =
                CfgDenoiser::new(model, &positive, Some(&negative), 3.0, &shape, true, 0).unwrap();
            let one_call = denoiser.eval_both_in_one_call(&x, 5.0).unwrap().is_some();
            (denoiser.denoise(&x, 5.0).unwrap(), one_call)
        };
        let ((one, took_one), (two, took_two)) = (denoise(&model), denoise(&patched));
        assert!(took_one && !took_two, "{took_one} {took_two}");
        // The same sums in another blocking: float rounding apart (3e-5 seen, after CFG x3).
        assert!(max_diff(&one.cond, &two.cond) < 1e-4);
        let (u1, u2) = (one.uncond.unwrap(), two.uncond.unwrap());
        assert!(max_diff(&u1, &u2) < 1e-4);
        assert!(max_diff(&u1, &one.cond) > 1e-3, "the sides differ");
    }
}
