//! GLIGEN text boxes: GLIGENLoader and GLIGENTextBoxApply, as ComfyUI's `nodes.py`. The boxes
//! ride on the conditioning entries (`engine::gligen::Grounding`); the sampler runs the UNet with
//! their middle patch while it evaluates those entries (`engine::diffusion`).

use std::sync::Arc;

use crate::engine::gligen::{Grounding, TextBox};
use crate::graph::spec::build::*;
use crate::graph::spec::{Freshness, NodeSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::conditioning::EmbeddingFiles;
use crate::nodes::image_ops::MAX_RESOLUTION;
use crate::nodes::loaders::files;
use crate::nodes::{
    file_fingerprint, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value,
};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(GligenLoader);
    registry.add(GligenTextBoxApply);
}

/// Loads a file from `models/gligen`.
pub struct GligenLoader;

impl Node for GligenLoader {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            freshness: Freshness::ReadsFiles,
            ..node(
                "GLIGENLoader",
                "GLIGENLoader",
                "loaders",
                vec![required("gligen_name", files("gligen"))],
                vec![output(SlotType::GLIGEN, "GLIGEN")],
            )
        }
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("gligen_name")?;
        let path = ctx.model_path("gligen", "gligen_name", name)?;
        let model = ctx
            .models
            .gligen(&path)
            .map_err(|e| NodeError::model_load("gligen_name", e))?;
        Ok(NodeOutput::values(vec![Value::Gligen(model)]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "gligen", constants, "gligen_name")
    }
}

/// Adds a text box to every entry of a conditioning: the prompt `text`, encoded, steers what
/// appears in the box (pixels; stored, as ComfyUI stores them, divided by 8).
pub struct GligenTextBoxApply;

impl Node for GligenTextBoxApply {
    fn spec(&self) -> NodeSpec {
        let size = |default| int_step(default, 8, MAX_RESOLUTION, 8);
        let offset = int_step(0, 0, MAX_RESOLUTION, 8);
        node(
            "GLIGENTextBoxApply",
            "GLIGENTextBoxApply",
            "conditioning/gligen",
            vec![
                required("conditioning_to", link(SlotType::CONDITIONING)),
                required("clip", link(SlotType::CLIP)),
                required("gligen_textbox_model", link(SlotType::GLIGEN)),
                required("text", multiline("")),
                required("width", size(64)),
                required("height", size(64)),
                required("x", offset.clone()),
                required("y", offset),
            ],
            vec![output(SlotType::CONDITIONING, "CONDITIONING")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let conditioning = inputs.conditioning("conditioning_to")?;
        let clip = inputs.clip("clip")?;
        let model = inputs.gligen("gligen_textbox_model")?;
        let embeddings = EmbeddingFiles { dirs: &ctx.dirs };
        let tokens = clip
            .encoder
            .tokenize(inputs.string("text")?, Some(&embeddings));
        let encoded = clip
            .encoder
            .encode_tokens_unprojected(&tokens, clip.clip_skip)
            .map_err(|e| NodeError::input("clip", format!("text encoding failed: {e}")))?;
        let text_box = TextBox {
            embedding: encoded.pooled,
            height: inputs.usize("height")? / 8,
            width: inputs.usize("width")? / 8,
            y: inputs.usize("y")? / 8,
            x: inputs.usize("x")? / 8,
        };
        let entries = conditioning
            .iter()
            .map(|entry| {
                let mut entry = entry.clone();
                // The boxes added before stay; the model is the one given last.
                let mut boxes = entry.gligen.take().map(|g| g.boxes).unwrap_or_default();
                boxes.push(text_box.clone());
                entry.gligen = Some(Grounding {
                    model: Arc::clone(model),
                    boxes,
                });
                entry
            })
            .collect();
        Ok(NodeOutput::values(vec![Value::Conditioning(Arc::new(
            entries,
        ))]))
    }
}
