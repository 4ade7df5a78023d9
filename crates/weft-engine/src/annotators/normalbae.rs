//! NormalBae (Bae et al., "Estimating and Exploiting the Aleatoric Uncertainty in Surface Normal
//! Estimation"): the surface-normal network of comfyui_controlnet_aux's `BAE-NormalMapPreprocessor`,
//! loaded from `scannet.pt` (`{"model": state_dict}`, keys optionally under `module.`).
//!
//! Encoder: an EfficientNet in geffnet's (and timm's) `tf_efficientnet_b5_ap` layout under
//! `encoder.original_model.`: TF "same" padding (asymmetric for stride 2), BN eps 1e-3, swish,
//! squeeze-excite. The structure comes from the weights: the stages and their blocks from the
//! keys present, each block's kind (depthwise-separable without `conv_pwl`, inverted residual
//! with it), kernel size and widths from the shapes, SE from its keys. Only the strides are not
//! in the weights: they are EfficientNet's fixed per-stage table (`STAGE_STRIDES`), so a file
//! must have its 7 stages. The decoder takes stage outputs 0, 1, 2 and 4 and `conv_head`'s output
//! (before `bn2`, which stays unused) and its widths also come from the shapes.
//!
//! Decoder, as `Decoder.forward` runs in eval mode: an upsampling U-Net to 1/2 resolution, a 1/8
//! prediction, then three refinements (1/4, 1/2, 1/1) that run their per-pixel MLP at *every*
//! pixel of the 2x bilinear (align_corners) upsampled features and previous prediction; the
//! uncertainty-guided point sampling is the training branch only. Each prediction is normalised
//! (`norm_normalize`: unit xyz, kappa = elu + 1.01). Batch norms are folded into their
//! convolutions at load time.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use crate::annotators::{
    image_tensor, interpolate_axis, model_names, u8_from_clipped, Conv, Pad, Weights,
};
use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
use crate::preprocess::aux::{detect_resolution, hwc3, resize_image_with_pad};
use crate::preprocess::cv::Interpolation;
use crate::preprocess::{run_aux, ImageU8, PreprocessError};

/// The node's name, for errors.
pub const OP: &str = "BAE-NormalMapPreprocessor";

/// The stride of each EfficientNet stage's first block (the rest have stride 1); not recorded in
/// the weights.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];
/// The encoder stages whose outputs the decoder reads (with `conv_head`'s output).
const SKIP_STAGES: [usize; 4] = [0, 1, 2, 4];
/// `BN_EPS_TF_DEFAULT`, the encoder's batch norms.
const ENCODER_BN_EPS: f64 = 1e-3;
/// PyTorch's default, the decoder's batch norms.
const DECODER_BN_EPS: f64 = 1e-5;
const ENCODER: &str = "encoder.original_model";

/// Squeeze-and-excitation: the channel mean through two 1x1 convolutions (swish between) gates
/// the channels by a sigmoid.
#[derive(Debug)]
struct SqueezeExcite {
    reduce_w: Tensor,
    reduce_b: Tensor,
    expand_w: Tensor,
    expand_b: Tensor,
}

impl SqueezeExcite {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        let s = x.mean_keepdim((2, 3))?.reshape((b, c))?;
        let s = s
            .matmul(&self.reduce_w.t()?)?
            .broadcast_add(&self.reduce_b)?
            .silu()?;
        let s = s
            .matmul(&self.expand_w.t()?)?
            .broadcast_add(&self.expand_b)?;
        x.broadcast_mul(&candle_nn::ops::sigmoid(&s)?.reshape((b, c, 1, 1))?)
    }
}

/// geffnet's `DepthwiseSeparableConv` (no `expand`) or `InvertedResidual` (with it).
#[derive(Debug)]
struct Block {
    expand: Option<Conv>,
    depthwise: Conv,
    se: Option<SqueezeExcite>,
    project: Conv,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        if let Some(expand) = &self.expand {
            h = expand.forward(&h)?.silu()?;
        }
        h = self.depthwise.forward(&h)?.silu()?;
        if let Some(se) = &self.se {
            h = se.forward(&h)?;
        }
        h = self.project.forward(&h)?;
        if self.residual {
            h = (h + x)?;
        }
        Ok(h)
    }
}

/// `UpSampleBN`: upsample to the skip's size, concatenate, two conv-BN-LeakyReLU.
#[derive(Debug)]
struct UpBlock {
    conv1: Conv,
    conv2: Conv,
}

impl UpBlock {
    fn forward(&self, x: &Tensor, skip: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = skip.dims4()?;
        let f = Tensor::cat(&[&resize_align_corners(x, h, w)?, skip], 1)?;
        leaky_relu(&self.conv2.forward(&leaky_relu(&self.conv1.forward(&f)?)?)?)
    }
}

fn leaky_relu(x: &Tensor) -> Result<Tensor> {
    x.maximum(&(x * 0.01)?)
}

/// A refinement head: per-pixel 1x1 layers with ReLU between (the `Conv1d` stacks).
#[derive(Debug)]
struct Mlp(Vec<Conv>);

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.0.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.0.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

/// `norm_normalize`: xyz to unit length (+1e-10), kappa to `elu(kappa) + 1 + 0.01`.
fn norm_normalize(x: &Tensor) -> Result<Tensor> {
    let xyz = x.narrow(1, 0, 3)?;
    let norm = (xyz.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-10)?;
    let kappa = ((x.narrow(1, 3, 1)?.elu(1.0)? + 1.0)? + 0.01)?;
    Tensor::cat(&[&xyz.broadcast_div(&norm)?, &kappa], 1)
}

/// `F.interpolate(x, size, mode="bilinear", align_corners=True)` on `[B, C, H, W]`.
pub fn resize_align_corners(x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    interpolate_axis(&interpolate_axis(x, 3, width, true)?, 2, height, true)
}

fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    resize_align_corners(x, 2 * h, 2 * w)
}

/// The network (`NNET` in eval mode).
#[derive(Debug)]
pub struct NormalBae {
    stem: Conv,
    stages: Vec<Vec<Block>>,
    head: Conv,
    conv2: Conv,
    ups: Vec<UpBlock>,
    out_res8: Conv,
    refine: Vec<Mlp>,
    device: Device,
}

impl Weights<'_> {
    fn block(&self, p: &str, stride: usize, inverted: bool) -> Result<Block> {
        let conv = |conv: &str, bn: &str, stride: usize| {
            let bn = format!("{p}.{bn}");
            self.conv(
                &format!("{p}.{conv}"),
                Some((&bn, ENCODER_BN_EPS)),
                stride,
                Pad::Same,
            )
        };
        let (expand, mut depthwise, project) = if inverted {
            (
                Some(conv("conv_pw", "bn1", 1)?),
                conv("conv_dw", "bn2", stride)?,
                conv("conv_pwl", "bn3", 1)?,
            )
        } else {
            (
                None,
                conv("conv_dw", "bn1", stride)?,
                conv("conv_pw", "bn2", 1)?,
            )
        };
        depthwise.depthwise = true;
        let se = if self.has(&format!("{p}.se.conv_reduce.weight")) {
            let flat = |n: &str| -> Result<Tensor> {
                let t = self.get(n)?;
                let (o, i) = (t.dim(0)?, t.dim(1)?);
                t.reshape((o, i))
            };
            Some(SqueezeExcite {
                reduce_w: flat(&format!("{p}.se.conv_reduce.weight"))?,
                reduce_b: self.get(&format!("{p}.se.conv_reduce.bias"))?,
                expand_w: flat(&format!("{p}.se.conv_expand.weight"))?,
                expand_b: self.get(&format!("{p}.se.conv_expand.bias"))?,
            })
        } else {
            None
        };
        let in_ch = match &expand {
            Some(e) => e.weight.dim(1)?,
            None => depthwise.out_channels(),
        };
        let residual = stride == 1 && in_ch == project.out_channels();
        Ok(Block {
            expand,
            depthwise,
            se,
            project,
            residual,
        })
    }
}

/// The encoder's stages as `(blocks, inverted residual?)` per block, from the keys present.
fn stages(shapes: &HashMap<String, Vec<usize>>) -> std::result::Result<Vec<Vec<bool>>, String> {
    let mut stages = vec![];
    loop {
        let s = stages.len();
        let mut blocks = vec![];
        while shapes.contains_key(&format!(
            "{ENCODER}.blocks.{s}.{}.conv_dw.weight",
            blocks.len()
        )) {
            let b = blocks.len();
            blocks.push(shapes.contains_key(&format!("{ENCODER}.blocks.{s}.{b}.conv_pwl.weight")));
        }
        if blocks.is_empty() {
            break;
        }
        stages.push(blocks);
    }
    if stages.len() != STAGE_STRIDES.len() {
        return Err(format!(
            "NormalBae's EfficientNet encoder has {} stages; found {}",
            STAGE_STRIDES.len(),
            stages.len()
        ));
    }
    Ok(stages)
}

impl NormalBae {
    /// Loads `scannet.pt` (or a file of the same layout, any widths and stage depths) in f32.
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        let (names, shapes) = model_names(sd, &format!("{ENCODER}.conv_stem.weight"))?;
        let stages = stages(&shapes)
            .map_err(|msg| LoadError::new(sd.path(), LoadErrorKind::BadConfig(msg)))?;
        Renaming::new(names).build(sd, DType::F32, device, |vb| {
            Self::new(
                &Weights {
                    vb,
                    shapes: &shapes,
                },
                &stages,
                device,
            )
        })
    }

    fn new(w: &Weights, stages: &[Vec<bool>], device: &Device) -> Result<Self> {
        let enc = |n: &str| format!("{ENCODER}.{n}");
        let stem = w.conv(
            &enc("conv_stem"),
            Some((&enc("bn1"), ENCODER_BN_EPS)),
            2,
            Pad::Same,
        )?;
        let stages = stages
            .iter()
            .zip(STAGE_STRIDES)
            .enumerate()
            .map(|(s, (blocks, stride))| {
                blocks
                    .iter()
                    .enumerate()
                    .map(|(b, &inverted)| {
                        let p = enc(&format!("blocks.{s}.{b}"));
                        w.block(&p, if b == 0 { stride } else { 1 }, inverted)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let head = w.conv(&enc("conv_head"), None, 1, Pad::Same)?;
        let conv2 = w.conv("decoder.conv2", None, 1, Pad::Fixed(0))?;
        let ups = (1..=4)
            .map(|i| {
                let p = format!("decoder.up{i}._net");
                Ok(UpBlock {
                    conv1: w.conv(
                        &format!("{p}.0"),
                        Some((&format!("{p}.1"), DECODER_BN_EPS)),
                        1,
                        Pad::Fixed(1),
                    )?,
                    conv2: w.conv(
                        &format!("{p}.3"),
                        Some((&format!("{p}.4"), DECODER_BN_EPS)),
                        1,
                        Pad::Fixed(1),
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let out_res8 = w.conv("decoder.out_conv_res8", None, 1, Pad::Fixed(1))?;
        let refine = ["res4", "res2", "res1"]
            .iter()
            .map(|r| {
                [0, 2, 4, 6]
                    .iter()
                    .map(|i| w.conv(&format!("decoder.out_conv_{r}.{i}"), None, 1, Pad::Fixed(0)))
                    .collect::<Result<Vec<_>>>()
                    .map(Mlp)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            stem,
            stages,
            head,
            conv2,
            ups,
            out_res8,
            refine,
            device: device.clone(),
        })
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `[B, 3, H, W]` ImageNet-normalised image -> the final prediction's unit normals `[B, 3, H,
    /// W]` (`NNET(x)[0][-1][:, :3]`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.stem.forward(x)?.silu()?;
        let mut skips = vec![];
        for (s, stage) in self.stages.iter().enumerate() {
            for block in stage {
                h = block.forward(&h)?;
            }
            if SKIP_STAGES.contains(&s) {
                skips.push(h.clone());
            }
        }
        let mut d = self.conv2.forward(&self.head.forward(&h)?)?;
        let mut levels = vec![];
        for (up, skip) in self.ups.iter().zip(skips.iter().rev()) {
            d = up.forward(&d, skip)?;
            levels.push(d.clone());
        }
        // levels: 1/16, 1/8, 1/4, 1/2 resolution.
        let mut pred = norm_normalize(&self.out_res8.forward(&levels[1])?)?;
        for (mlp, feat) in self.refine.iter().zip(&levels[1..]) {
            let f = Tensor::cat(&[&upsample2x(feat)?, &upsample2x(&pred)?], 1)?;
            pred = norm_normalize(&mlp.forward(&f)?)?;
        }
        pred.narrow(1, 0, 3)
    }

    /// `NormalBaeDetector.__call__` as the ComfyUI pack runs it on one uint8 image:
    /// `resize_image_with_pad` (INTER_CUBIC), `/255`, ImageNet normalisation, the net,
    /// `((n + 1) * 0.5).clip(0, 1) * 255` to uint8 (truncated) with xyz as RGB, `remove_pad`.
    pub fn detect(&self, img: &ImageU8, resolution: u32) -> crate::preprocess::Result<ImageU8> {
        let cand = |source| PreprocessError::Candle { op: OP, source };
        let padded =
            resize_image_with_pad(OP, img, detect_resolution(resolution), Interpolation::Cubic)?;
        let x = image_tensor(OP, &padded.image, &self.device)?;
        let (h, w) = (padded.image.height, padded.image.width);
        let map = (|| {
            let mean =
                Tensor::new(&[0.485f32, 0.456, 0.406], &self.device)?.reshape((1, 3, 1, 1))?;
            let std =
                Tensor::new(&[0.229f32, 0.224, 0.225], &self.device)?.reshape((1, 3, 1, 1))?;
            let x = (x / 255.0)?.broadcast_sub(&mean)?.broadcast_div(&std)?;
            let n = self.forward(&x)?;
            let n = (((n + 1.0)? * 0.5)?.clamp(0f32, 1f32)? * 255.0)?.clamp(0f32, 255f32)?;
            n.squeeze(0)?
                .permute((1, 2, 0))?
                .flatten_all()?
                .to_vec1::<f32>()
        })()
        .map_err(cand)?;
        let rgb = ImageU8 {
            height: h,
            width: w,
            channels: 3,
            data: u8_from_clipped(h, w * 3, &map).data,
        };
        Ok(padded.remove_pad(&hwc3(&rgb)))
    }
}

/// The node's result: every image of an IMAGE batch `[B, H, W, C]` (0..1) through
/// [`NormalBae::detect`], as `[B, H', W', 3]`.
pub fn normal_map(
    net: &NormalBae,
    image: &Tensor,
    resolution: u32,
) -> crate::preprocess::Result<Tensor> {
    run_aux(OP, image, |img| net.detect(img, resolution))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotators::same_pad;

    #[test]
    fn same_padding_matches_geffnet() {
        // _calc_same_pad: 64 wide, k3 s2 -> 1 (0 before, 1 after); k5 s2 -> 3 (1, 2); k3 s1 -> 2.
        assert_eq!(same_pad(64, 3, 2), (0, 1));
        assert_eq!(same_pad(64, 5, 2), (1, 2));
        assert_eq!(same_pad(64, 3, 1), (1, 1));
        assert_eq!(same_pad(65, 3, 2), (1, 1));
    }

    #[test]
    fn align_corners_resize_keeps_corners() {
        let x = Tensor::new(&[[0f32, 1.0], [2.0, 3.0]], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let y = resize_align_corners(&x, 3, 3).unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
    }
}
