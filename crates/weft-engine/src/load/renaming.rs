//! The renaming `VarBuilder` backend every file loader builds models through: the model asks for
//! its own (diffusers) names, the backend serves the file's tensors under the keys a map gives,
//! checks their shapes, converts them to the model dtype and device, and remembers the first
//! problem so that the [`LoadError`] names the file and the tensor.
//!
//! A model name maps to a [`Source`]: a file key (`String`) for plain renaming, or a source type
//! of the caller's that computes the tensor from file tensors and a context of its own (the
//! ControlNet's base-model sources: Control-LoRA's low-rank sums, difference ControlNets). The
//! rest is [`Renaming`]'s options: accepting 1x1 convs where the model has linears, and logging
//! the mapped file tensors the model did not use.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::load::file::StateDict;
use crate::load::{LoadError, LoadErrorKind};

/// Where the tensor of one model name comes from.
pub(crate) trait Source: Send + Sync + 'static {
    /// What the sources of one build share besides the file (`()` for file keys).
    type Context: Send + Sync + 'static;

    /// The tensor, and the key a shape error names. Problems are reported through
    /// [`FileTensors::fail`] so that the load error keeps them.
    fn read(
        &self,
        context: &Self::Context,
        file: &FileTensors,
    ) -> candle_core::Result<(String, Tensor)>;

    /// The file keys it reads, for the report of file tensors the model did not use.
    fn file_keys(&self) -> Vec<&str>;
}

/// A file key: the file's tensor as stored.
impl Source for String {
    type Context = ();

    fn read(&self, _: &(), file: &FileTensors) -> candle_core::Result<(String, Tensor)> {
        Ok((self.clone(), file.tensor(self)?))
    }

    fn file_keys(&self) -> Vec<&str> {
        vec![self.as_str()]
    }
}

/// The file of a build, as sources read it: which keys were read, and the first problem.
pub(crate) struct FileTensors {
    sd: Arc<StateDict>,
    used: Mutex<HashSet<String>>,
    problem: Mutex<Option<LoadErrorKind>>,
}

impl FileTensors {
    /// The file's tensor `key`, in its stored dtype; marks it used.
    pub(crate) fn tensor(&self, key: &str) -> candle_core::Result<Tensor> {
        if let Ok(mut used) = self.used.lock() {
            used.insert(key.to_string());
        }
        self.sd.get(key).map_err(|e| self.fail(e.kind))
    }

    /// Keeps `kind` as the build's problem (the first one is kept) and returns it as the error to
    /// give the model builder.
    pub(crate) fn fail(&self, kind: LoadErrorKind) -> candle_core::Error {
        let msg = kind.to_string();
        if let Ok(mut p) = self.problem.lock() {
            p.get_or_insert(kind);
        }
        candle_core::Error::Msg(msg)
    }
}

/// The backend: model name -> source, over one file.
struct RenamingBackend<S: Source> {
    names: HashMap<String, S>,
    context: S::Context,
    file: Arc<FileTensors>,
    squeeze_trailing_ones: bool,
    /// Every tensor served, by model name, as the model got it (see [`Renaming::build_keeping`]).
    served: Option<Arc<Mutex<HashMap<String, Tensor>>>>,
}

impl<S: Source> RenamingBackend<S> {
    fn read(&self, name: &str) -> candle_core::Result<(String, Tensor)> {
        match self.names.get(name) {
            Some(source) => source.read(&self.context, &self.file),
            None => Err(self
                .file
                .fail(LoadErrorKind::MissingTensor(name.to_string()))),
        }
    }
}

/// `dims` without its trailing 1s (keeping at least two dimensions).
fn strip_trailing_ones(dims: &[usize]) -> &[usize] {
    let mut d = dims;
    while d.len() > 2 && d.last() == Some(&1) {
        d = &d[..d.len() - 1];
    }
    d
}

impl<S: Source> candle_nn::var_builder::SimpleBackend for RenamingBackend<S> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let (key, t) = self.read(name)?;
        let t = if t.dims() == s.dims() {
            t
        } else if self.squeeze_trailing_ones
            && strip_trailing_ones(t.dims()) == strip_trailing_ones(s.dims())
        {
            t.reshape(s)?
        } else {
            return Err(self.file.fail(LoadErrorKind::BadShape {
                name: key,
                expected: s.dims().to_vec(),
                found: t.dims().to_vec(),
            }));
        };
        // Widening f16 to f32 on every core (`ops::cast`), not candle's element-by-element loop:
        // a 2 GB checkpoint widened at load took 3 s longer that way.
        let t = crate::ops::cast::to_dtype(&t, dtype)?.to_device(dev)?;
        if let Some(Ok(mut served)) = self.served.as_ref().map(|s| s.lock()) {
            served.insert(name.to_string(), t.clone());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        crate::ops::cast::to_dtype(&self.read(name)?.1, dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
}

/// How to build a model from a file: the model's names and where each comes from, and the
/// options. Build with [`Renaming::build`].
pub(crate) struct Renaming<S: Source = String> {
    names: HashMap<String, S>,
    context: S::Context,
    squeeze_trailing_ones: bool,
    unused_warning: Option<&'static str>,
}

impl Renaming<String> {
    /// Model name -> file key.
    pub(crate) fn new(names: HashMap<String, String>) -> Self {
        Self::with_context(names, ())
    }
}

impl<S: Source> Renaming<S> {
    /// Model name -> source, with the context the sources read besides the file.
    pub(crate) fn with_context(names: HashMap<String, S>, context: S::Context) -> Self {
        Self {
            names,
            context,
            squeeze_trailing_ones: false,
            unused_warning: None,
        }
    }

    /// Accepts a stored shape that differs from the model's only in trailing 1s, reshaped (LDM
    /// checkpoints store some linear layers as 1x1 convolutions). Off: such a tensor is a shape
    /// error.
    pub(crate) fn squeeze_trailing_ones(mut self) -> Self {
        self.squeeze_trailing_ones = true;
        self
    }

    /// After a successful build, logs `message` with the file and the mapped file keys the
    /// model did not ask for.
    pub(crate) fn warn_unused(mut self, message: &'static str) -> Self {
        self.unused_warning = Some(message);
        self
    }

    /// Builds a model from `sd` in `dtype` on `device`. A failure becomes a [`LoadError`] naming
    /// the file and the first problem (the tensor and what is wrong with it), or, where no
    /// tensor was at fault, the builder's error.
    pub(crate) fn build<T>(
        self,
        sd: &Arc<StateDict>,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
    ) -> Result<T, LoadError> {
        self.build_inner(sd, dtype, device, None, build)
    }

    /// [`Renaming::build`], also returning every tensor the model took, by model name, as it
    /// took them (the same tensors, shared): the weights a saver writes back.
    pub(crate) fn build_keeping<T>(
        self,
        sd: &Arc<StateDict>,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
    ) -> Result<(T, HashMap<String, Tensor>), LoadError> {
        let served = Arc::new(Mutex::new(HashMap::new()));
        let model = self.build_inner(sd, dtype, device, Some(Arc::clone(&served)), build)?;
        let served = match Arc::try_unwrap(served) {
            Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(shared) => shared.lock().map(|m| m.clone()).unwrap_or_default(),
        };
        Ok((model, served))
    }

    fn build_inner<T>(
        self,
        sd: &Arc<StateDict>,
        dtype: DType,
        device: &Device,
        served: Option<Arc<Mutex<HashMap<String, Tensor>>>>,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
    ) -> Result<T, LoadError> {
        let mapped: Option<Vec<String>> = self.unused_warning.map(|_| {
            self.names
                .values()
                .flat_map(|s| s.file_keys())
                .map(str::to_string)
                .collect()
        });
        let file = Arc::new(FileTensors {
            sd: Arc::clone(sd),
            used: Mutex::new(HashSet::new()),
            problem: Mutex::new(None),
        });
        let backend = RenamingBackend {
            names: self.names,
            context: self.context,
            file: Arc::clone(&file),
            squeeze_trailing_ones: self.squeeze_trailing_ones,
            served,
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        let model = build(vb).map_err(|e| {
            let recorded = file.problem.lock().ok().and_then(|mut p| p.take());
            LoadError::new(sd.path(), recorded.unwrap_or(LoadErrorKind::Tensor(e)))
        })?;
        if let (Some(message), Some(mapped), Ok(used)) =
            (self.unused_warning, mapped, file.used.lock())
        {
            let mut unused: Vec<&String> = mapped.iter().filter(|k| !used.contains(*k)).collect();
            if !unused.is_empty() {
                unused.sort();
                tracing::warn!(
                    file = %sd.path().display(),
                    count = unused.len(),
                    first = ?unused.iter().take(5).collect::<Vec<_>>(),
                    "{message}"
                );
            }
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with a 1x1 conv `attn.weight` ([2, 2, 1, 1]) and a bias `attn.bias` ([2]).
    fn file(dir: &std::path::Path) -> Arc<StateDict> {
        let path = dir.join("w.safetensors");
        let tensors = HashMap::from([
            (
                "attn.weight".to_string(),
                Tensor::ones((2, 2, 1, 1), DType::F16, &Device::Cpu).unwrap(),
            ),
            (
                "attn.bias".to_string(),
                Tensor::zeros(2, DType::F16, &Device::Cpu).unwrap(),
            ),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        Arc::new(StateDict::open(&path).unwrap())
    }

    fn names() -> HashMap<String, String> {
        HashMap::from([
            ("proj.weight".to_string(), "attn.weight".to_string()),
            ("proj.bias".to_string(), "attn.bias".to_string()),
        ])
    }

    #[test]
    fn names_are_served_converted_and_reshaped_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let sd = file(dir.path());
        let linear = |vb: VarBuilder| vb.get((2, 2), "proj.weight");
        let w = Renaming::new(names())
            .squeeze_trailing_ones()
            .build(&sd, DType::F32, &Device::Cpu, linear)
            .unwrap();
        assert_eq!((w.dims(), w.dtype()), (&[2, 2][..], DType::F32));
        // Without the option the 1x1 conv is a shape error naming the file's key.
        let err = Renaming::new(names())
            .build(&sd, DType::F32, &Device::Cpu, linear)
            .unwrap_err();
        assert!(err.to_string().contains("w.safetensors"), "{err}");
        assert!(
            matches!(&err.kind, LoadErrorKind::BadShape { name, .. } if name == "attn.weight"),
            "{err}"
        );
    }

    #[test]
    fn the_first_problem_is_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let sd = file(dir.path());
        let err = Renaming::new(names())
            .warn_unused("unused")
            .build(&sd, DType::F32, &Device::Cpu, |vb| {
                let missing = vb.get(2, "other.bias");
                let _ = vb.get(3, "proj.bias");
                missing
            })
            .unwrap_err();
        assert!(
            matches!(&err.kind, LoadErrorKind::MissingTensor(n) if n == "other.bias"),
            "{err}"
        );
        // A builder error with no tensor at fault is passed on.
        let err = Renaming::new(names())
            .build(
                &sd,
                DType::F32,
                &Device::Cpu,
                |_| -> candle_core::Result<()> { candle_core::bail!("bad config") },
            )
            .unwrap_err();
        assert!(matches!(err.kind, LoadErrorKind::Tensor(_)), "{err}");
    }
}
