//! LoRA and LyCORIS adapters, applied the way ComfyUI applies them (`comfy/lora.py`,
//! `comfy/weight_adapter/{lora,loha,lokr,base}.py`).
//!
//! - `file`: reading adapter files (`.safetensors`, zip pickles through candle's non-executing
//!   reader) into a [`LoraFile`];
//! - `keys`: the [`KeyMap`] from LoRA module names (kohya `lora_unet_`/`lora_te*_`, diffusers and
//!   PEFT, `lycoris_`, generic `diffusion_model.`) to the model's canonical weight names, built from
//!   the model's own keys like ComfyUI's `model_lora_keys_unet`/`model_lora_keys_clip`;
//! - `adapter`: one module's weights ([`Adapter`]: LoRA/LoCon, LoHa, LoKr, full diffs, DoRA) and
//!   the maths that turns them into a patched weight;
//! - `patch`: grouping a file's tensors into adapters per target ([`LoraFile::map`] gives a
//!   [`Lora`] with one [`LoraPatch`] per model component and a [`LoraReport`]), and [`apply`],
//!   which returns a new weight map where only the patched entries are new tensors.
//!
//! The base weight map is never modified: unpatching is using the base map again.

pub mod adapter;
pub mod file;
pub mod keys;
pub mod patch;

use std::path::PathBuf;

pub use adapter::{Adapter, AdapterKind};
pub use file::LoraFile;
pub use keys::{Component, KeyMap, TextEncoderWeights, UnetWeights};
pub use patch::{apply, Lora, LoraPatch, LoraReport};

use crate::load::LoadErrorKind;

/// A LoRA failure, naming the adapter file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("lora '{}': {kind}", path.display())]
pub struct LoraError {
    /// The adapter file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: LoraErrorKind,
}

/// What went wrong with a LoRA file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoraErrorKind {
    /// The file could not be read (IO, truncated, not a tensor file, malformed pickle).
    #[error("{0}")]
    Load(LoadErrorKind),
    /// The file has zero bytes.
    #[error("the file is empty")]
    Empty,
    /// A zip pickle with something a tensor file never holds (a foreign global, an opcode the
    /// reader does not know, a length past the end, an object graph that expands without bound).
    #[error("refusing the pickle: {0}")]
    BadPickle(String),
    /// The adapter holds no tensors.
    #[error("the file holds no tensors")]
    NoTensors,
    /// A tensor that cannot serve its role (a non-float factor, an alpha that is not a scalar).
    #[error("tensor '{key}': {reason}")]
    BadTensor {
        /// The tensor's name in the file.
        key: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// One half of a factor pair without the other.
    #[error("module '{key}' needs tensor '{missing}', which the file lacks")]
    MissingPartner {
        /// The LoRA module (file key without its suffix).
        key: String,
        /// The tensor name that is absent.
        missing: String,
    },
    /// An adapter whose factors do not multiply out to its target weight.
    #[error(
        "'{key}' does not fit weight '{target}' of shape {expected:?}: {reason}{}",
        if *others > 0 { format!(" ({others} more modules do not fit either)") } else { String::new() }
    )]
    ShapeMismatch {
        /// The LoRA module (file key without its suffix).
        key: String,
        /// The model weight it targets (canonical name).
        target: String,
        /// That weight's shape.
        expected: Vec<usize>,
        /// How the factors fail to fit.
        reason: String,
        /// Further modules that do not fit either.
        others: usize,
    },
    /// An adapter type ComfyUI knows but Weft does not implement (GLoRA, OFT, BOFT, ...).
    #[error("tensor '{key}' belongs to a {kind} adapter, which is not supported")]
    Unsupported {
        /// The first tensor of that adapter type in the file.
        key: String,
        /// The adapter type's name.
        kind: &'static str,
    },
    /// The LoRA was made for a different model family.
    #[error(
        "made for another model: its cross-attention layers take {lora_context}-wide context{}, \
         this model's take {model_context}{} ({unmatched} of {total} modules match no weight, \
         {mismatched} have the wrong shape)",
        family_suffix(*lora_context), family_suffix(*model_context)
    )]
    FamilyMismatch {
        /// Context width the LoRA's cross-attention key/value factors take (768 SD1.x, 1024
        /// SD2.x, 2048 SDXL, 1280 SDXL refiner).
        lora_context: usize,
        /// Context width the model's cross-attention takes.
        model_context: usize,
        /// Modules that match no weight of the model.
        unmatched: usize,
        /// Modules that match a weight of another shape.
        mismatched: usize,
        /// Modules counted: matched plus unmatched.
        total: usize,
    },
    /// Most of the file's modules match no weight of the model.
    #[error(
        "{unmatched} of {total} modules match no weight of this model (first: {}); \
         is it a lora for another model family?",
        first.join(", ")
    )]
    MostlyUnmatched {
        /// Modules that match no weight.
        unmatched: usize,
        /// Modules counted: matched plus unmatched.
        total: usize,
        /// Up to five of the unmatched tensor names, sorted.
        first: Vec<String>,
    },
    /// The patch targets a weight the map does not hold.
    #[error("weight '{key}' is not in the model's weights")]
    MissingWeight {
        /// The weight's canonical name.
        key: String,
    },
    /// A tensor operation failed while patching `key`.
    #[error("cannot patch weight '{key}': {source}")]
    Patch {
        /// The weight's canonical name.
        key: String,
        /// The tensor error.
        source: candle_core::Error,
    },
}

/// " (SDXL)" for a known cross-attention width, "" otherwise.
fn family_suffix(context: usize) -> String {
    match family_of_context(context) {
        Some(name) => format!(" ({name})"),
        None => String::new(),
    }
}

/// The model family whose UNet cross-attention takes `context`-wide text embeddings.
pub fn family_of_context(context: usize) -> Option<&'static str> {
    match context {
        768 => Some("SD1.x"),
        1024 => Some("SD2.x"),
        2048 => Some("SDXL"),
        1280 => Some("SDXL refiner"),
        _ => None,
    }
}

impl LoraError {
    pub(crate) fn new(path: &std::path::Path, kind: LoraErrorKind) -> Self {
        Self {
            path: path.to_path_buf(),
            kind,
        }
    }
}
