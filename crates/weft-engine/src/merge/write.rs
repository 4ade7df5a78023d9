//! Writing safetensors files one tensor at a time: the header first (names, dtypes, shapes,
//! offsets and the string metadata), then each tensor's bytes, converted to little-endian bytes
//! only while it is written, so saving a model never holds a second copy of it. The layout is the
//! safetensors crate's (8-byte header length, JSON header padded with spaces to 8 bytes, tensors
//! sorted by dtype size then name); files are written to a temporary name and renamed, so a failed
//! save leaves no partial file.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// A save failure, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot write '{}': {kind}", path.display())]
pub struct SaveError {
    /// The file being written.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: SaveErrorKind,
}

/// What went wrong while writing a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SaveErrorKind {
    /// Creating, writing or renaming the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A tensor could not be converted to bytes.
    #[error("tensor '{key}': {source}")]
    Tensor {
        /// The tensor's name in the file.
        key: String,
        /// The tensor error.
        source: candle_core::Error,
    },
    /// A layout conversion failed (a weight Weft cannot name in the saved layout).
    #[error("{0}")]
    Layout(String),
}

impl SaveError {
    /// A failure of `path`.
    pub fn new(path: &Path, kind: impl Into<SaveErrorKind>) -> Self {
        Self {
            path: path.to_path_buf(),
            kind: kind.into(),
        }
    }
}

/// The dtype a tensor is stored in, with its safetensors name: its own, or f32 for the few
/// dtypes this writer does not name.
fn stored(tensor: &Tensor) -> (DType, &'static str) {
    match tensor.dtype() {
        DType::U8 => (DType::U8, "U8"),
        DType::U32 => (DType::U32, "U32"),
        DType::I64 => (DType::I64, "I64"),
        DType::BF16 => (DType::BF16, "BF16"),
        DType::F16 => (DType::F16, "F16"),
        DType::F64 => (DType::F64, "F64"),
        _ => (DType::F32, "F32"),
    }
}

/// Writes `tensors` with `metadata` (the header's `__metadata__`, omitted when `None`) to `path`.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<(), SaveError> {
    let _span = tracing::debug_span!("write_safetensors", path = %path.display()).entered();
    let fail = |kind: SaveErrorKind| SaveError::new(path, kind);
    let mut order: Vec<(&String, &Tensor)> = tensors.iter().collect();
    order.sort_by(|a, b| {
        let size = |t: &Tensor| stored(t).0.size_in_bytes();
        size(b.1).cmp(&size(a.1)).then(a.0.cmp(b.0))
    });
    let mut header = serde_json::Map::new();
    if let Some(metadata) = metadata {
        let entries = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(entries));
    }
    let mut offset = 0usize;
    for (name, tensor) in &order {
        let (dtype, dtype_name) = stored(tensor);
        let bytes = tensor.elem_count() * dtype.size_in_bytes();
        header.insert(
            (*name).clone(),
            serde_json::json!({
                "dtype": dtype_name,
                "shape": tensor.dims(),
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');

    let partial = path.with_extension("safetensors.partial");
    let write = || -> Result<(), SaveErrorKind> {
        let mut file = BufWriter::with_capacity(1 << 20, std::fs::File::create(&partial)?);
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        for (name, tensor) in &order {
            let bytes =
                tensor_bytes(tensor, stored(tensor).0).map_err(|source| SaveErrorKind::Tensor {
                    key: (*name).clone(),
                    source,
                })?;
            file.write_all(&bytes)?;
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&partial, path)?;
        Ok(())
    };
    write().map_err(|kind| {
        let _ = std::fs::remove_file(&partial);
        fail(kind)
    })
}

/// The tensor's elements as little-endian bytes in `dtype`.
fn tensor_bytes(tensor: &Tensor, dtype: DType) -> candle_core::Result<Vec<u8>> {
    let flat = tensor
        .to_device(&Device::Cpu)?
        .to_dtype(dtype)?
        .flatten_all()?;
    fn le<T: candle_core::WithDType, const N: usize>(
        t: &Tensor,
        bytes: impl Fn(T) -> [u8; N],
    ) -> candle_core::Result<Vec<u8>> {
        Ok(t.to_vec1::<T>()?.into_iter().flat_map(bytes).collect())
    }
    match dtype {
        DType::U8 => flat.to_vec1::<u8>(),
        DType::U32 => le(&flat, u32::to_le_bytes),
        DType::I64 => le(&flat, i64::to_le_bytes),
        DType::BF16 => le(&flat, half::bf16::to_le_bytes),
        DType::F16 => le(&flat, half::f16::to_le_bytes),
        DType::F64 => le(&flat, f64::to_le_bytes),
        _ => le(&flat, f32::to_le_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_read_back_with_their_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let mut tensors = BTreeMap::new();
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        tensors.insert("a".to_string(), a.clone());
        tensors.insert("b".to_string(), a.to_dtype(DType::F16).unwrap());
        tensors.insert(
            "ids".to_string(),
            Tensor::arange(0i64, 4, &Device::Cpu).unwrap(),
        );
        let metadata = BTreeMap::from([("prompt".to_string(), "{}".to_string())]);
        write_safetensors(&path, &tensors, Some(&metadata)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(len % 8, 0);
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        assert_eq!(header["__metadata__"]["prompt"], "{}");
        let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(
            back["a"].to_vec2::<f32>().unwrap(),
            a.to_vec2::<f32>().unwrap()
        );
        assert_eq!(back["b"].dtype(), DType::F16);
        assert_eq!(back["ids"].to_vec1::<i64>().unwrap(), vec![0, 1, 2, 3]);
        assert!(!dir.path().join("x.safetensors.partial").exists());
    }
}
