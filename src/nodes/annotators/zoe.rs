//! comfyui_controlnet_aux's `Zoe-DepthMapPreprocessor` (node_wrappers/zoe.py): metric depth by
//! ZoeDepth (the network in `engine::annotators::zoe`) from either of the two files the pack has
//! read:
//! - transformers' `Intel/zoedepth-nyu-kitti` folder (`model.safetensors`, or
//!   `pytorch_model.bin`, with its `config.json` and `preprocessor_config.json`; ZoeDepth NK, two
//!   domain heads), which the pack runs through the depth-estimation pipeline since e8b689a
//!   (`engine::annotators::zoe_hf`): found as `.../Intel/zoedepth-nyu-kitti/model.safetensors` or
//!   in a hub cache's `models--Intel--zoedepth-nyu-kitti/snapshots/<rev>/`, any depth under
//!   `models/annotators/`; run as today's pack runs it (one run, no flip; the depth through
//!   uint8 before the percentiles);
//! - `ZoeD_M12_N.pt` of lllyasviel/Annotators (ZoeDepth N), which the pack read until June 2025
//!   (`infer`'s flip averaging).
//!
//! Where both are there the folder wins: it is what today's pack runs.

use crate::engine::annotators::zoe::{zoe, Zoe};
use crate::nodes::annotators::{AnnotatorFile, HfFolder, PlainAnnotatorNode};
use crate::nodes::Registry;

/// `Zoe-DepthMapPreprocessor`: the depth map (near bright, between the 2nd and 85th percentiles)
/// at `resolution`.
pub fn register(registry: &mut Registry) {
    registry.add(PlainAnnotatorNode {
        class: "Zoe-DepthMapPreprocessor",
        display: "Zoe Depth Map",
        category: "ControlNet Preprocessors/Normal and Depth Estimators",
        file: ZOE_HF,
        load: Zoe::load,
        map: zoe,
    });
}

/// `ZoeD_M12_N.pt` of `lllyasviel/Annotators`.
pub const ZOE_FILE: AnnotatorFile = AnnotatorFile::lllyasviel("ZoeD_M12_N.pt");

/// The Hugging Face repository today's pack loads through transformers, before the `.pt`.
pub const ZOE_HF: HfFolder = HfFolder {
    repo: "Intel/zoedepth-nyu-kitti",
    file: ZOE_FILE,
};
