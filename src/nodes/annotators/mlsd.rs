//! comfyui_controlnet_aux's `M-LSDPreprocessor`: straight line segments by M-LSD, drawn white
//! on black.

use crate::engine::annotators::mlsd::{self, Mlsd, MlsdOptions};
use crate::graph::spec::build::*;
use crate::graph::spec::NodeSpec;
use crate::graph::ConstValue;
use crate::nodes::annotators::{aux_spec, image_out, resolution, AnnotatorFile};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(MlsdPreprocessor);
}

/// The M-LSD weights (`MLSDdetector.from_pretrained`'s default file).
pub const MLSD_FILE: AnnotatorFile = AnnotatorFile::lllyasviel("mlsd_large_512_fp32.pth");

/// Line segments (M-LSD).
pub struct MlsdPreprocessor;

impl Node for MlsdPreprocessor {
    fn spec(&self) -> NodeSpec {
        aux_spec(
            "M-LSDPreprocessor",
            "M-LSD Lines",
            "ControlNet Preprocessors/Line Extractors",
            vec![
                required("score_threshold", float(0.1, 0.01, 2.0, 0.01)),
                required("dist_threshold", float(0.1, 0.01, 20.0, 0.01)),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let opts = MlsdOptions {
            score_threshold: inputs.float("score_threshold")?,
            dist_threshold: inputs.float("dist_threshold")?,
            resolution: resolution(inputs)?,
        };
        let image = inputs.image("image")?;
        let net = MLSD_FILE.load(ctx, Mlsd::load)?;
        image_out(mlsd::mlsd(&net, image, &opts))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        _constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        AnnotatorFile::fingerprint(dirs, &[MLSD_FILE])
    }
}
