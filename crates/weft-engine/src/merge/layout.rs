//! Weft's weight names back to the layouts ComfyUI saves (`comfy/sd.py save_checkpoint`, the
//! models' `state_dict_for_saving` and `process_*_state_dict_for_saving`, CLIPSave, VAESave):
//!
//! - the UNet under `model.diffusion_model.` with LDM names, `v_pred` marking v-prediction;
//! - the VAE under `first_stage_model.` with LDM names (attention projections as 1x1 convs);
//! - the text encoders: SD1's CLIP-L under `cond_stage_model.transformer.` (HF names), SD2's
//!   OpenCLIP-H under `cond_stage_model.model.` (OpenCLIP names), SDXL's CLIP-L under
//!   `conditioner.embedders.0.transformer.` and bigG under `conditioner.embedders.1.model.`, the
//!   refiner's bigG under `conditioner.embedders.0.model.`.
//!
//! Every map here shares its tensors with the model, except those a layout changes (OpenCLIP's
//! concatenated q/k/v, the transposed text projection).

use std::collections::{BTreeMap, HashMap, HashSet};

use candle_core::{DType, Device, Tensor};

use crate::clip::encode::TextEncoderKind;
use crate::load::checkpoint::{UNET_PREFIX, VAE_PREFIX};
use crate::load::keymap::{unet_ldm_to_diffusers, vae_diffusers_to_ldm, vae_ldm_to_diffusers};
use crate::lora::keys::unet_diffusers_to_ldm;

/// A CLIP's text models as Weft keeps them: HF-named weights of CLIP-L and of OpenCLIP H or
/// bigG.
#[derive(Debug, Clone, Copy)]
pub struct ClipWeights<'a> {
    /// Which encoders the CLIP combines.
    pub kind: TextEncoderKind,
    /// CLIP-L's weights (SD1, SDXL).
    pub l: Option<&'a HashMap<String, Tensor>>,
    /// OpenCLIP-H's (SD2) or bigG's (SDXL, refiner) weights.
    pub g: Option<&'a HashMap<String, Tensor>>,
}

/// What a checkpoint is saved from.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointParts<'a> {
    /// The UNet's diffusers-named weights.
    pub unet: &'a HashMap<String, Tensor>,
    /// The UNet's resnets per level (2 for every SD model).
    pub layers_per_block: usize,
    /// Whether the model predicts v (adds the `v_pred` marker).
    pub v_prediction: bool,
    /// The text encoders.
    pub clip: Option<ClipWeights<'a>>,
    /// The VAE's diffusers-named weights and its number of levels.
    pub vae: Option<(&'a HashMap<String, Tensor>, usize)>,
}

/// Diffusers name -> LDM name (without `diffusion_model.`) for every UNet weight; an error names
/// a weight without one. Each name is checked to map back through the loader's own map.
pub fn unet_ldm_names(
    weights: &HashMap<String, Tensor>,
    layers_per_block: usize,
) -> Result<HashMap<String, String>, String> {
    let with_attention: HashSet<usize> = weights
        .keys()
        .filter_map(|k| {
            let (i, rest) = k.strip_prefix("up_blocks.")?.split_once('.')?;
            rest.starts_with("attentions.").then(|| i.parse().ok())?
        })
        .collect();
    let up_has_attention = |i: usize| with_attention.contains(&i);
    weights
        .keys()
        .map(|key| {
            unet_diffusers_to_ldm(key, layers_per_block, &up_has_attention)
                .filter(|ldm| unet_ldm_to_diffusers(ldm, layers_per_block).as_deref() == Some(key))
                .map(|ldm| (key.clone(), ldm))
                .ok_or_else(|| format!("the unet weight '{key}' has no LDM name"))
        })
        .collect()
}

/// The VAE's weights with LDM names (VAESave's layout, and the checkpoint's without its prefix).
pub fn vae_ldm(
    weights: &HashMap<String, Tensor>,
    levels: usize,
) -> Result<BTreeMap<String, Tensor>, String> {
    weights
        .iter()
        .map(|(key, tensor)| {
            let ldm = vae_diffusers_to_ldm(key, levels)
                .filter(|ldm| vae_ldm_to_diffusers(ldm, levels).as_deref() == Some(key))
                .ok_or_else(|| format!("the vae weight '{key}' has no LDM name"))?;
            // The mid-block attention is linear in Weft and 1x1 convs in LDM files.
            let tensor = if ldm.contains(".mid.attn_1.") && tensor.rank() == 2 {
                let (o, i) = tensor.dims2().map_err(|e| e.to_string())?;
                tensor.reshape((o, i, 1, 1)).map_err(|e| e.to_string())?
            } else {
                tensor.clone()
            };
            Ok((ldm, tensor))
        })
        .collect()
}

/// A checkpoint's tensors in ComfyUI's layout. As ComfyUI does, the text encoders and the VAE are
/// stored in f16 when the UNet is.
pub fn checkpoint_tensors(parts: &CheckpointParts<'_>) -> Result<BTreeMap<String, Tensor>, String> {
    let mut out = BTreeMap::new();
    let names = unet_ldm_names(parts.unet, parts.layers_per_block)?;
    for (key, tensor) in parts.unet {
        out.insert(format!("{UNET_PREFIX}{}", names[key]), tensor.clone());
    }
    let mut extras = BTreeMap::new();
    if let Some(clip) = &parts.clip {
        extras.extend(checkpoint_clip(clip)?);
    }
    if let Some((vae, levels)) = parts.vae {
        for (key, tensor) in vae_ldm(vae, levels)? {
            extras.insert(format!("{VAE_PREFIX}{key}"), tensor);
        }
    }
    let half = parts.unet.values().next().map(Tensor::dtype) == Some(DType::F16);
    for (key, tensor) in extras {
        let tensor = if half && tensor.dtype().is_float() {
            tensor.to_dtype(DType::F16).map_err(|e| e.to_string())?
        } else {
            tensor
        };
        out.insert(key, tensor);
    }
    if parts.v_prediction {
        out.insert("v_pred".into(), empty_marker()?);
    }
    Ok(out)
}

/// The text encoders under their checkpoint prefixes.
fn checkpoint_clip(clip: &ClipWeights<'_>) -> Result<BTreeMap<String, Tensor>, String> {
    let missing = |which: &str| format!("the text encoder has no {which} weights to save");
    let mut out = BTreeMap::new();
    let mut put = |prefix: &str, tensors: BTreeMap<String, Tensor>| {
        out.extend(
            tensors
                .into_iter()
                .map(|(k, t)| (format!("{prefix}{k}"), t)),
        );
    };
    match clip.kind {
        TextEncoderKind::Sd1 => put(
            "cond_stage_model.transformer.",
            clip_l_layout(clip.l.ok_or_else(|| missing("CLIP-L"))?),
        ),
        TextEncoderKind::Sd2 => put(
            "cond_stage_model.model.",
            hf_to_openclip(clip.g.ok_or_else(|| missing("OpenCLIP-H"))?)?,
        ),
        TextEncoderKind::Sdxl => {
            let mut l = clip_l_layout(clip.l.ok_or_else(|| missing("CLIP-L"))?);
            // ComfyUI writes the position ids SDXL's CLIP-L had in the original files.
            let ids = Tensor::arange(0i64, 77, &Device::Cpu)
                .and_then(|t| t.reshape((1, 77)))
                .map_err(|e| e.to_string())?;
            l.insert("text_model.embeddings.position_ids".into(), ids);
            put("conditioner.embedders.0.transformer.", l);
            put(
                "conditioner.embedders.1.model.",
                hf_to_openclip(clip.g.ok_or_else(|| missing("OpenCLIP-bigG"))?)?,
            );
        }
        TextEncoderKind::SdxlRefiner => put(
            "conditioner.embedders.0.model.",
            hf_to_openclip(clip.g.ok_or_else(|| missing("OpenCLIP-bigG"))?)?,
        ),
    }
    Ok(out)
}

/// CLIP-L as checkpoints hold it: HF names without the text projection (ComfyUI drops it).
fn clip_l_layout(weights: &HashMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    weights
        .iter()
        .filter(|(k, _)| k.as_str() != "text_projection.weight")
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect()
}

/// CLIPSave's files: (file name suffix, tensors) per text model, HF names throughout (ComfyUI
/// strips the `clip_x.` and `transformer.` prefixes). ComfyUI names its SD2 file without a suffix
/// and leaves its keys under `clip_h.transformer.`, which no loader reads back; Weft writes the
/// same file name with the plain HF names.
pub fn clip_save_files(
    clip: &ClipWeights<'_>,
) -> Vec<(Option<&'static str>, BTreeMap<String, Tensor>)> {
    let all = |w: &HashMap<String, Tensor>| -> BTreeMap<String, Tensor> {
        w.iter().map(|(k, t)| (k.clone(), t.clone())).collect()
    };
    let mut files = Vec::new();
    if let Some(l) = clip.l {
        files.push((Some("clip_l"), all(l)));
    }
    if let Some(g) = clip.g {
        let suffix = (clip.kind != TextEncoderKind::Sd2).then_some("clip_g");
        files.push((suffix, all(g)));
    }
    files
}

/// HF CLIP names to OpenCLIP's text-tower names (ComfyUI's `convert_text_enc_state_dict_v20`,
/// the inverse of [`crate::clip::convert::openclip_to_hf`]): q, k and v concatenated into
/// `in_proj`, the text projection transposed back to `[width, projection]`.
pub fn hf_to_openclip(
    weights: &HashMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, String> {
    let mut out = BTreeMap::new();
    let mut qkv: BTreeMap<(String, &str), [Option<Tensor>; 3]> = BTreeMap::new();
    for (key, tensor) in weights {
        let renamed = match key.as_str() {
            "text_model.embeddings.token_embedding.weight" => "token_embedding.weight".to_string(),
            "text_model.embeddings.position_embedding.weight" => "positional_embedding".to_string(),
            "text_projection.weight" => {
                let t = tensor
                    .t()
                    .and_then(|t| t.contiguous())
                    .map_err(|e| e.to_string())?;
                out.insert("text_projection".to_string(), t);
                continue;
            }
            _ => {
                if let Some(leaf) = key.strip_prefix("text_model.final_layer_norm.") {
                    format!("ln_final.{leaf}")
                } else if let Some(rest) = key.strip_prefix("text_model.encoder.layers.") {
                    let (index, leaf) = rest
                        .split_once('.')
                        .ok_or_else(|| format!("text encoder weight '{key}' has no layer name"))?;
                    let block = format!("transformer.resblocks.{index}");
                    if let Some((which, param)) = leaf
                        .strip_prefix("self_attn.")
                        .and_then(|l| l.split_once("_proj."))
                        .filter(|(w, _)| ["q", "k", "v"].contains(w))
                    {
                        let slot = match which {
                            "q" => 0,
                            "k" => 1,
                            _ => 2,
                        };
                        let param = if param == "weight" { "weight" } else { "bias" };
                        qkv.entry((block, param)).or_default()[slot] = Some(tensor.clone());
                        continue;
                    }
                    let mapped = [
                        ("self_attn.out_proj.", "attn.out_proj."),
                        ("layer_norm1.", "ln_1."),
                        ("layer_norm2.", "ln_2."),
                        ("mlp.fc1.", "mlp.c_fc."),
                        ("mlp.fc2.", "mlp.c_proj."),
                    ]
                    .iter()
                    .find_map(|(from, to)| leaf.strip_prefix(from).map(|p| format!("{to}{p}")))
                    .ok_or_else(|| format!("text encoder weight '{key}' has no OpenCLIP name"))?;
                    format!("{block}.{mapped}")
                } else {
                    return Err(format!("text encoder weight '{key}' has no OpenCLIP name"));
                }
            }
        };
        out.insert(renamed, tensor.clone());
    }
    for ((block, param), parts) in qkv {
        let [Some(q), Some(k), Some(v)] = parts else {
            return Err(format!(
                "{block}: q, k and v projections must all be present"
            ));
        };
        let joined = Tensor::cat(&[q, k, v], 0).map_err(|e| e.to_string())?;
        out.insert(format!("{block}.attn.in_proj_{param}"), joined);
    }
    Ok(out)
}

/// ComfyUI's `torch.tensor([])` marker.
fn empty_marker() -> Result<Tensor, String> {
    Tensor::zeros(0, DType::F32, &Device::Cpu).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::convert::openclip_to_hf;

    fn t(dims: &[usize], start: f32) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::arange(start, start + n as f32, &Device::Cpu)
            .unwrap()
            .reshape(dims)
            .unwrap()
    }

    #[test]
    fn openclip_names_round_trip() {
        let mut hf = HashMap::new();
        hf.insert(
            "text_model.embeddings.token_embedding.weight".to_string(),
            t(&[5, 4], 0.0),
        );
        hf.insert(
            "text_model.embeddings.position_embedding.weight".to_string(),
            t(&[3, 4], 1.0),
        );
        hf.insert(
            "text_model.final_layer_norm.weight".to_string(),
            t(&[4], 2.0),
        );
        hf.insert("text_projection.weight".to_string(), t(&[2, 4], 3.0));
        for (i, name) in ["q_proj", "k_proj", "v_proj", "out_proj"]
            .iter()
            .enumerate()
        {
            let layer = format!("text_model.encoder.layers.0.self_attn.{name}");
            hf.insert(format!("{layer}.weight"), t(&[4, 4], 10.0 * i as f32));
            hf.insert(format!("{layer}.bias"), t(&[4], 7.0 * i as f32));
        }
        hf.insert(
            "text_model.encoder.layers.0.mlp.fc1.weight".to_string(),
            t(&[8, 4], 5.0),
        );
        let open = hf_to_openclip(&hf).unwrap();
        assert_eq!(
            open["transformer.resblocks.0.attn.in_proj_weight"].dims(),
            &[12, 4]
        );
        assert_eq!(open["text_projection"].dims(), &[4, 2]);
        let open: HashMap<String, Tensor> = open.into_iter().collect();
        let back = openclip_to_hf(&open).unwrap();
        assert_eq!(back.len(), hf.len());
        for (k, v) in &hf {
            let got = back[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                got,
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{k}"
            );
        }
    }

    #[test]
    fn vae_names_round_trip_with_conv_attention() {
        let ldm = [
            "encoder.down.0.block.1.nin_shortcut.weight",
            "encoder.down.1.downsample.conv.bias",
            "encoder.mid.block_2.norm1.weight",
            "encoder.norm_out.bias",
            "decoder.up.3.block.0.conv1.weight",
            "decoder.up.1.upsample.conv.weight",
            "quant_conv.weight",
            "decoder.conv_in.weight",
        ];
        let mut weights: HashMap<String, Tensor> = ldm
            .iter()
            .map(|k| (vae_ldm_to_diffusers(k, 4).unwrap(), t(&[2], 0.0)))
            .collect();
        weights.insert(
            "decoder.mid_block.attentions.0.to_q.weight".into(),
            t(&[2, 2], 0.0),
        );
        let out = vae_ldm(&weights, 4).unwrap();
        for k in ldm {
            assert!(out.contains_key(k), "{k}");
        }
        assert_eq!(out["decoder.mid.attn_1.q.weight"].dims(), &[2, 2, 1, 1]);
    }
}
