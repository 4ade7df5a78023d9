//! ControlNet key maps, from the names a file stores to the model's (diffusers) names:
//!
//! - LDM layout (lllyasviel `cldm`; [`controlnet_ldm_to_diffusers`]): `time_embed`, `label_emb`,
//!   `input_blocks`, `middle_block` are renamed with the UNet's map
//!   ([`unet_ldm_to_diffusers`]); `input_hint_block.{0,2,..,14}`, `zero_convs.k.0` and
//!   `middle_block_out.0` as diffusers' `convert_controlnet_checkpoint` does; the union tensors
//!   as [`crate::controlnet::union_file`] says. The resnets per level and the hint convolutions
//!   are counted off the keys.
//! - diffusers layout: the names as stored, union tensors normalised.
//!
//! Control-LoRA files use the LDM names too ([`crate::controlnet::control_lora`]).

use std::collections::{BTreeSet, HashMap};

use crate::controlnet::format::ControlFileKind;
use crate::controlnet::union_file::union_key_to_diffusers;
use crate::load::file::StateDict;
use crate::load::keymap::unet_ldm_to_diffusers;
use crate::load::LoadErrorKind;

/// Model names for a diffusers-layout ControlNet file (identity, union tensors normalised).
pub(crate) fn diffusers_names(sd: &StateDict) -> HashMap<String, String> {
    sd.shapes()
        .keys()
        .map(|k| {
            (
                union_key_to_diffusers(k).unwrap_or_else(|| k.clone()),
                k.clone(),
            )
        })
        .collect()
}

/// Maps one LDM ControlNet key (prefix removed) to its diffusers name; `None` for keys that are
/// not ControlNet weights. `layers_per_block` is the resnets per level (2), `hint_convs` the
/// number of convolutions in `input_hint_block` (8: indices 0, 2, .., 14).
pub fn controlnet_ldm_to_diffusers(
    key: &str,
    layers_per_block: usize,
    hint_convs: usize,
) -> Option<String> {
    if let Some(rest) = key.strip_prefix("input_hint_block.") {
        let (n, param) = rest.split_once('.')?;
        let n: usize = n.parse().ok()?;
        if !n.is_multiple_of(2) {
            return None;
        }
        let k = n / 2;
        let name = if k == 0 {
            "conv_in".to_string()
        } else if k + 1 == hint_convs {
            "conv_out".to_string()
        } else if k + 1 < hint_convs {
            format!("blocks.{}", k - 1)
        } else {
            return None;
        };
        return Some(format!("controlnet_cond_embedding.{name}.{param}"));
    }
    if let Some(rest) = key.strip_prefix("zero_convs.") {
        let (k, rest) = rest.split_once('.')?;
        let param = rest.strip_prefix("0.")?;
        return Some(format!("controlnet_down_blocks.{k}.{param}"));
    }
    if let Some(param) = key.strip_prefix("middle_block_out.0.") {
        return Some(format!("controlnet_mid_block.{param}"));
    }
    if key.starts_with("output_blocks.") || key.starts_with("out.") {
        return None;
    }
    if let Some(name) = union_key_to_diffusers(key) {
        return Some(name);
    }
    unet_ldm_to_diffusers(key, layers_per_block)
}

/// Diffusers name -> file key for an LDM ControlNet under `prefix`.
pub fn controlnet_ldm_names(
    sd: &StateDict,
    prefix: &str,
) -> Result<HashMap<String, String>, LoadErrorKind> {
    let keys: Vec<&str> = sd
        .shapes()
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .collect();
    let (layers_per_block, hint_convs) = ldm_structure(&keys, prefix)?;
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            controlnet_ldm_to_diffusers(k, layers_per_block, hint_convs)
                .map(|d| (d, format!("{prefix}{k}")))
        })
        .collect())
}

/// Resnets per level and hint convolutions of LDM-named ControlNet keys (prefix removed).
fn ldm_structure(keys: &[&str], prefix: &str) -> Result<(usize, usize), LoadErrorKind> {
    let mut input_ids = BTreeSet::new();
    let mut down_ids = BTreeSet::new();
    let mut hint_ids = BTreeSet::new();
    for k in keys {
        if let Some((n, tail)) = k
            .strip_prefix("input_blocks.")
            .and_then(|r| r.split_once('.'))
        {
            if let Ok(n) = n.parse::<usize>() {
                input_ids.insert(n);
                if tail.starts_with("0.op.") {
                    down_ids.insert(n);
                }
            }
        }
        if let Some((n, _)) = k
            .strip_prefix("input_hint_block.")
            .and_then(|r| r.split_once('.'))
        {
            if let Ok(n) = n.parse::<usize>() {
                hint_ids.insert(n);
            }
        }
    }
    let levels = down_ids.len() + 1;
    let blocks = input_ids.len().saturating_sub(1);
    if blocks < levels || (blocks - down_ids.len()) % levels != 0 {
        return Err(LoadErrorKind::BadConfig(format!(
            "{blocks} {prefix}input_blocks do not split into {levels} levels"
        )));
    }
    let hint_convs = hint_ids.len();
    if hint_convs < 2 || hint_ids.iter().enumerate().any(|(i, &n)| n != 2 * i) {
        return Err(LoadErrorKind::BadConfig(format!(
            "{prefix}input_hint_block has convolutions {hint_ids:?}, expected 0, 2, 4, .."
        )));
    }
    Ok(((blocks - down_ids.len()) / levels, hint_convs))
}

/// Model names of a ControlNet file of `kind` (LDM or diffusers layout).
pub(crate) fn controlnet_names(
    sd: &StateDict,
    kind: &ControlFileKind,
) -> Result<HashMap<String, String>, LoadErrorKind> {
    match kind {
        ControlFileKind::ControlNetLdm { prefix } => controlnet_ldm_names(sd, prefix),
        _ => Ok(diffusers_names(sd)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldm_control_keys_map_like_diffusers() {
        let cases = [
            (
                "input_hint_block.0.weight",
                "controlnet_cond_embedding.conv_in.weight",
            ),
            (
                "input_hint_block.2.bias",
                "controlnet_cond_embedding.blocks.0.bias",
            ),
            (
                "input_hint_block.12.weight",
                "controlnet_cond_embedding.blocks.5.weight",
            ),
            (
                "input_hint_block.14.weight",
                "controlnet_cond_embedding.conv_out.weight",
            ),
            ("zero_convs.11.0.weight", "controlnet_down_blocks.11.weight"),
            ("middle_block_out.0.bias", "controlnet_mid_block.bias"),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            ("label_emb.0.2.weight", "add_embedding.linear_2.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(
                controlnet_ldm_to_diffusers(ldm, 2, 8).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
        }
        assert_eq!(
            controlnet_ldm_to_diffusers("input_hint_block.16.weight", 2, 8),
            None
        );
        assert_eq!(
            controlnet_ldm_to_diffusers("output_blocks.0.0.in_layers.0.weight", 2, 8),
            None
        );
    }

    #[test]
    fn union_keys_keep_their_names_in_the_ldm_layout() {
        for (key, name) in [
            (
                "transformer_layes.0.attn.in_proj.weight",
                "transformer_layes.0.attn.in_proj_weight",
            ),
            ("task_embedding", "task_embedding"),
            (
                "control_add_embedding.linear_2.bias",
                "control_add_embedding.linear_2.bias",
            ),
        ] {
            assert_eq!(
                controlnet_ldm_to_diffusers(key, 2, 8).as_deref(),
                Some(name),
                "{key}"
            );
        }
    }
}
