//! comfyui_controlnet_aux's `BAE-NormalMapPreprocessor` (node_wrappers/normalbae.py): surface
//! normals by NormalBae from `scannet.pt`, the network in `engine::annotators::normalbae`.

use crate::engine::annotators::normalbae::{normal_map, NormalBae};
use crate::graph::spec::NodeSpec;
use crate::graph::ConstValue;
use crate::nodes::annotators::{aux_spec, image_out, resolution, AnnotatorFile};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(BaeNormalMapPreprocessor);
}

/// `scannet.pt` of `lllyasviel/Annotators`.
pub const SCANNET: AnnotatorFile = AnnotatorFile::lllyasviel("scannet.pt");

/// `BAE-NormalMapPreprocessor`: the normal map (xyz as RGB, `(n + 1) / 2`) at `resolution`.
pub struct BaeNormalMapPreprocessor;

impl Node for BaeNormalMapPreprocessor {
    fn spec(&self) -> NodeSpec {
        aux_spec(
            "BAE-NormalMapPreprocessor",
            "BAE Normal Map",
            "ControlNet Preprocessors/Normal and Depth Estimators",
            vec![],
        )
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        _constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        AnnotatorFile::fingerprint(dirs, &[SCANNET])
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let net = SCANNET.load(ctx, NormalBae::load)?;
        image_out(normal_map(
            &net,
            inputs.image("image")?,
            resolution(inputs)?,
        ))
    }
}
