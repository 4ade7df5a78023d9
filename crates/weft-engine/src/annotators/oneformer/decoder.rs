//! OneFormer's task-conditioned transformer decoder (`OneFormerTransformerModule` with its
//! `OneFormerTransformerDecoder`), post-norm as the published nets are (`pre_norm` false):
//!
//! - the task token: `task_encoder`'s 2-layer MLP on the task text's token ids as floats, then
//!   `decoder_norm` (`use_task_norm`);
//! - the query transformer: queries all equal to the task token, with the learnt query positions
//!   (all but the last), self-attention then cross-attention to the mask features' sine positions
//!   (keyed with `query_input_projection` of the mask features, as transformers passes them),
//!   FFN, a final norm; the task token appended as the last query;
//! - prediction heads (`decoder_norm`, `class_embed`, the 3-layer `mask_embed` dotted with the
//!   mask features) before the first layer and after each, the masks resized bilinearly to the
//!   next layer's level and thresholded at sigmoid 0.5 as its cross-attention mask (a query whose
//!   mask blocks everything attends everywhere);
//! - each layer: masked cross-attention to one of the three pixel-decoder levels in turn
//!   (coarsest first) with their sine positions and level embeddings, self-attention, FFN.

use candle_core::{Module, Result, Tensor, D};

use super::pixel_decoder::sine_position;
use super::Net;
use crate::annotators::{interpolate_axis, Conv, Pad};
use crate::ops::layers::{LayerNorm, Linear};

const PREFIX: &str = "model.transformer_module";
const DECODER: &str = "model.transformer_module.decoder";

/// Multi-head attention with a query scaling of `head_dim^-0.5` (torch's `nn.MultiheadAttention`
/// and `OneFormerAttention` alike).
#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    /// `nn.MultiheadAttention`'s packed `in_proj_weight` / `in_proj_bias` and `out_proj`.
    fn packed(net: &Net, name: &str, heads: usize) -> Result<Self> {
        let w = net.get(&format!("{name}.in_proj_weight"))?;
        let b = net.get(&format!("{name}.in_proj_bias"))?;
        let c = w.dim(1)?;
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear::new(
                w.narrow(0, i * c, c)?,
                Some(b.narrow(0, i * c, c)?),
            ))
        };
        Ok(Attention {
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            out: net.linear(&format!("{name}.out_proj"))?,
            heads,
        })
    }

    /// `OneFormerAttention`'s `q_proj`, `k_proj`, `v_proj`, `out_proj` (packed in a detectron2
    /// checkpoint).
    fn separate(net: &Net, name: &str, heads: usize) -> Result<Self> {
        if net.has(&format!("{name}.in_proj_weight")) {
            return Self::packed(net, name, heads);
        }
        let lin = |n: &str| net.linear(&format!("{name}.{n}"));
        Ok(Attention {
            q: lin("q_proj")?,
            k: lin("k_proj")?,
            v: lin("v_proj")?,
            out: lin("out_proj")?,
            heads,
        })
    }

    /// `query` `[Lq, C]`, `key`/`value` `[Lk, C]`; `mask` `[Lq, Lk]` added to every head's scores.
    fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (lq, c) = query.dims2()?;
        let d = c / self.heads;
        let split = |x: Tensor| -> Result<Tensor> {
            let l = x.dim(0)?;
            x.reshape((l, self.heads, d))?.transpose(0, 1)?.contiguous()
        };
        let q = split((self.q.forward(query)? * (d as f64).powf(-0.5))?)?;
        let k = split(self.k.forward(key)?)?;
        let v = split(self.v.forward(value)?)?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((lq, c))?;
        self.out.forward(&out)
    }
}

/// `norm(x + linear2(relu(linear1(x))))`.
#[derive(Debug)]
struct Ffn {
    linear1: Linear,
    linear2: Linear,
    norm: LayerNorm,
}

impl Ffn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.linear2.forward(&self.linear1.forward(x)?.relu()?)?;
        self.norm.forward(&(x + y)?)
    }
}

#[derive(Debug)]
struct QueryLayer {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_attn: Attention,
    norm2: LayerNorm,
    ffn: Ffn,
}

#[derive(Debug)]
struct DecoderLayer {
    cross_attn: Attention,
    cross_norm: LayerNorm,
    self_attn: Attention,
    self_norm: LayerNorm,
    ffn: Ffn,
}

/// An MLP of linear layers with ReLU between them.
#[derive(Debug)]
struct Mlp(Vec<Linear>);

impl Mlp {
    /// `OneFormerMLPPredictionHead`'s `layers.I.0`.
    fn new(net: &Net, name: &str) -> Result<Self> {
        let layers = (0..)
            .map(|i| format!("{name}.layers.{i}.0"))
            .take_while(|p| net.has(&format!("{p}.weight")))
            .map(|p| net.linear(&p))
            .collect::<Result<Vec<_>>>()?;
        if layers.is_empty() {
            candle_core::bail!("missing tensor '{name}.layers.0.0.weight'");
        }
        Ok(Mlp(layers))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, layer) in self.0.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.0.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// The task MLP and the transformer module.
#[derive(Debug)]
pub struct Decoder {
    task_mlp: Mlp,
    queries: Tensor,
    level_embed: Tensor,
    query_input_projection: Conv,
    query_layers: Vec<QueryLayer>,
    query_norm: LayerNorm,
    decoder_norm: LayerNorm,
    layers: Vec<DecoderLayer>,
    class_embed: Linear,
    mask_embed: Mlp,
    use_task_norm: bool,
}

/// The last prediction: `class` `[Q, classes + 1]` logits, `masks` `[Q, H/4, W/4]` logits.
pub struct Prediction {
    /// `[Q, classes + 1]`, the null class last.
    pub class: Tensor,
    /// `[Q, H/4, W/4]`.
    pub masks: Tensor,
}

impl Decoder {
    /// The task MLP, the query transformer and the decoder layers with `heads` attention heads.
    pub(crate) fn new(net: &Net, heads: usize, eps: f64, use_task_norm: bool) -> Result<Self> {
        let ln = |n: &str| net.layer_norm(n, eps);
        let ffn = |p: &str, norm: &str| -> Result<Ffn> {
            Ok(Ffn {
                linear1: net.linear(&format!("{p}.linear1"))?,
                linear2: net.linear(&format!("{p}.linear2"))?,
                norm: ln(&format!("{p}.{norm}"))?,
            })
        };
        let qt = format!("{DECODER}.query_transformer.decoder");
        let query_layers = (0..)
            .map(|i| format!("{qt}.layers.{i}"))
            .take_while(|p| net.has(&format!("{p}.linear1.weight")))
            .map(|p| {
                Ok(QueryLayer {
                    self_attn: Attention::packed(net, &format!("{p}.self_attn"), heads)?,
                    norm1: ln(&format!("{p}.norm1"))?,
                    cross_attn: Attention::packed(net, &format!("{p}.multihead_attn"), heads)?,
                    norm2: ln(&format!("{p}.norm2"))?,
                    ffn: ffn(&p, "norm3")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let layers = (0..)
            .map(|i| format!("{DECODER}.layers.{i}"))
            .take_while(|p| net.has(&format!("{p}.ffn.linear1.weight")))
            .map(|p| {
                Ok(DecoderLayer {
                    cross_attn: Attention::packed(
                        net,
                        &format!("{p}.cross_attn.multihead_attn"),
                        heads,
                    )?,
                    cross_norm: ln(&format!("{p}.cross_attn.norm"))?,
                    self_attn: Attention::separate(
                        net,
                        &format!("{p}.self_attn.self_attn"),
                        heads,
                    )?,
                    self_norm: ln(&format!("{p}.self_attn.norm"))?,
                    ffn: ffn(&format!("{p}.ffn"), "norm")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            task_mlp: Mlp::new(net, "model.task_encoder.task_mlp")?,
            queries: net.get(&format!("{PREFIX}.queries_embedder.weight"))?,
            level_embed: net.get(&format!("{PREFIX}.level_embed.weight"))?,
            query_input_projection: net.conv(
                &format!("{DECODER}.query_input_projection"),
                None,
                1,
                Pad::Fixed(0),
            )?,
            query_layers,
            query_norm: ln(&format!("{qt}.norm"))?,
            decoder_norm: ln(&format!("{DECODER}.decoder_norm"))?,
            layers,
            class_embed: net.linear(&format!("{DECODER}.class_embed"))?,
            mask_embed: Mlp::new(net, &format!("{DECODER}.mask_embed"))?,
            use_task_norm,
        })
    }

    /// The task MLP's input width (`task_seq_len`).
    pub fn task_len(&self) -> Result<usize> {
        self.task_mlp.0[0].weight().dim(1)
    }

    /// `task` `[1, task_seq_len]` token ids as floats; `multi_scale` the pixel decoder's levels
    /// (coarsest first, `[1, C, h, w]`), `mask_features` `[1, D, H, W]`.
    pub fn forward(
        &self,
        task: &Tensor,
        multi_scale: &[Tensor],
        mask_features: &Tensor,
    ) -> Result<Prediction> {
        let device = mask_features.device();
        let hidden = self.queries.dim(1)?;
        let tokens =
            |x: &Tensor| -> Result<Tensor> { x.flatten_from(2)?.squeeze(0)?.t()?.contiguous() };
        let mut features = vec![];
        let mut positions = vec![];
        let mut sizes = vec![];
        for (i, level) in multi_scale.iter().enumerate() {
            let (_, _, h, w) = level.dims4()?;
            sizes.push((h, w));
            positions.push(tokens(&sine_position(hidden, h, w, device)?)?);
            features.push(tokens(level)?.broadcast_add(&self.level_embed.get(i)?.unsqueeze(0)?)?);
        }
        if sizes.is_empty() {
            candle_core::bail!("no pixel decoder levels");
        }
        let (_, _, mh, mw) = mask_features.dims4()?;
        let mut token = self.task_mlp.forward(task)?;
        if self.use_task_norm {
            token = self.decoder_norm.forward(&token)?;
        }
        // the query transformer
        let memory = tokens(&sine_position(hidden, mh, mw, device)?)?;
        let memory_pos = tokens(&self.query_input_projection.forward(mask_features)?)?;
        let q = self.queries.dim(0)?;
        let query_pos = self.queries.narrow(0, 0, q - 1)?;
        let mut out = if self.use_task_norm {
            token.broadcast_as((q - 1, hidden))?.contiguous()?
        } else {
            Tensor::zeros((q - 1, hidden), token.dtype(), device)?
        };
        let memory_key = (&memory + &memory_pos)?;
        for layer in &self.query_layers {
            let qk = (&out + &query_pos)?;
            let a = layer.self_attn.forward(&qk, &qk, &out, None)?;
            out = layer.norm1.forward(&(out + a)?)?;
            let a = layer
                .cross_attn
                .forward(&(&out + &query_pos)?, &memory_key, &memory, None)?;
            out = layer.norm2.forward(&(out + a)?)?;
            out = layer.ffn.forward(&out)?;
        }
        let out = self.query_norm.forward(&out)?;
        let mut output = Tensor::cat(&[out, token], 0)?;
        // the masked-attention decoder
        let mf = mask_features.squeeze(0)?.flatten_from(1)?;
        let keys: Vec<Tensor> = features
            .iter()
            .zip(&positions)
            .map(|(f, p)| f + p)
            .collect::<Result<_>>()?;
        let mut pred = self.heads(&output, &mf, mh, mw)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let level = i % sizes.len();
            let mask = attention_mask(&pred.masks, sizes[level])?;
            let qp = (&output + &self.queries)?;
            let a = layer
                .cross_attn
                .forward(&qp, &keys[level], &features[level], Some(&mask))?;
            output = layer.cross_norm.forward(&(output + a)?)?;
            let qp = (&output + &self.queries)?;
            let a = layer.self_attn.forward(&qp, &qp, &output, None)?;
            output = layer.self_norm.forward(&(output + a)?)?;
            output = layer.ffn.forward(&output)?;
            pred = self.heads(&output, &mf, mh, mw)?;
        }
        Ok(pred)
    }

    /// `forward_prediction_heads` without the attention mask.
    fn heads(
        &self,
        output: &Tensor,
        mask_features: &Tensor,
        h: usize,
        w: usize,
    ) -> Result<Prediction> {
        let x = self.decoder_norm.forward(output)?;
        let class = self.class_embed.forward(&x)?;
        let embed = self.mask_embed.forward(&x)?;
        let q = embed.dim(0)?;
        let masks = embed.matmul(mask_features)?.reshape((q, h, w))?;
        Ok(Prediction { class, masks })
    }
}

/// The cross-attention mask of `masks` `[Q, H, W]` at a level of `size`: resized bilinearly,
/// `-inf` where `sigmoid < 0.5`, except in rows that would block everything.
fn attention_mask(masks: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    let q = masks.dim(0)?;
    let resized = interpolate_axis(&interpolate_axis(masks, 1, h, false)?, 2, w, false)?;
    let probs = candle_nn::ops::sigmoid(&resized.reshape((q, h * w))?)?;
    let rows = probs.to_vec2::<f32>()?;
    let mut data = Vec::with_capacity(q * h * w);
    for row in rows {
        let blocked: Vec<bool> = row.iter().map(|&p| p < 0.5).collect();
        let all = blocked.iter().all(|&b| b);
        data.extend(
            blocked
                .iter()
                .map(|&b| if b && !all { f32::NEG_INFINITY } else { 0.0 }),
        );
    }
    Tensor::from_vec(data, (q, h * w), masks.device())
}

/// `post_process_semantic_segmentation`'s scores before the resize: `softmax(class)[:, :-1]`
/// against `sigmoid(masks)`, `[classes, H, W]`.
pub fn semantic_scores(pred: &Prediction) -> Result<Tensor> {
    let (q, h, w) = pred.masks.dims3()?;
    let classes = pred.class.dim(1)? - 1;
    let probs = candle_nn::ops::softmax_last_dim(&pred.class)?.narrow(D::Minus1, 0, classes)?;
    let masks = candle_nn::ops::sigmoid(&pred.masks)?.reshape((q, h * w))?;
    probs
        .t()?
        .contiguous()?
        .matmul(&masks)?
        .reshape((classes, h, w))
}
