//! PiDiNet soft edges: `table5_pidinet.pth` (controlnet_aux's `pidinet()`: the `carv4` layout of
//! pixel-difference convolutions, CDCM dilation modules and CSAM attention) and the detector call
//! of comfyui_controlnet_aux's `PiDiNetPreprocessor` and `Scribble_PiDiNet_Preprocessor`.
//!
//! The published file holds `{"state_dict": {"module.<name>": ...}}` with the trained
//! pixel-difference kernels. The aux code runs them as such (`cd`: the kernel minus its sum at the
//! centre tap; `ad`: the kernel minus its clockwise rotation; `rd`: the eight outer taps spread to
//! a 5x5 ring, their negatives on the inner ring); all three are linear in the input, so they are
//! folded into plain kernels at load (PiDiNet's `convert_pidinet`). Widths, the dilation width
//! and whether CDCM/CSAM are present come from the weights.

use std::sync::Arc;

use candle_core::{Device, Module, Tensor};
use candle_nn::Conv2dConfig;

use crate::load::file::StateDict;
use crate::load::{LoadError, LoadErrorKind};
use crate::ops::conv::Conv2d;
use crate::preprocess::{ImageU8, PreprocessError, Result};

use super::hed::{conv_config, detect, grey, safe_u8, scribble, trunc_u8, Weights};
use super::map_values;

/// The pixel-difference type of each of the 16 layers in `carv4` (the init block, then the
/// blocks in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pdc {
    /// Central difference.
    Cd,
    /// Angular difference.
    Ad,
    /// Radial difference (a 5x5 kernel).
    Rd,
    /// A plain convolution.
    Cv,
}

const CARV4: [Pdc; 4] = [Pdc::Cd, Pdc::Ad, Pdc::Rd, Pdc::Cv];

/// The plain kernel that computes `pdc` with the 3x3 kernels `w` (`[out, in, 3, 3]` flattened);
/// returns it with its size.
fn fold(pdc: Pdc, w: &[f32]) -> (Vec<f32>, usize) {
    match pdc {
        Pdc::Cv => (w.to_vec(), 3),
        Pdc::Cd => {
            let mut out = w.to_vec();
            for k in out.chunks_exact_mut(9) {
                let sum: f32 = k.iter().sum();
                k[4] -= sum;
            }
            (out, 3)
        }
        Pdc::Ad => {
            const CLOCKWISE: [usize; 9] = [3, 0, 1, 6, 4, 2, 7, 8, 5];
            let out = w
                .chunks_exact(9)
                .flat_map(|k| (0..9).map(move |i| k[i] - k[CLOCKWISE[i]]))
                .collect();
            (out, 3)
        }
        Pdc::Rd => {
            const OUTER: [usize; 8] = [0, 2, 4, 10, 14, 20, 22, 24];
            const INNER: [usize; 8] = [6, 7, 8, 11, 13, 16, 17, 18];
            let out = w
                .chunks_exact(9)
                .flat_map(|k| {
                    let mut r = [0f32; 25];
                    for j in 0..8 {
                        r[OUTER[j]] = k[j + 1];
                        r[INNER[j]] = -k[j + 1];
                    }
                    r
                })
                .collect();
            (out, 5)
        }
    }
}

#[derive(Debug)]
struct PdcBlock {
    /// The 2x2 max pool and 1x1 shortcut of the blocks that halve the size.
    shortcut: Option<Conv2d>,
    /// Depthwise, folded from its pixel-difference kernel.
    conv1: Conv2d,
    conv2: Conv2d,
}

impl PdcBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match self.shortcut {
            Some(_) => x.max_pool2d(2)?,
            None => x.clone(),
        };
        let y = self.conv2.forward(&self.conv1.forward(&x)?.relu()?)?;
        match &self.shortcut {
            Some(s) => y + s.forward(&x)?,
            None => y + x,
        }
    }
}

/// CDCM: ReLU, 1x1, then the sum of four 3x3 convolutions dilated 5, 7, 9 and 11.
#[derive(Debug)]
struct Cdcm {
    conv1: Conv2d,
    dilated: Vec<Conv2d>,
}

/// CSAM: the features times `sigmoid(conv3x3(conv1x1(relu(x))))`.
#[derive(Debug)]
struct Csam {
    conv1: Conv2d,
    conv2: Conv2d,
}

/// One of the four side outputs: optional CDCM and CSAM, then a 1x1 to one channel.
#[derive(Debug)]
struct Side {
    dilation: Option<Cdcm>,
    attention: Option<Csam>,
    reduce: Conv2d,
}

impl Side {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        if let Some(d) = &self.dilation {
            let y = d.conv1.forward(&x.relu()?)?;
            let mut sum = d.dilated[0].forward(&y)?;
            for conv in &d.dilated[1..] {
                sum = (sum + conv.forward(&y)?)?;
            }
            x = sum;
        }
        if let Some(a) = &self.attention {
            let y = a.conv2.forward(&a.conv1.forward(&x.relu()?)?)?;
            x = x.broadcast_mul(&candle_nn::ops::sigmoid(&y)?)?;
        }
        self.reduce.forward(&x)
    }
}

/// PiDiNet with its pixel-difference convolutions folded.
#[derive(Debug)]
pub struct PiDiNet {
    init_block: Conv2d,
    /// Blocks per stage: 3, 4, 4, 4.
    stages: Vec<Vec<PdcBlock>>,
    sides: Vec<Side>,
    classifier: Conv2d,
    device: Device,
}

const STAGE_BLOCKS: [usize; 4] = [3, 4, 4, 4];

impl PiDiNet {
    /// Builds the net from `table5_pidinet.pth`'s tensors (`module.`-prefixed, or bare), in f32
    /// on `device`.
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        let prefix = if sd.contains("module.init_block.weight") {
            "module."
        } else {
            ""
        };
        let w = Weights::new(sd, prefix, device);
        let inplane = *w.shape("init_block.weight")?.first().unwrap_or(&0);
        let init_block = pdc_conv(&w, "init_block", 3, 1, CARV4[0])?;
        let mut layer = 1;
        let mut channels = inplane;
        let mut stages = Vec::new();
        let mut fuse_planes = Vec::new();
        for (s, &count) in STAGE_BLOCKS.iter().enumerate() {
            let mut blocks = Vec::new();
            for j in 1..=count {
                let name = format!("block{}_{j}", s + 1);
                let shortcut = if w.has(&format!("{name}.shortcut.weight")) {
                    let (conv, out) =
                        w.conv(&format!("{name}.shortcut"), channels, 1, conv_config(0, 1))?;
                    Some((conv, out))
                } else {
                    None
                };
                let conv1 = pdc_conv(
                    &w,
                    &format!("{name}.conv1"),
                    channels,
                    channels,
                    CARV4[layer % 4],
                )?;
                let (conv2, out) =
                    w.conv(&format!("{name}.conv2"), channels, 1, conv_config(0, 1))?;
                if shortcut.is_none() && out != channels {
                    return Err(w.error(LoadErrorKind::BadConfig(format!(
                        "{name} changes {channels} channels to {out} without a shortcut"
                    ))));
                }
                blocks.push(PdcBlock {
                    shortcut: shortcut.map(|(c, _)| c),
                    conv1,
                    conv2,
                });
                channels = out;
                layer += 1;
            }
            stages.push(blocks);
            fuse_planes.push(channels);
        }
        let sides = fuse_planes
            .iter()
            .enumerate()
            .map(|(i, &planes)| side(&w, i, planes))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let (classifier, _) = w.conv("classifier", sides.len(), 1, conv_config(0, 1))?;
        Ok(Self {
            init_block,
            stages,
            sides,
            classifier,
            device: device.clone(),
        })
    }

    /// The fused edge map `sigmoid(classifier([e1..e4]))`, `[1, 1, H, W]`, of `x` `[1, 3, H, W]`
    /// (BGR, 0..1); the side outputs are resized bilinearly (half-pixel centres) to `H x W`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut x = self.init_block.forward(x)?;
        let mut edges = Vec::with_capacity(self.sides.len());
        for (stage, side) in self.stages.iter().zip(&self.sides) {
            for block in stage {
                x = block.forward(&x)?;
            }
            let e = side.forward(&x)?;
            edges.push(if e.dims()[2..] == [h, w] {
                e
            } else {
                e.upsample_bilinear2d(h, w, false)?
            });
        }
        candle_nn::ops::sigmoid(&self.classifier.forward(&Tensor::cat(&edges, 1)?)?)
    }

    /// The detector's sigmoid map for a padded uint8 RGB image (flipped to BGR, `/ 255` in f32).
    /// Returns `(H, W, values)`.
    pub fn edge_map(&self, img: &ImageU8) -> Result<(usize, usize, Vec<f32>)> {
        const OP: &str = "PiDiNet";
        let (h, w, c) = (img.height, img.width, img.channels);
        let mut data = vec![0f32; 3 * h * w];
        for (i, px) in img.data.chunks_exact(c).enumerate() {
            for k in 0..3 {
                data[k * h * w + i] = f32::from(px[(2 - k).min(c - 1)]) / 255.0;
            }
        }
        let x = Tensor::from_vec(data, (1, 3, h, w), &self.device)
            .map_err(|source| PreprocessError::Candle { op: OP, source })?;
        let map = self
            .forward(&x)
            .map_err(|source| PreprocessError::Candle { op: OP, source })?;
        map_values(OP, &map)
    }
}

/// Layer `pdc`'s convolution `name` (no bias): the init block (`groups` 1, `in_channels` 3) or a
/// block's depthwise `conv1` (`groups == in_channels`), folded to a plain kernel.
fn pdc_conv(
    w: &Weights,
    name: &str,
    in_channels: usize,
    groups: usize,
    pdc: Pdc,
) -> std::result::Result<Conv2d, LoadError> {
    let key = format!("{name}.weight");
    let weight = w.cpu(&key, &[None, Some(in_channels / groups), Some(3), Some(3)])?;
    let out = weight.dim(0).map_err(|e| w.error(e.into()))?;
    if groups > 1 && out != in_channels {
        return Err(w.error(LoadErrorKind::BadConfig(format!(
            "{name} is depthwise over {in_channels} channels but has {out} kernels"
        ))));
    }
    let values = weight
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| w.error(e.into()))?;
    let (folded, k) = fold(pdc, &values);
    let kernel = Tensor::from_vec(folded, (out, in_channels / groups, k, k), &Device::Cpu)
        .map_err(|e| w.error(e.into()))?;
    Ok(Conv2d::new(
        w.to_device(kernel)?,
        None,
        Conv2dConfig {
            padding: k / 2,
            groups,
            ..Default::default()
        },
    ))
}

/// Side output `i` over `planes` channels: `dilations.i` and `attentions.i` when present.
fn side(w: &Weights, i: usize, planes: usize) -> std::result::Result<Side, LoadError> {
    let mut channels = planes;
    let dilation = if w.has(&format!("dilations.{i}.conv1.weight")) {
        let (conv1, dil) = w.conv(
            &format!("dilations.{i}.conv1"),
            planes,
            1,
            conv_config(0, 1),
        )?;
        let dilated = [5, 7, 9, 11]
            .iter()
            .enumerate()
            .map(|(k, &d)| {
                w.conv(
                    &format!("dilations.{i}.conv2_{}", k + 1),
                    dil,
                    3,
                    conv_config(d, d),
                )
                .map(|(c, _)| c)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        channels = dil;
        Some(Cdcm { conv1, dilated })
    } else {
        None
    };
    let attention = if w.has(&format!("attentions.{i}.conv1.weight")) {
        let (conv1, mid) = w.conv(
            &format!("attentions.{i}.conv1"),
            channels,
            1,
            conv_config(0, 1),
        )?;
        let (conv2, _) = w.conv(&format!("attentions.{i}.conv2"), mid, 3, conv_config(1, 1))?;
        Some(Csam { conv1, conv2 })
    } else {
        None
    };
    let (reduce, _) = w.conv(
        &format!("conv_reduces.{i}.conv"),
        channels,
        1,
        conv_config(0, 1),
    )?;
    Ok(Side {
        dilation,
        attention,
        reduce,
    })
}

/// Options of `PiDiNetPreprocessor` / `Scribble_PiDiNet_Preprocessor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidiOptions {
    /// `safe == "enable"`.
    pub safe: bool,
    /// `Scribble_PiDiNet_Preprocessor`: the detector's scribble step, and the node's second one on
    /// the cropped result.
    pub scribble: bool,
    /// `resolution` (default 512).
    pub resolution: u32,
}

/// The PiDiNet detector over an IMAGE `[B, H, W, C]` (0..1): per image, the aux uint8 round trip,
/// `resize_image_with_pad` (INTER_CUBIC), the net, the safe step, uint8 (`f32 * 255`, truncated),
/// `remove_pad`; for the scribble node the scribble step before `remove_pad` and again after it.
/// Returns `[B, H', W', 3]`.
pub fn pidinet(net: &PiDiNet, image: &Tensor, opts: &PidiOptions) -> Result<Tensor> {
    let op = if opts.scribble {
        "Scribble_PiDiNet_Preprocessor"
    } else {
        "PiDiNetPreprocessor"
    };
    let _span = tracing::trace_span!("pidinet").entered();
    let map = |img: &ImageU8| {
        let (h, w, edge) = net.edge_map(img)?;
        let levels = edge.iter().map(|&e| {
            if opts.safe {
                safe_u8(e)
            } else {
                trunc_u8(f64::from(e * 255.0))
            }
        });
        Ok(grey(h, w, levels))
    };
    detect(op, image, opts.resolution, map, |padded, map| {
        if opts.scribble {
            scribble(&padded.remove_pad(&scribble(&map)))
        } else {
            padded.remove_pad(&map)
        }
    })
}
