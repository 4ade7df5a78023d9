//! Reading adapter files, through `StateDict` like every other model file: safetensors have their
//! header checked against the file size; `.pt`/`.ckpt`/`.bin` zip pickles are walked by
//! `load::pickle_guard` (foreign globals, unknown opcodes, bogus lengths, memo and expansion
//! bombs, shapes larger than the file are refused with a message) before candle's pickle reader,
//! which interprets the opcodes without executing anything, runs under `catch_unwind`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::load::file::StateDict;
use crate::load::LoadErrorKind;
use crate::lora::{LoraError, LoraErrorKind};

/// The tensors of one adapter file, in their stored dtypes, on the CPU.
#[derive(Debug, Clone)]
pub struct LoraFile {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl LoraFile {
    /// Reads every tensor of `path` (`.safetensors`, or a zip pickle `.pt`/`.ckpt`/`.bin`).
    pub fn open(path: &Path) -> Result<Self, LoraError> {
        let err = |kind| LoraError::new(path, kind);
        let len = std::fs::metadata(path)
            .map_err(|e| err(LoraErrorKind::Load(e.into())))?
            .len();
        if len == 0 {
            return Err(err(LoraErrorKind::Empty));
        }
        let sd = StateDict::open(path).map_err(|e| {
            err(match e.kind {
                LoadErrorKind::UnsafePickle(reason) => LoraErrorKind::BadPickle(reason),
                LoadErrorKind::OversizedTensor {
                    name,
                    shape,
                    file_len,
                } => LoraErrorKind::BadTensor {
                    key: name,
                    reason: format!(
                        "its shape {shape:?} needs more data than the file's {file_len} bytes"
                    ),
                },
                kind => LoraErrorKind::Load(kind),
            })
        })?;
        let mut tensors = HashMap::with_capacity(sd.shapes().len());
        for name in sd.shapes().keys() {
            // candle's pickle reader is defensive but not audited for panics on crafted strides;
            // a panic here becomes an error naming the tensor.
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sd.get(name)));
            let tensor = match read {
                Ok(Ok(tensor)) => tensor,
                Ok(Err(e)) => {
                    return Err(err(LoraErrorKind::BadTensor {
                        key: name.clone(),
                        reason: e.kind.to_string(),
                    }))
                }
                Err(_) => {
                    return Err(err(LoraErrorKind::BadTensor {
                        key: name.clone(),
                        reason: "the tensor reader failed on its data".into(),
                    }))
                }
            };
            tensors.insert(name.clone(), tensor);
        }
        Self::from_tensors(path, tensors)
    }

    /// An adapter from tensors already in memory; `path` only names it in messages.
    pub fn from_tensors(path: &Path, tensors: HashMap<String, Tensor>) -> Result<Self, LoraError> {
        if tensors.is_empty() {
            return Err(LoraError::new(path, LoraErrorKind::NoTensors));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor by its key in the file.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }
}
