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

pub mod depth_anything_v2;
pub mod dpt;
pub mod hed;
pub mod lineart;
pub mod midas;
pub mod mlsd;
pub mod normalbae;
pub mod openpose;
pub mod pidinet;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
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

/// TF "same" padding of one side for a kernel `k` at `stride` (geffnet's `_calc_same_pad`, timm's
/// `pad_same`): `(before, after)`, the odd pixel at the end.
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
