//! comfyui_controlnet_aux's `BAE-NormalMapPreprocessor` (node_wrappers/normalbae.py): surface
//! normals by NormalBae from `scannet.pt`, the network in `engine::annotators::normalbae`.

use crate::engine::annotators::normalbae::{normal_map, NormalBae};
use crate::nodes::annotators::{AnnotatorFile, PlainAnnotatorNode};
use crate::nodes::Registry;

/// `BAE-NormalMapPreprocessor`: the normal map (xyz as RGB, `(n + 1) / 2`) at `resolution`.
pub fn register(registry: &mut Registry) {
    registry.add(PlainAnnotatorNode {
        class: "BAE-NormalMapPreprocessor",
        display: "BAE Normal Map",
        category: "ControlNet Preprocessors/Normal and Depth Estimators",
        file: SCANNET,
        load: NormalBae::load,
        map: normal_map,
    });
}

/// `scannet.pt` of `lllyasviel/Annotators`.
pub const SCANNET: AnnotatorFile = AnnotatorFile::lllyasviel("scannet.pt");
