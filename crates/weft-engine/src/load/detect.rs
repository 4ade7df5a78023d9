//! Model family detection and architecture inference from checkpoint keys and shapes, as
//! ComfyUI's `comfy/model_detection.py` + `supported_models.py` do, but structural rather than
//! matched against the real sizes only, so tiny test checkpoints are recognised with their real
//! (tiny) config.
//!
//! Rules (UNet keys in LDM layout, prefix removed):
//! - `label_emb.0.0.weight` present with transformers on the first level and linear projections:
//!   SD2.1 unCLIP, reported as `Sd2` (the adm input marks it, `DiffusionModel::is_unclip`).
//! - `label_emb.0.0.weight` present otherwise (adm input of width `a`): SDXL-class. Refiner when `a == 2560`
//!   or `a - 5*256 == context_dim` (the refiner's pooled vector is as wide as its bigG-only
//!   context); otherwise base (`a == 2816`, or `a - 6*256 > 0`).
//! - otherwise SD2 when the transformers project linearly (`proj_in.weight` is 2-D), SD1 when they
//!   use 1x1 convs.
//! - heads: SD1 uses 8 heads per level (LDM `num_heads: 8`); SD2/SDXL use 64-wide heads.
//!
//! Prediction type: a `v_pred` key marks v-prediction (`ztsnr` adds zero terminal SNR), as ComfyUI
//! honours. SD2 checkpoints carry no marker; ComfyUI guesses v-prediction when the population std
//! of `output_blocks.11.1.transformer_blocks.0.norm1.bias` (the last output block's first norm) is
//! above 0.09 for 4-channel (non-inpaint) models; we do the same on the last output block. It is
//! a heuristic and the result says so. SDXL-Turbo (and other distilled SDXL models) cannot be told
//! apart from SDXL base by weights: they are reported as `SdxlBase`.

use std::collections::{BTreeSet, HashMap};

use crate::load::file::StateDict;
use crate::load::LoadErrorKind;
use crate::unet::{AttentionHeads, UNetConfig};
use crate::vae::VaeConfig;

/// The model families Weft runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// Stable Diffusion 1.x (CLIP ViT-L context, 1x1-conv transformer projections).
    Sd1,
    /// Stable Diffusion 2.x (OpenCLIP ViT-H context, linear transformer projections).
    Sd2,
    /// SDXL base (and distilled variants such as SDXL-Turbo).
    SdxlBase,
    /// The SDXL refiner (bigG-only context, aesthetic-score conditioning).
    SdxlRefiner,
}

impl ModelFamily {
    /// The VAE latent scaling factor of the family.
    pub fn latent_scale(self) -> f64 {
        match self {
            Self::Sd1 | Self::Sd2 => 0.18215,
            Self::SdxlBase | Self::SdxlRefiner => 0.13025,
        }
    }
}

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise (`eps`), as most SD1.x/SDXL models.
    Epsilon,
    /// The velocity `v` (`v_prediction`), as SD2.x 768 models.
    V,
}

/// How the prediction type was decided.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictionSource {
    /// A marker key in the file (`v_pred`).
    KeyMarker(String),
    /// ComfyUI's SD2 weight-statistic guess: population std of this tensor.
    WeightStatistic {
        /// The tensor measured.
        key: String,
        /// Its population standard deviation (v-prediction above 0.09).
        std: f64,
    },
    /// Nothing says otherwise: the family default.
    FamilyDefault,
}

/// Everything read off a UNet's weights.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectedUnet {
    /// The architecture family.
    pub family: ModelFamily,
    /// The UNet's shape, inferred from the weights.
    pub config: UNetConfig,
    /// What the model predicts.
    pub prediction: Prediction,
    /// Zero terminal SNR (`ztsnr` marker) for v-prediction models.
    pub zero_terminal_snr: bool,
    /// What `prediction` was decided from.
    pub prediction_source: PredictionSource,
}

/// The keys detection distinguishes families by (reported when nothing matches).
pub fn distinguishing_keys(prefix: &str) -> Vec<String> {
    [
        "input_blocks.0.0.weight",
        "out.2.weight",
        "label_emb.0.0.weight",
        "input_blocks.N.1.proj_in.weight",
        "input_blocks.N.1.transformer_blocks.0.attn2.to_k.weight",
    ]
    .iter()
    .map(|k| format!("{prefix}{k}"))
    .collect()
}

fn unknown(prefix: &str) -> LoadErrorKind {
    LoadErrorKind::UnknownFamily {
        looked_for: distinguishing_keys(prefix),
    }
}

fn bad(msg: String) -> LoadErrorKind {
    LoadErrorKind::BadConfig(msg)
}

/// Infers the UNet architecture and family from LDM-layout keys under `prefix`.
pub fn detect_unet(sd: &StateDict, prefix: &str) -> Result<DetectedUnet, LoadErrorKind> {
    let shapes: HashMap<&str, &[usize]> = sd
        .shapes()
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k, v.as_slice())))
        .collect();
    let shape = |k: &str| shapes.get(k).copied();
    let conv_in = shape("input_blocks.0.0.weight")
        .filter(|s| s.len() == 4)
        .ok_or_else(|| unknown(prefix))?;
    let out_channels = shape("out.2.weight")
        .and_then(|s| s.first().copied())
        .ok_or_else(|| unknown(prefix))?;

    // Block indices that exist, and which of them are downsamplers.
    let mut input_ids = BTreeSet::new();
    let mut down_ids = BTreeSet::new();
    for k in shapes.keys() {
        if let Some(rest) = k.strip_prefix("input_blocks.") {
            if let Some((n, tail)) = rest.split_once('.') {
                if let Ok(n) = n.parse::<usize>() {
                    input_ids.insert(n);
                    if tail.starts_with("0.op.") {
                        down_ids.insert(n);
                    }
                }
            }
        }
    }
    let levels = down_ids.len() + 1;
    let blocks = input_ids.len().saturating_sub(1);
    if blocks < levels || (blocks - down_ids.len()) % levels != 0 {
        return Err(bad(format!(
            "{blocks} input blocks do not split into {levels} levels"
        )));
    }
    let layers_per_block = (blocks - down_ids.len()) / levels;
    let per = layers_per_block + 1;

    let depth_of =
        |block: &str| count_indexed(shapes.keys(), &format!("{block}.transformer_blocks."));
    let mut block_out_channels = Vec::with_capacity(levels);
    let mut transformer_depth = Vec::with_capacity(levels);
    for i in 0..levels {
        let n = per * i + 1;
        let c = shape(&format!("input_blocks.{n}.0.out_layers.3.weight"))
            .and_then(|s| s.first().copied())
            .ok_or_else(|| {
                bad(format!(
                    "missing {prefix}input_blocks.{n}.0.out_layers.3.weight"
                ))
            })?;
        block_out_channels.push(c);
        transformer_depth.push(depth_of(&format!("input_blocks.{n}.1")));
    }
    // Our UNet uses the same depth on the way up; refuse files that do not (e.g. SSD-1B style
    // pruned decoders) rather than load them wrongly.
    for i in 0..levels {
        let n = per * i;
        let up = depth_of(&format!("output_blocks.{n}.1"));
        if up != transformer_depth[levels - 1 - i] {
            return Err(bad(format!(
                "output block {n} has transformer depth {up}, its input level has {}",
                transformer_depth[levels - 1 - i]
            )));
        }
    }
    let mid_transformer_depth = depth_of("middle_block.1");

    let attn_key = shapes
        .keys()
        .filter(|k| k.ends_with("transformer_blocks.0.attn2.to_k.weight"))
        .min()
        .copied()
        .ok_or_else(|| unknown(prefix))?;
    let context_dim = shape(attn_key)
        .and_then(|s| s.get(1).copied())
        .ok_or_else(|| unknown(prefix))?;
    let proj_key = attn_key.replace("transformer_blocks.0.attn2.to_k.weight", "proj_in.weight");
    let use_linear_projection = shape(&proj_key)
        .map(|s| s.len() == 2)
        .ok_or_else(|| unknown(prefix))?;
    let adm_in_channels = shape("label_emb.0.0.weight").and_then(|s| s.get(1).copied());
    let last = levels * per - 1;
    finish_unet(
        sd,
        UnetShape {
            in_channels: conv_in[1],
            out_channels,
            block_out_channels,
            layers_per_block,
            transformer_depth,
            mid_transformer_depth,
            context_dim,
            use_linear_projection,
            adm_in_channels,
        },
        &format!("{prefix}output_blocks.{last}.1.transformer_blocks.0.norm1.bias"),
    )
    .ok_or_else(|| unknown(prefix))?
}

/// What the weights of a UNet say of it, in either key layout.
struct UnetShape {
    in_channels: usize,
    out_channels: usize,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    transformer_depth: Vec<usize>,
    mid_transformer_depth: usize,
    context_dim: usize,
    use_linear_projection: bool,
    adm_in_channels: Option<usize>,
}

/// Family, heads and prediction from a UNet's shape (`None`: a class-embedding width no family
/// has). `last_norm`: the last output transformer's `norm1.bias` key, whose spread tells SD2's
/// v-prediction models from its epsilon ones (ComfyUI's rule).
fn finish_unet(
    sd: &StateDict,
    shape: UnetShape,
    last_norm: &str,
) -> Option<Result<DetectedUnet, LoadErrorKind>> {
    let UnetShape {
        in_channels,
        out_channels,
        block_out_channels,
        layers_per_block,
        transformer_depth,
        mid_transformer_depth,
        context_dim,
        use_linear_projection,
        adm_in_channels,
    } = shape;
    let levels = block_out_channels.len();
    let family = match adm_in_channels {
        // SD2.1 unCLIP (adm 2048 for -H, 1536 for -L, twice the image embedding): SD2's UNet
        // with attention on its first level, which SDXL never has.
        Some(_) if use_linear_projection && transformer_depth.first() > Some(&0) => {
            ModelFamily::Sd2
        }
        Some(a) if a == 2560 || a.checked_sub(5 * 256) == Some(context_dim) => {
            ModelFamily::SdxlRefiner
        }
        Some(a) if a == 2816 || a > 6 * 256 => ModelFamily::SdxlBase,
        Some(_) => return None,
        None if use_linear_projection => ModelFamily::Sd2,
        None => ModelFamily::Sd1,
    };
    let heads = match family {
        ModelFamily::Sd1 => AttentionHeads::PerLevel(vec![8; levels]),
        _ => AttentionHeads::HeadDim(64),
    };
    let config = UNetConfig {
        in_channels,
        out_channels,
        block_out_channels,
        layers_per_block,
        transformer_depth,
        mid_transformer_depth,
        heads,
        context_dim,
        use_linear_projection,
        adm_in_channels,
        norm_num_groups: 32,
        norm_eps: 1e-5,
    };
    if let Err(e) = config.validate() {
        return Some(Err(bad(e)));
    }

    let (prediction, zero_terminal_snr, prediction_source) = if sd.contains("v_pred") {
        (
            Prediction::V,
            sd.contains("ztsnr"),
            PredictionSource::KeyMarker("v_pred".into()),
        )
    } else if family == ModelFamily::Sd2 && config.in_channels == 4 {
        let key = last_norm.to_string();
        match sd.get(&key).ok().and_then(|t| population_std(&t)) {
            Some(std) => {
                let p = if std > 0.09 {
                    Prediction::V
                } else {
                    Prediction::Epsilon
                };
                (p, false, PredictionSource::WeightStatistic { key, std })
            }
            None => (Prediction::Epsilon, false, PredictionSource::FamilyDefault),
        }
    } else {
        (Prediction::Epsilon, false, PredictionSource::FamilyDefault)
    };
    Some(Ok(DetectedUnet {
        family,
        config,
        prediction,
        zero_terminal_snr,
        prediction_source,
    }))
}

/// Whether a file is a bare UNet in diffusers' key layout (a `unet/` weights file on its own, as
/// ComfyUI's UNETLoader also reads).
pub fn is_diffusers_unet(sd: &StateDict) -> bool {
    sd.contains("conv_in.weight") && sd.contains("down_blocks.0.resnets.0.conv1.weight")
}

/// Infers the UNet architecture and family from a bare diffusers-layout UNet's shapes (no
/// config.json beside it): levels, widths and depths are counted from the key names.
pub fn detect_unet_diffusers_layout(sd: &StateDict) -> Result<DetectedUnet, LoadErrorKind> {
    let shapes = sd.shapes();
    let shape = |k: &str| shapes.get(k).map(Vec::as_slice);
    let missing = |k: &str| bad(format!("diffusers-layout UNet without {k}"));
    let dim = |k: &str, i: usize| {
        shape(k)
            .and_then(|s| s.get(i).copied())
            .ok_or_else(|| missing(k))
    };
    let levels = count_indexed(shapes.keys(), "down_blocks.");
    let layers_per_block = count_indexed(shapes.keys(), "down_blocks.0.resnets.");
    if levels == 0 || layers_per_block == 0 {
        return Err(missing("down_blocks.0.resnets.0"));
    }
    let depth_of =
        |block: &str| count_indexed(shapes.keys(), &format!("{block}.transformer_blocks."));
    let mut block_out_channels = Vec::with_capacity(levels);
    let mut transformer_depth = Vec::with_capacity(levels);
    for i in 0..levels {
        block_out_channels.push(dim(&format!("down_blocks.{i}.resnets.0.conv1.weight"), 0)?);
        transformer_depth.push(depth_of(&format!("down_blocks.{i}.attentions.0")));
    }
    for i in 0..levels {
        let up = depth_of(&format!("up_blocks.{i}.attentions.0"));
        if up != transformer_depth[levels - 1 - i] {
            return Err(bad(format!(
                "up block {i} has transformer depth {up}, its down level has {}",
                transformer_depth[levels - 1 - i]
            )));
        }
    }
    let attn_key = shapes
        .keys()
        .filter(|k| k.ends_with("transformer_blocks.0.attn2.to_k.weight"))
        .min()
        .ok_or_else(|| missing("a transformer's attn2.to_k.weight"))?;
    let proj_key = attn_key.replace("transformer_blocks.0.attn2.to_k.weight", "proj_in.weight");
    let last_level = levels - 1;
    finish_unet(
        sd,
        UnetShape {
            in_channels: dim("conv_in.weight", 1)?,
            out_channels: dim("conv_out.weight", 0)?,
            block_out_channels,
            layers_per_block,
            transformer_depth,
            mid_transformer_depth: depth_of("mid_block.attentions.0"),
            context_dim: dim(attn_key, 1)?,
            use_linear_projection: shape(&proj_key).ok_or_else(|| missing(&proj_key))?.len() == 2,
            adm_in_channels: shape("add_embedding.linear_1.weight").and_then(|s| s.get(1).copied()),
        },
        &format!(
            "up_blocks.{last_level}.attentions.{layers_per_block}.transformer_blocks.0.norm1.bias"
        ),
    )
    .ok_or_else(|| bad("a class embedding of a width no SD family has".into()))?
}

fn population_std(t: &candle_core::Tensor) -> Option<f64> {
    let v: Vec<f64> = t
        .to_dtype(candle_core::DType::F64)
        .ok()?
        .flatten_all()
        .ok()?
        .to_vec1()
        .ok()?;
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    Some((v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt())
}

/// Infers the VAE architecture from LDM-layout keys under `prefix` (e.g. `first_stage_model.`).
pub fn detect_vae_ldm(
    sd: &StateDict,
    prefix: &str,
    scaling_factor: f64,
) -> Result<VaeConfig, LoadErrorKind> {
    detect_vae(sd, prefix, scaling_factor, "down.{level}.block.{layer}")
}

/// Infers the VAE architecture from diffusers-layout keys under `prefix` (a `vae/` weights file
/// without its config.json, e.g. a standalone fp16-fix VAE).
pub fn detect_vae_diffusers(
    sd: &StateDict,
    prefix: &str,
    scaling_factor: f64,
) -> Result<VaeConfig, LoadErrorKind> {
    detect_vae(
        sd,
        prefix,
        scaling_factor,
        "down_blocks.{level}.resnets.{layer}",
    )
}

/// The two layouts differ only in how an encoder block is named: `block` with `{level}` and
/// `{layer}` in it.
fn detect_vae(
    sd: &StateDict,
    prefix: &str,
    scaling_factor: f64,
    block: &str,
) -> Result<VaeConfig, LoadErrorKind> {
    let shape = |k: &str| sd.shape(&format!("{prefix}{k}"));
    let block_conv = |level: usize, layer: usize| {
        let name = block
            .replace("{level}", &level.to_string())
            .replace("{layer}", &layer.to_string());
        format!("encoder.{name}.conv1.weight")
    };
    let looked_for = || LoadErrorKind::UnknownFamily {
        looked_for: vec![
            format!("{prefix}encoder.conv_in.weight"),
            format!("{prefix}decoder.conv_in.weight"),
        ],
    };
    let conv4 = |k: &str| shape(k).filter(|s| s.len() == 4).ok_or_else(looked_for);
    let conv_in = conv4("encoder.conv_in.weight")?;
    let dec_in = conv4("decoder.conv_in.weight")?;
    let dec_out = conv4("decoder.conv_out.weight")?;
    let mut channels = Vec::new();
    while let Some(s) = shape(&block_conv(channels.len(), 0)) {
        channels.push(s.first().copied().unwrap_or(0));
    }
    let mut layers = 0;
    while shape(&block_conv(0, layers)).is_some() {
        layers += 1;
    }
    if channels.is_empty() || layers == 0 {
        let pattern = block.replace("{level}", "N").replace("{layer}", "M");
        return Err(bad(format!("no {prefix}encoder.{pattern} weights")));
    }
    Ok(VaeConfig {
        in_channels: conv_in[1],
        out_channels: dec_out[0],
        block_out_channels: channels,
        layers_per_block: layers,
        latent_channels: dec_in[1],
        norm_num_groups: 32,
        scaling_factor,
    })
}

/// The largest `N` + 1 over the `keys` of the form `{prefix}N.…` (blocks, layers or resnets
/// counted by their indices), 0 when there are none.
pub(crate) fn count_indexed<S: AsRef<str>>(
    keys: impl IntoIterator<Item = S>,
    prefix: &str,
) -> usize {
    keys.into_iter()
        .filter_map(|k| {
            k.as_ref()
                .strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}
