//! How union ControlNets (ControlNet++, xinsir's controlnet-union-sdxl-1.0, diffusers
//! `ControlNetUnionModel`; the model parts are [`crate::controlnet::union`]) are stored: their
//! tensors (`task_embedding`, `transformer_layes.N`, `spatial_ch_projs`,
//! `control_add_embedding`) keep their names in both the LDM and the diffusers layout, except the
//! attention's input projection, which diffusers (`nn.MultiheadAttention`) calls
//! `attn.in_proj_weight` / `in_proj_bias` and ComfyUI, after converting a diffusers file,
//! `attn.in_proj.weight` / `.bias`; both are accepted. (ComfyUI itself only builds the union parts
//! for diffusers-named files and ignores them in LDM-named ones.)
//!
//! Their architecture is read off the shapes (`detect_union`) or a diffusers `config.json`
//! ([`union_config_from_diffusers`]).

use std::collections::HashMap;

use crate::controlnet::union::UnionConfig;
use crate::load::file::StateDict;
use crate::load::LoadErrorKind;

/// The tensors a union ControlNet adds, under the same names in both layouts.
const UNION_PREFIXES: [&str; 4] = [
    "task_embedding",
    "transformer_layes.",
    "spatial_ch_projs.",
    "control_add_embedding.",
];

/// The model (diffusers) name of a union tensor key: ComfyUI's `attn.in_proj.weight` becomes
/// `nn.MultiheadAttention`'s `attn.in_proj_weight`. `None` for other keys.
pub fn union_key_to_diffusers(key: &str) -> Option<String> {
    UNION_PREFIXES
        .iter()
        .any(|p| key.starts_with(p))
        .then(|| key.replace(".attn.in_proj.", ".attn.in_proj_"))
}

/// The union parts' architecture from diffusers-named shapes; `None` for a plain ControlNet. A
/// file with some union tensors but not the rest is refused, naming the first missing one.
pub(crate) fn detect_union(
    sd: &StateDict,
    names: &HashMap<String, String>,
) -> Result<Option<UnionConfig>, LoadErrorKind> {
    let shape = |n: &str| names.get(n).and_then(|k| sd.shape(k));
    let task = shape("task_embedding");
    let add = shape("control_add_embedding.linear_1.weight");
    if task.is_none() && add.is_none() {
        return Ok(None);
    }
    let require = |n: &str, rank: usize| {
        shape(n)
            .filter(|s| s.len() == rank)
            .ok_or_else(|| LoadErrorKind::MissingTensor(n.to_string()))
    };
    let task = require("task_embedding", 2)?;
    let add = require("control_add_embedding.linear_1.weight", 2)?;
    let (num_control_types, channels) = (task[0], task[1]);
    if num_control_types == 0 || !add[1].is_multiple_of(num_control_types) {
        return Err(LoadErrorKind::BadConfig(format!(
            "control_add_embedding takes {} inputs, not a multiple of the {num_control_types} \
             control types of task_embedding",
            add[1]
        )));
    }
    // Layers are counted by their attention; each must be complete (the builder names a gap).
    let layers = (0..)
        .take_while(|i| shape(&format!("transformer_layes.{i}.attn.in_proj_weight")).is_some())
        .count();
    if layers == 0 {
        return Err(LoadErrorKind::MissingTensor(
            "transformer_layes.0.attn.in_proj_weight".into(),
        ));
    }
    Ok(Some(UnionConfig {
        num_control_types,
        channels,
        // Not in the shapes; every release (and diffusers' and ComfyUI's code) uses 8.
        heads: 8,
        layers,
        type_embed_dim: add[1] / num_control_types,
    }))
}

/// The union parts of a diffusers ControlNet `config.json` (diffusers `ControlNetUnionModel`,
/// with its defaults where a field is missing); `None` without a `num_control_type`.
pub fn union_config_from_diffusers(
    value: &serde_json::Value,
) -> Result<Option<UnionConfig>, String> {
    if value.get("num_control_type").is_none() {
        return Ok(None);
    }
    let field = |name: &str, default: u64| -> Result<usize, String> {
        match value.get(name) {
            None | Some(serde_json::Value::Null) => Ok(default as usize),
            Some(v) => v
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| format!("bad {name}")),
        }
    };
    Ok(Some(UnionConfig {
        num_control_types: field("num_control_type", 6)?,
        channels: field("num_trans_channel", 320)?,
        heads: field("num_trans_head", 8)?,
        layers: field("num_trans_layer", 1)?,
        type_embed_dim: field("addition_time_embed_dim", 256)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_keys_keep_their_names() {
        for (key, name) in [
            (
                "transformer_layes.0.attn.in_proj.weight",
                "transformer_layes.0.attn.in_proj_weight",
            ),
            (
                "transformer_layes.0.attn.in_proj_bias",
                "transformer_layes.0.attn.in_proj_bias",
            ),
            ("task_embedding", "task_embedding"),
            (
                "control_add_embedding.linear_2.bias",
                "control_add_embedding.linear_2.bias",
            ),
        ] {
            assert_eq!(union_key_to_diffusers(key).as_deref(), Some(name), "{key}");
        }
        assert_eq!(union_key_to_diffusers("zero_convs.0.0.weight"), None);
    }
}
