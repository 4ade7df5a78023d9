//! ControlNets built on the sampled model's own UNet weights: Control-LoRAs
//! ([`crate::controlnet::control_lora`]) start from them and add low-rank deltas, difference
//! ControlNets (`difference.rs`, loaded by [`crate::controlnet::load::load_control_on`]) store
//! their weights as deltas to them.
//!
//! [`BaseWeights`] are those weights; `BaseSource` says where each ControlNet tensor comes
//! from, and reads it for the loading boundary's renaming backend (`crate::load::renaming`).
//! The sums are computed in f32 on the host; the backend converts the result to the model's dtype
//! and device.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::load::renaming::{FileTensors, Source};
use crate::load::LoadErrorKind;

/// Diffusers-named UNet weights of a base model.
pub type BaseWeights = HashMap<String, Tensor>;

/// Where one ControlNet tensor comes from, for a ControlNet built on [`BaseWeights`].
#[derive(Debug, Clone)]
pub(crate) enum BaseSource {
    /// A tensor of the file.
    Key(String),
    /// A tensor of the base model's diffusers-named UNet weights (Control-LoRA: the weights the
    /// file leaves out).
    BaseKey(String),
    /// Control-LoRA: the base model's `base` plus `up @ down` from the file, both flattened from
    /// their second dimension on (ComfyUI's `ControlLoraOps`).
    LowRank {
        /// The base model's weight.
        base: String,
        /// The file's `up` factor.
        up: String,
        /// The file's `down` factor.
        down: String,
    },
    /// A difference ControlNet: the file's `key` plus the base model's `base`.
    Difference {
        /// The file's delta.
        key: String,
        /// The base model's weight.
        base: String,
    },
}

/// The base model's weight `key`, on the host.
fn base_tensor(base: &BaseWeights, key: &str, file: &FileTensors) -> candle_core::Result<Tensor> {
    let weight = base.get(key).ok_or_else(|| {
        file.fail(LoadErrorKind::BadConfig(format!(
            "the base model has no unet weight '{key}'"
        )))
    })?;
    // Combined with the file's tensors on the host; the builder moves the result to the device.
    weight.to_device(&Device::Cpu)
}

impl Source for BaseSource {
    type Context = Arc<BaseWeights>;

    fn read(
        &self,
        base: &Arc<BaseWeights>,
        file: &FileTensors,
    ) -> candle_core::Result<(String, Tensor)> {
        match self {
            BaseSource::Key(key) => Ok((key.clone(), file.tensor(key)?)),
            BaseSource::BaseKey(key) => Ok((key.clone(), base_tensor(base, key, file)?)),
            BaseSource::LowRank {
                base: base_key,
                up,
                down,
            } => {
                let w = base_tensor(base, base_key, file)?;
                let up_t = file.tensor(up)?.to_dtype(DType::F32)?;
                let down_t = file.tensor(down)?.to_dtype(DType::F32)?;
                let delta = up_t.flatten_from(1)?.matmul(&down_t.flatten_from(1)?)?;
                if delta.elem_count() != w.elem_count() {
                    return Err(file.fail(LoadErrorKind::BadShape {
                        name: up.clone(),
                        expected: w.dims().to_vec(),
                        found: delta.dims().to_vec(),
                    }));
                }
                let sum = (w.to_dtype(DType::F32)? + delta.reshape(w.dims())?)?;
                Ok((up.clone(), sum))
            }
            BaseSource::Difference {
                key,
                base: base_key,
            } => {
                let d = file.tensor(key)?;
                let w = base_tensor(base, base_key, file)?;
                if d.dims() != w.dims() {
                    return Err(file.fail(LoadErrorKind::BadShape {
                        name: key.clone(),
                        expected: w.dims().to_vec(),
                        found: d.dims().to_vec(),
                    }));
                }
                let sum = (d.to_dtype(DType::F32)? + w.to_dtype(DType::F32)?)?;
                Ok((key.clone(), sum))
            }
        }
    }

    fn file_keys(&self) -> Vec<&str> {
        match self {
            BaseSource::Key(key) | BaseSource::Difference { key, .. } => vec![key.as_str()],
            BaseSource::BaseKey(_) => vec![],
            BaseSource::LowRank { up, down, .. } => vec![up.as_str(), down.as_str()],
        }
    }
}
