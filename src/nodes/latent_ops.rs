//! Latent arithmetic, batching, transforms and rebatching: LatentAdd, LatentSubtract,
//! LatentMultiply, LatentInterpolate, LatentBatch, LatentBatchSeedBehavior (ComfyUI's
//! `comfy_extras/nodes_latent.py`), LatentCompositeMasked (`nodes_mask.py`), LatentCrop,
//! LatentFlip, LatentRotate (`nodes.py`). Rebatching is `rebatch`, saving and loading latents
//! `latent_files`, latent operations `latent_filters`.

use candle_core::{DType, Device, Tensor};

use crate::engine::resize::{common_upscale, Crop, UpscaleMethod};
use crate::graph::spec::build::*;
use crate::graph::spec::{InputSpec, NodeSpec, OutputSpec};
use crate::graph::SlotType;
use crate::nodes::image_ops::MAX_RESOLUTION;
use crate::nodes::latent::{latent_out, latent_value, samples_dims};
use crate::nodes::{Inputs, Latent, Node, NodeContext, NodeError, NodeOutput, Registry};

pub fn register(registry: &mut Registry) {
    registry.add(LatentBinary {
        class_type: "LatentAdd",
        op: |a, b| a + b,
    });
    registry.add(LatentBinary {
        class_type: "LatentSubtract",
        op: |a, b| a - b,
    });
    registry.add(LatentMultiply);
    registry.add(LatentInterpolate);
    registry.add(LatentBatch);
    registry.add(LatentBatchSeedBehavior);
    registry.add(LatentCompositeMasked);
    registry.add(LatentCrop);
    registry.add(LatentTransform {
        class_type: "LatentFlip",
        display_name: "Flip Latent",
        choice: ("flip_method", FLIP_METHODS),
        transform: flip_latent,
    });
    registry.add(LatentTransform {
        class_type: "LatentRotate",
        display_name: "Rotate Latent",
        choice: ("rotation", ROTATIONS),
        transform: rotate_latent,
    });
}

/// A declaration from `comfy_extras/<module>.py`, whose display name is its class name.
pub fn extras_spec(
    class_type: &'static str,
    module: &'static str,
    category: &'static str,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
) -> NodeSpec {
    let mut spec = node(class_type, class_type, category, inputs, outputs);
    spec.python_module = module;
    spec
}

/// `samples1` and `samples2`, then `more`: the inputs of the nodes that combine two latents.
fn two_latents(more: Vec<InputSpec>) -> Vec<InputSpec> {
    let mut inputs = vec![
        required("samples1", link(SlotType::LATENT)),
        required("samples2", link(SlotType::LATENT)),
    ];
    inputs.extend(more);
    inputs
}

/// `latent` with new samples; its noise mask and batch indices kept (ComfyUI's `samples.copy()`).
fn with_samples(latent: &Latent, samples: Tensor) -> Latent {
    Latent {
        samples,
        noise_mask: latent.noise_mask.clone(),
        batch_index: latent.batch_index.clone(),
    }
}

/// ComfyUI's `repeat_to_batch_size`: the first `batch` items, repeated as often as needed.
pub fn repeat_to_batch_size(tensor: &Tensor, batch: usize) -> Result<Tensor, NodeError> {
    let have = tensor.dim(0)?;
    if have == batch {
        return Ok(tensor.clone());
    }
    if have == 0 {
        return Err(NodeError::Failed("cannot repeat an empty batch".into()));
    }
    let mut repeats = vec![1; tensor.rank()];
    repeats[0] = batch.div_ceil(have);
    Ok(tensor.repeat(repeats)?.narrow(0, 0, batch)?)
}

/// ComfyUI's `reshape_latent_to`: `samples` (input `input`) resized (bilinear, centre crop) to
/// the size of `target` `[B, C, h, w]` and repeated to its batch size.
fn reshape_latent_to(
    target: (usize, usize, usize, usize),
    samples: &Tensor,
    input: &str,
) -> Result<Tensor, NodeError> {
    let (b, c, h, w) = target;
    let (_, oc, oh, ow) = samples.dims4().map_err(|_| {
        NodeError::input(
            input,
            format!("expected a latent [B,C,h,w], got {:?}", samples.dims()),
        )
    })?;
    if oc != c {
        return Err(NodeError::input(
            input,
            format!("has {oc} channels but the first latent has {c}"),
        ));
    }
    let resized = if (oh, ow) != (h, w) {
        common_upscale(samples, w, h, UpscaleMethod::Bilinear, Crop::Center)?
    } else {
        samples.clone()
    };
    repeat_to_batch_size(&resized, b)
}

/// `samples1 ∘ samples2`, samples2 reshaped to samples1 (LatentAdd, LatentSubtract).
pub struct LatentBinary {
    class_type: &'static str,
    op: fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
}

impl Node for LatentBinary {
    fn spec(&self) -> NodeSpec {
        extras_spec(
            self.class_type,
            "comfy_extras.nodes_latent",
            "latent/advanced",
            two_latents(vec![]),
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let first = inputs.latent("samples1")?;
        let dims = samples_dims(first, "samples1")?;
        let second = reshape_latent_to(dims, &inputs.latent("samples2")?.samples, "samples2")?;
        let samples = (self.op)(&first.samples, &second)?;
        Ok(latent_value(with_samples(first, samples)))
    }
}

/// `samples · multiplier`.
pub struct LatentMultiply;

impl Node for LatentMultiply {
    fn spec(&self) -> NodeSpec {
        extras_spec(
            "LatentMultiply",
            "comfy_extras.nodes_latent",
            "latent/advanced",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("multiplier", float(1.0, -10.0, 10.0, 0.01)),
            ],
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        let samples = (&latent.samples * inputs.float("multiplier")?)?;
        Ok(latent_value(with_samples(latent, samples)))
    }
}

/// Torch's `nan_to_num`: NaN to 0, infinities to the largest finite values.
fn nan_to_num(t: &Tensor) -> Result<Tensor, NodeError> {
    let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let fixed: Vec<f32> = values
        .into_iter()
        .map(|v| match v {
            v if v.is_nan() => 0.0,
            f32::INFINITY => f32::MAX,
            f32::NEG_INFINITY => f32::MIN,
            v => v,
        })
        .collect();
    Ok(Tensor::from_vec(fixed, t.shape(), t.device())?)
}

/// Interpolates direction and length of each pixel's channel vector separately.
pub struct LatentInterpolate;

impl LatentInterpolate {
    /// The per-pixel vector norm `[B, h, w]` laid out as torch broadcasts it against
    /// `[B, C, h, w]`: aligned from the right, so the batch axis meets the channel axis (ComfyUI
    /// divides by it as written; it is right for one latent, or as many latents as channels).
    fn norm_broadcast(t: &Tensor, input: &str) -> Result<Tensor, NodeError> {
        let norm = t.sqr()?.sum(1)?.sqrt()?.unsqueeze(0)?;
        norm.broadcast_as(t.shape()).map_err(|_| {
            NodeError::input(
                input,
                format!(
                    "ComfyUI's LatentInterpolate takes 1 latent or as many latents as channels; \
                     got shape {:?}",
                    t.dims()
                ),
            )
        })
    }
}

impl Node for LatentInterpolate {
    fn spec(&self) -> NodeSpec {
        extras_spec(
            "LatentInterpolate",
            "comfy_extras.nodes_latent",
            "latent/advanced",
            two_latents(vec![required("ratio", float(1.0, 0.0, 1.0, 0.01))]),
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let first = inputs.latent("samples1")?;
        let dims = samples_dims(first, "samples1")?;
        let s1 = first.samples.to_dtype(DType::F32)?;
        let s2 = reshape_latent_to(dims, &inputs.latent("samples2")?.samples, "samples2")?;
        let ratio = inputs.float("ratio")?;
        let m1 = Self::norm_broadcast(&s1, "samples1")?;
        let m2 = Self::norm_broadcast(&s2, "samples2")?;
        let s1 = nan_to_num(&(&s1 / &m1)?)?;
        let s2 = nan_to_num(&(&s2 / &m2)?)?;
        let t = ((s1 * ratio)? + (s2 * (1.0 - ratio))?)?;
        let mt = Self::norm_broadcast(&t, "samples1")?;
        let st = nan_to_num(&(&t / mt)?)?;
        let length = ((m1 * ratio)? + (m2 * (1.0 - ratio))?)?;
        Ok(latent_value(with_samples(first, (st * length)?)))
    }
}

/// Joins two batches; samples2 is resized to samples1 if needed.
pub struct LatentBatch;

impl Node for LatentBatch {
    fn spec(&self) -> NodeSpec {
        extras_spec(
            "LatentBatch",
            "comfy_extras.nodes_latent",
            "latent/batch",
            two_latents(vec![]),
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let first = inputs.latent("samples1")?;
        let second = inputs.latent("samples2")?;
        let (b1, c1, h, w) = samples_dims(first, "samples1")?;
        let (b2, c2, h2, w2) = samples_dims(second, "samples2")?;
        if c1 != c2 {
            return Err(NodeError::input(
                "samples2",
                format!("has {c2} channels but samples1 has {c1}"),
            ));
        }
        let s2 = if (h2, w2) != (h, w) {
            common_upscale(&second.samples, w, h, UpscaleMethod::Bilinear, Crop::Center)?
        } else {
            second.samples.clone()
        };
        let samples = Tensor::cat(&[&first.samples, &s2], 0)?;
        let indices = |latent: &Latent, b: usize| {
            latent
                .batch_index
                .clone()
                .unwrap_or_else(|| (0..b).collect())
        };
        let mut batch_index = indices(first, b1);
        batch_index.extend(indices(second, b2));
        Ok(latent_value(Latent {
            samples,
            noise_mask: first.noise_mask.clone(),
            batch_index: Some(batch_index),
        }))
    }
}

const SEED_BEHAVIORS: &[&str] = &["random", "fixed"];

/// `fixed`: every latent of the batch gets the first one's noise; `random`: each its own.
pub struct LatentBatchSeedBehavior;

impl Node for LatentBatchSeedBehavior {
    fn spec(&self) -> NodeSpec {
        extras_spec(
            "LatentBatchSeedBehavior",
            "comfy_extras.nodes_latent",
            "latent/advanced",
            vec![
                required("samples", link(SlotType::LATENT)),
                required(
                    "seed_behavior",
                    crate::graph::spec::InputKind::Combo {
                        options: crate::graph::spec::ComboOptions::Static(SEED_BEHAVIORS),
                        default: Some("fixed"),
                        image_upload: false,
                    },
                ),
            ],
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        let (b, _, _, _) = samples_dims(latent, "samples")?;
        let mut out = latent.clone();
        match inputs.string("seed_behavior")? {
            "random" => out.batch_index = None,
            "fixed" => {
                let first = latent
                    .batch_index
                    .as_ref()
                    .and_then(|i| i.first().copied())
                    .unwrap_or(0);
                out.batch_index = Some(vec![first; b]);
            }
            other => {
                return Err(NodeError::input(
                    "seed_behavior",
                    format!("unknown behavior '{other}'"),
                ))
            }
        }
        Ok(latent_value(out))
    }
}

/// Pastes `source` into `destination` at (x, y) in pixels (multiples of 8), through a mask.
pub struct LatentCompositeMasked;

impl LatentCompositeMasked {
    /// ComfyUI's `composite` (`nodes_mask.py`) with multiplier 8, on f32 values.
    fn composite(
        destination: &Tensor,
        source: &Tensor,
        (x, y): (usize, usize),
        mask: Option<&Tensor>,
        resize_source: bool,
    ) -> Result<Tensor, NodeError> {
        let (b, c, dh, dw) = destination.dims4()?;
        let (_, sc, _, _) = source.dims4().map_err(|_| {
            NodeError::input(
                "source",
                format!("expected a latent, got {:?}", source.dims()),
            )
        })?;
        if sc != c {
            return Err(NodeError::input(
                "source",
                format!("has {sc} channels but destination has {c}"),
            ));
        }
        let source = if resize_source {
            common_upscale(source, dw, dh, UpscaleMethod::Bilinear, Crop::Disabled)?
        } else {
            source.clone()
        };
        let source = repeat_to_batch_size(&source, b)?;
        let (_, _, sh, sw) = source.dims4()?;
        let mask = match mask {
            None => None,
            Some(mask) => {
                let (mh, mw) = match mask.dims() {
                    [.., mh, mw] if mask.rank() >= 2 => (*mh, *mw),
                    dims => {
                        return Err(NodeError::input(
                            "mask",
                            format!("expected a mask [B,H,W], got {dims:?}"),
                        ))
                    }
                };
                let mask = mask.reshape(((), 1, mh, mw))?.to_dtype(DType::F32)?;
                let mask = common_upscale(&mask, sw, sh, UpscaleMethod::Bilinear, Crop::Disabled)?;
                Some(
                    repeat_to_batch_size(&mask, b)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                )
            }
        };
        let (left, top) = (x.min(dw * 8) / 8, y.min(dh * 8) / 8);
        let (vw, vh) = (sw.min(dw - left), sh.min(dh - top));
        let mut dest: Vec<f32> = destination.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let src: Vec<f32> = source.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        for bi in 0..b {
            for ci in 0..c {
                for yy in 0..vh {
                    for xx in 0..vw {
                        let s = ((bi * c + ci) * sh + yy) * sw + xx;
                        let m = mask.as_ref().map_or(1.0, |m| m[(bi * sh + yy) * sw + xx]);
                        let d = ((bi * c + ci) * dh + top + yy) * dw + left + xx;
                        dest[d] = m * src[s] + (1.0 - m) * dest[d];
                    }
                }
            }
        }
        Ok(Tensor::from_vec(dest, (b, c, dh, dw), &Device::Cpu)?)
    }
}

impl Node for LatentCompositeMasked {
    fn spec(&self) -> NodeSpec {
        extras_spec(
            "LatentCompositeMasked",
            "comfy_extras.nodes_mask",
            "latent",
            vec![
                required("destination", link(SlotType::LATENT)),
                required("source", link(SlotType::LATENT)),
                required("x", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("y", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("resize_source", boolean(false)),
                optional("mask", link(SlotType::MASK)),
            ],
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let destination = inputs.latent("destination")?;
        samples_dims(destination, "destination")?;
        let mask = match inputs.get("mask") {
            Some(_) => Some(inputs.mask("mask")?),
            None => None,
        };
        let samples = Self::composite(
            &destination.samples,
            &inputs.latent("source")?.samples,
            (inputs.usize("x")?, inputs.usize("y")?),
            mask,
            inputs.bool("resize_source")?,
        )?;
        Ok(latent_value(with_samples(destination, samples)))
    }
}

/// The bounds Python's `a[start:stop]` takes on an axis of `len` (negative counts from the end).
fn python_slice(start: i64, stop: i64, len: usize) -> (usize, usize) {
    let len = len as i64;
    let clamp = |i: i64| if i < 0 { (i + len).max(0) } else { i.min(len) };
    let (start, stop) = (clamp(start), clamp(stop));
    (start as usize, stop.max(start) as usize)
}

/// Cuts a `width` x `height` pixel window at (x, y), kept at least 64 pixels from the far edges.
pub struct LatentCrop;

impl Node for LatentCrop {
    fn spec(&self) -> NodeSpec {
        node(
            "LatentCrop",
            "Crop Latent",
            "latent/transform",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("width", int_step(512, 64, MAX_RESOLUTION, 8)),
                required("height", int_step(512, 64, MAX_RESOLUTION, 8)),
                required("x", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("y", int_step(0, 0, MAX_RESOLUTION, 8)),
            ],
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        let (_, _, h, w) = samples_dims(latent, "samples")?;
        // Inputs are within 0..=MAX_RESOLUTION, so they fit.
        let size = |name: &str| -> Result<i64, NodeError> { Ok(inputs.int(name)? as i64 / 8) };
        let x = size("x")?.min(w as i64 - 8);
        let y = size("y")?.min(h as i64 - 8);
        let (x0, x1) = python_slice(x, x + size("width")?, w);
        let (y0, y1) = python_slice(y, y + size("height")?, h);
        let samples = latent
            .samples
            .narrow(2, y0, y1 - y0)?
            .narrow(3, x0, x1 - x0)?
            .contiguous()?;
        Ok(latent_value(with_samples(latent, samples)))
    }
}

/// `t` reversed along `dim` (torch's `flip`).
fn flip(t: &Tensor, dim: usize) -> Result<Tensor, NodeError> {
    let n = t.dim(dim)?;
    let reversed: Vec<u32> = (0..n as u32).rev().collect();
    let index = Tensor::from_vec(reversed, n, t.device())?;
    Ok(t.index_select(&index, dim)?)
}

const FLIP_METHODS: &[&str] = &["x-axis: vertically", "y-axis: horizontally"];
const ROTATIONS: &[&str] = &["none", "90 degrees", "180 degrees", "270 degrees"];

/// LatentFlip: mirrors latents top to bottom (x-axis) or left to right (y-axis).
fn flip_latent(samples: &Tensor, method: &str) -> Result<Tensor, NodeError> {
    if method.starts_with('x') {
        flip(samples, 2)
    } else if method.starts_with('y') {
        flip(samples, 3)
    } else {
        Ok(samples.clone())
    }
}

/// LatentRotate: clockwise quarter turns (torch's `rot90` over dims [3, 2]: k=1 flips dim 2 then
/// swaps, k=2 flips both, k=3 flips dim 3 then swaps).
fn rotate_latent(samples: &Tensor, rotation: &str) -> Result<Tensor, NodeError> {
    Ok(if rotation.starts_with("90") {
        flip(samples, 2)?.transpose(2, 3)?.contiguous()?
    } else if rotation.starts_with("180") {
        flip(&flip(samples, 3)?, 2)?
    } else if rotation.starts_with("270") {
        flip(samples, 3)?.transpose(2, 3)?.contiguous()?
    } else {
        samples.clone()
    })
}

/// A transform of `samples` picked by one combo (LatentFlip, LatentRotate; `nodes.py`).
pub struct LatentTransform {
    class_type: &'static str,
    display_name: &'static str,
    /// The combo's name and options.
    choice: (&'static str, &'static [&'static str]),
    transform: fn(&Tensor, &str) -> Result<Tensor, NodeError>,
}

impl Node for LatentTransform {
    fn spec(&self) -> NodeSpec {
        node(
            self.class_type,
            self.display_name,
            "latent/transform",
            vec![
                required("samples", link(SlotType::LATENT)),
                required(self.choice.0, combo(self.choice.1)),
            ],
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        samples_dims(latent, "samples")?;
        let samples = (self.transform)(&latent.samples, inputs.string(self.choice.0)?)?;
        Ok(latent_value(with_samples(latent, samples)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_slices_clamp_and_count_from_the_end() {
        assert_eq!(python_slice(2, 5, 10), (2, 5));
        assert_eq!(python_slice(8, 20, 10), (8, 10));
        assert_eq!(python_slice(-2, 3, 4), (2, 3));
        assert_eq!(python_slice(-9, 3, 4), (0, 3));
        assert_eq!(python_slice(5, 3, 10), (5, 5));
    }
}
