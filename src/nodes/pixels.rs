//! Plain f32 pixel buffers for the mask and image-editing nodes (`mask`, `image_edit`): their maths
//! is per-pixel loops with ComfyUI's exact clipping and rounding, clearer on a `Vec` than as tensor
//! ops, and values between nodes live on the CPU anyway.

use candle_core::{DType, Device, Tensor};

use crate::engine::resize::{resize_image, Crop, UpscaleMethod};
use crate::graph::spec::{build, InputSpec, NodeSpec, OutputSpec};
use crate::nodes::{NodeContext, NodeError, NodeOutput, Value};

/// A declaration of a node from ComfyUI's `comfy_extras` module `python_module`.
pub fn extras_node(
    python_module: &'static str,
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
) -> NodeSpec {
    NodeSpec {
        python_module,
        ..build::node(class_type, display_name, category, inputs, outputs)
    }
}

/// A batch `[b, h, w, c]`, row-major; a MASK is `c == 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    pub data: Vec<f32>,
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Pixels {
    /// An IMAGE input `[B, H, W, C]`.
    pub fn image(tensor: &Tensor, input: &str) -> Result<Pixels, NodeError> {
        let (b, h, w, c) = tensor.dims4().map_err(|_| {
            NodeError::input(
                input,
                format!("expected an IMAGE [B,H,W,C], got shape {:?}", tensor.dims()),
            )
        })?;
        if b * h * w * c == 0 {
            return Err(empty(input, tensor));
        }
        Ok(Pixels {
            data: flat(tensor)?,
            b,
            h,
            w,
            c,
        })
    }

    /// A MASK input, read as ComfyUI's `mask.reshape((-1, H, W))`: `[H, W]`, `[B, H, W]` and
    /// `[B, 1, H, W]` all work.
    pub fn mask(tensor: &Tensor, input: &str) -> Result<Pixels, NodeError> {
        let dims = tensor.dims();
        if dims.len() < 2 {
            return Err(NodeError::input(
                input,
                format!("expected a MASK [B,H,W], got shape {dims:?}"),
            ));
        }
        let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let data = flat(tensor)?;
        let b = data.len().checked_div(h * w).unwrap_or(0);
        Ok(Pixels {
            data,
            b,
            h,
            w,
            c: 1,
        })
    }

    pub fn filled(b: usize, h: usize, w: usize, c: usize, value: f32) -> Pixels {
        Pixels {
            data: vec![value; b * h * w * c],
            b,
            h,
            w,
            c,
        }
    }

    /// The flat index of a value.
    pub fn at(&self, b: usize, y: usize, x: usize, ch: usize) -> usize {
        ((b * self.h + y) * self.w + x) * self.c + ch
    }

    /// One item of the batch.
    pub fn item(&self, b: usize) -> &[f32] {
        let n = self.h * self.w * self.c;
        &self.data[b * n..(b + 1) * n]
    }

    /// The same pixels with `f` applied to each value.
    pub fn map(mut self, f: impl Fn(f32) -> f32) -> Pixels {
        self.data.iter_mut().for_each(|v| *v = f(*v));
        self
    }

    /// Item `i` of a batch read cyclically, as torch broadcasting a batch of 1 or ComfyUI's
    /// `repeat_to_batch_size` does.
    pub fn cyclic(&self, i: usize) -> &[f32] {
        self.item(i % self.b.max(1))
    }

    /// ComfyUI's `comfy.utils.repeat_to_batch_size`: the first `batch` items, repeating the whole
    /// batch as often as needed.
    pub fn repeat_to_batch(&self, batch: usize) -> Pixels {
        if self.b == batch || self.b == 0 {
            return self.clone();
        }
        let data = (0..batch)
            .flat_map(|i| self.cyclic(i).iter().copied())
            .collect();
        Pixels {
            data,
            b: batch,
            ..*self
        }
    }

    /// Resized to `w` x `h` with ComfyUI's `common_upscale`.
    pub fn resized(
        &self,
        w: usize,
        h: usize,
        method: UpscaleMethod,
        crop: Crop,
    ) -> Result<Pixels, NodeError> {
        // Same size: no crop (same aspect) and an exact copy for every method.
        if (w, h) == (self.w, self.h) {
            return Ok(self.clone());
        }
        let out = resize_image(&self.to_tensor()?, w, h, method, crop)?;
        Ok(Pixels {
            data: flat(&out)?,
            b: self.b,
            h,
            w,
            c: self.c,
        })
    }

    pub fn to_tensor(&self) -> Result<Tensor, NodeError> {
        Ok(Tensor::from_slice(
            &self.data,
            (self.b, self.h, self.w, self.c),
            &Device::Cpu,
        )?)
    }

    /// As an IMAGE `[B, H, W, C]`.
    pub fn into_image(self) -> Result<Tensor, NodeError> {
        Ok(Tensor::from_vec(
            self.data,
            (self.b, self.h, self.w, self.c),
            &Device::Cpu,
        )?)
    }

    /// A node's single IMAGE output.
    pub fn image_output(self) -> Result<NodeOutput, NodeError> {
        Ok(NodeOutput::values(vec![Value::Image(self.into_image()?)]))
    }

    /// A node's single MASK output.
    pub fn mask_output(self) -> Result<NodeOutput, NodeError> {
        Ok(NodeOutput::values(vec![Value::Mask(self.into_mask()?)]))
    }

    /// As a MASK `[B, H, W]` (channel 0 of each pixel).
    pub fn into_mask(self) -> Result<Tensor, NodeError> {
        let data = if self.c == 1 {
            self.data
        } else {
            self.data.chunks_exact(self.c).map(|p| p[0]).collect()
        };
        Ok(Tensor::from_vec(
            data,
            (self.b, self.h, self.w),
            &Device::Cpu,
        )?)
    }
}

/// The nodes here have no meaning for a batch with no pixels (ComfyUI fails on them in torch).
fn empty(input: &str, tensor: &Tensor) -> NodeError {
    NodeError::input(input, format!("has no pixels (shape {:?})", tensor.dims()))
}

fn flat(tensor: &Tensor) -> Result<Vec<f32>, NodeError> {
    Ok(tensor
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

/// Makes sure an output of `values` f32s (plus `extra` times that in temporaries) fits in memory.
pub fn reserve(
    ctx: &NodeContext,
    input: &str,
    values: usize,
    extra: u64,
    what: &str,
) -> Result<(), NodeError> {
    let bytes = (values as u64).saturating_mul(4 * (1 + extra));
    ctx.reserve_memory(input, bytes, what)
}

/// The number of values in a `b x h x w x c` batch, or an error on `input` when it would not fit
/// in memory's address space at all.
pub fn count(input: &str, dims: [usize; 4]) -> Result<usize, NodeError> {
    dims.iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .filter(|n| *n <= 1 << 34)
        .ok_or_else(|| {
            NodeError::input(
                input,
                format!("a batch of {dims:?} is more than Weft will allocate"),
            )
        })
}
