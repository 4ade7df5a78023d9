//! OneFormer's backbone: transformers' `SwinBackbone` as `OneFormerPixelLevelModule` runs it
//! (`always_partition`: every block keeps its window and odd blocks their half-window shift,
//! whatever the size; each block pads its tokens with zeros up to whole windows after its first
//! norm), returning each stage's tokens before the patch merging through the stage's
//! `hidden_states_norms` LayerNorm as a `[1, C, H, W]` map.
//!
//! Names under `model.pixel_level_module.encoder.`: `embeddings.patch_embeddings.projection`,
//! `embeddings.norm`, `encoder.layers.S.blocks.B.{layernorm_before, attention.self.{query, key,
//! value, relative_position_bias_table}, attention.output.dense, layernorm_after,
//! intermediate.dense, output.dense}` (the published files' layout; transformers 5's in-memory
//! names `attention.{q,k,v,o}_proj`, `attention.relative_position_bias.*` and `mlp.fc1/fc2` are
//! read too), `encoder.layers.S.downsample.{norm, reduction}`, `hidden_states_norms.stageN`.
//! The block maths is SwinIR's ([`crate::upscale::swinir::Block`]), q, k and v joined.

use candle_core::{Module, Result, Tensor};
use candle_nn::Conv2dConfig;

use super::Net;
use crate::annotators::Shapes;
use crate::ops::conv::Conv2d;
use crate::ops::layers::{LayerNorm, Linear};
use crate::upscale::swinir::{relative_bias, Block};

const PREFIX: &str = "model.pixel_level_module.encoder";

/// The backbone's sizes, read from the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct SwinConfig {
    /// Patch side (4).
    pub patch: usize,
    /// The first stage's width (doubling per stage).
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub heads: Vec<usize>,
    /// Window side.
    pub window: usize,
}

impl SwinConfig {
    /// From the patch projection and each stage's first relative position table.
    pub fn detect(shapes: &Shapes) -> std::result::Result<Self, String> {
        let shape = |k: &str| {
            shapes
                .get(k)
                .map(Vec::as_slice)
                .ok_or_else(|| format!("missing tensor '{k}'"))
        };
        let proj = shape(&format!(
            "{PREFIX}.embeddings.patch_embeddings.projection.weight"
        ))?;
        let (embed_dim, patch) = match proj {
            [c, 3, p, q] if p == q => (*c, *p),
            other => return Err(format!("patch projection of shape {other:?}")),
        };
        let (mut depths, mut heads, mut window) = (vec![], vec![], 0);
        for s in 0.. {
            let depth = (0..)
                .take_while(|b| {
                    shapes.contains_key(&format!("{}.layernorm_before.weight", block(s, *b)))
                })
                .count();
            if depth == 0 {
                break;
            }
            let table = shape(&bias_table(shapes, &block(s, 0)))?;
            let [side2, h] = table else {
                return Err(format!("relative position table of shape {table:?}"));
            };
            let side = (*side2 as f64).sqrt() as usize;
            if side * side != *side2
                || side.is_multiple_of(2)
                || *h == 0
                || !(embed_dim << s).is_multiple_of(*h)
            {
                return Err(format!("relative position table of shape {table:?}"));
            }
            window = side.div_ceil(2);
            depths.push(depth);
            heads.push(*h);
        }
        if depths.len() != 4 {
            return Err(format!("{} Swin stages, 4 expected", depths.len()));
        }
        Ok(SwinConfig {
            patch,
            embed_dim,
            depths,
            heads,
            window,
        })
    }
}

fn block(s: usize, b: usize) -> String {
    format!("{PREFIX}.encoder.layers.{s}.blocks.{b}")
}

/// The name of the first of `names` (published, then transformers 5's) the file has.
fn pick(shapes: &Shapes, base: &str, names: &[&str]) -> String {
    let full = |n: &&str| format!("{base}.{n}");
    names
        .iter()
        .map(full)
        .find(|k| shapes.contains_key(&format!("{k}.weight")) || shapes.contains_key(k))
        .unwrap_or_else(|| full(&names[0]))
}

fn bias_table(shapes: &Shapes, base: &str) -> String {
    pick(
        shapes,
        base,
        &[
            "attention.self.relative_position_bias_table",
            "attention.relative_position_bias.relative_position_bias_table",
        ],
    )
}

#[derive(Debug)]
struct Merge {
    norm: LayerNorm,
    reduction: Linear,
}

#[derive(Debug)]
struct Stage {
    blocks: Vec<Block>,
    norm: LayerNorm,
    merge: Option<Merge>,
}

/// The Swin backbone.
#[derive(Debug)]
pub struct Swin {
    patch: Conv2d,
    patch_size: usize,
    embed_norm: LayerNorm,
    stages: Vec<Stage>,
}

impl Swin {
    /// The backbone under the published names.
    pub(crate) fn new(net: &Net, cfg: &SwinConfig) -> Result<Self> {
        let p = cfg.patch;
        let patch = Conv2d::new(
            net.get(&format!(
                "{PREFIX}.embeddings.patch_embeddings.projection.weight"
            ))?,
            Some(net.get(&format!(
                "{PREFIX}.embeddings.patch_embeddings.projection.bias"
            ))?),
            Conv2dConfig {
                stride: p,
                ..Default::default()
            },
        );
        let stages = (0..cfg.depths.len())
            .map(|s| {
                let heads = cfg.heads[s];
                let blocks = (0..cfg.depths[s])
                    .map(|b| {
                        let base = block(s, b);
                        let lin = |names: &[&str]| net.linear(&pick(net.shapes, &base, names));
                        // the detectron2 checkpoints keep q, k and v joined
                        let joined = format!("{base}.attention.qkv");
                        let qkv = if net.has(&format!("{joined}.weight")) {
                            net.linear(&joined)?
                        } else {
                            separate_qkv(&lin)?
                        };
                        let table = net.get(&bias_table(net.shapes, &base))?;
                        Ok(Block {
                            norm1: net.layer_norm(&format!("{base}.layernorm_before"), 1e-5)?,
                            qkv,
                            proj: lin(&["attention.output.dense", "attention.o_proj"])?,
                            bias: relative_bias(&table, cfg.window, heads)?,
                            norm2: net.layer_norm(&format!("{base}.layernorm_after"), 1e-5)?,
                            fc1: lin(&["intermediate.dense", "mlp.fc1"])?,
                            fc2: lin(&["output.dense", "mlp.fc2"])?,
                            heads,
                            window: cfg.window,
                            shift: if b % 2 == 1 { cfg.window / 2 } else { 0 },
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let down = format!("{PREFIX}.encoder.layers.{s}.downsample");
                let merge = if net.has(&format!("{down}.reduction.weight")) {
                    Some(Merge {
                        norm: net.layer_norm(&format!("{down}.norm"), 1e-5)?,
                        reduction: Linear::new(net.get(&format!("{down}.reduction.weight"))?, None),
                    })
                } else {
                    None
                };
                Ok(Stage {
                    blocks,
                    norm: net.layer_norm(
                        &format!("{PREFIX}.hidden_states_norms.stage{}", s + 1),
                        1e-5,
                    )?,
                    merge,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Swin {
            patch,
            patch_size: p,
            embed_norm: net.layer_norm(&format!("{PREFIX}.embeddings.norm"), 1e-5)?,
            stages,
        })
    }

    /// The four stages' normed maps `[1, C_s, H_s, W_s]` of `x` (`[1, 3, H, W]`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor4> {
        let (_, _, h, w) = x.dims4()?;
        let p = self.patch_size;
        // SwinPatchEmbeddings.maybe_pad: zeros right and bottom up to whole patches
        let x = x
            .pad_with_zeros(3, 0, w.next_multiple_of(p) - w)?
            .pad_with_zeros(2, 0, h.next_multiple_of(p) - h)?;
        let x = self.patch.forward(&x)?;
        let (b, c, mut h, mut w) = x.dims4()?;
        let mut x = self
            .embed_norm
            .forward(&x.flatten_from(2)?.transpose(1, 2)?.contiguous()?)?;
        let mut maps = Vec::with_capacity(self.stages.len());
        let mut c = c;
        for stage in &self.stages {
            for blk in &stage.blocks {
                x = block_forward(blk, &x, h, w)?;
            }
            let normed = stage.norm.forward(&x)?;
            maps.push(
                normed
                    .reshape((b, h, w, c))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?,
            );
            if let Some(merge) = &stage.merge {
                let grid = x
                    .reshape((b, h, w, c))?
                    .pad_with_zeros(1, 0, h % 2)?
                    .pad_with_zeros(2, 0, w % 2)?;
                let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
                let grid = grid.reshape((b, h2, 2, w2, 2, c))?;
                // transformers' order: (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1)
                let parts = [(0, 0), (1, 0), (0, 1), (1, 1)]
                    .iter()
                    .map(|&(r, cc)| {
                        grid.narrow(2, r, 1)?
                            .narrow(4, cc, 1)?
                            .reshape((b, h2 * w2, c))
                    })
                    .collect::<Result<Vec<_>>>()?;
                x = merge
                    .reduction
                    .forward(&merge.norm.forward(&Tensor::cat(&parts, 2)?)?)?;
                (h, w, c) = (h2, w2, 2 * c);
            }
        }
        maps.try_into()
            .map_err(|m: Vec<Tensor>| candle_core::Error::Msg(format!("{} Swin stages", m.len())))
    }
}

/// transformers' separate query, key and value joined into one projection.
fn separate_qkv(lin: &dyn Fn(&[&str]) -> Result<Linear>) -> Result<Linear> {
    let parts = ["query", "key", "value"]
        .iter()
        .zip(["q_proj", "k_proj", "v_proj"])
        .map(|(old, new)| {
            lin(&[
                &format!("attention.self.{old}"),
                &format!("attention.{new}"),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let weights: Vec<Tensor> = parts.iter().map(|l| l.weight().clone()).collect();
    let biases = parts
        .iter()
        .map(|l| l.bias().cloned())
        .collect::<Option<Vec<_>>>();
    Ok(Linear::new(
        Tensor::cat(&weights, 0)?,
        biases.map(|b| Tensor::cat(&b, 0)).transpose()?,
    ))
}

/// Four feature maps, finest first.
pub type Tensor4 = [Tensor; 4];

/// `SwinLayer.forward`: norm, zero padding to whole windows, (shifted) window attention, the
/// padding cut off, residual, MLP.
fn block_forward(blk: &Block, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, l, c) = x.dims3()?;
    let ws = blk.window;
    let y = blk.norm1.forward(x)?.reshape((b, h, w, c))?;
    let y = y
        .pad_with_zeros(1, 0, h.next_multiple_of(ws) - h)?
        .pad_with_zeros(2, 0, w.next_multiple_of(ws) - w)?;
    let y = blk
        .window_attention(&y)?
        .narrow(1, 0, h)?
        .narrow(2, 0, w)?
        .contiguous()?
        .reshape((b, l, c))?;
    blk.mlp(&(x + y)?)
}
