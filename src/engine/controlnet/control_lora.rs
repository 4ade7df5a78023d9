//! Stability's Control-LoRA files (`control-lora-*-rank128/256.safetensors`), as ComfyUI's
//! `ControlLora` builds them (`comfy/controlnet.py`): a ControlNet with the base UNet's encoder
//! architecture, whose weights start as the base UNet's (`time_embed`, `label_emb`,
//! `input_blocks`, `middle_block`), then every tensor of the file is set on top:
//!
//! - `X.up` and `X.down` make layer `X`'s weight `W + up.flatten(1) @ down.flatten(1)` reshaped to
//!   `W`'s shape (`ControlLoraOps.Linear`/`Conv2d`);
//! - any other tensor (`input_hint_block.*`, `zero_convs.*`, `middle_block_out.*`, biases, norms)
//!   replaces the base's;
//! - `lora_controlnet` only marks the format.
//!
//! The file uses bare LDM names; they are renamed like an LDM ControlNet's. The hint embedding's
//! input width comes from `input_hint_block.0.weight`, as in ComfyUI.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::engine::controlnet::load::{build_sourced, controlnet_ldm_to_diffusers, Source};
use crate::engine::controlnet::{ControlNetConfig, ControlNetModel};
use crate::engine::load::checkpoint::unet_ldm_names;
use crate::engine::load::file::StateDict;
use crate::engine::load::{LoadError, LoadErrorKind};
use crate::engine::unet::UNetConfig;

/// The marker key of Control-LoRA files.
pub const CONTROL_LORA_MARKER: &str = "lora_controlnet";

/// Builds the ControlNet of the Control-LoRA file at `path` on the UNet in `base` (LDM names under
/// `unet_prefix`: `model.diffusion_model.` in a checkpoint, empty for a bare UNet file), whose
/// architecture is `unet` (from `detect_unet`). Weights are converted to `dtype`; the low-rank
/// products are computed in f32.
pub fn load_control_lora(
    path: &Path,
    base: Arc<StateDict>,
    unet_prefix: &str,
    unet: &UNetConfig,
    dtype: DType,
    device: &Device,
) -> Result<ControlNetModel, LoadError> {
    let sd = Arc::new(StateDict::open(path)?);
    let err = |kind| LoadError::new(path, kind);
    if !sd.contains(CONTROL_LORA_MARKER) {
        return Err(err(LoadErrorKind::NotACheckpoint(format!(
            "no '{CONTROL_LORA_MARKER}' key: not a control-lora"
        ))));
    }
    let hint_convs = sd
        .shapes()
        .keys()
        .filter(|k| k.starts_with("input_hint_block.") && k.ends_with(".weight"))
        .count();
    let lpb = unet.layers_per_block;

    // The base UNet's encoder, then the file on top of it.
    let mut names: HashMap<String, Source> = unet_ldm_names(&base, unet_prefix, lpb)
        .into_iter()
        .filter(|(name, _)| {
            [
                "time_embedding.",
                "add_embedding.",
                "conv_in.",
                "down_blocks.",
                "mid_block.",
            ]
            .iter()
            .any(|p| name.starts_with(p))
        })
        .map(|(name, key)| (name, Source::BaseKey(key)))
        .collect();
    let mut file_names = HashMap::new();
    for key in sd.shapes().keys() {
        if key == CONTROL_LORA_MARKER || key.ends_with(".down") {
            continue;
        }
        let Some(name) = controlnet_ldm_to_diffusers(key, lpb, hint_convs) else {
            continue;
        };
        file_names.insert(name.clone(), key.clone());
        let Some(module) = name.strip_suffix(".up") else {
            names.insert(name, Source::Key(key.clone()));
            continue;
        };
        let weight = format!("{module}.weight");
        let down = format!("{}.down", key.strip_suffix(".up").unwrap_or(key));
        if !sd.contains(&down) {
            return Err(err(LoadErrorKind::MissingTensor(down)));
        }
        let base_key = match names.get(&weight) {
            Some(Source::BaseKey(k)) => k.clone(),
            _ => {
                return Err(err(LoadErrorKind::BadConfig(format!(
                    "'{key}' has no base weight '{weight}' in the model's unet"
                ))))
            }
        };
        names.insert(
            weight,
            Source::LowRank {
                base: base_key,
                up: key.clone(),
                down,
            },
        );
    }

    let shape = |name: &str| {
        file_names
            .get(name)
            .and_then(|k| sd.shape(k))
            .filter(|s| s.len() == 4)
            .ok_or_else(|| err(LoadErrorKind::MissingTensor(name.to_string())))
    };
    let hint_in = shape("controlnet_cond_embedding.conv_in.weight")?;
    let mut hint_block_channels = vec![hint_in[0]];
    for s in 0..hint_convs.saturating_sub(2) / 2 {
        let name = format!("controlnet_cond_embedding.blocks.{}.weight", 2 * s + 1);
        hint_block_channels.push(shape(&name)?[0]);
    }
    let cfg = ControlNetConfig {
        encoder: unet.clone(),
        hint_channels: hint_in[1],
        hint_block_channels,
    };
    build_sourced(&sd, Some(base), names, dtype, device, |vb| {
        ControlNetModel::new(vb, &cfg)
    })
}
