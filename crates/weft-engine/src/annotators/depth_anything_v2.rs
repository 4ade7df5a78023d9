//! Depth Anything V2 (relative depth), as comfyui_controlnet_aux's `DepthAnythingV2Detector` runs
//! it: a DINOv2 ViT (`pretrained.*`: 14-pixel patches, a class token, a position table resized
//! bicubically to the patch grid, pre-norm blocks with layer scale) whose four intermediate layers
//! feed a DPT head (`depth_head.*`: projections, resize layers, `scratch` fusion blocks, output
//! convolutions). Weights in the published `depth_anything_v2_vit{s,b,l,g}.pth` layout; every size
//! is read from their shapes (the heads are 64 wide in all published sizes).
//!
//! The detector call: the uint8 image (not resized to the `resolution`) is scaled up or down with
//! cv2 bicubic in f64 so both sides are at least 518 and multiples of 14 (`Resize(...,
//! 'lower_bound')`), normalised with ImageNet's mean and deviation, run, the depth resized back
//! bilinearly (corners aligned), min-max scaled to 0..255 and truncated, and that map goes through
//! `resize_image_with_pad` to the resolution (bicubic up, area down).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

pub use super::dpt::Ffn;
use super::dpt::{DepthOut, Refine, Resize, VitBlock};
use super::{load_published, map_values, u8_from_clipped};
use crate::load::file::StateDict;
use crate::load::LoadError;
use crate::ops::conv::{conv2d, Conv2d};
use crate::ops::layers::{layer_norm, LayerNorm};
use crate::preprocess::aux::{detect_resolution, hwc3, resize_image_with_pad};
use crate::preprocess::cv::{resize_cubic_f64, Interpolation};
use crate::preprocess::{run_aux, ImageU8, PreprocessError, Result};
use crate::resize::cubic_weights;

const OP: &str = "DepthAnythingV2";

/// The side the image is scaled to at least (`infer_image(input_size=518)`).
const INPUT_SIZE: usize = 518;
/// Every published DINOv2 size has 64-wide heads (384/6, 768/12, 1024/16, 1536/24).
const HEAD_DIM: usize = 64;
/// DINOv2's `interpolate_offset`, added to the grid before the position table is rescaled.
const POS_OFFSET: f64 = 0.1;
const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const STD: [f64; 3] = [0.229, 0.224, 0.225];

/// The shape of a Depth Anything V2 network, read from its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// ViT width.
    pub embed_dim: usize,
    /// Number of ViT blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// The blocks' feed-forward layer.
    pub ffn: Ffn,
    /// Patch side (14).
    pub patch: usize,
    /// Side of the stored (square) position table's patch grid (37 for 518).
    pub pos_side: usize,
    /// The blocks whose outputs feed the head.
    pub layers: [usize; 4],
    /// DPT fusion width (`features`).
    pub features: usize,
    /// DPT projection widths (`out_channels`).
    pub out_channels: [usize; 4],
    /// Width of the last hidden convolution (32).
    pub head_hidden: usize,
}

/// The blocks Depth Anything V2 takes for a ViT of `depth` blocks: the ends of the four quarters
/// (ViT-S/B `[2, 5, 8, 11]`, ViT-g `[9, 19, 29, 39]`), except ViT-L's `[4, 11, 17, 23]`.
pub fn intermediate_layers(depth: usize) -> [usize; 4] {
    if depth == 24 {
        return [4, 11, 17, 23];
    }
    [1, 2, 3, 4].map(|k| (k * depth / 4).saturating_sub(1))
}

impl Config {
    /// The configuration the tensor shapes of a published-layout file imply.
    pub fn detect(shapes: &HashMap<String, Vec<usize>>) -> std::result::Result<Self, String> {
        let shape = |name: &str| {
            shapes
                .get(name)
                .map(Vec::as_slice)
                .ok_or_else(|| format!("missing tensor '{name}' (not a Depth Anything V2 file?)"))
        };
        let dim = |name: &str, i: usize| -> std::result::Result<usize, String> {
            shape(name)?
                .get(i)
                .copied()
                .ok_or_else(|| format!("tensor '{name}' has too few dimensions"))
        };
        let embed_dim = dim("pretrained.cls_token", 2)?;
        let patch = dim("pretrained.patch_embed.proj.weight", 2)?;
        let tokens = dim("pretrained.pos_embed", 1)?;
        let pos_side = ((tokens.saturating_sub(1)) as f64).sqrt().round() as usize;
        if pos_side * pos_side + 1 != tokens {
            return Err(format!(
                "position table of {tokens} tokens is not a class token and a square grid"
            ));
        }
        let depth = (0..)
            .take_while(|i| shapes.contains_key(&format!("pretrained.blocks.{i}.norm1.weight")))
            .count();
        if depth < 4 {
            return Err(format!("{depth} ViT blocks, the head needs at least 4"));
        }
        if embed_dim % HEAD_DIM != 0 {
            return Err(format!(
                "ViT width {embed_dim} is not a multiple of the {HEAD_DIM}-wide heads"
            ));
        }
        let ffn = if shapes.contains_key("pretrained.blocks.0.mlp.w12.weight") {
            Ffn::SwiGlu(dim("pretrained.blocks.0.mlp.w3.weight", 1)?)
        } else {
            Ffn::Mlp(dim("pretrained.blocks.0.mlp.fc1.weight", 0)?)
        };
        let mut out_channels = [0; 4];
        for (i, c) in out_channels.iter_mut().enumerate() {
            *c = dim(&format!("depth_head.projects.{i}.weight"), 0)?;
        }
        Ok(Config {
            embed_dim,
            depth,
            heads: embed_dim / HEAD_DIM,
            ffn,
            patch,
            pos_side,
            layers: intermediate_layers(depth),
            features: dim("depth_head.scratch.layer1_rn.weight", 0)?,
            out_channels,
            head_hidden: dim("depth_head.scratch.output_conv2.0.weight", 0)?,
        })
    }
}

/// The DINOv2 backbone.
#[derive(Debug)]
struct Vit {
    patch_embed: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<VitBlock>,
    norm: LayerNorm,
}

impl Vit {
    fn new(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let d = cfg.embed_dim;
        let patch = Conv2dConfig {
            stride: cfg.patch,
            ..Default::default()
        };
        Ok(Vit {
            patch_embed: conv2d(3, d, cfg.patch, patch, vb.pp("patch_embed.proj"))?,
            cls_token: vb.get((1, 1, d), "cls_token")?,
            pos_embed: vb.get((1, cfg.pos_side * cfg.pos_side + 1, d), "pos_embed")?,
            blocks: (0..cfg.depth)
                .map(|i| VitBlock::new(vb.pp(format!("blocks.{i}")), d, cfg.heads, cfg.ffn, true))
                .collect::<candle_core::Result<_>>()?,
            norm: layer_norm(d, 1e-6, vb.pp("norm"))?,
        })
    }

    /// `interpolate_pos_encoding`: the stored grid rescaled to `gh x gw` by torch's bicubic
    /// (A = -0.75, borders clamped) with the scale factors `(g + 0.1) / side` DINOv2 passes,
    /// which also place the samples; kept as is for the stored square grid.
    fn position_table(&self, gh: usize, gw: usize) -> candle_core::Result<Tensor> {
        let (_, tokens, d) = self.pos_embed.dims3()?;
        let side = ((tokens - 1) as f64).sqrt() as usize;
        if gh == side && gw == side {
            return Ok(self.pos_embed.clone());
        }
        let taps = |out: usize| -> Vec<[(usize, f32); 4]> {
            // torch: `1 / scale_factor` and the source index in f32
            let inv = (1.0 / ((out as f64 + POS_OFFSET) / side as f64)) as f32;
            (0..out)
                .map(|o| {
                    let src = inv * (o as f32 + 0.5) - 0.5;
                    let i = src.floor();
                    let w = cubic_weights(f64::from(src - i));
                    std::array::from_fn(|k| {
                        let idx = (i as i64 - 1 + k as i64).clamp(0, side as i64 - 1) as usize;
                        (idx, w[k] as f32)
                    })
                })
                .collect()
        };
        let (rows, cols) = (taps(gh), taps(gw));
        let table: Vec<f32> = self
            .pos_embed
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let grid = &table[d..];
        let mut out = table[..d].to_vec();
        out.reserve(gh * gw * d);
        for r in &rows {
            for c in &cols {
                let mut v = vec![0f32; d];
                for &(y, wy) in r {
                    for &(x, wx) in c {
                        let w = wy * wx;
                        let src = &grid[(y * side + x) * d..(y * side + x + 1) * d];
                        for (acc, s) in v.iter_mut().zip(src) {
                            *acc += w * s;
                        }
                    }
                }
                out.extend(v);
            }
        }
        Tensor::from_vec(out, (1, 1 + gh * gw, d), self.pos_embed.device())
    }

    /// The normed patch tokens `[B, gh*gw, D]` after each of `layers`.
    fn intermediate(&self, x: &Tensor, layers: &[usize; 4]) -> candle_core::Result<Vec<Tensor>> {
        let b = x.dim(0)?;
        let tokens = self.patch_embed.forward(x)?;
        let (_, d, gh, gw) = tokens.dims4()?;
        let tokens = tokens.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?;
        let mut x =
            Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.position_table(gh, gw)?)?;
        let mut out = Vec::with_capacity(4);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if layers.contains(&i) {
                out.push(self.norm.forward(&x)?.narrow(1, 1, gh * gw)?);
            }
        }
        Ok(out)
    }
}

/// The DPT head.
#[derive(Debug)]
struct DptHead {
    projects: Vec<Conv2d>,
    resize: [Resize; 4],
    refine: Refine,
    out: DepthOut,
}

impl DptHead {
    fn new(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        let oc = cfg.out_channels;
        let f = cfg.features;
        let resize = Resize::dpt(oc, |i| vb.pp(format!("resize_layers.{i}")))?;
        let scratch = vb.pp("scratch");
        let one = Conv2dConfig::default();
        Ok(DptHead {
            projects: (0..4)
                .map(|i| conv2d(cfg.embed_dim, oc[i], 1, one, vb.pp(format!("projects.{i}"))))
                .collect::<candle_core::Result<_>>()?,
            resize,
            refine: Refine::new(scratch.clone(), oc, f)?,
            out: DepthOut::new(
                [
                    scratch.pp("output_conv1"),
                    scratch.pp("output_conv2.0"),
                    scratch.pp("output_conv2.2"),
                ],
                f,
                cfg.head_hidden,
            )?,
        })
    }

    /// `[B, 1, 14 gh, 14 gw]` from the four token maps `[B, gh*gw, D]`.
    fn forward(
        &self,
        features: &[Tensor],
        gh: usize,
        gw: usize,
        patch: usize,
    ) -> candle_core::Result<Tensor> {
        let mut layers = Vec::with_capacity(4);
        for (i, x) in features.iter().enumerate() {
            let (b, _, d) = x.dims3()?;
            let x = x.transpose(1, 2)?.reshape((b, d, gh, gw))?;
            let x = self.projects[i].forward(&x)?;
            layers.push(self.resize[i].forward(x)?);
        }
        let maps: [Tensor; 4] = layers
            .try_into()
            .map_err(|_| candle_core::Error::Msg("the DPT head takes four layers".into()))?;
        let path = self.refine.forward(&maps)?;
        self.out.forward(&path, (gh * patch, gw * patch))
    }
}

/// A Depth Anything V2 network.
#[derive(Debug)]
pub struct DepthAnythingV2 {
    config: Config,
    vit: Vit,
    head: DptHead,
    device: Device,
}

impl DepthAnythingV2 {
    /// Builds the net from `vb` (the published names).
    pub fn new(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        Ok(DepthAnythingV2 {
            vit: Vit::new(vb.pp("pretrained"), config)?,
            head: DptHead::new(vb.pp("depth_head"), config)?,
            device: vb.device().clone(),
            config: config.clone(),
        })
    }

    /// Reads a published-layout file (`depth_anything_v2_vits.pth`, ...) in f32 onto `device`.
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        load_published(sd, device, Config::detect, DepthAnythingV2::new)
    }

    /// Its shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The relative depth `[B, H, W]` of normalised pixels `[B, 3, H, W]` (sides multiples of
    /// the patch), `forward(x, max_depth=1)`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let p = self.config.patch;
        let features = self.vit.intermediate(x, &self.config.layers)?;
        self.head.forward(&features, h / p, w / p, p)?.squeeze(1)
    }

    /// `infer_image(image, 518)`: the depth of one uint8 RGB image at its own size, `[H, W]`.
    pub fn infer_image(&self, img: &ImageU8) -> Result<Tensor> {
        let cand = |source| PreprocessError::Candle { op: OP, source };
        let (h, w) = (img.height, img.width);
        if h == 0 || w == 0 {
            return Err(PreprocessError::TooSmall {
                op: OP,
                height: h,
                width: w,
                reason: "the image is empty",
            });
        }
        let (nh, nw) = input_size(h, w, self.config.patch);
        let x = normalised_input(img, nh, nw, &self.device)?;
        let depth = self.forward(&x).map_err(cand)?;
        depth
            .unsqueeze(1)
            .and_then(|d| d.upsample_bilinear2d(h, w, true))
            .and_then(|d| d.reshape((h, w)))
            .map_err(cand)
    }

    /// `DepthAnythingV2Detector.__call__` on one uint8 image: the depth min-max scaled to a uint8
    /// map, three channels, sized to `resolution` by `resize_image_with_pad` (pad removed).
    pub fn detect(&self, img: &ImageU8, resolution: u32) -> Result<ImageU8> {
        let img = hwc3(img);
        let depth = self.infer_image(&img)?;
        let (h, w, values) = map_values(OP, &depth)?;
        let (lo, hi) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        // numpy in f32: (d - min) / (max - min) * 255, then truncated (a flat map is NaN -> 0)
        let scaled: Vec<f32> = values
            .iter()
            .map(|&v| (v - lo) / (hi - lo) * 255.0)
            .collect();
        let map = u8_from_clipped(h, w, &scaled);
        let padded = resize_image_with_pad(
            OP,
            &map,
            detect_resolution(resolution),
            Interpolation::Cubic,
        )?;
        Ok(padded.remove_pad(&padded.image))
    }
}

/// `Resize(518, 518, keep_aspect_ratio, ensure_multiple_of=14, 'lower_bound')`: one scale that
/// brings both sides to at least 518, each side then rounded (half to even) to a multiple of the
/// patch, or rounded up where that falls below 518. Returns `(height, width)`.
pub fn input_size(h: usize, w: usize, patch: usize) -> (usize, usize) {
    let target = INPUT_SIZE as f64;
    let scale = (target / h as f64).max(target / w as f64);
    let fit = |x: f64| {
        let m = patch as f64;
        let y = (x / m).round_ties_even() * m;
        if y < target {
            (x / m).ceil() * m
        } else {
            y
        }
    };
    (
        fit(scale * h as f64) as usize,
        fit(scale * w as f64) as usize,
    )
}

/// The image / 255 in f64, cv2-bicubic resized to `nh x nw`, normalised, as `[1, 3, nh, nw]` f32.
fn normalised_input(img: &ImageU8, nh: usize, nw: usize, device: &Device) -> Result<Tensor> {
    let (h, w) = (img.height, img.width);
    let mut data = Vec::with_capacity(3 * nh * nw);
    for ch in 0..3 {
        let plane: Vec<f64> = (0..h * w)
            .map(|i| f64::from(img.data[i * img.channels + ch]) / 255.0)
            .collect();
        data.extend(
            resize_cubic_f64(&plane, h, w, nh, nw)
                .into_iter()
                .map(|v| ((v - MEAN[ch]) / STD[ch]) as f32),
        );
    }
    Tensor::from_vec(data, (1, 3, nh, nw), device)
        .map_err(|source| PreprocessError::Candle { op: OP, source })
}

/// The `DepthAnythingV2Preprocessor` node's result for an IMAGE `[B, H, W, C]` (0..1): each
/// image through [`DepthAnythingV2::detect`] as `common_annotator_call` runs it.
pub fn depth_anything_v2(
    model: &DepthAnythingV2,
    image: &Tensor,
    resolution: u32,
) -> Result<Tensor> {
    run_aux(OP, image, |img| model.detect(img, resolution))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_follow_the_published_configs() {
        assert_eq!(intermediate_layers(12), [2, 5, 8, 11]);
        assert_eq!(intermediate_layers(24), [4, 11, 17, 23]);
        assert_eq!(intermediate_layers(40), [9, 19, 29, 39]);
        assert_eq!(intermediate_layers(4), [0, 1, 2, 3]);
    }

    #[test]
    fn input_is_at_least_518_in_multiples_of_14() {
        assert_eq!(input_size(64, 64, 14), (518, 518));
        // 128 * 518/96 = 690.67 -> 49.33 patches -> 686
        assert_eq!(input_size(96, 128, 14), (518, 686));
        assert_eq!(input_size(1024, 512, 14), (1036, 518));
        // the long side: 700 * 518/600 = 604.3 -> 43 patches
        assert_eq!(input_size(700, 600, 14), (602, 518));
    }
}
