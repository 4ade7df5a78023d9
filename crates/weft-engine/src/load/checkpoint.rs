//! Loading models from single-file LDM checkpoints and diffusers folders.
//!
//! A single-file checkpoint is split by prefix: `model.diffusion_model.` (UNet),
//! `first_stage_model.` (VAE), and the text encoders under `cond_stage_model.` (SD1/SD2) or
//! `conditioner.embedders.N.` (SDXL); text encoder weights are returned raw (prefix removed) for
//! the CLIP loader to convert. Weights are renamed to diffusers names through the renaming
//! `VarBuilder` backend (`load::renaming`) and converted once to the model dtype as they
//! are read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::load::detect::{
    detect_unet, detect_vae_diffusers, detect_vae_ldm, DetectedUnet, ModelFamily, Prediction,
    PredictionSource,
};
use crate::load::file::StateDict;
use crate::load::keymap::{invert, unet_ldm_to_diffusers, vae_ldm_to_diffusers};
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
use crate::unet::{AttentionHeads, UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoEncoderKL, VaeConfig};

/// Prefix of the UNet in single-file checkpoints.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// Prefix of the VAE in single-file checkpoints.
pub const VAE_PREFIX: &str = "first_stage_model.";

/// A text encoder's raw weights from a single-file checkpoint.
#[derive(Debug, Clone)]
pub struct ClipComponent {
    /// The prefix the weights had (`cond_stage_model.`, `conditioner.embedders.1.`, ...).
    pub prefix: String,
    /// Weights with the prefix removed, in the file's own layout and dtype (HF transformers names
    /// such as `transformer.text_model...` for CLIP-L, OpenCLIP names such as
    /// `model.transformer.resblocks...` for OpenCLIP-H/bigG).
    pub tensors: HashMap<String, Tensor>,
}

/// The prefixes of the components a single-file checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Components {
    /// The UNet's prefix (`model.diffusion_model.`, or empty for a bare UNet file); `None` when
    /// the file has no UNet.
    pub unet: Option<String>,
    /// `first_stage_model.` when the file has VAE weights.
    pub vae: Option<String>,
    /// Text encoder prefixes in order (`cond_stage_model.`, `conditioner.embedders.N.`).
    pub clip: Vec<String>,
}

/// Finds the component prefixes present in `sd`.
pub fn split_components(sd: &StateDict) -> Components {
    let has = |p: &str| sd.shapes().keys().any(|k| k.starts_with(p));
    let unet = if has(UNET_PREFIX) {
        Some(UNET_PREFIX.to_string())
    } else if sd.contains("input_blocks.0.0.weight") {
        // A bare LDM UNet file (ComfyUI's models/unet/ layout).
        Some(String::new())
    } else {
        None
    };
    let vae = has(VAE_PREFIX).then(|| VAE_PREFIX.to_string());
    let mut clip: Vec<String> = Vec::new();
    if has("cond_stage_model.") {
        clip.push("cond_stage_model.".into());
    }
    let mut embedders: Vec<usize> = sd
        .shapes()
        .keys()
        .filter_map(|k| {
            k.strip_prefix("conditioner.embedders.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    embedders.sort_unstable();
    embedders.dedup();
    clip.extend(
        embedders
            .into_iter()
            .map(|n| format!("conditioner.embedders.{n}.")),
    );
    Components { unet, vae, clip }
}

/// Reads the text encoders' raw weights (prefix removed) for the CLIP loader.
pub fn clip_components(
    sd: &StateDict,
    components: &Components,
) -> Result<Vec<ClipComponent>, LoadError> {
    components
        .clip
        .iter()
        .map(|prefix| {
            Ok(ClipComponent {
                prefix: prefix.clone(),
                tensors: sd.get_prefixed(prefix)?,
            })
        })
        .collect()
}

/// Diffusers name -> file key for the LDM UNet under `prefix`.
pub fn unet_ldm_names(
    sd: &StateDict,
    prefix: &str,
    layers_per_block: usize,
) -> HashMap<String, String> {
    let keys = sd
        .shapes()
        .keys()
        .filter(|k| k.starts_with(prefix))
        .cloned();
    invert(keys, |k| {
        unet_ldm_to_diffusers(k.strip_prefix(prefix)?, layers_per_block)
    })
}

/// Diffusers name -> file key for the LDM VAE under `prefix`.
pub fn vae_ldm_names(sd: &StateDict, prefix: &str, levels: usize) -> HashMap<String, String> {
    let keys = sd
        .shapes()
        .keys()
        .filter(|k| k.starts_with(prefix))
        .cloned();
    invert(keys, |k| {
        vae_ldm_to_diffusers(k.strip_prefix(prefix)?, levels)
    })
}

/// Builds the UNet from LDM-named weights under `prefix`.
pub fn load_unet_ldm(
    sd: &Arc<StateDict>,
    prefix: &str,
    cfg: &UNetConfig,
    dtype: DType,
    device: &Device,
) -> Result<UNet2DConditionModel, LoadError> {
    let names = unet_ldm_names(sd, prefix, cfg.layers_per_block);
    Renaming::new(names)
        .squeeze_trailing_ones()
        .build(sd, dtype, device, |vb| UNet2DConditionModel::new(vb, cfg))
}

/// Builds the VAE from LDM-named weights under `prefix`.
pub fn load_vae_ldm(
    sd: &Arc<StateDict>,
    prefix: &str,
    cfg: &VaeConfig,
    dtype: DType,
    device: &Device,
) -> Result<AutoEncoderKL, LoadError> {
    let names = vae_ldm_names(sd, prefix, cfg.block_out_channels.len());
    build_vae(Renaming::new(names), sd, cfg, dtype, device)
}

/// Builds a VAE that keeps the weights it took, for saving.
fn build_vae(
    renaming: Renaming,
    sd: &Arc<StateDict>,
    cfg: &VaeConfig,
    dtype: DType,
    device: &Device,
) -> Result<AutoEncoderKL, LoadError> {
    let (vae, weights) =
        renaming
            .squeeze_trailing_ones()
            .build_keeping(sd, dtype, device, |vb| AutoEncoderKL::new(vb, cfg))?;
    Ok(vae.with_weights(weights))
}

/// A loaded single-file checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Family, config and prediction type read off the UNet weights.
    pub detected: DetectedUnet,
    /// The diffusion model, on the requested device and dtype.
    pub unet: UNet2DConditionModel,
    /// `None` when the file has no `first_stage_model.` weights.
    pub vae: Option<AutoEncoderKL>,
    /// Raw text encoder weights for the CLIP loader.
    pub clip: Vec<ClipComponent>,
}

/// Opens a single-file checkpoint (`.safetensors` or pickled `.ckpt`/`.pt`), detects its family
/// and builds the UNet and VAE in `dtype` (f16/bf16 weights are converted once, here).
pub fn load_checkpoint(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<Checkpoint, LoadError> {
    let sd = Arc::new(StateDict::open(path)?);
    let components = split_components(&sd);
    let unet_prefix = components.unet.clone().ok_or_else(|| {
        LoadError::new(
            path,
            LoadErrorKind::UnknownFamily {
                looked_for: crate::load::detect::distinguishing_keys(UNET_PREFIX),
            },
        )
    })?;
    let detected = detect_unet(&sd, &unet_prefix).map_err(|k| LoadError::new(path, k))?;
    let unet = load_unet_ldm(&sd, &unet_prefix, &detected.config, dtype, device)?;
    let vae = match &components.vae {
        Some(prefix) => {
            let cfg = detect_vae_ldm(&sd, prefix, detected.family.latent_scale())
                .map_err(|k| LoadError::new(path, k))?;
            Some(load_vae_ldm(&sd, prefix, &cfg, dtype, device)?)
        }
        None => None,
    };
    let clip = clip_components(&sd, &components)?;
    Ok(Checkpoint {
        detected,
        unet,
        vae,
        clip,
    })
}

/// Loads a standalone VAE file (ComfyUI's models/vae): LDM names with or without the
/// `first_stage_model.` prefix, or diffusers names (a `vae/` weights file without config.json).
/// `scaling_factor` comes from the model family the VAE is used with.
pub fn load_vae_file(
    path: &Path,
    scaling_factor: f64,
    dtype: DType,
    device: &Device,
) -> Result<AutoEncoderKL, LoadError> {
    let sd = Arc::new(StateDict::open(path)?);
    for prefix in [VAE_PREFIX, "", "vae."] {
        if sd.contains(&format!("{prefix}encoder.down.0.block.0.conv1.weight")) {
            let cfg =
                detect_vae_ldm(&sd, prefix, scaling_factor).map_err(|k| LoadError::new(path, k))?;
            return load_vae_ldm(&sd, prefix, &cfg, dtype, device);
        }
        if sd.contains(&format!(
            "{prefix}encoder.down_blocks.0.resnets.0.conv1.weight"
        )) {
            let cfg = detect_vae_diffusers(&sd, prefix, scaling_factor)
                .map_err(|k| LoadError::new(path, k))?;
            let names = sd
                .shapes()
                .keys()
                .filter_map(|k| Some((k.strip_prefix(prefix)?.to_string(), k.clone())))
                .collect();
            return build_vae(Renaming::new(names), &sd, &cfg, dtype, device);
        }
    }
    Err(LoadError::new(
        path,
        LoadErrorKind::UnknownFamily {
            looked_for: vec![
                format!("{VAE_PREFIX}encoder.down.0.block.0.conv1.weight"),
                "encoder.down.0.block.0.conv1.weight".into(),
                "encoder.down_blocks.0.resnets.0.conv1.weight".into(),
            ],
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Diffusers folders

/// Finds and opens a diffusers component's weights: `<stem>.safetensors`, then
/// `<stem>.fp16.safetensors`, then a sharded `<stem>.safetensors.index.json`, then `<stem>.bin`.
pub fn open_component(dir: &Path, stem: &str) -> Result<StateDict, LoadError> {
    for name in [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
    ] {
        let p = dir.join(&name);
        if p.is_file() {
            return StateDict::open(&p);
        }
    }
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| LoadError::new(&index, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LoadError::new(&index, LoadErrorKind::BadConfig(e.to_string())))?;
        let mut files: Vec<String> = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                LoadError::new(&index, LoadErrorKind::BadConfig("no weight_map".into()))
            })?
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        return StateDict::open_shards(&paths);
    }
    for name in [format!("{stem}.bin"), format!("{stem}.fp16.bin")] {
        let p = dir.join(&name);
        if p.is_file() {
            return StateDict::open(&p);
        }
    }
    Err(LoadError::new(
        &dir.join(format!("{stem}.safetensors")),
        LoadErrorKind::NotACheckpoint(format!(
            "no {stem}(.fp16).safetensors, sharded index or .bin in the folder"
        )),
    ))
}

fn read_json(path: &Path) -> Result<serde_json::Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::new(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| LoadError::new(path, LoadErrorKind::BadConfig(e.to_string())))
}

fn usize_list(v: Option<&serde_json::Value>, levels: usize, default: usize) -> Option<Vec<usize>> {
    match v {
        None | Some(serde_json::Value::Null) => Some(vec![default; levels]),
        Some(serde_json::Value::Array(a)) => {
            a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect()
        }
        Some(x) => x.as_u64().map(|x| vec![x as usize; levels]),
    }
}

/// Parses a diffusers `unet/config.json` into our config and family.
pub fn unet_config_from_diffusers(
    value: &serde_json::Value,
) -> Result<(UNetConfig, ModelFamily), String> {
    let get_usize = |k: &str, d: usize| {
        value
            .get(k)
            .and_then(|v| v.as_u64())
            .map_or(d, |v| v as usize)
    };
    let block_out_channels = usize_list(value.get("block_out_channels"), 0, 0)
        .filter(|v| !v.is_empty())
        .ok_or("no block_out_channels")?;
    let levels = block_out_channels.len();
    let down_types: Vec<String> = value
        .get("down_block_types")
        .and_then(|v| v.as_array())
        .ok_or("no down_block_types")?
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    if down_types.len() != levels {
        return Err("down_block_types and block_out_channels differ in length".into());
    }
    let depths = usize_list(value.get("transformer_layers_per_block"), levels, 1)
        .ok_or("bad transformer_layers_per_block")?;
    if depths.len() != levels {
        return Err("transformer_layers_per_block has the wrong length".into());
    }
    let transformer_depth = down_types
        .iter()
        .zip(&depths)
        .map(|(t, d)| if t.contains("CrossAttn") { *d } else { 0 })
        .collect();
    // diffusers' `attention_head_dim` is really the head count (unless num_attention_heads is set).
    let heads_value = match value.get("num_attention_heads") {
        Some(v) if !v.is_null() => Some(v),
        _ => value.get("attention_head_dim"),
    };
    let heads = usize_list(heads_value, levels, 8).ok_or("bad attention_head_dim")?;
    let context_dim = value
        .get("cross_attention_dim")
        .and_then(|v| v.as_u64())
        .ok_or("no integer cross_attention_dim")? as usize;
    let use_linear_projection = value
        .get("use_linear_projection")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let adm_in_channels = match value.get("addition_embed_type").and_then(|v| v.as_str()) {
        Some("text_time") => {
            Some(get_usize("projection_class_embeddings_input_dim", 0)).filter(|a| *a > 0)
        }
        Some(other) => return Err(format!("unsupported addition_embed_type {other}")),
        None => None,
    };
    let cfg = UNetConfig {
        in_channels: get_usize("in_channels", 4),
        out_channels: get_usize("out_channels", 4),
        layers_per_block: get_usize("layers_per_block", 2),
        transformer_depth,
        mid_transformer_depth: depths.last().copied().unwrap_or(1),
        heads: AttentionHeads::PerLevel(heads),
        context_dim,
        use_linear_projection,
        adm_in_channels,
        norm_num_groups: get_usize("norm_num_groups", 32),
        norm_eps: value
            .get("norm_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5),
        block_out_channels,
    };
    cfg.validate()?;
    let family = match adm_in_channels {
        Some(a) if a == 2560 || a.checked_sub(5 * 256) == Some(context_dim) => {
            ModelFamily::SdxlRefiner
        }
        Some(_) => ModelFamily::SdxlBase,
        None if use_linear_projection => ModelFamily::Sd2,
        None => ModelFamily::Sd1,
    };
    Ok((cfg, family))
}

/// Parses a diffusers `vae/config.json`.
pub fn vae_config_from_diffusers(value: &serde_json::Value) -> Result<VaeConfig, String> {
    let get_usize = |k: &str, d: usize| {
        value
            .get(k)
            .and_then(|v| v.as_u64())
            .map_or(d, |v| v as usize)
    };
    let block_out_channels = usize_list(value.get("block_out_channels"), 0, 0)
        .filter(|v| !v.is_empty())
        .ok_or("no block_out_channels")?;
    Ok(VaeConfig {
        in_channels: get_usize("in_channels", 3),
        out_channels: get_usize("out_channels", 3),
        block_out_channels,
        layers_per_block: get_usize("layers_per_block", 2),
        latent_channels: get_usize("latent_channels", 4),
        norm_num_groups: get_usize("norm_num_groups", 32),
        scaling_factor: value
            .get("scaling_factor")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.18215),
    })
}

/// Identity names for a diffusers-layout file.
fn identity_names(sd: &StateDict) -> HashMap<String, String> {
    sd.shapes().keys().map(|k| (k.clone(), k.clone())).collect()
}

/// A diffusers pipeline folder, loaded.
#[derive(Debug)]
pub struct DiffusersPipeline {
    /// Family and config from `unet/config.json`; prediction from the scheduler config.
    pub detected: DetectedUnet,
    /// The `unet/` model.
    pub unet: UNet2DConditionModel,
    /// The `vae/` model.
    pub vae: AutoEncoderKL,
    /// `("text_encoder", weights)`, `("text_encoder_2", weights)`: HF transformers names, raw.
    pub text_encoders: Vec<NamedWeights>,
}

/// Loads `root/unet` (config.json + diffusion_pytorch_model[.fp16].safetensors).
pub fn load_unet_diffusers(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(DetectedUnet, UNet2DConditionModel), LoadError> {
    let detected = detect_unet_diffusers(dir)?;
    let sd = Arc::new(open_component(dir, "diffusion_pytorch_model")?);
    let unet = Renaming::new(identity_names(&sd))
        .squeeze_trailing_ones()
        .build(&sd, dtype, device, |vb| {
            UNet2DConditionModel::new(vb, &detected.config)
        })?;
    Ok((detected, unet))
}

/// The family, config and prediction of a diffusers `unet/` folder: its `config.json`, and the
/// pipeline's `scheduler/scheduler_config.json` for what the model predicts.
pub fn detect_unet_diffusers(dir: &Path) -> Result<DetectedUnet, LoadError> {
    let cfg_path = dir.join("config.json");
    let (config, family) = unet_config_from_diffusers(&read_json(&cfg_path)?)
        .map_err(|e| LoadError::new(&cfg_path, LoadErrorKind::BadConfig(e)))?;
    let sched = dir
        .parent()
        .map(|p| p.join("scheduler").join("scheduler_config.json"));
    let v = sched
        .as_deref()
        .filter(|p| p.is_file())
        .and_then(|p| read_json(p).ok())
        .and_then(|j| {
            j.get("prediction_type")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        });
    let (prediction, source) = match v.as_deref() {
        Some("v_prediction") => (
            Prediction::V,
            PredictionSource::KeyMarker("scheduler_config.json prediction_type".into()),
        ),
        _ => (Prediction::Epsilon, PredictionSource::FamilyDefault),
    };
    Ok(DetectedUnet {
        family,
        config,
        prediction,
        zero_terminal_snr: false,
        prediction_source: source,
    })
}

/// A component's name and its weights by name.
pub type NamedWeights = (String, HashMap<String, Tensor>);

/// The raw HF-named weights of a pipeline's `text_encoder/` and `text_encoder_2/`
/// (model[.fp16].safetensors), those present, in that order.
pub fn diffusers_text_encoders(root: &Path) -> Result<Vec<NamedWeights>, LoadError> {
    let mut text_encoders = Vec::new();
    for name in ["text_encoder", "text_encoder_2"] {
        let dir = root.join(name);
        if dir.is_dir() {
            let sd = open_component(&dir, "model")?;
            text_encoders.push((name.to_string(), sd.get_prefixed("")?));
        }
    }
    Ok(text_encoders)
}

/// Loads `root/vae` (config.json + diffusion_pytorch_model[.fp16].safetensors).
pub fn load_vae_diffusers(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<AutoEncoderKL, LoadError> {
    let cfg_path = dir.join("config.json");
    let cfg = vae_config_from_diffusers(&read_json(&cfg_path)?)
        .map_err(|e| LoadError::new(&cfg_path, LoadErrorKind::BadConfig(e)))?;
    let sd = Arc::new(open_component(dir, "diffusion_pytorch_model")?);
    build_vae(Renaming::new(identity_names(&sd)), &sd, &cfg, dtype, device)
}

/// Loads a diffusers pipeline folder: unet/, vae/, and the raw weights of text_encoder/ and
/// text_encoder_2/ (model[.fp16].safetensors) when present.
pub fn load_diffusers_folder(
    root: &Path,
    dtype: DType,
    device: &Device,
) -> Result<DiffusersPipeline, LoadError> {
    let (detected, unet) = load_unet_diffusers(&root.join("unet"), dtype, device)?;
    let vae = load_vae_diffusers(&root.join("vae"), dtype, device)?;
    let text_encoders = diffusers_text_encoders(root)?;
    Ok(DiffusersPipeline {
        detected,
        unet,
        vae,
        text_encoders,
    })
}
