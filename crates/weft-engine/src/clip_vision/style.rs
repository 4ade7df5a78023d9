//! The T2I-Adapter style model (ComfyUI's `comfy/t2i_adapter/adapter.py` `StyleAdapter`, loaded
//! by `comfy.sd.load_style_model` from `models/style_models`): learned style tokens appended to a
//! CLIP vision tower's last hidden state, three pre-LN transformer blocks, and the last tokens
//! projected to the UNet's context width.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::clip::convert::{layer_count, openclip_resblocks};
use crate::clip::model::{ClipActivation, EncoderLayer, LayerShape};
use crate::clip::ClipError;
use crate::device::compute_dtype;
use crate::ops::cast::operand;
use crate::ops::layers::{layer_norm, LayerNorm};

/// ComfyUI builds every style model with 8 heads (`StyleAdapter(num_head=8)`).
const HEADS: usize = 8;

/// A loaded style adapter.
#[derive(Debug, Clone)]
pub struct StyleAdapter {
    /// `[1, tokens, width]`.
    style_embedding: Tensor,
    ln_pre: LayerNorm,
    layers: Vec<EncoderLayer>,
    ln_post: LayerNorm,
    /// `[width, context]`, applied as `x @ proj`.
    proj: Tensor,
    span: tracing::Span,
}

impl StyleAdapter {
    /// Builds the adapter from its file's weights (`style_embedding`, `ln_pre`, `ln_post`,
    /// `proj`, `transformer_layes.N.*` in OpenCLIP block names); the shape comes from them.
    /// `None` when `style_embedding` is absent: not a style model (ComfyUI's test).
    pub fn from_weights(
        sd: &HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<StyleAdapter>, ClipError> {
        let Some(style) = sd.get("style_embedding") else {
            return Ok(None);
        };
        let (_, _, width) = style.dims3()?;
        let missing = |key: &str| ClipError::MissingWeight {
            key: key.to_string(),
        };
        let fc1 = sd
            .get("transformer_layes.0.mlp.c_fc.weight")
            .ok_or_else(|| missing("transformer_layes.0.mlp.c_fc.weight"))?;
        let shape = LayerShape {
            hidden_size: width,
            intermediate_size: fc1.dim(0)?,
            num_attention_heads: HEADS,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
        };
        shape.check()?;
        let mut hf = HashMap::new();
        openclip_resblocks(sd, "transformer_layes.", "layers.", &mut hf)?;
        let depth = layer_count(hf.keys(), "layers.");
        for key in [
            "ln_pre.weight",
            "ln_pre.bias",
            "ln_post.weight",
            "ln_post.bias",
        ] {
            let t = sd.get(key).ok_or_else(|| missing(key))?;
            hf.insert(key.to_string(), t.clone());
        }
        let proj = sd.get("proj").ok_or_else(|| missing("proj"))?;
        let vb = VarBuilder::from_tensors(hf, dtype, device);
        let layers = (0..depth)
            .map(|i| EncoderLayer::new(vb.pp("layers").pp(i), &shape))
            .collect::<Result<Vec<_>, ClipError>>()?;
        Ok(Some(StyleAdapter {
            style_embedding: style.to_dtype(dtype)?.to_device(device)?,
            ln_pre: layer_norm(width, 1e-5, vb.pp("ln_pre"))?,
            layers,
            ln_post: layer_norm(width, 1e-5, vb.pp("ln_post"))?,
            proj: proj.to_dtype(dtype)?.to_device(device)?,
            span: tracing::trace_span!("style_adapter"),
        }))
    }

    /// Width of the vision states it takes.
    pub fn width(&self) -> usize {
        self.proj.dims().first().copied().unwrap_or(0)
    }

    /// Width of the tokens it gives (the UNet's context width).
    pub fn context_dim(&self) -> usize {
        self.proj.dims().get(1).copied().unwrap_or(0)
    }

    /// Style tokens it appends per image.
    pub fn tokens(&self) -> usize {
        self.style_embedding.dims().get(1).copied().unwrap_or(0)
    }

    /// ComfyUI's `StyleModel.get_cond`: `last_hidden_state` `[B, L, width]` of a CLIP vision
    /// output to `[B, tokens, context_dim]` f32 on the CPU.
    pub fn forward(&self, last_hidden_state: &Tensor) -> Result<Tensor, ClipError> {
        let _enter = self.span.enter();
        let (batch, _, width) = last_hidden_state.dims3()?;
        if width != self.width() {
            return Err(ClipError::InvalidInput(format!(
                "the style model takes {}-wide clip vision states, these are {width} wide",
                self.width()
            )));
        }
        let device = self.proj.device();
        let dtype = compute_dtype(device, self.proj.dtype());
        let xs = last_hidden_state.to_device(device)?.to_dtype(dtype)?;
        let style = operand(&self.style_embedding, &xs)?.repeat((batch, 1, 1))?;
        let mut xs = self.ln_pre.forward(&Tensor::cat(&[&xs, &style], 1)?)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, None)?;
        }
        let seq = xs.dim(1)?;
        let tokens = self.tokens();
        let xs = self.ln_post.forward(&xs.narrow(1, seq - tokens, tokens)?)?;
        Ok(xs
            .broadcast_matmul(&operand(&self.proj, &xs)?)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?)
    }
}
