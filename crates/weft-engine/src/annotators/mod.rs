//! ControlNet preprocessors with a network ("annotators"): the models of `comfyui_controlnet_aux`
//! (depth, normals, pose, segmentation, line segments, line art, soft edges), each a plain struct
//! built from the published weight file (`lllyasviel/Annotators` names and key layouts, sizes read
//! from the weights) with a `forward`, and the detector call around it as the aux pack runs it:
//! uint8 image in, `resize_image_with_pad` to the `resolution`, the network in f32, the pack's
//! post-processing, `remove_pad`, uint8 map out.
//!
//! One file per annotator. Loading goes through `ModelManager::annotator`, so the networks count
//! against the model budget like ControlNets. The classical, weight-free preprocessors live in
//! `crate::preprocess`, whose uint8 image type and OpenCV-exact primitives these reuse.

pub mod beit;
pub mod depth_anything_v2;
pub mod dpt;
pub mod hed;
pub mod lineart;
pub mod midas;
pub mod midas_hf;
pub mod mlsd;
pub mod normalbae;
pub mod oneformer;
pub mod openpose;
pub mod pidinet;
pub mod uniformer;
pub mod zoe;
pub mod zoe_hf;
pub mod zoe_router;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
use crate::ops::conv::Conv2d;
use crate::ops::layers::{LayerNorm, Linear};
use crate::preprocess::{ImageU8, PreprocessError, Result};

/// `[1, C, H, W]` f32 with the image's 0..255 values (numpy's `torch.from_numpy(img).float()`
/// after `HWC -> CHW`); the annotator scales it as its reference does.
pub fn image_tensor(op: &'static str, img: &ImageU8, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = img.data.iter().map(|&v| f32::from(v)).collect();
    Tensor::from_vec(data, (1, img.height, img.width, img.channels), device)
        .and_then(|t| t.permute((0, 3, 1, 2))?.contiguous())
        .map_err(|source| PreprocessError::Candle { op, source })
}

/// The values of a `[H, W]` (or `[1, 1, H, W]`) f32 map, row-major, on the CPU.
pub fn map_values(op: &'static str, map: &Tensor) -> Result<(usize, usize, Vec<f32>)> {
    let cand = |source| PreprocessError::Candle { op, source };
    let dims = map.dims();
    let (h, w) = match dims {
        [h, w] | [1, h, w] | [1, 1, h, w] => (*h, *w),
        _ => {
            return Err(PreprocessError::BadShape {
                op,
                shape: dims.to_vec(),
            })
        }
    };
    let v = map
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(cand)?;
    Ok((h, w, v))
}

/// A one-channel uint8 image from f32 values by numpy's `.astype(np.uint8)` after `np.clip(x, 0,
/// 255)`: truncation toward zero, NaN to 0.
pub fn u8_from_clipped(h: usize, w: usize, values: &[f32]) -> ImageU8 {
    ImageU8 {
        height: h,
        width: w,
        channels: 1,
        data: values
            .iter()
            .map(|&x| {
                if x.is_nan() {
                    0
                } else {
                    x.clamp(0.0, 255.0) as u8
                }
            })
            .collect(),
    }
}

/// How a convolution pads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pad {
    /// TensorFlow's "same": `ceil(size / stride)` outputs, the padding split with the odd pixel
    /// at the end (geffnet's `Conv2dSame` / static padding).
    Same,
    /// PyTorch's symmetric padding.
    Fixed(usize),
}

/// A convolution with its batch norm folded in.
#[derive(Debug)]
pub(crate) struct Conv {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) stride: usize,
    pub(crate) pad: Pad,
    pub(crate) depthwise: bool,
}

impl Conv {
    pub(crate) fn kernel(&self) -> usize {
        self.weight.dims().get(2).copied().unwrap_or(1)
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let k = self.kernel();
        let (_, _, h, w) = x.dims4()?;
        let ((top, bottom), (left, right)) = match self.pad {
            Pad::Fixed(p) => ((p, p), (p, p)),
            Pad::Same => (same_pad(h, k, self.stride), same_pad(w, k, self.stride)),
        };
        let symmetric = top == bottom && left == right && top == left;
        let (x, padding) = if symmetric {
            (x.clone(), top)
        } else {
            (
                x.pad_with_zeros(2, top, bottom)?
                    .pad_with_zeros(3, left, right)?,
                0,
            )
        };
        // A depthwise layer is a convolution with one group per channel, which `ops::conv` runs
        // plane by plane on the CPU.
        let groups = if self.depthwise { x.dim(1)? } else { 1 };
        let config = Conv2dConfig {
            padding,
            stride: self.stride,
            groups,
            ..Default::default()
        };
        Conv2d::new(self.weight.clone(), self.bias.clone(), config).forward(&x)
    }
}

/// geffnet's `_calc_same_pad`, split as `Conv2dSame` splits it (the odd pixel at the end).
pub fn same_pad(size: usize, k: usize, stride: usize) -> (usize, usize) {
    let total = ((size.div_ceil(stride) - 1) * stride + k).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Builds a net from a file in its published layout, in f32 on `device`: the configuration
/// `detect` reads from the tensor shapes (its message becomes the file's `BadConfig`), the
/// tensors under their own names.
pub fn load_published<C, T>(
    sd: &Arc<StateDict>,
    device: &Device,
    detect: impl FnOnce(&HashMap<String, Vec<usize>>) -> std::result::Result<C, String>,
    build: impl FnOnce(VarBuilder, &C) -> candle_core::Result<T>,
) -> std::result::Result<T, LoadError> {
    let config =
        detect(sd.shapes()).map_err(|e| LoadError::new(sd.path(), LoadErrorKind::BadConfig(e)))?;
    let names = sd.shapes().keys().map(|k| (k.clone(), k.clone())).collect();
    Renaming::new(names).build(sd, DType::F32, device, |vb| build(vb, &config))
}

/// The file's tensors under their model names (without `module.`), with their shapes.
pub(crate) struct Weights<'a> {
    pub(crate) vb: VarBuilder<'a>,
    pub(crate) shapes: &'a HashMap<String, Vec<usize>>,
}

impl Weights<'_> {
    pub(crate) fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    pub(crate) fn get(&self, name: &str) -> candle_core::Result<Tensor> {
        self.vb.get(self.shape(name)?, name)
    }

    /// The shape of tensor `name`.
    pub(crate) fn shape(&self, name: &str) -> candle_core::Result<&[usize]> {
        self.shapes
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor '{name}'")))
    }

    /// The linear layer `name` (`.weight`, optional `.bias`).
    pub(crate) fn linear(&self, name: &str) -> candle_core::Result<Linear> {
        let bias = format!("{name}.bias");
        Ok(Linear::new(
            self.get(&format!("{name}.weight"))?,
            self.has(&bias).then(|| self.get(&bias)).transpose()?,
        ))
    }

    /// The LayerNorm `name` (`.weight`, `.bias`).
    pub(crate) fn layer_norm(&self, name: &str, eps: f64) -> candle_core::Result<LayerNorm> {
        let size = self.shape(&format!("{name}.weight"))?[0];
        crate::ops::layers::layer_norm(size, eps, self.vb.pp(name))
    }

    /// Convolution `conv` (`.weight`, optional `.bias`) with batch norm `bn` folded in.
    pub(crate) fn conv(
        &self,
        conv: &str,
        bn: Option<(&str, f64)>,
        stride: usize,
        pad: Pad,
    ) -> candle_core::Result<Conv> {
        let mut weight = self.get(&format!("{conv}.weight"))?;
        if weight.rank() == 3 {
            // Conv1d with kernel 1: the same maths as a 1x1 Conv2d.
            weight = weight.unsqueeze(3)?;
        }
        let mut bias = if self.has(&format!("{conv}.bias")) {
            Some(self.get(&format!("{conv}.bias"))?)
        } else {
            None
        };
        if let Some((bn, eps)) = bn {
            let gamma = self.get(&format!("{bn}.weight"))?;
            let beta = self.get(&format!("{bn}.bias"))?;
            let mean = self.get(&format!("{bn}.running_mean"))?;
            let var = self.get(&format!("{bn}.running_var"))?;
            let scale = gamma.broadcast_div(&(var + eps)?.sqrt()?)?;
            weight = weight.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
            let shifted = match bias {
                Some(b) => (b - &mean)?,
                None => mean.neg()?,
            };
            bias = Some((shifted * &scale)?.add(&beta)?);
        }
        Ok(Conv {
            weight,
            bias,
            stride,
            pad,
            depthwise: false,
        })
    }
}

/// Tensor shapes by name.
pub(crate) type Shapes = HashMap<String, Vec<usize>>;

/// The tensors of `sd` under their model names, with their shapes: the keys without `module.`
/// (DataParallel's prefix) when `probe` is found under it, else as they are.
pub(crate) fn model_names(
    sd: &StateDict,
    probe: &str,
) -> std::result::Result<(HashMap<String, String>, Shapes), LoadError> {
    let prefix = ["module.", ""]
        .into_iter()
        .find(|p| sd.contains(&format!("{p}{probe}")))
        .ok_or_else(|| {
            LoadError::new(
                sd.path(),
                LoadErrorKind::UnknownFamily {
                    looked_for: vec![format!("module.{probe}"), probe.to_string()],
                },
            )
        })?;
    let mut names = HashMap::new();
    let mut shapes = HashMap::new();
    for (key, shape) in sd.shapes() {
        if let Some(name) = key.strip_prefix(prefix) {
            names.insert(name.to_string(), key.clone());
            shapes.insert(name.to_string(), shape.clone());
        }
    }
    Ok((names, shapes))
}

/// Linear interpolation of `x` along `dim` to `out` samples, as `F.interpolate(mode="bilinear")`
/// does per axis: torch's source indices and weights in f32, with `align_corners` or half-pixel
/// centres (`scale * (o + 0.5) - 0.5`, clamped at 0).
pub(crate) fn interpolate_axis(
    x: &Tensor,
    dim: usize,
    out: usize,
    align_corners: bool,
) -> candle_core::Result<Tensor> {
    let len = x.dim(dim)?;
    if len == out {
        return Ok(x.clone());
    }
    let scale = match (align_corners, out > 1) {
        (true, true) => (len - 1) as f32 / (out - 1) as f32,
        (true, false) => 0.0,
        (false, _) => len as f32 / out as f32,
    };
    let (mut i0, mut i1, mut l0, mut l1) = (vec![], vec![], vec![], vec![]);
    for o in 0..out {
        let real = if align_corners {
            scale * o as f32
        } else {
            (scale * (o as f32 + 0.5) - 0.5).max(0.0)
        };
        let i = (real as usize).min(len - 1);
        let lambda = (real - i as f32).clamp(0.0, 1.0);
        i0.push(i as u32);
        i1.push((i + usize::from(i < len - 1)) as u32);
        l0.push(1.0 - lambda);
        l1.push(lambda);
    }
    let dev = x.device();
    let mut shape = vec![1; x.rank()];
    shape[dim] = out;
    let a = x.index_select(&Tensor::new(i0, dev)?, dim)?;
    let b = x.index_select(&Tensor::new(i1, dev)?, dim)?;
    let l0 = Tensor::new(l0, dev)?.reshape(shape.as_slice())?;
    let l1 = Tensor::new(l1, dev)?.reshape(shape.as_slice())?;
    a.broadcast_mul(&l0)? + b.broadcast_mul(&l1)?
}
