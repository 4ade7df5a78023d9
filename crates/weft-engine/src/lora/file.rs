//! Reading adapter files. Safetensors go through `StateDict` (header checked against the file size
//! before mapping); `.pt`/`.ckpt`/`.bin` zip pickles are first walked by `pickle_check` (foreign
//! globals, unknown opcodes, bogus lengths and expansion bombs are refused with a message), then
//! read by candle's pickle reader, which interprets the opcodes without executing anything and
//! runs under `catch_unwind` in `StateDict`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::load::file::StateDict;
use crate::lora::pickle_check::check_zip_pickle;
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
        if is_zip(path) {
            check_zip_pickle(path).map_err(|e| err(LoraErrorKind::BadPickle(e)))?;
        }
        let sd = StateDict::open(path).map_err(|e| err(LoraErrorKind::Load(e.kind)))?;
        // A tensor's data comes from the file, at least a byte per element: refuse shapes that
        // claim more before the reader allocates them.
        for (name, shape) in sd.shapes() {
            let numel = shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .unwrap_or(u64::MAX);
            if numel > len {
                return Err(err(LoraErrorKind::BadTensor {
                    key: name.clone(),
                    reason: format!(
                        "its shape {shape:?} needs more data than the file's {len} bytes"
                    ),
                }));
            }
        }
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

/// Whether the file starts like a zip archive (a torch >= 1.6 pickle).
fn is_zip(path: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|()| head == *b"PK\x03\x04")
        .unwrap_or(false)
}
