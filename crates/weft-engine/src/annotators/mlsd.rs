//! M-LSD line segments (`mlsd_large_512_fp32.pth`, controlnet_aux's `MobileV2_MLSD_Large`): a
//! MobileNetV2 backbone cut after its 96-channel stage, four A/B decoder stages back up to half
//! the input size and a dilated C head, giving a centre heat map and the two end points'
//! displacements per pixel. [`mlsd`] is comfyui_controlnet_aux's `MLSDdetector.__call__`:
//! `pred_lines` (sigmoid, 3x3 max-pool NMS, the 200 best centres, the score and length
//! thresholds) and `cv2.line` of every segment on a black canvas.
//!
//! Channel counts are read from the weights, so the published file and narrower test files with
//! its key layout both load. BatchNorm (eval, eps 1e-5) is folded into the convolution before it.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Conv2dConfig;

use crate::load::file::StateDict;
use crate::load::{LoadError, LoadErrorKind};
use crate::ops::conv::Conv2d;
use crate::preprocess::aux::{detect_resolution, hwc3, resize_image_with_pad};
use crate::preprocess::cv::Interpolation;
use crate::preprocess::{cv_draw, run_aux, ImageU8, PreprocessError, Result};

const OP: &str = "M-LSD";
const BN_EPS: f64 = 1e-5;
/// `deccode_output_score_and_ptss(outputs, 200, 3)`: the centres kept, and the NMS window.
const TOP_K: usize = 200;
/// Strides of the 14 backbone layers MobileV2_MLSD_Large keeps (MobileNetV2's first conv and
/// its inverted residual settings up to the 96-channel stage), which the weights do not show.
const BACKBONE_STRIDES: [usize; 14] = [2, 1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1];
/// The backbone outputs the decoder reads (`fpn_selected`).
const FPN: [usize; 5] = [1, 3, 6, 10, 13];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    None,
    Relu,
    Relu6,
}

/// A convolution with its BatchNorm folded in, and its activation.
#[derive(Debug)]
struct ConvBn {
    /// Dense convolutions: Weft's conv kernel.
    conv: Option<Conv2d>,
    /// Depthwise 3x3 convolutions: the per-channel taps `[C, 1, 1]` by (ky, kx), and the bias.
    depthwise: Option<(Vec<Tensor>, Tensor)>,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    /// `ConvBNReLU` with stride 2 pads the bottom and right by one (TFLite's "same") and none
    /// elsewhere.
    tflite_pad: bool,
    act: Act,
}

/// Reads tensors of one file as f32 on a device, naming the file in errors.
struct Weights<'a> {
    sd: &'a StateDict,
    device: &'a Device,
}

impl Weights<'_> {
    fn get(&self, key: &str) -> std::result::Result<Tensor, LoadError> {
        let t = self.sd.get(key)?;
        t.to_dtype(DType::F32)
            .and_then(|t| t.to_device(self.device))
            .map_err(|e| LoadError::new(self.sd.path(), LoadErrorKind::Tensor(e)))
    }

    fn has(&self, key: &str) -> bool {
        self.sd.contains(key)
    }

    fn shape(&self, key: &str) -> std::result::Result<&[usize], LoadError> {
        self.sd.shape(key).ok_or_else(|| {
            LoadError::new(
                self.sd.path(),
                LoadErrorKind::MissingTensor(key.to_string()),
            )
        })
    }

    fn err(&self, e: candle_core::Error) -> LoadError {
        LoadError::new(self.sd.path(), LoadErrorKind::Tensor(e))
    }

    /// A `nn.Sequential(conv, BatchNorm, activation)` at `name` (`{name}.0`, `{name}.1`).
    fn seq(
        &self,
        name: &str,
        geometry: (usize, usize, usize),
        tflite_pad: bool,
        act: Act,
    ) -> std::result::Result<ConvBn, LoadError> {
        let bn = format!("{name}.1");
        self.conv_bn(&format!("{name}.0"), Some(&bn), geometry, tflite_pad, act)
    }

    /// `conv` (`{conv}.weight`, optional `{conv}.bias`) followed by the BatchNorm `bn` (None: a
    /// plain convolution).
    fn conv_bn(
        &self,
        conv: &str,
        bn: Option<&str>,
        geometry: (usize, usize, usize),
        tflite_pad: bool,
        act: Act,
    ) -> std::result::Result<ConvBn, LoadError> {
        let (stride, padding, dilation) = geometry;
        let weight = self.get(&format!("{conv}.weight"))?;
        let bias_key = format!("{conv}.bias");
        let (c_out, c_in_per_group, kernel, _) = weight.dims4().map_err(|e| self.err(e))?;
        let bias = if self.has(&bias_key) {
            self.get(&bias_key)?
        } else {
            Tensor::zeros(c_out, DType::F32, self.device).map_err(|e| self.err(e))?
        };
        let (weight, bias) = match bn {
            None => (weight, bias),
            Some(bn) => {
                let gamma = self.get(&format!("{bn}.weight"))?;
                let beta = self.get(&format!("{bn}.bias"))?;
                let mean = self.get(&format!("{bn}.running_mean"))?;
                let var = self.get(&format!("{bn}.running_var"))?;
                let fold = || -> candle_core::Result<(Tensor, Tensor)> {
                    let scale = gamma.div(&(var + BN_EPS)?.sqrt()?)?;
                    let w = weight.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
                    let b = ((bias - mean)? * &scale)?.add(&beta)?;
                    Ok((w, b))
                };
                fold().map_err(|e| self.err(e))?
            }
        };
        let depthwise = c_in_per_group == 1 && c_out > 1;
        let (conv, depthwise) = if depthwise {
            let taps = (0..kernel * kernel)
                .map(|k| {
                    weight
                        .narrow(2, k / kernel, 1)?
                        .narrow(3, k % kernel, 1)?
                        .reshape((c_out, 1, 1))
                })
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(|e| self.err(e))?;
            let bias = bias.reshape((c_out, 1, 1)).map_err(|e| self.err(e))?;
            (None, Some((taps, bias)))
        } else {
            let config = Conv2dConfig {
                padding,
                stride,
                dilation,
                groups: 1,
                cudnn_fwd_algo: None,
            };
            (Some(Conv2d::new(weight, Some(bias), config)), None)
        };
        Ok(ConvBn {
            conv,
            depthwise,
            kernel,
            stride,
            padding,
            dilation,
            tflite_pad,
            act,
        })
    }
}

/// Every `step`-th element of dimension `dim` from `start`, `count` of them (the tensor must
/// reach `start + count * step`).
fn strided(
    x: &Tensor,
    dim: usize,
    start: usize,
    count: usize,
    step: usize,
) -> candle_core::Result<Tensor> {
    let x = x.narrow(dim, start, count * step)?;
    if step == 1 {
        return Ok(x);
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = count;
    dims.insert(dim + 1, step);
    x.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

impl ConvBn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = if self.tflite_pad {
            x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?
        } else {
            x.clone()
        };
        let y = match (&self.conv, &self.depthwise) {
            (Some(conv), _) => conv.forward(&x)?,
            (None, Some((taps, bias))) => self.depthwise(&x, taps, bias)?,
            (None, None) => candle_core::bail!("convolution without weights"),
        };
        match self.act {
            Act::None => Ok(y),
            Act::Relu => y.relu(),
            Act::Relu6 => y.clamp(0f32, 6f32),
        }
    }

    /// A depthwise convolution as a sum of the input's shifted copies times each tap's
    /// per-channel weight (candle runs grouped convolutions one channel at a time).
    fn depthwise(&self, x: &Tensor, taps: &[Tensor], bias: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (k, s, p, d) = (self.kernel, self.stride, self.padding, self.dilation);
        let span = d * (k - 1) + 1;
        if h + 2 * p < span || w + 2 * p < span {
            candle_core::bail!("depthwise kernel larger than its {h}x{w} input");
        }
        let (oh, ow) = ((h + 2 * p - span) / s + 1, (w + 2 * p - span) / s + 1);
        // Extra zeros at the bottom/right so that every strided window is a whole reshape; they
        // are never read by an output.
        let extra = |len: usize, out: usize| (d * (k - 1) + out * s).saturating_sub(len + 2 * p);
        let x = x
            .pad_with_zeros(2, p, p + extra(h, oh))?
            .pad_with_zeros(3, p, p + extra(w, ow))?;
        let mut acc: Option<Tensor> = None;
        for (i, tap) in taps.iter().enumerate() {
            let (ky, kx) = (i / k, i % k);
            let win = strided(&strided(&x, 2, ky * d, oh, s)?, 3, kx * d, ow, s)?;
            let term = win.broadcast_mul(tap)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        match acc {
            Some(a) => a.broadcast_add(bias),
            None => candle_core::bail!("depthwise convolution without taps"),
        }
    }
}

/// MobileNetV2's inverted residual: optional 1x1 expansion, 3x3 depthwise, 1x1 projection.
#[derive(Debug)]
struct InvertedResidual {
    layers: Vec<ConvBn>,
    residual: bool,
}

impl InvertedResidual {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        for l in &self.layers {
            y = l.forward(&y)?;
        }
        if self.residual {
            y + x
        } else {
            Ok(y)
        }
    }
}

/// `BlockTypeA`: 1x1 convs on the skip `a` and the deeper `b`, `b` upsampled 2x (bilinear,
/// align_corners) unless at the same scale, concatenated `[a, b]`.
#[derive(Debug)]
struct BlockA {
    conv_b: ConvBn,
    conv_a: ConvBn,
    upscale: bool,
}

impl BlockA {
    fn forward(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        let mut b = self.conv_b.forward(b)?;
        let a = self.conv_a.forward(a)?;
        if self.upscale {
            let (_, _, h, w) = b.dims4()?;
            b = b.upsample_bilinear2d(2 * h, 2 * w, true)?;
        }
        Tensor::cat(&[a, b], 1)
    }
}

/// `BlockTypeB`: a residual 3x3 conv, then a 3x3 conv.
#[derive(Debug)]
struct BlockB {
    conv1: ConvBn,
    conv2: ConvBn,
}

impl BlockB {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = (self.conv1.forward(x)? + x)?;
        self.conv2.forward(&y)
    }
}

/// The M-LSD network.
#[derive(Debug)]
pub struct Mlsd {
    backbone: Vec<InvertedResidual>,
    stages: Vec<(BlockA, BlockB)>,
    head: Vec<ConvBn>,
    device: Device,
}

impl Mlsd {
    /// Builds the net from a `mlsd_large_512_fp32.pth` state dict (f32 on `device`).
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        let w = Weights { sd, device };
        let first = w.seq("backbone.features.0", (2, 0, 1), true, Act::Relu6)?;
        let mut backbone = vec![InvertedResidual {
            layers: vec![first],
            residual: false,
        }];
        for (i, &stride) in BACKBONE_STRIDES.iter().enumerate().skip(1) {
            let p = format!("backbone.features.{i}.conv");
            // With an expansion the block is [pw, dw, project, bn]; without, [dw, project, bn].
            let expands = w.has(&format!("{p}.3.weight"));
            let mut layers = Vec::new();
            let mut k = 0;
            if expands {
                layers.push(w.seq(&format!("{p}.0"), (1, 0, 1), false, Act::Relu6)?);
                k = 1;
            }
            let tflite = stride == 2;
            let pad = if tflite { 0 } else { 1 };
            layers.push(w.seq(&format!("{p}.{k}"), (stride, pad, 1), tflite, Act::Relu6)?);
            layers.push(w.conv_bn(
                &format!("{p}.{}", k + 1),
                Some(&format!("{p}.{}", k + 2)),
                (1, 0, 1),
                false,
                Act::None,
            )?);
            let first = w.shape(&format!("{p}.0.0.weight"))?;
            let c_in = if expands { first[1] } else { first[0] };
            let c_out = w.shape(&format!("{p}.{}.weight", k + 1))?[0];
            backbone.push(InvertedResidual {
                layers,
                residual: stride == 1 && c_in == c_out,
            });
        }
        let seq = |name: &str, padding: usize| w.seq(name, (1, padding, 1), false, Act::Relu);
        let mut stages = Vec::new();
        for (i, (a, b)) in [(15, 16), (17, 18), (19, 20), (21, 22)]
            .into_iter()
            .enumerate()
        {
            stages.push((
                BlockA {
                    conv_b: seq(&format!("block{a}.conv1"), 0)?,
                    conv_a: seq(&format!("block{a}.conv2"), 0)?,
                    upscale: i > 0,
                },
                BlockB {
                    conv1: seq(&format!("block{b}.conv1"), 1)?,
                    conv2: seq(&format!("block{b}.conv2"), 1)?,
                },
            ));
        }
        let head = vec![
            w.seq("block23.conv1", (1, 5, 5), false, Act::Relu)?,
            seq("block23.conv2", 1)?,
            w.conv_bn("block23.conv3", None, (1, 0, 1), false, Act::None)?,
        ];
        let outputs = w.shape("block23.conv3.weight")?[0];
        if outputs != 16 {
            return Err(LoadError::new(
                sd.path(),
                LoadErrorKind::BadConfig(format!("M-LSD head has {outputs} outputs, expected 16")),
            ));
        }
        Ok(Self {
            backbone,
            stages,
            head,
            device: device.clone(),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `[1, 4, H, W]` (the image scaled to -1..1 and a channel of ones scaled alike; H and W
    /// even multiples of 32) to the `[1, 9, H/2, W/2]` map `pred_lines` decodes: the centre
    /// logits, then the start and end displacements (x, y, x, y).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut feats = Vec::with_capacity(FPN.len());
        let mut x = x.clone();
        for (i, layer) in self.backbone.iter().enumerate() {
            x = layer.forward(&x)?;
            if FPN.contains(&i) {
                feats.push(x.clone());
            }
        }
        // c5 with c4, then up through c3, c2 and c1.
        let mut y = feats[4].clone();
        for ((a, b), skip) in self.stages.iter().zip([3, 2, 1, 0]) {
            y = b.forward(&a.forward(&feats[skip], &y)?)?;
        }
        for l in &self.head {
            y = l.forward(&y)?;
        }
        y.narrow(1, 7, 9)
    }
}

/// The node's options.
#[derive(Debug, Clone, Copy)]
pub struct MlsdOptions {
    /// `score_threshold` (`thr_v`): the least centre score kept (exclusive).
    pub score_threshold: f64,
    /// `dist_threshold` (`thr_d`): the least segment length kept, in half-resolution pixels
    /// (exclusive).
    pub dist_threshold: f64,
    /// `resolution`.
    pub resolution: u32,
}

/// The input `pred_lines` builds: RGB and a channel of ones, `x / 127.5 - 1` in f32 (a true
/// division, as numpy does it, not a multiplication by the reciprocal).
fn net_input(img: &ImageU8, device: &Device) -> Result<Tensor> {
    let (h, w, c) = (img.height, img.width, img.channels);
    let scale = |v: f32| v / 127.5f32 - 1.0f32;
    let mut data = Vec::with_capacity(4 * h * w);
    for ch in 0..3 {
        data.extend((0..h * w).map(|i| scale(f32::from(img.data[i * c + ch.min(c - 1)]))));
    }
    data.extend(std::iter::repeat_n(scale(1.0), h * w));
    Tensor::from_vec(data, (1, 4, h, w), device)
        .map_err(|source| PreprocessError::Candle { op: OP, source })
}

/// `pred_lines`'s decoding of the `[9, h, w]` map (row-major values): the segments (x1, y1,
/// x2, y2) in input pixels, best centre first. The thresholds are f32 because numpy 2 compares
/// the float32 score and length with the Python floats in float32.
pub fn decode(
    tp: &[f32],
    h: usize,
    w: usize,
    score_threshold: f32,
    dist_threshold: f32,
) -> Vec<[f64; 4]> {
    let n = h * w;
    if tp.len() < 5 * n || n < TOP_K {
        // torch.topk of more than the map holds raises, and the detector draws nothing.
        return Vec::new();
    }
    let heat: Vec<f32> = tp[..n].iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect();
    // 3x3 max-pool NMS: a centre survives where it equals its neighbourhood's maximum.
    let mut scores = Vec::with_capacity(n);
    for y in 0..h {
        for x in 0..w {
            let v = heat[y * w + x];
            let mut m = f32::NEG_INFINITY;
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    m = m.max(heat[yy * w + xx]);
                }
            }
            scores.push((if m == v { v } else { 0.0 }, y * w + x));
        }
    }
    scores.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let disp = |c: usize, i: usize| tp[(1 + c) * n + i];
    let mut out = Vec::new();
    for &(score, i) in scores.iter().take(TOP_K) {
        let d = [disp(0, i), disp(1, i), disp(2, i), disp(3, i)];
        let (dx, dy) = (d[0] - d[2], d[1] - d[3]);
        let distance = (dx * dx + dy * dy).sqrt();
        if score > score_threshold && distance > dist_threshold {
            let (x, y) = ((i % w) as f64, (i / w) as f64);
            // int64 centre + float32 displacement is float64 in numpy; `* 2` maps 256 -> 512.
            out.push([
                2.0 * (x + f64::from(d[0])),
                2.0 * (y + f64::from(d[1])),
                2.0 * (x + f64::from(d[2])),
                2.0 * (y + f64::from(d[3])),
            ]);
        }
    }
    out
}

/// Draws the segments as `cv2.line` does after `int()` of each coordinate; like the detector's
/// `try`, the first coordinate OpenCV cannot take (not finite, beyond i32) ends the drawing.
pub fn draw_segments(canvas: &mut ImageU8, segments: &[[f64; 4]]) {
    let coord = |v: f64| {
        let t = v.trunc();
        (t.is_finite() && t >= f64::from(i32::MIN) && t <= f64::from(i32::MAX)).then_some(t as i32)
    };
    for s in segments {
        let (Some(x1), Some(y1), Some(x2), Some(y2)) =
            (coord(s[0]), coord(s[1]), coord(s[2]), coord(s[3]))
        else {
            return;
        };
        cv_draw::line(canvas, (x1, y1), (x2, y2), 255);
    }
}

/// One uint8 image through the detector: the padded input, the network's map, the segments and
/// the line map (3 channels, the resized size).
pub fn detect(net: &Mlsd, img: &ImageU8, opts: &MlsdOptions) -> Result<MlsdDetection> {
    let cand = |source| PreprocessError::Candle { op: OP, source };
    let padded = resize_image_with_pad(
        OP,
        img,
        detect_resolution(opts.resolution),
        Interpolation::Area,
    )?;
    let x = net_input(&padded.image, net.device())?;
    let tp = net.forward(&x).map_err(cand)?;
    let (_, c, h, w) = tp.dims4().map_err(cand)?;
    let values = tp
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(cand)?;
    let segments = if c == 9 {
        decode(
            &values,
            h,
            w,
            opts.score_threshold as f32,
            opts.dist_threshold as f32,
        )
    } else {
        Vec::new()
    };
    let mut canvas = ImageU8::zeros(padded.image.height, padded.image.width, 1);
    draw_segments(&mut canvas, &segments);
    let map = padded.remove_pad(&hwc3(&canvas));
    Ok(MlsdDetection {
        padded: padded.image,
        tp: values,
        tp_size: (h, w),
        segments,
        map,
    })
}

/// What [`detect`] computed, for tests and inspection.
#[derive(Debug, Clone)]
pub struct MlsdDetection {
    /// The resized, padded input.
    pub padded: ImageU8,
    /// The network's `[9, h, w]` map, row-major.
    pub tp: Vec<f32>,
    /// `(h, w)` of the map.
    pub tp_size: (usize, usize),
    /// The segments drawn (or attempted), input pixels.
    pub segments: Vec<[f64; 4]>,
    /// The line map.
    pub map: ImageU8,
}

/// `M-LSDPreprocessor` on an IMAGE `[B, H, W, C]` (0..1): `[B, H', W', 3]` line maps.
pub fn mlsd(net: &Mlsd, image: &Tensor, opts: &MlsdOptions) -> Result<Tensor> {
    run_aux(OP, image, |img| Ok(detect(net, img, opts)?.map))
}
