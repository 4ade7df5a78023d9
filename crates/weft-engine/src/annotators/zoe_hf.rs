//! ZoeDepth NK from transformers' `Intel/zoedepth-nyu-kitti` folder (`model.safetensors` or
//! `pytorch_model.bin`, `config.json`, `preprocessor_config.json`), which comfyui_controlnet_aux
//! runs through `pipeline("depth-estimation")` with `ZoeDepthForDepthEstimation` since e8b689a.
//! The BEiT backbone, DPT neck and relative head are the `.pt`'s maths, so the file's names are
//! renamed onto [`super::zoe::Zoe`]'s: `backbone.encoder.layer.I` to `blocks.I` (query, key and
//! value weights joined into `attn.qkv`, the query and value biases to `q_bias`/`v_bias`,
//! `lambda_1/2` to `gamma_1/2`), the neck's readout projections and reassemble layers to
//! `act_postprocess1..4`, its convolutions and fusion stage to the `scratch`, `relative_head` to
//! `output_conv`, the metric head's `conv1`/`conv2` to `_net.0`/`_net.2`. What differs: one bins
//! head per domain of `bin_configurations` (to `bins.N.`, N its place in that list) whose
//! log-binomial reads no relative depth, and the domain classifier (to `router.`,
//! [`super::zoe_router`]).
//!
//! What the weights do not say comes from the JSON files beside them (else the published
//! values): the backbone's LayerNorm epsilon (1e-12) and read-out layers (`out_indices`), the
//! domains' order (nyu, kitti), the temperatures, the classifier's heads (4); the processor's
//! size (384x512), multiple (32), aspect rule, padding, rescale factor, mean and std.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device};
use serde_json::Value as Json;

use super::midas_hf::{dpt_scratch, joined_qkv, sibling_json, usize_field, HfTensor};
use super::zoe::{BinsConfig, Call, Config, Processor, Zoe};
use super::zoe_router::RouterConfig;
use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};

const CORE: &str = "core.core.";
const CLS: &str = "backbone.embeddings.cls_token";
const CLASSIFIER: &str = "metric_head.mlp_classifier.linear2.weight";
/// The published `bin_configurations` names, in order.
const DOMAINS: [&str; 2] = ["nyu", "kitti"];

/// Whether the tensors are transformers' ZoeDepth layout.
pub fn is_hf_layout(shapes: &HashMap<String, Vec<usize>>) -> bool {
    shapes.contains_key(CLS) && shapes.keys().any(|k| k.starts_with("metric_head."))
}

/// `_net.0`/`_net.2` for transformers' `conv1`/`conv2` of the metric head's MLPs.
fn mlp(conv: &str) -> Option<&'static str> {
    match conv {
        "conv1" => Some("_net.0"),
        "conv2" => Some("_net.2"),
        _ => None,
    }
}

/// The [`Zoe`] name of a transformers key (`None` for tensors the net does not use or that are
/// joined by [`names`]); `domains` are the bins heads' names in order.
fn published(key: &str, domains: &[String]) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let index = |i: &str| i.parse::<usize>().ok();
    let domain = |name: &str| domains.iter().position(|d| d == name);
    let core = |name: String| Some(format!("{CORE}{name}"));
    match parts.as_slice() {
        ["backbone", "embeddings", "cls_token"] => core("pretrained.model.cls_token".into()),
        ["backbone", "embeddings", "patch_embeddings", "projection", p] => {
            core(format!("pretrained.model.patch_embed.proj.{p}"))
        }
        ["backbone", "encoder", "layer", i, r @ ..] => {
            let local = match r {
                ["attention", "attention", "query", "bias"] => "attn.q_bias".into(),
                ["attention", "attention", "value", "bias"] => "attn.v_bias".into(),
                ["attention", "attention", "relative_position_bias", "relative_position_bias_table"] => {
                    "attn.relative_position_bias_table".into()
                }
                ["attention", "output", "dense", p] => format!("attn.proj.{p}"),
                ["layernorm_before", p] => format!("norm1.{p}"),
                ["layernorm_after", p] => format!("norm2.{p}"),
                ["intermediate", "dense", p] => format!("mlp.fc1.{p}"),
                ["output", "dense", p] => format!("mlp.fc2.{p}"),
                ["lambda_1"] => "gamma_1".into(),
                ["lambda_2"] => "gamma_2".into(),
                _ => return None,
            };
            core(format!("pretrained.model.blocks.{i}.{local}"))
        }
        ["neck", "reassemble_stage", "readout_projects", i, "0", p] => core(format!(
            "pretrained.act_postprocess{}.0.project.0.{p}",
            index(i)? + 1
        )),
        ["neck", "reassemble_stage", "layers", i, layer, p] => {
            let k = match *layer {
                "projection" => 3,
                "resize" => 4,
                _ => return None,
            };
            core(format!(
                "pretrained.act_postprocess{}.{k}.{p}",
                index(i)? + 1
            ))
        }
        ["neck", ..] => core(dpt_scratch(&parts)?),
        ["relative_head", conv, p] => {
            let k = match *conv {
                "conv1" => 0,
                "conv2" => 2,
                "conv3" => 4,
                _ => return None,
            };
            core(format!("scratch.output_conv.{k}.{p}"))
        }
        ["metric_head", "conv2", p] => Some(format!("conv2.{p}")),
        ["metric_head", "seed_projector", c, p] => Some(format!("seed_projector.{}.{p}", mlp(c)?)),
        ["metric_head", "projectors", i, c, p] => Some(format!("projectors.{i}.{}.{p}", mlp(c)?)),
        ["metric_head", "seed_bin_regressors", name, c, p] => Some(format!(
            "bins.{}.seed_bin_regressor.{}.{p}",
            domain(name)?,
            mlp(c)?
        )),
        ["metric_head", "attractors", name, i, c, p] => Some(format!(
            "bins.{}.attractors.{i}.{}.{p}",
            domain(name)?,
            mlp(c)?
        )),
        ["metric_head", "conditional_log_binomial", name, "mlp", k, p] => Some(format!(
            "bins.{}.conditional_log_binomial.mlp.{k}.{p}",
            domain(name)?
        )),
        ["metric_head", "patch_transformer" | "mlp_classifier", ..] => {
            Some(format!("router.{}", parts[1..].join(".")))
        }
        _ => None,
    }
}

/// [`Zoe`] name -> source and shape, for every tensor of the file the net reads.
fn names(
    shapes: &HashMap<String, Vec<usize>>,
    domains: &[String],
) -> HashMap<String, (HfTensor, Vec<usize>)> {
    let mut out: HashMap<String, (HfTensor, Vec<usize>)> = shapes
        .iter()
        .filter_map(|(k, shape)| {
            Some((
                published(k, domains)?,
                (HfTensor::Key(k.clone()), shape.clone()),
            ))
        })
        .collect();
    out.extend(joined_qkv(
        shapes,
        |i| format!("backbone.encoder.layer.{i}.attention.attention"),
        |i| format!("{CORE}pretrained.model.blocks.{i}.attn.qkv"),
        &["weight"],
    ));
    out
}

/// What `config.json` says that the weights do not.
#[derive(Debug, Clone, PartialEq)]
struct HfConfig {
    domains: Vec<String>,
    layer_norm_eps: f64,
    /// `out_indices` of the backbone (hidden states: 0 is the embeddings, I block I-1's output).
    out_indices: Option<[usize; 4]>,
    temperature: (f64, f64),
    router_heads: usize,
}

impl HfConfig {
    fn read(json: Option<&Json>) -> Result<Self, String> {
        let get = |name: &str| json.and_then(|j| j.get(name));
        let backbone = get("backbone_config");
        let text = |name: &str, default: &str, want: &str| -> Result<(), String> {
            let v = get(name).and_then(Json::as_str).unwrap_or(default);
            if v == want {
                Ok(())
            } else {
                Err(format!("{name} '{v}': only '{want}' is supported"))
            }
        };
        text("bin_centers_type", "softplus", "softplus")?;
        text("attractor_kind", "mean", "mean")?;
        text("readout_type", "project", "project")?;
        let domains = match get("bin_configurations").and_then(Json::as_array) {
            None => DOMAINS.map(String::from).to_vec(),
            Some(confs) => confs
                .iter()
                .map(|c| c.get("name").and_then(Json::as_str).map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or("bin_configurations without names (a single-domain ZoeDepth?)")?,
        };
        if domains.len() < 2 {
            return Err(format!(
                "{} bin configurations: only the multi-domain ZoeDepth (nyu, kitti) is supported",
                domains.len()
            ));
        }
        let out_indices = match backbone.and_then(|b| b.get("out_indices")) {
            None => None,
            Some(v) => {
                let read: Vec<usize> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
                            .collect()
                    })
                    .unwrap_or_default();
                match read.as_slice() {
                    [a, b, c, d] if 0 < *a && a < b && b < c && c < d => Some([*a, *b, *c, *d]),
                    _ => return Err(format!("backbone out_indices {v}: four stages expected")),
                }
            }
        };
        let float = |j: Option<&Json>, name: &str, default: f64| {
            j.and_then(|j| j.get(name))
                .and_then(Json::as_f64)
                .unwrap_or(default)
        };
        let heads = json
            .and_then(|j| usize_field(j, "patch_transformer_num_attention_heads"))
            .unwrap_or(4);
        Ok(HfConfig {
            domains,
            layer_norm_eps: float(backbone, "layer_norm_eps", 1e-12),
            out_indices,
            temperature: (
                float(json, "min_temp", 0.0212),
                float(json, "max_temp", 50.0),
            ),
            router_heads: heads,
        })
    }
}

/// `preprocessor_config.json`'s processor (the published one where there is none) and rescale
/// factor.
fn processor(json: Option<&Json>) -> Result<(Processor, f32), String> {
    let get = |name: &str| json.and_then(|j| j.get(name));
    let flag = |name: &str, default: bool| get(name).and_then(Json::as_bool).unwrap_or(default);
    if !flag("do_resize", true) || !flag("do_rescale", true) || !flag("do_normalize", true) {
        return Err("a processor that does not resize, rescale and normalise".into());
    }
    let size = match get("size") {
        None => (384, 512),
        Some(size) => match (usize_field(size, "height"), usize_field(size, "width")) {
            (Some(h), Some(w)) if h > 0 && w > 0 => (h, w),
            _ => return Err(format!("processor size {size}")),
        },
    };
    // fractional or other multiples would give odd token grids, where transformers' fusion
    // resizes differently
    let multiple = get("ensure_multiple_of")
        .and_then(Json::as_f64)
        .unwrap_or(32.0);
    if multiple < 32.0 || multiple.fract() != 0.0 || !(multiple as usize).is_multiple_of(32) {
        return Err(format!(
            "ensure_multiple_of {multiple}: a multiple of 32 expected"
        ));
    }
    let resample = get("resample").and_then(Json::as_u64).unwrap_or(2);
    if resample != 2 {
        return Err(format!(
            "resample {resample}: only 2 (bilinear) is supported"
        ));
    }
    let triple = |name: &str| -> Result<[f32; 3], String> {
        let vals: Vec<f64> = match get(name) {
            None => vec![0.5; 3],
            Some(Json::Array(a)) => a.iter().filter_map(Json::as_f64).collect(),
            Some(other) => other.as_f64().map(|x| vec![x; 3]).unwrap_or_default(),
        };
        match vals.as_slice() {
            [a, b, c] => Ok([*a as f32, *b as f32, *c as f32]),
            _ => Err(format!("{name}: three values expected")),
        }
    };
    let rescale = get("rescale_factor")
        .and_then(Json::as_f64)
        .unwrap_or(1.0 / 255.0) as f32;
    Ok((
        Processor {
            size,
            multiple: multiple as usize,
            keep_aspect_ratio: flag("keep_aspect_ratio", true),
            pad: flag("do_pad", true),
            mean: triple("image_mean")?,
            std: triple("image_std")?,
        },
        rescale,
    ))
}

/// The net's configuration from the renamed shapes and `config.json`'s values.
fn net_config(shapes: &HashMap<String, Vec<usize>>, hf: &HfConfig) -> Result<Config, String> {
    let mut config = Config::detect_core(shapes)?;
    config.beit.layer_norm_eps = hf.layer_norm_eps;
    if let Some(indices) = hf.out_indices {
        if indices[3] > config.beit.depth {
            return Err(format!(
                "out_indices {indices:?} past the backbone's {} layers",
                config.beit.depth
            ));
        }
        config.beit.hooks = indices.map(|i| i - 1);
    }
    config.heads = (0..hf.domains.len())
        .map(|d| {
            BinsConfig::detect(
                shapes,
                &format!("bins.{d}."),
                config.head_hidden,
                config.embedding,
            )
            .map_err(|e| format!("domain '{}': {e}", hf.domains[d]))
        })
        .collect::<Result<_, _>>()?;
    let router = RouterConfig::detect(shapes, hf.router_heads)?;
    if router.domains != hf.domains.len() || router.input != config.features {
        return Err(format!(
            "a domain classifier of {} logits from {} channels for {} domains of {} channels",
            router.domains,
            router.input,
            hf.domains.len(),
            config.features
        ));
    }
    config.router = Some(router);
    config.temperature = hf.temperature;
    Ok(config)
}

/// Loads transformers' `ZoeDepthForDepthEstimation` (two or more bin configurations), its JSON
/// files beside it, to run as today's pack's pipeline.
pub fn load(sd: &Arc<StateDict>, device: &Device) -> Result<Zoe, LoadError> {
    let bad = |e: String| LoadError::new(sd.path(), LoadErrorKind::BadConfig(e));
    if !sd.shapes().contains_key(CLASSIFIER) {
        return Err(bad(
            "no domain classifier: only the multi-domain ZoeDepth (Intel/zoedepth-nyu-kitti) is \
             supported"
                .into(),
        ));
    }
    let json = sibling_json(sd.path(), "config.json").map_err(bad)?;
    let hf = HfConfig::read(json.as_ref()).map_err(bad)?;
    let mut map = names(sd.shapes(), &hf.domains);
    let shapes: HashMap<String, Vec<usize>> = map
        .iter()
        .map(|(k, (_, s))| (k.clone(), s.clone()))
        .collect();
    let config = net_config(&shapes, &hf).map_err(bad)?;
    let pre = sibling_json(sd.path(), "preprocessor_config.json").map_err(bad)?;
    let (processor, rescale) = processor(pre.as_ref()).map_err(bad)?;
    let names = map.drain().map(|(k, (source, _))| (k, source)).collect();
    Renaming::with_context(names, ())
        .build(sd, DType::F32, device, |vb| Zoe::new(vb, &config))
        .map(|z| z.with_call(Call::Pipeline { processor, rescale }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_onto_the_pt_layout() {
        let domains = DOMAINS.map(String::from);
        for (hf, pt) in [
            (
                "backbone.encoder.layer.3.attention.attention.relative_position_bias.relative_position_bias_table",
                "core.core.pretrained.model.blocks.3.attn.relative_position_bias_table",
            ),
            (
                "backbone.encoder.layer.0.lambda_2",
                "core.core.pretrained.model.blocks.0.gamma_2",
            ),
            (
                "neck.reassemble_stage.layers.3.resize.weight",
                "core.core.pretrained.act_postprocess4.4.weight",
            ),
            (
                "neck.fusion_stage.layers.1.residual_layer1.convolution2.bias",
                "core.core.scratch.refinenet3.resConfUnit1.conv2.bias",
            ),
            ("relative_head.conv3.weight", "core.core.scratch.output_conv.4.weight"),
            (
                "metric_head.attractors.kitti.2.conv1.weight",
                "bins.1.attractors.2._net.0.weight",
            ),
            (
                "metric_head.conditional_log_binomial.nyu.mlp.2.bias",
                "bins.0.conditional_log_binomial.mlp.2.bias",
            ),
            (
                "metric_head.patch_transformer.transformer_encoder.3.self_attn.out_proj.weight",
                "router.patch_transformer.transformer_encoder.3.self_attn.out_proj.weight",
            ),
        ] {
            assert_eq!(published(hf, &domains).as_deref(), Some(pt), "{hf}");
        }
        for unused in [
            "backbone.encoder.layer.0.attention.attention.query.weight",
            "metric_head.seed_bin_regressors.eth3d.conv1.weight",
        ] {
            assert_eq!(published(unused, &domains), None, "{unused}");
        }
    }

    #[test]
    fn the_processor_defaults_to_the_published_one() {
        let (p, rescale) = processor(None).unwrap();
        assert_eq!(
            (p.size, p.multiple, p.pad, p.keep_aspect_ratio),
            ((384, 512), 32, true, true)
        );
        assert_eq!((p.mean, p.std, rescale), ([0.5; 3], [0.5; 3], 1.0 / 255.0));
        let json = serde_json::json!({"size": {"height": 192, "width": 256}, "do_pad": false});
        let (p, _) = processor(Some(&json)).unwrap();
        assert_eq!((p.size, p.pad), ((192, 256), false));
        assert!(processor(Some(&serde_json::json!({"resample": 3}))).is_err());
        assert!(processor(Some(&serde_json::json!({"ensure_multiple_of": 14}))).is_err());
    }

    #[test]
    fn the_config_reads_domains_and_backbone() {
        let hf = HfConfig::read(None).unwrap();
        assert_eq!(hf.domains, ["nyu", "kitti"]);
        assert_eq!((hf.layer_norm_eps, hf.router_heads), (1e-12, 4));
        let json = serde_json::json!({
            "backbone_config": {"out_indices": [6, 12, 18, 24], "layer_norm_eps": 1e-6},
            "bin_configurations": [{"name": "kitti"}, {"name": "nyu"}],
            "patch_transformer_num_attention_heads": 2,
        });
        let hf = HfConfig::read(Some(&json)).unwrap();
        assert_eq!(hf.domains, ["kitti", "nyu"]);
        assert_eq!(hf.out_indices, Some([6, 12, 18, 24]));
        assert_eq!((hf.layer_norm_eps, hf.router_heads), (1e-6, 2));
        let normed = serde_json::json!({"bin_centers_type": "normed"});
        assert!(HfConfig::read(Some(&normed)).is_err());
    }
}
