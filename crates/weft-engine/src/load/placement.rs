//! Partial loading (ComfyUI's "lowvram"): a model whose weights do not fit the GPU's budget keeps
//! the part that does not fit in RAM and streams it to the GPU layer by layer while sampling.
//!
//! The plan is per tensor: the biggest tensors that fit the bytes granted go on the compute
//! device, the rest stay on the host (the CPU), so the fewest tensors cross per step. Nothing in
//! the model code knows: every layer moves its weights to its input's device per call
//! ([`crate::ops::cast::operand`]), which is a no-op for resident weights. On the CPU the
//! host is the device, so a plan there is bookkeeping only (how CI exercises it).

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

/// Which tensors of a model live on the compute device; the rest stay in RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `None`: everything on the device.
    on_device: Option<HashSet<String>>,
    device_bytes: usize,
    host_bytes: usize,
}

impl Placement {
    /// Everything on the device.
    pub fn resident(total_bytes: usize) -> Placement {
        Placement {
            on_device: None,
            device_bytes: total_bytes,
            host_bytes: 0,
        }
    }

    /// Puts the biggest tensors of `sizes` (name, bytes) on the device while they fit in
    /// `device_bytes`, smaller ones filling what is left; the rest on the host. Ties are broken
    /// by name, so the same model and budget always give the same plan.
    pub fn plan<'a>(
        sizes: impl IntoIterator<Item = (&'a str, usize)>,
        device_bytes: usize,
    ) -> Self {
        let mut sizes: Vec<(&str, usize)> = sizes.into_iter().collect();
        let total: usize = sizes.iter().map(|(_, b)| b).sum();
        if total <= device_bytes {
            return Placement::resident(total);
        }
        sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut left = device_bytes;
        let mut on_device = HashSet::new();
        for (name, bytes) in sizes {
            if bytes <= left {
                left -= bytes;
                on_device.insert(name.to_owned());
            }
        }
        let placed = device_bytes - left;
        Placement {
            on_device: Some(on_device),
            device_bytes: placed,
            host_bytes: total - placed,
        }
    }

    /// Whether the tensor `name` lives on the compute device.
    pub fn on_device(&self, name: &str) -> bool {
        self.on_device.as_ref().is_none_or(|set| set.contains(name))
    }

    /// `device` for a tensor on the device, the CPU for one kept in RAM.
    pub fn device_for(&self, name: &str, device: &Device) -> Device {
        if self.on_device(name) {
            device.clone()
        } else {
            Device::Cpu
        }
    }

    /// Bytes on the compute device.
    pub fn device_bytes(&self) -> usize {
        self.device_bytes
    }

    /// Bytes kept in RAM and streamed per layer.
    pub fn host_bytes(&self) -> usize {
        self.host_bytes
    }

    /// Whether part of the model stays in RAM.
    pub fn is_partial(&self) -> bool {
        self.host_bytes > 0
    }
}

/// A `VarBuilder` over tensors that stay where they are: candle-nn's own map backend moves every
/// tensor to the builder's device, which would undo a partial plan (and copy a patched model's
/// offloaded weights onto the GPU).
struct PlacedTensors(HashMap<String, Tensor>);

impl PlacedTensors {
    fn tensor(&self, name: &str, dtype: DType) -> candle_core::Result<Tensor> {
        let t = self
            .0
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_owned(),
            })?;
        crate::ops::cast::to_dtype(t, dtype)
    }
}

impl candle_nn::var_builder::SimpleBackend for PlacedTensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.tensor(name, dtype)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            });
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        self.tensor(name, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// A `VarBuilder` over `weights` that leaves each tensor on the device it is on; `device` is
/// what the model creates its own tensors on (the compute device).
pub fn placed_var_builder(
    weights: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(PlacedTensors(weights)), dtype, device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_biggest_tensors_that_fit_go_on_the_device() {
        let sizes = [("a", 40), ("b", 30), ("c", 20), ("d", 10), ("e", 10)];
        let plan = Placement::plan(sizes, 65);
        // 40 fits (25 left), 30 does not, 20 does (5 left), the 10s do not.
        assert!(plan.on_device("a") && plan.on_device("c"));
        assert!(!plan.on_device("b") && !plan.on_device("d") && !plan.on_device("e"));
        assert_eq!((plan.device_bytes(), plan.host_bytes()), (60, 50));
        assert!(plan.is_partial());
        assert_eq!(
            plan.device_for("b", &Device::Cpu).location(),
            Device::Cpu.location()
        );
    }

    #[test]
    fn a_model_that_fits_is_resident_and_an_empty_budget_keeps_all_on_the_host() {
        let sizes = [("a", 40), ("b", 30)];
        let all = Placement::plan(sizes, 70);
        assert_eq!(all, Placement::resident(70));
        assert!(all.on_device("anything") && !all.is_partial());
        let none = Placement::plan(sizes, 0);
        assert_eq!((none.device_bytes(), none.host_bytes()), (0, 70));
        assert!(!none.on_device("a"));
    }

    #[test]
    fn ties_are_broken_by_name() {
        let plan = Placement::plan([("y", 10), ("x", 10), ("z", 10)], 20);
        assert!(plan.on_device("x") && plan.on_device("y") && !plan.on_device("z"));
        let again = Placement::plan([("z", 10), ("x", 10), ("y", 10)], 20);
        assert_eq!(plan, again);
    }

    #[test]
    fn the_placed_builder_keeps_tensors_and_checks_shapes() {
        let t = Tensor::ones((2, 3), DType::F16, &Device::Cpu).unwrap();
        let vb = placed_var_builder(
            HashMap::from([("w".to_owned(), t.clone())]),
            DType::F16,
            &Device::Cpu,
        );
        let got = vb.get((2, 3), "w").unwrap();
        assert_eq!(got.id(), t.id());
        assert!(vb.get((3, 2), "w").is_err());
        assert!(vb.get((2, 3), "missing").is_err());
    }
}
