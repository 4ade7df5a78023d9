//! MiDaS DPT-Hybrid from transformers' `Intel/dpt-hybrid-midas` folder (`model.safetensors` or
//! `pytorch_model.bin`, `config.json`, `preprocessor_config.json`), which comfyui_controlnet_aux
//! loads through `DPTForDepthEstimation` since e8b689a. The maths is the published `.pt`'s
//! ([`super::midas::Midas`]), so the file's names are renamed to the `.pt`'s: BiT's
//! `embedder`/`encoder.stages.S.layers.B` to timm's `stem`/`stages.S.blocks.B`, each ViT layer's
//! separate query, key and value joined into `attn.qkv`, the neck's readout projections and
//! reassemble layers to `act_postprocess3/4`, `neck.convs.I` to `scratch.layerI+1_rn`, the fusion
//! stage's layers (coarsest first) to `refinenet4..1`, `head.head` to `scratch.output_conv`.
//!
//! What the weights do not say comes from the JSON files beside them when they are there:
//! the heads, the read-out layers (`backbone_out_indices[2..]`) and the LayerNorm epsilon from
//! `config.json` (else ViT-B's 64-wide heads, the last and fourth-last layers, 1e-12), the
//! processor's size, filter, mean and std from `preprocessor_config.json` (else
//! `DPTImageProcessor`'s defaults: bicubic, 0.5 and 0.5; the size is the position table's grid
//! times the backbone's stride, which transformers requires of the input anyway).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use super::midas::{Config, Input, Midas, Processor};
use crate::load::file::StateDict;
use crate::load::renaming::{FileTensors, Renaming, Source};
use crate::load::{LoadError, LoadErrorKind};
use crate::preprocess::resample::Filter;

const CLS: &str = "dpt.embeddings.cls_token";
const BACKBONE: &str = "pretrained.model.patch_embed.backbone";

/// Whether the tensors are transformers' DPT layout.
pub fn is_hf_layout(shapes: &HashMap<String, Vec<usize>>) -> bool {
    shapes.contains_key(CLS)
}

/// Where one published name's tensor comes from.
pub(super) enum HfTensor {
    Key(String),
    /// Joined along the first dimension (query, key, value into `qkv`).
    Cat(Vec<String>),
}

impl Source for HfTensor {
    type Context = ();

    fn read(&self, _: &(), file: &FileTensors) -> candle_core::Result<(String, Tensor)> {
        match self {
            HfTensor::Key(k) => Ok((k.clone(), file.tensor(k)?)),
            HfTensor::Cat(keys) => {
                let parts = keys
                    .iter()
                    .map(|k| file.tensor(k))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok((keys.join("+"), Tensor::cat(&parts, 0)?))
            }
        }
    }

    fn file_keys(&self) -> Vec<&str> {
        match self {
            HfTensor::Key(k) => vec![k.as_str()],
            HfTensor::Cat(keys) => keys.iter().map(String::as_str).collect(),
        }
    }
}

/// The published name of a transformers key (`None` for tensors the net does not use: the
/// final `dpt.layernorm`, and anything unknown).
fn published(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let rest = |r: &[&str]| r.join(".");
    let readout = |i: &str| match i {
        "2" => Some("3"),
        "3" => Some("4"),
        _ => None,
    };
    Some(match parts.as_slice() {
        ["dpt", "embeddings", "cls_token"] => "pretrained.model.cls_token".into(),
        ["dpt", "embeddings", "position_embeddings"] => "pretrained.model.pos_embed".into(),
        ["dpt", "embeddings", "projection", r @ ..] => {
            format!("pretrained.model.patch_embed.proj.{}", rest(r))
        }
        ["dpt", "embeddings", "backbone", "bit", "embedder", "convolution", r @ ..] => {
            format!("{BACKBONE}.stem.conv.{}", rest(r))
        }
        ["dpt", "embeddings", "backbone", "bit", "embedder", "norm", r @ ..] => {
            format!("{BACKBONE}.stem.norm.{}", rest(r))
        }
        ["dpt", "embeddings", "backbone", "bit", "encoder", "stages", s, "layers", b, r @ ..] => {
            format!("{BACKBONE}.stages.{s}.blocks.{b}.{}", rest(r))
        }
        ["dpt", "encoder", "layer", i, r @ ..] => {
            let local = match r {
                ["layernorm_before", p] => format!("norm1.{p}"),
                ["layernorm_after", p] => format!("norm2.{p}"),
                ["attention", "output", "dense", p] => format!("attn.proj.{p}"),
                ["intermediate", "dense", p] => format!("mlp.fc1.{p}"),
                ["output", "dense", p] => format!("mlp.fc2.{p}"),
                // query/key/value: joined by `names`
                _ => return None,
            };
            format!("pretrained.model.blocks.{i}.{local}")
        }
        ["neck", "reassemble_stage", "readout_projects", i, "0", p] => {
            format!("pretrained.act_postprocess{}.0.project.0.{p}", readout(i)?)
        }
        ["neck", "reassemble_stage", "layers", i, "projection", p] => {
            format!("pretrained.act_postprocess{}.3.{p}", readout(i)?)
        }
        ["neck", "reassemble_stage", "layers", "3", "resize", p] => {
            format!("pretrained.act_postprocess4.4.{p}")
        }
        ["neck", "convs" | "fusion_stage", ..] => dpt_scratch(&parts)?,
        ["head", "head", k, p] => format!("scratch.output_conv.{k}.{p}"),
        _ => return None,
    })
}

/// The DPT `scratch` name of transformers' neck convolutions (`neck.convs.I`, to
/// `scratch.layerI+1_rn`) and fusion stage (`neck.fusion_stage.layers.J`, coarsest first, to
/// `scratch.refinenet4-J`), from the key's dot-separated `parts`.
pub(super) fn dpt_scratch(parts: &[&str]) -> Option<String> {
    match parts {
        ["neck", "convs", i, p] => Some(format!(
            "scratch.layer{}_rn.{p}",
            i.parse::<usize>().ok()? + 1
        )),
        ["neck", "fusion_stage", "layers", j, r @ ..] => {
            let j: usize = j.parse().ok()?;
            let mapped: Vec<&str> = r
                .iter()
                .map(|p| match *p {
                    "projection" => "out_conv",
                    "residual_layer1" => "resConfUnit1",
                    "residual_layer2" => "resConfUnit2",
                    "convolution1" => "conv1",
                    "convolution2" => "conv2",
                    other => other,
                })
                .collect();
            Some(format!(
                "scratch.refinenet{}.{}",
                4usize.checked_sub(j)?,
                mapped.join(".")
            ))
        }
        _ => None,
    }
}

/// For every layer `i` whose `{layer(i)}.query.weight` is in the file: its query, key and value
/// `params` (`weight`, `bias`) joined along the first dimension as `{target(i)}.{param}`.
pub(super) fn joined_qkv(
    shapes: &HashMap<String, Vec<usize>>,
    layer: impl Fn(usize) -> String,
    target: impl Fn(usize) -> String,
    params: &[&str],
) -> Vec<(String, (HfTensor, Vec<usize>))> {
    let mut out = Vec::new();
    for i in 0.. {
        let layer = layer(i);
        if !shapes.contains_key(&format!("{layer}.query.weight")) {
            break;
        }
        for p in params {
            let keys: Vec<String> = ["query", "key", "value"]
                .iter()
                .map(|q| format!("{layer}.{q}.{p}"))
                .collect();
            let Some(parts) = keys
                .iter()
                .map(|k| shapes.get(k))
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            let mut shape = parts[0].clone();
            if let Some(first) = shape.first_mut() {
                *first = parts.iter().filter_map(|s| s.first()).sum();
            }
            out.push((format!("{}.{p}", target(i)), (HfTensor::Cat(keys), shape)));
        }
    }
    out
}

/// Published name -> source and shape, for every tensor of the file the net reads.
fn names(shapes: &HashMap<String, Vec<usize>>) -> HashMap<String, (HfTensor, Vec<usize>)> {
    let mut out: HashMap<String, (HfTensor, Vec<usize>)> = shapes
        .iter()
        .filter_map(|(k, shape)| Some((published(k)?, (HfTensor::Key(k.clone()), shape.clone()))))
        .collect();
    out.extend(joined_qkv(
        shapes,
        |i| format!("dpt.encoder.layer.{i}.attention.attention"),
        |i| format!("pretrained.model.blocks.{i}.attn.qkv"),
        &["weight", "bias"],
    ));
    out
}

/// A JSON file beside the weights, if it is there.
pub(crate) fn sibling_json(weights: &Path, name: &str) -> Result<Option<Json>, String> {
    let Some(path) = weights.parent().map(|d| d.join(name)) else {
        return Ok(None);
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub(crate) fn usize_field(json: &Json, name: &str) -> Option<usize> {
    json.get(name)?
        .as_u64()
        .and_then(|v| usize::try_from(v).ok())
}

/// `config.json`'s heads, read-out layers and LayerNorm epsilon applied to `config`.
fn apply_config(config: &mut Config, json: Option<&Json>) -> Result<(), String> {
    let get = |name: &str| json.and_then(|j| j.get(name));
    if let Some(heads) = json.and_then(|j| usize_field(j, "num_attention_heads")) {
        if heads == 0 || !config.embed_dim.is_multiple_of(heads) {
            return Err(format!(
                "{heads} attention heads do not divide the width {}",
                config.embed_dim
            ));
        }
        config.heads = heads;
    }
    if let Some(indices) = get("backbone_out_indices").and_then(Json::as_array) {
        let read: Vec<usize> = indices
            .iter()
            .filter_map(|v| v.as_u64().and_then(|v| usize::try_from(v).ok()))
            .collect();
        match read.as_slice() {
            [_, _, a, b] if a <= b && *b < config.depth => config.hooks = [*a, *b],
            _ => {
                return Err(format!(
                    "backbone_out_indices {indices:?}: four layers below {} expected",
                    config.depth
                ))
            }
        }
    }
    config.layer_norm_eps = get("layer_norm_eps")
        .and_then(Json::as_f64)
        .unwrap_or(1e-12);
    Ok(())
}

/// `preprocessor_config.json`'s processor, for a net whose input is `side` square by default.
fn processor(json: Option<&Json>, side: usize) -> Result<Processor, String> {
    let get = |name: &str| json.and_then(|j| j.get(name));
    let flag = |name: &str, default: bool| get(name).and_then(Json::as_bool).unwrap_or(default);
    if !flag("do_resize", true) || !flag("do_rescale", true) || !flag("do_normalize", true) {
        return Err("a processor that does not resize, rescale and normalise".into());
    }
    if flag("keep_aspect_ratio", false)
        || get("ensure_multiple_of")
            .and_then(Json::as_u64)
            .unwrap_or(1)
            != 1
    {
        return Err("keep_aspect_ratio and ensure_multiple_of are not supported".into());
    }
    let (height, width) = match get("size") {
        None => (side, side),
        Some(size) => match (
            usize_field(size, "height"),
            usize_field(size, "width"),
            size.as_u64(),
        ) {
            (Some(h), Some(w), _) => (h, w),
            (_, _, Some(s)) => (s as usize, s as usize),
            _ => return Err(format!("processor size {size}")),
        },
    };
    if height == 0 || width == 0 || !height.is_multiple_of(32) || !width.is_multiple_of(32) {
        return Err(format!(
            "processor size {height}x{width}: multiples of 32 expected"
        ));
    }
    // bicubic; IMAGENET_STANDARD_MEAN and _STD are 0.5 each
    let (filter, mean, std) = filter_and_norm(json, 3, [0.5; 3], [0.5; 3])?;
    Ok(Processor {
        height,
        width,
        filter,
        mean,
        std,
    })
}

/// A transformers processor's resize filter (`resample`) and its `image_mean` and `image_std`
/// on the 0..255 scale, each from `json` where it says, else the class's default given here.
pub(crate) fn filter_and_norm(
    json: Option<&Json>,
    resample: u64,
    mean: [f64; 3],
    std: [f64; 3],
) -> Result<(Filter, [f32; 3], [f32; 3]), String> {
    let get = |name: &str| json.and_then(|j| j.get(name));
    let resample = get("resample").and_then(Json::as_u64).unwrap_or(resample);
    let filter = Filter::from_pil(resample)
        .ok_or_else(|| format!("resample {resample} is not supported"))?;
    let rescale = get("rescale_factor")
        .and_then(Json::as_f64)
        .unwrap_or(1.0 / 255.0);
    Ok((
        filter,
        fused_triple(json, "image_mean", mean, rescale)?,
        fused_triple(json, "image_std", std, rescale)?,
    ))
}

/// A processor's `image_mean` or `image_std` (`default` where absent) on the 0..255 scale, as
/// torch fuses it with the rescale: an f32 tensor times `1 / rescale_factor` (taken as f32).
fn fused_triple(
    json: Option<&Json>,
    name: &str,
    default: [f64; 3],
    rescale: f64,
) -> Result<[f32; 3], String> {
    let v = json
        .and_then(|j| j.get(name))
        .cloned()
        .unwrap_or_else(|| serde_json::json!(default));
    let vals: Vec<f64> = match &v {
        Json::Array(a) => a.iter().filter_map(Json::as_f64).collect(),
        other => other.as_f64().map(|x| vec![x; 3]).unwrap_or_default(),
    };
    match vals.as_slice() {
        [a, b, c] => Ok([a, b, c].map(|x| (*x as f32) * (1.0 / rescale) as f32)),
        _ => Err(format!("{name} {v}: three values expected")),
    }
}

/// Loads transformers' `DPTForDepthEstimation` (DPT-Hybrid) weights, its JSON files beside them.
pub fn load(sd: &Arc<StateDict>, device: &Device) -> Result<Midas, LoadError> {
    let bad = |e: String| LoadError::new(sd.path(), LoadErrorKind::BadConfig(e));
    let mut map = names(sd.shapes());
    let shapes: HashMap<String, Vec<usize>> = map
        .iter()
        .map(|(k, (_, s))| (k.clone(), s.clone()))
        .collect();
    let mut config = Config::detect(&shapes).map_err(bad)?;
    config.heads = config.embed_dim / 64;
    config.layer_norm_eps = 1e-12;
    apply_config(
        &mut config,
        sibling_json(sd.path(), "config.json")
            .map_err(bad)?
            .as_ref(),
    )
    .map_err(bad)?;
    // the stem's 4 and a stride of 2 per stage after the first
    let stride = 4usize << config.stages.len().saturating_sub(1);
    let pre = sibling_json(sd.path(), "preprocessor_config.json").map_err(bad)?;
    let processor = processor(pre.as_ref(), config.pos_side * stride).map_err(bad)?;
    let names = map.drain().map(|(k, (source, _))| (k, source)).collect();
    Renaming::with_context(names, ())
        .build(sd, DType::F32, device, |vb| Midas::new(vb, &config))
        .map(|m| m.with_input(Input::Processor(processor)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_published_layout() {
        for (hf, pt) in [
            (
                "dpt.embeddings.backbone.bit.encoder.stages.2.layers.0.downsample.conv.weight",
                "pretrained.model.patch_embed.backbone.stages.2.blocks.0.downsample.conv.weight",
            ),
            (
                "dpt.encoder.layer.11.intermediate.dense.bias",
                "pretrained.model.blocks.11.mlp.fc1.bias",
            ),
            (
                "neck.fusion_stage.layers.0.residual_layer2.convolution1.weight",
                "scratch.refinenet4.resConfUnit2.conv1.weight",
            ),
            (
                "neck.reassemble_stage.readout_projects.3.0.weight",
                "pretrained.act_postprocess4.0.project.0.weight",
            ),
            ("neck.convs.3.weight", "scratch.layer4_rn.weight"),
            ("head.head.4.bias", "scratch.output_conv.4.bias"),
        ] {
            assert_eq!(published(hf).as_deref(), Some(pt), "{hf}");
        }
        assert_eq!(published("dpt.layernorm.weight"), None);
        assert_eq!(
            published("dpt.encoder.layer.0.attention.attention.query.weight"),
            None
        );
    }

    #[test]
    fn the_processor_defaults_and_reads_its_file() {
        let p = processor(None, 384).unwrap();
        assert_eq!((p.height, p.width, p.filter), (384, 384, Filter::Bicubic));
        assert_eq!((p.mean, p.std), ([127.5; 3], [127.5; 3]));
        let json = serde_json::json!({"resample": 2, "size": {"height": 192, "width": 192}});
        let p = processor(Some(&json), 384).unwrap();
        assert_eq!((p.height, p.width, p.filter), (192, 192, Filter::Bilinear));
        assert!(processor(Some(&serde_json::json!({"keep_aspect_ratio": true})), 384).is_err());
    }
}
