//! ComfyUI's saving nodes for models (`comfy_extras/nodes_model_merging.py`,
//! `nodes_lora_extract.py`): CheckpointSave, CLIPSave, VAESave and LoraSave ("Extract and Save
//! Lora"). Files go to the output folder under ComfyUI's `filename_prefix` naming
//! (`<prefix>_NNNNN_.safetensors`, subfolders from the prefix), in ComfyUI's layouts
//! (`engine::merge::layout`), with the prompt and the editor workflow in the header's metadata
//! unless the server runs with `--disable-metadata`.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::engine::clip::encode::TextEncoderKind;
use crate::engine::load::detect::{ModelFamily, Prediction};
use crate::engine::lora::Component;
use crate::engine::merge::extract::{extract_into, ExtractOptions, LoraType};
use crate::engine::merge::layout::{
    checkpoint_tensors, clip_save_files, unet_ldm_names, vae_ldm, CheckpointParts, ClipWeights,
};
use crate::engine::merge::write::write_safetensors;
use crate::graph::spec::build::*;
use crate::graph::spec::{HiddenInput, InputSpec, NodeSpec};
use crate::graph::SlotType;
use crate::nodes::image_io::{metadata, SaveTarget};
use crate::nodes::{Clip, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};
use crate::paths::FolderType;

pub fn register(registry: &mut Registry) {
    registry.add(CheckpointSave);
    registry.add(ClipSave);
    registry.add(VaeSave);
    registry.add(LoraSave);
}

/// An output node of `comfy_extras.nodes_model_merging` with the hidden prompt inputs.
fn save_spec(class_type: &'static str, inputs: Vec<InputSpec>, category: &'static str) -> NodeSpec {
    NodeSpec {
        python_module: "comfy_extras.nodes_model_merging",
        hidden: vec![
            ("prompt", HiddenInput::Prompt),
            ("extra_pnginfo", HiddenInput::ExtraPngInfo),
        ],
        output_node: true,
        ..node(class_type, class_type, category, inputs, vec![])
    }
}

/// The prompt's metadata for a safetensors header (empty with `--disable-metadata`, as ComfyUI
/// writes it then), after `first` entries.
fn header_metadata(ctx: &NodeContext, first: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = first;
    out.extend(metadata(ctx).iter().cloned());
    out
}

/// Claims `<prefix>_NNNNN_.safetensors` in the output folder: (the path, the name, the counter).
fn reserve_file(
    ctx: &NodeContext,
    prefix: &str,
) -> Result<(std::path::PathBuf, String, u64), NodeError> {
    let target = SaveTarget::reserve(ctx, prefix, FolderType::Output, 0, 0, 1, "safetensors")?;
    let filename = format!("{}_{:05}_.safetensors", target.name, target.first_counter);
    Ok((target.path(&filename)?, target.name, target.first_counter))
}

fn write(
    ctx: &NodeContext,
    path: &std::path::Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<(), NodeError> {
    ctx.check_interrupt()?;
    write_safetensors(path, tensors, metadata)
        .map_err(|e| NodeError::file(ctx.dirs.shown(path), e.kind))
}

/// A CLIP's text models for the layouts.
fn clip_weights(clip: &Clip) -> ClipWeights<'_> {
    let (l, g) = clip.encoder.weights();
    ClipWeights {
        kind: clip.encoder.kind(),
        l,
        g,
    }
}

/// Saves MODEL, CLIP and VAE as one single-file checkpoint.
pub struct CheckpointSave;

impl Node for CheckpointSave {
    fn spec(&self) -> NodeSpec {
        save_spec(
            "CheckpointSave",
            vec![
                required("model", link(SlotType::MODEL)),
                required("clip", link(SlotType::CLIP)),
                required("vae", link(SlotType::VAE)),
                required("filename_prefix", string("checkpoints/ComfyUI")),
            ],
            "advanced/model_merging",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let clip = inputs.clip("clip")?;
        let vae = inputs.vae("vae")?;
        let unet = model.weights.as_deref().ok_or_else(|| {
            NodeError::input(
                "model",
                "this model was not loaded from a file, so it cannot be saved",
            )
        })?;
        let vae_weights = vae.weights().ok_or_else(|| {
            NodeError::input(
                "vae",
                "this VAE was not loaded from a file, so it cannot be saved",
            )
        })?;
        let parts = CheckpointParts {
            unet,
            layers_per_block: model.unet.config().layers_per_block,
            v_prediction: model.prediction == Prediction::V,
            clip: Some(clip_weights(clip)),
            vae: Some((vae_weights, vae.config().block_out_channels.len())),
        };
        let tensors = checkpoint_tensors(&parts).map_err(|e| NodeError::input("model", e))?;
        let (path, name, counter) = reserve_file(ctx, inputs.string("filename_prefix")?)?;
        // ComfyUI's modelspec entries: the architecture for SDXL models, the prediction for all.
        let mut spec = BTreeMap::new();
        let architecture = match model.family {
            ModelFamily::SdxlBase => Some("stable-diffusion-xl-v1-base"),
            ModelFamily::SdxlRefiner => Some("stable-diffusion-xl-v1-refiner"),
            _ => None,
        };
        if let Some(architecture) = architecture {
            spec.insert("modelspec.architecture".into(), architecture.into());
            spec.insert("modelspec.sai_model_spec".into(), "1.0.0".into());
            spec.insert("modelspec.implementation".into(), "sgm".into());
            spec.insert("modelspec.title".into(), format!("{name} {counter}"));
        }
        let predict_key = match model.prediction {
            Prediction::Epsilon => "epsilon",
            Prediction::V => "v",
        };
        spec.insert("modelspec.predict_key".into(), predict_key.into());
        let metadata = header_metadata(ctx, spec);
        write(ctx, &path, &tensors, Some(&metadata))?;
        Ok(NodeOutput::default())
    }
}

/// Saves each text model of a CLIP as its own file.
pub struct ClipSave;

impl Node for ClipSave {
    fn spec(&self) -> NodeSpec {
        save_spec(
            "CLIPSave",
            vec![
                required("clip", link(SlotType::CLIP)),
                required("filename_prefix", string("clip/ComfyUI")),
            ],
            "advanced/model_merging",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let clip = inputs.clip("clip")?;
        let prefix = inputs.string("filename_prefix")?;
        let metadata = header_metadata(ctx, BTreeMap::new());
        let files = clip_save_files(&clip_weights(clip));
        if files.is_empty() {
            return Err(NodeError::input(
                "clip",
                "the text encoder has no weights to save",
            ));
        }
        for (suffix, tensors) in files {
            let prefix = match suffix {
                Some(suffix) => format!("{prefix}_{suffix}"),
                None => prefix.to_string(),
            };
            let (path, _, _) = reserve_file(ctx, &prefix)?;
            write(ctx, &path, &tensors, Some(&metadata))?;
        }
        Ok(NodeOutput::default())
    }
}

/// Saves a VAE in the LDM layout.
pub struct VaeSave;

impl Node for VaeSave {
    fn spec(&self) -> NodeSpec {
        save_spec(
            "VAESave",
            vec![
                required("vae", link(SlotType::VAE)),
                required("filename_prefix", string("vae/ComfyUI_vae")),
            ],
            "advanced/model_merging",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let vae = inputs.vae("vae")?;
        let weights = vae.weights().ok_or_else(|| {
            NodeError::input(
                "vae",
                "this VAE was not loaded from a file, so it cannot be saved",
            )
        })?;
        let tensors = vae_ldm(weights, vae.config().block_out_channels.len())
            .map_err(|e| NodeError::input("vae", e))?;
        let (path, _, _) = reserve_file(ctx, inputs.string("filename_prefix")?)?;
        let metadata = header_metadata(ctx, BTreeMap::new());
        write(ctx, &path, &tensors, Some(&metadata))?;
        Ok(NodeOutput::default())
    }
}

/// Extracts a LoRA from a model difference (ModelMergeSubtract's output) and saves it.
pub struct LoraSave;

impl Node for LoraSave {
    fn spec(&self) -> NodeSpec {
        let inputs = vec![
            required("filename_prefix", string("loras/ComfyUI_extracted_lora")),
            required("rank", int(8, 1, 4096)),
            required("lora_type", combo(&LoraType::NAMES)),
            required("bias_diff", boolean(true)),
            InputSpec {
                tooltip: Some("The ModelSubtract output to be converted to a lora."),
                ..optional("model_diff", link(SlotType::MODEL))
            },
            InputSpec {
                tooltip: Some("The CLIPSubtract output to be converted to a lora."),
                ..optional("text_encoder_diff", link(SlotType::CLIP))
            },
        ];
        NodeSpec {
            python_module: "comfy_extras.nodes_lora_extract",
            output_node: true,
            ..node(
                "LoraSave",
                "Extract and Save Lora",
                "_for_testing",
                inputs,
                vec![],
            )
        }
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = match inputs.get("model_diff") {
            Some(Value::Model(m)) => Some(m),
            _ => None,
        };
        let clip = match inputs.get("text_encoder_diff") {
            Some(Value::Clip(c)) => Some(c),
            _ => None,
        };
        if model.is_none() && clip.is_none() {
            return Ok(NodeOutput::default());
        }
        let lora_type = inputs.string("lora_type")?;
        let options = ExtractOptions {
            rank: inputs.usize("rank")?,
            lora_type: LoraType::from_name(lora_type).ok_or_else(|| {
                NodeError::input("lora_type", format!("unknown lora type '{lora_type}'"))
            })?,
            bias_diff: inputs.bool("bias_diff")?,
        };
        let (path, _, _) = reserve_file(ctx, inputs.string("filename_prefix")?)?;

        // (name in the file, difference): ComfyUI's keys, `diffusion_model.<LDM name>` and
        // `text_encoders.clip_x.transformer.<HF name>`.
        let mut diffs: Vec<(String, &Tensor)> = Vec::new();
        if let Some(model) = model {
            let weights = model.weights.as_deref().ok_or_else(|| {
                NodeError::input("model_diff", "this model was not loaded from a file")
            })?;
            let names = unet_ldm_names(weights, model.unet.config().layers_per_block)
                .map_err(|e| NodeError::input("model_diff", e))?;
            diffs.extend(
                weights
                    .iter()
                    .map(|(key, t)| (format!("diffusion_model.{}", names[key]), t)),
            );
        }
        if let Some(clip) = clip {
            let (l, g) = clip.encoder.weights();
            let g_component = match clip.encoder.kind() {
                TextEncoderKind::Sd2 => Component::ClipH,
                _ => Component::ClipG,
            };
            for (component, weights) in [(Component::ClipL, l), (g_component, g)] {
                let prefix = format!("text_encoders.{}.transformer.", component.comfy_name());
                diffs.extend(
                    weights
                        .into_iter()
                        .flatten()
                        .map(|(key, t)| (format!("{prefix}{key}"), t)),
                );
            }
        }
        diffs.sort_by(|a, b| a.0.cmp(&b.0));

        let mut out = BTreeMap::new();
        let total = diffs.len() as u64;
        for (done, (key, diff)) in diffs.into_iter().enumerate() {
            ctx.check_interrupt()?;
            extract_into(&mut out, [(key, diff)], options)
                .map_err(|e| NodeError::engine("extracting the lora", e))?;
            ctx.progress(done as u64 + 1, total);
        }
        write(ctx, &path, &out, None)?;
        Ok(NodeOutput::default())
    }
}
