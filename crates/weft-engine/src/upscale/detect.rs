//! Which upscale architecture a file holds, its shape, and the map from the model's weight names
//! to the file's keys, all from the tensor names and shapes alone (as spandrel's detection does).
//!
//! Layouts: ESRGAN's old `model.N` names (`model.1.sub.N.RDB1.conv1.0`), Real-ESRGAN's
//! (`conv_first`, `body.N.rdb1.conv1`, `conv_body`, `conv_upN`, `conv_hr`, `conv_last`), BSRGAN's
//! (`RRDB_trunk`, `trunk_conv`, `upconvN`, `HRconv`), and SRVGGNetCompact's (`body.N`). A common
//! `module.` or `netG.` prefix (DataParallel, BasicSR) is ignored. SwinIR's names are its own.

use std::collections::HashMap;

use crate::load::LoadErrorKind;
use crate::upscale::swinir::{self, Upsampler};
use crate::upscale::{compact, esrgan};

/// An architecture with its shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    /// ESRGAN / Real-ESRGAN / BSRGAN RRDBNet.
    Esrgan(esrgan::Config),
    /// Real-ESRGAN's SRVGGNetCompact.
    Compact(compact::Config),
    /// SwinIR (classical, lightweight, real-world, denoising/JPEG).
    SwinIr(swinir::Config),
}

/// What [`detect`] found.
#[derive(Debug, Clone)]
pub struct Detected {
    /// The architecture and its shape.
    pub architecture: Architecture,
    /// The model's weight name -> the file's key.
    pub names: HashMap<String, String>,
}

/// The marker keys of each layout, for the error when none matches.
const MARKERS: &[(&str, &[&str])] = &[
    (
        "SwinIR",
        &[
            "layers.0.residual_group.blocks.0.norm1.weight",
            "conv_first.weight",
            "layers.0.residual_group.blocks.0.mlp.fc1.bias",
            "layers.0.residual_group.blocks.0.attn.relative_position_index",
        ],
    ),
    (
        "ESRGAN",
        &["model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"],
    ),
    (
        "ESRGAN+",
        &["model.0.weight", "model.1.sub.0.RDB1.conv1x1.weight"],
    ),
    (
        "Real-ESRGAN",
        &[
            "conv_first.weight",
            "body.0.rdb1.conv1.weight",
            "conv_body.weight",
            "conv_last.weight",
        ],
    ),
    (
        "BSRGAN",
        &[
            "conv_first.weight",
            "RRDB_trunk.0.RDB1.conv1.weight",
            "trunk_conv.weight",
            "conv_last.weight",
        ],
    ),
    ("Real-ESRGAN Compact", &["body.0.weight", "body.1.weight"]),
];

/// Detects the architecture of a file from its tensor shapes (`key -> shape`).
pub fn detect(shapes: &HashMap<String, Vec<usize>>) -> Result<Detected, LoadErrorKind> {
    let prefix = ["module.", "netG."]
        .into_iter()
        .find(|p| !shapes.is_empty() && shapes.keys().all(|k| k.starts_with(p)))
        .unwrap_or("");
    let keys: HashMap<&str, &str> = shapes
        .keys()
        .map(|k| (&k[prefix.len()..], k.as_str()))
        .collect();
    let has_all = |names: &[&str]| names.iter().all(|n| keys.contains_key(n));
    if keys.contains_key("conv_first.1.weight") {
        return Err(LoadErrorKind::UnsupportedFormat(
            "SwinIR with a pixel-unshuffle start (conv_first.1) is not supported".into(),
        ));
    }
    let layout = MARKERS
        .iter()
        .find(|(_, markers)| has_all(markers))
        .map(|(name, _)| *name);
    let rename: fn(&str, &OldLayout) -> Option<String> = match layout {
        Some("ESRGAN" | "ESRGAN+") => old_name,
        Some("Real-ESRGAN") => new_name,
        Some("BSRGAN") => bsrgan_name,
        Some("SwinIR") => return swin_ir(shapes, &keys),
        Some(_) => return compact(shapes, &keys),
        None => {
            return Err(LoadErrorKind::UnknownFamily {
                looked_for: MARKERS
                    .iter()
                    .map(|(name, markers)| format!("{name} ({})", markers.join(", ")))
                    .collect(),
            })
        }
    };
    let old = OldLayout::of(keys.keys().copied());
    let names: HashMap<String, String> = keys
        .iter()
        .filter_map(|(k, file)| Some((rename(k, &old)?, (*file).to_string())))
        .collect();
    let shape = |name: &str| -> Result<&[usize], LoadErrorKind> {
        let key = names
            .get(name)
            .ok_or_else(|| LoadErrorKind::MissingTensor(name.to_string()))?;
        let dims = shapes[key].as_slice();
        if dims.len() == 4 && dims.iter().all(|&d| d > 0) {
            Ok(dims)
        } else {
            Err(LoadErrorKind::BadConfig(format!(
                "'{key}' has shape {dims:?}, not a convolution kernel"
            )))
        }
    };
    let first = shape("conv_first.weight")?;
    let out_channels = shape("conv_last.weight")?[0];
    let in_channels = first[1];
    let unshuffle = [2, 4]
        .into_iter()
        .find(|f| in_channels == out_channels * f * f);
    let config = esrgan::Config {
        in_channels,
        out_channels,
        num_feat: first[0],
        num_block: count(&names, "body.", ".rdb1.conv1.weight"),
        num_grow: shape("body.0.rdb1.conv1.weight")?[0],
        upsamples: count(&names, "conv_up", ".weight"),
        unshuffle,
        plus: names.contains_key("body.0.rdb1.conv1x1.weight"),
    };
    if config.upsamples > 3 {
        return Err(LoadErrorKind::BadConfig(format!(
            "{} upsampling layers (at most 3, an 8x model, are supported)",
            config.upsamples
        )));
    }
    Ok(Detected {
        architecture: Architecture::Esrgan(config),
        names,
    })
}

/// How many of `prefix{i}{suffix}` there are for i from 0 (or 1, for `conv_up`) with no gap.
fn count(names: &HashMap<String, String>, prefix: &str, suffix: &str) -> usize {
    let start = usize::from(prefix == "conv_up");
    (start..)
        .take_while(|i| names.contains_key(&format!("{prefix}{i}{suffix}")))
        .count()
}

/// The sequence positions of ESRGAN's old layout: `model.1.sub` has the blocks then `conv_body`;
/// after it come three modules per upsampling step (upsample, conv, activation), then `conv_hr`,
/// its activation and `conv_last`.
struct OldLayout {
    /// The index of `conv_body` in `model.1.sub` (the number of blocks).
    blocks: usize,
    /// Upsampling steps.
    upsamples: usize,
}

impl OldLayout {
    fn of<'a>(keys: impl Iterator<Item = &'a str>) -> OldLayout {
        let mut model_len = 0;
        let mut sub_len = 0;
        for key in keys {
            let index = |rest: &str| rest.split('.').next().and_then(|i| i.parse::<usize>().ok());
            if let Some(i) = key.strip_prefix("model.1.sub.").and_then(index) {
                sub_len = sub_len.max(i + 1);
            } else if let Some(i) = key.strip_prefix("model.").and_then(index) {
                model_len = model_len.max(i + 1);
            }
        }
        OldLayout {
            blocks: sub_len.saturating_sub(1),
            upsamples: model_len.saturating_sub(5) / 3,
        }
    }
}

/// `model.N…` -> the Real-ESRGAN name.
fn old_name(key: &str, old: &OldLayout) -> Option<String> {
    let rest = key.strip_prefix("model.")?;
    let (index, param) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    if index == 1 {
        let sub = param.strip_prefix("sub.")?;
        let (block, param) = sub.split_once('.')?;
        let block: usize = block.parse().ok()?;
        if block == old.blocks {
            return Some(format!("conv_body.{param}"));
        }
        // RDB1.conv1.0.weight -> rdb1.conv1.weight; ESRGAN+'s RDB1.conv1x1.weight keeps its name.
        let (rdb, conv_param) = param.split_once('.')?;
        let rdb = rdb.strip_prefix("RDB")?;
        let conv_param = match conv_param.split_once(".0.") {
            Some((conv, param)) => format!("{conv}.{param}"),
            None => conv_param.to_string(),
        };
        return Some(format!("body.{block}.rdb{rdb}.{conv_param}"));
    }
    let n = old.upsamples;
    let name = match index {
        0 => "conv_first".to_string(),
        i if i == 3 * n + 2 => "conv_hr".to_string(),
        i if i == 3 * n + 4 => "conv_last".to_string(),
        i if i % 3 == 0 && (1..=n).contains(&(i / 3)) => format!("conv_up{}", i / 3),
        _ => return None,
    };
    Some(format!("{name}.{param}"))
}

/// Real-ESRGAN's names are the model's.
fn new_name(key: &str, _: &OldLayout) -> Option<String> {
    Some(key.to_string())
}

/// BSRGAN's names -> Real-ESRGAN's.
fn bsrgan_name(key: &str, _: &OldLayout) -> Option<String> {
    if let Some(rest) = key.strip_prefix("RRDB_trunk.") {
        let (block, rest) = rest.split_once('.')?;
        let rdb = rest.strip_prefix("RDB")?;
        return Some(format!("body.{block}.rdb{rdb}"));
    }
    for (from, to) in [
        ("trunk_conv.", "conv_body."),
        ("HRconv.", "conv_hr."),
        ("upconv", "conv_up"),
    ] {
        if let Some(rest) = key.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    Some(key.to_string())
}

/// The file's keys (without the common prefix) as the model's names.
fn own_names(keys: &HashMap<&str, &str>) -> HashMap<String, String> {
    keys.iter()
        .map(|(k, file)| (k.to_string(), file.to_string()))
        .collect()
}

/// SRVGGNetCompact: `body.0` is the first convolution, the last `body.N` the one before the
/// pixel shuffle, whose channels are `out_channels * scale²`.
fn compact(
    shapes: &HashMap<String, Vec<usize>>,
    keys: &HashMap<&str, &str>,
) -> Result<Detected, LoadErrorKind> {
    let names = own_names(keys);
    let len = (0..)
        .take_while(|i| names.contains_key(&format!("body.{i}.weight")))
        .count();
    let last = len.saturating_sub(1);
    let first = &shapes[&names["body.0.weight"]];
    let bad = |why: String| LoadErrorKind::BadConfig(why);
    if first.len() != 4 || len < 3 || last % 2 != 0 {
        return Err(bad(format!(
            "a Compact model's body has {len} layers and body.0.weight the shape {first:?}"
        )));
    }
    let (num_feat, in_channels) = (first[0], first[1]);
    let last_key = format!("body.{last}.bias");
    let shuffled = names
        .get(&last_key)
        .and_then(|k| shapes[k].first().copied())
        .ok_or_else(|| LoadErrorKind::MissingTensor(last_key))?;
    // spandrel's get_scale_and_output_channels: the first of these channel counts that leaves a
    // square for the scale.
    let (scale, out_channels) = [in_channels, 3, 4, 1]
        .into_iter()
        .filter(|&c| c > 0 && shuffled % c == 0)
        .find_map(|c| {
            let s = (shuffled / c).isqrt();
            (s > 0 && s * s == shuffled / c).then_some((s, c))
        })
        .ok_or_else(|| {
            bad(format!(
                "the last layer's {shuffled} channels are no c*scale²"
            ))
        })?;
    Ok(Detected {
        architecture: Architecture::Compact(compact::Config {
            in_channels,
            out_channels,
            num_feat,
            num_conv: (last - 2) / 2,
            scale,
        }),
        names,
    })
}

/// SwinIR, as spandrel reads it: the head from which layers exist, sizes from the first
/// convolution, the MLP and the relative position index, the training size from the first
/// shifted block's mask (64 without one), depths and heads per residual group.
fn swin_ir(
    shapes: &HashMap<String, Vec<usize>>,
    keys: &HashMap<&str, &str>,
) -> Result<Detected, LoadErrorKind> {
    let names = own_names(keys);
    let has = |name: &str| names.contains_key(name);
    let dims = |name: &str| -> Result<&[usize], LoadErrorKind> {
        let key = names
            .get(name)
            .ok_or_else(|| LoadErrorKind::MissingTensor(name.to_string()))?;
        let d = shapes[key].as_slice();
        if d.is_empty() || d.contains(&0) {
            return Err(LoadErrorKind::BadConfig(format!("'{key}' has shape {d:?}")));
        }
        Ok(d)
    };
    let bad = |why: String| LoadErrorKind::BadConfig(why);
    let first = dims("conv_first.weight")?;
    if first.len() != 4 {
        return Err(bad(format!("conv_first.weight has shape {first:?}")));
    }
    let (embed_dim, channels) = (first[0], first[1]);
    let out = if has("conv_last.weight") {
        dims("conv_last.weight")?[0]
    } else {
        channels
    };
    if out != channels {
        return Err(bad(format!("{channels} channels in, {out} out")));
    }
    let block = "layers.0.residual_group.blocks.0";
    let window = dims(&format!("{block}.attn.relative_position_index"))?[0].isqrt();
    let (upsampler, scale) = if has("conv_before_upsample.0.weight") {
        let num_feat = dims("conv_before_upsample.0.weight")?[0];
        if has("conv_up1.weight") {
            let ups = (1..)
                .take_while(|i| has(&format!("conv_up{i}.weight")))
                .count();
            (Upsampler::NearestConv { num_feat }, 1 << ups)
        } else {
            let mut scale = 1;
            for i in (0..).step_by(2) {
                let Ok(d) = dims(&format!("upsample.{i}.weight")) else {
                    break;
                };
                scale *= (d[0] / d[1].max(1)).isqrt();
            }
            (Upsampler::PixelShuffle { num_feat }, scale)
        }
    } else if has("upsample.0.weight") {
        let shuffled = dims("upsample.0.bias")?[0];
        (Upsampler::PixelShuffleDirect, (shuffled / out).isqrt())
    } else {
        (Upsampler::None, 1)
    };
    let layers = (0..)
        .take_while(|i| has(&format!("layers.{i}.residual_group.blocks.0.norm1.weight")))
        .count();
    let mut depths = Vec::with_capacity(layers);
    let mut num_heads = Vec::with_capacity(layers);
    for i in 0..layers {
        let group = format!("layers.{i}.residual_group.blocks");
        depths.push(
            (0..)
                .take_while(|j| has(&format!("{group}.{j}.norm1.weight")))
                .count(),
        );
        let table = dims(&format!("{group}.0.attn.relative_position_bias_table"))?;
        let heads = table.get(1).copied().unwrap_or(0);
        if heads == 0 || embed_dim % heads != 0 || table[0] != (2 * window - 1).pow(2) {
            return Err(bad(format!(
                "layer {i}'s relative position table has shape {table:?} for {embed_dim} \
                 channels and {window}-pixel windows"
            )));
        }
        num_heads.push(heads);
    }
    let img_size = match dims("layers.0.residual_group.blocks.1.attn_mask") {
        Ok(d) => d[0].isqrt() * window,
        Err(_) => 64,
    };
    if window == 0 || scale == 0 {
        return Err(bad(format!("window {window}, scale {scale}")));
    }
    Ok(Detected {
        architecture: Architecture::SwinIr(swinir::Config {
            channels,
            embed_dim,
            depths,
            num_heads,
            window_size: window,
            mlp_hidden: dims(&format!("{block}.mlp.fc1.bias"))?[0],
            img_size,
            scale,
            upsampler,
            three_conv: !has("conv_after_body.weight"),
            patch_norm: has("patch_embed.norm.weight"),
            // spandrel: the JPEG models are the only ones with 7-pixel windows, and work in 0..255.
            img_range: if window == 7 { 255.0 } else { 1.0 },
        }),
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(o: usize, i: usize) -> Vec<usize> {
        vec![o, i, 3, 3]
    }

    /// An old-layout 4x RRDBNet with 2 blocks, nf 8, gc 4, as `model.N` keys.
    fn old_esrgan() -> HashMap<String, Vec<usize>> {
        let mut s = HashMap::new();
        s.insert("model.0.weight".into(), conv(8, 3));
        for b in 0..2 {
            for r in 1..=3 {
                for c in 1..=5 {
                    let (o, i) = if c == 5 {
                        (8, 8 + 16)
                    } else {
                        (4, 8 + 4 * (c - 1))
                    };
                    s.insert(
                        format!("model.1.sub.{b}.RDB{r}.conv{c}.0.weight"),
                        conv(o, i),
                    );
                }
            }
        }
        s.insert("model.1.sub.2.weight".into(), conv(8, 8));
        for i in [3, 6, 8] {
            s.insert(format!("model.{i}.weight"), conv(8, 8));
        }
        s.insert("model.10.weight".into(), conv(3, 8));
        s
    }

    #[test]
    fn old_layout_is_renamed_and_measured() {
        let d = detect(&old_esrgan()).unwrap();
        let Architecture::Esrgan(cfg) = &d.architecture else {
            panic!("{:?}", d.architecture)
        };
        assert_eq!(
            (cfg.num_block, cfg.num_grow, cfg.upsamples, cfg.scale()),
            (2, 4, 2, 4)
        );
        assert_eq!(d.names["conv_body.weight"], "model.1.sub.2.weight");
        assert_eq!(d.names["conv_up2.weight"], "model.6.weight");
        assert_eq!(d.names["conv_hr.weight"], "model.8.weight");
        assert_eq!(d.names["conv_last.weight"], "model.10.weight");
        assert_eq!(
            d.names["body.1.rdb3.conv5.weight"],
            "model.1.sub.1.RDB3.conv5.0.weight"
        );
    }

    #[test]
    fn a_data_parallel_prefix_is_ignored() {
        let prefixed = old_esrgan()
            .into_iter()
            .map(|(k, v)| (format!("module.{k}"), v))
            .collect();
        let d = detect(&prefixed).unwrap();
        assert_eq!(d.names["conv_first.weight"], "module.model.0.weight");
    }

    #[test]
    fn unknown_weights_name_every_layout_looked_for() {
        let shapes = HashMap::from([("encoder.weight".to_string(), vec![4, 4])]);
        let err = detect(&shapes).unwrap_err().to_string();
        for name in [
            "ESRGAN (model.0.weight",
            "Real-ESRGAN (conv_first.weight",
            "Compact",
        ] {
            assert!(err.contains(name), "{err}");
        }
    }
}
