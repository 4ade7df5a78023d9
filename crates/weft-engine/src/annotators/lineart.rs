//! The line-art annotators of comfyui_controlnet_aux: `LineArtPreprocessor` (controlnet_aux's
//! `lineart.Generator`, the files `sk_model.pth` and, for `coarse`, `sk_model2.pth`) and
//! `AnimeLineArtPreprocessor` (`lineart_anime.UnetGenerator`, the pix2pix U-Net of Anime2Sketch,
//! `netG.pth`). Widths, residual blocks and U-Net depth come from the weight shapes; the published
//! files have 64 base channels, 3 residual blocks and 8 U-Net levels.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::{image_tensor, map_values, u8_from_clipped};
use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
use crate::ops::conv::Conv2d;
use crate::ops::conv_transpose::conv_transpose2d;
use crate::ops::norm::GroupNorm;
use crate::ops::reflect_pad;
use crate::preprocess::aux::{detect_resolution, hwc3, resize_image_with_pad};
use crate::preprocess::cv::{self, Interpolation};
use crate::preprocess::{run_aux, ImageU8, PreprocessError, Result};

/// A convolution whose sizes are those of its stored weight (`weight`, `bias`).
fn conv(vb: &VarBuilder, name: &str, stride: usize, padding: usize) -> candle_core::Result<Conv2d> {
    let vb = vb.pp(name);
    let config = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok(Conv2d::new(
        vb.get_unchecked("weight")?,
        Some(vb.get_unchecked("bias")?),
        config,
    ))
}

/// A `ConvTranspose2d` with bias, kernel `[C_in, C_out, k, k]` as stored.
#[derive(Debug, Clone)]
struct ConvTranspose {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    output_padding: usize,
}

impl ConvTranspose {
    fn load(
        vb: &VarBuilder,
        name: &str,
        stride: usize,
        padding: usize,
        output_padding: usize,
    ) -> candle_core::Result<Self> {
        let vb = vb.pp(name);
        Ok(Self {
            weight: vb.get_unchecked("weight")?,
            bias: vb.get_unchecked("bias")?,
            stride,
            padding,
            output_padding,
        })
    }

    fn out_channels(&self) -> candle_core::Result<usize> {
        self.weight.dim(1)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        conv_transpose2d(
            x,
            &self.weight,
            Some(&self.bias),
            self.stride,
            self.padding,
            self.output_padding,
        )
    }
}

/// torch's `InstanceNorm2d` as built here (no affine parameters, no running statistics, eps
/// 1e-5): a GroupNorm with one channel per group.
fn instance_norm(channels: usize, device: &Device) -> candle_core::Result<GroupNorm> {
    GroupNorm::new(
        Tensor::ones(channels, DType::F32, device)?,
        Tensor::zeros(channels, DType::F32, device)?,
        channels,
        channels,
        1e-5,
    )
}

fn out_channels(c: &Conv2d) -> candle_core::Result<usize> {
    c.weight().dim(0)
}

/// The model names (the file's keys without DataParallel's `module.`, which Anime2Sketch's loader
/// strips) mapped to the file's keys.
fn renaming(sd: &StateDict) -> Renaming {
    Renaming::new(
        sd.shapes()
            .keys()
            .map(|k| (k.replace("module.", ""), k.clone()))
            .collect(),
    )
}

fn has(sd: &StateDict, model_name: &str) -> bool {
    sd.contains(model_name) || sd.contains(&format!("module.{model_name}"))
}

/// One residual block: `x + IN(conv(pad(relu(IN(conv(pad(x)))))))`.
#[derive(Debug, Clone)]
struct ResidualBlock {
    conv1: Conv2d,
    conv2: Conv2d,
    norm: GroupNorm,
}

impl ResidualBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.conv1.forward(&reflect_pad(x, 1)?)?;
        let y = self.norm.forward(&y)?.relu()?;
        let y = self.conv2.forward(&reflect_pad(&y, 1)?)?;
        x + self.norm.forward(&y)?
    }
}

/// controlnet_aux's `lineart.Generator(3, 1, n)`: `sk_model.pth` and `sk_model2.pth`.
#[derive(Debug, Clone)]
pub struct LineartGenerator {
    stem: (Conv2d, GroupNorm),
    down: Vec<(Conv2d, GroupNorm)>,
    blocks: Vec<ResidualBlock>,
    up: Vec<(ConvTranspose, GroupNorm)>,
    head: Conv2d,
    device: Device,
}

impl LineartGenerator {
    /// Builds the net from `vb` (controlnet_aux's names) with `blocks` residual blocks.
    pub fn new(vb: VarBuilder, blocks: usize) -> candle_core::Result<Self> {
        let device = vb.device().clone();
        let normed = |c: Conv2d| -> candle_core::Result<(Conv2d, GroupNorm)> {
            let n = instance_norm(out_channels(&c)?, &device)?;
            Ok((c, n))
        };
        let stem = normed(conv(&vb, "model0.1", 1, 0)?)?;
        let down = ["model1.0", "model1.3"]
            .into_iter()
            .map(|name| normed(conv(&vb, name, 2, 1)?))
            .collect::<candle_core::Result<_>>()?;
        let blocks = (0..blocks)
            .map(|i| {
                let conv1 = conv(&vb, &format!("model2.{i}.conv_block.1"), 1, 0)?;
                let conv2 = conv(&vb, &format!("model2.{i}.conv_block.5"), 1, 0)?;
                let norm = instance_norm(out_channels(&conv1)?, &device)?;
                Ok(ResidualBlock { conv1, conv2, norm })
            })
            .collect::<candle_core::Result<_>>()?;
        let up = ["model3.0", "model3.3"]
            .into_iter()
            .map(|name| {
                let c = ConvTranspose::load(&vb, name, 2, 1, 1)?;
                let n = instance_norm(c.out_channels()?, &device)?;
                Ok((c, n))
            })
            .collect::<candle_core::Result<_>>()?;
        let head = conv(&vb, "model4.1", 1, 0)?;
        Ok(Self {
            stem,
            down,
            blocks,
            up,
            head,
            device,
        })
    }

    /// Reads the net from a state dict (the residual blocks counted from its keys), in f32.
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        let blocks = (0..)
            .take_while(|i| has(sd, &format!("model2.{i}.conv_block.1.weight")))
            .count();
        if !has(sd, "model0.1.weight") {
            return Err(LoadError::new(
                sd.path(),
                LoadErrorKind::MissingTensor("model0.1.weight".into()),
            ));
        }
        renaming(sd)
            .warn_unused("line art tensors not used by the network")
            .build(sd, DType::F32, device, |vb| Self::new(vb, blocks))
    }

    /// `[1, 3, H, W]` in 0..1 (H and W multiples of 4) to the `[1, 1, H, W]` line map in 0..1
    /// (after the sigmoid; lines are dark).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.to_device(&self.device)?.to_dtype(DType::F32)?;
        let (c, n) = &self.stem;
        let mut y = n.forward(&c.forward(&reflect_pad(&x, 3)?)?)?.relu()?;
        for (c, n) in &self.down {
            y = n.forward(&c.forward(&y)?)?.relu()?;
        }
        for b in &self.blocks {
            y = b.forward(&y)?;
        }
        for (c, n) in &self.up {
            y = n.forward(&c.forward(&y)?)?.relu()?;
        }
        candle_nn::ops::sigmoid(&self.head.forward(&reflect_pad(&y, 3)?)?)
    }
}

/// One level of the U-Net, outermost first.
#[derive(Debug, Clone)]
struct UnetLevel {
    down: Conv2d,
    /// InstanceNorm after `down` (the levels between the outermost and the innermost).
    down_norm: Option<GroupNorm>,
    up: ConvTranspose,
    /// InstanceNorm after `up` (all but the outermost).
    up_norm: Option<GroupNorm>,
}

/// controlnet_aux's `lineart_anime.UnetGenerator(3, 1, depth, ngf)` with parameter-free
/// InstanceNorm: `netG.pth`.
#[derive(Debug, Clone)]
pub struct AnimeUnet {
    levels: Vec<UnetLevel>,
    device: Device,
}

impl AnimeUnet {
    /// Builds the net from `vb` (names without `module.`) with `depth` levels (at least 2).
    pub fn new(vb: VarBuilder, depth: usize) -> candle_core::Result<Self> {
        if depth < 2 {
            candle_core::bail!("a U-Net needs an outermost and an innermost level, found {depth}");
        }
        let device = vb.device().clone();
        let mut levels = Vec::with_capacity(depth);
        let mut prefix = "model.model".to_string();
        for i in 0..depth {
            let (outermost, innermost) = (i == 0, i + 1 == depth);
            // Sequential indices: outermost [down, sub, relu, up, tanh]; innermost [lrelu, down,
            // relu, up, norm]; others [lrelu, down, norm, sub, relu, up, norm].
            let (down, up) = match (outermost, innermost) {
                (true, _) => ("0", "3"),
                (false, true) => ("1", "3"),
                (false, false) => ("1", "5"),
            };
            let down = conv(&vb, &format!("{prefix}.{down}"), 2, 1)?;
            let up = ConvTranspose::load(&vb, &format!("{prefix}.{up}"), 2, 1, 0)?;
            let down_norm = if outermost || innermost {
                None
            } else {
                Some(instance_norm(out_channels(&down)?, &device)?)
            };
            let up_norm = if outermost {
                None
            } else {
                Some(instance_norm(up.out_channels()?, &device)?)
            };
            levels.push(UnetLevel {
                down,
                down_norm,
                up,
                up_norm,
            });
            prefix = if outermost {
                format!("{prefix}.1.model")
            } else {
                format!("{prefix}.3.model")
            };
        }
        Ok(Self { levels, device })
    }

    /// Reads the net from a state dict (the depth counted from its keys), in f32.
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        if !has(sd, "model.model.0.weight") {
            return Err(LoadError::new(
                sd.path(),
                LoadErrorKind::MissingTensor("model.model.0.weight".into()),
            ));
        }
        // Below the outermost level, a level with a submodule has its up-convolution at index 5.
        let mut depth = 1;
        let mut prefix = "model.model.1.model".to_string();
        while has(sd, &format!("{prefix}.5.weight")) {
            depth += 1;
            prefix.push_str(".3.model");
        }
        if has(sd, &format!("{prefix}.3.weight")) {
            depth += 1;
        }
        renaming(sd)
            .warn_unused("anime line art tensors not used by the network")
            .build(sd, DType::F32, device, |vb| Self::new(vb, depth))
    }

    /// The number of levels (each halves the size: H and W must be multiples of `2^depth`).
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// `[1, 3, H, W]` in -1..1 to the `[1, 1, H, W]` map in -1..1 (after the tanh).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.to_device(&self.device)?.to_dtype(DType::F32)?;
        self.level(0, &x)?.tanh()
    }

    fn level(&self, i: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        let Some(l) = self.levels.get(i) else {
            candle_core::bail!("U-Net level {i} out of range");
        };
        if i == 0 {
            let y = self.level(1, &l.down.forward(x)?)?;
            return l.up.forward(&y.relu()?);
        }
        // The reference's LeakyReLU is in place, so the skip connection carries the activated x.
        let x = candle_nn::ops::leaky_relu(x, 0.2)?;
        let mut y = l.down.forward(&x)?;
        if let Some(n) = &l.down_norm {
            y = n.forward(&y)?;
        }
        if i + 1 < self.levels.len() {
            y = self.level(i + 1, &y)?;
        }
        let mut y = l.up.forward(&y.relu()?)?;
        if let Some(n) = &l.up_norm {
            y = n.forward(&y)?;
        }
        Tensor::cat(&[&x, &y], 1)
    }
}

/// `LineArtPreprocessor`'s detector call per image (`LineartDetector.__call__`): pad to the
/// resolution, the net on `x / 255`, `uint8(clip(y * 255))`, inverted (white lines on black).
/// `[B, H, W, C]` in 0..1 to `[B, H', W', 3]`. `model` is `sk_model` or, for `coarse`, `sk_model2`.
pub fn lineart(image: &Tensor, model: &LineartGenerator, resolution: u32) -> Result<Tensor> {
    const OP: &str = "LineArtPreprocessor";
    let _span = tracing::trace_span!("lineart").entered();
    let cand = |source| PreprocessError::Candle { op: OP, source };
    run_aux(OP, image, |img| {
        let p =
            resize_image_with_pad(OP, img, detect_resolution(resolution), Interpolation::Cubic)?;
        let x = (image_tensor(OP, &p.image, &model.device)? / 255.0).map_err(cand)?;
        let y = model.forward(&x).and_then(|y| y * 255.0).map_err(cand)?;
        let (h, w, v) = map_values(OP, &y)?;
        Ok(hwc3(&p.remove_pad(&inverted(u8_from_clipped(h, w, &v)))))
    })
}

/// `AnimeLineArtPreprocessor`'s detector call per image (`LineartAnimeDetector.__call__` of the
/// ComfyUI pack): pad to the resolution, INTER_CUBIC to multiples of 256, the net on
/// `x / 127.5 - 1`, `uint8(clip(y * 127.5 + 127.5))`, INTER_AREA back to the padded size,
/// inverted. `[B, H, W, C]` in 0..1 to `[B, H', W', 3]`.
pub fn lineart_anime(image: &Tensor, model: &AnimeUnet, resolution: u32) -> Result<Tensor> {
    const OP: &str = "AnimeLineArtPreprocessor";
    let _span = tracing::trace_span!("lineart_anime").entered();
    let cand = |source| PreprocessError::Candle { op: OP, source };
    run_aux(OP, image, |img| {
        let p =
            resize_image_with_pad(OP, img, detect_resolution(resolution), Interpolation::Cubic)?;
        let (h, w) = (p.image.height, p.image.width);
        let feed = cv::resize(
            &p.image,
            w.next_multiple_of(256),
            h.next_multiple_of(256),
            Interpolation::Cubic,
        );
        let x = image_tensor(OP, &feed, &model.device)?
            .affine(1.0 / 127.5, -1.0)
            .map_err(cand)?;
        let y = model
            .forward(&x)
            .and_then(|y| y.affine(127.5, 127.5))
            .map_err(cand)?;
        let (lh, lw, v) = map_values(OP, &y)?;
        let line = cv::resize(&u8_from_clipped(lh, lw, &v), w, h, Interpolation::Area);
        Ok(hwc3(&p.remove_pad(&inverted(line))))
    })
}

/// `255 - x`.
fn inverted(mut img: ImageU8) -> ImageU8 {
    img.data.iter_mut().for_each(|v| *v = 255 - *v);
    img
}
