//! Stability's Control-LoRA files (`control-lora-*-rank128/256.safetensors`), as ComfyUI's
//! `ControlLora` builds them (`comfy/controlnet.py`, at `pre_run`, from the model being sampled):
//! a ControlNet with the base UNet's encoder architecture, whose weights start as the base UNet's
//! (`time_embed`, `label_emb`, `input_blocks`, `middle_block`), then every tensor of the file is set
//! on top:
//!
//! - `X.up` and `X.down` make layer `X`'s weight `W + up.flatten(1) @ down.flatten(1)` reshaped to
//!   `W`'s shape (`ControlLoraOps.Linear`/`Conv2d`);
//! - any other tensor (`input_hint_block.*`, `zero_convs.*`, `middle_block_out.*`, biases, norms)
//!   replaces the base's;
//! - `lora_controlnet` only marks the format.
//!
//! The file uses bare LDM names; they are renamed like an LDM ControlNet's. The base weights are the
//! model's diffusers-named UNet weights (what `DiffusionModel` keeps, LoRA patches included, as
//! ComfyUI reads the patched model's state dict). The hint embedding's input width comes from
//! `input_hint_block.0.weight`, as in ComfyUI.
//!
//! [`ControlLora::open`] reads and checks the file; [`ControlLora::for_model`] builds the ControlNet
//! once per base model and keeps the last one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use candle_core::{DType, Device};

use crate::controlnet::base::{BaseSource, BaseWeights};
use crate::controlnet::format::UNUSED_WARNING;
use crate::controlnet::keymap::controlnet_ldm_to_diffusers;
use crate::controlnet::{ControlNetConfig, ControlNetModel};
use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
use crate::unet::UNetConfig;

/// The marker key of Control-LoRA files.
pub const CONTROL_LORA_MARKER: &str = "lora_controlnet";

/// An opened Control-LoRA file, waiting for the model it will be built on.
#[derive(Debug)]
pub struct ControlLora {
    sd: Arc<StateDict>,
    /// Convolutions in `input_hint_block` (8: indices 0, 2, .., 14).
    hint_convs: usize,
    /// The cross-attention width the deltas were trained for (from an `attn2.to_k` delta), when
    /// the file has one.
    context_dim: Option<usize>,
    /// Whether the file touches `label_emb` (SDXL's `y` embedding).
    has_label_emb: bool,
    /// The ControlNet built for the last base model, by the identity of its weights.
    built: Mutex<Option<Built>>,
}

#[derive(Debug)]
struct Built {
    base: Weak<BaseWeights>,
    model: Arc<ControlNetModel>,
    /// Bytes of weights the build added (the file's weights and the low-rank products; weights
    /// taken unchanged from the base model are shared with it).
    bytes: usize,
}

impl ControlLora {
    /// Opens a Control-LoRA file and checks it has the marker and a hint block.
    pub fn open(path: &Path) -> Result<ControlLora, LoadError> {
        Self::from_state_dict(Arc::new(StateDict::open(path)?))
    }

    pub(crate) fn from_state_dict(sd: Arc<StateDict>) -> Result<ControlLora, LoadError> {
        let err = |kind| LoadError::new(sd.path(), kind);
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
        if hint_convs < 2 || !sd.contains("input_hint_block.0.weight") {
            return Err(err(LoadErrorKind::MissingTensor(
                "input_hint_block.0.weight".into(),
            )));
        }
        let context_dim = sd
            .shapes()
            .iter()
            .find(|(k, s)| k.ends_with(".attn2.to_k.down") && s.len() == 2)
            .map(|(_, s)| s[1]);
        let has_label_emb = sd.shapes().keys().any(|k| k.starts_with("label_emb."));
        Ok(ControlLora {
            sd,
            hint_convs,
            context_dim,
            has_label_emb,
            built: Mutex::new(None),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.sd.path()
    }

    /// Checks that the file was made for a UNet like `unet` (the same `y` input and context width);
    /// the error is a lowercase sentence naming both sides.
    pub fn check_compatible(&self, unet: &UNetConfig) -> std::result::Result<(), String> {
        let name = |xl: bool| if xl { "sdxl" } else { "sd1.x/sd2.x" };
        let model_xl = unet.adm_in_channels.is_some();
        let context_differs = self.context_dim.is_some_and(|c| c != unet.context_dim);
        if self.has_label_emb != model_xl || context_differs {
            return Err(format!(
                "this control-lora is for {} (context width {}) and the model is {} (context \
                 width {}); use a control-lora made for the model's family",
                name(self.has_label_emb),
                self.context_dim
                    .map_or_else(|| "unknown".to_string(), |c| c.to_string()),
                name(model_xl),
                unet.context_dim,
            ));
        }
        Ok(())
    }

    /// The ControlNet built on `base` (a UNet of architecture `unet`), built on the first call for
    /// these weights and kept until another base model asks.
    pub fn for_model(
        &self,
        base: &Arc<BaseWeights>,
        unet: &UNetConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Arc<ControlNetModel>, LoadError> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = built.as_ref() {
            // The weak reference keeps the allocation, so an equal pointer is the same map.
            if std::ptr::eq(b.base.as_ptr(), Arc::as_ptr(base)) {
                return Ok(Arc::clone(&b.model));
            }
        }
        // Drop the previous ControlNet before building the next.
        *built = None;
        let (model, bytes) = self.build(base, unet, dtype, device)?;
        let model = Arc::new(model);
        *built = Some(Built {
            base: Arc::downgrade(base),
            model: Arc::clone(&model),
            bytes,
        });
        Ok(model)
    }

    /// Bytes of weights held by the ControlNet built for the last model (0 before the first
    /// build), so the model manager can count them against its budget.
    pub fn built_bytes(&self) -> usize {
        let built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        built.as_ref().map_or(0, |b| b.bytes)
    }

    /// Builds the ControlNet on `base` (a UNet of architecture `unet`, diffusers names), with the
    /// bytes of weights it adds. Weights are converted to `dtype`; the low-rank products are
    /// computed in f32.
    fn build(
        &self,
        base: &Arc<BaseWeights>,
        unet: &UNetConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<(ControlNetModel, usize), LoadError> {
        let sd = &self.sd;
        let err = |kind| LoadError::new(sd.path(), kind);
        self.check_compatible(unet)
            .map_err(|e| err(LoadErrorKind::UnsupportedFormat(e)))?;
        let lpb = unet.layers_per_block;

        // The base UNet's encoder, then the file on top of it.
        let mut names: HashMap<String, BaseSource> = base
            .keys()
            .filter(|name| {
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
            .map(|name| (name.clone(), BaseSource::BaseKey(name.clone())))
            .collect();
        let mut file_names = HashMap::new();
        for key in sd.shapes().keys() {
            if key == CONTROL_LORA_MARKER || key.ends_with(".down") {
                continue;
            }
            let Some(name) = controlnet_ldm_to_diffusers(key, lpb, self.hint_convs) else {
                continue;
            };
            file_names.insert(name.clone(), key.clone());
            let Some(module) = name.strip_suffix(".up") else {
                names.insert(name, BaseSource::Key(key.clone()));
                continue;
            };
            let weight = format!("{module}.weight");
            let down = format!("{}.down", key.strip_suffix(".up").unwrap_or(key));
            if !sd.contains(&down) {
                return Err(err(LoadErrorKind::MissingTensor(down)));
            }
            let base_key = match names.get(&weight) {
                Some(BaseSource::BaseKey(k)) => k.clone(),
                _ => {
                    return Err(err(LoadErrorKind::BadConfig(format!(
                        "'{key}' has no base weight '{weight}' in the model's unet"
                    ))))
                }
            };
            names.insert(
                weight,
                BaseSource::LowRank {
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
        for s in 0..self.hint_convs.saturating_sub(2) / 2 {
            let name = format!("controlnet_cond_embedding.blocks.{}.weight", 2 * s + 1);
            hint_block_channels.push(shape(&name)?[0]);
        }
        let cfg = ControlNetConfig {
            encoder: unet.clone(),
            hint_channels: hint_in[1],
            hint_block_channels,
            union: None,
        };
        let elements: usize = names
            .values()
            .map(|source| match source {
                BaseSource::Key(key) => sd.shape(key).map_or(0, |s| s.iter().product()),
                BaseSource::LowRank { base: b, .. } => base.get(b).map_or(0, |t| t.elem_count()),
                BaseSource::BaseKey(_) | BaseSource::Difference { .. } => 0,
            })
            .sum();
        let model = Renaming::with_context(names, Arc::clone(base))
            .warn_unused(UNUSED_WARNING)
            .build(sd, dtype, device, |vb| ControlNetModel::new(vb, &cfg))?;
        Ok((model, elements * dtype.size_in_bytes()))
    }
}
