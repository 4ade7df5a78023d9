//! LoraLoader and LoraLoaderModelOnly: patch copies of the model's and text encoders' weights
//! (`engine::lora::apply`) and build new models from them; the loaded base model is never changed
//! or re-read, so changing a strength re-runs only the loader and what follows it.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;

use crate::engine::clip::encode::{TextEncoder, TextEncoderKind};
use crate::engine::diffusion::DiffusionModel;
use crate::engine::load::placement::placed_var_builder;
use crate::engine::lora::{
    apply, Component, KeyMap, Lora, LoraFile, TextEncoderWeights, UnetWeights,
};
use crate::engine::manager::{bpe, clip_from_weights};
use crate::engine::unet::UNet2DConditionModel;
use crate::graph::spec::build::*;
use crate::graph::spec::{ComboOptions, FileList, Freshness, InputKind, NodeSpec, OutputSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::{
    file_fingerprint, Clip, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Ui, Value,
};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(LoraLoader);
    registry.add(LoraLoaderModelOnly);
}

fn lora_names() -> InputKind {
    InputKind::Combo {
        options: ComboOptions::Files(FileList::Models("loras")),
        default: None,
        image_upload: false,
    }
}

fn strength() -> InputKind {
    float(1.0, -100.0, 100.0, 0.01)
}

fn spec(
    class_type: &'static str,
    display_name: &'static str,
    inputs: Vec<crate::graph::spec::InputSpec>,
    outputs: Vec<OutputSpec>,
) -> NodeSpec {
    NodeSpec {
        description: "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
        freshness: Freshness::ReadsFiles,
        ..node(class_type, display_name, "loaders", inputs, outputs)
    }
}

/// The text encoders' weights in the form the key map wants.
fn text_encoder_weights(clip: Option<&Clip>) -> TextEncoderWeights<'_> {
    let Some(clip) = clip else {
        return TextEncoderWeights::None;
    };
    match (clip.encoder.kind(), clip.encoder.weights()) {
        (TextEncoderKind::Sd1, (Some(l), _)) => TextEncoderWeights::Sd1 { clip_l: l },
        (TextEncoderKind::Sd2, (_, Some(h))) => TextEncoderWeights::Sd2 { clip_h: h },
        (TextEncoderKind::Sdxl, (Some(l), Some(g))) => TextEncoderWeights::Sdxl {
            clip_l: l,
            clip_g: g,
        },
        (TextEncoderKind::SdxlRefiner, (_, Some(g))) => {
            TextEncoderWeights::SdxlRefiner { clip_g: g }
        }
        _ => TextEncoderWeights::None,
    }
}

fn load_lora(
    ctx: &NodeContext,
    inputs: &Inputs,
    model: &DiffusionModel,
    clip: Option<&Clip>,
) -> Result<Lora, NodeError> {
    let name = inputs.string("lora_name")?;
    let path = ctx.model_path("loras", "lora_name", name)?;
    let unet_weights = model.weights.as_deref().ok_or_else(|| {
        NodeError::input(
            "model",
            "this model was not loaded from a checkpoint file, so it cannot take a LoRA",
        )
    })?;
    let keys = KeyMap::new(
        Some(UnetWeights {
            weights: unet_weights,
            layers_per_block: model.unet.config().layers_per_block,
        }),
        text_encoder_weights(clip),
    );
    let file = LoraFile::open(&path).map_err(|e| NodeError::input("lora_name", e.to_string()))?;
    let lora = file
        .map(&keys)
        .map_err(|e| NodeError::input("lora_name", e.to_string()))?;
    let report = lora.report();
    if !report.unmatched.is_empty() {
        let first: Vec<&str> = report
            .unmatched
            .iter()
            .take(5)
            .map(String::as_str)
            .collect();
        tracing::warn!(
            lora = name,
            count = report.unmatched.len(),
            "lora keys not loaded: {}",
            first.join(", ")
        );
    }
    Ok(lora)
}

/// Messages shown on the node: how much of the file applied.
fn report_ui(lora: &Lora) -> Ui {
    let report = lora.report();
    let mut text = vec![format!("{} modules patched", report.modules)];
    if !report.unmatched.is_empty() {
        let first: Vec<&str> = report
            .unmatched
            .iter()
            .take(5)
            .map(String::as_str)
            .collect();
        text.push(format!(
            "{} keys matched nothing (lora key not loaded): {}",
            report.unmatched.len(),
            first.join(", ")
        ));
    }
    Ui {
        text,
        ..Ui::default()
    }
}

fn patch_model(
    model: &DiffusionModel,
    lora: &Lora,
    strength: f64,
) -> Result<Arc<DiffusionModel>, NodeError> {
    let base = model
        .weights
        .as_deref()
        .ok_or_else(|| NodeError::input("model", "no weights to patch"))?;
    let patched = apply(base, &[(lora.patch(Component::Unet), strength)])
        .map_err(|e| NodeError::input("lora_name", e.to_string()))?;
    rebuild_unet(model, patched)
}

/// The model with its UNet rebuilt from `patched` weights (patches and model sampling kept).
pub(super) fn rebuild_unet(
    model: &DiffusionModel,
    patched: HashMap<String, Tensor>,
) -> Result<Arc<DiffusionModel>, NodeError> {
    // The patched weights keep the model's storage dtype (f16 stays f16 on the CPU; the UNet
    // widens per layer), not its compute dtype.
    let dtype = patched
        .values()
        .next()
        .map_or(candle_core::DType::F32, |t| t.dtype());
    // Each patched weight stays where the model kept it (RAM after a partial load).
    let vb = placed_var_builder(patched.clone(), dtype, model.unet.device());
    let unet = UNet2DConditionModel::new(vb, model.unet.config())
        .map_err(|e| NodeError::engine("rebuilding the patched model", e))?;
    Ok(Arc::new(model.with_unet(unet, patched)))
}

/// A rebuilt text model with the weights it was built from.
type PatchedEncoder = (crate::engine::clip::ClipTextModel, HashMap<String, Tensor>);

/// How one text model's weights change: (its weights, which model) → patched weights.
pub(super) type EncoderPatch<'a> =
    dyn Fn(&HashMap<String, Tensor>, Component) -> Result<HashMap<String, Tensor>, NodeError> + 'a;

fn patch_encoder(
    weights: Option<&HashMap<String, Tensor>>,
    component: Component,
    patch: &EncoderPatch<'_>,
) -> Result<Option<PatchedEncoder>, NodeError> {
    let Some(weights) = weights else {
        return Ok(None);
    };
    let patched = patch(weights, component)?;
    let (dtype, device) = weights
        .values()
        .next()
        .map_or((candle_core::DType::F32, candle_core::Device::Cpu), |t| {
            (t.dtype(), t.device().clone())
        });
    let model = clip_from_weights(&patched, dtype, &device)
        .map_err(|e| NodeError::engine("rebuilding the patched text encoder", e))?;
    Ok(Some((model, patched)))
}

fn patch_clip(clip: &Clip, lora: &Lora, strength: f64) -> Result<Clip, NodeError> {
    rebuild_clip(clip, &|weights, component| {
        apply(weights, &[(lora.patch(component), strength)])
            .map_err(|e| NodeError::input("lora_name", e.to_string()))
    })
}

/// The CLIP with each of its text models rebuilt from `patch`ed weights.
pub(super) fn rebuild_clip(clip: &Clip, patch: &EncoderPatch<'_>) -> Result<Clip, NodeError> {
    let encoder = &clip.encoder;
    let (l, g) = encoder.weights();
    let g_component = if encoder.kind() == TextEncoderKind::Sd2 {
        Component::ClipH
    } else {
        Component::ClipG
    };
    let l = patch_encoder(l, Component::ClipL, patch)?;
    let g = patch_encoder(g, g_component, patch)?;
    let missing = || NodeError::input("clip", "the text encoder has no weights to patch");
    let new = match encoder.kind() {
        TextEncoderKind::Sd1 => {
            let (l, lw) = l.ok_or_else(missing)?;
            TextEncoder::sd1(l, bpe()).with_weights(Some(lw), None)
        }
        TextEncoderKind::Sd2 => {
            let (h, hw) = g.ok_or_else(missing)?;
            TextEncoder::sd2(h, bpe()).with_weights(None, Some(hw))
        }
        TextEncoderKind::Sdxl => {
            let ((l, lw), (g, gw)) = (l.ok_or_else(missing)?, g.ok_or_else(missing)?);
            TextEncoder::sdxl(l, g, bpe()).with_weights(Some(lw), Some(gw))
        }
        TextEncoderKind::SdxlRefiner => {
            let (g, gw) = g.ok_or_else(missing)?;
            TextEncoder::sdxl_refiner(g, bpe()).with_weights(None, Some(gw))
        }
    };
    Ok(Clip {
        encoder: Arc::new(new),
        clip_skip: clip.clip_skip,
    })
}

/// Applies a LoRA to the model and the text encoder.
pub struct LoraLoader;

impl Node for LoraLoader {
    fn spec(&self) -> NodeSpec {
        spec(
            "LoraLoader",
            "Load LoRA",
            vec![
                required("model", link(SlotType::MODEL)),
                required("clip", link(SlotType::CLIP)),
                required("lora_name", lora_names()),
                required("strength_model", strength()),
                required("strength_clip", strength()),
            ],
            vec![
                OutputSpec {
                    ty: SlotType::MODEL,
                    name: "MODEL",
                    tooltip: Some("The modified diffusion model."),
                },
                OutputSpec {
                    ty: SlotType::CLIP,
                    name: "CLIP",
                    tooltip: Some("The modified CLIP model."),
                },
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let clip = inputs.clip("clip")?;
        let (strength_model, strength_clip) = (
            inputs.float("strength_model")?,
            inputs.float("strength_clip")?,
        );
        if strength_model == 0.0 && strength_clip == 0.0 {
            return Ok(NodeOutput::values(vec![
                Value::Model(Arc::clone(model)),
                Value::Clip(clip.clone()),
            ]));
        }
        let lora = load_lora(ctx, inputs, model, Some(clip))?;
        let model = if strength_model == 0.0 {
            Arc::clone(model)
        } else {
            patch_model(model, &lora, strength_model)?
        };
        let clip = if strength_clip == 0.0 {
            clip.clone()
        } else {
            patch_clip(clip, &lora, strength_clip)?
        };
        Ok(NodeOutput {
            values: vec![Value::Model(model), Value::Clip(clip)],
            ui: Some(report_ui(&lora)),
        })
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "loras", constants, "lora_name")
    }
}

/// Applies a LoRA to the model only.
pub struct LoraLoaderModelOnly;

impl Node for LoraLoaderModelOnly {
    fn spec(&self) -> NodeSpec {
        spec(
            "LoraLoaderModelOnly",
            "LoraLoaderModelOnly",
            vec![
                required("model", link(SlotType::MODEL)),
                required("lora_name", lora_names()),
                required("strength_model", strength()),
            ],
            vec![OutputSpec {
                ty: SlotType::MODEL,
                name: "MODEL",
                tooltip: Some("The modified diffusion model."),
            }],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let strength_model = inputs.float("strength_model")?;
        if strength_model == 0.0 {
            return Ok(NodeOutput::values(vec![Value::Model(Arc::clone(model))]));
        }
        let lora = load_lora(ctx, inputs, model, None)?;
        let patched = patch_model(model, &lora, strength_model)?;
        Ok(NodeOutput {
            values: vec![Value::Model(patched)],
            ui: Some(report_ui(&lora)),
        })
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "loras", constants, "lora_name")
    }
}
