//! OneFormer's pixel decoder (`OneFormerPixelDecoder`, Mask2Former's): the three coarsest Swin
//! maps projected to `conv_dim` (1x1 convolution + GroupNorm(32)), flattened with sine positions
//! plus a per-level embedding, through the multi-scale deformable-attention encoder layers, split
//! back into maps; one FPN step adds the finest Swin map (lateral 1x1 + GroupNorm, the coarser
//! map resized bilinearly, a 3x3 convolution + GroupNorm + ReLU); the mask features are that map
//! through `mask_projection`.
//!
//! The deformable attention samples each head's values at 4 points per level around the query's
//! reference point as `grid_sample(bilinear, padding_mode="zeros", align_corners=False)` does,
//! weighted by a softmax over the 12 (level, point) pairs; torch's arithmetic order is kept where
//! it decides rounding (`2 * loc - 1`, then `((g + 1) * W - 1) / 2`).

use candle_core::{Device, Module, Result, Tensor};
use rayon::prelude::*;

use super::Net;
use crate::annotators::{interpolate_axis, Conv, Pad};
use crate::ops::layers::{LayerNorm, Linear};
use crate::ops::norm::GroupNorm;
use crate::sampling::model_sampling::linspace_f32;

const PREFIX: &str = "model.pixel_level_module.decoder";
/// `OneFormerPixelDecoderEncoderLayer`'s fixed levels and points.
const LEVELS: usize = 3;
const POINTS: usize = 4;

/// `OneFormerSinePositionEmbedding(channels / 2, normalize=True)` of an `h` x `w` map:
/// `[1, channels, h, w]`, y features then x features, sin and cos alternating.
pub fn sine_position(channels: usize, h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let feats = channels / 2;
    let scale = 2.0 * std::f32::consts::PI;
    let dim_t: Vec<f32> = (0..feats)
        .map(|i| 10000f32.powf(2.0 * (i / 2) as f32 / feats as f32))
        .collect();
    let embed = |n: usize| -> Vec<Vec<f32>> {
        (1..=n)
            .map(|p| {
                let e = p as f32 / (n as f32 + 1e-6) * scale;
                dim_t
                    .iter()
                    .enumerate()
                    .map(|(k, d)| {
                        let v = e / d;
                        if k % 2 == 0 {
                            v.sin()
                        } else {
                            v.cos()
                        }
                    })
                    .collect()
            })
            .collect()
    };
    let (ys, xs) = (embed(h), embed(w));
    let mut out = vec![0f32; 2 * feats * h * w];
    for k in 0..feats {
        for y in 0..h {
            for x in 0..w {
                out[(k * h + y) * w + x] = ys[y][k];
                out[((feats + k) * h + y) * w + x] = xs[x][k];
            }
        }
    }
    Tensor::from_vec(out, (1, 2 * feats, h, w), device)
}

#[derive(Debug)]
struct DeformLayer {
    sampling_offsets: Linear,
    attention_weights: Linear,
    value_proj: Linear,
    output_proj: Linear,
    norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    norm2: LayerNorm,
}

/// A convolution followed by GroupNorm(32).
#[derive(Debug)]
struct ConvNorm {
    conv: Conv,
    norm: GroupNorm,
}

impl ConvNorm {
    fn new(net: &Net, name: &str, pad: usize, eps: f64) -> Result<Self> {
        let conv = net.conv(&format!("{name}.0"), None, 1, Pad::Fixed(pad))?;
        let c = conv.out_channels();
        let norm = GroupNorm::new(
            net.get(&format!("{name}.1.weight"))?,
            net.get(&format!("{name}.1.bias"))?,
            c,
            32,
            eps,
        )?;
        Ok(ConvNorm { conv, norm })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(&self.conv.forward(x)?)
    }
}

/// The pixel decoder.
#[derive(Debug)]
pub struct PixelDecoder {
    input_projections: Vec<ConvNorm>,
    level_embed: Tensor,
    layers: Vec<DeformLayer>,
    heads: usize,
    adapter: ConvNorm,
    layer: ConvNorm,
    mask_projection: Conv,
}

/// The pixel decoder's outputs.
pub struct PixelOutput {
    /// The three encoder levels, coarsest first (strides 32, 16, 8), `[1, C, H, W]`.
    pub multi_scale: Vec<Tensor>,
    /// `[1, mask_dim, H/4, W/4]`.
    pub mask_features: Tensor,
}

impl PixelDecoder {
    /// Sizes from the weights: `conv_dim` from the projections, the heads from
    /// `sampling_offsets` (heads x 3 levels x 4 points x 2).
    pub(crate) fn new(net: &Net, eps: f64) -> Result<Self> {
        let input_projections = (0..LEVELS)
            .map(|l| ConvNorm::new(net, &format!("{PREFIX}.input_projections.{l}"), 0, 1e-5))
            .collect::<Result<Vec<_>>>()?;
        let layers = (0..)
            .map(|i| format!("{PREFIX}.encoder.layers.{i}"))
            .take_while(|p| net.has(&format!("{p}.fc1.weight")))
            .map(|p| {
                let attn = |n: &str| net.linear(&format!("{p}.self_attn.{n}"));
                Ok(DeformLayer {
                    sampling_offsets: attn("sampling_offsets")?,
                    attention_weights: attn("attention_weights")?,
                    value_proj: attn("value_proj")?,
                    output_proj: attn("output_proj")?,
                    norm1: net.layer_norm(&format!("{p}.self_attn_layer_norm"), eps)?,
                    fc1: net.linear(&format!("{p}.fc1"))?,
                    fc2: net.linear(&format!("{p}.fc2"))?,
                    norm2: net.layer_norm(&format!("{p}.final_layer_norm"), eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let offsets = net.shape(&format!(
            "{PREFIX}.encoder.layers.0.self_attn.sampling_offsets.weight"
        ))?;
        let heads = offsets[0] / (LEVELS * POINTS * 2);
        let conv_dim = offsets[1];
        if heads == 0
            || !conv_dim.is_multiple_of(heads)
            || offsets[0] != heads * LEVELS * POINTS * 2
        {
            candle_core::bail!("sampling offsets of shape {offsets:?}");
        }
        Ok(PixelDecoder {
            input_projections,
            level_embed: net.get(&format!("{PREFIX}.level_embed"))?,
            layers,
            heads,
            adapter: ConvNorm::new(net, &format!("{PREFIX}.adapter_1"), 0, 1e-5)?,
            layer: ConvNorm::new(net, &format!("{PREFIX}.layer_1"), 1, 1e-5)?,
            mask_projection: net.conv(
                &format!("{PREFIX}.mask_projection"),
                None,
                1,
                Pad::Fixed(0),
            )?,
        })
    }

    /// The attention heads (shared with the transformer decoder: `num_attention_heads`).
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// `features`: the four Swin maps, finest first.
    pub fn forward(&self, features: &[Tensor; 4]) -> Result<PixelOutput> {
        let device = features[0].device();
        let mut sources = vec![];
        let mut positions = vec![];
        let mut shapes = vec![];
        for (l, proj) in self.input_projections.iter().enumerate() {
            let source = proj.forward(&features[3 - l])?;
            let (_, c, h, w) = source.dims4()?;
            shapes.push((h, w));
            sources.push(source.flatten_from(2)?.squeeze(0)?.t()?);
            let pos = sine_position(c, h, w, device)?
                .flatten_from(2)?
                .squeeze(0)?
                .t()?;
            positions.push(pos.broadcast_add(&self.level_embed.get(l)?.unsqueeze(0)?)?);
        }
        let mut hidden = Tensor::cat(&sources, 0)?.contiguous()?;
        let pos = Tensor::cat(&positions, 0)?.contiguous()?;
        let reference = reference_points(&shapes);
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &pos, &reference, &shapes, self.heads)?;
        }
        let c = hidden.dim(1)?;
        let mut out = vec![];
        let mut start = 0;
        for &(h, w) in &shapes {
            out.push(
                hidden
                    .narrow(0, start, h * w)?
                    .t()?
                    .contiguous()?
                    .reshape((1, c, h, w))?,
            );
            start += h * w;
        }
        let lateral = self.adapter.forward(&features[0])?;
        let (_, _, h, w) = lateral.dims4()?;
        let coarse = out
            .last()
            .ok_or_else(|| candle_core::Error::Msg("no levels".into()))?;
        let up = interpolate_axis(&interpolate_axis(coarse, 2, h, false)?, 3, w, false)?;
        let fine = self.layer.forward(&(lateral + up)?)?.relu()?;
        let mask_features = self.mask_projection.forward(&fine)?;
        Ok(PixelOutput {
            multi_scale: out,
            mask_features,
        })
    }
}

/// Each query's reference point `(x, y)` in 0..1 (`get_reference_points` with valid ratios 1).
fn reference_points(shapes: &[(usize, usize)]) -> Vec<[f32; 2]> {
    let mut out = vec![];
    for &(h, w) in shapes {
        let ys = linspace_f32(0.5, h as f32 - 0.5, h);
        let xs = linspace_f32(0.5, w as f32 - 0.5, w);
        for y in &ys {
            for x in &xs {
                out.push([x / w as f32, y / h as f32]);
            }
        }
    }
    out
}

impl DeformLayer {
    fn forward(
        &self,
        hidden: &Tensor,
        pos: &Tensor,
        reference: &[[f32; 2]],
        shapes: &[(usize, usize)],
        heads: usize,
    ) -> Result<Tensor> {
        let query = (hidden + pos)?;
        let value = self.value_proj.forward(hidden)?;
        let offsets = self.sampling_offsets.forward(&query)?;
        let (len, c) = value.dims2()?;
        let weights =
            self.attention_weights
                .forward(&query)?
                .reshape((len, heads, LEVELS * POINTS))?;
        let weights = candle_nn::ops::softmax_last_dim(&weights)?;
        let sampled = deformable_sample(
            &value.flatten_all()?.to_vec1::<f32>()?,
            &offsets.flatten_all()?.to_vec1::<f32>()?,
            &weights.flatten_all()?.to_vec1::<f32>()?,
            reference,
            shapes,
            heads,
            c / heads,
        );
        let sampled = Tensor::from_vec(sampled, (len, c), hidden.device())?;
        let attended = self.output_proj.forward(&sampled)?;
        let x = self.norm1.forward(&(hidden + attended)?)?;
        let ff = self.fc2.forward(&self.fc1.forward(&x)?.relu()?)?;
        self.norm2.forward(&(x + ff)?)
    }
}

/// `multi_scale_deformable_attention` over queries that are the values' own positions: `value`
/// `[L, heads, d]`, `offsets` `[L, heads, levels, points, 2]`, `weights` `[L, heads, levels *
/// points]` (after the softmax). Returns `[L, heads * d]`.
fn deformable_sample(
    value: &[f32],
    offsets: &[f32],
    weights: &[f32],
    reference: &[[f32; 2]],
    shapes: &[(usize, usize)],
    heads: usize,
    d: usize,
) -> Vec<f32> {
    let c = heads * d;
    let starts: Vec<usize> = shapes
        .iter()
        .scan(0, |s, &(h, w)| {
            let start = *s;
            *s += h * w;
            Some(start)
        })
        .collect();
    let mut out = vec![0f32; reference.len() * c];
    out.par_chunks_mut(c).enumerate().for_each(|(q, row)| {
        let [rx, ry] = reference[q];
        for head in 0..heads {
            let acc = &mut row[head * d..(head + 1) * d];
            for (l, &(h, w)) in shapes.iter().enumerate() {
                for p in 0..POINTS {
                    let o = (((q * heads + head) * LEVELS + l) * POINTS + p) * 2;
                    let a = weights[(q * heads + head) * LEVELS * POINTS + l * POINTS + p];
                    let lx = rx + offsets[o] / w as f32;
                    let ly = ry + offsets[o + 1] / h as f32;
                    let (gx, gy) = (2.0 * lx - 1.0, 2.0 * ly - 1.0);
                    let ix = ((gx + 1.0) * w as f32 - 1.0) / 2.0;
                    let iy = ((gy + 1.0) * h as f32 - 1.0) / 2.0;
                    let (x0, y0) = (ix.floor(), iy.floor());
                    let (fx, fy) = (ix - x0, iy - y0);
                    let corners = [
                        (x0, y0, (1.0 - fx) * (1.0 - fy)),
                        (x0 + 1.0, y0, fx * (1.0 - fy)),
                        (x0, y0 + 1.0, (1.0 - fx) * fy),
                        (x0 + 1.0, y0 + 1.0, fx * fy),
                    ];
                    for (cx, cy, wt) in corners {
                        if cx < 0.0 || cy < 0.0 || cx >= w as f32 || cy >= h as f32 {
                            continue;
                        }
                        let idx = starts[l] + cy as usize * w + cx as usize;
                        let v = &value[(idx * heads + head) * d..(idx * heads + head + 1) * d];
                        let k = a * wt;
                        for (o, x) in acc.iter_mut().zip(v) {
                            *o += k * x;
                        }
                    }
                }
            }
        }
    });
    out
}
