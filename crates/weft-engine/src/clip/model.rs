//! The CLIP text transformer (HF transformers `CLIPTextModel` / `CLIPTextModelWithProjection`
//! layout and maths), returning what ComfyUI's `comfy/clip_model.py` returns: the final-LN last
//! layer, an intermediate layer (with or without the final LN), the pooled output at the first
//! end token, and its projection.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::clip::ClipError;
use crate::ops::layers::{
    embedding, layer_norm, linear, linear_no_bias, Embedding, LayerNorm, Linear,
};

/// Activation of the MLP blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP-L).
    QuickGelu,
    /// Exact (erf) GELU (OpenCLIP H and bigG; ComfyUI's `"gelu"`).
    Gelu,
}

/// Shape of a CLIP text transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// Vocabulary rows in `token_embedding` (49408).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Rows of `position_embedding` (77): the longest accepted sequence.
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon (1e-5).
    pub layer_norm_eps: f64,
    /// Output width of `text_projection` (no bias); `None` when the weights have none.
    pub projection_dim: Option<usize>,
    /// The end-of-text id; the pooled output is taken at its first occurrence (49407).
    pub eos_token_id: u32,
}

impl ClipConfig {
    /// OpenAI CLIP ViT-L/14 text encoder (SD1, SDXL first encoder): 768 wide, 12 layers,
    /// 12 heads, quick GELU. SD checkpoints carry no `text_projection` for it.
    pub fn clip_l() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: None,
            eos_token_id: 49407,
        }
    }

    /// OpenCLIP ViT-H/14 text encoder (SD2): 1024 wide, 24 layers, 16 heads, exact GELU,
    /// 1024 projection.
    pub fn open_clip_h() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            hidden_act: ClipActivation::Gelu,
            projection_dim: Some(1024),
            ..Self::clip_l()
        }
    }

    /// OpenCLIP ViT-bigG/14 text encoder (SDXL second encoder, SDXL refiner): 1280 wide,
    /// 32 layers, 20 heads, exact GELU, 1280 projection.
    pub fn open_clip_bigg() -> Self {
        Self {
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            hidden_act: ClipActivation::Gelu,
            projection_dim: Some(1280),
            ..Self::clip_l()
        }
    }
}

/// The shape of one pre-LN transformer layer, shared by the CLIP text and vision towers and the
/// T2I style adapter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LayerShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub hidden_act: ClipActivation,
    pub layer_norm_eps: f64,
}

impl LayerShape {
    /// Fails when the width does not split into the heads.
    pub fn check(&self) -> Result<(), ClipError> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(ClipError::InvalidConfig(format!(
                "hidden size {} is not a multiple of {} heads",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }
}

impl ClipConfig {
    pub(crate) fn layer_shape(&self) -> LayerShape {
        LayerShape {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_attention_heads: self.num_attention_heads,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

/// What `forward` computes besides the final-LN last layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClipForwardOptions {
    /// Also return the output of this layer (ComfyUI's `intermediate_output`): `n >= 0` is the
    /// output of layer `n` (0-based); negative counts from the end (`-1` = last layer,
    /// `-2` = penultimate).
    pub intermediate_layer: Option<isize>,
    /// Apply `final_layer_norm` to the intermediate output (ComfyUI's
    /// `layer_norm_hidden_state`).
    pub final_layer_norm_intermediate: bool,
}

/// Outputs of the text transformer (all in the model's dtype).
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `final_layer_norm(last layer)`, `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor,
    /// The requested intermediate layer, `[batch, seq, hidden]`.
    pub intermediate: Option<Tensor>,
    /// `last_hidden_state` at each row's first end token, `[batch, hidden]`.
    pub pooled: Tensor,
    /// `text_projection(pooled)`, `[batch, projection_dim]`, when the model has a projection.
    pub projected: Option<Tensor>,
}

/// The CLIP text transformer with HF transformers weight names (`text_model.embeddings...`,
/// `text_model.encoder.layers.N...`, `text_model.final_layer_norm`, `text_projection.weight`).
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    cfg: ClipConfig,
    span: tracing::Span,
}

impl ClipTextModel {
    /// Builds the model from `vb` rooted at the HF key tree (`text_model.*`,
    /// `text_projection.weight` when `cfg.projection_dim` is set).
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self, ClipError> {
        let shape = cfg.layer_shape();
        shape.check()?;
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let token_embedding =
            embedding(cfg.vocab_size, cfg.hidden_size, emb.pp("token_embedding"))?;
        let position_embedding = embedding(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            emb.pp("position_embedding"),
        )?;
        let layers_vb = tm.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(layers_vb.pp(i), &shape))
            .collect::<Result<Vec<_>, ClipError>>()?;
        let final_layer_norm = layer_norm(
            cfg.hidden_size,
            cfg.layer_norm_eps,
            tm.pp("final_layer_norm"),
        )?;
        let text_projection = match cfg.projection_dim {
            Some(dim) => Some(linear_no_bias(
                cfg.hidden_size,
                dim,
                vb.pp("text_projection"),
            )?),
            None => None,
        };
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            cfg: cfg.clone(),
            span: tracing::trace_span!("clip_text_model"),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    /// Width of the token embeddings.
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// The dtype it computes in (f32 on the CPU whatever the weights').
    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        self.token_embedding.embeddings().device()
    }

    /// Token embeddings (without positions): `[batch, seq]` u32 ids to `[batch, seq, hidden]`.
    pub fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor, ClipError> {
        Ok(self.token_embedding.forward(input_ids)?)
    }

    /// Runs the transformer on token ids.
    ///
    /// `input_ids`: `[batch, seq]` u32 with `seq <= max_position_embeddings`. The pooled output is
    /// taken at each row's first `eos_token_id` (position 0 when a row has none, as the argmax in
    /// HF and ComfyUI gives).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        opts: &ClipForwardOptions,
    ) -> Result<ClipTextOutput, ClipError> {
        let rows = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let eos: Vec<usize> = rows
            .iter()
            .map(|row| {
                row.iter()
                    .position(|&t| t == self.cfg.eos_token_id)
                    .unwrap_or(0)
            })
            .collect();
        let embeds = self.embed_tokens(input_ids)?;
        self.forward_embeds(&embeds, &eos, opts)
    }

    /// Runs the transformer on token embeddings (positions are added here), for inputs with
    /// textual-inversion vectors spliced in.
    ///
    /// `token_embeds`: `[batch, seq, hidden]`; `eos_positions`: per row, where to take the pooled
    /// output (each `< seq`).
    pub fn forward_embeds(
        &self,
        token_embeds: &Tensor,
        eos_positions: &[usize],
        opts: &ClipForwardOptions,
    ) -> Result<ClipTextOutput, ClipError> {
        let _enter = self.span.enter();
        let (batch, seq, hidden) = token_embeds.dims3()?;
        if seq > self.cfg.max_position_embeddings {
            return Err(ClipError::SequenceTooLong {
                len: seq,
                max: self.cfg.max_position_embeddings,
            });
        }
        if hidden != self.cfg.hidden_size {
            return Err(ClipError::EmbeddingWidth {
                got: hidden,
                expected: self.cfg.hidden_size,
            });
        }
        if eos_positions.len() != batch || eos_positions.iter().any(|&p| p >= seq) {
            return Err(ClipError::InvalidInput(format!(
                "end token positions {eos_positions:?} do not fit a batch of {batch} sequences of {seq}"
            )));
        }
        let intermediate_index = match opts.intermediate_layer {
            Some(layer) => Some(self.resolve_layer(layer)?),
            None => None,
        };

        let positions = self
            .position_embedding
            .embeddings()
            .narrow(0, 0, seq)?
            .to_dtype(token_embeds.dtype())?;
        let mut xs = token_embeds.broadcast_add(&positions)?;
        let mask = causal_mask(seq, token_embeds.device())?;
        let mut intermediate = None;
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs, Some(&mask))?;
            if Some(i) == intermediate_index {
                intermediate = Some(xs.clone());
            }
        }
        let last_hidden_state = self.final_layer_norm.forward(&xs)?;
        let intermediate = match intermediate {
            Some(h) if opts.final_layer_norm_intermediate => {
                Some(self.final_layer_norm.forward(&h)?)
            }
            other => other,
        };
        let pooled = eos_positions
            .iter()
            .enumerate()
            .map(|(b, &pos)| last_hidden_state.get(b)?.get(pos))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&pooled, 0)?;
        let projected = match &self.text_projection {
            Some(proj) => Some(proj.forward(&pooled)?),
            None => None,
        };
        Ok(ClipTextOutput {
            last_hidden_state,
            intermediate,
            pooled,
            projected,
        })
    }

    /// ComfyUI's `intermediate_output` index to a 0-based layer.
    fn resolve_layer(&self, layer: isize) -> Result<usize, ClipError> {
        let n = self.layers.len();
        let resolved = if layer < 0 {
            n.checked_sub(layer.unsigned_abs())
        } else {
            Some(layer.unsigned_abs())
        };
        match resolved {
            Some(i) if i < n => Ok(i),
            _ => Err(ClipError::LayerOutOfRange {
                layer,
                num_layers: n,
            }),
        }
    }
}

/// `[seq, seq]` f32 mask: 0 on and below the diagonal, -inf above (HF and ComfyUI causal mask).
fn causal_mask(seq: usize, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (seq, seq), device)
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    span: tracing::Span,
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &LayerShape) -> Result<Self, ClipError> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: linear(d, d, vb.pp("q_proj"))?,
            k_proj: linear(d, d, vb.pp("k_proj"))?,
            v_proj: linear(d, d, vb.pp("v_proj"))?,
            out_proj: linear(d, d, vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
            span: tracing::trace_span!("clip_attention"),
        })
    }

    /// `[batch, seq, hidden]` -> `[batch, seq, hidden]`; `mask` is `[seq, seq]` f32 (the text
    /// tower's causal mask; the vision tower attends everywhere).
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let (b, t, d) = xs.dims3()?;
        let dtype = xs.dtype();
        let split = |x: Tensor| -> candle_core::Result<Tensor> {
            x.reshape((b, t, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = split((self.q_proj.forward(xs)? * scale)?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        // Scores and softmax in f32 so half-precision weights do not overflow here.
        let scores = q
            .matmul(&k.transpose(2, 3)?.contiguous()?)?
            .to_dtype(DType::F32)?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, d))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
    span: tracing::Span,
}

impl Mlp {
    fn new(vb: VarBuilder, cfg: &LayerShape) -> Result<Self, ClipError> {
        Ok(Self {
            fc1: linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("fc1"))?,
            fc2: linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("fc2"))?,
            act: cfg.hidden_act,
            span: tracing::trace_span!("clip_mlp"),
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let h = self.fc1.forward(xs)?;
        let h = match self.act {
            ClipActivation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            ClipActivation::Gelu => h.gelu_erf()?,
        };
        self.fc2.forward(&h)
    }
}

/// One pre-LN transformer layer with HF names (`layer_norm1`, `self_attn.{q,k,v,out}_proj`,
/// `layer_norm2`, `mlp.fc1`, `mlp.fc2`).
#[derive(Debug, Clone)]
pub(crate) struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
    span: tracing::Span,
}

impl EncoderLayer {
    pub(crate) fn new(vb: VarBuilder, cfg: &LayerShape) -> Result<Self, ClipError> {
        Ok(Self {
            layer_norm1: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::new(vb.pp("mlp"), cfg)?,
            span: tracing::trace_span!("clip_encoder_layer"),
        })
    }

    /// `[batch, seq, hidden]` -> `[batch, seq, hidden]`.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + h)?;
        let h = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        xs + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::SynthBackend;

    fn tiny() -> ClipConfig {
        ClipConfig {
            vocab_size: 64,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            max_position_embeddings: 8,
            hidden_act: ClipActivation::Gelu,
            layer_norm_eps: 1e-5,
            projection_dim: Some(8),
            eos_token_id: 63,
        }
    }

    fn model(cfg: &ClipConfig) -> ClipTextModel {
        let vb = VarBuilder::from_backend(Box::new(SynthBackend), DType::F32, Device::Cpu);
        ClipTextModel::new(vb, cfg).expect("synthetic model builds")
    }

    #[test]
    fn shapes_and_layer_selection() -> Result<(), ClipError> {
        let cfg = tiny();
        let m = model(&cfg);
        let ids = Tensor::new(&[[62u32, 5, 63, 63], [62, 63, 0, 0]], &Device::Cpu)?;
        let opts = ClipForwardOptions {
            intermediate_layer: Some(-1),
            final_layer_norm_intermediate: true,
        };
        let out = m.forward(&ids, &opts)?;
        assert_eq!(out.last_hidden_state.dims(), &[2, 4, 16]);
        assert_eq!(out.pooled.dims(), &[2, 16]);
        assert_eq!(
            out.projected.as_ref().map(|p| p.dims().to_vec()),
            Some(vec![2, 8])
        );
        // Layer -1 with the final LN is the last hidden state.
        let inter = out.intermediate.expect("requested");
        let diff = (inter - &out.last_hidden_state)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        // Pooled is taken at the first end token: row 0 position 2, row 1 position 1.
        let p0 = out.last_hidden_state.get(0)?.get(2)?;
        let d0 = (out.pooled.get(0)? - p0)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d0, 0.0);
        assert!(matches!(
            m.forward(
                &ids,
                &ClipForwardOptions {
                    intermediate_layer: Some(-4),
                    ..opts
                }
            ),
            Err(ClipError::LayerOutOfRange {
                layer: -4,
                num_layers: 3
            })
        ));
        assert!(matches!(
            m.forward(
                &ids,
                &ClipForwardOptions {
                    intermediate_layer: Some(3),
                    ..opts
                }
            ),
            Err(ClipError::LayerOutOfRange { layer: 3, .. })
        ));
        Ok(())
    }

    #[test]
    fn causal_mask_hides_later_tokens() -> Result<(), ClipError> {
        let m = model(&tiny());
        let a = Tensor::new(&[[62u32, 5, 7, 63]], &Device::Cpu)?;
        let b = Tensor::new(&[[62u32, 5, 9, 1]], &Device::Cpu)?;
        let opts = ClipForwardOptions::default();
        let ha = m.forward(&a, &opts)?.last_hidden_state.narrow(1, 0, 2)?;
        let hb = m.forward(&b, &opts)?.last_hidden_state.narrow(1, 0, 2)?;
        let diff = (ha - hb)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }

    #[test]
    fn too_long_input_is_an_error() -> Result<(), ClipError> {
        let m = model(&tiny());
        let ids = Tensor::zeros((1, 9), DType::U32, &Device::Cpu)?;
        assert!(matches!(
            m.forward(&ids, &ClipForwardOptions::default()),
            Err(ClipError::SequenceTooLong { len: 9, max: 8 })
        ));
        Ok(())
    }
}
