//! UniFormer semantic segmentation (Li et al., "UniFormer: Unifying Convolution and Self-attention
//! for Visual Recognition"), as comfyui_controlnet_aux's `UniFormer-SemSegPreprocessor` runs it:
//! the pack's `upernet_global_small.pth` (`{"meta": .., "state_dict": ..}`, keys `backbone.*`,
//! `decode_head.*`, `auxiliary_head.*`, optionally under `module.`), a UniFormer-S backbone with
//! global attention and mmseg's UperNet head, 150 ADE20K classes, coloured with the ADE palette.
//!
//! Backbone: four stages, each a strided patch embedding (conv, LayerNorm) then blocks; stages 1-2
//! are convolutional `CBlock`s (depthwise positional conv, BN, 1x1 -> depthwise 5x5 -> 1x1
//! "attention", BN, 1x1 MLP), stages 3-4 `SABlock`s (depthwise positional conv, global multi-head
//! self-attention over all tokens, MLP), each stage's output through its own LayerNorm. Widths and
//! depths come from the weights; the head width (64) and the block kinds' norms are the config's
//! (the "windows"/"hybrid" variants have the same keys and are not published for this file).
//! Head: PPM (adaptive average pools 1, 2, 3, 6) on the last stage, FPN top-down over the four
//! levels, `fpn_bottleneck`, `conv_seg`; conv-BN-ReLU modules with the BN folded at load time.
//! The auxiliary FCN head is training-only and stays unread.
//!
//! The detector (`UniformerSegmentor.__call__` through mmseg's `inference_segmentor`): the padded
//! image is taken as BGR by mmcv and swapped "to RGB", so the net sees the RGB image channel-
//! reversed; it is rescaled to fit (2048, 512) keeping its ratio (cv2 INTER_LINEAR), normalised,
//! and the 1/4-size logits are resized bilinearly to the net input, then to the padded image,
//! before the argmax; each class becomes its ADE20K palette colour (opacity 1).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};

use crate::annotators::{interpolate_axis, model_names, Conv, Pad, Weights};
use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
use crate::ops::attention::scaled_dot_product;
use crate::ops::layers::{LayerNorm, Linear};
use crate::preprocess::aux::{detect_resolution, hwc3, resize_image_with_pad};
use crate::preprocess::cv::{self, Interpolation};
use crate::preprocess::{run_aux, ImageU8, PreprocessError};
use crate::resize::{common_upscale, Crop, UpscaleMethod};

/// The node's name, for errors.
pub const OP: &str = "UniFormer-SemSegPreprocessor";

/// The config's `head_dim`: a stage's attention heads are its width / 64 (not in the weights).
const HEAD_DIM: usize = 64;
/// `partial(nn.LayerNorm, eps=1e-6)`: the stage norms and the attention blocks' norms.
const NORM_EPS: f64 = 1e-6;
/// `PatchEmbed`'s plain `nn.LayerNorm`.
const PATCH_NORM_EPS: f64 = 1e-5;
/// PyTorch's default, every batch norm.
const BN_EPS: f64 = 1e-5;
/// The PPM's `pool_scales`, in the order of `psp_modules`.
const POOL_SCALES: [usize; 4] = [1, 2, 3, 6];
/// The test pipeline's `img_scale` (long side, short side) that `Resize(keep_ratio=True)` fits.
const TEST_SCALE: (f64, f64) = (2048.0, 512.0);
/// `img_norm_cfg`, per channel of the (channel-reversed) net input.
const MEAN: [f64; 3] = [123.675, 116.28, 103.53];
const STD: [f64; 3] = [58.395, 57.12, 57.375];
const BACKBONE: &str = "backbone";
const HEAD: &str = "decode_head";

/// A batch norm in eval mode as a per-channel affine `x * scale + shift`.
#[derive(Debug)]
struct Affine {
    scale: Tensor,
    shift: Tensor,
}

impl Affine {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

/// A LayerNorm over the channels of `[B, C, H, W]` (the reference permutes to channels-last).
fn channel_norm(norm: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    norm.forward(&x.permute((0, 2, 3, 1))?)?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

/// `PatchEmbed`: a `k x k` convolution with stride `k`, then LayerNorm over the channels.
#[derive(Debug)]
struct PatchEmbed {
    proj: Conv,
    norm: LayerNorm,
}

/// `CBlock`: the convolutional block of stages 1 and 2.
#[derive(Debug)]
struct ConvBlock {
    pos_embed: Conv,
    norm1: Affine,
    conv1: Conv,
    attn: Conv,
    conv2: Conv,
    norm2: Affine,
    fc1: Conv,
    fc2: Conv,
}

impl ConvBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.pos_embed.forward(x)?)?;
        let a = self.conv1.forward(&self.norm1.forward(&x)?)?;
        let x = (&x + self.conv2.forward(&self.attn.forward(&a)?)?)?;
        let m = self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        x + self.fc2.forward(&m)?
    }
}

/// `SABlock`: global multi-head self-attention over every position, stages 3 and 4.
#[derive(Debug)]
struct AttentionBlock {
    pos_embed: Conv,
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    heads: usize,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl AttentionBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.pos_embed.forward(x)?)?;
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let t = x.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(&t)?)?
            .reshape((b, n, 3, self.heads, c / self.heads))?
            .permute((2, 0, 3, 1, 4))?;
        let part = |i: usize| qkv.get(i)?.contiguous();
        let a = scaled_dot_product(&part(0)?, &part(1)?, &part(2)?)?
            .transpose(1, 2)?
            .reshape((b, n, c))?;
        let t = (&t + self.proj.forward(&a)?)?;
        let m = self.fc1.forward(&self.norm2.forward(&t)?)?.gelu_erf()?;
        let t = (&t + self.fc2.forward(&m)?)?;
        t.transpose(1, 2)?.reshape((b, c, h, w))
    }
}

#[derive(Debug)]
enum Block {
    Conv(ConvBlock),
    Attention(AttentionBlock),
}

/// One backbone stage: patch embedding, blocks, the stage's output norm.
#[derive(Debug)]
struct Stage {
    embed: PatchEmbed,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

/// mmcv's `ConvModule` as UperNet builds it: convolution (no bias), BN, ReLU; the BN folded.
#[derive(Debug)]
struct ConvModule(Conv);

impl ConvModule {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)?.relu()
    }
}

/// `F.interpolate(x, (h, w), mode="bilinear", align_corners=False)` (mmseg's `resize`) on
/// `[B, C, H, W]`, one axis at a time.
fn resize(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    interpolate_axis(&interpolate_axis(x, 3, w, false)?, 2, h, false)
}

/// mmseg's `UPerHead` in eval mode (dropout off).
#[derive(Debug)]
struct UperHead {
    /// The PPM's modules, each after `nn.AdaptiveAvgPool2d(POOL_SCALES[i])`.
    psp: Vec<ConvModule>,
    bottleneck: ConvModule,
    lateral: Vec<ConvModule>,
    fpn: Vec<ConvModule>,
    fpn_bottleneck: ConvModule,
    conv_seg: Conv,
}

impl UperHead {
    fn forward(&self, feats: &[Tensor]) -> Result<Tensor> {
        let top = feats
            .last()
            .ok_or_else(|| candle_core::Error::Msg("no backbone features".into()))?;
        let (_, _, th, tw) = top.dims4()?;
        let mut psp = vec![top.clone()];
        for (m, &s) in self.psp.iter().zip(&POOL_SCALES) {
            // ComfyUI's "area" is adaptive average pooling.
            let pooled = common_upscale(top, s, s, UpscaleMethod::Area, Crop::Disabled)?;
            psp.push(resize(&m.forward(&pooled)?, th, tw)?);
        }
        let mut laterals = self
            .lateral
            .iter()
            .zip(feats)
            .map(|(l, f)| l.forward(f))
            .collect::<Result<Vec<_>>>()?;
        laterals.push(self.bottleneck.forward(&Tensor::cat(&psp, 1)?)?);
        for i in (1..laterals.len()).rev() {
            let (_, _, h, w) = laterals[i - 1].dims4()?;
            laterals[i - 1] = (&laterals[i - 1] + resize(&laterals[i], h, w)?)?;
        }
        let (_, _, h, w) = laterals[0].dims4()?;
        let mut outs = self
            .fpn
            .iter()
            .zip(&laterals)
            .map(|(f, l)| f.forward(l)?.contiguous())
            .collect::<Result<Vec<_>>>()?;
        if let Some(last) = laterals.last() {
            outs.push(last.clone());
        }
        let outs = outs
            .iter()
            .map(|o| resize(o, h, w))
            .collect::<Result<Vec<_>>>()?;
        let fused = self.fpn_bottleneck.forward(&Tensor::cat(&outs, 1)?)?;
        self.conv_seg.forward(&fused)
    }
}

/// The network: `EncoderDecoder` with the UniFormer backbone and the UperNet head.
#[derive(Debug)]
pub struct UniFormer {
    stages: Vec<Stage>,
    head: UperHead,
    device: Device,
}

/// The block kinds of each backbone stage (true: self-attention), from the keys present.
fn stage_blocks(
    shapes: &HashMap<String, Vec<usize>>,
) -> std::result::Result<Vec<Vec<bool>>, String> {
    let stages: Vec<Vec<bool>> = (1..=4)
        .map(|s| {
            (0..)
                .take_while(|j| {
                    shapes.contains_key(&format!("{BACKBONE}.blocks{s}.{j}.pos_embed.weight"))
                })
                .map(|j| shapes.contains_key(&format!("{BACKBONE}.blocks{s}.{j}.attn.qkv.weight")))
                .collect()
        })
        .collect();
    for (s, blocks) in stages.iter().enumerate() {
        if !shapes.contains_key(&format!("{BACKBONE}.patch_embed{}.proj.weight", s + 1)) {
            return Err(format!(
                "UniFormer has 4 stages; patch_embed{} is missing",
                s + 1
            ));
        }
        if blocks.is_empty() {
            return Err(format!("UniFormer stage {} has no blocks", s + 1));
        }
    }
    Ok(stages)
}

/// How many modules `{prefix}.{i}` the head has (`{prefix}.{i}{suffix}` present).
fn count(shapes: &HashMap<String, Vec<usize>>, prefix: &str, suffix: &str) -> usize {
    (0..)
        .take_while(|i| shapes.contains_key(&format!("{prefix}.{i}{suffix}")))
        .count()
}

impl Weights<'_> {
    fn affine(&self, bn: &str) -> Result<Affine> {
        let gamma = self.get(&format!("{bn}.weight"))?;
        let beta = self.get(&format!("{bn}.bias"))?;
        let mean = self.get(&format!("{bn}.running_mean"))?;
        let var = self.get(&format!("{bn}.running_var"))?;
        let scale = gamma.broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        let shift = (beta - (mean * &scale)?)?;
        let c = scale.dim(0)?;
        Ok(Affine {
            scale: scale.reshape((1, c, 1, 1))?,
            shift: shift.reshape((1, c, 1, 1))?,
        })
    }

    fn depthwise_conv(&self, name: &str, pad: usize) -> Result<Conv> {
        let mut conv = self.conv(name, None, 1, Pad::Fixed(pad))?;
        conv.depthwise = true;
        Ok(conv)
    }

    fn conv_module(&self, p: &str, pad: usize) -> Result<ConvModule> {
        self.conv(
            &format!("{p}.conv"),
            Some((&format!("{p}.bn"), BN_EPS)),
            1,
            Pad::Fixed(pad),
        )
        .map(ConvModule)
    }

    fn stage(&self, s: usize, blocks: &[bool]) -> Result<Stage> {
        let pe = format!("{BACKBONE}.patch_embed{s}");
        let proj = self.get(&format!("{pe}.proj.weight"))?;
        let (dim, patch) = (proj.dim(0)?, proj.dim(2)?);
        let embed = PatchEmbed {
            proj: self.conv(&format!("{pe}.proj"), None, patch, Pad::Fixed(0))?,
            norm: self.layer_norm(&format!("{pe}.norm"), PATCH_NORM_EPS)?,
        };
        let blocks = blocks
            .iter()
            .enumerate()
            .map(|(j, &attention)| {
                let p = format!("{BACKBONE}.blocks{s}.{j}");
                let pos_embed = self.depthwise_conv(&format!("{p}.pos_embed"), 1)?;
                if !attention {
                    let c1 = |n: &str| self.conv(&format!("{p}.{n}"), None, 1, Pad::Fixed(0));
                    return Ok(Block::Conv(ConvBlock {
                        pos_embed,
                        norm1: self.affine(&format!("{p}.norm1"))?,
                        conv1: c1("conv1")?,
                        attn: self.depthwise_conv(&format!("{p}.attn"), 2)?,
                        conv2: c1("conv2")?,
                        norm2: self.affine(&format!("{p}.norm2"))?,
                        fc1: c1("mlp.fc1")?,
                        fc2: c1("mlp.fc2")?,
                    }));
                }
                if dim % HEAD_DIM != 0 {
                    return Err(candle_core::Error::Msg(format!(
                        "stage {s} is {dim} wide, not a multiple of the head width {HEAD_DIM}"
                    )));
                }
                Ok(Block::Attention(AttentionBlock {
                    pos_embed,
                    norm1: self.layer_norm(&format!("{p}.norm1"), NORM_EPS)?,
                    qkv: self.linear(&format!("{p}.attn.qkv"))?,
                    proj: self.linear(&format!("{p}.attn.proj"))?,
                    heads: dim / HEAD_DIM,
                    norm2: self.layer_norm(&format!("{p}.norm2"), NORM_EPS)?,
                    fc1: self.linear(&format!("{p}.mlp.fc1"))?,
                    fc2: self.linear(&format!("{p}.mlp.fc2"))?,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Stage {
            embed,
            blocks,
            norm: self.layer_norm(&format!("{BACKBONE}.norm{s}"), NORM_EPS)?,
        })
    }

    fn uper_head(&self) -> Result<UperHead> {
        let shapes = self.shapes;
        let modules = |prefix: &str, n: usize, pad: usize| {
            (0..n)
                .map(|i| self.conv_module(&format!("{HEAD}.{prefix}.{i}"), pad))
                .collect::<Result<Vec<_>>>()
        };
        let psp = (0..count(shapes, &format!("{HEAD}.psp_modules"), ".1.conv.weight"))
            .map(|i| self.conv_module(&format!("{HEAD}.psp_modules.{i}.1"), 0))
            .collect::<Result<Vec<_>>>()?;
        if psp.len() > POOL_SCALES.len() {
            return Err(candle_core::Error::Msg(format!(
                "the PPM has {} modules; UperNet pools at {} scales",
                psp.len(),
                POOL_SCALES.len()
            )));
        }
        let laterals = count(shapes, &format!("{HEAD}.lateral_convs"), ".conv.weight");
        Ok(UperHead {
            psp,
            bottleneck: self.conv_module(&format!("{HEAD}.bottleneck"), 1)?,
            lateral: modules("lateral_convs", laterals, 0)?,
            fpn: modules("fpn_convs", laterals, 1)?,
            fpn_bottleneck: self.conv_module(&format!("{HEAD}.fpn_bottleneck"), 1)?,
            conv_seg: self.conv(&format!("{HEAD}.conv_seg"), None, 1, Pad::Fixed(0))?,
        })
    }
}

impl UniFormer {
    /// Loads `upernet_global_small.pth` (or a file of its layout, any widths and depths) in f32.
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        let (mut names, mut shapes) =
            model_names(sd, &format!("{BACKBONE}.patch_embed1.proj.weight"))?;
        // the auxiliary FCN head only trains
        names.retain(|k, _| !k.starts_with("auxiliary_head."));
        shapes.retain(|k, _| !k.starts_with("auxiliary_head."));
        let blocks = stage_blocks(&shapes)
            .map_err(|msg| LoadError::new(sd.path(), LoadErrorKind::BadConfig(msg)))?;
        Renaming::new(names).build(sd, DType::F32, device, |vb| {
            let w = Weights {
                vb,
                shapes: &shapes,
            };
            let stages = blocks
                .iter()
                .enumerate()
                .map(|(s, b)| w.stage(s + 1, b))
                .collect::<Result<Vec<_>>>()?;
            Ok(Self {
                stages,
                head: w.uper_head()?,
                device: device.clone(),
            })
        })
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The classes the head scores (150 for ADE20K).
    pub fn classes(&self) -> usize {
        self.head.conv_seg.out_channels()
    }

    /// The backbone's four stage outputs for a normalised `[B, 3, H, W]` input.
    pub fn features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = x.clone();
        let mut out = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            x = channel_norm(&stage.embed.norm, &stage.embed.proj.forward(&x)?)?;
            for block in &stage.blocks {
                x = match block {
                    Block::Conv(b) => b.forward(&x)?,
                    Block::Attention(b) => b.forward(&x)?,
                };
            }
            out.push(channel_norm(&stage.norm, &x)?);
        }
        Ok(out)
    }

    /// Normalised `[B, 3, H, W]` -> the decode head's logits `[B, classes, H/4, W/4]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.features(x)?)
    }

    /// `inference_segmentor` on one uint8 image (the padded one): the class of every pixel,
    /// row-major, with the image's size.
    pub fn segment(&self, img: &ImageU8) -> crate::preprocess::Result<Vec<usize>> {
        let cand = |source| PreprocessError::Candle { op: OP, source };
        let (h, w) = (img.height, img.width);
        // mmcv.imrescale: the largest scale that fits (2048, 512), sizes int(x * s + 0.5).
        let s = f64::min(
            TEST_SCALE.0 / h.max(w) as f64,
            TEST_SCALE.1 / h.min(w) as f64,
        );
        let (nh, nw) = ((h as f64 * s + 0.5) as usize, (w as f64 * s + 0.5) as usize);
        let net_img = cv::resize(&hwc3(img), nw, nh, Interpolation::Linear);
        let x = net_input(&net_img, &self.device).map_err(cand)?;
        let classes = self.classes();
        let logits = (|| {
            let logits = resize(&self.forward(&x)?, nh, nw)?;
            resize(&logits, h, w)?
                .squeeze(0)?
                .flatten_all()?
                .to_vec1::<f32>()
        })()
        .map_err(cand)?;
        // torch's argmax: the first of equal maxima.
        let plane = h * w;
        Ok((0..plane)
            .map(|p| {
                let mut best = 0;
                for k in 1..classes {
                    if logits[k * plane + p] > logits[best * plane + p] {
                        best = k;
                    }
                }
                best
            })
            .collect())
    }

    /// `UniformerSegmentor.__call__` as the ComfyUI pack runs it on one uint8 image:
    /// `resize_image_with_pad` (INTER_CUBIC), [`Self::segment`], each class as its ADE20K colour,
    /// `remove_pad`.
    pub fn detect(&self, img: &ImageU8, resolution: u32) -> crate::preprocess::Result<ImageU8> {
        let padded =
            resize_image_with_pad(OP, img, detect_resolution(resolution), Interpolation::Cubic)?;
        let classes = self.segment(&padded.image)?;
        let colour = ImageU8 {
            height: padded.image.height,
            width: padded.image.width,
            channels: 3,
            data: classes
                .iter()
                .flat_map(|&c| ADE20K_PALETTE.get(c).copied().unwrap_or([0, 0, 0]))
                .collect(),
        };
        Ok(padded.remove_pad(&colour))
    }
}

/// The net's input from the rescaled uint8 image: mmcv's `imnormalize(to_rgb=True)` on an RGB
/// array it takes for BGR, so the channels arrive reversed; `(x - mean) * (1 / std)` in f32.
fn net_input(img: &ImageU8, device: &Device) -> Result<Tensor> {
    let (h, w, c) = (img.height, img.width, img.channels);
    let mut data = vec![0f32; 3 * h * w];
    for (ch, plane) in data.chunks_exact_mut(h * w).enumerate() {
        let src = 2 - ch;
        let (mean, inv) = (MEAN[ch] as f32, (1.0 / STD[ch]) as f32);
        for (p, v) in plane.iter_mut().enumerate() {
            *v = (f32::from(img.data[p * c + src]) - mean) * inv;
        }
    }
    Tensor::from_vec(data, (1, 3, h, w), device)
}

/// The node's result: every image of an IMAGE batch `[B, H, W, C]` (0..1) through
/// [`UniFormer::detect`], as `[B, H', W', 3]`.
pub fn semantic_segmentation(
    net: &UniFormer,
    image: &Tensor,
    resolution: u32,
) -> crate::preprocess::Result<Tensor> {
    run_aux(OP, image, |img| net.detect(img, resolution))
}

/// mmseg's `ade_palette()`: the RGB colour of each ADE20K class.
pub const ADE20K_PALETTE: [[u8; 3]; 150] = [
    [120, 120, 120],
    [180, 120, 120],
    [6, 230, 230],
    [80, 50, 50],
    [4, 200, 3],
    [120, 120, 80],
    [140, 140, 140],
    [204, 5, 255],
    [230, 230, 230],
    [4, 250, 7],
    [224, 5, 255],
    [235, 255, 7],
    [150, 5, 61],
    [120, 120, 70],
    [8, 255, 51],
    [255, 6, 82],
    [143, 255, 140],
    [204, 255, 4],
    [255, 51, 7],
    [204, 70, 3],
    [0, 102, 200],
    [61, 230, 250],
    [255, 6, 51],
    [11, 102, 255],
    [255, 7, 71],
    [255, 9, 224],
    [9, 7, 230],
    [220, 220, 220],
    [255, 9, 92],
    [112, 9, 255],
    [8, 255, 214],
    [7, 255, 224],
    [255, 184, 6],
    [10, 255, 71],
    [255, 41, 10],
    [7, 255, 255],
    [224, 255, 8],
    [102, 8, 255],
    [255, 61, 6],
    [255, 194, 7],
    [255, 122, 8],
    [0, 255, 20],
    [255, 8, 41],
    [255, 5, 153],
    [6, 51, 255],
    [235, 12, 255],
    [160, 150, 20],
    [0, 163, 255],
    [140, 140, 140],
    [250, 10, 15],
    [20, 255, 0],
    [31, 255, 0],
    [255, 31, 0],
    [255, 224, 0],
    [153, 255, 0],
    [0, 0, 255],
    [255, 71, 0],
    [0, 235, 255],
    [0, 173, 255],
    [31, 0, 255],
    [11, 200, 200],
    [255, 82, 0],
    [0, 255, 245],
    [0, 61, 255],
    [0, 255, 112],
    [0, 255, 133],
    [255, 0, 0],
    [255, 163, 0],
    [255, 102, 0],
    [194, 255, 0],
    [0, 143, 255],
    [51, 255, 0],
    [0, 82, 255],
    [0, 255, 41],
    [0, 255, 173],
    [10, 0, 255],
    [173, 255, 0],
    [0, 255, 153],
    [255, 92, 0],
    [255, 0, 255],
    [255, 0, 245],
    [255, 0, 102],
    [255, 173, 0],
    [255, 0, 20],
    [255, 184, 184],
    [0, 31, 255],
    [0, 255, 61],
    [0, 71, 255],
    [255, 0, 204],
    [0, 255, 194],
    [0, 255, 82],
    [0, 10, 255],
    [0, 112, 255],
    [51, 0, 255],
    [0, 194, 255],
    [0, 122, 255],
    [0, 255, 163],
    [255, 153, 0],
    [0, 255, 10],
    [255, 112, 0],
    [143, 255, 0],
    [82, 0, 255],
    [163, 255, 0],
    [255, 235, 0],
    [8, 184, 170],
    [133, 0, 255],
    [0, 255, 92],
    [184, 0, 255],
    [255, 0, 31],
    [0, 184, 255],
    [0, 214, 255],
    [255, 0, 112],
    [92, 255, 0],
    [0, 224, 255],
    [112, 224, 255],
    [70, 184, 160],
    [163, 0, 255],
    [153, 0, 255],
    [71, 255, 0],
    [255, 0, 163],
    [255, 204, 0],
    [255, 0, 143],
    [0, 255, 235],
    [133, 255, 0],
    [255, 0, 235],
    [245, 0, 255],
    [255, 0, 122],
    [255, 245, 0],
    [10, 190, 212],
    [214, 255, 0],
    [0, 204, 255],
    [20, 0, 255],
    [255, 255, 0],
    [0, 153, 255],
    [0, 41, 255],
    [0, 255, 204],
    [41, 0, 255],
    [41, 255, 0],
    [173, 0, 255],
    [0, 245, 255],
    [71, 0, 255],
    [122, 0, 255],
    [0, 255, 184],
    [0, 92, 255],
    [184, 255, 0],
    [0, 133, 255],
    [255, 214, 0],
    [25, 194, 194],
    [102, 255, 0],
    [92, 0, 255],
];
