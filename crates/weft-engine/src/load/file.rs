//! Reading tensor files: safetensors (header checked first, then each tensor read from the file
//! when asked for) and PyTorch zip pickles (`candle_core::pickle`, which interprets the pickle
//! opcodes without executing any code, after [`crate::load::pickle_guard`] has walked them: every
//! pickled file, whatever loads it, passes the guard first).
//!
//! Why not a memory map for safetensors: the mapped pages of a multi-GB checkpoint count in the
//! process's resident memory until the map is closed, on top of the weights copied out of it.
//! Read tensor by tensor, the file's pages are only page cache, which the kernel reclaims, so a
//! load's peak is the model's own weights.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use std::io::{Seek, SeekFrom};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::load::{pickle_guard, LoadError, LoadErrorKind};

enum Source {
    Safetensors(Vec<Shard>),
    Pickle(candle_core::pickle::PthTensors),
}

/// One safetensors file: its handle, where its data starts, and where each tensor lies.
struct Shard {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    data_start: u64,
    tensors: HashMap<String, TensorEntry>,
}

/// A tensor's place in a safetensors file.
#[derive(Debug, Clone)]
pub(crate) struct TensorEntry {
    /// `None`: a dtype candle cannot hold (reading it is an error naming the dtype).
    dtype: Result<DType, String>,
    shape: Vec<usize>,
    begin: u64,
    end: u64,
}

impl Shard {
    fn open(path: &Path) -> Result<Shard, LoadError> {
        let err = |kind: LoadErrorKind| LoadError::new(path, kind);
        let mut file = std::fs::File::open(path).map_err(|e| err(e.into()))?;
        let file_len = file.metadata().map_err(|e| err(e.into()))?.len();
        let mut head = [0u8; 8];
        if read_up_to(&mut file, &mut head).map_err(|e| err(e.into()))? < 8 {
            return Err(err(LoadErrorKind::Truncated {
                file_len,
                needed: 8,
            }));
        }
        let header_len = u64::from_le_bytes(head);
        let tensors = check_safetensors_header(path, &mut file, header_len, file_len)?;
        Ok(Shard {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            data_start: 8 + header_len,
            tensors,
        })
    }

    fn read(&self, name: &str, entry: &TensorEntry) -> Result<Tensor, LoadError> {
        let err = |kind: LoadErrorKind| LoadError::new(&self.path, kind);
        let dtype = entry.dtype.clone().map_err(|d| {
            err(LoadErrorKind::UnsupportedFormat(format!(
                "tensor '{name}' has dtype {d}, which Weft cannot read"
            )))
        })?;
        let len = (entry.end - entry.begin) as usize;
        let expected = entry
            .shape
            .iter()
            .try_fold(dtype.size_in_bytes(), |n, &d| n.checked_mul(d));
        if expected != Some(len) {
            let elements: usize = entry.shape.iter().fold(1, |n, &d| n.saturating_mul(d));
            return Err(err(LoadErrorKind::BadHeader(format!(
                "tensor '{name}' has {len} bytes for {elements} {dtype:?} values"
            ))));
        }
        let mut bytes = vec![0u8; len];
        {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            file.seek(SeekFrom::Start(self.data_start + entry.begin))
                .and_then(|_| file.read_exact(&mut bytes))
                .map_err(|e| err(e.into()))?;
        }
        Tensor::from_raw_buffer(&bytes, dtype, &entry.shape, &Device::Cpu)
            .map_err(|e| err(LoadErrorKind::Tensor(e)))
    }
}

/// A read-only set of named tensors from one checkpoint file (or a sharded safetensors set).
/// Tensors are read on demand, in their stored dtype.
pub struct StateDict {
    path: PathBuf,
    shapes: HashMap<String, Vec<usize>>,
    /// Each tensor's stored dtype (`None` where the format has one candle cannot hold).
    dtypes: HashMap<String, Option<DType>>,
    source: Source,
}

impl std::fmt::Debug for StateDict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDict")
            .field("path", &self.path)
            .field("tensors", &self.shapes.len())
            .finish()
    }
}

impl StateDict {
    /// Opens a `.safetensors`/`.sft`, `.ckpt`/`.pt`/`.pth`/`.bin` file, deciding by its first bytes.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let err = |kind: LoadErrorKind| LoadError::new(path, kind);
        let mut head = [0u8; 8];
        let file_len = std::fs::metadata(path).map_err(|e| err(e.into()))?.len();
        let mut file = std::fs::File::open(path).map_err(|e| err(e.into()))?;
        let read = read_up_to(&mut file, &mut head).map_err(|e| err(e.into()))?;
        if read >= 4 && head[..4] == *b"PK\x03\x04" {
            return Self::open_pickle(path);
        }
        if read >= 2 && head[0] == 0x80 && head[1] <= 5 {
            return Err(err(LoadErrorKind::UnsupportedFormat(
                "legacy (non-zip) torch serialization; re-save it with torch >= 1.6 or as safetensors"
                    .into(),
            )));
        }
        if read < 8 {
            return Err(err(LoadErrorKind::Truncated {
                file_len,
                needed: 8,
            }));
        }
        drop(file);
        Ok(Self::from_shards(path, vec![Shard::open(path)?]))
    }

    /// Opens several safetensors shards as one set (diffusers `*.safetensors.index.json`).
    pub fn open_shards(paths: &[PathBuf]) -> Result<Self, LoadError> {
        let first = paths.first().ok_or_else(|| {
            LoadError::new(
                Path::new(""),
                LoadErrorKind::NotACheckpoint("no shard files".into()),
            )
        })?;
        let shards = paths
            .iter()
            .map(|p| Shard::open(p))
            .collect::<Result<Vec<_>, LoadError>>()?;
        Ok(Self::from_shards(first, shards))
    }

    fn from_shards(first: &Path, shards: Vec<Shard>) -> Self {
        let mut shapes = HashMap::new();
        let mut dtypes = HashMap::new();
        for (name, entry) in shards.iter().flat_map(|s| &s.tensors) {
            shapes.insert(name.clone(), entry.shape.clone());
            dtypes.insert(name.clone(), entry.dtype.clone().ok());
        }
        Self {
            path: first.to_path_buf(),
            shapes,
            dtypes,
            source: Source::Safetensors(shards),
        }
    }

    fn open_pickle(path: &Path) -> Result<Self, LoadError> {
        // candle's reader copies memoised objects and trusts every length; a few hundred crafted
        // bytes would fill memory before it returns, so the opcodes are walked first.
        pickle_guard::check_zip_pickle(path)
            .map_err(|e| LoadError::new(path, LoadErrorKind::UnsafePickle(e)))?;
        // LDM checkpoints nest the weights under "state_dict"; plain torch.save(state_dict) files
        // do not. The reader is defensive, but a malformed pickle must never take the process down,
        // so any panic inside it becomes an error too.
        let read = |key: Option<&'static str>| {
            let p = path.to_path_buf();
            std::panic::catch_unwind(move || candle_core::pickle::PthTensors::new(&p, key))
                .map_err(|_| candle_core::Error::Msg("pickle reader failed".into()))
                .and_then(|r| r)
        };
        // Upscale models trained with BasicSR nest theirs under "params_ema" (or "params"), some
        // annotators (NormalBae's scannet.pt) under "model".
        let nested = ["state_dict", "params_ema", "params", "model"]
            .into_iter()
            .find_map(|key| {
                read(Some(key))
                    .ok()
                    .filter(|p| !p.tensor_infos().is_empty())
            });
        let pth = match nested {
            Some(p) => p,
            None => read(None)
                .map_err(|e| LoadError::new(path, LoadErrorKind::NotACheckpoint(e.to_string())))?,
        };
        if pth.tensor_infos().is_empty() {
            return Err(LoadError::new(
                path,
                LoadErrorKind::NotACheckpoint("the pickle holds no tensors".into()),
            ));
        }
        // The reader allocates a tensor's whole shape before reading its stored data, which
        // comes from the file uncompressed: refuse shapes that need more than the file holds.
        let file_len = std::fs::metadata(path)
            .map_err(|e| LoadError::new(path, LoadErrorKind::Io(e)))?
            .len();
        for (name, info) in pth.tensor_infos() {
            let dims = info.layout.shape().dims();
            let bytes = dims
                .iter()
                .try_fold(info.dtype.size_in_bytes() as u64, |n, &d| {
                    n.checked_mul(d as u64)
                });
            if bytes.is_none_or(|b| b > file_len) {
                return Err(LoadError::new(
                    path,
                    LoadErrorKind::OversizedTensor {
                        name: name.clone(),
                        shape: dims.to_vec(),
                        file_len,
                    },
                ));
            }
        }
        let shapes = pth
            .tensor_infos()
            .iter()
            .map(|(k, info)| (k.clone(), info.layout.shape().dims().to_vec()))
            .collect();
        let dtypes = pth
            .tensor_infos()
            .iter()
            .map(|(k, info)| (k.clone(), Some(info.dtype)))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            shapes,
            dtypes,
            source: Source::Pickle(pth),
        })
    }

    /// The file this was read from (the first shard for a sharded set).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name with its shape.
    pub fn shapes(&self) -> &HashMap<String, Vec<usize>> {
        &self.shapes
    }

    /// The shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(|v| v.as_slice())
    }

    /// The float dtype most of the weights under `prefix` are stored in (by element count);
    /// f32 when there are none.
    pub fn float_dtype(&self, prefix: &str) -> DType {
        let mut counts: HashMap<DType, usize> = HashMap::new();
        for (name, dtype) in &self.dtypes {
            if let (true, Some(dtype)) = (name.starts_with(prefix), dtype) {
                if dtype.is_float() {
                    let len = self
                        .shapes
                        .get(name)
                        .map_or(0, |s| s.iter().fold(1usize, |n, &d| n.saturating_mul(d)));
                    *counts.entry(*dtype).or_default() += len;
                }
            }
        }
        counts
            .into_iter()
            .max_by_key(|(dtype, len)| (*len, dtype.size_in_bytes()))
            .map_or(DType::F32, |(dtype, _)| dtype)
    }

    /// Bytes the tensors under `prefix` take once loaded, each float tensor in the dtype
    /// `weights` gives for its stored one; computed from the header alone.
    pub fn loaded_bytes(&self, prefix: &str, weights: impl Fn(DType) -> DType) -> usize {
        self.shapes
            .keys()
            .filter(|name| name.starts_with(prefix))
            .map(|name| self.tensor_loaded_bytes(name, &weights))
            .sum()
    }

    /// Bytes the tensor `name` takes once loaded, as [`Self::loaded_bytes`]; 0 when absent.
    pub fn tensor_loaded_bytes(&self, name: &str, weights: impl Fn(DType) -> DType) -> usize {
        let Some(shape) = self.shapes.get(name) else {
            return 0;
        };
        let stored = self
            .dtypes
            .get(name)
            .copied()
            .flatten()
            .unwrap_or(DType::F32);
        let dtype = if stored.is_float() {
            weights(stored)
        } else {
            stored
        };
        shape
            .iter()
            .fold(dtype.size_in_bytes(), |n, &d| n.saturating_mul(d))
    }

    /// Whether the file holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// Reads `name` in its stored dtype onto the CPU.
    pub fn get(&self, name: &str) -> Result<Tensor, LoadError> {
        if !self.shapes.contains_key(name) {
            return Err(LoadError::new(
                &self.path,
                LoadErrorKind::MissingTensor(name.to_string()),
            ));
        }
        let tensor = match &self.source {
            Source::Safetensors(shards) => {
                return match shards
                    .iter()
                    .find_map(|s| s.tensors.get(name).map(|e| (s, e)))
                {
                    Some((shard, entry)) => shard.read(name, entry),
                    None => Err(LoadError::new(
                        &self.path,
                        LoadErrorKind::MissingTensor(name.into()),
                    )),
                }
            }
            Source::Pickle(pth) => match pth.get(name) {
                Ok(Some(t)) => Ok(t),
                Ok(None) => {
                    return Err(LoadError::new(
                        &self.path,
                        LoadErrorKind::MissingTensor(name.into()),
                    ))
                }
                Err(e) => Err(e),
            },
        };
        tensor.map_err(|e| LoadError::new(&self.path, LoadErrorKind::Tensor(e)))
    }

    /// Reads every tensor whose name starts with `prefix`, with the prefix removed.
    pub fn get_prefixed(&self, prefix: &str) -> Result<HashMap<String, Tensor>, LoadError> {
        let mut out = HashMap::new();
        for name in self.shapes.keys() {
            if let Some(rest) = name.strip_prefix(prefix) {
                out.insert(rest.to_string(), self.get(name)?);
            }
        }
        Ok(out)
    }
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads a safetensors header and checks it against the file size, so truncated files and lying
/// headers give precise errors before any tensor is read; returns where each tensor lies.
pub(crate) fn check_safetensors_header(
    path: &Path,
    file: &mut impl Read,
    header_len: u64,
    file_len: u64,
) -> Result<HashMap<String, TensorEntry>, LoadError> {
    let err = |kind| LoadError::new(path, kind);
    let available = file_len.saturating_sub(8);
    if header_len > available {
        return Err(err(LoadErrorKind::HeaderTooLarge {
            claimed: header_len,
            available,
        }));
    }
    // A real header is a few hundred KiB at most; refuse absurd sizes before allocating.
    if header_len > 100 * 1024 * 1024 {
        return Err(err(LoadErrorKind::BadHeader(format!(
            "header of {header_len} bytes is too large"
        ))));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| err(e.into()))?;
    let value: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| err(LoadErrorKind::BadHeader(format!("header is not JSON: {e}"))))?;
    let entries = value.as_object().ok_or_else(|| {
        err(LoadErrorKind::BadHeader(
            "header is not a JSON object".into(),
        ))
    })?;
    let mut data_end = 0u64;
    let mut tensors = HashMap::with_capacity(entries.len());
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let offsets = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| {
                err(LoadErrorKind::BadHeader(format!(
                    "tensor '{name}' has no valid data_offsets"
                )))
            })?;
        if offsets.1 < offsets.0 {
            return Err(err(LoadErrorKind::BadHeader(format!(
                "tensor '{name}' ends before it starts"
            ))));
        }
        data_end = data_end.max(offsets.1);
        let dtype_name = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| {
            err(LoadErrorKind::BadHeader(format!(
                "tensor '{name}' has no dtype"
            )))
        })?;
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                err(LoadErrorKind::BadHeader(format!(
                    "tensor '{name}' has no valid shape"
                )))
            })?;
        // Safetensors names dtypes "F16", "BF16", "F8_E4M3"; candle "f16", "f8e4m3".
        let dtype = dtype_name
            .to_ascii_lowercase()
            .replace('_', "")
            .parse::<DType>()
            .map_err(|_| dtype_name.to_owned());
        // The shape must account for the bytes exactly, so that sizes computed from the header
        // (memory estimates) can neither overflow nor lie.
        if let Ok(dtype) = dtype {
            let bytes = shape
                .iter()
                .try_fold(dtype.size_in_bytes() as u64, |n, &d| {
                    n.checked_mul(d as u64)
                });
            if bytes != Some(offsets.1 - offsets.0) {
                return Err(err(LoadErrorKind::BadHeader(format!(
                    "tensor '{name}' has shape {shape:?} of {dtype:?} but {} bytes",
                    offsets.1 - offsets.0
                ))));
            }
        }
        tensors.insert(
            name.clone(),
            TensorEntry {
                dtype,
                shape,
                begin: offsets.0,
                end: offsets.1,
            },
        );
    }
    let needed = 8 + header_len + data_end;
    if needed > file_len {
        return Err(err(LoadErrorKind::Truncated { file_len, needed }));
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with one tensor `t` whose header says `shape` and `dtype` over `bytes`
    /// bytes of data.
    fn file(dir: &Path, shape: &str, dtype: &str, bytes: usize) -> PathBuf {
        let header =
            format!(r#"{{"t":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[0,{bytes}]}}}}"#);
        let mut data = (header.len() as u64).to_le_bytes().to_vec();
        data.extend(header.as_bytes());
        data.extend(vec![0u8; bytes]);
        let path = dir.join(format!("{dtype}-{bytes}.safetensors"));
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn a_shape_that_does_not_match_its_bytes_is_refused_before_any_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = StateDict::open(&file(dir.path(), "[2,3]", "F16", 12)).unwrap();
        assert_eq!(ok.get("t").unwrap().dims(), &[2, 3]);
        assert_eq!(ok.float_dtype(""), DType::F16);
        assert_eq!(ok.loaded_bytes("", |_| DType::F32), 24);
        for (shape, bytes) in [
            ("[1000,1000]", 16),
            ("[4294967296,4294967296,4294967296]", 16),
        ] {
            let e = StateDict::open(&file(dir.path(), shape, "F32", bytes)).unwrap_err();
            assert!(e.to_string().contains("tensor 't' has shape"), "{e}");
        }
        // A dtype Weft cannot hold is refused when the tensor is read, naming it.
        let odd = StateDict::open(&file(dir.path(), "[4]", "BOOL", 4)).unwrap();
        let e = odd.get("t").unwrap_err().to_string();
        assert!(e.contains("dtype BOOL"), "{e}");
    }
}
