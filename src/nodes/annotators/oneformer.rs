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

use std::path::PathBuf;

use crate::engine::annotators::oneformer::{load, semantic_segmentation};
use crate::graph::spec::NodeSpec;
use crate::graph::ConstValue;
use crate::nodes::annotators::{
    aux_spec, hf_folder_hint, hf_weights, image_out, resolution, AnnotatorFile,
};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(OneFormerSegmentor(&ADE20K));
    registry.add(OneFormerSegmentor(&COCO));
}

/// One of the two published OneFormer nets.
#[derive(Debug)]
pub struct OneFormerModel {
    class: &'static str,
    display: &'static str,
    /// The Hugging Face repository the pack loads.
    pub repo: &'static str,
    /// The detectron2 checkpoint the pack maps to it (also in the Hugging Face repository).
    pub detectron2: AnnotatorFile,
}

/// Swin-L trained on ADE20K (150 classes, 250 queries).
pub const ADE20K: OneFormerModel = OneFormerModel {
    class: "OneFormer-ADE20K-SemSegPreprocessor",
    display: "OneFormer ADE20K Segmentor",
    repo: "shi-labs/oneformer_ade20k_swin_large",
    detectron2: AnnotatorFile::lllyasviel("250_16_swin_l_oneformer_ade20k_160k.pth"),
};

/// Swin-L trained on COCO (133 classes, 150 queries).
pub const COCO: OneFormerModel = OneFormerModel {
    class: "OneFormer-COCO-SemSegPreprocessor",
    display: "OneFormer COCO Segmentor",
    repo: "shi-labs/oneformer_coco_swin_large",
    detectron2: AnnotatorFile::lllyasviel("150_16_swin_l_oneformer_coco_100ep.pth"),
};

impl OneFormerModel {
    /// The folder's weights, else the detectron2 checkpoint, or the error naming both and where
    /// they are published.
    pub fn path(&self, dirs: &DataDirs) -> Result<PathBuf, NodeError> {
        hf_weights(dirs, self.repo)
            .or_else(|| dirs.annotator_file(self.detectron2.name))
            .ok_or_else(|| NodeError::Failed(self.missing()))
    }

    /// What to tell a user whose models folder has neither.
    pub fn missing(&self) -> String {
        format!(
            "OneFormer weights not found: comfyui_controlnet_aux runs '{}' from the {}; or that \
             detectron2 checkpoint itself: {}",
            self.detectron2.name,
            hf_folder_hint(self.repo),
            self.detectron2.missing()
        )
    }
}

/// The segmentation map at `resolution`.
pub struct OneFormerSegmentor(&'static OneFormerModel);

impl Node for OneFormerSegmentor {
    fn spec(&self) -> NodeSpec {
        aux_spec(
            self.0.class,
            self.0.display,
            "ControlNet Preprocessors/Semantic Segmentation",
            vec![],
        )
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        _constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        crate::nodes::path_fingerprint(dirs, &self.0.path(dirs)?)
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let path = self.0.path(&ctx.dirs)?;
        let net = ctx.models.annotator(&path, load).map_err(|e| {
            NodeError::Failed(format!("annotator OneFormer ({}): {e}", self.0.repo))
        })?;
        image_out(semantic_segmentation(
            &net,
            inputs.image("image")?,
            resolution(inputs)?,
        ))
    }
}
