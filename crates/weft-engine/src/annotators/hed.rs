//! HED soft edges: `ControlNetHED.pth` (controlnet_aux's `ControlNetHED_Apache2`, lllyasviel's
//! RGB retraining of HED) and the detector call of comfyui_controlnet_aux's `HEDPreprocessor` and
//! `FakeScribblePreprocessor`; plus the soft-edge post-processing PiDiNet shares: the `safe` step
//! and the scribble (non-maximum suppression, blur, threshold).
//!
//! The net is five blocks of 3x3 convolutions with ReLU (the later ones after a 2x2 max pool), each
//! with a 1x1 projection to one side output. The detector resizes the side outputs to the padded
//! input size (`cv2.resize` INTER_LINEAR), averages them, and takes the sigmoid in f64. Widths and
//! layer counts come from the weight shapes.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Conv2dConfig;

use crate::load::file::StateDict;
use crate::load::{LoadError, LoadErrorKind};
use crate::ops::conv::Conv2d;
use crate::preprocess::aux::{detect_resolution, hwc3, resize_image_with_pad, Padded};
use crate::preprocess::cv::{dilate3_f32, gaussian_blur_f32, gaussian_blur_u8, Interpolation};
use crate::preprocess::{run_aux, ImageU8, PreprocessError, Result};

use super::{image_tensor, map_values};

/// Reads an annotator's tensors as f32 on its device, naming the file in every error.
pub(super) struct Weights<'a> {
    sd: &'a StateDict,
    prefix: &'a str,
    device: &'a Device,
}

impl<'a> Weights<'a> {
    pub(super) fn new(sd: &'a StateDict, prefix: &'a str, device: &'a Device) -> Self {
        Self { sd, prefix, device }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.sd.contains(&self.key(name))
    }

    pub(super) fn error(&self, kind: LoadErrorKind) -> LoadError {
        LoadError::new(self.sd.path(), kind)
    }

    /// The stored shape of `name`.
    pub(super) fn shape(&self, name: &str) -> std::result::Result<Vec<usize>, LoadError> {
        self.sd
            .shape(&self.key(name))
            .map(<[usize]>::to_vec)
            .ok_or_else(|| self.error(LoadErrorKind::MissingTensor(self.key(name))))
    }

    /// `name` as f32 on the CPU, checked against `expected` (`None`: any size there, shown as 0
    /// in the error).
    pub(super) fn cpu(
        &self,
        name: &str,
        expected: &[Option<usize>],
    ) -> std::result::Result<Tensor, LoadError> {
        let found = self.shape(name)?;
        let fits = found.len() == expected.len()
            && found
                .iter()
                .zip(expected)
                .all(|(f, e)| e.is_none_or(|e| e == *f));
        if !fits {
            return Err(self.error(LoadErrorKind::BadShape {
                name: self.key(name),
                expected: expected.iter().map(|e| e.unwrap_or(0)).collect(),
                found,
            }));
        }
        self.sd
            .get(&self.key(name))?
            .to_dtype(DType::F32)
            .map_err(|e| self.error(e.into()))
    }

    /// A tensor built on the CPU, moved to the device.
    pub(super) fn to_device(&self, t: Tensor) -> std::result::Result<Tensor, LoadError> {
        t.to_device(self.device).map_err(|e| self.error(e.into()))
    }

    /// The convolution `name` (`name.weight` `[out, in / groups, k, k]`, `name.bias` when the file
    /// has one) with `in_channels` inputs; returns it with its output channels.
    pub(super) fn conv(
        &self,
        name: &str,
        in_channels: usize,
        kernel: usize,
        config: Conv2dConfig,
    ) -> std::result::Result<(Conv2d, usize), LoadError> {
        let per_group = in_channels / config.groups.max(1);
        let weight = self.cpu(
            &format!("{name}.weight"),
            &[None, Some(per_group), Some(kernel), Some(kernel)],
        )?;
        let out = weight.dim(0).map_err(|e| self.error(e.into()))?;
        let bias = if self.has(&format!("{name}.bias")) {
            Some(self.to_device(self.cpu(&format!("{name}.bias"), &[Some(out)])?)?)
        } else {
            None
        };
        Ok((Conv2d::new(self.to_device(weight)?, bias, config), out))
    }
}

/// Padding `p`, dilation `d`, one group.
pub(super) fn conv_config(padding: usize, dilation: usize) -> Conv2dConfig {
    Conv2dConfig {
        padding,
        dilation,
        ..Default::default()
    }
}

#[derive(Debug)]
struct HedBlock {
    convs: Vec<Conv2d>,
    projection: Conv2d,
}

/// `ControlNetHED_Apache2` (five blocks of 64, 128, 256, 512, 512 channels in the published file).
#[derive(Debug)]
pub struct ControlNetHed {
    norm: Tensor,
    blocks: Vec<HedBlock>,
    device: Device,
}

impl ControlNetHed {
    /// Builds the net from `ControlNetHED.pth`'s tensors (`norm`, `blockN.convs.K`,
    /// `blockN.projection`), in f32 on `device`.
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        let w = Weights::new(sd, "", device);
        let norm = w.to_device(w.cpu("norm", &[Some(1), Some(3), Some(1), Some(1)])?)?;
        let mut blocks = Vec::new();
        let mut channels = 3;
        while w.has(&format!("block{}.convs.0.weight", blocks.len() + 1)) {
            let prefix = format!("block{}", blocks.len() + 1);
            let mut convs = Vec::new();
            while w.has(&format!("{prefix}.convs.{}.weight", convs.len())) {
                let name = format!("{prefix}.convs.{}", convs.len());
                let (conv, out) = w.conv(&name, channels, 3, conv_config(1, 1))?;
                convs.push(conv);
                channels = out;
            }
            let (projection, _) = w.conv(
                &format!("{prefix}.projection"),
                channels,
                1,
                conv_config(0, 1),
            )?;
            blocks.push(HedBlock { convs, projection });
        }
        if blocks.is_empty() {
            return Err(w.error(LoadErrorKind::MissingTensor("block1.convs.0.weight".into())));
        }
        Ok(Self {
            norm,
            blocks,
            device: device.clone(),
        })
    }

    /// The side outputs, `[1, 1, H / 2^i, W / 2^i]` for block `i`, of `x` `[1, 3, H, W]` (RGB,
    /// 0..255).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut h = x.broadcast_sub(&self.norm)?;
        let mut sides = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            if i > 0 {
                h = h.max_pool2d(2)?;
            }
            for conv in &block.convs {
                h = conv.forward(&h)?.relu()?;
            }
            sides.push(block.projection.forward(&h)?);
        }
        Ok(sides)
    }

    /// The detector's map before the sigmoid for a padded uint8 image: each side output resized
    /// to the image (bilinear, half-pixel centres, as `cv2.resize` INTER_LINEAR), then their mean
    /// (f32, summed in order as numpy does). Returns `(H, W, values)`.
    pub fn edge_logits(&self, img: &ImageU8) -> Result<(usize, usize, Vec<f32>)> {
        const OP: &str = "HED";
        let cand = |source| PreprocessError::Candle { op: OP, source };
        let x = image_tensor(OP, img, &self.device)?;
        let sides = self.forward(&x).map_err(cand)?;
        let (h, w) = (img.height, img.width);
        let mut sum = vec![0f32; h * w];
        for side in &sides {
            let side = if side.dims()[2..] == [h, w] {
                side.clone()
            } else {
                side.upsample_bilinear2d(h, w, false).map_err(cand)?
            };
            let (_, _, v) = map_values(OP, &side)?;
            for (s, v) in sum.iter_mut().zip(v) {
                *s += v;
            }
        }
        let n = sides.len() as f32;
        Ok((h, w, sum.into_iter().map(|s| s / n).collect()))
    }
}

/// Options of `HEDPreprocessor` / `FakeScribblePreprocessor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedOptions {
    /// `safe == "enable"`: quantise the map to three levels before the uint8 cast.
    pub safe: bool,
    /// The scribble post-processing (`FakeScribblePreprocessor`).
    pub scribble: bool,
    /// `resolution` (default 512).
    pub resolution: u32,
}

/// The HED detector over an IMAGE `[B, H, W, C]` (0..1): per image, the aux uint8 round trip,
/// `resize_image_with_pad` (INTER_CUBIC), the net, `sigmoid(mean)` in f64, the safe step, uint8,
/// the scribble, `remove_pad`; returns `[B, H', W', 3]`.
pub fn hed(net: &ControlNetHed, image: &Tensor, opts: &HedOptions) -> Result<Tensor> {
    let op = if opts.scribble {
        "FakeScribblePreprocessor"
    } else {
        "HEDPreprocessor"
    };
    let _span = tracing::trace_span!("hed").entered();
    let map = |img: &ImageU8| {
        let (h, w, logits) = net.edge_logits(img)?;
        let levels = logits.iter().map(|&m| {
            let edge = 1.0 / (1.0 + (-f64::from(m)).exp());
            if opts.safe {
                safe_u8(edge as f32)
            } else {
                trunc_u8(edge * 255.0)
            }
        });
        Ok(grey(h, w, levels))
    };
    detect(op, image, opts.resolution, map, |padded, map| {
        padded.remove_pad(&if opts.scribble { scribble(&map) } else { map })
    })
}

/// The detector frame of the soft-edge nodes: per image of `image`, the aux uint8 round trip,
/// `resize_image_with_pad` (INTER_CUBIC) to `resolution`, `map` (the padded image to a
/// one-channel map), `finish` (what the node does around `remove_pad`), three channels.
pub(super) fn detect(
    op: &'static str,
    image: &Tensor,
    resolution: u32,
    map: impl Fn(&ImageU8) -> Result<ImageU8>,
    finish: impl Fn(&Padded, ImageU8) -> ImageU8,
) -> Result<Tensor> {
    run_aux(op, image, |img| {
        let padded =
            resize_image_with_pad(op, img, detect_resolution(resolution), Interpolation::Cubic)?;
        let map = map(&padded.image)?;
        Ok(hwc3(&finish(&padded, map)))
    })
}

/// A one-channel image of `levels`, row-major.
pub(super) fn grey(height: usize, width: usize, levels: impl Iterator<Item = u8>) -> ImageU8 {
    ImageU8 {
        height,
        width,
        channels: 1,
        data: levels.collect(),
    }
}

/// numpy's `.clip(0, 255).astype(np.uint8)`: truncation, NaN to 0.
pub(super) fn trunc_u8(x: f64) -> u8 {
    if x.is_nan() {
        0
    } else {
        x.clamp(0.0, 255.0) as u8
    }
}

/// `safe_step(x)` (`int32(f32(x) * 3) / 2`, in f32) then the uint8 cast: 0, 127 or 255.
pub(super) fn safe_u8(x: f32) -> u8 {
    let step = (x * 3.0) as i32 as f32 / 2.0;
    trunc_u8(f64::from(step * 255.0))
}

/// The aux `nms(x, 127, 3.0)` of a one-channel map: blur (f32, sigma 3), keep the pixels that are
/// a maximum along a row, a column or a diagonal (`cv2.dilate` with each 3-pixel line equal to
/// the pixel), 255 where what is kept exceeds 127.
pub fn nms(map: &ImageU8) -> ImageU8 {
    const LINES: [[[bool; 3]; 3]; 4] = [
        [[false; 3], [true; 3], [false; 3]],
        [[false, true, false]; 3],
        [
            [true, false, false],
            [false, true, false],
            [false, false, true],
        ],
        [
            [false, false, true],
            [false, true, false],
            [true, false, false],
        ],
    ];
    let (h, w) = (map.height, map.width);
    let x: Vec<f32> = map.data.iter().map(|&v| f32::from(v)).collect();
    let x = gaussian_blur_f32(&x, h, w, 1, 3.0);
    let mut kept = vec![0f32; h * w];
    for line in LINES {
        for ((k, &d), &v) in kept.iter_mut().zip(&dilate3_f32(&x, h, w, line)).zip(&x) {
            if d == v {
                *k = v;
            }
        }
    }
    grey(
        h,
        w,
        kept.into_iter().map(|v| if v > 127.0 { 255 } else { 0 }),
    )
}

/// The detectors' scribble step on a one-channel map: `nms`, `cv2.GaussianBlur(.., 3.0)` on uint8,
/// then 255 where above 4, else 0.
pub fn scribble(map: &ImageU8) -> ImageU8 {
    let mut out = gaussian_blur_u8(&nms(map), 3.0);
    for v in &mut out.data {
        *v = if *v > 4 { 255 } else { 0 };
    }
    out
}
