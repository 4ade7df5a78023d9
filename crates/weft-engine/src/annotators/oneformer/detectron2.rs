//! The original detectron2 checkpoints (`250_16_swin_l_oneformer_ade20k_160k.pth`,
//! `150_16_swin_l_oneformer_coco_100ep.pth`: SHI-Labs' OneFormer, which comfyui_controlnet_aux
//! read before it moved to transformers and whose names it still maps to the transformers
//! folders), read under transformers' names as its `convert_to_hf_oneformer.py` renames them: the
//! same tensors, Swin's `attn.qkv` and the decoder self-attention's `in_proj` left joined (the
//! nets read them either way). The text encoder and the training-only tensors are left out. No
//! processor file comes with them: the one the conversion wrote from the detectron2 configs
//! (`MIN_SIZE_TEST` / `MAX_SIZE_TEST`: 640 / 2560 for ADE20K's 150 classes, 800 / 1333 for
//! COCO's 133; ImageNet's mean and std; bilinear).

use std::collections::HashMap;

use super::{Processor, Size};
use crate::annotators::Shapes;
use crate::preprocess::resample::Filter;

/// A tensor only the detectron2 layout has.
pub const PROBE: &str = "sem_seg_head.predictor.class_embed.weight";

/// Whether the tensors are the detectron2 layout.
pub fn is_detectron2(shapes: &Shapes) -> bool {
    shapes.contains_key(PROBE) && shapes.contains_key("backbone.patch_embed.proj.weight")
}

/// transformers' name (in the published folders' layout) of a detectron2 key, `None` for those
/// the semantic net does not read.
pub fn hf_name(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let rest = |r: &[&str]| r.join(".");
    let swin = "model.pixel_level_module.encoder";
    let pixel = "model.pixel_level_module.decoder";
    let module = "model.transformer_module";
    let decoder = "model.transformer_module.decoder";
    Some(match parts.as_slice() {
        ["backbone", "patch_embed", "proj", p] => {
            format!("{swin}.embeddings.patch_embeddings.projection.{p}")
        }
        ["backbone", "patch_embed", "norm", p] => format!("{swin}.embeddings.norm.{p}"),
        ["backbone", "layers", s, "blocks", b, r @ ..] => {
            let local = match r {
                ["norm1", p] => format!("layernorm_before.{p}"),
                ["norm2", p] => format!("layernorm_after.{p}"),
                ["attn", "relative_position_bias_table"] => {
                    "attention.self.relative_position_bias_table".into()
                }
                ["attn", "qkv", p] => format!("attention.qkv.{p}"),
                ["attn", "proj", p] => format!("attention.output.dense.{p}"),
                ["mlp", "fc1", p] => format!("intermediate.dense.{p}"),
                ["mlp", "fc2", p] => format!("output.dense.{p}"),
                _ => return None,
            };
            format!("{swin}.encoder.layers.{s}.blocks.{b}.{local}")
        }
        ["backbone", "layers", s, "downsample", r @ ..] => {
            format!("{swin}.encoder.layers.{s}.downsample.{}", rest(r))
        }
        ["backbone", norm, p] => {
            let s: usize = norm.strip_prefix("norm")?.parse().ok()?;
            format!("{swin}.hidden_states_norms.stage{}.{p}", s + 1)
        }
        ["sem_seg_head", "pixel_decoder", r @ ..] => match r {
            [conv @ ("adapter_1" | "layer_1"), "weight"] => format!("{pixel}.{conv}.0.weight"),
            [conv @ ("adapter_1" | "layer_1"), "norm", p] => format!("{pixel}.{conv}.1.{p}"),
            ["input_proj", r @ ..] => format!("{pixel}.input_projections.{}", rest(r)),
            ["transformer", "level_embed"] => format!("{pixel}.level_embed"),
            ["transformer", "encoder", "layers", l, r @ ..] => {
                let local = match r {
                    ["linear1", p] => format!("fc1.{p}"),
                    ["linear2", p] => format!("fc2.{p}"),
                    ["norm1", p] => format!("self_attn_layer_norm.{p}"),
                    ["norm2", p] => format!("final_layer_norm.{p}"),
                    ["self_attn", ..] => rest(r),
                    _ => return None,
                };
                format!("{pixel}.encoder.layers.{l}.{local}")
            }
            ["mask_features", p] => format!("{pixel}.mask_projection.{p}"),
            _ => return None,
        },
        ["sem_seg_head", "predictor", r @ ..] => match r {
            ["query_embed", p] => format!("{module}.queries_embedder.{p}"),
            ["level_embed", p] => format!("{module}.level_embed.{p}"),
            ["decoder_norm", p] => format!("{decoder}.decoder_norm.{p}"),
            ["class_input_proj", p] => format!("{decoder}.query_input_projection.{p}"),
            ["class_embed", p] => format!("{decoder}.class_embed.{p}"),
            ["mask_embed", "layers", i, p] => format!("{decoder}.mask_embed.layers.{i}.0.{p}"),
            ["class_transformer", "decoder", r @ ..] => {
                format!("{decoder}.query_transformer.decoder.{}", rest(r))
            }
            ["transformer_cross_attention_layers", i, r @ ..] => {
                format!("{decoder}.layers.{i}.cross_attn.{}", rest(r))
            }
            ["transformer_self_attention_layers", i, r @ ..] => {
                format!("{decoder}.layers.{i}.self_attn.{}", rest(r))
            }
            ["transformer_ffn_layers", i, r @ ..] => {
                format!("{decoder}.layers.{i}.ffn.{}", rest(r))
            }
            _ => return None,
        },
        ["task_mlp", "layers", i, p] => format!("model.task_encoder.task_mlp.layers.{i}.0.{p}"),
        _ => return None,
    })
}

/// transformers' names -> the file's keys, and the shapes under transformers' names.
pub fn names(shapes: &Shapes) -> (HashMap<String, String>, Shapes) {
    let mut names = HashMap::new();
    let mut renamed = HashMap::new();
    for (key, shape) in shapes {
        if let Some(name) = hf_name(key) {
            names.insert(name.clone(), key.clone());
            renamed.insert(name, shape.clone());
        }
    }
    (names, renamed)
}

/// The processor the conversion wrote for a net of `classes` classes (with the null class).
pub fn processor(classes: usize) -> Processor {
    let (shortest, longest) = match classes {
        151 => (640, 2560),
        _ => (800, 1333),
    };
    // IMAGENET_DEFAULT_MEAN / _STD times 255 in f32, as `Processor::from_json(None)` gives
    let defaults = Processor::from_json(None).ok();
    let (mean, std) = defaults.map_or(([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]), |p| {
        (p.mean, p.std)
    });
    Processor {
        size: Size::Edges {
            shortest,
            longest: Some(longest),
        },
        filter: Filter::Bilinear,
        mean,
        std,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detectron2_names_map_as_the_conversion_does() {
        for (d2, hf) in [
            (
                "backbone.layers.2.blocks.17.attn.relative_position_bias_table",
                "model.pixel_level_module.encoder.encoder.layers.2.blocks.17.attention.self.relative_position_bias_table",
            ),
            (
                "backbone.layers.0.blocks.1.mlp.fc2.bias",
                "model.pixel_level_module.encoder.encoder.layers.0.blocks.1.output.dense.bias",
            ),
            ("backbone.norm3.weight", "model.pixel_level_module.encoder.hidden_states_norms.stage4.weight"),
            (
                "sem_seg_head.pixel_decoder.adapter_1.norm.bias",
                "model.pixel_level_module.decoder.adapter_1.1.bias",
            ),
            (
                "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.linear2.weight",
                "model.pixel_level_module.decoder.encoder.layers.5.fc2.weight",
            ),
            (
                "sem_seg_head.pixel_decoder.mask_features.weight",
                "model.pixel_level_module.decoder.mask_projection.weight",
            ),
            (
                "sem_seg_head.predictor.mask_embed.layers.2.bias",
                "model.transformer_module.decoder.mask_embed.layers.2.0.bias",
            ),
            (
                "sem_seg_head.predictor.transformer_self_attention_layers.8.self_attn.in_proj_weight",
                "model.transformer_module.decoder.layers.8.self_attn.self_attn.in_proj_weight",
            ),
            ("task_mlp.layers.1.weight", "model.task_encoder.task_mlp.layers.1.0.weight"),
        ] {
            assert_eq!(hf_name(d2).as_deref(), Some(hf), "{d2}");
        }
        for unused in [
            "text_encoder.transformer.resblocks.0.attn.in_proj_weight",
            "prompt_ctx.weight",
            "backbone.layers.0.blocks.0.attn.relative_position_index",
            "criterion.empty_weight",
        ] {
            assert_eq!(hf_name(unused), None, "{unused}");
        }
    }
}
