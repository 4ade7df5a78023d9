//! MiDaS DPT-Hybrid (relative depth), as comfyui_controlnet_aux's `MidasDetector` ran it while it
//! read `dpt_hybrid-midas-501f0c75.pt` (the pack up to June 2025; the ControlNet 1.0 annotator):
//! timm's R50+ViT-B/16 hybrid (`pretrained.model.*`: a ResNetV2 stem and stages of bottlenecks with
//! weight-standardised, TF-"same"-padded convolutions and GroupNorm, a 1x1 projection to tokens, a
//! class token, a position table resized bilinearly to the token grid, ViT blocks), read out at
//! ResNet stages 0 and 1 and at ViT blocks 8 and 11 (`act_postprocess3/4`: the class token
//! concatenated and projected, a 1x1 convolution, a stride-2 3x3 for the last), into the DPT
//! `scratch` fusion and output convolutions. Every width and count is read from the weights.
//!
//! The detector call: `resize_image_with_pad` to the resolution (bicubic up, area down, edge
//! padding to multiples of 64), `x / 127.5 - 1`, the net on the padded image, the depth min-max
//! scaled to uint8 by truncation, or the normal from its Sobel gradients
//! ([`gradient_normals`], channels reversed), `remove_pad`.
//!
//! The same net also loads from transformers' `Intel/dpt-hybrid-midas` folder, which the pack
//! reads since e8b689a ([`super::midas_hf`]: its names renamed to these, its processor's input);
//! the detector then runs as [`Input::Processor`] says.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::dpt::{DepthOut, Ffn, Readout, Refine, VitBlock};
use super::{load_published, map_values, same_pad, u8_from_clipped};
use crate::load::file::StateDict;
use crate::load::LoadError;
use crate::ops::conv::{conv2d, Conv2d};
use crate::ops::norm::{group_norm, GroupNorm};
use crate::preprocess::aux::{detect_resolution, hwc3, resize_image_with_pad};
use crate::preprocess::cv::Interpolation;
use crate::preprocess::normal::gradient_normals;
use crate::preprocess::resample::{resize_u8_antialias, Filter};
use crate::preprocess::{run_aux, ImageU8, PreprocessError, Result};
use crate::resize::{common_upscale, Crop, UpscaleMethod};

const OP: &str = "MiDaS";

/// ViT-B's heads are 64 wide (768 / 12).
const HEAD_DIM: usize = 64;
/// timm's `GroupNormAct` default.
const GROUPS: usize = 32;
const GROUP_EPS: f64 = 1e-5;
/// `StdConv2dSame(eps=1e-8)` of the hybrid's ResNet.
const STD_EPS: f64 = 1e-8;
const BACKBONE: &str = "pretrained.model.patch_embed.backbone";

/// One ResNet stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Bottleneck blocks.
    pub blocks: usize,
    /// Output width.
    pub width: usize,
    /// Bottleneck (middle) width.
    pub mid: usize,
}

/// The shape of a DPT-Hybrid network, read from its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// ResNet stem width.
    pub stem: usize,
    /// ResNet stages (stride 1, then 2 each).
    pub stages: Vec<Stage>,
    /// ViT width.
    pub embed_dim: usize,
    /// ViT blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width.
    pub mlp: usize,
    /// Side of the stored (square) position grid (24 for 384).
    pub pos_side: usize,
    /// The blocks read out as the third and fourth DPT layers.
    pub hooks: [usize; 2],
    /// Widths of the two readout projections (`act_postprocess3.3`, `act_postprocess4.3`).
    pub readout: [usize; 2],
    /// DPT fusion width.
    pub features: usize,
    /// Width of the last hidden convolution (32).
    pub head_hidden: usize,
    /// The ViT blocks' LayerNorm epsilon (timm's 1e-6; transformers' config says 1e-12).
    pub layer_norm_eps: f64,
}

impl Config {
    /// The configuration the tensor shapes of a published-layout file imply.
    pub fn detect(shapes: &HashMap<String, Vec<usize>>) -> std::result::Result<Self, String> {
        let dim = |name: &str, i: usize| -> std::result::Result<usize, String> {
            shapes
                .get(name)
                .ok_or_else(|| format!("missing tensor '{name}' (not a MiDaS DPT-Hybrid file?)"))?
                .get(i)
                .copied()
                .ok_or_else(|| format!("tensor '{name}' has too few dimensions"))
        };
        let count =
            |f: &dyn Fn(usize) -> String| (0..).take_while(|&i| shapes.contains_key(&f(i))).count();
        let stages: Vec<Stage> =
            (0..count(&|s| format!("{BACKBONE}.stages.{s}.blocks.0.conv1.weight")))
                .map(|s| {
                    let block = format!("{BACKBONE}.stages.{s}.blocks.0");
                    Ok(Stage {
                        blocks: count(&|b| {
                            format!("{BACKBONE}.stages.{s}.blocks.{b}.conv1.weight")
                        }),
                        width: dim(&format!("{block}.conv3.weight"), 0)?,
                        mid: dim(&format!("{block}.conv1.weight"), 0)?,
                    })
                })
                .collect::<std::result::Result<_, String>>()?;
        if stages.len() < 2 {
            return Err(format!(
                "{} ResNet stages, DPT-Hybrid reads out the first two",
                stages.len()
            ));
        }
        let embed_dim = dim("pretrained.model.cls_token", 2)?;
        let tokens = dim("pretrained.model.pos_embed", 1)?;
        let pos_side = ((tokens.saturating_sub(1)) as f64).sqrt().round() as usize;
        if pos_side * pos_side + 1 != tokens {
            return Err(format!(
                "position table of {tokens} tokens is not a class token and a square grid"
            ));
        }
        let depth = count(&|i| format!("pretrained.model.blocks.{i}.norm1.weight"));
        if depth < 4 {
            return Err(format!(
                "{depth} ViT blocks, DPT-Hybrid reads out the fourth-last"
            ));
        }
        if embed_dim % HEAD_DIM != 0 {
            return Err(format!(
                "ViT width {embed_dim} is not a multiple of the {HEAD_DIM}-wide heads"
            ));
        }
        Ok(Config {
            stem: dim(&format!("{BACKBONE}.stem.conv.weight"), 0)?,
            stages,
            embed_dim,
            depth,
            heads: embed_dim / HEAD_DIM,
            mlp: dim("pretrained.model.blocks.0.mlp.fc1.weight", 0)?,
            pos_side,
            // hooks [0, 1, 8, 11] of `vitb_rn50_384`: the first two name ResNet stages
            hooks: [depth - 4, depth - 1],
            readout: [
                dim("pretrained.act_postprocess3.3.weight", 0)?,
                dim("pretrained.act_postprocess4.3.weight", 0)?,
            ],
            features: dim("scratch.layer1_rn.weight", 0)?,
            head_hidden: dim("scratch.output_conv.2.weight", 0)?,
            layer_norm_eps: 1e-6,
        })
    }
}

/// `x` zero-padded for a TF-"same" kernel `k` at `stride` (zeros also serve the max pool, whose
/// input is a ReLU's output).
fn pad_same(x: &Tensor, k: usize, stride: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (top, bottom) = same_pad(h, k, stride);
    let (left, right) = same_pad(w, k, stride);
    x.pad_with_zeros(2, top, bottom)?
        .pad_with_zeros(3, left, right)
}

/// `StdConv2dSame`: a bias-free convolution whose weight is standardised per output channel
/// (biased variance, eps 1e-8; done once here), with TF-"same" padding.
#[derive(Debug)]
struct StdConv {
    conv: Conv2d,
    k: usize,
    stride: usize,
}

impl StdConv {
    fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        let w = vb.get((cout, cin, k, k), "weight")?;
        let flat = w.to_dtype(DType::F64)?.reshape((cout, cin * k * k))?;
        let centred = flat.broadcast_sub(&flat.mean_keepdim(1)?)?;
        let std = (centred.sqr()?.mean_keepdim(1)? + STD_EPS)?.sqrt()?;
        let weight = centred
            .broadcast_div(&std)?
            .to_dtype(w.dtype())?
            .reshape((cout, cin, k, k))?;
        // stride 1 with an odd kernel is symmetric: leave the padding to the convolution
        let padding = if stride == 1 { (k - 1) / 2 } else { 0 };
        let config = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Ok(StdConv {
            conv: Conv2d::new(weight, None, config),
            k,
            stride,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.stride == 1 {
            return self.conv.forward(x);
        }
        self.conv.forward(&pad_same(x, self.k, self.stride)?)
    }
}

/// `StdConv` then `GroupNormAct` (ReLU where `act`).
#[derive(Debug)]
struct ConvNorm {
    conv: StdConv,
    norm: GroupNorm,
}

impl ConvNorm {
    fn new(
        vb: VarBuilder,
        conv: &str,
        norm: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        Ok(ConvNorm {
            conv: StdConv::new(vb.pp(conv), cin, cout, k, stride)?,
            norm: group_norm(GROUPS, cout, GROUP_EPS, vb.pp(norm))?,
        })
    }

    fn forward(&self, x: &Tensor, act: bool) -> candle_core::Result<Tensor> {
        let y = self.norm.forward(&self.conv.forward(x)?)?;
        if act {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// timm's non-pre-activation `Bottleneck`.
#[derive(Debug)]
struct Bottleneck {
    downsample: Option<ConvNorm>,
    a: ConvNorm,
    b: ConvNorm,
    c: ConvNorm,
}

impl Bottleneck {
    fn new(vb: VarBuilder, cin: usize, stage: &Stage, stride: usize) -> candle_core::Result<Self> {
        let (mid, out) = (stage.mid, stage.width);
        let downsample = if cin != out || stride != 1 {
            Some(ConvNorm::new(
                vb.pp("downsample"),
                "conv",
                "norm",
                cin,
                out,
                1,
                stride,
            )?)
        } else {
            None
        };
        Ok(Bottleneck {
            downsample,
            a: ConvNorm::new(vb.clone(), "conv1", "norm1", cin, mid, 1, 1)?,
            b: ConvNorm::new(vb.clone(), "conv2", "norm2", mid, mid, 3, stride)?,
            c: ConvNorm::new(vb, "conv3", "norm3", mid, out, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, false)?,
            None => x.clone(),
        };
        let y = self.a.forward(x, true)?;
        let y = self.b.forward(&y, true)?;
        (self.c.forward(&y, false)? + shortcut)?.relu()
    }
}

/// The hybrid's ResNetV2 (`stem_type='same'`, no pre-activation).
#[derive(Debug)]
struct ResNet {
    stem: ConvNorm,
    stages: Vec<Vec<Bottleneck>>,
}

impl ResNet {
    fn new(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let stem = ConvNorm::new(vb.pp("stem"), "conv", "norm", 3, cfg.stem, 7, 2)?;
        let mut cin = cfg.stem;
        let mut stages = Vec::with_capacity(cfg.stages.len());
        for (s, stage) in cfg.stages.iter().enumerate() {
            let mut blocks = Vec::with_capacity(stage.blocks);
            for b in 0..stage.blocks {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let vb = vb.pp(format!("stages.{s}.blocks.{b}"));
                blocks.push(Bottleneck::new(vb, cin, stage, stride)?);
                cin = stage.width;
            }
            stages.push(blocks);
        }
        Ok(ResNet { stem, stages })
    }

    /// Each stage's output.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let x = self.stem.forward(x, true)?;
        let mut x = pad_same(&x, 3, 2)?.max_pool2d_with_stride(3, 2)?;
        let mut out = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x)?;
            }
            out.push(x.clone());
        }
        Ok(out)
    }
}

/// A MiDaS DPT-Hybrid network.
#[derive(Debug)]
pub struct Midas {
    config: Config,
    resnet: ResNet,
    proj: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<VitBlock>,
    readout: [Readout; 2],
    /// `act_postprocess4.4`: the stride-2 3x3 convolution of the last layer.
    down: Conv2d,
    refine: Refine,
    out: DepthOut,
    input: Input,
    device: Device,
}

/// How the detector feeds the net and reads its depth.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The pack up to 2e4e7f6 (`dpt_hybrid-midas-501f0c75.pt`): the padded image itself,
    /// `x / 127.5 - 1`, the depth at its size.
    Padded,
    /// Today's pack (transformers): the padded image through `DPTImageProcessor`, the depth
    /// resized bicubically (torch's, corners not aligned) back to the padded size.
    Processor(Processor),
}

/// What `DPTImageProcessor` does to the padded uint8 image (from `preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct Processor {
    /// The size the image is resized to (the net's `image_size`).
    pub height: usize,
    /// Its width.
    pub width: usize,
    /// torchvision's antialiased uint8 resize with this filter (`resample`).
    pub filter: Filter,
    /// `image_mean / rescale_factor` per channel: the mean on 0..255, as torch fuses them.
    pub mean: [f32; 3],
    /// `image_std / rescale_factor`.
    pub std: [f32; 3],
}

impl Midas {
    /// Builds the net from `vb` (the published names).
    pub fn new(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let cfg = config;
        let d = cfg.embed_dim;
        let model = vb.pp("pretrained.model");
        let last = cfg.stages.last().map_or(cfg.stem, |s| s.width);
        let post = |i: usize| vb.pp(format!("pretrained.act_postprocess{i}"));
        let scratch = vb.pp("scratch");
        let widths = [
            cfg.stages[0].width,
            cfg.stages[1].width,
            cfg.readout[0],
            cfg.readout[1],
        ];
        let stride2 = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        Ok(Midas {
            resnet: ResNet::new(vb.pp(BACKBONE), cfg)?,
            proj: conv2d(
                last,
                d,
                1,
                Conv2dConfig::default(),
                model.pp("patch_embed.proj"),
            )?,
            cls_token: model.get((1, 1, d), "cls_token")?,
            pos_embed: model.get((1, cfg.pos_side * cfg.pos_side + 1, d), "pos_embed")?,
            blocks: (0..=cfg.hooks[1])
                .map(|i| {
                    VitBlock::new(
                        model.pp(format!("blocks.{i}")),
                        d,
                        cfg.heads,
                        Ffn::Mlp(cfg.mlp),
                        false,
                    )
                    .map(|b| b.with_layer_norm_eps(cfg.layer_norm_eps))
                })
                .collect::<candle_core::Result<_>>()?,
            readout: [
                Readout::new(post(3), d, cfg.readout[0])?,
                Readout::new(post(4), d, cfg.readout[1])?,
            ],
            down: conv2d(cfg.readout[1], cfg.readout[1], 3, stride2, post(4).pp("4"))?,
            refine: Refine::new(scratch.clone(), widths, cfg.features)?,
            out: DepthOut::new(
                [
                    scratch.pp("output_conv.0"),
                    scratch.pp("output_conv.2"),
                    scratch.pp("output_conv.4"),
                ],
                cfg.features,
                cfg.head_hidden,
            )?,
            input: Input::Padded,
            device: vb.device().clone(),
            config: config.clone(),
        })
    }

    /// Reads a published-layout file (`dpt_hybrid-midas-501f0c75.pt`), or transformers'
    /// `model.safetensors` of `Intel/dpt-hybrid-midas` (with the `config.json` and
    /// `preprocessor_config.json` beside it), in f32 onto `device`.
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        if super::midas_hf::is_hf_layout(sd.shapes()) {
            return super::midas_hf::load(sd, device);
        }
        load_published(sd, device, Config::detect, Midas::new)
    }

    /// The net with another detector input.
    pub fn with_input(self, input: Input) -> Self {
        Midas { input, ..self }
    }

    /// How the detector feeds it.
    pub fn input(&self) -> &Input {
        &self.input
    }

    /// Its shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `_resize_pos_embed`: the stored grid resized bilinearly (corners not aligned) to `gh x gw`,
    /// after the class token's entry.
    fn position_table(&self, gh: usize, gw: usize) -> candle_core::Result<Tensor> {
        let (_, _, d) = self.pos_embed.dims3()?;
        let side = self.config.pos_side;
        let grid = self
            .pos_embed
            .narrow(1, 1, side * side)?
            .reshape((1, side, side, d))?
            .permute((0, 3, 1, 2))?
            // candle 0.11's same-size shortcut copies the storage, ignoring the permuted layout
            // (a 384-side input, the stored grid's own, got a scrambled table)
            .contiguous()?
            .upsample_bilinear2d(gh, gw, false)?
            .permute((0, 2, 3, 1))?
            .reshape((1, gh * gw, d))?;
        Tensor::cat(&[&self.pos_embed.narrow(1, 0, 1)?, &grid], 1)
    }

    /// The relative depth `[B, H, W]` of `[B, 3, H, W]` pixels in -1..1 (sides multiples of 32).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let stages = self.resnet.forward(x)?;
        let last = stages
            .last()
            .ok_or_else(|| candle_core::Error::Msg("no ResNet stages".into()))?;
        let tokens = self.proj.forward(last)?;
        let (b, d, gh, gw) = tokens.dims4()?;
        let tokens = tokens.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?;
        let mut x =
            Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.position_table(gh, gw)?)?;
        let mut hooked = Vec::with_capacity(2);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if self.config.hooks.contains(&i) {
                hooked.push(x.clone());
            }
        }
        let layer3 = self.readout[0].forward(&hooked[0], gh, gw)?;
        let layer4 = self
            .down
            .forward(&self.readout[1].forward(&hooked[1], gh, gw)?)?;
        let path = self
            .refine
            .forward(&[stages[0].clone(), stages[1].clone(), layer3, layer4])?;
        let (_, _, ph, pw) = path.dims4()?;
        self.out.forward(&path, (2 * ph, 2 * pw))?.squeeze(1)
    }

    /// The raw depth `[H, W]` of a uint8 RGB image whose sides are multiples of 32
    /// (`image / 127.5 - 1.0`).
    pub fn infer(&self, img: &ImageU8) -> Result<Tensor> {
        self.infer_with(img, |v, _| f32::from(v) / 127.5 - 1.0)
    }

    /// The depth `[S, S]` at the net's size of a uint8 RGB image through `p` (resized, then
    /// `(x - mean) / std`).
    pub fn infer_processed(&self, img: &ImageU8, p: &Processor) -> Result<Tensor> {
        let resized = resize_u8_antialias(img, p.height, p.width, p.filter);
        self.infer_with(&resized, |v, ch| (f32::from(v) - p.mean[ch]) / p.std[ch])
    }

    /// The net on `img`'s channels (grey repeated), each value through `norm(value, channel)`.
    fn infer_with(&self, img: &ImageU8, norm: impl Fn(u8, usize) -> f32) -> Result<Tensor> {
        let cand = |source| PreprocessError::Candle { op: OP, source };
        let (h, w, c) = (img.height, img.width, img.channels);
        let mut data = vec![0f32; 3 * h * w];
        for (i, px) in img.data.chunks_exact(c).enumerate() {
            for ch in 0..3 {
                data[ch * h * w + i] = norm(px[ch.min(c - 1)], ch);
            }
        }
        Tensor::from_vec(data, (1, 3, h, w), &self.device)
            .and_then(|x| self.forward(&x)?.reshape((h, w)))
            .map_err(cand)
    }

    /// The depth at the padded image's size, as the detector reads it.
    fn depth_for(&self, padded: &ImageU8) -> Result<Tensor> {
        let p = match &self.input {
            Input::Padded => return self.infer(padded),
            Input::Processor(p) => p,
        };
        let depth = self.infer_processed(padded, p)?;
        let (h, w) = (padded.height, padded.width);
        depth
            .unsqueeze(0)
            .and_then(|d| d.unsqueeze(0))
            .and_then(|d| common_upscale(&d, w, h, UpscaleMethod::Bicubic, Crop::Disabled))
            .and_then(|d| d.reshape((h, w)))
            .map_err(|source| PreprocessError::Candle { op: OP, source })
    }

    /// `MidasDetector.__call__` on one uint8 image: the depth map (min-max to uint8, three
    /// channels) or the normal map, at the resolution, pad removed.
    pub fn detect(&self, img: &ImageU8, resolution: u32, map: MidasMap) -> Result<ImageU8> {
        let padded =
            resize_image_with_pad(OP, img, detect_resolution(resolution), Interpolation::Cubic)?;
        let depth = self.depth_for(&padded.image)?;
        let (h, w, values) = map_values(OP, &depth)?;
        let out = match map {
            MidasMap::Depth => {
                let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = values
                    .iter()
                    .map(|&v| v - lo)
                    .fold(f32::NEG_INFINITY, f32::max);
                // torch in f32: (d - min) / max, then numpy's * 255 truncated (flat: NaN -> 0)
                let scaled: Vec<f32> = values.iter().map(|&v| (v - lo) / hi * 255.0).collect();
                hwc3(&u8_from_clipped(h, w, &scaled))
            }
            MidasMap::Normal { a, bg_threshold } => {
                let mut out = ImageU8::zeros(h, w, 3);
                for (px, [x, y, z]) in out.data.chunks_exact_mut(3).zip(gradient_normals(
                    &values,
                    h,
                    w,
                    a,
                    bg_threshold,
                )) {
                    // `[:, :, ::-1]`: the map is (z, y, x)
                    px.copy_from_slice(&[z, y, x]);
                }
                out
            }
        };
        Ok(padded.remove_pad(&out))
    }
}

/// Which of the detector's two maps a node returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MidasMap {
    /// `MiDaS-DepthMapPreprocessor`.
    Depth,
    /// `MiDaS-NormalMapPreprocessor`, with its `a` (the z component) and `bg_threshold` (on the
    /// min-max normalised depth, below which the gradient is dropped).
    Normal {
        /// `a`.
        a: f32,
        /// `bg_threshold`.
        bg_threshold: f32,
    },
}

/// The MiDaS nodes' result for an IMAGE `[B, H, W, C]` (0..1): each image through
/// [`Midas::detect`] as `common_annotator_call` runs it.
pub fn midas(model: &Midas, image: &Tensor, resolution: u32, map: MidasMap) -> Result<Tensor> {
    run_aux(OP, image, |img| model.detect(img, resolution, map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_puts_the_odd_pixel_last() {
        // the stem's 7x7 / 2 on an even side, the max pool's and a stage's 3x3 / 2, the 1x1 / 2
        assert_eq!(same_pad(128, 7, 2), (2, 3));
        assert_eq!(same_pad(64, 3, 2), (0, 1));
        assert_eq!(same_pad(65, 3, 2), (1, 1));
        assert_eq!(same_pad(32, 1, 2), (0, 0));
    }
}
