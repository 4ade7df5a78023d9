//! Checkpoint files: reading (safetensors memory-mapped, pickled `.ckpt`/`.pt`/`.bin` through
//! candle's non-executing pickle reader), splitting single-file LDM checkpoints into components,
//! LDM -> diffusers key maps, model family detection, and diffusers folders.
//!
//! Model code only knows diffusers names; every renaming happens here, at the loading boundary.

pub mod checkpoint;
pub mod detect;
pub mod file;
pub mod fp8;
pub mod keymap;
pub(crate) mod pickle_guard;
pub mod pickle_tree;
pub mod placement;
pub(crate) mod renaming;

use std::path::{Path, PathBuf};

/// A loading failure, naming the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("cannot load '{}': {kind}", path.display())]
pub struct LoadError {
    /// The file (or config/index file) that could not be loaded.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: LoadErrorKind,
}

/// What went wrong while loading a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// Opening or reading the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file ends before the data its header describes.
    #[error("file is truncated: it has {file_len} bytes but its tensors need {needed}")]
    Truncated {
        /// The file's length in bytes.
        file_len: u64,
        /// The length in bytes the header and tensor data require.
        needed: u64,
    },
    /// The safetensors header length runs past the end of the file.
    #[error(
        "safetensors header claims {claimed} bytes but only {available} follow the length field"
    )]
    HeaderTooLarge {
        /// The header length the file's first 8 bytes state.
        claimed: u64,
        /// The bytes after the length field.
        available: u64,
    },
    /// The safetensors header is malformed (not JSON, bad dtype, shape or offsets); says why.
    #[error("bad safetensors header: {0}")]
    BadHeader(String),
    /// The file holds no tensors that could be read (an empty pickle, no shards); says why.
    #[error("not a checkpoint: {0}")]
    NotACheckpoint(String),
    /// A pickled file the pickle guard refuses before reading it (a memo or expansion bomb, a
    /// foreign global, an opcode or length the reader cannot take); says what and where.
    #[error("refusing the pickle: {0}")]
    UnsafePickle(String),
    /// A pickled tensor whose shape needs more bytes than the whole file holds.
    #[error("tensor '{name}' has shape {shape:?}, which needs more data than the file's {file_len} bytes")]
    OversizedTensor {
        /// The tensor's name in the file.
        name: String,
        /// The shape the pickle claims.
        shape: Vec<usize>,
        /// The file's length in bytes.
        file_len: u64,
    },
    /// A known kind of file this engine does not load; says which.
    #[error("unsupported format: {0}")]
    UnsupportedFormat(String),
    /// No architecture's marker tensors were found.
    #[error("unknown model family: looked for {}", looked_for.join(", "))]
    UnknownFamily {
        /// The tensor names that were checked.
        looked_for: Vec<String>,
    },
    /// A tensor the model needs is not in the file; holds its name.
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    /// A tensor's stored shape does not match the model's.
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    BadShape {
        /// The tensor's name in the file.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A `config.json` or shard index, or the config the weights imply, is invalid; says why.
    #[error("bad model config: {0}")]
    BadConfig(String),
    /// A tensor operation failed while reading or building the model.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The model does not fit in the memory budget.
    #[error("{0}")]
    OutOfMemory(crate::memory::OutOfMemory),
}

impl LoadError {
    pub(crate) fn new(path: &Path, kind: impl Into<LoadErrorKind>) -> Self {
        Self {
            path: path.to_path_buf(),
            kind: kind.into(),
        }
    }
}
