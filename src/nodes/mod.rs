//! Node classes: each declares itself once (`Node::spec`) and runs on typed inputs (`Node::run`).
//! The `Registry` lists them all and feeds validation (as a `graph::Catalog`), `/object_info` and
//! the docs.
//!
//! Invariant: nodes know nothing of HTTP, SQL or the queue. They see the outside world only through
//! `NodeContext` (folders, progress, interrupt), which `exec` fills in. Adding a node touches one
//! file here (its family's), plus its test.

pub mod annotators;
pub mod attention_multiply;
pub mod clip_vision;
pub mod compositing;
pub mod conditioning;
pub mod controlnet;
pub mod custom_sampling;
pub mod gligen;
pub mod hypernetwork;
pub mod image_anim;
pub mod image_conditioning;
pub mod image_filter;
pub mod image_io;
pub mod image_ops;
pub mod image_transform;
pub mod latent;
pub mod latent_files;
pub mod latent_filters;
pub mod latent_ops;
pub mod loaders;
pub mod lora;
pub mod mask;
pub mod model_merging;
pub mod model_patches;
pub mod model_saving;
mod pixels;
pub mod preprocessors;
pub mod primitives;
mod quantize;
pub mod rebatch;
pub mod sampling;
pub mod testing;
pub mod upscale;
mod value;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value as Json;

use crate::engine::manager::ModelManager;
use crate::graph::spec::{ComboOptions, FileList, NodeSpec};
use crate::graph::{Catalog, ConstValue};
use crate::paths::DataDirs;

pub use value::{Clip, Guider, GuiderKind, Inputs, Latent, NoiseSource, Value};

/// One node class.
pub trait Node: Send + Sync + 'static {
    /// The declaration; called once, when the registry is built.
    fn spec(&self) -> NodeSpec;

    /// Computes the outputs. Long loops call `ctx.check_interrupt()` between steps.
    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError>;

    /// For nodes that read files (`Freshness::ReadsFiles`): a token that changes whenever what
    /// they read changes, usually the file's content hash. Joins the cache key.
    fn fingerprint(
        &self,
        _dirs: &DataDirs,
        _constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        Ok(String::new())
    }

    /// Checks an input listed in `NodeSpec::self_validated` (ComfyUI's `VALIDATE_INPUTS`).
    fn check_input(
        &self,
        _dirs: &DataDirs,
        _input: &str,
        _value: &ConstValue,
    ) -> Result<(), String> {
        Ok(())
    }
}

/// What a node produced: one value per declared output, and what to show in the editor.
#[derive(Debug, Default)]
pub struct NodeOutput {
    pub values: Vec<Value>,
    pub ui: Option<Ui>,
}

impl NodeOutput {
    pub fn values(values: Vec<Value>) -> NodeOutput {
        NodeOutput { values, ui: None }
    }
}

/// A node's `ui` dictionary (`executed.output` and history `outputs[node]`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Ui {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<FileRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<String>,
    /// Whether each of `images` is animated (SaveAnimatedPNG/WEBP: `[true]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub animated: Vec<bool>,
    /// Latent files written (SaveLatent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latents: Vec<FileRef>,
}

impl Ui {
    /// Adds `other`'s entries after these (a node run once per list element shows them all).
    pub fn append(&mut self, other: Ui) {
        self.images.extend(other.images);
        self.text.extend(other.text);
        self.animated.extend(other.animated);
        self.latents.extend(other.latents);
    }
}

/// A file a node wrote, as clients fetch it through `/view`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileRef {
    pub filename: String,
    pub subfolder: String,
    #[serde(rename = "type")]
    pub folder_type: String,
}

/// Why a node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("input '{input}': {message}")]
    Input { input: String, message: String },
    #[error("interrupted")]
    Interrupted,
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Failed(String),
    /// Not enough memory, even after unloading what could be unloaded (`weft.OutOfMemory`).
    #[error("input '{input}': {source}")]
    OutOfMemory {
        input: String,
        source: crate::engine::memory::OutOfMemory,
    },
}

impl NodeError {
    pub fn input(input: &str, message: impl Into<String>) -> NodeError {
        NodeError::Input {
            input: input.to_owned(),
            message: message.into(),
        }
    }

    pub fn file(path: impl std::fmt::Display, message: impl std::fmt::Display) -> NodeError {
        NodeError::File {
            path: path.to_string(),
            message: message.to_string(),
        }
    }

    /// A model file that did not load through input `input`; running out of memory stays
    /// recognisable as such.
    pub fn model_load(input: &str, error: crate::engine::load::LoadError) -> NodeError {
        match error.kind {
            crate::engine::load::LoadErrorKind::OutOfMemory(source) => NodeError::OutOfMemory {
                input: input.to_owned(),
                source,
            },
            _ => NodeError::input(input, error.to_string()),
        }
    }

    /// Memory for a computation on `input` was not there.
    pub fn out_of_memory(input: &str, source: crate::engine::memory::OutOfMemory) -> NodeError {
        NodeError::OutOfMemory {
            input: input.to_owned(),
            source,
        }
    }

    /// A failure of the engine, with what was being done.
    pub fn engine(doing: &str, error: impl std::fmt::Display) -> NodeError {
        NodeError::Failed(format!("{doing}: {error}"))
    }
}

/// Receives a running node's progress. Implemented by `exec`.
pub trait Reporter: Send + Sync {
    fn progress(&self, node_id: &str, value: u64, max: u64);
    fn preview(&self, node_id: &str, png_or_jpeg: Vec<u8>, is_png: bool);
    /// A PNG the node sends over the socket as its result (SaveImageWebsocket): a preview frame
    /// that, unlike a sampler step's, must reach the client even when newer ones follow.
    fn output_image(&self, node_id: &str, png: Vec<u8>) {
        self.preview(node_id, png, true);
    }
}

/// What a running node may see of the world.
pub struct NodeContext {
    pub node_id: String,
    pub prompt_id: String,
    pub dirs: Arc<DataDirs>,
    /// The whole prompt (ComfyUI's hidden `PROMPT`), for image metadata.
    pub prompt: Arc<Json>,
    /// `extra_data.extra_pnginfo` (hidden `EXTRA_PNGINFO`).
    pub extra_pnginfo: Option<Arc<Json>>,
    pub reporter: Arc<dyn Reporter>,
    pub interrupt: Arc<AtomicBool>,
    /// PNG text chunks are written unless the server runs with `--disable-metadata`.
    pub write_metadata: bool,
    /// Loaded models shared by every prompt.
    pub models: Arc<ModelManager>,
    /// The PNG text chunks of this prompt's images, made once per prompt and shared by its
    /// nodes (the prompt's JSON is as big as the graph, and every saved image carries it).
    pub png_text: Arc<std::sync::OnceLock<Vec<(String, String)>>>,
}

impl NodeContext {
    /// Makes sure `bytes` can be allocated for `what` (activations), unloading unused models if
    /// need be; `weft.OutOfMemory` on `input` when they cannot be found.
    pub fn reserve_memory(&self, input: &str, bytes: u64, what: &str) -> Result<(), NodeError> {
        self.models
            .ensure_free(bytes, what)
            .map_err(|e| NodeError::out_of_memory(input, e))
    }

    /// Returns `Err(Interrupted)` once an interrupt was requested.
    pub fn check_interrupt(&self) -> Result<(), NodeError> {
        if self.interrupt.load(Ordering::Relaxed) {
            Err(NodeError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Reports step `value` of `max` (a `progress` event).
    pub fn progress(&self, value: u64, max: u64) {
        self.reporter.progress(&self.node_id, value, max);
    }

    /// Sends a preview image (a `PREVIEW_IMAGE` frame) of 8-bit RGB pixels.
    pub fn preview_rgb(&self, pixels: &[u8], width: usize, height: usize) {
        let png = image_io::encode_png(pixels, width, height);
        self.reporter.preview(&self.node_id, png, true);
    }

    /// The path of `name` in a model folder, refusing names that leave it.
    pub fn model_path(
        &self,
        folder: &str,
        input: &str,
        name: &str,
    ) -> Result<std::path::PathBuf, NodeError> {
        self.dirs
            .model_file(folder, name)
            .map_err(|m| NodeError::input(input, m))
    }
}

/// A fingerprint of a model file that changes when the file does: size and modification time
/// (hashing gigabytes on every prompt would cost more than it saves).
pub fn file_fingerprint(
    dirs: &DataDirs,
    folder: &str,
    constants: &[(String, ConstValue)],
    input: &str,
) -> Result<String, NodeError> {
    let Some((_, ConstValue::String(name))) = constants.iter().find(|(n, _)| n == input) else {
        return Ok(String::new());
    };
    let path = dirs
        .model_file(folder, name)
        .map_err(|m| NodeError::input(input, m))?;
    path_fingerprint(dirs, &path)
}

/// A file's cache token: its path, size and modification time.
pub fn path_fingerprint(dirs: &DataDirs, path: &std::path::Path) -> Result<String, NodeError> {
    let meta = std::fs::metadata(path).map_err(|e| NodeError::file(dirs.shown(path), e))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{}:{}:{}", path.display(), meta.len(), modified))
}

struct Entry {
    spec: NodeSpec,
    node: Box<dyn Node>,
}

/// Every node class Weft knows, in registration order.
pub struct Registry {
    entries: Vec<Entry>,
    by_name: HashMap<&'static str, usize>,
}

impl Registry {
    /// The nodes a server offers.
    pub fn standard() -> Registry {
        let mut registry = Registry {
            entries: Vec::new(),
            by_name: HashMap::new(),
        };
        loaders::register(&mut registry);
        lora::register(&mut registry);
        hypernetwork::register(&mut registry);
        model_patches::register(&mut registry);
        attention_multiply::register(&mut registry);
        model_merging::register(&mut registry);
        model_saving::register(&mut registry);
        conditioning::register(&mut registry);
        image_conditioning::register(&mut registry);
        clip_vision::register(&mut registry);
        controlnet::register(&mut registry);
        latent::register(&mut registry);
        latent_ops::register(&mut registry);
        latent_files::register(&mut registry);
        latent_filters::register(&mut registry);
        rebatch::register(&mut registry);
        sampling::register(&mut registry);
        custom_sampling::register(&mut registry);
        image_io::register(&mut registry);
        image_ops::register(&mut registry);
        image_transform::register(&mut registry);
        image_filter::register(&mut registry);
        image_anim::register(&mut registry);
        mask::register(&mut registry);
        compositing::register(&mut registry);
        preprocessors::register(&mut registry);
        annotators::register(&mut registry);
        primitives::register(&mut registry);
        upscale::register(&mut registry);
        gligen::register(&mut registry);
        registry
    }

    /// The standard nodes plus the test pack (`testing.rs`), for tests and `--test-nodes`.
    pub fn with_test_nodes() -> Registry {
        let mut registry = Registry::standard();
        testing::register(&mut registry);
        registry
    }

    pub fn add(&mut self, node: impl Node) {
        let spec = node.spec();
        debug_assert!(
            !self.by_name.contains_key(spec.class_type),
            "node {} registered twice",
            spec.class_type
        );
        self.by_name.insert(spec.class_type, self.entries.len());
        self.entries.push(Entry {
            spec,
            node: Box::new(node),
        });
    }

    pub fn spec(&self, class_type: &str) -> Option<&NodeSpec> {
        self.by_name.get(class_type).map(|&i| &self.entries[i].spec)
    }

    pub fn node(&self, class_type: &str) -> Option<&dyn Node> {
        self.by_name
            .get(class_type)
            .map(|&i| self.entries[i].node.as_ref())
    }

    /// All declarations, in registration order.
    pub fn specs(&self) -> impl Iterator<Item = &NodeSpec> {
        self.entries.iter().map(|e| &e.spec)
    }

    /// A validation view that resolves file lists against `dirs`.
    pub fn catalog<'a>(&'a self, dirs: &'a DataDirs) -> RegistryCatalog<'a> {
        RegistryCatalog {
            registry: self,
            dirs,
        }
    }
}

/// Resolves the options of a combo against the folders now.
pub fn combo_options(dirs: &DataDirs, options: &ComboOptions) -> Vec<String> {
    match options {
        ComboOptions::Static(list) => list.iter().map(|s| (*s).to_owned()).collect(),
        ComboOptions::Files(FileList::InputImages) => dirs.list_input_images(),
        ComboOptions::Files(FileList::InputLatents) => dirs.list_input_files(&["latent"]),
        ComboOptions::Files(FileList::Pipelines(folder)) => {
            dirs.list_pipelines(folder).unwrap_or_default()
        }
        ComboOptions::Files(FileList::Models(folder)) => {
            dirs.list_models(folder).unwrap_or_default()
        }
    }
}

/// The registry seen by validation.
pub struct RegistryCatalog<'a> {
    registry: &'a Registry,
    dirs: &'a DataDirs,
}

impl Catalog for RegistryCatalog<'_> {
    fn spec(&self, class_type: &str) -> Option<&NodeSpec> {
        self.registry.spec(class_type)
    }

    fn combo_options(&self, options: &ComboOptions) -> Vec<String> {
        combo_options(self.dirs, options)
    }

    fn combo_has(&self, options: &ComboOptions, value: &str) -> bool {
        match options {
            ComboOptions::Files(FileList::Models(folder)) => self.dirs.has_model(folder, value),
            _ => combo_options(self.dirs, options).iter().any(|o| o == value),
        }
    }

    fn check_input(&self, spec: &NodeSpec, input: &str, value: &ConstValue) -> Result<(), String> {
        match self.registry.node(spec.class_type) {
            Some(node) => node.check_input(self.dirs, input, value),
            None => Err(format!("unknown node class {}", spec.class_type)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declaration_is_consistent() {
        let registry = Registry::with_test_nodes();
        for spec in registry.specs() {
            let mut names = std::collections::HashSet::new();
            for input in &spec.inputs {
                assert!(
                    names.insert(input.name),
                    "{}: input {} declared twice",
                    spec.class_type,
                    input.name
                );
            }
            for name in spec.self_validated {
                assert!(
                    spec.input(name).is_some(),
                    "{}: self-validated {} is not an input",
                    spec.class_type,
                    name
                );
            }
            assert!(
                !spec.category.is_empty(),
                "{} has no category",
                spec.class_type
            );
        }
    }
}
