//! The depth annotators of comfyui_controlnet_aux: `DepthAnythingV2Preprocessor` (relative depth
//! from one of the published `depth_anything_v2_vit*.pth` files).

use crate::engine::annotators::depth_anything_v2::{depth_anything_v2, DepthAnythingV2};
use crate::graph::spec::build::*;
use crate::graph::spec::{InputKind, NodeSpec};
use crate::graph::ConstValue;
use crate::nodes::annotators::{aux_spec, image_out, resolution, AnnotatorFile};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(DepthAnythingV2Preprocessor);
}

const CATEGORY: &str = "ControlNet Preprocessors/Normal and Depth Estimators";

/// The files the node offers, in the pack's order, each where depth-anything publishes it (the
/// giant one is listed by the pack but not published yet).
pub const DEPTH_ANYTHING_V2: [AnnotatorFile; 4] = [
    AnnotatorFile {
        name: "depth_anything_v2_vitg.pth",
        published: "https://huggingface.co/depth-anything/Depth-Anything-V2-Giant",
    },
    AnnotatorFile {
        name: "depth_anything_v2_vitl.pth",
        published: "https://huggingface.co/depth-anything/Depth-Anything-V2-Large",
    },
    AnnotatorFile {
        name: "depth_anything_v2_vitb.pth",
        published: "https://huggingface.co/depth-anything/Depth-Anything-V2-Base",
    },
    AnnotatorFile {
        name: "depth_anything_v2_vits.pth",
        published: "https://huggingface.co/depth-anything/Depth-Anything-V2-Small",
    },
];

/// The small model, which the one-request API's depth preprocessing uses.
pub const DEPTH_ANYTHING_V2_SMALL: AnnotatorFile = DEPTH_ANYTHING_V2[3];

const CKPT_NAMES: &[&str] = &[
    "depth_anything_v2_vitg.pth",
    "depth_anything_v2_vitl.pth",
    "depth_anything_v2_vitb.pth",
    "depth_anything_v2_vits.pth",
];

fn depth_anything_file(name: &str) -> Option<AnnotatorFile> {
    DEPTH_ANYTHING_V2.iter().copied().find(|f| f.name == name)
}

/// comfyui_controlnet_aux's "Depth Anything V2 - Relative".
pub struct DepthAnythingV2Preprocessor;

impl Node for DepthAnythingV2Preprocessor {
    fn spec(&self) -> NodeSpec {
        aux_spec(
            "DepthAnythingV2Preprocessor",
            "Depth Anything V2 - Relative",
            CATEGORY,
            vec![required(
                "ckpt_name",
                InputKind::Combo {
                    options: crate::graph::spec::ComboOptions::Static(CKPT_NAMES),
                    default: Some("depth_anything_v2_vitl.pth"),
                    image_upload: false,
                },
            )],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("ckpt_name")?;
        let file = depth_anything_file(name)
            .ok_or_else(|| NodeError::input("ckpt_name", format!("unknown file '{name}'")))?;
        let model = file.load(ctx, DepthAnythingV2::load)?;
        image_out(depth_anything_v2(
            &model,
            inputs.image("image")?,
            resolution(inputs)?,
        ))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        match constants.iter().find(|(n, _)| n == "ckpt_name") {
            Some((_, ConstValue::String(name))) => match depth_anything_file(name) {
                Some(file) => AnnotatorFile::fingerprint(dirs, &[file]),
                None => Err(NodeError::input(
                    "ckpt_name",
                    format!("unknown file '{name}'"),
                )),
            },
            // a linked name: every offered file that is there
            _ => {
                let present: Vec<AnnotatorFile> = DEPTH_ANYTHING_V2
                    .into_iter()
                    .filter(|f| f.path(dirs).is_ok())
                    .collect();
                AnnotatorFile::fingerprint(dirs, &present)
            }
        }
    }
}
