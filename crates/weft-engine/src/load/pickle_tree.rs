//! A torch zip pickle read as the nested value it stores, for files that are not flat state
//! dicts: a hypernetwork is `{768: [state_dict_k, state_dict_v], ..., "activation_func": "relu"}`,
//! and candle's tensor lister only walks a top-level dict's string keys.
//!
//! The pickle passes [`crate::load::pickle_guard`] first, as every pickled file does; candle's
//! non-executing reader then parses it, and each tensor's storage (`<archive>/data/<key>`) is read
//! here with the same bounds [`crate::load::file::StateDict`] applies.

use std::io::Read;
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{Device, Tensor};

use crate::load::{pickle_guard, LoadError, LoadErrorKind};

/// One value of a pickled file.
#[derive(Debug, Clone)]
pub enum PickleValue {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// A list or tuple.
    List(Vec<PickleValue>),
    /// A dict (or OrderedDict), its entries in file order.
    Dict(Vec<(PickleValue, PickleValue)>),
    /// A tensor, read onto the CPU in its stored dtype.
    Tensor(Tensor),
    /// Anything else (an object a tensor file has no use for).
    Other,
}

impl PickleValue {
    /// The value under the string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&PickleValue> {
        match self {
            PickleValue::Dict(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, PickleValue::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Reads the first `data.pkl` of the torch zip at `path` with every tensor in it.
pub fn read_pickle_tree(path: &Path) -> Result<PickleValue, LoadError> {
    let err = |kind: LoadErrorKind| LoadError::new(path, kind);
    pickle_guard::check_zip_pickle(path).map_err(|e| err(LoadErrorKind::UnsafePickle(e)))?;
    let file_len = std::fs::metadata(path).map_err(|e| err(e.into()))?.len();
    let file = std::fs::File::open(path).map_err(|e| err(e.into()))?;
    let bad = |e: String| err(LoadErrorKind::NotACheckpoint(e));
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let name = archive
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.into_owned())
        .ok_or_else(|| bad("the zip archive holds no data.pkl".into()))?;
    let mut data = Vec::new();
    archive
        .by_name(&name)
        .map_err(|e| bad(e.to_string()))?
        .take(pickle_guard::MAX_PICKLE_BYTES)
        .read_to_end(&mut data)
        .map_err(|e| err(e.into()))?;
    // The guard bounds what the reader builds; a panic inside it still must not end the process.
    let object = std::panic::catch_unwind(move || {
        let mut stack = Stack::empty();
        stack.read_loop(&mut std::io::Cursor::new(data))?;
        stack.finalize()
    })
    .map_err(|_| bad("pickle reader failed".into()))?
    .map_err(|e| bad(e.to_string()))?;
    let dir = Path::new(name.strip_suffix(".pkl").unwrap_or(&name)).to_path_buf();
    let mut reader = Storages {
        archive: &mut archive,
        dir: &dir,
        path,
        file_len,
    };
    reader.convert(object, "")
}

/// Reads tensor storages out of the archive.
struct Storages<'a> {
    archive: &'a mut zip::ZipArchive<std::fs::File>,
    dir: &'a Path,
    path: &'a Path,
    file_len: u64,
}

impl Storages<'_> {
    /// `object` as a [`PickleValue`]; `at` names where it sits, for errors.
    fn convert(&mut self, object: Object, at: &str) -> Result<PickleValue, LoadError> {
        Ok(match object {
            Object::None => PickleValue::None,
            Object::Bool(b) => PickleValue::Bool(b),
            Object::Int(i) => PickleValue::Int(i64::from(i)),
            Object::Long(i) => PickleValue::Int(i),
            Object::Float(f) => PickleValue::Float(f),
            Object::Unicode(s) => PickleValue::Str(s),
            Object::List(items) | Object::Tuple(items) => PickleValue::List(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.convert(item, &format!("{at}.{i}")))
                    .collect::<Result<_, _>>()?,
            ),
            Object::Dict(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let key = self.convert(k, at)?;
                    let here = match &key {
                        PickleValue::Str(s) => format!("{at}.{s}"),
                        PickleValue::Int(i) => format!("{at}.{i}"),
                        _ => format!("{at}.?"),
                    };
                    out.push((key, self.convert(v, &here)?));
                }
                PickleValue::Dict(out)
            }
            reduce @ Object::Reduce { .. } => {
                let name = at.trim_start_matches('.').to_string();
                let info = reduce
                    .into_tensor_info(Object::Unicode(name.clone()), self.dir)
                    .map_err(|e| self.error(LoadErrorKind::NotACheckpoint(e.to_string())))?;
                match info {
                    Some(info) => PickleValue::Tensor(self.tensor(&info)?),
                    None => PickleValue::Other,
                }
            }
            _ => PickleValue::Other,
        })
    }

    fn error(&self, kind: LoadErrorKind) -> LoadError {
        LoadError::new(self.path, kind)
    }

    /// The tensor `info` describes, which must be contiguous and within the file.
    fn tensor(&mut self, info: &candle_core::pickle::TensorInfo) -> Result<Tensor, LoadError> {
        let dims = info.layout.shape().dims();
        let bytes = dims
            .iter()
            .try_fold(info.dtype.size_in_bytes() as u64, |n, &d| {
                n.checked_mul(d as u64)
            })
            .filter(|&b| b <= self.file_len);
        let Some(bytes) = bytes else {
            return Err(self.error(LoadErrorKind::OversizedTensor {
                name: info.name.clone(),
                shape: dims.to_vec(),
                file_len: self.file_len,
            }));
        };
        if !info.layout.is_contiguous() {
            return Err(self.error(LoadErrorKind::UnsupportedFormat(format!(
                "tensor '{}' is stored non-contiguous",
                info.name
            ))));
        }
        let mut entry = self
            .archive
            .by_name(&info.path)
            .map_err(|e| LoadError::new(self.path, LoadErrorKind::NotACheckpoint(e.to_string())))?;
        let mut data = Vec::with_capacity(bytes as usize);
        std::io::copy(
            &mut (&mut entry).take(info.layout.start_offset() as u64),
            &mut std::io::sink(),
        )
        .and_then(|_| entry.take(bytes).read_to_end(&mut data))
        .map_err(|e| LoadError::new(self.path, e))?;
        if data.len() as u64 != bytes {
            return Err(LoadError::new(
                self.path,
                LoadErrorKind::Truncated {
                    file_len: self.file_len,
                    needed: bytes,
                },
            ));
        }
        Tensor::from_raw_buffer(&data, info.dtype, dims, &Device::Cpu)
            .map_err(|e| LoadError::new(self.path, e))
    }
}
