//! ComfyUI's list nodes for batches (`comfy_extras/nodes_rebatch.py`): RebatchLatents and
//! RebatchImages take every list element at once (`input_is_list`) and give a list of batches
//! of `batch_size` (`output_is_list`).

use candle_core::{DType, Device, Tensor};

use crate::graph::spec::build::*;
use crate::graph::spec::NodeSpec;
use crate::graph::SlotType;
use crate::nodes::latent::{latent_out, samples_dims};
use crate::nodes::latent_ops::{extras_spec, repeat_to_batch_size};
use crate::nodes::{Inputs, Latent, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    registry.add(RebatchLatents);
    registry.add(RebatchImages);
}

/// A batch being assembled by RebatchLatents: samples, masks and noise indices, all of one
/// batch length.
struct Pending {
    samples: Tensor,
    masks: Tensor,
    indices: Vec<usize>,
}

impl Pending {
    fn len(&self) -> usize {
        self.indices.len()
    }

    /// Items `start..start + len` (clamped to the batch).
    fn slice(&self, start: usize, len: usize) -> Result<Pending, NodeError> {
        let len = len.min(self.len().saturating_sub(start));
        Ok(Pending {
            samples: self.samples.narrow(0, start, len)?,
            masks: self.masks.narrow(0, start, len)?,
            indices: self.indices[start..start + len].to_vec(),
        })
    }

    fn join(self, next: Pending) -> Result<Pending, NodeError> {
        if self.masks.dims()[1..] != next.masks.dims()[1..] {
            return Err(NodeError::input(
                "latents",
                format!(
                    "noise masks of sizes {:?} and {:?} cannot be batched together",
                    &self.masks.dims()[2..],
                    &next.masks.dims()[2..]
                ),
            ));
        }
        let mut indices = self.indices;
        indices.extend(next.indices);
        Ok(Pending {
            samples: Tensor::cat(&[&self.samples, &next.samples], 0)?,
            masks: Tensor::cat(&[&self.masks, &next.masks], 0)?,
            indices,
        })
    }

    /// The finished LATENT; a mask of all ones is dropped.
    fn into_latent(self) -> Result<Value, NodeError> {
        let mean = self.masks.mean_all()?.to_scalar::<f32>()?;
        Ok(Value::Latent(Latent {
            samples: self.samples,
            noise_mask: (mean != 1.0).then_some(self.masks),
            batch_index: Some(self.indices),
        }))
    }
}

/// Regroups a list of latent batches into batches of `batch_size` (a list node).
pub struct RebatchLatents;

impl RebatchLatents {
    /// One input latent as a pending batch: its mask (ones at image size when it has none)
    /// repeated to its batch, its indices (counting on from `offset` when it has none).
    fn pending(latent: &Latent, offset: usize) -> Result<Pending, NodeError> {
        let (b, _, h, w) = samples_dims(latent, "latents")?;
        let masks = match &latent.noise_mask {
            Some(mask) => {
                let mask = if mask.dim(0)? < b {
                    repeat_to_batch_size(mask, b)?
                } else {
                    mask.narrow(0, 0, b)?
                };
                mask.to_dtype(DType::F32)?
            }
            None => Tensor::ones((b, 1, h * 8, w * 8), DType::F32, &Device::Cpu)?,
        };
        let indices = match &latent.batch_index {
            Some(indices) => indices.clone(),
            None => (offset..offset + b).collect(),
        };
        if indices.len() != b {
            return Err(NodeError::input(
                "latents",
                format!(
                    "a latent has {b} samples but {} batch indices",
                    indices.len()
                ),
            ));
        }
        Ok(Pending {
            samples: latent.samples.clone(),
            masks,
            indices,
        })
    }
}

impl Node for RebatchLatents {
    fn spec(&self) -> NodeSpec {
        let mut spec = extras_spec(
            "RebatchLatents",
            "comfy_extras.nodes_rebatch",
            "latent/batch",
            vec![
                required("latents", link(SlotType::LATENT)),
                required("batch_size", int(1, 1, 4096)),
            ],
            latent_out(),
        );
        spec.display_name = "Rebatch Latents";
        spec.input_is_list = true;
        spec.output_is_list = &[true];
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let batch_size = inputs.firsts().usize("batch_size")?;
        // Latents without a noise mask get one of ones at image size (64 values per latent
        // pixel), as ComfyUI makes them; batches are joined by copying.
        let pixels: u64 = inputs
            .list("latents")?
            .iter()
            .filter_map(|v| match v {
                Value::Latent(l) => l
                    .samples
                    .dims4()
                    .ok()
                    .map(|(b, _, h, w)| (b * h * w) as u64),
                _ => None,
            })
            .sum();
        ctx.reserve_memory("latents", pixels * 64 * 4 * 2, "rebatching latents")?;
        let mut out = Vec::new();
        let mut current: Option<Pending> = None;
        let mut processed = 0;
        for value in inputs.list("latents")? {
            let Value::Latent(latent) = value else {
                return Err(NodeError::input("latents", "expected LATENT values"));
            };
            let next = Self::pending(latent, processed)?;
            processed += next.len();
            let joined = match current.take() {
                None => next,
                Some(batch) if batch.samples.dims()[2..] != next.samples.dims()[2..] => {
                    out.push(batch.slice(0, batch_size)?.into_latent()?);
                    next
                }
                Some(batch) => batch.join(next)?,
            };
            current = Some(joined);
            if let Some(batch) = current.take_if(|b| b.len() > batch_size) {
                let whole = batch.len() / batch_size;
                for i in 0..whole {
                    out.push(batch.slice(i * batch_size, batch_size)?.into_latent()?);
                }
                current = (whole * batch_size < batch.len())
                    .then(|| batch.slice(whole * batch_size, batch.len()))
                    .transpose()?;
            }
        }
        if let Some(batch) = current {
            out.push(batch.slice(0, batch_size)?.into_latent()?);
        }
        Ok(NodeOutput::values(vec![Value::list(out)]))
    }
}

/// Regroups a list of image batches into batches of `batch_size` (a list node).
pub struct RebatchImages;

impl Node for RebatchImages {
    fn spec(&self) -> NodeSpec {
        let mut spec = extras_spec(
            "RebatchImages",
            "comfy_extras.nodes_rebatch",
            "image/batch",
            vec![
                required("images", link(SlotType::IMAGE)),
                required("batch_size", int(1, 1, 4096)),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        );
        spec.display_name = "Rebatch Images";
        spec.input_is_list = true;
        spec.output_is_list = &[true];
        spec
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let batch_size = inputs.firsts().usize("batch_size")?;
        let mut singles = Vec::new();
        for value in inputs.list("images")? {
            let Value::Image(images) = value else {
                return Err(NodeError::input("images", "expected IMAGE values"));
            };
            for i in 0..images.dim(0)? {
                singles.push(images.narrow(0, i, 1)?);
            }
        }
        let mut out = Vec::new();
        for chunk in singles.chunks(batch_size) {
            if let Some(odd) = chunk.iter().find(|t| t.dims() != chunk[0].dims()) {
                return Err(NodeError::input(
                    "images",
                    format!(
                        "images of sizes {:?} and {:?} cannot be batched together",
                        &chunk[0].dims()[1..],
                        &odd.dims()[1..]
                    ),
                ));
            }
            out.push(Value::Image(Tensor::cat(chunk, 0)?));
        }
        Ok(NodeOutput::values(vec![Value::list(out)]))
    }
}
