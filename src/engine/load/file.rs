//! Reading tensor files: safetensors (memory-mapped, header checked first) and PyTorch zip pickles
//! (`candle_core::pickle`, which interprets the pickle opcodes without executing any code).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};

use crate::engine::load::{LoadError, LoadErrorKind};

enum Source {
    Safetensors(MmapedSafetensors),
    Pickle(candle_core::pickle::PthTensors),
}

/// A read-only set of named tensors from one checkpoint file (or a sharded safetensors set).
/// Tensors are read on demand, in their stored dtype.
pub struct StateDict {
    path: PathBuf,
    shapes: HashMap<String, Vec<usize>>,
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
        check_safetensors_header(path, &mut file, u64::from_le_bytes(head), file_len)?;
        // SAFETY: the file is mapped read-only; like every mmap it must not be truncated by another
        // process while mapped, which is the model directory's contract.
        #[allow(unsafe_code)]
        let st = unsafe { MmapedSafetensors::new(path) }
            .map_err(|e| err(LoadErrorKind::BadHeader(e.to_string())))?;
        let shapes = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape().to_vec()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            shapes,
            source: Source::Safetensors(st),
        })
    }

    /// Opens several safetensors shards as one set (diffusers `*.safetensors.index.json`).
    pub fn open_shards(paths: &[PathBuf]) -> Result<Self, LoadError> {
        let first = paths.first().ok_or_else(|| {
            LoadError::new(
                Path::new(""),
                LoadErrorKind::NotACheckpoint("no shard files".into()),
            )
        })?;
        for p in paths {
            let mut file = std::fs::File::open(p).map_err(|e| LoadError::new(p, e))?;
            let file_len = file.metadata().map_err(|e| LoadError::new(p, e))?.len();
            let mut head = [0u8; 8];
            if read_up_to(&mut file, &mut head).map_err(|e| LoadError::new(p, e))? < 8 {
                return Err(LoadError::new(
                    p,
                    LoadErrorKind::Truncated {
                        file_len,
                        needed: 8,
                    },
                ));
            }
            check_safetensors_header(p, &mut file, u64::from_le_bytes(head), file_len)?;
        }
        // SAFETY: as in `open`.
        #[allow(unsafe_code)]
        let st = unsafe { MmapedSafetensors::multi(paths) }
            .map_err(|e| LoadError::new(first, LoadErrorKind::BadHeader(e.to_string())))?;
        let shapes = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape().to_vec()))
            .collect();
        Ok(Self {
            path: first.clone(),
            shapes,
            source: Source::Safetensors(st),
        })
    }

    fn open_pickle(path: &Path) -> Result<Self, LoadError> {
        // LDM checkpoints nest the weights under "state_dict"; plain torch.save(state_dict) files
        // do not. The reader is defensive, but a malformed pickle must never take the process down,
        // so any panic inside it becomes an error too.
        let read = |key: Option<&'static str>| {
            let p = path.to_path_buf();
            std::panic::catch_unwind(move || candle_core::pickle::PthTensors::new(&p, key))
                .map_err(|_| candle_core::Error::Msg("pickle reader failed".into()))
                .and_then(|r| r)
        };
        let pth = match read(Some("state_dict")) {
            Ok(p) if !p.tensor_infos().is_empty() => p,
            _ => read(None)
                .map_err(|e| LoadError::new(path, LoadErrorKind::NotACheckpoint(e.to_string())))?,
        };
        if pth.tensor_infos().is_empty() {
            return Err(LoadError::new(
                path,
                LoadErrorKind::NotACheckpoint("the pickle holds no tensors".into()),
            ));
        }
        let shapes = pth
            .tensor_infos()
            .iter()
            .map(|(k, info)| (k.clone(), info.layout.shape().dims().to_vec()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            shapes,
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
            Source::Safetensors(st) => st.load(name, &Device::Cpu),
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

/// Checks a safetensors header against the file size before mapping it, so truncated files and
/// lying headers give precise errors.
fn check_safetensors_header(
    path: &Path,
    file: &mut std::fs::File,
    header_len: u64,
    file_len: u64,
) -> Result<(), LoadError> {
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
    }
    let needed = 8 + header_len + data_end;
    if needed > file_len {
        return Err(err(LoadErrorKind::Truncated { file_len, needed }));
    }
    Ok(())
}
