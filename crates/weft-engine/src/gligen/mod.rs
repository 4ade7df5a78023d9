//! GLIGEN text boxes (ComfyUI's `comfy/gligen.py`): a prompt placed in a box of the image.
//!
//! A GLIGEN file holds a [`PositionNet`], which turns each box's text embedding and corners into a
//! grounding token, and one [`GatedSelfAttentionDense`] "fuser" per UNet transformer, which mixes
//! the grounding tokens into the image tokens of that transformer's blocks between their self- and
//! cross-attention: the UNet's middle patch ([`crate::diffusion::patches::MiddlePatch`]), which a
//! conditioning entry's [`Grounding`] adds while that entry is evaluated.
//!
//! Files are laid out as ComfyUI's `load_gligen` reads them: the fusers under
//! `{input_blocks,middle_block,output_blocks}.N.….fuser.*`, taken in that order (block numbers
//! 0 to 19), which is the order of the UNet's transformers; the position net under
//! `position_net.*`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::diffusion::patches::MiddlePatch;
use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
use crate::ops::layers::{self, LayerNorm, Linear};
use crate::unet::blocks::{Attention, FeedForward};

/// ComfyUI's `max_objs`: the grounding tokens a patch carries, the boxes' first, then padding.
pub const MAX_BOXES: usize = 30;

/// Fourier frequencies per corner coordinate in a box's position embedding.
const FOURIER_FREQS: usize = 8;

/// Width of a box's position embedding: the sine and cosine of each frequency for x1, y1, x2, y2.
const POSITION_DIM: usize = FOURIER_FREQS * 2 * 4;

/// ComfyUI loads fusers under block numbers 0 to 19 of each part of the UNet.
const BLOCK_NUMBERS: usize = 20;

/// One fuser's attention shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuserConfig {
    /// Channels of the image tokens (the transformer's width).
    pub query_dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of each head.
    pub head_dim: usize,
}

/// The shape of a GLIGEN model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GligenConfig {
    /// Width of a grounding token and of a box's text embedding (768 for SD1.x files).
    pub key_dim: usize,
    /// Width of the text embedding the position net takes.
    pub position_in_dim: usize,
    /// Width of the grounding tokens it makes.
    pub position_out_dim: usize,
    /// One fuser per UNet transformer, in ComfyUI's `transformer_index` order.
    pub fusers: Vec<FuserConfig>,
}

impl FuserConfig {
    /// ComfyUI's rule: SD1.x files (768-wide tokens) have 8 heads, others 64-wide heads.
    pub fn for_dims(query_dim: usize, key_dim: usize) -> Self {
        if key_dim == 768 {
            FuserConfig {
                query_dim,
                heads: 8,
                head_dim: query_dim / 8,
            }
        } else {
            FuserConfig {
                query_dim,
                heads: query_dim / 64,
                head_dim: 64,
            }
        }
    }
}

/// One text box of a conditioning entry (an element of ComfyUI's `position_params`), in latent
/// pixels (the node's pixel values divided by 8, rounded down).
#[derive(Debug, Clone)]
pub struct TextBox {
    /// The box's prompt: the text encoder's unprojected pooled output, `[1, key_dim]` f32.
    pub embedding: Tensor,
    /// Rows covered.
    pub height: usize,
    /// Columns covered.
    pub width: usize,
    /// Top row.
    pub y: usize,
    /// Left column.
    pub x: usize,
}

/// The text boxes of a conditioning entry with the GLIGEN model that reads them (ComfyUI's
/// `("position", gligen, position_params)` under the entry's `gligen` key).
#[derive(Debug, Clone)]
pub struct Grounding {
    /// The model of the last box added; the earlier boxes go with it.
    pub model: Arc<Gligen>,
    /// In the order they were added.
    pub boxes: Vec<TextBox>,
}

impl Grounding {
    /// The middle patch for latents `[batch, _, height, width]` (the entry's area): ComfyUI's
    /// `Gligen.set_position`, whose grounding tokens are computed once here.
    pub fn patch(&self, batch: usize, height: usize, width: usize) -> Result<Arc<dyn MiddlePatch>> {
        let tokens = self
            .model
            .grounding_tokens(&self.boxes, height, width)?
            .repeat((batch, 1, 1))?;
        Ok(Arc::new(GroundingPatch {
            model: Arc::clone(&self.model),
            tokens,
        }))
    }

    /// Bytes held by the boxes' embeddings.
    pub fn byte_size(&self) -> usize {
        self.boxes
            .iter()
            .map(|b| b.embedding.elem_count() * b.embedding.dtype().size_in_bytes())
            .sum()
    }
}

/// ComfyUI's `PositionNet`: a box's text embedding and the Fourier embedding of its corners
/// (learned null embeddings for padding), through three linear layers.
#[derive(Debug)]
pub struct PositionNet {
    linears: [Linear; 3],
    null_positive: Tensor,
    null_position: Tensor,
}

impl PositionNet {
    /// Reads `linears.{0,2,4}` and the null features from `vb`.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let vl = vb.pp("linears");
        Ok(Self {
            linears: [
                layers::linear(in_dim + POSITION_DIM, 512, vl.pp(0))?,
                layers::linear(512, 512, vl.pp(2))?,
                layers::linear(512, out_dim, vl.pp(4))?,
            ],
            null_positive: vb.get(in_dim, "null_positive_feature")?,
            null_position: vb.get(POSITION_DIM, "null_position_feature")?,
        })
    }

    /// `boxes`: `[B, N, 4]` corners (x1, y1, x2, y2) as fractions; `masks`: `[B, N]`, 1 for a box
    /// and 0 for padding; `positive`: `[B, N, in_dim]` text embeddings. Returns `[B, N, out_dim]`.
    pub fn forward(&self, boxes: &Tensor, masks: &Tensor, positive: &Tensor) -> Result<Tensor> {
        let masks = masks.unsqueeze(2)?;
        let unmasked = masks.affine(-1.0, 1.0)?;
        let dtype = boxes.dtype();
        let null = |t: &Tensor| {
            t.to_device(boxes.device())?
                .to_dtype(dtype)?
                .reshape((1, 1, ()))
        };
        let position = fourier_embedding(boxes)?;
        let positive = (positive.broadcast_mul(&masks)?
            + unmasked.broadcast_mul(&null(&self.null_positive)?)?)?;
        let position = (position.broadcast_mul(&masks)?
            + unmasked.broadcast_mul(&null(&self.null_position)?)?)?;
        let [first, second, third] = &self.linears;
        let h = first
            .forward(&Tensor::cat(&[positive, position], 2)?)?
            .silu()?;
        third.forward(&second.forward(&h)?.silu()?)
    }
}

/// ComfyUI's `FourierEmbedder` with 8 frequencies `100^(k/8)`: `[sin(f_0 x), cos(f_0 x),
/// sin(f_1 x), …]` along the last axis, each as wide as `x`'s last axis.
fn fourier_embedding(x: &Tensor) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(2 * FOURIER_FREQS);
    for k in 0..FOURIER_FREQS {
        // torch computes the bands in f32.
        let freq = 100f32.powf(k as f32 / FOURIER_FREQS as f32);
        let scaled = x.affine(f64::from(freq), 0.0)?;
        parts.push(scaled.sin()?);
        parts.push(scaled.cos()?);
    }
    Tensor::cat(&parts, x.rank() - 1)
}

/// ComfyUI's `GatedSelfAttentionDense`: self-attention over the image and grounding tokens
/// together, whose image part is added back with a learned tanh gate, then a gated GeGLU
/// feed-forward.
#[derive(Debug)]
pub struct GatedSelfAttentionDense {
    linear: Linear,
    attn: Attention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    gate_attn: f32,
    gate_dense: f32,
    query_dim: usize,
}

impl GatedSelfAttentionDense {
    /// Reads `linear`, `attn`, `ff`, `norm1`, `norm2`, `alpha_attn` and `alpha_dense` from `vb`.
    pub fn new(vb: VarBuilder, cfg: FuserConfig, key_dim: usize) -> Result<Self> {
        let q = cfg.query_dim;
        let gate = |name: &str| -> Result<f32> {
            let alpha = vb.get((), name)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            Ok(alpha.tanh())
        };
        Ok(Self {
            linear: layers::linear(key_dim, q, vb.pp("linear"))?,
            attn: Attention::new(vb.pp("attn"), q, q, cfg.heads, cfg.head_dim, false)?,
            ff: FeedForward::new(vb.pp("ff"), q)?,
            norm1: layers::layer_norm(q, 1e-5, vb.pp("norm1"))?,
            norm2: layers::layer_norm(q, 1e-5, vb.pp("norm2"))?,
            gate_attn: gate("alpha_attn")?,
            gate_dense: gate("alpha_dense")?,
            query_dim: q,
        })
    }

    /// `x`: `[B, N, query_dim]` image tokens; `objects`: `[B, M, key_dim]` grounding tokens.
    pub fn forward(&self, x: &Tensor, objects: &Tensor) -> Result<Tensor> {
        let visual = x.dim(1)?;
        let objects = self.linear.forward(&objects.to_dtype(x.dtype())?)?;
        let tokens = self.norm1.forward(&Tensor::cat(&[x, &objects], 1)?)?;
        let attended = self
            .attn
            .attend(&tokens, &tokens, &tokens, None)?
            .narrow(1, 0, visual)?;
        let x = (x + attended.affine(f64::from(self.gate_attn), 0.0)?)?;
        let dense = self.ff.forward(&self.norm2.forward(&x)?)?;
        x + dense.affine(f64::from(self.gate_dense), 0.0)?
    }
}

/// A GLIGEN model: the position net and one fuser per UNet transformer.
#[derive(Debug)]
pub struct Gligen {
    position_net: PositionNet,
    fusers: Vec<GatedSelfAttentionDense>,
    config: GligenConfig,
    device: Device,
}

impl Gligen {
    /// Builds the model from Weft's names under `vb`: `position_net.*` and `fusers.{i}.*`.
    pub fn new(vb: VarBuilder, cfg: &GligenConfig) -> Result<Self> {
        let position_net = PositionNet::new(
            vb.pp("position_net"),
            cfg.position_in_dim,
            cfg.position_out_dim,
        )?;
        let vf = vb.pp("fusers");
        let fusers = cfg
            .fusers
            .iter()
            .enumerate()
            .map(|(i, &f)| GatedSelfAttentionDense::new(vf.pp(i), f, cfg.key_dim))
            .collect::<Result<_>>()?;
        Ok(Self {
            position_net,
            fusers,
            config: cfg.clone(),
            device: vb.device().clone(),
        })
    }

    /// Reads `sd` (ComfyUI's layout, see the module docs) and builds it in `dtype` on `device`.
    pub fn load(
        sd: &Arc<StateDict>,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Self, LoadError> {
        let (config, names) =
            layout(sd.shapes()).map_err(|kind| LoadError::new(sd.path(), kind))?;
        Renaming::new(names)
            .warn_unused("gligen tensors not used")
            .build(sd, dtype, device, |vb| Gligen::new(vb, &config))
    }

    /// The model's shape.
    pub fn config(&self) -> &GligenConfig {
        &self.config
    }

    /// ComfyUI's `set_position` for one latent: the boxes' corners as fractions of a latent
    /// `height` x `width` (its area), padded to [`MAX_BOXES`], through the position net. Returns
    /// `[1, MAX_BOXES, position_out_dim]` f32 on the model's device.
    pub fn grounding_tokens(
        &self,
        boxes: &[TextBox],
        height: usize,
        width: usize,
    ) -> Result<Tensor> {
        if boxes.len() > MAX_BOXES {
            candle_core::bail!(
                "gligen takes at most {MAX_BOXES} text boxes per conditioning, got {}",
                boxes.len()
            );
        }
        let key_dim = self.config.key_dim;
        let (h, w) = (height as f64, width as f64);
        let mut corners = vec![0f32; MAX_BOXES * 4];
        let mut masks = vec![0f32; MAX_BOXES];
        let mut embeddings = Vec::with_capacity(MAX_BOXES);
        for (i, b) in boxes.iter().enumerate() {
            // Python divides in f64; torch.tensor stores f32.
            let (x1, y1) = (b.x as f64 / w, b.y as f64 / h);
            let (x2, y2) = ((b.x + b.width) as f64 / w, (b.y + b.height) as f64 / h);
            corners[4 * i..4 * i + 4]
                .copy_from_slice(&[x1 as f32, y1 as f32, x2 as f32, y2 as f32]);
            masks[i] = 1.0;
            let e = b.embedding.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            if e.elem_count() != key_dim {
                candle_core::bail!(
                    "a gligen text box's embedding has shape {:?}, this gligen model takes {key_dim} \
                     wide ones; use the text encoder of the model it was made for",
                    e.dims()
                );
            }
            embeddings.push(e.reshape((1, key_dim))?);
        }
        if boxes.len() < MAX_BOXES {
            embeddings.push(Tensor::zeros(
                (MAX_BOXES - boxes.len(), key_dim),
                DType::F32,
                &Device::Cpu,
            )?);
        }
        let device = &self.device;
        let corners = Tensor::from_vec(corners, (1, MAX_BOXES, 4), device)?;
        let masks = Tensor::from_vec(masks, (1, MAX_BOXES), device)?;
        let embeddings = Tensor::cat(&embeddings, 0)?
            .unsqueeze(0)?
            .to_device(device)?;
        self.position_net.forward(&corners, &masks, &embeddings)
    }

    /// The fuser of transformer `transformer_index` on `x` (`[B, N, C]`), with `tokens` from
    /// [`Self::grounding_tokens`] (repeated to `x`'s batch).
    pub fn fuse(&self, x: &Tensor, tokens: &Tensor, transformer_index: usize) -> Result<Tensor> {
        let Some(fuser) = self.fusers.get(transformer_index) else {
            candle_core::bail!(
                "this gligen model has {} fusers, the unet has more transformers (index {transformer_index}); \
                 use a gligen model made for this unet",
                self.fusers.len()
            );
        };
        let channels = x.dim(2)?;
        if channels != fuser.query_dim {
            candle_core::bail!(
                "gligen fuser {transformer_index} takes {} channels, the unet's transformer has \
                 {channels}; use a gligen model made for this unet",
                fuser.query_dim
            );
        }
        fuser.forward(x, &tokens.to_device(x.device())?.to_dtype(x.dtype())?)
    }
}

/// A conditioning entry's boxes as a UNet middle patch.
#[derive(Debug)]
struct GroundingPatch {
    model: Arc<Gligen>,
    /// `[B, MAX_BOXES, key_dim]`.
    tokens: Tensor,
}

impl MiddlePatch for GroundingPatch {
    fn patch(&self, x: Tensor, transformer_index: usize) -> Result<Tensor> {
        self.model.fuse(&x, &self.tokens, transformer_index)
    }
}

/// The model's shape and the map from Weft's names to the file's keys, found as ComfyUI's
/// `load_gligen` finds them.
fn layout(
    shapes: &HashMap<String, Vec<usize>>,
) -> std::result::Result<(GligenConfig, HashMap<String, String>), LoadErrorKind> {
    let mut keys: Vec<&String> = shapes.keys().collect();
    keys.sort();
    let mut names = HashMap::new();
    let mut fusers = Vec::new();
    let mut key_dim = 768;
    for part in ["input_blocks", "middle_block", "output_blocks"] {
        for block in 0..BLOCK_NUMBERS {
            let pattern = format!("{part}.{block}.");
            let params: BTreeMap<&str, &String> = keys
                .iter()
                .filter(|k| k.contains(&pattern))
                .filter_map(|k| k.rsplit_once(".fuser.").map(|(_, param)| (param, *k)))
                .collect();
            if params.is_empty() {
                continue;
            }
            let linear = params
                .get("linear.weight")
                .and_then(|k| shapes.get(*k))
                .ok_or_else(|| {
                    LoadErrorKind::MissingTensor(format!("{pattern}….fuser.linear.weight"))
                })?;
            let &[query_dim, dim] = linear.as_slice() else {
                return Err(LoadErrorKind::BadConfig(format!(
                    "{pattern}….fuser.linear.weight has shape {linear:?}, not [out, in]"
                )));
            };
            key_dim = dim;
            let cfg = FuserConfig::for_dims(query_dim, key_dim);
            if cfg.heads == 0 || cfg.head_dim == 0 {
                return Err(LoadErrorKind::BadConfig(format!(
                    "the fuser of {pattern}… has {query_dim} channels, too few for an attention head"
                )));
            }
            let index = fusers.len();
            names.extend(
                params
                    .into_iter()
                    .map(|(param, key)| (format!("fusers.{index}.{param}"), key.clone())),
            );
            fusers.push(cfg);
        }
    }
    if fusers.is_empty() {
        return Err(LoadErrorKind::UnknownFamily {
            looked_for: vec!["input_blocks.N.….fuser.linear.weight".into()],
        });
    }
    let dim = |key: &str, axis: usize| {
        shapes
            .get(key)
            .and_then(|s| s.get(axis).copied())
            .ok_or_else(|| LoadErrorKind::MissingTensor(key.to_string()))
    };
    let position_in_dim = dim("position_net.null_positive_feature", 0)?;
    let position_out_dim = dim("position_net.linears.4.weight", 0)?;
    names.extend(
        keys.iter()
            .filter(|k| k.starts_with("position_net."))
            .map(|k| ((*k).clone(), (*k).clone())),
    );
    let config = GligenConfig {
        key_dim,
        position_in_dim,
        position_out_dim,
        fusers,
    };
    Ok((config, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(keys: &[(&str, &[usize])]) -> HashMap<String, Vec<usize>> {
        keys.iter()
            .map(|(k, s)| (k.to_string(), s.to_vec()))
            .collect()
    }

    #[test]
    fn fusers_are_ordered_by_part_and_block_number_as_comfyui_reads_them() {
        let s = shapes(&[
            (
                "output_blocks.10.1.transformer_blocks.0.fuser.linear.weight",
                &[64, 768],
            ),
            (
                "output_blocks.3.1.transformer_blocks.0.fuser.linear.weight",
                &[128, 768],
            ),
            (
                "middle_block.1.transformer_blocks.0.fuser.linear.weight",
                &[256, 768],
            ),
            (
                "input_blocks.1.1.transformer_blocks.0.fuser.linear.weight",
                &[32, 768],
            ),
            (
                "input_blocks.1.1.transformer_blocks.0.fuser.alpha_attn",
                &[],
            ),
            ("position_net.null_positive_feature", &[768]),
            ("position_net.linears.4.weight", &[768, 512]),
        ]);
        let (config, names) = layout(&s).unwrap();
        let dims: Vec<usize> = config.fusers.iter().map(|f| f.query_dim).collect();
        assert_eq!(dims, [32, 256, 128, 64]);
        assert_eq!(config.fusers[0].heads, 8);
        assert_eq!(
            names["fusers.3.linear.weight"],
            "output_blocks.10.1.transformer_blocks.0.fuser.linear.weight"
        );
        assert_eq!(
            names["fusers.0.alpha_attn"],
            "input_blocks.1.1.transformer_blocks.0.fuser.alpha_attn"
        );
        assert_eq!(
            names["position_net.linears.4.weight"],
            "position_net.linears.4.weight"
        );
    }

    #[test]
    fn other_token_widths_have_64_wide_heads_and_bad_files_are_errors() {
        assert_eq!(
            FuserConfig::for_dims(320, 1024),
            FuserConfig {
                query_dim: 320,
                heads: 5,
                head_dim: 64
            }
        );
        let no_fusers = shapes(&[("position_net.null_positive_feature", &[768])]);
        assert!(matches!(
            layout(&no_fusers),
            Err(LoadErrorKind::UnknownFamily { .. })
        ));
        let no_position_net = shapes(&[(
            "input_blocks.1.1.transformer_blocks.0.fuser.linear.weight",
            &[64, 768],
        )]);
        assert!(matches!(
            layout(&no_position_net),
            Err(LoadErrorKind::MissingTensor(k)) if k == "position_net.null_positive_feature"
        ));
        let headless = shapes(&[(
            "input_blocks.1.1.transformer_blocks.0.fuser.linear.weight",
            &[32, 48],
        )]);
        assert!(matches!(
            layout(&headless),
            Err(LoadErrorKind::BadConfig(_))
        ));
    }
}
