//! LDM (CompVis / sgm single-file) -> diffusers key maps for the UNet and the VAE.
//!
//! Keys are given without their component prefix (`model.diffusion_model.`,
//! `first_stage_model.`). The maps follow diffusers' `convert_ldm_unet_checkpoint` and
//! `convert_ldm_vae_checkpoint`; `tests/keymap.rs` checks them against fixtures that diffusers
//! itself validated (unet/scripts/unet_vae_reference.py).

use std::collections::HashMap;

const RESNET_LDM_TO_DIFFUSERS: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

fn unet_resnet(rest: &str) -> Option<String> {
    RESNET_LDM_TO_DIFFUSERS.iter().find_map(|(ldm, diff)| {
        rest.strip_prefix(ldm)
            .filter(|r| r.starts_with('.'))
            .map(|r| format!("{diff}{r}"))
    })
}

/// Splits `"input_blocks.4.1.rest"` into (4, 1, "rest").
fn block_parts(rest: &str) -> Option<(usize, usize, &str)> {
    let mut it = rest.splitn(3, '.');
    let n = it.next()?.parse().ok()?;
    let m = it.next()?.parse().ok()?;
    Some((n, m, it.next()?))
}

/// Maps one LDM UNet key to its diffusers name; `None` for keys that are not UNet weights.
/// `layers_per_block` is the number of resnets per down level (2 for every SD model).
pub fn unet_ldm_to_diffusers(key: &str, layers_per_block: usize) -> Option<String> {
    let per = layers_per_block + 1;
    let simple = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    for (ldm, diff) in simple {
        if let Some(rest) = key.strip_prefix(ldm) {
            return Some(format!("{diff}{rest}"));
        }
    }
    if let Some(rest) = key.strip_prefix("input_blocks.") {
        let (n, m, rest) = block_parts(rest)?;
        let (i, j) = ((n.checked_sub(1)?) / per, (n - 1) % per);
        if j == layers_per_block {
            let rest = rest.strip_prefix("op.")?;
            return Some(format!("down_blocks.{i}.downsamplers.0.conv.{rest}"));
        }
        return match m {
            0 => Some(format!(
                "down_blocks.{i}.resnets.{j}.{}",
                unet_resnet(rest)?
            )),
            1 => Some(format!("down_blocks.{i}.attentions.{j}.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        let (n, rest) = rest.split_once('.')?;
        return match n {
            "0" => Some(format!("mid_block.resnets.0.{}", unet_resnet(rest)?)),
            "1" => Some(format!("mid_block.attentions.0.{rest}")),
            "2" => Some(format!("mid_block.resnets.1.{}", unet_resnet(rest)?)),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("output_blocks.") {
        let (n, m, rest) = block_parts(rest)?;
        let (i, j) = (n / per, n % per);
        // The upsampler sits after the attention (index 2) or, on levels without attention,
        // right after the resnet (index 1).
        if let Some(conv) = rest.strip_prefix("conv.") {
            if m == 1 || m == 2 {
                return Some(format!("up_blocks.{i}.upsamplers.0.conv.{conv}"));
            }
        }
        return match m {
            0 => Some(format!("up_blocks.{i}.resnets.{j}.{}", unet_resnet(rest)?)),
            1 => Some(format!("up_blocks.{i}.attentions.{j}.{rest}")),
            _ => None,
        };
    }
    None
}

/// Maps one LDM VAE key to its diffusers name; `None` for keys that are not VAE weights.
/// `levels` is the number of encoder levels (4 for every SD VAE); the decoder's are reversed.
pub fn vae_ldm_to_diffusers(key: &str, levels: usize) -> Option<String> {
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return Some(key.to_string());
    }
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let resnet = |r: &str| r.replace("nin_shortcut", "conv_shortcut");
    if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        return Some(key.to_string());
    }
    if let Some(r) = rest.strip_prefix("norm_out.") {
        return Some(format!("{side}.conv_norm_out.{r}"));
    }
    if let Some(r) = rest.strip_prefix("mid.") {
        if let Some(r) = r.strip_prefix("block_") {
            let (k, r) = r.split_once('.')?;
            let k: usize = k.parse().ok()?;
            return Some(format!(
                "{side}.mid_block.resnets.{}.{}",
                k.checked_sub(1)?,
                resnet(r)
            ));
        }
        let r = r.strip_prefix("attn_1.")?;
        let (name, param) = r.split_once('.')?;
        let diff = match name {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        return Some(format!("{side}.mid_block.attentions.0.{diff}.{param}"));
    }
    if side == "encoder" {
        let r = rest.strip_prefix("down.")?;
        let (i, r) = r.split_once('.')?;
        if let Some(r) = r.strip_prefix("block.") {
            return Some(format!("encoder.down_blocks.{i}.resnets.{}", resnet(r)));
        }
        let r = r.strip_prefix("downsample.conv.")?;
        return Some(format!("encoder.down_blocks.{i}.downsamplers.0.conv.{r}"));
    }
    let r = rest.strip_prefix("up.")?;
    let (b, r) = r.split_once('.')?;
    let i = levels.checked_sub(1)?.checked_sub(b.parse().ok()?)?;
    if let Some(r) = r.strip_prefix("block.") {
        return Some(format!("decoder.up_blocks.{i}.resnets.{}", resnet(r)));
    }
    let r = r.strip_prefix("upsample.conv.")?;
    Some(format!("decoder.up_blocks.{i}.upsamplers.0.conv.{r}"))
}

/// Builds diffusers name -> LDM name for every key `map` recognises.
pub fn invert(
    keys: impl IntoIterator<Item = String>,
    map: impl Fn(&str) -> Option<String>,
) -> HashMap<String, String> {
    keys.into_iter()
        .filter_map(|ldm| map(&ldm).map(|d| (d, ldm)))
        .collect()
}

/// Maps one diffusers VAE key back to its LDM name (the inverse of [`vae_ldm_to_diffusers`]);
/// `None` for keys that are not VAE weights.
pub fn vae_diffusers_to_ldm(key: &str, levels: usize) -> Option<String> {
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return Some(key.to_string());
    }
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let resnet = |r: &str| r.replace("conv_shortcut", "nin_shortcut");
    if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        return Some(key.to_string());
    }
    if let Some(r) = rest.strip_prefix("conv_norm_out.") {
        return Some(format!("{side}.norm_out.{r}"));
    }
    if let Some(r) = rest.strip_prefix("mid_block.") {
        if let Some(r) = r.strip_prefix("resnets.") {
            let (k, r) = r.split_once('.')?;
            let k: usize = k.parse().ok()?;
            return Some(format!("{side}.mid.block_{}.{}", k + 1, resnet(r)));
        }
        let r = r.strip_prefix("attentions.0.")?;
        let (name, param) = r.rsplit_once('.')?;
        let ldm = match name {
            "group_norm" => "norm",
            "to_q" => "q",
            "to_k" => "k",
            "to_v" => "v",
            "to_out.0" => "proj_out",
            _ => return None,
        };
        return Some(format!("{side}.mid.attn_1.{ldm}.{param}"));
    }
    if side == "encoder" {
        let r = rest.strip_prefix("down_blocks.")?;
        let (i, r) = r.split_once('.')?;
        if let Some(r) = r.strip_prefix("resnets.") {
            return Some(format!("encoder.down.{i}.block.{}", resnet(r)));
        }
        let r = r.strip_prefix("downsamplers.0.conv.")?;
        return Some(format!("encoder.down.{i}.downsample.conv.{r}"));
    }
    let r = rest.strip_prefix("up_blocks.")?;
    let (i, r) = r.split_once('.')?;
    let b = levels.checked_sub(1)?.checked_sub(i.parse().ok()?)?;
    if let Some(r) = r.strip_prefix("resnets.") {
        return Some(format!("decoder.up.{b}.block.{}", resnet(r)));
    }
    let r = r.strip_prefix("upsamplers.0.conv.")?;
    Some(format!("decoder.up.{b}.upsample.conv.{r}"))
}
