//! ComfyUI's text-encoding semantics on top of `ClipTextModel`
//! (`comfy/sd1_clip.py` `SDClipModel` + `ClipTokenWeightEncoder.encode_token_weights`,
//! `comfy/sd2_clip.py`, `comfy/sdxl_clip.py`).
//!
//! Per encoder: every chunk is encoded (batched together with an empty prompt when any weight is
//! not 1), positions with weight `w != 1` become `(z - z_empty) * w + z_empty` where `z_empty` is
//! the same position of the empty prompt's encoding, chunks are concatenated along the sequence
//! axis, and the pooled output comes from the first chunk. Outputs are f32 like ComfyUI's.

use crate::device::to_host;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;

use crate::clip::model::{ClipForwardOptions, ClipTextModel};
use crate::clip::ClipError;
use crate::tokenizer::{
    ClipBpe, EmbeddingLookup, PromptToken, SdTokenizer, SdTokenizerConfig, TokenChunk, END_OF_TEXT,
    START_OF_TEXT,
};

/// Which layer an encoder returns as its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipLayer {
    /// ComfyUI `"last"`: the final-LN output of the last layer.
    Last,
    /// ComfyUI `"hidden"` with `layer_idx`: output of that layer (negative counts from the end),
    /// with the final LN when `layer_norm_hidden_state` is set.
    Hidden(isize),
}

/// Start, end and padding ids of an encoder (ComfyUI `special_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Start token.
    pub start: u32,
    /// End token.
    pub end: u32,
    /// Padding token (end for CLIP-L, 0 for OpenCLIP).
    pub pad: u32,
}

/// How one `SDClipModel` turns chunks into a context (ComfyUI constructor arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipEncoderConfig {
    /// Layer used when no clip skip is set.
    pub layer: ClipLayer,
    /// Apply the final LN to a `Hidden` layer.
    pub layer_norm_hidden_state: bool,
    /// Return the projected pooled output (when the model has a projection).
    pub return_projected_pooled: bool,
    /// Tokens of the empty prompt used for weighting.
    pub special_tokens: SpecialTokens,
}

impl ClipEncoderConfig {
    /// SD1 CLIP-L: last layer with final LN; unprojected pooled (`SD1CheckpointClipModel`).
    pub fn sd1_clip_l() -> Self {
        Self {
            layer: ClipLayer::Last,
            layer_norm_hidden_state: true,
            return_projected_pooled: false,
            special_tokens: SpecialTokens {
                start: START_OF_TEXT,
                end: END_OF_TEXT,
                pad: END_OF_TEXT,
            },
        }
    }

    /// SD2 OpenCLIP-H: penultimate layer with final LN; projected pooled (`SD2ClipHModel`).
    pub fn sd2_clip_h() -> Self {
        Self {
            layer: ClipLayer::Hidden(-2),
            layer_norm_hidden_state: true,
            return_projected_pooled: true,
            special_tokens: SpecialTokens {
                pad: 0,
                ..Self::sd1_clip_l().special_tokens
            },
        }
    }

    /// SDXL CLIP-L: penultimate layer without final LN.
    pub fn sdxl_clip_l() -> Self {
        Self {
            layer: ClipLayer::Hidden(-2),
            layer_norm_hidden_state: false,
            return_projected_pooled: true,
            special_tokens: Self::sd1_clip_l().special_tokens,
        }
    }

    /// SDXL (and refiner) OpenCLIP-bigG: penultimate layer without final LN; projected pooled
    /// (`SDXLClipG`).
    pub fn sdxl_clip_g() -> Self {
        Self {
            special_tokens: Self::sd2_clip_h().special_tokens,
            ..Self::sdxl_clip_l()
        }
    }
}

/// One encoder's output.
#[derive(Debug, Clone)]
pub struct EncodedText {
    /// `[1, 77 * chunks, hidden]` f32.
    pub context: Tensor,
    /// `[1, projection_dim or hidden]` f32: the first chunk's pooled output.
    pub pooled: Tensor,
}

/// ComfyUI's `SDClipModel`: a text transformer plus its layer and pooling choices.
#[derive(Debug, Clone)]
pub struct ClipEncoder {
    model: ClipTextModel,
    cfg: ClipEncoderConfig,
    span: tracing::Span,
}

impl ClipEncoder {
    /// Wraps `model` with the encoding choices `cfg`.
    pub fn new(model: ClipTextModel, cfg: ClipEncoderConfig) -> Self {
        Self {
            model,
            cfg,
            span: tracing::trace_span!("clip_encode"),
        }
    }

    /// The text transformer.
    pub fn model(&self) -> &ClipTextModel {
        &self.model
    }

    /// The encoding choices.
    pub fn config(&self) -> &ClipEncoderConfig {
        &self.cfg
    }

    /// The layer used for `clip_skip` (ComfyUI `CLIPSetLastLayer.stop_at_clip_layer`, e.g. -2):
    /// `None` keeps the default; a value deeper than the model means `Last`, as
    /// `SDClipModel.set_clip_options` does.
    pub fn layer_for(&self, clip_skip: Option<isize>) -> ClipLayer {
        match clip_skip {
            None => self.cfg.layer,
            Some(idx) if idx.unsigned_abs() > self.model.config().num_hidden_layers => {
                ClipLayer::Last
            }
            Some(idx) => ClipLayer::Hidden(idx),
        }
    }

    /// `encode_token_weights`: encodes `chunks` (each the same length, normally 77) into a
    /// `[1, 77 * chunks, hidden]` f32 context and the first chunk's pooled output.
    pub fn encode_token_weights(
        &self,
        chunks: &[TokenChunk],
        clip_skip: Option<isize>,
    ) -> Result<EncodedText, ClipError> {
        self.encode_token_weights_pooled(chunks, clip_skip, Pooled::Configured)
    }

    /// [`Self::encode_token_weights`] with the pooled output `pooled` asks for.
    fn encode_token_weights_pooled(
        &self,
        chunks: &[TokenChunk],
        clip_skip: Option<isize>,
        pooled: Pooled,
    ) -> Result<EncodedText, ClipError> {
        let _enter = self.span.enter();
        let special = self.cfg.special_tokens;
        let has_weights = chunks.iter().flatten().any(|t| t.weight != 1.0);
        let max_len = chunks.iter().map(Vec::len).max().unwrap_or(0);

        let mut rows: Vec<Vec<PromptToken>> = chunks
            .iter()
            .map(|c| c.iter().map(|t| t.token.clone()).collect())
            .collect();
        if has_weights || rows.is_empty() {
            rows.push(empty_tokens(special, max_len));
        }
        let (embeds, eos) = self.input_embeddings(&rows)?;

        let layer = self.layer_for(clip_skip);
        let opts = match layer {
            ClipLayer::Last => ClipForwardOptions::default(),
            ClipLayer::Hidden(i) => ClipForwardOptions {
                intermediate_layer: Some(i),
                final_layer_norm_intermediate: self.cfg.layer_norm_hidden_state,
            },
        };
        let out = self.model.forward_embeds(&embeds, &eos, &opts)?;
        let z = match (layer, out.intermediate) {
            (ClipLayer::Hidden(_), Some(h)) => h,
            _ => out.last_hidden_state,
        }
        .apply(&to_host)?;
        let projected = pooled == Pooled::Configured && self.cfg.return_projected_pooled;
        let pooled = match (projected, out.projected) {
            (true, Some(p)) => p,
            _ => out.pooled,
        };
        let pooled = to_host(&pooled.narrow(0, 0, 1)?)?;

        if chunks.is_empty() {
            // Only the empty prompt was encoded.
            return Ok(EncodedText {
                context: z.narrow(0, z.dim(0)? - 1, 1)?,
                pooled,
            });
        }
        let mut outputs = Vec::with_capacity(chunks.len());
        for (k, chunk) in chunks.iter().enumerate() {
            let zk = z.get(k)?;
            let zk = if has_weights && chunk.iter().any(|t| t.weight != 1.0) {
                let z_empty = z.get(z.dim(0)? - 1)?;
                apply_weights(&zk, &z_empty, chunk)?
            } else {
                zk
            };
            outputs.push(zk);
        }
        let context = Tensor::cat(&outputs, 0)?.unsqueeze(0)?;
        Ok(EncodedText { context, pooled })
    }

    /// Token embeddings for `rows` with textual-inversion vectors spliced in, and each row's
    /// first end-token position. A vector whose width is not the model's is dropped and the row
    /// padded at the end, as ComfyUI's `set_up_textual_embeddings` does.
    fn input_embeddings(
        &self,
        rows: &[Vec<PromptToken>],
    ) -> Result<(Tensor, Vec<usize>), ClipError> {
        let hidden = self.model.hidden_size();
        let dtype = self.model.dtype();
        let device = self.model.device().clone();
        let len = rows.first().map(Vec::len).unwrap_or(0);
        if rows.iter().any(|r| r.len() != len) {
            return Err(ClipError::InvalidInput(
                "token chunks of one prompt must have the same length".to_string(),
            ));
        }
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut vectors: Vec<Vec<(usize, Tensor)>> = Vec::with_capacity(rows.len());
        let mut eos = Vec::with_capacity(rows.len());
        for row in rows {
            let mut row_ids = Vec::with_capacity(len);
            let mut row_vectors = Vec::new();
            for token in row {
                match token {
                    PromptToken::Id(id) => row_ids.push(*id),
                    PromptToken::Embedding(v) if v.elem_count() == hidden => {
                        row_vectors.push((row_ids.len(), v.clone()));
                        // Placeholder id; the row is replaced by the vector below.
                        row_ids.push(0);
                    }
                    PromptToken::Embedding(v) => {
                        tracing::warn!(
                            got = v.elem_count(),
                            expected = hidden,
                            "embedding width does not match the text encoder, ignoring it"
                        );
                    }
                }
            }
            row_ids.resize(len, self.cfg.special_tokens.pad);
            // Placeholder ids are 0, never the end token, so vectors cannot be taken for it.
            let first_end = row_ids
                .iter()
                .position(|&t| t == self.cfg.special_tokens.end)
                .unwrap_or(0);
            eos.push(first_end);
            ids.extend(row_ids);
            vectors.push(row_vectors);
        }
        let ids = Tensor::from_vec(ids, (rows.len(), len), &device)?;
        let embeds = self.model.embed_tokens(&ids)?;
        if vectors.iter().all(Vec::is_empty) {
            return Ok((embeds, eos));
        }
        let mut out_rows = Vec::with_capacity(rows.len());
        for (r, row_vectors) in vectors.iter().enumerate() {
            let mut row = embeds.get(r)?;
            if !row_vectors.is_empty() {
                let mut pieces = Vec::new();
                let mut start = 0;
                for (pos, v) in row_vectors {
                    if *pos > start {
                        pieces.push(row.narrow(0, start, pos - start)?);
                    }
                    pieces.push(
                        v.reshape((1, hidden))?
                            .to_dtype(dtype)?
                            .to_device(&device)?,
                    );
                    start = pos + 1;
                }
                if start < len {
                    pieces.push(row.narrow(0, start, len - start)?);
                }
                row = Tensor::cat(&pieces, 0)?;
            }
            out_rows.push(row);
        }
        Ok((Tensor::stack(&out_rows, 0)?, eos))
    }
}

/// ComfyUI `gen_empty_tokens`: start, end, then padding to `len`.
fn empty_tokens(special: SpecialTokens, len: usize) -> Vec<PromptToken> {
    let mut out = vec![PromptToken::Id(special.start), PromptToken::Id(special.end)];
    while out.len() < len {
        out.push(PromptToken::Id(special.pad));
    }
    out
}

/// `z[j] = (z[j] - z_empty[j]) * w[j] + z_empty[j]` where `w[j] != 1`; other positions unchanged.
/// `z`, `z_empty`: `[seq, hidden]` f32.
fn apply_weights(z: &Tensor, z_empty: &Tensor, chunk: &TokenChunk) -> Result<Tensor, ClipError> {
    let (seq, hidden) = z.dims2()?;
    let weights: Vec<f32> = (0..seq)
        .map(|j| chunk.get(j).map_or(1.0, |t| t.weight as f32))
        .collect();
    let mask: Vec<u8> = (0..seq)
        .map(|j| u8::from(chunk.get(j).is_some_and(|t| t.weight != 1.0)))
        .collect();
    let device = z.device();
    let w = Tensor::from_vec(weights, (seq, 1), device)?.broadcast_as((seq, hidden))?;
    let mask = Tensor::from_vec(mask, (seq, 1), device)?.broadcast_as((seq, hidden))?;
    let weighted = ((z - z_empty)? * w)?.add(z_empty)?;
    Ok(mask.where_cond(&weighted, z)?)
}

/// The model family of a text encoder, which fixes its encoders and how they combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderKind {
    /// CLIP-L, 768 context.
    Sd1,
    /// OpenCLIP-H, 1024 context.
    Sd2,
    /// CLIP-L + OpenCLIP-bigG, 2048 context, 1280 pooled.
    Sdxl,
    /// OpenCLIP-bigG alone, 1280 context, 1280 pooled.
    SdxlRefiner,
}

/// Tokens of one prompt for each encoder of a `TextEncoder` (ComfyUI's `{"l": .., "g": ..}`).
#[derive(Debug, Clone, Default)]
pub struct PromptTokens {
    /// Chunks for CLIP-L (SD1, SDXL).
    pub l: Option<Vec<TokenChunk>>,
    /// Chunks for the OpenCLIP encoder (H for SD2, bigG for SDXL and the refiner).
    pub g: Option<Vec<TokenChunk>>,
}

/// Which pooled output an encoding returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooled {
    /// The encoder's own choice ([`ClipEncoderConfig::return_projected_pooled`]).
    Configured,
    /// Before the text projection (ComfyUI's `return_pooled="unprojected"`).
    Unprojected,
}

/// A prompt's conditioning, as ComfyUI's `CLIPTextEncode` outputs it.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Cross-attention context, `[1, 77 * chunks, context_dim]` f32.
    pub context: Tensor,
    /// Pooled output, `[1, dim]` f32 (SDXL: bigG projected, 1280; SD1: CLIP-L unprojected).
    pub pooled: Tensor,
}

/// ComfyUI's `CLIP` object for one model family: tokenizers plus encoders.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    kind: TextEncoderKind,
    clip_l: Option<(SdTokenizer, ClipEncoder)>,
    clip_g: Option<(SdTokenizer, ClipEncoder)>,
    /// The HF-named weights the encoders were built from (CLIP-L; OpenCLIP H or bigG), kept so a
    /// LoRA can patch copies of them.
    weights: (Option<Arc<Weights>>, Option<Arc<Weights>>),
}

/// HF-named weights of one text model.
pub type Weights = HashMap<String, Tensor>;

impl TextEncoder {
    /// SD1: CLIP-L.
    pub fn sd1(clip_l: ClipTextModel, bpe: Arc<ClipBpe>) -> Self {
        Self {
            kind: TextEncoderKind::Sd1,
            clip_l: Some(pair(
                clip_l,
                bpe,
                SdTokenizerConfig::clip_l(),
                ClipEncoderConfig::sd1_clip_l(),
            )),
            clip_g: None,
            weights: (None, None),
        }
    }

    /// SD2: OpenCLIP-H.
    pub fn sd2(clip_h: ClipTextModel, bpe: Arc<ClipBpe>) -> Self {
        Self {
            kind: TextEncoderKind::Sd2,
            clip_l: None,
            clip_g: Some(pair(
                clip_h,
                bpe,
                SdTokenizerConfig::open_clip_h(),
                ClipEncoderConfig::sd2_clip_h(),
            )),
            weights: (None, None),
        }
    }

    /// SDXL: CLIP-L and OpenCLIP-bigG.
    pub fn sdxl(clip_l: ClipTextModel, clip_g: ClipTextModel, bpe: Arc<ClipBpe>) -> Self {
        Self {
            kind: TextEncoderKind::Sdxl,
            clip_l: Some(pair(
                clip_l,
                bpe.clone(),
                SdTokenizerConfig::clip_l(),
                ClipEncoderConfig::sdxl_clip_l(),
            )),
            clip_g: Some(pair(
                clip_g,
                bpe,
                SdTokenizerConfig::open_clip_bigg(),
                ClipEncoderConfig::sdxl_clip_g(),
            )),
            weights: (None, None),
        }
    }

    /// SDXL refiner: OpenCLIP-bigG alone.
    pub fn sdxl_refiner(clip_g: ClipTextModel, bpe: Arc<ClipBpe>) -> Self {
        Self {
            kind: TextEncoderKind::SdxlRefiner,
            clip_l: None,
            clip_g: Some(pair(
                clip_g,
                bpe,
                SdTokenizerConfig::open_clip_bigg(),
                ClipEncoderConfig::sdxl_clip_g(),
            )),
            weights: (None, None),
        }
    }

    /// The model family.
    pub fn kind(&self) -> TextEncoderKind {
        self.kind
    }

    /// Keeps the weights the encoders were built from (CLIP-L, then OpenCLIP H or bigG).
    pub fn with_weights(
        mut self,
        l: Option<HashMap<String, Tensor>>,
        g: Option<HashMap<String, Tensor>>,
    ) -> Self {
        self.weights = (l.map(Arc::new), g.map(Arc::new));
        self
    }

    /// The weights kept by [`Self::with_weights`].
    pub fn weights(&self) -> (Option<&Weights>, Option<&Weights>) {
        (self.weights.0.as_deref(), self.weights.1.as_deref())
    }

    /// The CLIP-L tokenizer and encoder, if this family has one.
    pub fn clip_l(&self) -> Option<(&SdTokenizer, &ClipEncoder)> {
        self.clip_l.as_ref().map(|(t, e)| (t, e))
    }

    /// The OpenCLIP (H or bigG) tokenizer and encoder, if this family has one.
    pub fn clip_g(&self) -> Option<(&SdTokenizer, &ClipEncoder)> {
        self.clip_g.as_ref().map(|(t, e)| (t, e))
    }

    /// Tokenizes `text` for every encoder (ComfyUI `CLIP.tokenize`).
    pub fn tokenize(&self, text: &str, embeddings: Option<&dyn EmbeddingLookup>) -> PromptTokens {
        PromptTokens {
            l: self
                .clip_l
                .as_ref()
                .map(|(t, _)| t.tokenize_with_weights(text, embeddings)),
            g: self
                .clip_g
                .as_ref()
                .map(|(t, _)| t.tokenize_with_weights(text, embeddings)),
        }
    }

    /// Encodes tokens (ComfyUI `CLIP.encode_from_tokens(.., return_pooled=True)`).
    ///
    /// `clip_skip` is `CLIPSetLastLayer.stop_at_clip_layer` (`-1`, `-2`, ..), applied to every
    /// encoder; `None` keeps each family's default layer.
    pub fn encode_tokens(
        &self,
        tokens: &PromptTokens,
        clip_skip: Option<isize>,
    ) -> Result<Conditioning, ClipError> {
        self.encode_tokens_pooled(tokens, clip_skip, Pooled::Configured)
    }

    /// [`Self::encode_tokens`] with every encoder's pooled output taken before its text
    /// projection (`encode_from_tokens(.., return_pooled="unprojected")`, GLIGEN's box prompts).
    pub fn encode_tokens_unprojected(
        &self,
        tokens: &PromptTokens,
        clip_skip: Option<isize>,
    ) -> Result<Conditioning, ClipError> {
        self.encode_tokens_pooled(tokens, clip_skip, Pooled::Unprojected)
    }

    fn encode_tokens_pooled(
        &self,
        tokens: &PromptTokens,
        clip_skip: Option<isize>,
        pooled: Pooled,
    ) -> Result<Conditioning, ClipError> {
        let encode = |slot: &Option<(SdTokenizer, ClipEncoder)>,
                      chunks: &Option<Vec<TokenChunk>>,
                      name: &str|
         -> Result<Option<EncodedText>, ClipError> {
            match (slot, chunks) {
                (Some((_, enc)), Some(chunks)) => Ok(Some(
                    enc.encode_token_weights_pooled(chunks, clip_skip, pooled)?,
                )),
                (Some(_), None) => Err(ClipError::InvalidInput(format!(
                    "no tokens for the clip_{name} encoder"
                ))),
                (None, _) => Ok(None),
            }
        };
        let l = encode(&self.clip_l, &tokens.l, "l")?;
        let g = encode(&self.clip_g, &tokens.g, "g")?;
        match (l, g) {
            (Some(l), None) => Ok(Conditioning {
                context: l.context,
                pooled: l.pooled,
            }),
            (None, Some(g)) => Ok(Conditioning {
                context: g.context,
                pooled: g.pooled,
            }),
            (Some(l), Some(g)) => {
                // SDXLClipModel: cut both to the shorter sequence, concatenate the widths.
                let cut = l.context.dim(1)?.min(g.context.dim(1)?);
                let context = Tensor::cat(
                    &[l.context.narrow(1, 0, cut)?, g.context.narrow(1, 0, cut)?],
                    2,
                )?;
                Ok(Conditioning {
                    context,
                    pooled: g.pooled,
                })
            }
            (None, None) => Err(ClipError::InvalidInput(
                "text encoder has no encoders".to_string(),
            )),
        }
    }

    /// Tokenizes and encodes `text` (ComfyUI `CLIPTextEncode`).
    pub fn encode(
        &self,
        text: &str,
        embeddings: Option<&dyn EmbeddingLookup>,
        clip_skip: Option<isize>,
    ) -> Result<Conditioning, ClipError> {
        let tokens = self.tokenize(text, embeddings);
        self.encode_tokens(&tokens, clip_skip)
    }
}

fn pair(
    model: ClipTextModel,
    bpe: Arc<ClipBpe>,
    tokenizer: SdTokenizerConfig,
    encoder: ClipEncoderConfig,
) -> (SdTokenizer, ClipEncoder) {
    // The embedding lookup is asked for vectors as wide as the actual model.
    let tokenizer = SdTokenizerConfig {
        embedding_dim: model.hidden_size(),
        ..tokenizer
    };
    (
        SdTokenizer::new(bpe, tokenizer),
        ClipEncoder::new(model, encoder),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::model::{ClipActivation, ClipConfig};
    use crate::synth::SynthBackend;
    use crate::tokenizer::WeightedToken;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    fn tiny(dtype: DType) -> ClipTextModel {
        let cfg = ClipConfig {
            vocab_size: 49408,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: Some(8),
            eos_token_id: END_OF_TEXT,
        };
        let vb = VarBuilder::from_backend(Box::new(SynthBackend), dtype, Device::Cpu);
        ClipTextModel::new(vb, &cfg).expect("synthetic model builds")
    }

    fn chunk(ids: &[u32], weights: &[f64]) -> TokenChunk {
        let mut c: TokenChunk = ids
            .iter()
            .zip(weights)
            .map(|(&id, &weight)| WeightedToken {
                token: PromptToken::Id(id),
                weight,
            })
            .collect();
        while c.len() < 77 {
            c.push(WeightedToken {
                token: PromptToken::Id(END_OF_TEXT),
                weight: 1.0,
            });
        }
        c
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("same shapes")
    }

    #[test]
    fn weights_interpolate_against_the_empty_prompt() -> Result<(), ClipError> {
        let enc = ClipEncoder::new(tiny(DType::F32), ClipEncoderConfig::sd1_clip_l());
        let ids = [START_OF_TEXT, 320, 2368, END_OF_TEXT];
        let plain = enc.encode_token_weights(&[chunk(&ids, &[1.0; 4])], None)?;
        let weighted = enc.encode_token_weights(&[chunk(&ids, &[1.0, 1.0, 2.0, 1.0])], None)?;
        let empty =
            enc.encode_token_weights(&[chunk(&[START_OF_TEXT, END_OF_TEXT], &[1.0; 2])], None)?;
        let (p, w, e) = (
            plain.context.get(0)?,
            weighted.context.get(0)?,
            empty.context.get(0)?,
        );
        // Unweighted positions are untouched, the weighted one is e + 2 (p - e).
        assert_eq!(max_abs(&p.get(1)?, &w.get(1)?), 0.0);
        let expected = ((p.get(2)? - e.get(2)?)? * 2.0)?.add(&e.get(2)?)?;
        assert!(max_abs(&expected, &w.get(2)?) < 1e-6);
        assert_eq!(max_abs(&plain.pooled, &weighted.pooled), 0.0);
        Ok(())
    }

    #[test]
    fn wrong_width_embedding_is_dropped_and_padded() -> Result<(), ClipError> {
        let enc = ClipEncoder::new(tiny(DType::F32), ClipEncoderConfig::sd1_clip_l());
        let mut with_bad = chunk(&[START_OF_TEXT, 320, END_OF_TEXT], &[1.0; 3]);
        with_bad.insert(
            2,
            WeightedToken {
                token: PromptToken::Embedding(Tensor::ones(5, DType::F32, &Device::Cpu)?),
                weight: 1.0,
            },
        );
        with_bad.truncate(77);
        let a = enc.encode_token_weights(&[with_bad], None)?;
        let b = enc.encode_token_weights(
            &[chunk(&[START_OF_TEXT, 320, END_OF_TEXT], &[1.0; 3])],
            None,
        )?;
        assert_eq!(max_abs(&a.context, &b.context), 0.0);
        Ok(())
    }

    #[test]
    fn clip_skip_follows_set_clip_options() {
        let enc = ClipEncoder::new(tiny(DType::F32), ClipEncoderConfig::sdxl_clip_g());
        assert_eq!(enc.layer_for(None), ClipLayer::Hidden(-2));
        assert_eq!(enc.layer_for(Some(-1)), ClipLayer::Hidden(-1));
        assert_eq!(enc.layer_for(Some(-2)), ClipLayer::Hidden(-2));
        // Deeper than the 2-layer model: ComfyUI falls back to "last".
        assert_eq!(enc.layer_for(Some(-3)), ClipLayer::Last);
    }

    /// `return_pooled="unprojected"`: bigG's pooled output before its projection (16 wide, not
    /// the projected 8), the context unchanged.
    #[test]
    fn unprojected_pooled_output_skips_the_projection() -> Result<(), ClipError> {
        let enc = TextEncoder::sdxl(tiny(DType::F32), tiny(DType::F32), Arc::new(ClipBpe::new()));
        let tokens = enc.tokenize("a cat", None);
        let projected = enc.encode_tokens(&tokens, None)?;
        let unprojected = enc.encode_tokens_unprojected(&tokens, None)?;
        assert_eq!(projected.pooled.dims(), &[1, 8]);
        assert_eq!(unprojected.pooled.dims(), &[1, 16]);
        assert_eq!(max_abs(&projected.context, &unprojected.context), 0.0);
        Ok(())
    }

    #[test]
    fn half_precision_weights_give_f32_outputs_close_to_f32() -> Result<(), ClipError> {
        let bpe = Arc::new(ClipBpe::new());
        let f32_enc = TextEncoder::sdxl(tiny(DType::F32), tiny(DType::F32), bpe.clone());
        let f16_enc = TextEncoder::sdxl(tiny(DType::F16), tiny(DType::F16), bpe);
        let a = f32_enc.encode("a (photo:1.2) of a cat", None, None)?;
        let b = f16_enc.encode("a (photo:1.2) of a cat", None, None)?;
        assert_eq!(b.context.dtype(), DType::F32);
        assert_eq!(a.context.dims(), &[1, 77, 32]);
        assert_eq!(a.pooled.dims(), &[1, 8]);
        assert!(max_abs(&a.context, &b.context) < 5e-2);
        Ok(())
    }
}
