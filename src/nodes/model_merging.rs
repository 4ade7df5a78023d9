//! ComfyUI's model-merging nodes (`comfy_extras/nodes_model_merging.py` and
//! `nodes_model_merging_model_specific.py`): ModelMergeSimple, ModelMergeBlocks, ModelMergeAdd,
//! ModelMergeSubtract, ModelMergeSD1/SD2/SDXL and CLIPMergeSimple/Add/Subtract.
//!
//! A merge computes new tensors for the weights it changes (`engine::merge::merge`) and rebuilds
//! the first model from them and the shared rest, as LoRA does; block ratios are picked by the
//! weight's LDM name, as ComfyUI's keys are named.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;

use crate::engine::diffusion::DiffusionModel;
use crate::engine::lora::Component;
use crate::engine::merge::layout::unet_ldm_names;
use crate::engine::merge::{block_strength, merge, MergeStrength};
use crate::graph::spec::build::*;
use crate::graph::spec::{InputSpec, NodeSpec};
use crate::graph::SlotType;
use crate::nodes::lora::{rebuild_clip, rebuild_unet};
use crate::nodes::{Clip, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    registry.add(ModelMerge {
        class_type: "ModelMergeSimple",
        rule: ModelRule::Ratio,
    });
    registry.add(ModelMerge {
        class_type: "ModelMergeBlocks",
        rule: ModelRule::Blocks(&["input", "middle", "out"]),
    });
    registry.add(ModelMerge {
        class_type: "ModelMergeSubtract",
        rule: ModelRule::Subtract,
    });
    registry.add(ModelMerge {
        class_type: "ModelMergeAdd",
        rule: ModelRule::Add,
    });
    registry.add(ModelMerge {
        class_type: "ModelMergeSD1",
        rule: ModelRule::Blocks(&SD1_BLOCKS),
    });
    // ComfyUI registers the SD1 class again for SD2: the two have the same blocks.
    registry.add(ModelMerge {
        class_type: "ModelMergeSD2",
        rule: ModelRule::Blocks(&SD1_BLOCKS),
    });
    registry.add(ModelMerge {
        class_type: "ModelMergeSDXL",
        rule: ModelRule::Blocks(&SDXL_BLOCKS),
    });
    for (class_type, rule) in [
        ("CLIPMergeSimple", ClipRule::Ratio),
        ("CLIPMergeSubtract", ClipRule::Subtract),
        ("CLIPMergeAdd", ClipRule::Add),
    ] {
        registry.add(ClipMerge { class_type, rule });
    }
}

/// ModelMergeSD1's ratio inputs: LDM name prefixes, with their trailing dots.
const SD1_BLOCKS: [&str; 30] = [
    "time_embed.",
    "label_emb.",
    "input_blocks.0.",
    "input_blocks.1.",
    "input_blocks.2.",
    "input_blocks.3.",
    "input_blocks.4.",
    "input_blocks.5.",
    "input_blocks.6.",
    "input_blocks.7.",
    "input_blocks.8.",
    "input_blocks.9.",
    "input_blocks.10.",
    "input_blocks.11.",
    "middle_block.0.",
    "middle_block.1.",
    "middle_block.2.",
    "output_blocks.0.",
    "output_blocks.1.",
    "output_blocks.2.",
    "output_blocks.3.",
    "output_blocks.4.",
    "output_blocks.5.",
    "output_blocks.6.",
    "output_blocks.7.",
    "output_blocks.8.",
    "output_blocks.9.",
    "output_blocks.10.",
    "output_blocks.11.",
    "out.",
];

/// ModelMergeSDXL's ratio inputs: ComfyUI spells the block ones without a trailing dot.
const SDXL_BLOCKS: [&str; 24] = [
    "time_embed.",
    "label_emb.",
    "input_blocks.0",
    "input_blocks.1",
    "input_blocks.2",
    "input_blocks.3",
    "input_blocks.4",
    "input_blocks.5",
    "input_blocks.6",
    "input_blocks.7",
    "input_blocks.8",
    "middle_block.0",
    "middle_block.1",
    "middle_block.2",
    "output_blocks.0",
    "output_blocks.1",
    "output_blocks.2",
    "output_blocks.3",
    "output_blocks.4",
    "output_blocks.5",
    "output_blocks.6",
    "output_blocks.7",
    "output_blocks.8",
    "out.",
];

fn ratio() -> crate::graph::spec::InputKind {
    float(1.0, 0.0, 1.0, 0.01)
}

fn multiplier() -> crate::graph::spec::InputKind {
    float(1.0, -10.0, 10.0, 0.01)
}

/// How a model merge weighs each weight.
#[derive(Clone, Copy)]
enum ModelRule {
    Ratio,
    /// A ratio per LDM name prefix (the input names), ComfyUI's ModelMergeBlocks.
    Blocks(&'static [&'static str]),
    Subtract,
    Add,
}

struct ModelMerge {
    class_type: &'static str,
    rule: ModelRule,
}

impl Node for ModelMerge {
    fn spec(&self) -> NodeSpec {
        let mut inputs = vec![
            required("model1", link(SlotType::MODEL)),
            required("model2", link(SlotType::MODEL)),
        ];
        match self.rule {
            ModelRule::Ratio => inputs.push(required("ratio", ratio())),
            ModelRule::Blocks(names) => {
                inputs.extend(names.iter().map(|name| required(name, ratio())));
            }
            ModelRule::Subtract => inputs.push(required("multiplier", multiplier())),
            ModelRule::Add => {}
        }
        let (category, python_module) = match self.class_type {
            "ModelMergeSD1" | "ModelMergeSD2" | "ModelMergeSDXL" => (
                "advanced/model_merging/model_specific",
                "comfy_extras.nodes_model_merging_model_specific",
            ),
            _ => ("advanced/model_merging", "comfy_extras.nodes_model_merging"),
        };
        NodeSpec {
            python_module,
            ..node(
                self.class_type,
                self.class_type,
                category,
                inputs,
                vec![output(SlotType::MODEL, "MODEL")],
            )
        }
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model1 = inputs.model("model1")?;
        let model2 = inputs.model("model2")?;
        let merged = match self.rule {
            ModelRule::Ratio => {
                let strength = MergeStrength::ratio(inputs.float("ratio")?);
                merge_models(model1, model2, |_| strength)?
            }
            ModelRule::Subtract => {
                let strength = MergeStrength::subtract(inputs.float("multiplier")?);
                merge_models(model1, model2, |_| strength)?
            }
            ModelRule::Add => merge_models(model1, model2, |_| MergeStrength::add())?,
            ModelRule::Blocks(names) => {
                let ratios: Vec<(&str, f64)> = names
                    .iter()
                    .map(|name| Ok((*name, inputs.float(name)?)))
                    .collect::<Result<_, NodeError>>()?;
                let weights = unet_weights(model1, "model1")?;
                let ldm = unet_ldm_names(weights, model1.unet.config().layers_per_block)
                    .map_err(|e| NodeError::input("model1", e))?;
                merge_models(model1, model2, |key| {
                    let ratio = ldm
                        .get(key)
                        .and_then(|name| block_strength(name, &ratios))
                        .unwrap_or(1.0);
                    MergeStrength::ratio(ratio)
                })?
            }
        };
        Ok(NodeOutput::values(vec![Value::Model(merged)]))
    }
}

/// The UNet's weights of a model input, which a merge reads.
fn unet_weights<'a>(
    model: &'a DiffusionModel,
    input: &str,
) -> Result<&'a HashMap<String, Tensor>, NodeError> {
    model.weights.as_deref().ok_or_else(|| {
        NodeError::input(
            input,
            "this model was not loaded from a file, so it has no weights to merge",
        )
    })
}

/// `model1` rebuilt with `model2` merged in; `model1` itself when no weight changes.
fn merge_models(
    model1: &Arc<DiffusionModel>,
    model2: &DiffusionModel,
    strength_of: impl Fn(&str) -> MergeStrength,
) -> Result<Arc<DiffusionModel>, NodeError> {
    let (w1, w2) = (
        unet_weights(model1, "model1")?,
        unet_weights(model2, "model2")?,
    );
    let (merged, report) =
        merge(w1, w2, strength_of).map_err(|e| NodeError::input("model2", e.to_string()))?;
    if report.merged == 0 {
        return Ok(Arc::clone(model1));
    }
    rebuild_unet(model1, merged)
}

/// How a CLIP merge weighs each weight.
#[derive(Clone, Copy)]
enum ClipRule {
    Ratio,
    Subtract,
    Add,
}

struct ClipMerge {
    class_type: &'static str,
    rule: ClipRule,
}

impl Node for ClipMerge {
    fn spec(&self) -> NodeSpec {
        let mut inputs: Vec<InputSpec> = vec![
            required("clip1", link(SlotType::CLIP)),
            required("clip2", link(SlotType::CLIP)),
        ];
        match self.rule {
            ClipRule::Ratio => inputs.push(required("ratio", ratio())),
            ClipRule::Subtract => inputs.push(required("multiplier", multiplier())),
            ClipRule::Add => {}
        }
        NodeSpec {
            python_module: "comfy_extras.nodes_model_merging",
            ..node(
                self.class_type,
                self.class_type,
                "advanced/model_merging",
                inputs,
                vec![output(SlotType::CLIP, "CLIP")],
            )
        }
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let clip1 = inputs.clip("clip1")?;
        let clip2 = inputs.clip("clip2")?;
        let strength = match self.rule {
            ClipRule::Ratio => MergeStrength::ratio(inputs.float("ratio")?),
            ClipRule::Subtract => MergeStrength::subtract(inputs.float("multiplier")?),
            ClipRule::Add => MergeStrength::add(),
        };
        if strength.is_identity() {
            return Ok(NodeOutput::values(vec![Value::Clip(clip1.clone())]));
        }
        let merged = merge_clips(clip1, clip2, strength)?;
        Ok(NodeOutput::values(vec![Value::Clip(merged)]))
    }
}

/// `clip1` with each text model rebuilt with `clip2`'s same model merged in (a text model
/// `clip2` lacks stays as it is). ComfyUI skips `position_ids` and `logit_scale`, which Weft's
/// text models do not hold.
fn merge_clips(clip1: &Clip, clip2: &Clip, strength: MergeStrength) -> Result<Clip, NodeError> {
    let (l2, g2) = clip2.encoder.weights();
    rebuild_clip(clip1, &|weights, component| {
        let other = match component {
            Component::ClipL => l2,
            _ => g2,
        };
        let Some(other) = other else {
            return Ok(weights.clone());
        };
        let (merged, _) = merge(weights, other, |key| {
            if key.ends_with(".position_ids") || key.ends_with(".logit_scale") {
                MergeStrength::ratio(1.0)
            } else {
                strength
            }
        })
        .map_err(|e| NodeError::input("clip2", e.to_string()))?;
        Ok(merged)
    })
}
