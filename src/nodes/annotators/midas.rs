//! comfyui_controlnet_aux's MiDaS nodes (node_wrappers/midas.py): `MiDaS-DepthMapPreprocessor`
//! and `MiDaS-NormalMapPreprocessor`, DPT-Hybrid (the network in `engine::annotators::midas`)
//! from either of the two files the pack has read:
//! - transformers' `Intel/dpt-hybrid-midas` folder (`model.safetensors`, or `pytorch_model.bin`,
//!   with its `config.json` and `preprocessor_config.json`), which the pack loads through `DPTForDepthEstimation` since
//!   e8b689a: found as `.../Intel/dpt-hybrid-midas/model.safetensors` or in a hub cache's
//!   `models--Intel--dpt-hybrid-midas/snapshots/<rev>/`, any depth under `models/annotators/`;
//!   run as today's pack runs it (its processor's resize, the depth resized back);
//! - `dpt_hybrid-midas-501f0c75.pt` of lllyasviel/Annotators, which the pack read until June 2025
//!   (the net on the padded image).
//!
//! Where both are there the folder wins: it is what today's pack runs.

use std::f64::consts::PI;

use std::path::PathBuf;

use crate::engine::annotators::midas::{midas, Midas, MidasMap};
use crate::graph::spec::build::*;
use crate::graph::spec::NodeSpec;
use crate::graph::ConstValue;
use crate::nodes::annotators::{aux_spec, image_out, resolution, AnnotatorFile, HfFolder};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(MidasPreprocessor { normal: false });
    registry.add(MidasPreprocessor { normal: true });
}

/// `dpt_hybrid-midas-501f0c75.pt` of `lllyasviel/Annotators`.
pub const MIDAS_FILE: AnnotatorFile = AnnotatorFile::lllyasviel("dpt_hybrid-midas-501f0c75.pt");

/// The Hugging Face repository today's pack loads through transformers, before the `.pt`.
pub const MIDAS_HF: HfFolder = HfFolder {
    repo: "Intel/dpt-hybrid-midas",
    file: MIDAS_FILE,
};

/// The net's file: the transformers folder's weights if there are any, else the `.pt`; the
/// error names both.
pub fn midas_path(dirs: &DataDirs) -> Result<PathBuf, NodeError> {
    MIDAS_HF.path(dirs)
}

/// What to tell a user who has neither file.
pub fn midas_missing() -> String {
    MIDAS_HF.missing()
}

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
        crate::nodes::path_fingerprint(dirs, &midas_path(dirs)?)
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
        let path = midas_path(&ctx.dirs)?;
        let net = ctx
            .models
            .annotator(&path, Midas::load)
            .map_err(|e| NodeError::Failed(format!("annotator MiDaS: {e}")))?;
        image_out(midas(
            &net,
            inputs.image("image")?,
            resolution(inputs)?,
            map,
        ))
    }
}
