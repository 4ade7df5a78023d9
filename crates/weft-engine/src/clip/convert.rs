//! Checkpoint key maps for the text encoders, applied once at the loading boundary so the model
//! only knows HF transformers names.
//!
//! LDM single-file prefixes (reference: diffusion-engine.md section 4, ComfyUI
//! `supported_models.py` / `utils.clip_text_transformers_convert`):
//! - SD1: `cond_stage_model.transformer.` (HF CLIP-L; old files lack the `text_model.` level);
//! - SD2: `cond_stage_model.model.` (OpenCLIP-H);
//! - SDXL: `conditioner.embedders.0.transformer.` (HF CLIP-L) and
//!   `conditioner.embedders.1.model.` (OpenCLIP-bigG);
//! - SDXL refiner: `conditioner.embedders.0.model.` (OpenCLIP-bigG).
//!
//! Every function takes the whole checkpoint map (or a bare encoder map) by reference and returns
//! a new map with HF names; tensors are shared, not copied, except the split and transposed ones.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::clip::model::{ClipActivation, ClipConfig};
use crate::clip::ClipError;

/// SD1 checkpoint: CLIP-L under `cond_stage_model.transformer.`.
pub fn sd1_clip_l(sd: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    hf_clip_from_ldm(sd, "cond_stage_model.transformer.")
}

/// SD2 checkpoint: OpenCLIP-H under `cond_stage_model.model.`, converted to HF names.
pub fn sd2_clip_h(sd: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, ClipError> {
    openclip_to_hf(&strip_prefix(sd, "cond_stage_model.model."))
}

/// SDXL checkpoint: CLIP-L under `conditioner.embedders.0.transformer.`.
pub fn sdxl_clip_l(sd: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    hf_clip_from_ldm(sd, "conditioner.embedders.0.transformer.")
}

/// SDXL checkpoint: OpenCLIP-bigG under `conditioner.embedders.1.model.`, converted to HF names.
pub fn sdxl_clip_g(sd: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, ClipError> {
    openclip_to_hf(&strip_prefix(sd, "conditioner.embedders.1.model."))
}

/// SDXL refiner checkpoint: OpenCLIP-bigG under `conditioner.embedders.0.model.`.
pub fn sdxl_refiner_clip_g(
    sd: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>, ClipError> {
    openclip_to_hf(&strip_prefix(sd, "conditioner.embedders.0.model."))
}

/// An HF-layout CLIP under `prefix`: strips the prefix, inserts the `text_model.` level that old
/// SD1 files lack (as ComfyUI's SD15 `process_clip_state_dict` does), and drops
/// `text_model.embeddings.position_ids` (an int or float buffer, sometimes corrupted, never
/// needed). Pass `""` for a bare HF text-encoder file.
pub fn hf_clip_from_ldm(sd: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    strip_prefix(sd, prefix)
        .into_iter()
        .filter_map(|(key, t)| {
            let key = if key.starts_with("text_model.") || key.starts_with("text_projection") {
                key
            } else if key.starts_with("embeddings.")
                || key.starts_with("encoder.")
                || key.starts_with("final_layer_norm.")
            {
                format!("text_model.{key}")
            } else {
                key
            };
            (key != "text_model.embeddings.position_ids").then_some((key, t))
        })
        .collect()
}

/// The entries of `sd` under `prefix`, with the prefix removed.
pub fn strip_prefix(sd: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    sd.iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t.clone())))
        .collect()
}

/// OpenCLIP text-tower names (`token_embedding.weight`, `positional_embedding`,
/// `transformer.resblocks.N.*`, `ln_final.*`, `text_projection`) to HF transformers names.
///
/// `attn.in_proj_weight` `[3d, d]` (and `in_proj_bias`) is split into q, k, v rows in that order;
/// `text_projection` `[d, p]` is transposed to `text_projection.weight` `[p, d]` because OpenCLIP
/// computes `x @ P`. `logit_scale`, `attn_mask` and any non-text key are dropped.
pub fn openclip_to_hf(sd: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, ClipError> {
    let mut out = HashMap::new();
    for (key, tensor) in sd {
        match key.as_str() {
            "token_embedding.weight" => {
                out.insert(
                    "text_model.embeddings.token_embedding.weight".to_string(),
                    tensor.clone(),
                );
            }
            "positional_embedding" => {
                out.insert(
                    "text_model.embeddings.position_embedding.weight".to_string(),
                    tensor.clone(),
                );
            }
            "ln_final.weight" | "ln_final.bias" => {
                let leaf = key.trim_start_matches("ln_final.");
                out.insert(
                    format!("text_model.final_layer_norm.{leaf}"),
                    tensor.clone(),
                );
            }
            "text_projection" => {
                let t = tensor
                    .t()
                    .and_then(|t| t.contiguous())
                    .map_err(|e| bad(key, e))?;
                out.insert("text_projection.weight".to_string(), t);
            }
            _ if key.starts_with("transformer.resblocks.") => {}
            _ => tracing::trace!(key = key.as_str(), "ignoring non-text-encoder openclip key"),
        }
    }
    openclip_resblocks(
        sd,
        "transformer.resblocks.",
        "text_model.encoder.layers.",
        &mut out,
    )?;
    Ok(out)
}

/// OpenCLIP residual blocks (`{from}N.attn.in_proj_weight`, `ln_1`, `mlp.c_fc`, ...) in `sd` to
/// HF encoder layers (`{to}N.self_attn.q_proj.weight`, `layer_norm1`, `mlp.fc1`, ...) in `out`:
/// the packed `in_proj` rows are split into q, k, v in that order. Used by the text and vision
/// towers and the T2I style adapter, whose blocks are all laid out this way.
pub(crate) fn openclip_resblocks(
    sd: &HashMap<String, Tensor>,
    from: &str,
    to: &str,
    out: &mut HashMap<String, Tensor>,
) -> Result<(), ClipError> {
    for (key, tensor) in sd {
        let Some(rest) = key.strip_prefix(from) else {
            continue;
        };
        let Some((index, leaf)) = rest.split_once('.') else {
            return Err(ClipError::BadWeight {
                key: key.clone(),
                reason: "resblock key without a parameter name".to_string(),
            });
        };
        let index: usize = index.parse().map_err(|_| ClipError::BadWeight {
            key: key.clone(),
            reason: format!("resblock index '{index}' is not a number"),
        })?;
        let layer = format!("{to}{index}");
        match leaf {
            "attn.in_proj_weight" | "attn.in_proj_bias" => {
                let param = if leaf.ends_with("weight") {
                    "weight"
                } else {
                    "bias"
                };
                let rows = tensor.dim(0).map_err(|e| bad(key, e))?;
                if rows % 3 != 0 {
                    return Err(ClipError::BadWeight {
                        key: key.clone(),
                        reason: format!("{rows} rows cannot split into q, k, v"),
                    });
                }
                let d = rows / 3;
                for (i, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let part = tensor
                        .narrow(0, i * d, d)
                        .and_then(|t| t.contiguous())
                        .map_err(|e| bad(key, e))?;
                    out.insert(format!("{layer}.self_attn.{name}.{param}"), part);
                }
            }
            _ => {
                let mapped = [
                    ("attn.out_proj.", "self_attn.out_proj."),
                    ("ln_1.", "layer_norm1."),
                    ("ln_2.", "layer_norm2."),
                    ("mlp.c_fc.", "mlp.fc1."),
                    ("mlp.c_proj.", "mlp.fc2."),
                ]
                .iter()
                .find_map(|(from, to)| leaf.strip_prefix(from).map(|p| format!("{to}{p}")));
                match mapped {
                    Some(name) => {
                        out.insert(format!("{layer}.{name}"), tensor.clone());
                    }
                    None => tracing::trace!(key = key.as_str(), "ignoring unknown resblock key"),
                }
            }
        }
    }
    Ok(())
}

/// Infers the text-encoder shape from HF-named weights: width and vocabulary from the token
/// embedding, positions from the position embedding, depth from the layer keys, MLP width from
/// `fc1`, projection from `text_projection.weight`. Heads are `width / 64` (true for CLIP-L, H
/// and bigG). The activation cannot be read from weights: quick GELU for 768 wide (OpenAI
/// CLIP-L), exact GELU otherwise (OpenCLIP).
pub fn infer_clip_config(sd: &HashMap<String, Tensor>) -> Result<ClipConfig, ClipError> {
    let dims = |key: &str| weight_dims(sd, key);
    let tok = dims("text_model.embeddings.token_embedding.weight")?;
    let pos = dims("text_model.embeddings.position_embedding.weight")?;
    let fc1 = dims("text_model.encoder.layers.0.mlp.fc1.weight")?;
    let (&[vocab_size, hidden_size], &[max_position_embeddings, _], &[intermediate_size, _]) =
        (tok.as_slice(), pos.as_slice(), fc1.as_slice())
    else {
        return Err(ClipError::InvalidConfig(format!(
            "unexpected embedding or mlp shapes {tok:?} {pos:?} {fc1:?}"
        )));
    };
    let num_hidden_layers = layer_count(sd.keys(), "text_model.encoder.layers.");
    let projection_dim = match sd.get("text_projection.weight") {
        Some(t) => Some(t.dim(0)?),
        None => None,
    };
    // The head count is not in the weights. Every released SD text encoder has 64-wide heads;
    // the tiny test models (narrower than 64) use 16-wide heads.
    let head_width = if hidden_size % 64 == 0 { 64 } else { 16 };
    if hidden_size % head_width != 0 {
        return Err(ClipError::InvalidConfig(format!(
            "width {hidden_size} is not a multiple of the 64-wide clip heads"
        )));
    }
    Ok(ClipConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads: hidden_size / head_width,
        max_position_embeddings,
        hidden_act: if hidden_size == 768 {
            ClipActivation::QuickGelu
        } else {
            ClipActivation::Gelu
        },
        layer_norm_eps: 1e-5,
        projection_dim,
        eos_token_id: 49407,
    })
}

/// The shape of weight `key`, or which weight is missing.
pub(crate) fn weight_dims(
    sd: &HashMap<String, Tensor>,
    key: &str,
) -> Result<Vec<usize>, ClipError> {
    sd.get(key)
        .map(|t| t.dims().to_vec())
        .ok_or_else(|| ClipError::MissingWeight {
            key: key.to_string(),
        })
}

/// How many numbered layers (`{prefix}N.…`) the keys hold: the highest N plus one.
pub(crate) fn layer_count<'a>(keys: impl Iterator<Item = &'a String>, prefix: &str) -> usize {
    keys.filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1)
}

fn bad(key: &str, e: candle_core::Error) -> ClipError {
    ClipError::BadWeight {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn t(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::arange(0f32, n as f32, &Device::Cpu)
            .and_then(|t| t.reshape(shape))
            .expect("test tensor")
    }

    #[test]
    fn openclip_split_and_transpose() -> Result<(), ClipError> {
        let mut sd = HashMap::new();
        sd.insert(
            "transformer.resblocks.3.attn.in_proj_weight".to_string(),
            t(&[6, 2]),
        );
        sd.insert(
            "transformer.resblocks.3.attn.in_proj_bias".to_string(),
            t(&[6]),
        );
        sd.insert(
            "transformer.resblocks.3.mlp.c_fc.weight".to_string(),
            t(&[4, 2]),
        );
        sd.insert("text_projection".to_string(), t(&[2, 3]));
        sd.insert("logit_scale".to_string(), t(&[1]));
        let hf = openclip_to_hf(&sd)?;
        let k = hf["text_model.encoder.layers.3.self_attn.k_proj.weight"].to_vec2::<f32>()?;
        assert_eq!(k, [[4.0, 5.0], [6.0, 7.0]]);
        let vb = hf["text_model.encoder.layers.3.self_attn.v_proj.bias"].to_vec1::<f32>()?;
        assert_eq!(vb, [4.0, 5.0]);
        let p = hf["text_projection.weight"].to_vec2::<f32>()?;
        assert_eq!(p, [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]);
        assert!(hf.contains_key("text_model.encoder.layers.3.mlp.fc1.weight"));
        assert_eq!(hf.len(), 8);
        Ok(())
    }

    #[test]
    fn bad_in_proj_is_an_error() {
        let mut sd = HashMap::new();
        sd.insert(
            "transformer.resblocks.0.attn.in_proj_weight".to_string(),
            t(&[4, 2]),
        );
        assert!(matches!(
            openclip_to_hf(&sd),
            Err(ClipError::BadWeight { .. })
        ));
    }

    #[test]
    fn ldm_prefixes() {
        let mut sd = HashMap::new();
        let z = Tensor::zeros(1, DType::F32, &Device::Cpu).expect("tensor");
        sd.insert(
            "cond_stage_model.transformer.embeddings.token_embedding.weight".to_string(),
            z.clone(),
        );
        sd.insert(
            "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight".to_string(),
            z.clone(),
        );
        sd.insert(
            "cond_stage_model.transformer.text_model.embeddings.position_ids".to_string(),
            z.clone(),
        );
        sd.insert("model.diffusion_model.out.0.weight".to_string(), z);
        let hf = sd1_clip_l(&sd);
        let mut keys: Vec<_> = hf.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "text_model.embeddings.token_embedding.weight",
                "text_model.encoder.layers.0.mlp.fc1.weight"
            ]
        );
    }

    #[test]
    fn infers_presets_from_weights() -> Result<(), ClipError> {
        let z = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu);
        let mut sd = HashMap::new();
        sd.insert(
            "text_model.embeddings.token_embedding.weight".to_string(),
            z(&[49408, 1280])?,
        );
        sd.insert(
            "text_model.embeddings.position_embedding.weight".to_string(),
            z(&[77, 1280])?,
        );
        for i in 0..32 {
            sd.insert(
                format!("text_model.encoder.layers.{i}.mlp.fc1.weight"),
                z(&[5120, 1280])?,
            );
        }
        sd.insert("text_projection.weight".to_string(), z(&[1280, 1280])?);
        assert_eq!(infer_clip_config(&sd)?, ClipConfig::open_clip_bigg());
        sd.remove("text_projection.weight");
        sd.remove("text_model.embeddings.token_embedding.weight");
        assert!(matches!(
            infer_clip_config(&sd),
            Err(ClipError::MissingWeight { .. })
        ));
        Ok(())
    }
}
