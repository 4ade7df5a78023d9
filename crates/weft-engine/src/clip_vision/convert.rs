//! CLIP vision key maps and shape inference, applied at the loading boundary so the model only
//! knows HF transformers names (ComfyUI's `clip_vision.convert_to_transformers`).
//!
//! Layouts: HF `vision_model.*` + `visual_projection.weight` (ComfyUI's `models/clip_vision`
//! files), OpenCLIP / OpenAI `visual.*` (`class_embedding`, `conv1`, `positional_embedding`,
//! `ln_pre`, `transformer.resblocks.N`, `ln_post`, `proj`), the same under
//! `embedder.model.visual.` in SD2.1 unCLIP checkpoints.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::clip::convert::{layer_count, openclip_resblocks, weight_dims};
use crate::clip::model::ClipActivation;
use crate::clip::ClipError;
use crate::clip_vision::model::ClipVisionConfig;

/// Where the vision tower of an SD2.1 unCLIP checkpoint is (ComfyUI's `clip_vision_prefix`).
pub const UNCLIP_CHECKPOINT_PREFIX: &str = "embedder.model.visual.";

/// The prefix of the vision tower in a standalone file: `visual.` for OpenCLIP layouts (as
/// ComfyUI's `clip_vision.load` checks), none for HF ones.
pub fn file_prefix(sd: &HashMap<String, Tensor>) -> &'static str {
    if sd.contains_key("visual.transformer.resblocks.0.attn.in_proj_weight") {
        "visual."
    } else {
        ""
    }
}

/// The vision tower under `prefix` in `sd`, in HF names: converted from the OpenCLIP layout
/// when `{prefix}transformer.resblocks.0.attn.in_proj_weight` is there, else HF names with the
/// prefix removed. `proj` `[hidden, p]` becomes `visual_projection.weight` `[p, hidden]`
/// (OpenCLIP computes `x @ proj`). Other keys (a text tower, `position_ids`) are left out.
pub fn vision_weights(
    sd: &HashMap<String, Tensor>,
    prefix: &str,
) -> Result<HashMap<String, Tensor>, ClipError> {
    let inner: HashMap<String, Tensor> = sd
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t.clone())))
        .collect();
    if !inner.contains_key("transformer.resblocks.0.attn.in_proj_weight") {
        return Ok(inner
            .into_iter()
            .filter(|(k, _)| {
                (k.starts_with("vision_model.") || k.starts_with("visual_projection."))
                    && k != "vision_model.embeddings.position_ids"
            })
            .collect());
    }
    let mut out = HashMap::new();
    for (key, tensor) in &inner {
        let name =
            match key.as_str() {
                "class_embedding" => "vision_model.embeddings.class_embedding",
                "conv1.weight" => "vision_model.embeddings.patch_embedding.weight",
                "positional_embedding" => "vision_model.embeddings.position_embedding.weight",
                "ln_pre.weight" => "vision_model.pre_layrnorm.weight",
                "ln_pre.bias" => "vision_model.pre_layrnorm.bias",
                "ln_post.weight" => "vision_model.post_layernorm.weight",
                "ln_post.bias" => "vision_model.post_layernorm.bias",
                "proj" => {
                    let t = tensor.t().and_then(|t| t.contiguous()).map_err(|e| {
                        ClipError::BadWeight {
                            key: format!("{prefix}proj"),
                            reason: e.to_string(),
                        }
                    })?;
                    out.insert("visual_projection.weight".to_string(), t);
                    continue;
                }
                _ => continue,
            };
        out.insert(name.to_string(), tensor.clone());
    }
    openclip_resblocks(
        &inner,
        "transformer.resblocks.",
        "vision_model.encoder.layers.",
        &mut out,
    )?;
    Ok(out)
}

/// Infers the tower's shape from HF-named weights: width from the class embedding, patch size
/// from the patch convolution, image size from the position table, depth from the layer keys,
/// MLP width from `fc1`, projection from `visual_projection.weight`. What the weights do not
/// say is ComfyUI's: 16 heads (all three of its configs), quick GELU for the 24-layer ViT-L
/// (OpenAI) and exact GELU otherwise (OpenCLIP), LayerNorm epsilon 1e-5.
pub fn infer_vision_config(sd: &HashMap<String, Tensor>) -> Result<ClipVisionConfig, ClipError> {
    let dims = |key: &str| weight_dims(sd, key);
    let patch = dims("vision_model.embeddings.patch_embedding.weight")?;
    let positions = dims("vision_model.embeddings.position_embedding.weight")?;
    let fc1 = dims("vision_model.encoder.layers.0.mlp.fc1.weight")?;
    let projection = dims("visual_projection.weight")?;
    let (
        &[hidden_size, 3, patch_size, patch_w],
        &[num_positions, _],
        &[intermediate_size, _],
        &[projection_dim, _],
    ) = (
        patch.as_slice(),
        positions.as_slice(),
        fc1.as_slice(),
        projection.as_slice(),
    )
    else {
        return Err(ClipError::InvalidConfig(format!(
            "unexpected clip vision shapes: patch embedding {patch:?}, positions {positions:?}, \
             mlp {fc1:?}, projection {projection:?}"
        )));
    };
    let side = (num_positions.saturating_sub(1) as f64).sqrt().round() as usize;
    if patch_w != patch_size || side * side + 1 != num_positions {
        return Err(ClipError::InvalidConfig(format!(
            "{num_positions} positions with {patch_size}x{patch_w} patches is not a square \
             grid plus the class token"
        )));
    }
    let num_hidden_layers = layer_count(sd.keys(), "vision_model.encoder.layers.");
    Ok(ClipVisionConfig {
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads: 16,
        hidden_act: if num_hidden_layers == 24 {
            ClipActivation::QuickGelu
        } else {
            ClipActivation::Gelu
        },
        layer_norm_eps: 1e-5,
        patch_size,
        image_size: side * patch_size,
        projection_dim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn z(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, &Device::Cpu).expect("tensor")
    }

    #[test]
    fn openclip_layout_converts_and_presets_are_inferred() -> Result<(), ClipError> {
        let mut sd = HashMap::new();
        let p = UNCLIP_CHECKPOINT_PREFIX;
        sd.insert(format!("{p}class_embedding"), z(&[1280]));
        sd.insert(format!("{p}conv1.weight"), z(&[1280, 3, 14, 14]));
        sd.insert(format!("{p}positional_embedding"), z(&[257, 1280]));
        sd.insert(format!("{p}proj"), z(&[1280, 1024]));
        sd.insert(format!("{p}ln_post.weight"), z(&[1280]));
        for i in 0..32 {
            sd.insert(
                format!("{p}transformer.resblocks.{i}.attn.in_proj_weight"),
                z(&[3 * 1280, 1280]),
            );
            sd.insert(
                format!("{p}transformer.resblocks.{i}.mlp.c_fc.weight"),
                z(&[5120, 1280]),
            );
        }
        sd.insert("model.diffusion_model.out.2.weight".into(), z(&[4]));
        let hf = vision_weights(&sd, p)?;
        assert_eq!(hf["visual_projection.weight"].dims(), &[1024, 1280]);
        assert_eq!(
            hf["vision_model.encoder.layers.31.self_attn.v_proj.weight"].dims(),
            &[1280, 1280]
        );
        assert!(hf.contains_key("vision_model.post_layernorm.weight"));
        assert!(!hf.keys().any(|k| k.contains("diffusion_model")));
        assert_eq!(infer_vision_config(&hf)?, ClipVisionConfig::vit_h());
        Ok(())
    }

    #[test]
    fn hf_layout_keeps_vision_keys_only() -> Result<(), ClipError> {
        let mut sd = HashMap::new();
        sd.insert("vision_model.embeddings.position_ids".to_string(), z(&[1]));
        sd.insert("vision_model.pre_layrnorm.weight".to_string(), z(&[1]));
        sd.insert("text_model.final_layer_norm.weight".to_string(), z(&[1]));
        assert_eq!(file_prefix(&sd), "");
        let hf = vision_weights(&sd, "")?;
        assert_eq!(
            hf.keys().collect::<Vec<_>>(),
            ["vision_model.pre_layrnorm.weight"]
        );
        assert!(matches!(
            infer_vision_config(&hf),
            Err(ClipError::MissingWeight { .. })
        ));
        Ok(())
    }
}
