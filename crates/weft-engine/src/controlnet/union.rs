//! The parts a union ControlNet (xinsir's ControlNet++, diffusers `ControlNetUnionModel`, ComfyUI
//! `union_controlnet_num_control_type`) adds to a plain ControlNet: a learned embedding per control
//! type (`task_embedding`), a small transformer over the hint's pooled features
//! (`transformer_layes`, sic), a projection back to the hint's channels (`spatial_ch_projs`), and an
//! embedding of the chosen control type added to the time embedding (`control_add_embedding`).
//!
//! The forward follows ComfyUI's `union_controlnet_merge`: per batch item, the hint's spatial mean
//! plus the type's task embedding is one token; the transformer attends over that item's tokens
//! only. diffusers attends over the batch instead (its `nn.MultiheadAttention` is built without
//! `batch_first`), which gives the same result whenever every item has the same hint (what its
//! pipelines pass); the sample's pooled token it appends never reaches the hint's token. With no
//! type set ("auto"), ComfyUI adds the embedding of an all-zero type vector and the hint takes the
//! plain ControlNet path; so do we.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::ops::layers::{self, LayerNorm, Linear};
use crate::unet::blocks::{sinusoidal_embedding, TimestepEmbedding};

/// ComfyUI's control types (`comfy/cldm/control_types.py`), by index; "auto" is no type.
pub const UNION_CONTROL_TYPES: [&str; 8] = [
    "openpose",
    "depth",
    "hed/pidi/scribble/ted",
    "canny/lineart/anime_lineart/mlsd",
    "normal",
    "segment",
    "tile",
    "repaint",
];

/// The index of a ComfyUI control type name; `None` for "auto" and unknown names.
pub fn union_type_index(name: &str) -> Option<usize> {
    UNION_CONTROL_TYPES.iter().position(|t| *t == name)
}

/// Architecture of the union parts.
#[derive(Debug, Clone, PartialEq)]
pub struct UnionConfig {
    /// Control types the model was trained with (6 in controlnet-union-sdxl-1.0, 8 in "promax").
    pub num_control_types: usize,
    /// Width of the task embedding and the transformer (diffusers `num_trans_channel`, 320).
    pub channels: usize,
    /// Attention heads (`num_trans_head`, 8). Shapes cannot tell; with one token per item the
    /// result does not depend on it.
    pub heads: usize,
    /// Transformer layers (`num_trans_layer`, 1).
    pub layers: usize,
    /// Width of each type's sinusoidal embedding (diffusers `addition_time_embed_dim`, 256).
    pub type_embed_dim: usize,
}

impl UnionConfig {
    /// Checks that no part is empty, the heads divide the width, and the width equals
    /// `hint_out`, the hint embedding's output channels; the error says what is wrong.
    pub fn validate(&self, hint_out: usize) -> std::result::Result<(), String> {
        if self.num_control_types == 0 || self.channels == 0 || self.layers == 0 {
            return Err(format!(
                "union controlnet config {self:?} has an empty part"
            ));
        }
        if self.heads == 0 || !self.channels.is_multiple_of(self.heads) {
            return Err(format!(
                "union controlnet transformer of width {} cannot split into {} heads",
                self.channels, self.heads
            ));
        }
        if self.channels != hint_out {
            return Err(format!(
                "union controlnet transformer is {} wide but the hint embedding gives {} channels",
                self.channels, hint_out
            ));
        }
        Ok(())
    }
}

/// CLIP-style residual attention block (diffusers `ResidualAttentionBlock`, ComfyUI
/// `ResBlockUnionControlnet`): pre-norm self-attention and a QuickGELU MLP.
#[derive(Debug)]
struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    heads: usize,
}

impl ResidualAttentionBlock {
    fn new(vb: VarBuilder, c: usize, heads: usize) -> Result<Self> {
        let attn = vb.pp("attn");
        Ok(Self {
            ln_1: layers::layer_norm(c, 1e-5, vb.pp("ln_1"))?,
            // PyTorch's MultiheadAttention packs q, k and v in one projection.
            in_proj: Linear::new(
                attn.get((3 * c, c), "in_proj_weight")?,
                Some(attn.get(3 * c, "in_proj_bias")?),
            ),
            out_proj: layers::linear(c, c, attn.pp("out_proj"))?,
            ln_2: layers::layer_norm(c, 1e-5, vb.pp("ln_2"))?,
            c_fc: layers::linear(c, 4 * c, vb.pp("mlp").pp("c_fc"))?,
            c_proj: layers::linear(4 * c, c, vb.pp("mlp").pp("c_proj"))?,
            heads,
        })
    }

    /// Self-attention over each item's tokens: [B, S, C] -> [B, S, C].
    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, c) = x.dims3()?;
        let (h, d) = (self.heads, c / self.heads);
        let qkv = self.in_proj.forward(x)?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * c, c)?
                .reshape((b, s, h, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, c))?;
        self.out_proj.forward(&out)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attention(&self.ln_1.forward(x)?)?)?;
        let h = self.c_fc.forward(&self.ln_2.forward(&x)?)?;
        // QuickGELU: x * sigmoid(1.702 x).
        let h = (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?;
        x + self.c_proj.forward(&h)?
    }
}

/// The union parts of a ControlNet, under diffusers names.
#[derive(Debug)]
pub(crate) struct UnionBlocks {
    task_embedding: Tensor,
    layers: Vec<ResidualAttentionBlock>,
    spatial_ch_projs: Linear,
    control_add_embedding: TimestepEmbedding,
    config: UnionConfig,
}

impl UnionBlocks {
    /// `hint_out`: channels of the hint embedding (the UNet's first level); `temb`: width of the
    /// time embedding.
    pub(crate) fn new(
        vb: VarBuilder,
        cfg: &UnionConfig,
        hint_out: usize,
        temb: usize,
    ) -> Result<Self> {
        cfg.validate(hint_out).map_err(candle_core::Error::Msg)?;
        let c = cfg.channels;
        let layers = (0..cfg.layers)
            .map(|i| ResidualAttentionBlock::new(vb.pp("transformer_layes").pp(i), c, cfg.heads))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            task_embedding: vb.get((cfg.num_control_types, c), "task_embedding")?,
            layers,
            spatial_ch_projs: layers::linear(c, hint_out, vb.pp("spatial_ch_projs"))?,
            control_add_embedding: TimestepEmbedding::new(
                vb.pp("control_add_embedding"),
                cfg.type_embed_dim * cfg.num_control_types,
                temb,
            )?,
            config: cfg.clone(),
        })
    }

    /// The embedding of the control type to add to the time embedding: [1, temb]. `None` embeds
    /// the all-zero type vector, as ComfyUI does for "auto".
    pub(crate) fn type_embedding(
        &self,
        control_type: Option<usize>,
        dtype: DType,
    ) -> Result<Tensor> {
        let n = self.config.num_control_types;
        let mut one_hot = vec![0f32; n];
        if let Some(t) = control_type {
            *one_hot.get_mut(t).ok_or_else(|| out_of_range(t, n))? = 1.0;
        }
        let device = self.task_embedding.device();
        let emb = sinusoidal_embedding(&one_hot, self.config.type_embed_dim, device)?
            .reshape((1, n * self.config.type_embed_dim))?
            .to_dtype(dtype)?;
        self.control_add_embedding.forward(&emb)
    }

    /// The embedded hint [B, C, h, w] with the control type merged in (ComfyUI's
    /// `union_controlnet_merge` for one hint): `hint + spatial_ch_projs(transformer(mean(hint) +
    /// task_embedding[type]))`, broadcast over space.
    pub(crate) fn merge(&self, guided: &Tensor, control_type: usize) -> Result<Tensor> {
        let n = self.config.num_control_types;
        if control_type >= n {
            return Err(out_of_range(control_type, n));
        }
        let task = self.task_embedding.get(control_type)?;
        let task = crate::ops::cast::to_dtype(&task, guided.dtype())?;
        let feat = guided
            .mean(D::Minus1)?
            .mean(D::Minus1)?
            .broadcast_add(&task)?;
        let mut x = feat.unsqueeze(1)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        let alpha = self.spatial_ch_projs.forward(&x.squeeze(1)?)?;
        guided.broadcast_add(&alpha.unsqueeze(2)?.unsqueeze(3)?)
    }
}

fn out_of_range(t: usize, n: usize) -> candle_core::Error {
    let name = UNION_CONTROL_TYPES.get(t).copied().unwrap_or("?");
    candle_core::Error::Msg(format!(
        "control type '{name}' is type {t}, and this union controlnet knows {n} types (0 to {})",
        n.saturating_sub(1)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_comfyuis() {
        assert_eq!(union_type_index("openpose"), Some(0));
        assert_eq!(
            union_type_index("canny/lineart/anime_lineart/mlsd"),
            Some(3)
        );
        assert_eq!(union_type_index("repaint"), Some(7));
        assert_eq!(union_type_index("auto"), None);
    }
}
