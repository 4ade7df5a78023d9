//! comfyui_controlnet_aux's `UniFormer-SemSegPreprocessor` and its legacy alias
//! `SemSegPreprocessor` (node_wrappers/uniformer.py): ADE20K semantic segmentation by UniFormer +
//! UperNet from `upernet_global_small.pth`, the network in `engine::annotators::uniformer`.

use crate::engine::annotators::uniformer::{semantic_segmentation, UniFormer};
use crate::nodes::annotators::{AnnotatorFile, PlainAnnotatorNode};
use crate::nodes::Registry;

/// The segmentation map (each ADE20K class in its palette colour) at `resolution`; the pack
/// registers the same class under both names.
pub fn register(registry: &mut Registry) {
    for (class, display) in [
        ("UniFormer-SemSegPreprocessor", "UniFormer Segmentor"),
        (
            "SemSegPreprocessor",
            "Semantic Segmentor (legacy, alias for UniFormer)",
        ),
    ] {
        registry.add(PlainAnnotatorNode {
            class,
            display,
            category: "ControlNet Preprocessors/Semantic Segmentation",
            file: UPERNET_GLOBAL_SMALL,
            load: UniFormer::load,
            map: semantic_segmentation,
        });
    }
}

/// `upernet_global_small.pth` of `lllyasviel/Annotators`.
pub const UPERNET_GLOBAL_SMALL: AnnotatorFile =
    AnnotatorFile::lllyasviel("upernet_global_small.pth");
