//! comfyui_controlnet_aux's preprocessors that run a network (depth, normals, pose, segmentation,
//! line segments, line art, soft edges), with the pack's class names, inputs and outputs so its
//! workflows run unchanged. The networks are in `engine::annotators`; their weight files, under
//! their published names, are found anywhere below `models/annotators/` (so the pack's own
//! `ckpts/` tree can be linked there) and loaded through the model manager.
//!
//! One file per annotator family; each declares its nodes and the files they read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;

use crate::engine::load::{file::StateDict, LoadError};
use crate::graph::spec::{Freshness, InputSpec, NodeSpec};
use crate::nodes::{NodeContext, NodeError, Registry};
use crate::paths::DataDirs;

pub mod depth;
pub mod hed;
pub mod lineart;
pub mod midas;
pub mod mlsd;
pub mod normalbae;
pub mod oneformer;
pub mod openpose;
pub mod uniformer;
pub mod zoe;

pub fn register(registry: &mut Registry) {
    depth::register(registry);
    hed::register(registry);
    lineart::register(registry);
    midas::register(registry);
    mlsd::register(registry);
    normalbae::register(registry);
    oneformer::register(registry);
    openpose::register(registry);
    uniformer::register(registry);
    zoe::register(registry);
}

/// A published annotator weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnotatorFile {
    /// The file name as published (`ControlNetHED.pth`).
    pub name: &'static str,
    /// Where it is published (`https://huggingface.co/lllyasviel/Annotators`).
    pub published: &'static str,
}

/// The `lllyasviel/Annotators` repository, where most of these files are published.
pub const LLLYASVIEL: &str = "https://huggingface.co/lllyasviel/Annotators";

impl AnnotatorFile {
    /// A file of the `lllyasviel/Annotators` repository.
    pub const fn lllyasviel(name: &'static str) -> AnnotatorFile {
        AnnotatorFile {
            name,
            published: LLLYASVIEL,
        }
    }

    /// What to tell a user whose models folder lacks the file.
    pub fn missing(&self) -> String {
        format!(
            "annotator file '{}' not found: put it in models/annotators/ (any subfolder, or link \
             comfyui_controlnet_aux's ckpts folder there); it is published at {}",
            self.name, self.published
        )
    }

    /// Its path under the annotator folders, or the error that says where to put it.
    pub fn path(&self, dirs: &DataDirs) -> Result<PathBuf, NodeError> {
        dirs.annotator_file(self.name)
            .ok_or_else(|| NodeError::Failed(self.missing()))
    }

    /// Loads it through the model manager as `T` (once while the file stays unchanged).
    pub fn load<T: Send + Sync + 'static>(
        &self,
        ctx: &NodeContext,
        load: impl FnOnce(&Arc<StateDict>, &Device) -> Result<T, LoadError>,
    ) -> Result<Arc<T>, NodeError> {
        load_annotator(ctx, &self.path(&ctx.dirs)?, load)
    }

    /// The cache token of a node reading these files: each one's path, size and modification
    /// time (a missing file fails here, before anything runs).
    pub fn fingerprint(dirs: &DataDirs, files: &[AnnotatorFile]) -> Result<String, NodeError> {
        files
            .iter()
            .map(|f| crate::nodes::path_fingerprint(dirs, &f.path(dirs)?))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join(";"))
    }
}

/// Loads the annotator file at `path` through the model manager as `T` (once while the file
/// stays unchanged); errors name the file.
fn load_annotator<T: Send + Sync + 'static>(
    ctx: &NodeContext,
    path: &Path,
    load: impl FnOnce(&Arc<StateDict>, &Device) -> Result<T, LoadError>,
) -> Result<Arc<T>, NodeError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    ctx.models
        .annotator(path, load)
        .map_err(|e| NodeError::Failed(format!("annotator '{name}': {e}")))
}

/// The weights of a transformers folder, in transformers' order of preference: safetensors,
/// else the older pickle (the JSON files are read beside them).
const HF_WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// A Hugging Face repository's transformers folder, which today's pack loads, read in
/// preference to the published file the pack read before: found as `.../<repo>/<weights>` or in
/// a hub cache's `models--<owner>--<name>/snapshots/<rev>/`, any depth under
/// `models/annotators/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfFolder {
    /// The repository (`Intel/dpt-hybrid-midas`).
    pub repo: &'static str,
    /// The older published file.
    pub file: AnnotatorFile,
}

impl HfFolder {
    /// The folder's weights if there are any, else the file; the error names both.
    pub fn path(&self, dirs: &DataDirs) -> Result<PathBuf, NodeError> {
        hf_weights(dirs, self.repo)
            .or_else(|| dirs.annotator_file(self.file.name))
            .ok_or_else(|| NodeError::Failed(self.missing()))
    }

    /// What to tell a user who has neither.
    pub fn missing(&self) -> String {
        format!(
            "{}; or today's comfyui_controlnet_aux's {}",
            self.file.missing(),
            hf_folder_hint(self.repo)
        )
    }
}

/// The weights file of the Hugging Face repository `repo`'s folder under the annotator folders.
fn hf_weights(dirs: &DataDirs, repo: &str) -> Option<PathBuf> {
    HF_WEIGHTS
        .iter()
        .find_map(|name| dirs.annotator_repo_file(repo, name))
}

/// Where to put the Hugging Face repository `repo`'s folder (a comfyui_controlnet_aux `ckpts/`
/// tree or a hub cache, anywhere under `models/annotators/`) and where it is published.
fn hf_folder_hint(repo: &str) -> String {
    format!(
        "transformers folder {repo} ({} or {}, config.json, preprocessor_config.json) \
         anywhere under models/annotators/ (e.g. ckpts/{repo}/, or a Hugging Face cache's \
         models--{}/snapshots/<revision>/), published at https://huggingface.co/{repo}",
        HF_WEIGHTS[0],
        HF_WEIGHTS[1],
        repo.replace('/', "--"),
    )
}

/// Where a plain annotator node's network comes from.
pub(crate) trait WeightSource {
    /// The file to load, or the error that says where to get it.
    fn locate(&self, dirs: &DataDirs) -> Result<PathBuf, NodeError>;
}

impl WeightSource for AnnotatorFile {
    fn locate(&self, dirs: &DataDirs) -> Result<PathBuf, NodeError> {
        self.path(dirs)
    }
}

impl WeightSource for HfFolder {
    fn locate(&self, dirs: &DataDirs) -> Result<PathBuf, NodeError> {
        self.path(dirs)
    }
}

pub(crate) use crate::nodes::preprocessors::{image_out, resolution};

/// An aux node's declaration (`image`, the node's own inputs, `resolution`; one IMAGE out) for a
/// node that reads annotator files: their fingerprints join its cache key.
pub(crate) fn aux_spec(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    inputs: Vec<InputSpec>,
) -> NodeSpec {
    NodeSpec {
        freshness: Freshness::ReadsFiles,
        ..crate::nodes::preprocessors::aux(class_type, display_name, category, inputs)
    }
}

/// An aux node with no inputs of its own: `image` through one network file at `resolution`.
pub(crate) struct PlainAnnotatorNode<T, F = AnnotatorFile> {
    pub class: &'static str,
    pub display: &'static str,
    pub category: &'static str,
    pub file: F,
    pub load: fn(&Arc<StateDict>, &Device) -> Result<T, LoadError>,
    pub map:
        fn(&T, &candle_core::Tensor, u32) -> crate::engine::preprocess::Result<candle_core::Tensor>,
}

impl<T: Send + Sync + 'static, F: WeightSource + Send + Sync + 'static> crate::nodes::Node
    for PlainAnnotatorNode<T, F>
{
    fn spec(&self) -> NodeSpec {
        aux_spec(self.class, self.display, self.category, vec![])
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        _constants: &[(String, crate::graph::ConstValue)],
    ) -> Result<String, NodeError> {
        crate::nodes::path_fingerprint(dirs, &self.file.locate(dirs)?)
    }

    fn run(
        &self,
        ctx: &NodeContext,
        inputs: &crate::nodes::Inputs,
    ) -> Result<crate::nodes::NodeOutput, NodeError> {
        let net = load_annotator(ctx, &self.file.locate(&ctx.dirs)?, self.load)?;
        image_out((self.map)(
            &net,
            inputs.image("image")?,
            resolution(inputs)?,
        ))
    }
}
