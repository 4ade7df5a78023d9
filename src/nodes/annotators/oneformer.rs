//! comfyui_controlnet_aux's OneFormer nodes (node_wrappers/oneformer.py):
//! `OneFormer-ADE20K-SemSegPreprocessor` and `OneFormer-COCO-SemSegPreprocessor`, semantic
//! segmentation coloured with the pack's palette (the network in `engine::annotators::oneformer`).
//!
//! Today's pack (e8b689a) names the detectron2 files `250_16_swin_l_oneformer_ade20k_160k.pth` /
//! `150_16_swin_l_oneformer_coco_100ep.pth` but loads the transformers folders they map to,
//! `shi-labs/oneformer_ade20k_swin_large` / `shi-labs/oneformer_coco_swin_large`
//! (`model.safetensors` or `pytorch_model.bin` with `config.json` and `preprocessor_config.json`),
//! found as `.../shi-labs/<repo>/model.safetensors` or in a hub cache's
//! `models--shi-labs--<repo>/snapshots/<rev>/`, any depth under `models/annotators/`. The
//! detectron2 file is not read; where only it is there, the error says so.

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
    /// The detectron2 file name the pack maps to it (published in the same repository).
    pub detectron2: AnnotatorFile,
}

/// Swin-L trained on ADE20K (150 classes, 250 queries).
pub const ADE20K: OneFormerModel = OneFormerModel {
    class: "OneFormer-ADE20K-SemSegPreprocessor",
    display: "OneFormer ADE20K Segmentor",
    repo: "shi-labs/oneformer_ade20k_swin_large",
    detectron2: AnnotatorFile {
        name: "250_16_swin_l_oneformer_ade20k_160k.pth",
        published: "https://huggingface.co/shi-labs/oneformer_ade20k_swin_large",
    },
};

/// Swin-L trained on COCO (133 classes, 150 queries).
pub const COCO: OneFormerModel = OneFormerModel {
    class: "OneFormer-COCO-SemSegPreprocessor",
    display: "OneFormer COCO Segmentor",
    repo: "shi-labs/oneformer_coco_swin_large",
    detectron2: AnnotatorFile {
        name: "150_16_swin_l_oneformer_coco_100ep.pth",
        published: "https://huggingface.co/shi-labs/oneformer_coco_swin_large",
    },
};

impl OneFormerModel {
    /// The folder's weights, or the error naming the folder and where it is published.
    pub fn path(&self, dirs: &DataDirs) -> Result<PathBuf, NodeError> {
        hf_weights(dirs, self.repo).ok_or_else(|| NodeError::Failed(self.missing(dirs)))
    }

    /// What to tell a user whose models folder lacks the transformers folder.
    pub fn missing(&self, dirs: &DataDirs) -> String {
        let found = match dirs.annotator_file(self.detectron2.name) {
            Some(p) => format!(
                " ({} is there, but that detectron2 checkpoint is not read)",
                p.display()
            ),
            None => String::new(),
        };
        format!(
            "OneFormer weights not found: comfyui_controlnet_aux runs '{}' from {}{found}",
            self.detectron2.name,
            hf_folder_hint(self.repo)
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
