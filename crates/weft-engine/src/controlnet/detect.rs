//! A ControlNet's architecture ([`ControlNetConfig`]), read off a file: from its tensor shapes
//! ([`detect_controlnet`], so tiny test models load with their real config), from a diffusers
//! `config.json` ([`controlnet_config_from_diffusers`]), or from the header alone
//! ([`controlnet_config_of`], for choosing files without loading them).

use std::collections::HashMap;

use crate::controlnet::format::{classify, ControlFileKind};
use crate::controlnet::keymap::controlnet_names;
use crate::controlnet::union_file::{detect_union, union_config_from_diffusers};
use crate::controlnet::ControlNetConfig;
use crate::load::checkpoint::unet_config_from_diffusers;
use crate::load::detect::count_indexed;
use crate::load::file::StateDict;
use crate::load::LoadErrorKind;
use crate::unet::AttentionHeads;

/// Parses a diffusers ControlNet `config.json` (its `global_pool_conditions` is a property of the
/// control, not of the architecture: see [`crate::controlnet::load::load_controlnet_diffusers_dir`]).
pub fn controlnet_config_from_diffusers(
    value: &serde_json::Value,
) -> Result<ControlNetConfig, String> {
    let (encoder, _) = unet_config_from_diffusers(value)?;
    let hint_channels = value
        .get("conditioning_channels")
        .and_then(|v| v.as_u64())
        .map_or(3, |v| v as usize);
    let hint_block_channels = match value.get("conditioning_embedding_out_channels") {
        None | Some(serde_json::Value::Null) => vec![16, 32, 96, 256],
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or("bad conditioning_embedding_out_channels")?,
    };
    let union = union_config_from_diffusers(value)?;
    let cfg = ControlNetConfig {
        encoder,
        hint_channels,
        hint_block_channels,
        union,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Infers a ControlNet's architecture from its tensor shapes; `names` maps diffusers names to
/// the file's keys.
pub fn detect_controlnet(
    sd: &StateDict,
    names: &HashMap<String, String>,
) -> Result<ControlNetConfig, LoadErrorKind> {
    let shape = |n: &str| names.get(n).and_then(|k| sd.shape(k));
    let require = |n: &str, rank: usize| {
        shape(n)
            .filter(|s| s.len() == rank)
            .ok_or_else(|| LoadErrorKind::MissingTensor(n.to_string()))
    };
    let conv_in = require("conv_in.weight", 4)?;
    let levels = count_indexed(names.keys(), "down_blocks.");
    let layers_per_block = count_indexed(names.keys(), "down_blocks.0.resnets.");
    if levels == 0 || layers_per_block == 0 {
        return Err(LoadErrorKind::MissingTensor(
            "down_blocks.0.resnets.0.conv1.weight".into(),
        ));
    }
    let mut block_out_channels = Vec::with_capacity(levels);
    let mut transformer_depth = Vec::with_capacity(levels);
    for i in 0..levels {
        block_out_channels.push(require(&format!("down_blocks.{i}.resnets.0.conv1.weight"), 4)?[0]);
        transformer_depth.push(count_indexed(
            names.keys(),
            &format!("down_blocks.{i}.attentions.0.transformer_blocks."),
        ));
    }
    let mid_transformer_depth =
        count_indexed(names.keys(), "mid_block.attentions.0.transformer_blocks.");
    if mid_transformer_depth == 0 {
        return Err(LoadErrorKind::BadConfig(
            "the controlnet's mid block has no attention (mid_block.attentions.0), which is not \
             supported"
                .into(),
        ));
    }
    let to_k = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let context_dim = require(to_k, 2)?[1];
    let use_linear_projection = require("mid_block.attentions.0.proj_in.weight", 2).is_ok();
    let adm_in_channels = shape("add_embedding.linear_1.weight").and_then(|s| s.get(1).copied());

    let hint_in = require("controlnet_cond_embedding.conv_in.weight", 4)?;
    let hint_blocks = count_indexed(names.keys(), "controlnet_cond_embedding.blocks.");
    if !hint_blocks.is_multiple_of(2) {
        return Err(LoadErrorKind::BadConfig(format!(
            "controlnet_cond_embedding has {hint_blocks} blocks, expected pairs"
        )));
    }
    let mut hint_block_channels = vec![hint_in[0]];
    for s in 0..hint_blocks / 2 {
        hint_block_channels.push(
            require(
                &format!("controlnet_cond_embedding.blocks.{}.weight", 2 * s + 1),
                4,
            )?[0],
        );
    }

    let union = detect_union(sd, names)?;
    let mut cfg = ControlNetConfig {
        encoder: crate::unet::UNetConfig {
            in_channels: conv_in[1],
            out_channels: conv_in[1],
            block_out_channels,
            layers_per_block,
            transformer_depth,
            mid_transformer_depth,
            heads: AttentionHeads::HeadDim(64),
            context_dim,
            use_linear_projection,
            adm_in_channels,
            norm_num_groups: 32,
            norm_eps: 1e-5,
        },
        hint_channels: hint_in[1],
        hint_block_channels,
        union,
    };
    // SD1 uses 8 heads per level (LDM `num_heads: 8`), SD2 and SDXL 64-wide heads; the shapes
    // cannot tell, the family can.
    if cfg.family() == crate::load::detect::ModelFamily::Sd1 {
        cfg.encoder.heads = AttentionHeads::PerLevel(vec![8; levels]);
    }
    cfg.validate().map_err(LoadErrorKind::BadConfig)?;
    Ok(cfg)
}

/// A ControlNet file's architecture read from its header alone (family, union parts), for
/// choosing files without loading them; `None` for adapters and Control-LoRAs, whose family
/// shows only against a model.
pub fn controlnet_config_of(sd: &StateDict) -> Result<Option<ControlNetConfig>, LoadErrorKind> {
    let kind = classify(sd)?;
    match kind {
        ControlFileKind::ControlNetLdm { .. } | ControlFileKind::ControlNetDiffusers => {
            detect_controlnet(sd, &controlnet_names(sd, &kind)?).map(Some)
        }
        _ => Ok(None),
    }
}
