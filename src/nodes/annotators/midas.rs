//! comfyui_controlnet_aux's MiDaS nodes (node_wrappers/midas.py): `MiDaS-DepthMapPreprocessor`
//! and `MiDaS-NormalMapPreprocessor`, both from `dpt_hybrid-midas-501f0c75.pt` (DPT-Hybrid, the
//! network in `engine::annotators::midas`).
//!
//! The file, not the pack's current `Intel/dpt-hybrid-midas` transformers download: the pack read
//! this file (and ran the net on the padded image) until June 2025, the issue names it, and it is
//! what `models/annotators/` and the pack's `ckpts/` tree hold.

use std::f64::consts::PI;

use crate::engine::annotators::midas::{midas, Midas, MidasMap};
use crate::graph::spec::build::*;
use crate::graph::spec::NodeSpec;
use crate::graph::ConstValue;
use crate::nodes::annotators::{aux_spec, image_out, resolution, AnnotatorFile};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(MidasPreprocessor { normal: false });
    registry.add(MidasPreprocessor { normal: true });
}

/// `dpt_hybrid-midas-501f0c75.pt` of `lllyasviel/Annotators`.
pub const MIDAS_FILE: AnnotatorFile = AnnotatorFile::lllyasviel("dpt_hybrid-midas-501f0c75.pt");

/// The MiDaS depth map (`normal: false`) or normal map node; both take `a` and `bg_threshold`
/// (the depth node passes them on unused, as the pack's does).
pub struct MidasPreprocessor {
    normal: bool,
}

impl Node for MidasPreprocessor {
    fn spec(&self) -> NodeSpec {
        let (class, display) = if self.normal {
            ("MiDaS-NormalMapPreprocessor", "MiDaS Normal Map")
        } else {
            ("MiDaS-DepthMapPreprocessor", "MiDaS Depth Map")
        };
        aux_spec(
            class,
            display,
            "ControlNet Preprocessors/Normal and Depth Estimators",
            vec![
                required("a", float(PI * 2.0, 0.0, PI * 5.0, 0.01)),
                required("bg_threshold", float(0.1, 0.0, 1.0, 0.01)),
            ],
        )
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        _constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        AnnotatorFile::fingerprint(dirs, &[MIDAS_FILE])
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let map = if self.normal {
            MidasMap::Normal {
                a: inputs.float("a")? as f32,
                bg_threshold: inputs.float("bg_threshold")? as f32,
            }
        } else {
            MidasMap::Depth
        };
        let net = MIDAS_FILE.load(ctx, Midas::load)?;
        image_out(midas(
            &net,
            inputs.image("image")?,
            resolution(inputs)?,
            map,
        ))
    }
}
