//! comfyui_controlnet_aux's OneFormer nodes (node_wrappers/oneformer.py):
//! `OneFormer-ADE20K-SemSegPreprocessor` and `OneFormer-COCO-SemSegPreprocessor`, semantic
//! segmentation coloured with the pack's palette (the network in `engine::annotators::oneformer`).
//!
//! Today's pack (e8b689a) names the detectron2 files `250_16_swin_l_oneformer_ade20k_160k.pth` /
//! `150_16_swin_l_oneformer_coco_100ep.pth` but loads the transformers folders they map to,
//! `shi-labs/oneformer_ade20k_swin_large` / `shi-labs/oneformer_coco_swin_large`
//! (`model.safetensors` or `pytorch_model.bin` with `config.json` and `preprocessor_config.json`),
//! found as `.../shi-labs/<repo>/model.safetensors` or in a hub cache's
//! `models--shi-labs--<repo>/snapshots/<rev>/`, any depth under `models/annotators/`. Where only
//! the detectron2 file is there (the pack fetched it from `lllyasviel/Annotators` before), the
//! same net is read from it, with the processor the transformers conversion wrote.

use crate::engine::annotators::oneformer::{load, semantic_segmentation};
use crate::nodes::annotators::{AnnotatorFile, HfFolder, PlainAnnotatorNode};
use crate::nodes::Registry;

pub fn register(registry: &mut Registry) {
    for (class, display, folder) in [
        (
            "OneFormer-ADE20K-SemSegPreprocessor",
            "OneFormer ADE20K Segmentor",
            ADE20K,
        ),
        (
            "OneFormer-COCO-SemSegPreprocessor",
            "OneFormer COCO Segmentor",
            COCO,
        ),
    ] {
        registry.add(PlainAnnotatorNode {
            class,
            display,
            category: "ControlNet Preprocessors/Semantic Segmentation",
            file: folder,
            load,
            map: semantic_segmentation,
        });
    }
}

/// Swin-L trained on ADE20K (150 classes, 250 queries), and the detectron2 checkpoint the pack
/// maps to it (also in that repository), read where the folder is absent.
pub const ADE20K: HfFolder = HfFolder {
    repo: "shi-labs/oneformer_ade20k_swin_large",
    file: AnnotatorFile::lllyasviel("250_16_swin_l_oneformer_ade20k_160k.pth"),
};

/// Swin-L trained on COCO (133 classes, 150 queries).
pub const COCO: HfFolder = HfFolder {
    repo: "shi-labs/oneformer_coco_swin_large",
    file: AnnotatorFile::lllyasviel("150_16_swin_l_oneformer_coco_100ep.pth"),
};
