//! Latent operations (`LATENT_OPERATION`, ComfyUI's `comfy_extras/nodes_latent.py`):
//! LatentOperationTonemapReinhard and LatentOperationSharpen make one, LatentApplyOperation
//! applies it to samples, LatentApplyOperationCFG to the guidance inside CFG
//! (`DiffusionModel::with_cfg_operation`).

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::engine::diffusion::LatentOperation;
use crate::graph::spec::build::*;
use crate::graph::spec::{InputSpec, NodeSpec, OutputSpec};
use crate::graph::SlotType;
use crate::nodes::latent::{latent_out, latent_value, samples_dims};
use crate::nodes::{Inputs, Latent, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    registry.add(LatentApplyOperation);
    registry.add(LatentApplyOperationCFG);
    registry.add(LatentOperationTonemapReinhard);
    registry.add(LatentOperationSharpen);
}

fn operations_spec(
    class_type: &'static str,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
) -> NodeSpec {
    let mut spec = node(
        class_type,
        class_type,
        "latent/advanced/operations",
        inputs,
        outputs,
    );
    spec.python_module = "comfy_extras.nodes_latent";
    spec
}

fn operation_out() -> Vec<OutputSpec> {
    vec![output(SlotType::LATENT_OPERATION, "LATENT_OPERATION")]
}

/// The length of each pixel's channel vector, `[B, 1, h, w]`, plus `epsilon`.
fn pixel_norm(latent: &Tensor, epsilon: f64) -> candle_core::Result<Tensor> {
    latent.sqr()?.sum_keepdim(1)?.sqrt()? + epsilon
}

/// Reinhard tone mapping of each pixel's vector length, the white point 5 standard deviations
/// above the mean length (times `multiplier`).
#[derive(Debug)]
pub struct TonemapReinhard {
    pub multiplier: f64,
}

impl LatentOperation for TonemapReinhard {
    fn apply(&self, latent: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, h, w) = latent.dims4()?;
        let magnitude = pixel_norm(latent, 1e-10)?;
        let normalized = latent.broadcast_div(&magnitude)?;
        // Mean and (unbiased) standard deviation over each latent's pixels.
        let flat = magnitude.reshape((b, h * w))?;
        let mean = flat.mean_keepdim(1)?;
        let centred = flat.broadcast_sub(&mean)?;
        let variance = (centred.sqr()?.sum_keepdim(1)? / ((h * w) as f64 - 1.0))?;
        let std = variance.sqrt()?;
        let top = (((std * 5.0)? + mean)? * self.multiplier)?.reshape((b, 1, 1, 1))?;
        // Torch multiplies by the reciprocal, then scales back.
        let scaled = magnitude.broadcast_mul(&top.recip()?)?;
        let mapped = (&scaled / (&scaled + 1.0)?)?.broadcast_mul(&top)?;
        normalized.broadcast_mul(&mapped)
    }
}

/// Unsharp masking of each pixel's direction (a Gaussian kernel of `radius`, reflected edges),
/// its length kept.
#[derive(Debug)]
pub struct Sharpen {
    pub radius: usize,
    pub sigma: f64,
    pub alpha: f64,
}

impl Sharpen {
    /// ComfyUI's `gaussian_kernel` scaled by `-10 alpha`, the centre raised so it sums to 1.
    fn kernel(&self) -> Vec<f32> {
        let size = self.radius * 2 + 1;
        // torch.linspace(-1, 1, size) in f32.
        let step = 2.0f32 / (size as f32 - 1.0);
        let axis: Vec<f32> = (0..size)
            .map(|i| {
                if i < size / 2 {
                    -1.0 + step * i as f32
                } else {
                    1.0 - step * (size - 1 - i) as f32
                }
            })
            .collect();
        let two_sigma_sq = (2.0 * self.sigma * self.sigma) as f32;
        let mut kernel: Vec<f32> = axis
            .iter()
            .flat_map(|&y| {
                axis.iter().map(move |&x| {
                    let d = (x * x + y * y).sqrt();
                    (-(d * d) / two_sigma_sq).exp()
                })
            })
            .collect();
        let sum: f32 = kernel.iter().sum();
        let scale = (self.alpha * -10.0) as f32;
        for k in &mut kernel {
            *k = *k / sum * scale;
        }
        let total: f32 = kernel.iter().sum();
        let centre = size * size / 2;
        kernel[centre] = kernel[centre] - total + 1.0;
        kernel
    }
}

impl LatentOperation for Sharpen {
    fn apply(&self, latent: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = latent.dims4()?;
        let r = self.radius;
        if r >= h || r >= w {
            candle_core::bail!(
                "sharpen_radius {r} needs a latent larger than {r}x{r}, got {w}x{h} (reflected edges)"
            );
        }
        let luminance = pixel_norm(latent, 1e-6)?;
        let normalized: Vec<f32> = latent.broadcast_div(&luminance)?.flatten_all()?.to_vec1()?;
        let kernel = self.kernel();
        let size = 2 * r + 1;
        let reflect = |i: isize, n: usize| -> usize {
            let n = n as isize;
            let i = if i < 0 { -i } else { i };
            (if i >= n { 2 * (n - 1) - i } else { i }) as usize
        };
        let mut out = vec![0f32; normalized.len()];
        for plane in 0..b * c {
            let src = &normalized[plane * h * w..(plane + 1) * h * w];
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0f32;
                    for ky in 0..size {
                        let sy = reflect(y as isize + ky as isize - r as isize, h);
                        for kx in 0..size {
                            let sx = reflect(x as isize + kx as isize - r as isize, w);
                            acc += kernel[ky * size + kx] * src[sy * w + sx];
                        }
                    }
                    out[plane * h * w + y * w + x] = acc;
                }
            }
        }
        let sharpened = Tensor::from_vec(out, (b, c, h, w), latent.device())?;
        luminance.broadcast_mul(&sharpened)
    }
}

/// Applies an operation to latents.
pub struct LatentApplyOperation;

impl Node for LatentApplyOperation {
    fn spec(&self) -> NodeSpec {
        operations_spec(
            "LatentApplyOperation",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("operation", link(SlotType::LATENT_OPERATION)),
            ],
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        samples_dims(latent, "samples")?;
        let operation = inputs.latent_operation("operation")?;
        let samples = operation
            .apply(&latent.samples.to_dtype(DType::F32)?)
            .map_err(|e| NodeError::input("operation", e.to_string()))?;
        Ok(latent_value(Latent {
            samples,
            ..latent.clone()
        }))
    }
}

/// Patches a model so the operation applies to the guidance before CFG.
pub struct LatentApplyOperationCFG;

impl Node for LatentApplyOperationCFG {
    fn spec(&self) -> NodeSpec {
        operations_spec(
            "LatentApplyOperationCFG",
            vec![
                required("model", link(SlotType::MODEL)),
                required("operation", link(SlotType::LATENT_OPERATION)),
            ],
            vec![output(SlotType::MODEL, "MODEL")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let operation = Arc::clone(inputs.latent_operation("operation")?);
        Ok(NodeOutput::values(vec![Value::Model(Arc::new(
            model.with_cfg_operation(operation),
        ))]))
    }
}

/// Makes a Reinhard tone-mapping operation.
pub struct LatentOperationTonemapReinhard;

impl Node for LatentOperationTonemapReinhard {
    fn spec(&self) -> NodeSpec {
        operations_spec(
            "LatentOperationTonemapReinhard",
            vec![required("multiplier", float(1.0, 0.0, 100.0, 0.01))],
            operation_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let operation = TonemapReinhard {
            multiplier: inputs.float("multiplier")?,
        };
        Ok(NodeOutput::values(vec![Value::LatentOperation(Arc::new(
            operation,
        ))]))
    }
}

/// Makes a sharpening operation.
pub struct LatentOperationSharpen;

impl Node for LatentOperationSharpen {
    fn spec(&self) -> NodeSpec {
        operations_spec(
            "LatentOperationSharpen",
            vec![
                required("sharpen_radius", int(9, 1, 31)),
                required("sigma", float(1.0, 0.1, 10.0, 0.1)),
                required("alpha", float(0.1, 0.0, 5.0, 0.01)),
            ],
            operation_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let operation = Sharpen {
            radius: inputs.usize("sharpen_radius")?,
            sigma: inputs.float("sigma")?,
            alpha: inputs.float("alpha")?,
        };
        Ok(NodeOutput::values(vec![Value::LatentOperation(Arc::new(
            operation,
        ))]))
    }
}
