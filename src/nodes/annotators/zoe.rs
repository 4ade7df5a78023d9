//! comfyui_controlnet_aux's `Zoe-DepthMapPreprocessor` (node_wrappers/zoe.py): metric depth by
//! ZoeDepth N from `ZoeD_M12_N.pt`, the network in `engine::annotators::zoe`.
//!
//! The file, not the pack's current `Intel/zoedepth-nyu-kitti` transformers download: the pack
//! read this file until June 2025, the issue names it, and it is what `models/annotators/` and the
//! pack's `ckpts/` tree hold.

use crate::engine::annotators::zoe::{zoe, Zoe};
use crate::nodes::annotators::{AnnotatorFile, PlainAnnotatorNode};
use crate::nodes::Registry;

/// `Zoe-DepthMapPreprocessor`: the depth map (near bright, between the 2nd and 85th percentiles)
/// at `resolution`.
pub fn register(registry: &mut Registry) {
    registry.add(PlainAnnotatorNode {
        class: "Zoe-DepthMapPreprocessor",
        display: "Zoe Depth Map",
        category: "ControlNet Preprocessors/Normal and Depth Estimators",
        file: ZOE_FILE,
        load: Zoe::load,
        map: zoe,
    });
}

/// `ZoeD_M12_N.pt` of `lllyasviel/Annotators`.
pub const ZOE_FILE: AnnotatorFile = AnnotatorFile::lllyasviel("ZoeD_M12_N.pt");
