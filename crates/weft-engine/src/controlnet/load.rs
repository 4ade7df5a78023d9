//! Loading control files, as ComfyUI's `load_controlnet` / `load_t2i_adapter` accept them: the
//! entry points ([`load_control`], [`load_control_on`], [`load_controlnet`],
//! [`load_controlnet_diffusers_dir`]) and what they give ([`LoadedControl`], [`ControlModel`]).
//! Safetensors and pickles are read through [`StateDict`]; errors name the file and the tensor.
//!
//! The jobs are files of their own:
//!
//! - what a file holds ([`classify`]): [`crate::controlnet::format`];
//! - LDM and diffusers names of ControlNet tensors: [`crate::controlnet::keymap`];
//! - the architecture, from the shapes or a `config.json`: [`crate::controlnet::detect`];
//! - union ControlNets' tensors: [`crate::controlnet::union_file`];
//! - T2I-Adapter files: [`crate::controlnet::adapter_file`];
//! - difference ControlNets, built on the base model: `controlnet/difference.rs`;
//! - Control-LoRA files, recognised and opened here, built from the base model's weights when
//!   sampling: [`crate::controlnet::control_lora`].

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::controlnet::adapter::T2IAdapter;
use crate::controlnet::adapter_file::load_adapter_from;
use crate::controlnet::base::BaseWeights;
use crate::controlnet::control_lora::ControlLora;
use crate::controlnet::detect::{controlnet_config_from_diffusers, detect_controlnet};
use crate::controlnet::difference::{load_difference_from, needs_model};
use crate::controlnet::format::{classify, ControlFileKind, UNUSED_WARNING};
use crate::controlnet::keymap::{controlnet_names, diffusers_names};
use crate::controlnet::union::UnionConfig;
use crate::controlnet::{ControlNetConfig, ControlNetModel};
use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
use crate::unet::AttentionHeads;

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
