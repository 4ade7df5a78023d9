//! Checkpoint files: reading (safetensors memory-mapped, pickled `.ckpt`/`.pt`/`.bin` through
//! candle's non-executing pickle reader), splitting single-file LDM checkpoints into components,
//! LDM -> diffusers key maps, model family detection, and diffusers folders.
//!
//! Model code only knows diffusers names; every renaming happens here, at the loading boundary.

pub mod checkpoint;
pub mod detect;
pub mod file;
pub mod keymap;
pub mod placement;

use std::path::{Path, PathBuf};

/// A loading failure, naming the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("cannot load '{}': {kind}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub kind: LoadErrorKind,
}

/// What went wrong while loading a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadErrorKind {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("file is truncated: it has {file_len} bytes but its tensors need {needed}")]
    Truncated { file_len: u64, needed: u64 },
    #[error(
        "safetensors header claims {claimed} bytes but only {available} follow the length field"
    )]
    HeaderTooLarge { claimed: u64, available: u64 },
    #[error("bad safetensors header: {0}")]
    BadHeader(String),
    #[error("not a checkpoint: {0}")]
    NotACheckpoint(String),
    #[error("unsupported format: {0}")]
    UnsupportedFormat(String),
    #[error("unknown model family: looked for {}", looked_for.join(", "))]
    UnknownFamily { looked_for: Vec<String> },
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    BadShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("bad model config: {0}")]
    BadConfig(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
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
