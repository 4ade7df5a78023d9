//! Image prompts: CLIPVisionLoader, CLIPVisionEncode, unCLIPCheckpointLoader,
//! unCLIPConditioning, StyleModelLoader and StyleModelApply, as ComfyUI's `nodes.py`.
//!
//! unCLIPConditioning only records the image embedding on each entry; the sampler turns it into
//! the model's input (an unCLIP model's `y`, SDXL's pooled output for "revision") with its seed,
//! as ComfyUI's `encode_adm` does (`engine::diffusion::unclip`).

use std::sync::Arc;

use candle_core::Tensor;

use crate::engine::clip_vision::ClipVisionOutput;
use crate::engine::diffusion::unclip::UnclipCond;
use crate::engine::diffusion::CondEntry;
use crate::graph::spec::build::*;
use crate::graph::spec::{NodeSpec, OutputSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::loaders::{
    checkpoint_outputs, checkpoint_values, files, loader_spec, open_checkpoint,
};
use crate::nodes::{
    file_fingerprint, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value,
};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(ClipVisionLoader);
    registry.add(ClipVisionEncode);
    registry.add(UnclipCheckpointLoader);
    registry.add(UnclipConditioning);
    registry.add(StyleModelLoader);
    registry.add(StyleModelApply);
}

fn conditioning(list: Vec<CondEntry>) -> NodeOutput {
    NodeOutput::values(vec![Value::Conditioning(Arc::new(list))])
}

/// Loads a CLIP vision encoder from `models/clip_vision` (HF or OpenCLIP layout, ViT-L, H or
/// bigG detected from the weights).
pub struct ClipVisionLoader;

impl Node for ClipVisionLoader {
    fn spec(&self) -> NodeSpec {
        loader_spec(
            "CLIPVisionLoader",
            "Load CLIP Vision",
            "loaders",
            vec![required("clip_name", files("clip_vision"))],
            vec![output(SlotType::CLIP_VISION, "CLIP_VISION")],
            "",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("clip_name")?;
        let path = ctx.model_path("clip_vision", "clip_name", name)?;
        let model = ctx
            .models
            .clip_vision(&path)
            .map_err(|e| NodeError::model_load("clip_name", e))?;
        tracing::info!(model = %model.describe(), "loaded clip vision");
        Ok(NodeOutput::values(vec![Value::ClipVision(model)]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "clip_vision", constants, "clip_name")
    }
}

/// Encodes images with a CLIP vision model; `crop` `"center"` cuts the centre square after
/// scaling the shortest side, `"none"` squashes the whole image.
pub struct ClipVisionEncode;

impl Node for ClipVisionEncode {
    fn spec(&self) -> NodeSpec {
        node(
            "CLIPVisionEncode",
            "CLIP Vision Encode",
            "conditioning",
            vec![
                required("clip_vision", link(SlotType::CLIP_VISION)),
                required("image", link(SlotType::IMAGE)),
                required("crop", combo(&["center", "none"])),
            ],
            vec![output(SlotType::CLIP_VISION_OUTPUT, "CLIP_VISION_OUTPUT")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.clip_vision("clip_vision")?;
        let image = inputs.image("image")?;
        let crop = inputs.string("crop")? == "center";
        let output = model
            .encode_image(image, crop)
            .map_err(|e| NodeError::input("image", e.to_string()))?;
        Ok(NodeOutput::values(vec![Value::ClipVisionOutput(Arc::new(
            output,
        ))]))
    }
}

/// Loads an SD2.1 unCLIP checkpoint: the model, text encoder and VAE, and the CLIP vision
/// tower it was trained with (`embedder.model.visual.`).
pub struct UnclipCheckpointLoader;

impl Node for UnclipCheckpointLoader {
    fn spec(&self) -> NodeSpec {
        let mut outputs = checkpoint_outputs();
        outputs.push(OutputSpec {
            ty: SlotType::CLIP_VISION,
            name: "CLIP_VISION",
            tooltip: None,
        });
        // ComfyUI's outputs of this loader carry no tooltips.
        for out in &mut outputs {
            out.tooltip = None;
        }
        loader_spec(
            "unCLIPCheckpointLoader",
            "unCLIPCheckpointLoader",
            "loaders",
            vec![required("ckpt_name", files("checkpoints"))],
            outputs,
            "",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("ckpt_name")?;
        let loaded = open_checkpoint(ctx, name)?;
        let clip_vision = loaded.clip_vision.as_ref().ok_or_else(|| {
            NodeError::input(
                "ckpt_name",
                format!(
                    "{name} has no CLIP vision weights (embedder.model.visual.*); load one with \
                     CLIPVisionLoader"
                ),
            )
        })?;
        let mut values = checkpoint_values(name, &loaded)?;
        values.push(Value::ClipVision(Arc::clone(clip_vision)));
        Ok(NodeOutput::values(values))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "checkpoints", constants, "ckpt_name")
    }
}

/// Attaches a CLIP vision output's image embeddings to every entry, for unCLIP models and SDXL
/// (which takes them as its pooled output); strength 0 leaves the conditioning as it is.
pub struct UnclipConditioning;

impl Node for UnclipConditioning {
    fn spec(&self) -> NodeSpec {
        node(
            "unCLIPConditioning",
            "unCLIPConditioning",
            "conditioning",
            vec![
                required("conditioning", link(SlotType::CONDITIONING)),
                required("clip_vision_output", link(SlotType::CLIP_VISION_OUTPUT)),
                required("strength", float(1.0, -10.0, 10.0, 0.01)),
                required("noise_augmentation", float(0.0, 0.0, 1.0, 0.01)),
            ],
            vec![output(SlotType::CONDITIONING, "CONDITIONING")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let list = inputs.conditioning("conditioning")?;
        let vision = inputs.clip_vision_output("clip_vision_output")?;
        let strength = inputs.float("strength")?;
        let noise_augmentation = inputs.float("noise_augmentation")?;
        if strength == 0.0 {
            return Ok(NodeOutput::values(vec![Value::Conditioning(Arc::clone(
                list,
            ))]));
        }
        let cond = UnclipCond {
            image_embeds: vision.image_embeds.clone(),
            strength,
            noise_augmentation,
        };
        Ok(conditioning(
            list.iter()
                .map(|entry| {
                    let mut entry = entry.clone();
                    entry.unclip.push(cond.clone());
                    entry
                })
                .collect(),
        ))
    }
}

/// Loads a T2I style model from `models/style_models`.
pub struct StyleModelLoader;

impl Node for StyleModelLoader {
    fn spec(&self) -> NodeSpec {
        loader_spec(
            "StyleModelLoader",
            "Load Style Model",
            "loaders",
            vec![required("style_model_name", files("style_models"))],
            vec![output(SlotType::STYLE_MODEL, "STYLE_MODEL")],
            "",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("style_model_name")?;
        let path = ctx.model_path("style_models", "style_model_name", name)?;
        let model = ctx
            .models
            .style_model(&path)
            .map_err(|e| NodeError::model_load("style_model_name", e))?;
        Ok(NodeOutput::values(vec![Value::StyleModel(model)]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "style_models", constants, "style_model_name")
    }
}

/// Appends a style model's tokens (from a CLIP vision output, every image's in a row) to each
/// entry's text tokens. `multiply` scales the tokens by `strength`; `attn_bias` leaves them as
/// they are, because ComfyUI expresses it as an attention mask that only joint-attention models
/// (Flux) read: on SD1, SD2 and SDXL it changes nothing, there as here.
pub struct StyleModelApply;

impl Node for StyleModelApply {
    fn spec(&self) -> NodeSpec {
        node(
            "StyleModelApply",
            "Apply Style Model",
            "conditioning/style_model",
            vec![
                required("conditioning", link(SlotType::CONDITIONING)),
                required("style_model", link(SlotType::STYLE_MODEL)),
                required("clip_vision_output", link(SlotType::CLIP_VISION_OUTPUT)),
                required("strength", float(1.0, 0.0, 10.0, 0.001)),
                required("strength_type", combo(&["multiply", "attn_bias"])),
            ],
            vec![output(SlotType::CONDITIONING, "CONDITIONING")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let list = inputs.conditioning("conditioning")?;
        let model = inputs.style_model("style_model")?;
        let vision = inputs.clip_vision_output("clip_vision_output")?;
        let strength = inputs.float("strength")?;
        let tokens = style_tokens(model, vision)?;
        let tokens = match inputs.string("strength_type")? {
            "multiply" => (tokens * strength)?,
            _ => tokens,
        };
        let width = tokens.dim(2)?;
        let list = list
            .iter()
            .map(|entry| {
                let context_width = entry.context.dim(2)?;
                if context_width != width {
                    return Err(NodeError::input(
                        "style_model",
                        format!(
                            "the style model gives {width}-wide tokens, the conditioning's are \
                             {context_width} wide"
                        ),
                    ));
                }
                let mut entry = entry.clone();
                entry.context = Tensor::cat(&[&entry.context, &tokens], 1)
                    .map_err(|e| NodeError::input("conditioning", e.to_string()))?;
                Ok(entry)
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        Ok(conditioning(list))
    }
}

/// ComfyUI's `get_cond(...).flatten(0, 1).unsqueeze(0)`: `[1, images × tokens, context]`.
fn style_tokens(
    model: &crate::engine::clip_vision::StyleAdapter,
    vision: &ClipVisionOutput,
) -> Result<Tensor, NodeError> {
    let cond = model
        .forward(&vision.last_hidden_state)
        .map_err(|e| NodeError::input("clip_vision_output", e.to_string()))?;
    let (images, tokens, width) = cond.dims3()?;
    Ok(cond.reshape((1, images * tokens, width))?)
}
