//! comfyui_controlnet_aux's `UniFormer-SemSegPreprocessor` and its legacy alias
//! `SemSegPreprocessor` (node_wrappers/uniformer.py): ADE20K semantic segmentation by UniFormer +
//! UperNet from `upernet_global_small.pth`, the network in `engine::annotators::uniformer`.

use crate::engine::annotators::uniformer::{semantic_segmentation, UniFormer};
use crate::graph::spec::NodeSpec;
use crate::graph::ConstValue;
use crate::nodes::annotators::{aux_spec, image_out, resolution, AnnotatorFile};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(SemSegPreprocessor {
        class: "UniFormer-SemSegPreprocessor",
        display: "UniFormer Segmentor",
    });
    registry.add(SemSegPreprocessor {
        class: "SemSegPreprocessor",
        display: "Semantic Segmentor (legacy, alias for UniFormer)",
    });
}

/// `upernet_global_small.pth` of `lllyasviel/Annotators`.
pub const UPERNET_GLOBAL_SMALL: AnnotatorFile =
    AnnotatorFile::lllyasviel("upernet_global_small.pth");

/// The segmentation map (each ADE20K class in its palette colour) at `resolution`; the pack
/// registers the same class under both names.
pub struct SemSegPreprocessor {
    class: &'static str,
    display: &'static str,
}

impl Node for SemSegPreprocessor {
    fn spec(&self) -> NodeSpec {
        aux_spec(
            self.class,
            self.display,
            "ControlNet Preprocessors/Semantic Segmentation",
            vec![],
        )
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        _constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        AnnotatorFile::fingerprint(dirs, &[UPERNET_GLOBAL_SMALL])
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let net = UPERNET_GLOBAL_SMALL.load(ctx, UniFormer::load)?;
        image_out(semantic_segmentation(
            &net,
            inputs.image("image")?,
            resolution(inputs)?,
        ))
    }
}
