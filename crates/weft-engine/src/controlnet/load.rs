//! Loading ControlNets and T2I-Adapters from files, as ComfyUI's `load_controlnet` /
//! `load_t2i_adapter` accept them:
//!
//! - ControlNet, LDM layout (lllyasviel `cldm`): keys under `control_model.` (the original `.pth`
//!   files, which also hold a whole SD model that is ignored) or bare (ControlNet 1.1 and most
//!   SD2/SDXL community files). `time_embed`, `label_emb`, `input_blocks`, `middle_block` are
//!   renamed with the UNet's map ([`unet_ldm_to_diffusers`]); `input_hint_block.{0,2,..,14}`,
//!   `zero_convs.k.0` and `middle_block_out.0` as diffusers' `convert_controlnet_checkpoint` does.
//! - ControlNet, diffusers layout (a `diffusion_pytorch_model.safetensors`, with or without its
//!   config.json).
//! - T2I-Adapter: diffusers (`adapter.conv_in`, `adapter.body.i.resnets.j`) or TencentARC /
//!   ComfyUI (`conv_in`, `body.k`) names; full SD1, full SDXL (told apart, as ComfyUI does, by a
//!   `conv_in` input of 256 or 768 channels, i.e. a 16x pixel unshuffle) and light adapters.
//!
//! The architecture is read off the tensor shapes, so tiny test models load with their real
//! config. Safetensors and pickles are read through [`StateDict`]. Errors name the file and the
//! tensor.
//!
//! Control-LoRA files (`lora_controlnet`) are recognised and opened here; the ControlNet is built
//! by [`crate::controlnet::control_lora`] from the base model's weights when sampling.
//!
//! "Difference" ControlNets (a `difference` marker; the encoder weights are deltas to the base
//! model's) load with [`load_control_on`], which adds the base model's UNet weights as ComfyUI's
//! `load_controlnet(path, model)` does; [`load_control`] refuses them.
//!
//! Union ControlNets (ControlNet++, xinsir's controlnet-union-sdxl-1.0: `task_embedding`,
//! `transformer_layes.N`, `spatial_ch_projs`, `control_add_embedding`) load in either layout: the
//! union tensors keep their names in both, except the attention's input projection, which
//! diffusers (`nn.MultiheadAttention`) calls `attn.in_proj_weight` / `in_proj_bias` and ComfyUI,
//! after converting a diffusers file, `attn.in_proj.weight` / `.bias`; both are accepted. (ComfyUI
//! itself only builds the union parts for diffusers-named files and ignores them in LDM-named ones.)
//!
//! Not supported, each with an error that says so: adapters with `skep` or strided-conv
//! downsampling (`down_opt.op`).
//! Stable Cascade ControlNets are not recognised (an unknown-format error listing the keys looked
//! for), nor are pickles that nest the weights under an `adapter` key.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::controlnet::adapter::{AdapterKind, T2IAdapter, T2IAdapterConfig};
use crate::controlnet::base::{BaseSource, BaseWeights};
use crate::controlnet::control_lora::ControlLora;
use crate::controlnet::union::UnionConfig;
use crate::controlnet::{ControlNetConfig, ControlNetModel};
use crate::load::checkpoint::unet_config_from_diffusers;
use crate::load::file::StateDict;
use crate::load::keymap::unet_ldm_to_diffusers;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
use crate::unet::AttentionHeads;

/// Prefix of the ControlNet in lllyasviel's original `.pth` files.
pub const CONTROL_MODEL_PREFIX: &str = "control_model.";

/// What a control file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFileKind {
    /// A ControlNet in LDM layout; `prefix` is `control_model.` or empty.
    ControlNetLdm {
        /// The key prefix of its weights.
        prefix: String,
    },
    /// A "difference" ControlNet in LDM layout: the weights the base UNet also has are deltas to
    /// it.
    ControlNetDifference {
        /// The key prefix of its weights (`control_model.` or empty).
        prefix: String,
    },
    /// A ControlNet in diffusers layout.
    ControlNetDiffusers,
    /// A T2I-Adapter, in diffusers (`adapter.` prefix) or TencentARC names.
    Adapter {
        /// `true` for diffusers names, `false` for TencentARC's.
        diffusers_names: bool,
    },
    /// A Stability Control-LoRA (`lora_controlnet` marker): LDM names, low-rank deltas against
    /// the base UNet; see [`crate::controlnet::control_lora`].
    ControlLora,
}

/// A loaded control model.
#[derive(Debug)]
pub enum ControlModel {
    /// A ControlNet (plain, difference-merged or union), giving residuals for the UNet's skips.
    ControlNet(Box<ControlNetModel>),
    /// A T2I-Adapter, giving features added inside the UNet's encoder.
    Adapter(T2IAdapter),
    /// A Control-LoRA, built into a ControlNet on the model it is sampled with.
    ControlLora(ControlLora),
}

/// A loaded control file.
#[derive(Debug)]
pub struct LoadedControl {
    /// Shared by the copies [`LoadedControl::with_control_type`] makes.
    pub model: Arc<ControlModel>,
    /// Shuffle ControlNets average their residuals over space; ComfyUI decides it by the file name
    /// (`*_shuffle`, `*_shuffle_fp16`), and so do we.
    pub global_average_pooling: bool,
    /// The union control type (an index into
    /// [`crate::controlnet::union::UNION_CONTROL_TYPES`]) set by SetUnionControlNetType;
    /// `None` is "auto". Kept, and ignored, for controls that are not union ControlNets, as
    /// ComfyUI keeps it in their `extra_args`.
    pub control_type: Option<usize>,
}

impl LoadedControl {
    /// A loaded control, with no control type set.
    pub fn new(model: ControlModel, global_average_pooling: bool) -> Self {
        Self {
            model: Arc::new(model),
            global_average_pooling,
            control_type: None,
        }
    }

    /// A copy sharing the model, with `control_type` set (ComfyUI's `SetUnionControlNetType`
    /// copies the control and sets its `control_type` extra argument).
    pub fn with_control_type(&self, control_type: Option<usize>) -> Self {
        Self {
            model: Arc::clone(&self.model),
            global_average_pooling: self.global_average_pooling,
            control_type,
        }
    }
}

/// Tells the kind of control file from its keys (ComfyUI's `load_controlnet` order).
pub fn classify(sd: &StateDict) -> Result<ControlFileKind, LoadErrorKind> {
    let unsupported = |what: &str| Err(LoadErrorKind::UnsupportedFormat(what.to_string()));
    if sd.contains("lora_controlnet") {
        return Ok(ControlFileKind::ControlLora);
    }
    if sd.contains("difference") {
        for prefix in [CONTROL_MODEL_PREFIX, ""] {
            if sd.contains(&format!("{prefix}zero_convs.0.0.weight")) {
                return Ok(ControlFileKind::ControlNetDifference {
                    prefix: prefix.to_string(),
                });
            }
        }
        return unsupported("a difference controlnet without LDM zero_convs is not supported");
    }
    if sd.contains("controlnet_cond_embedding.conv_in.weight") {
        return Ok(ControlFileKind::ControlNetDiffusers);
    }
    for prefix in [CONTROL_MODEL_PREFIX, ""] {
        if sd.contains(&format!("{prefix}zero_convs.0.0.weight")) {
            return Ok(ControlFileKind::ControlNetLdm {
                prefix: prefix.to_string(),
            });
        }
    }
    if sd.contains("adapter.conv_in.weight") || sd.contains("adapter.body.0.in_conv.weight") {
        return Ok(ControlFileKind::Adapter {
            diffusers_names: true,
        });
    }
    if sd.contains("conv_in.weight") && sd.contains("body.0.block1.weight")
        || sd.contains("body.0.in_conv.weight")
    {
        return Ok(ControlFileKind::Adapter {
            diffusers_names: false,
        });
    }
    Err(LoadErrorKind::UnknownFamily {
        looked_for: vec![
            "controlnet_cond_embedding.conv_in.weight".into(),
            format!("{CONTROL_MODEL_PREFIX}zero_convs.0.0.weight"),
            "zero_convs.0.0.weight".into(),
            "adapter.conv_in.weight".into(),
            "conv_in.weight + body.0.block1.weight".into(),
            "body.0.in_conv.weight".into(),
        ],
    })
}

/// Loads any supported control file (ComfyUI's `ControlNetLoader`), in `dtype`. Difference
/// ControlNets need the base model: see [`load_control_on`].
pub fn load_control(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<LoadedControl, LoadError> {
    load_control_inner(path, None, dtype, device)
}

/// [`load_control`] for a file meant for the model whose diffusers-named UNet weights are `base`
/// (ComfyUI's `DiffControlNetLoader`): a difference ControlNet gets `base` added to every weight
/// the UNet also has; other files load as [`load_control`] loads them.
pub fn load_control_on(
    path: &Path,
    base: &Arc<BaseWeights>,
    dtype: DType,
    device: &Device,
) -> Result<LoadedControl, LoadError> {
    load_control_inner(path, Some(base), dtype, device)
}

fn load_control_inner(
    path: &Path,
    base: Option<&Arc<BaseWeights>>,
    dtype: DType,
    device: &Device,
) -> Result<LoadedControl, LoadError> {
    let sd = Arc::new(StateDict::open(path)?);
    let kind = classify(&sd).map_err(|k| LoadError::new(path, k))?;
    let model = match kind {
        ControlFileKind::ControlNetDifference { prefix } => {
            let base = base.ok_or_else(|| LoadError::new(path, needs_model()))?;
            ControlModel::ControlNet(Box::new(load_difference_from(
                &sd, &prefix, base, dtype, device,
            )?))
        }
        ControlFileKind::ControlLora => {
            ControlModel::ControlLora(ControlLora::from_state_dict(sd)?)
        }
        ControlFileKind::Adapter { diffusers_names } => {
            ControlModel::Adapter(load_adapter_from(&sd, diffusers_names, dtype, device)?)
        }
        kind => {
            ControlModel::ControlNet(Box::new(load_controlnet_from(&sd, &kind, dtype, device)?))
        }
    };
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    Ok(LoadedControl::new(
        model,
        stem.ends_with("_shuffle") || stem.ends_with("_shuffle_fp16"),
    ))
}

/// Loads a ControlNet file (either layout); a T2I-Adapter file is an error.
pub fn load_controlnet(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<ControlNetModel, LoadError> {
    let sd = Arc::new(StateDict::open(path)?);
    let kind = classify(&sd).map_err(|k| LoadError::new(path, k))?;
    match kind {
        ControlFileKind::Adapter { .. } => {
            return Err(LoadError::new(
                path,
                LoadErrorKind::UnsupportedFormat("this is a t2i-adapter, not a controlnet".into()),
            ))
        }
        ControlFileKind::ControlLora => return Err(LoadError::new(path, needs_base())),
        ControlFileKind::ControlNetDifference { .. } => {
            return Err(LoadError::new(path, needs_model()))
        }
        _ => {}
    }
    load_controlnet_from(&sd, &kind, dtype, device)
}

fn needs_model() -> LoadErrorKind {
    LoadErrorKind::UnsupportedFormat(
        "this is a difference controlnet: its weights are added to the base model's; load it with \
         DiffControlNetLoader and the model"
            .into(),
    )
}

/// Builds a difference ControlNet: every weight whose name the base UNet also has is the file's
/// plus the base's (in f32), the rest (hint block, zero convs) is the file's.
fn load_difference_from(
    sd: &Arc<StateDict>,
    prefix: &str,
    base: &Arc<BaseWeights>,
    dtype: DType,
    device: &Device,
) -> Result<ControlNetModel, LoadError> {
    let err = |k| LoadError::new(sd.path(), k);
    let names = controlnet_ldm_names(sd, prefix).map_err(err)?;
    let cfg = detect_controlnet(sd, &names).map_err(err)?;
    let sources = names
        .into_iter()
        .map(|(name, key)| {
            let source = if base.contains_key(&name) {
                BaseSource::Difference {
                    key,
                    base: name.clone(),
                }
            } else {
                BaseSource::Key(key)
            };
            (name, source)
        })
        .collect();
    Renaming::with_context(sources, Arc::clone(base))
        .warn_unused(UNUSED_WARNING)
        .build(sd, dtype, device, |vb| ControlNetModel::new(vb, &cfg))
}

fn needs_base() -> LoadErrorKind {
    LoadErrorKind::UnsupportedFormat(
        "this is a control-lora: it is built on the base model's unet when sampling; load it \
         with load_control"
            .into(),
    )
}

/// Loads a diffusers ControlNet folder (`config.json` + `diffusion_pytorch_model[.fp16]
/// .safetensors`); the config is checked against the weights' shapes, and its
/// `global_pool_conditions` (shuffle) turns on global average pooling.
pub fn load_controlnet_diffusers_dir(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<LoadedControl, LoadError> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| LoadError::new(&cfg_path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LoadError::new(&cfg_path, LoadErrorKind::BadConfig(e.to_string())))?;
    let from_json = controlnet_config_from_diffusers(&value)
        .map_err(|e| LoadError::new(&cfg_path, LoadErrorKind::BadConfig(e)))?;
    let sd = Arc::new(crate::load::checkpoint::open_component(
        dir,
        "diffusion_pytorch_model",
    )?);
    let names = diffusers_names(&sd);
    let from_shapes = detect_controlnet(&sd, &names).map_err(|k| LoadError::new(sd.path(), k))?;
    // Heads cannot be read off shapes; everything else must agree.
    let comparable = |c: &ControlNetConfig| ControlNetConfig {
        encoder: crate::unet::UNetConfig {
            heads: AttentionHeads::HeadDim(0),
            out_channels: 0,
            ..c.encoder.clone()
        },
        union: c.union.clone().map(|u| UnionConfig { heads: 0, ..u }),
        ..c.clone()
    };
    if comparable(&from_json) != comparable(&from_shapes) {
        return Err(LoadError::new(
            &cfg_path,
            LoadErrorKind::BadConfig(format!(
                "config.json describes {from_json:?} but the weights have {from_shapes:?}"
            )),
        ));
    }
    let model =
        Renaming::new(names)
            .warn_unused(UNUSED_WARNING)
            .build(&sd, dtype, device, |vb| {
                ControlNetModel::new(vb, &from_json)
            })?;
    let pooled = value
        .get("global_pool_conditions")
        .and_then(|v| v.as_bool());
    Ok(LoadedControl::new(
        ControlModel::ControlNet(Box::new(model)),
        pooled == Some(true),
    ))
}

/// Parses a diffusers ControlNet `config.json` (its `global_pool_conditions` is a property of the
/// control, not of the architecture: see [`load_controlnet_diffusers_dir`]).
pub fn controlnet_config_from_diffusers(
    value: &serde_json::Value,
) -> Result<ControlNetConfig, String> {
    let (encoder, _) = unet_config_from_diffusers(value)?;
    let hint_channels = value
        .get("conditioning_channels")
        .and_then(|v| v.as_u64())
        .map_or(3, |v| v as usize);
    let hint_block_channels = match value.get("conditioning_embedding_out_channels") {
        None | Some(serde_json::Value::Null) => vec![16, 32, 96, 256],
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or("bad conditioning_embedding_out_channels")?,
    };
    // diffusers `ControlNetUnionModel` (its defaults where a field is missing).
    let union = if value.get("num_control_type").is_some() {
        let field = |name: &str, default: u64| -> Result<usize, String> {
            match value.get(name) {
                None | Some(serde_json::Value::Null) => Ok(default as usize),
                Some(v) => v
                    .as_u64()
                    .map(|v| v as usize)
                    .ok_or_else(|| format!("bad {name}")),
            }
        };
        Some(UnionConfig {
            num_control_types: field("num_control_type", 6)?,
            channels: field("num_trans_channel", 320)?,
            heads: field("num_trans_head", 8)?,
            layers: field("num_trans_layer", 1)?,
            type_embed_dim: field("addition_time_embed_dim", 256)?,
        })
    } else {
        None
    };
    let cfg = ControlNetConfig {
        encoder,
        hint_channels,
        hint_block_channels,
        union,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The tensors a union ControlNet adds, under the same names in both layouts.
const UNION_PREFIXES: [&str; 4] = [
    "task_embedding",
    "transformer_layes.",
    "spatial_ch_projs.",
    "control_add_embedding.",
];

/// The model (diffusers) name of a union tensor key: ComfyUI's `attn.in_proj.weight` becomes
/// `nn.MultiheadAttention`'s `attn.in_proj_weight`. `None` for other keys.
pub fn union_key_to_diffusers(key: &str) -> Option<String> {
    UNION_PREFIXES
        .iter()
        .any(|p| key.starts_with(p))
        .then(|| key.replace(".attn.in_proj.", ".attn.in_proj_"))
}

/// Model names for a diffusers-layout ControlNet file (identity, union tensors normalised).
fn diffusers_names(sd: &StateDict) -> HashMap<String, String> {
    sd.shapes()
        .keys()
        .map(|k| {
            (
                union_key_to_diffusers(k).unwrap_or_else(|| k.clone()),
                k.clone(),
            )
        })
        .collect()
}

/// Maps one LDM ControlNet key (prefix removed) to its diffusers name; `None` for keys that are
/// not ControlNet weights. `layers_per_block` is the resnets per level (2), `hint_convs` the
/// number of convolutions in `input_hint_block` (8: indices 0, 2, .., 14).
pub fn controlnet_ldm_to_diffusers(
    key: &str,
    layers_per_block: usize,
    hint_convs: usize,
) -> Option<String> {
    if let Some(rest) = key.strip_prefix("input_hint_block.") {
        let (n, param) = rest.split_once('.')?;
        let n: usize = n.parse().ok()?;
        if !n.is_multiple_of(2) {
            return None;
        }
        let k = n / 2;
        let name = if k == 0 {
            "conv_in".to_string()
        } else if k + 1 == hint_convs {
            "conv_out".to_string()
        } else if k + 1 < hint_convs {
            format!("blocks.{}", k - 1)
        } else {
            return None;
        };
        return Some(format!("controlnet_cond_embedding.{name}.{param}"));
    }
    if let Some(rest) = key.strip_prefix("zero_convs.") {
        let (k, rest) = rest.split_once('.')?;
        let param = rest.strip_prefix("0.")?;
        return Some(format!("controlnet_down_blocks.{k}.{param}"));
    }
    if let Some(param) = key.strip_prefix("middle_block_out.0.") {
        return Some(format!("controlnet_mid_block.{param}"));
    }
    if key.starts_with("output_blocks.") || key.starts_with("out.") {
        return None;
    }
    if let Some(name) = union_key_to_diffusers(key) {
        return Some(name);
    }
    unet_ldm_to_diffusers(key, layers_per_block)
}

/// Diffusers name -> file key for an LDM ControlNet under `prefix`.
pub fn controlnet_ldm_names(
    sd: &StateDict,
    prefix: &str,
) -> Result<HashMap<String, String>, LoadErrorKind> {
    let keys: Vec<&str> = sd
        .shapes()
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .collect();
    let (layers_per_block, hint_convs) = ldm_structure(&keys, prefix)?;
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            controlnet_ldm_to_diffusers(k, layers_per_block, hint_convs)
                .map(|d| (d, format!("{prefix}{k}")))
        })
        .collect())
}

/// Resnets per level and hint convolutions of LDM-named ControlNet keys (prefix removed).
fn ldm_structure(keys: &[&str], prefix: &str) -> Result<(usize, usize), LoadErrorKind> {
    let mut input_ids = BTreeSet::new();
    let mut down_ids = BTreeSet::new();
    let mut hint_ids = BTreeSet::new();
    for k in keys {
        if let Some((n, tail)) = k
            .strip_prefix("input_blocks.")
            .and_then(|r| r.split_once('.'))
        {
            if let Ok(n) = n.parse::<usize>() {
                input_ids.insert(n);
                if tail.starts_with("0.op.") {
                    down_ids.insert(n);
                }
            }
        }
        if let Some((n, _)) = k
            .strip_prefix("input_hint_block.")
            .and_then(|r| r.split_once('.'))
        {
            if let Ok(n) = n.parse::<usize>() {
                hint_ids.insert(n);
            }
        }
    }
    let levels = down_ids.len() + 1;
    let blocks = input_ids.len().saturating_sub(1);
    if blocks < levels || (blocks - down_ids.len()) % levels != 0 {
        return Err(LoadErrorKind::BadConfig(format!(
            "{blocks} {prefix}input_blocks do not split into {levels} levels"
        )));
    }
    let hint_convs = hint_ids.len();
    if hint_convs < 2 || hint_ids.iter().enumerate().any(|(i, &n)| n != 2 * i) {
        return Err(LoadErrorKind::BadConfig(format!(
            "{prefix}input_hint_block has convolutions {hint_ids:?}, expected 0, 2, 4, .."
        )));
    }
    Ok(((blocks - down_ids.len()) / levels, hint_convs))
}

/// Identity names for the keys under `prefix` (prefix removed on the model side).
fn identity_names(sd: &StateDict, prefix: &str) -> HashMap<String, String> {
    sd.shapes()
        .keys()
        .filter_map(|k| Some((k.strip_prefix(prefix)?.to_string(), k.clone())))
        .collect()
}

/// The largest `N` + 1 over model names `{prefix}N.…`, 0 when there are none.
pub(crate) fn count_indexed(names: &HashMap<String, String>, prefix: &str) -> usize {
    names
        .keys()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}

/// Infers a ControlNet's architecture from its tensor shapes; `names` maps diffusers names to
/// the file's keys.
pub fn detect_controlnet(
    sd: &StateDict,
    names: &HashMap<String, String>,
) -> Result<ControlNetConfig, LoadErrorKind> {
    let shape = |n: &str| names.get(n).and_then(|k| sd.shape(k));
    let require = |n: &str, rank: usize| {
        shape(n)
            .filter(|s| s.len() == rank)
            .ok_or_else(|| LoadErrorKind::MissingTensor(n.to_string()))
    };
    let conv_in = require("conv_in.weight", 4)?;
    let levels = count_indexed(names, "down_blocks.");
    let layers_per_block = count_indexed(names, "down_blocks.0.resnets.");
    if levels == 0 || layers_per_block == 0 {
        return Err(LoadErrorKind::MissingTensor(
            "down_blocks.0.resnets.0.conv1.weight".into(),
        ));
    }
    let mut block_out_channels = Vec::with_capacity(levels);
    let mut transformer_depth = Vec::with_capacity(levels);
    for i in 0..levels {
        block_out_channels.push(require(&format!("down_blocks.{i}.resnets.0.conv1.weight"), 4)?[0]);
        transformer_depth.push(count_indexed(
            names,
            &format!("down_blocks.{i}.attentions.0.transformer_blocks."),
        ));
    }
    let mid_transformer_depth = count_indexed(names, "mid_block.attentions.0.transformer_blocks.");
    if mid_transformer_depth == 0 {
        return Err(LoadErrorKind::BadConfig(
            "the controlnet's mid block has no attention (mid_block.attentions.0), which is not \
             supported"
                .into(),
        ));
    }
    let to_k = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let context_dim = require(to_k, 2)?[1];
    let use_linear_projection = require("mid_block.attentions.0.proj_in.weight", 2).is_ok();
    let adm_in_channels = shape("add_embedding.linear_1.weight").and_then(|s| s.get(1).copied());

    let hint_in = require("controlnet_cond_embedding.conv_in.weight", 4)?;
    let hint_blocks = count_indexed(names, "controlnet_cond_embedding.blocks.");
    if !hint_blocks.is_multiple_of(2) {
        return Err(LoadErrorKind::BadConfig(format!(
            "controlnet_cond_embedding has {hint_blocks} blocks, expected pairs"
        )));
    }
    let mut hint_block_channels = vec![hint_in[0]];
    for s in 0..hint_blocks / 2 {
        hint_block_channels.push(
            require(
                &format!("controlnet_cond_embedding.blocks.{}.weight", 2 * s + 1),
                4,
            )?[0],
        );
    }

    let union = detect_union(sd, names)?;
    let mut cfg = ControlNetConfig {
        encoder: crate::unet::UNetConfig {
            in_channels: conv_in[1],
            out_channels: conv_in[1],
            block_out_channels,
            layers_per_block,
            transformer_depth,
            mid_transformer_depth,
            heads: AttentionHeads::HeadDim(64),
            context_dim,
            use_linear_projection,
            adm_in_channels,
            norm_num_groups: 32,
            norm_eps: 1e-5,
        },
        hint_channels: hint_in[1],
        hint_block_channels,
        union,
    };
    // SD1 uses 8 heads per level (LDM `num_heads: 8`), SD2 and SDXL 64-wide heads; the shapes
    // cannot tell, the family can.
    if cfg.family() == crate::load::detect::ModelFamily::Sd1 {
        cfg.encoder.heads = AttentionHeads::PerLevel(vec![8; levels]);
    }
    cfg.validate().map_err(LoadErrorKind::BadConfig)?;
    Ok(cfg)
}

/// The union parts' architecture from diffusers-named shapes; `None` for a plain ControlNet. A
/// file with some union tensors but not the rest is refused, naming the first missing one.
fn detect_union(
    sd: &StateDict,
    names: &HashMap<String, String>,
) -> Result<Option<UnionConfig>, LoadErrorKind> {
    let shape = |n: &str| names.get(n).and_then(|k| sd.shape(k));
    let task = shape("task_embedding");
    let add = shape("control_add_embedding.linear_1.weight");
    if task.is_none() && add.is_none() {
        return Ok(None);
    }
    let require = |n: &str, rank: usize| {
        shape(n)
            .filter(|s| s.len() == rank)
            .ok_or_else(|| LoadErrorKind::MissingTensor(n.to_string()))
    };
    let task = require("task_embedding", 2)?;
    let add = require("control_add_embedding.linear_1.weight", 2)?;
    let (num_control_types, channels) = (task[0], task[1]);
    if num_control_types == 0 || !add[1].is_multiple_of(num_control_types) {
        return Err(LoadErrorKind::BadConfig(format!(
            "control_add_embedding takes {} inputs, not a multiple of the {num_control_types} \
             control types of task_embedding",
            add[1]
        )));
    }
    // Layers are counted by their attention; each must be complete (the builder names a gap).
    let layers = (0..)
        .take_while(|i| shape(&format!("transformer_layes.{i}.attn.in_proj_weight")).is_some())
        .count();
    if layers == 0 {
        return Err(LoadErrorKind::MissingTensor(
            "transformer_layes.0.attn.in_proj_weight".into(),
        ));
    }
    Ok(Some(UnionConfig {
        num_control_types,
        channels,
        // Not in the shapes; every release (and diffusers' and ComfyUI's code) uses 8.
        heads: 8,
        layers,
        type_embed_dim: add[1] / num_control_types,
    }))
}

/// Model names of a ControlNet file of `kind` (LDM or diffusers layout).
fn controlnet_names(
    sd: &StateDict,
    kind: &ControlFileKind,
) -> Result<HashMap<String, String>, LoadErrorKind> {
    match kind {
        ControlFileKind::ControlNetLdm { prefix } => controlnet_ldm_names(sd, prefix),
        _ => Ok(diffusers_names(sd)),
    }
}

/// A ControlNet file's architecture read from its header alone (family, union parts), for
/// choosing files without loading them; `None` for adapters and Control-LoRAs, whose family
/// shows only against a model.
pub fn controlnet_config_of(sd: &StateDict) -> Result<Option<ControlNetConfig>, LoadErrorKind> {
    let kind = classify(sd)?;
    match kind {
        ControlFileKind::ControlNetLdm { .. } | ControlFileKind::ControlNetDiffusers => {
            detect_controlnet(sd, &controlnet_names(sd, &kind)?).map(Some)
        }
        _ => Ok(None),
    }
}

fn load_controlnet_from(
    sd: &Arc<StateDict>,
    kind: &ControlFileKind,
    dtype: DType,
    device: &Device,
) -> Result<ControlNetModel, LoadError> {
    let err = |k| LoadError::new(sd.path(), k);
    let names = controlnet_names(sd, kind).map_err(err)?;
    let cfg = detect_controlnet(sd, &names).map_err(err)?;
    Renaming::new(names)
        .warn_unused(UNUSED_WARNING)
        .build(sd, dtype, device, |vb| ControlNetModel::new(vb, &cfg))
}

fn load_adapter_from(
    sd: &Arc<StateDict>,
    diffusers_names: bool,
    dtype: DType,
    device: &Device,
) -> Result<T2IAdapter, LoadError> {
    let err = |k| LoadError::new(sd.path(), k);
    for bad in ["skep.weight", "down_opt.op.weight"] {
        if let Some(k) = sd.shapes().keys().find(|k| k.ends_with(bad)) {
            return Err(err(LoadErrorKind::UnsupportedFormat(format!(
                "t2i-adapter with '{k}' (skip convolutions or strided-conv downsampling) is not \
                 supported"
            ))));
        }
    }
    let light =
        sd.contains("body.0.in_conv.weight") || sd.contains("adapter.body.0.out_conv.weight");
    let names: HashMap<String, String> = if diffusers_names {
        identity_names(sd, "")
            .into_iter()
            .filter(|(k, _)| k.starts_with("adapter."))
            .collect()
    } else {
        sd.shapes()
            .keys()
            .filter_map(|k| Some((adapter_tencentarc_to_diffusers(k, light)?, k.clone())))
            .collect()
    };
    let cfg = detect_adapter(sd, &names, light).map_err(err)?;
    Renaming::new(names)
        .warn_unused(UNUSED_WARNING)
        .build(sd, dtype, device, |vb| T2IAdapter::new(vb, &cfg))
}

/// Number of resnets per level in TencentARC full adapters (ComfyUI: `nums_rb=2`).
const FULL_ADAPTER_RESNETS: usize = 2;

/// Maps a TencentARC / ComfyUI adapter key to its diffusers name (the inverse of the renaming in
/// ComfyUI's `load_t2i_adapter`). Full adapters: `body.{2i+j}` is level `i`, resnet `j`.
pub fn adapter_tencentarc_to_diffusers(key: &str, light: bool) -> Option<String> {
    if let Some(param) = key.strip_prefix("conv_in.") {
        return (!light).then(|| format!("adapter.conv_in.{param}"));
    }
    let rest = key.strip_prefix("body.")?;
    let (k, rest) = rest.split_once('.')?;
    let k: usize = k.parse().ok()?;
    if light {
        if let Some(rest) = rest.strip_prefix("body.") {
            let (j, rest) = rest.split_once('.')?;
            return Some(format!("adapter.body.{k}.resnets.{j}.{rest}"));
        }
        return (rest.starts_with("in_conv.") || rest.starts_with("out_conv."))
            .then(|| format!("adapter.body.{k}.{rest}"));
    }
    let (i, j) = (k / FULL_ADAPTER_RESNETS, k % FULL_ADAPTER_RESNETS);
    if rest.starts_with("block1.") || rest.starts_with("block2.") {
        return Some(format!("adapter.body.{i}.resnets.{j}.{rest}"));
    }
    (rest.starts_with("in_conv.") && j == 0).then(|| format!("adapter.body.{i}.{rest}"))
}

/// Infers a T2I-Adapter's architecture from diffusers-named shapes.
fn detect_adapter(
    sd: &StateDict,
    names: &HashMap<String, String>,
    light: bool,
) -> Result<T2IAdapterConfig, LoadErrorKind> {
    let shape = |n: &str| names.get(n).and_then(|k| sd.shape(k));
    let require = |n: &str| {
        shape(n)
            .filter(|s| s.len() == 4)
            .ok_or_else(|| LoadErrorKind::MissingTensor(n.to_string()))
    };
    let levels = count_indexed(names, "adapter.body.");
    let num_res_blocks = count_indexed(names, "adapter.body.0.resnets.");
    if levels == 0 || num_res_blocks == 0 {
        return Err(LoadErrorKind::MissingTensor(
            "adapter.body.0.resnets.0.block1.weight".into(),
        ));
    }
    let (kind, unshuffle, cin, channels, kernel_size) = if light {
        let cin = require("adapter.body.0.in_conv.weight")?[1];
        let channels = (0..levels)
            .map(|i| Ok(require(&format!("adapter.body.{i}.out_conv.weight"))?[0]))
            .collect::<Result<Vec<_>, LoadErrorKind>>()?;
        (AdapterKind::Light, 8, cin, channels, 3)
    } else {
        let conv_in = require("adapter.conv_in.weight")?;
        let channels = (0..levels)
            .map(|i| Ok(require(&format!("adapter.body.{i}.resnets.0.block1.weight"))?[0]))
            .collect::<Result<Vec<_>, LoadErrorKind>>()?;
        let kernel = require("adapter.body.0.resnets.0.block2.weight")?[2];
        // ComfyUI: a 256- or 768-channel conv_in (1 or 3 channels after a 16x unshuffle) is SDXL.
        let xl = conv_in[1] == 256 || conv_in[1] == 768;
        let (kind, unshuffle) = if xl {
            (AdapterKind::FullXl, 16)
        } else {
            (AdapterKind::Full, 8)
        };
        (kind, unshuffle, conv_in[1], channels, kernel)
    };
    if cin % (unshuffle * unshuffle) != 0 {
        return Err(LoadErrorKind::BadConfig(format!(
            "adapter input of {cin} channels is not a multiple of {}x{} unshuffled pixels",
            unshuffle, unshuffle
        )));
    }
    let cfg = T2IAdapterConfig {
        kind,
        hint_channels: cin / (unshuffle * unshuffle),
        channels,
        num_res_blocks,
        kernel_size,
    };
    cfg.validate().map_err(LoadErrorKind::BadConfig)?;
    Ok(cfg)
}

/// What is logged when a control file has tensors the model does not use.
pub(crate) const UNUSED_WARNING: &str = "control model file has weights the model does not use";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldm_control_keys_map_like_diffusers() {
        let cases = [
            (
                "input_hint_block.0.weight",
                "controlnet_cond_embedding.conv_in.weight",
            ),
            (
                "input_hint_block.2.bias",
                "controlnet_cond_embedding.blocks.0.bias",
            ),
            (
                "input_hint_block.12.weight",
                "controlnet_cond_embedding.blocks.5.weight",
            ),
            (
                "input_hint_block.14.weight",
                "controlnet_cond_embedding.conv_out.weight",
            ),
            ("zero_convs.11.0.weight", "controlnet_down_blocks.11.weight"),
            ("middle_block_out.0.bias", "controlnet_mid_block.bias"),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            ("label_emb.0.2.weight", "add_embedding.linear_2.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(
                controlnet_ldm_to_diffusers(ldm, 2, 8).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
        }
        assert_eq!(
            controlnet_ldm_to_diffusers("input_hint_block.16.weight", 2, 8),
            None
        );
        assert_eq!(
            controlnet_ldm_to_diffusers("output_blocks.0.0.in_layers.0.weight", 2, 8),
            None
        );
    }

    #[test]
    fn union_keys_keep_their_names_in_both_layouts() {
        for (key, name) in [
            (
                "transformer_layes.0.attn.in_proj.weight",
                "transformer_layes.0.attn.in_proj_weight",
            ),
            (
                "transformer_layes.0.attn.in_proj_bias",
                "transformer_layes.0.attn.in_proj_bias",
            ),
            ("task_embedding", "task_embedding"),
            (
                "control_add_embedding.linear_2.bias",
                "control_add_embedding.linear_2.bias",
            ),
        ] {
            assert_eq!(union_key_to_diffusers(key).as_deref(), Some(name), "{key}");
            assert_eq!(
                controlnet_ldm_to_diffusers(key, 2, 8).as_deref(),
                Some(name),
                "{key}"
            );
        }
        assert_eq!(union_key_to_diffusers("zero_convs.0.0.weight"), None);
    }

    #[test]
    fn tencentarc_adapter_keys_map_like_comfyui() {
        let full = [
            ("conv_in.weight", "adapter.conv_in.weight"),
            ("body.3.block2.bias", "adapter.body.1.resnets.1.block2.bias"),
            ("body.2.in_conv.weight", "adapter.body.1.in_conv.weight"),
        ];
        for (t, d) in full {
            assert_eq!(
                adapter_tencentarc_to_diffusers(t, false).as_deref(),
                Some(d)
            );
        }
        assert_eq!(
            adapter_tencentarc_to_diffusers("body.3.in_conv.weight", false),
            None
        );
        assert_eq!(
            adapter_tencentarc_to_diffusers("body.2.body.3.block1.weight", true).as_deref(),
            Some("adapter.body.2.resnets.3.block1.weight")
        );
    }
}
