//! timm's BEiT as MiDaS v3.1 wraps it (`midas/backbones/beit.py`, the backbone of Zoe's
//! `DPT_BEiT_L_384`): 16-pixel patches, a class token, no absolute position table, and in every
//! block a relative position bias whose stored table (for the square window of its training size)
//! is resized bilinearly to the image's token grid and indexed by relative offset, with three
//! extra entries for the class token. Four blocks are read out (`act_postprocess1..4`: `project`
//! readout, 1x1 convolution, then 4x up, 2x up, as is, 2x down) into the maps of a DPT head.

use std::collections::HashMap;

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::dpt::{Readout, Resize, VitBlock};
use super::interpolate_axis;
use crate::ops::conv::{conv2d, Conv2d};

/// The shape of a MiDaS BEiT backbone, read from its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct BeitConfig {
    /// Token width.
    pub embed_dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width.
    pub mlp: usize,
    /// Patch side (16).
    pub patch: usize,
    /// Side of the stored relative position table, `2 * window - 1` (47 for 384).
    pub table_side: usize,
    /// The blocks read out: a quarter, a half, three quarters and all of the depth
    /// (`[5, 11, 17, 23]` of BEiT-L).
    pub hooks: [usize; 4],
    /// Widths of the four readout maps (`act_postprocessN.3`).
    pub readout: [usize; 4],
    /// The blocks' LayerNorm epsilon: timm's 1e-6 (transformers' BEiT has its config's, 1e-12).
    pub layer_norm_eps: f64,
}

impl BeitConfig {
    /// The configuration under `prefix` (`...pretrained.`), from the tensor shapes.
    pub fn detect(
        shapes: &HashMap<String, Vec<usize>>,
        prefix: &str,
    ) -> std::result::Result<Self, String> {
        let dim = |name: &str, i: usize| -> std::result::Result<usize, String> {
            let name = format!("{prefix}{name}");
            shapes
                .get(&name)
                .ok_or_else(|| format!("missing tensor '{name}' (not a MiDaS BEiT file?)"))?
                .get(i)
                .copied()
                .ok_or_else(|| format!("tensor '{name}' has too few dimensions"))
        };
        let depth = (0..)
            .take_while(|i| shapes.contains_key(&format!("{prefix}model.blocks.{i}.norm1.weight")))
            .count();
        if depth == 0 || !depth.is_multiple_of(4) {
            return Err(format!(
                "{depth} BEiT blocks: MiDaS reads out four evenly spaced ones"
            ));
        }
        let table = "model.blocks.0.attn.relative_position_bias_table";
        let rows = dim(table, 0)?;
        let side = (rows.saturating_sub(3) as f64).sqrt().round() as usize;
        if side * side + 3 != rows || side.is_multiple_of(2) {
            return Err(format!(
                "relative position table of {rows} rows is not a square window's"
            ));
        }
        let quarter = depth / 4;
        Ok(BeitConfig {
            embed_dim: dim("model.cls_token", 2)?,
            depth,
            heads: dim(table, 1)?,
            mlp: dim("model.blocks.0.mlp.fc1.weight", 0)?,
            patch: dim("model.patch_embed.proj.weight", 2)?,
            table_side: side,
            hooks: [quarter - 1, 2 * quarter - 1, 3 * quarter - 1, depth - 1],
            readout: [
                dim("act_postprocess1.3.weight", 0)?,
                dim("act_postprocess2.3.weight", 0)?,
                dim("act_postprocess3.3.weight", 0)?,
                dim("act_postprocess4.3.weight", 0)?,
            ],
            layer_norm_eps: 1e-6,
        })
    }
}

/// A BEiT block with its stored relative position table (`[side^2 + 3, heads]`).
#[derive(Debug)]
struct Block {
    block: VitBlock,
    table: Tensor,
}

/// The MiDaS BEiT backbone with its four readouts.
#[derive(Debug)]
pub struct Beit {
    config: BeitConfig,
    patch_embed: Conv2d,
    cls_token: Tensor,
    blocks: Vec<Block>,
    readout: Vec<Readout>,
    resize: [Resize; 4],
}

impl Beit {
    /// From `vb` at the `pretrained` prefix.
    pub fn new(vb: VarBuilder, cfg: &BeitConfig) -> candle_core::Result<Self> {
        let d = cfg.embed_dim;
        let model = vb.pp("model");
        let patch = Conv2dConfig {
            stride: cfg.patch,
            ..Default::default()
        };
        let rows = cfg.table_side * cfg.table_side + 3;
        let post = |i: usize| vb.pp(format!("act_postprocess{}", i + 1));
        Ok(Beit {
            patch_embed: conv2d(3, d, cfg.patch, patch, model.pp("patch_embed.proj"))?,
            cls_token: model.get((1, 1, d), "cls_token")?,
            // blocks after the last hook are stored but their output is never read
            blocks: (0..=cfg.hooks[3])
                .map(|i| {
                    let vb = model.pp(format!("blocks.{i}"));
                    Ok(Block {
                        table: vb.get((rows, cfg.heads), "attn.relative_position_bias_table")?,
                        block: VitBlock::beit(vb, d, cfg.heads, cfg.mlp)?
                            .with_layer_norm_eps(cfg.layer_norm_eps),
                    })
                })
                .collect::<candle_core::Result<_>>()?,
            readout: (0..4)
                .map(|i| Readout::new(post(i), d, cfg.readout[i]))
                .collect::<candle_core::Result<_>>()?,
            resize: Resize::dpt(cfg.readout, |i| post(i).pp("4"))?,
            config: cfg.clone(),
        })
    }

    /// Its shape.
    pub fn config(&self) -> &BeitConfig {
        &self.config
    }

    /// The four DPT maps of `[B, 3, H, W]` pixels (sides multiples of the patch).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<[Tensor; 4]> {
        let tokens = self.patch_embed.forward(x)?;
        let (b, d, gh, gw) = tokens.dims4()?;
        let tokens = tokens.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?;
        let mut x = Tensor::cat(&[&cls, &tokens], 1)?;
        let index = relative_position_index(gh, gw, x.device())?;
        let mut hooked = Vec::with_capacity(4);
        for (i, blk) in self.blocks.iter().enumerate() {
            let bias = self.position_bias(&blk.table, &index, gh, gw)?;
            x = blk.block.forward_biased(&x, Some(&bias))?;
            if self.config.hooks.contains(&i) {
                hooked.push(x.clone());
            }
        }
        let mut maps = Vec::with_capacity(4);
        for ((tokens, readout), resize) in hooked.iter().zip(&self.readout).zip(&self.resize) {
            maps.push(resize.forward(readout.forward(tokens, gh, gw)?)?);
        }
        maps.try_into()
            .map_err(|_| candle_core::Error::Msg("BEiT reads out four blocks".into()))
    }

    /// `_get_rel_pos_bias`: the table's window part resized bilinearly (corners not aligned)
    /// from the stored window to `(2 gh - 1) x (2 gw - 1)`, the three class-token rows after it,
    /// gathered by `index` into `[1, heads, N + 1, N + 1]`.
    fn position_bias(
        &self,
        table: &Tensor,
        index: &Tensor,
        gh: usize,
        gw: usize,
    ) -> candle_core::Result<Tensor> {
        let side = self.config.table_side;
        let heads = self.config.heads;
        let (nh, nw) = (2 * gh - 1, 2 * gw - 1);
        let grid = table
            .narrow(0, 0, side * side)?
            .reshape((1, side, side, heads))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        // kept head-major, `[heads, cells]`, so the gather comes out in the bias's own layout
        let grid = interpolate_axis(
            &interpolate_axis(&grid, 2, nh, false)?.contiguous()?,
            3,
            nw,
            false,
        )?
        .reshape((heads, nh * nw))?;
        let class_rows = table.narrow(0, side * side, 3)?.t()?;
        let table = Tensor::cat(&[&grid, &class_rows], 1)?.contiguous()?;
        let n = gh * gw + 1;
        table.index_select(index, 1)?.reshape((1, heads, n, n))
    }
}

/// timm's `gen_relative_position_index` for a `wh x ww` token grid, flattened: between tokens,
/// `(dy + wh - 1) * (2 ww - 1) + dx + ww - 1`; from the class token to a token the table's
/// third-last entry, from a token to the class token its second-last, class to class its last.
pub(crate) fn relative_position_index(
    wh: usize,
    ww: usize,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let cells = (2 * wh - 1) * (2 * ww - 1);
    let n = wh * ww + 1;
    let mut index = vec![0u32; n * n];
    for i in 0..n {
        for j in 0..n {
            index[i * n + j] = match (i, j) {
                (0, 0) => cells + 2,
                (0, _) => cells,
                (_, 0) => cells + 1,
                _ => {
                    let (yi, xi) = ((i - 1) / ww, (i - 1) % ww);
                    let (yj, xj) = ((j - 1) / ww, (j - 1) % ww);
                    (yi + wh - 1 - yj) * (2 * ww - 1) + xi + ww - 1 - xj
                }
            } as u32;
        }
    }
    Tensor::from_vec(index, n * n, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_index_matches_timm_on_a_2x3_grid() {
        // torch: gen_relative_position_index((2, 3))[:4, :4] and a corner of the token part
        let index: Vec<u32> = relative_position_index(2, 3, &candle_core::Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        let n = 7;
        assert_eq!(&index[..4], &[17, 15, 15, 15]);
        assert_eq!(index[n], 16);
        assert_eq!(&index[n + 1..n + 4], &[7, 6, 5]);
        // token (1, 2) to token (0, 0): dy = 1, dx = 2
        assert_eq!(index[6 * n + 1], (2 * 5 + 4) as u32);
    }
}
