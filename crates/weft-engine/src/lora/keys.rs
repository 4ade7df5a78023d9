//! LoRA module names -> canonical weight names, as ComfyUI's `model_lora_keys_unet` and
//! `model_lora_keys_clip` build them, but from Weft's canonical names: diffusers for the UNet, HF
//! transformers for the text encoders.
//!
//! UNet module names accepted for a diffusers weight `k` (without `.weight`), with its LDM name
//! `l` from the LDM <-> diffusers key map:
//! - kohya: `lora_unet_<l with . -> _>` (SDXL trainers) and `lora_unet_<k with . -> _>` (SD1
//!   trainers);
//! - `lycoris_<k with . -> _>` (SimpleTuner);
//! - diffusers attention processors: `k` and `unet.k` with `.to_` -> `.processor.to_` and
//!   `to_out.0` -> `to_out`;
//! - generic: `diffusion_model.<l>`, and `diffusion_model.<l full key>` for non-`.weight` tensors.
//!
//! One deliberate extension over ComfyUI: plain diffusers/PEFT names `k` and `unet.k` (what
//! diffusers' own `save_lora_weights` writes for attention layers) are accepted too; ComfyUI only
//! knows the `.processor.` spelling for those.
//!
//! Text encoders (HF key `text_model.encoder.layers.N.<m>.weight`, `m` one of the six LoRA
//! targets): `lora_te_`, `lora_te1_`, `lora_te2_` (SDXL bigG), `lora_prior_te_` (refiner) with
//! `text_model_encoder_layers_N_<m with . -> _>`; diffusers `text_encoder.` / `text_encoder_2.`
//! with the dotted key; generic `text_encoders.<clip_l|clip_g|clip_h>.transformer.<key>`.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::load::keymap::unet_ldm_to_diffusers;

/// A model part a LoRA can patch, each with its own canonical weight map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The diffusion UNet (diffusers names).
    Unet,
    /// CLIP ViT-L (SD1.x, SDXL's first encoder).
    ClipL,
    /// OpenCLIP bigG (SDXL's second encoder, the refiner's only one).
    ClipG,
    /// OpenCLIP ViT-H (SD2.x).
    ClipH,
}

impl Component {
    /// ComfyUI's name for it (`clip_l`, ...), used in generic `text_encoders.` keys.
    pub fn comfy_name(self) -> &'static str {
        match self {
            Component::Unet => "diffusion_model",
            Component::ClipL => "clip_l",
            Component::ClipG => "clip_g",
            Component::ClipH => "clip_h",
        }
    }
}

/// The UNet's canonical (diffusers) weights and the resnets per down level, which the LDM names
/// depend on.
#[derive(Debug, Clone, Copy)]
pub struct UnetWeights<'a> {
    /// The UNet's weights by diffusers name.
    pub weights: &'a HashMap<String, Tensor>,
    /// Resnets per down block (diffusers' `layers_per_block`: 2 for SD1.x/SD2.x/SDXL).
    pub layers_per_block: usize,
}

/// The text encoders of the model, by family: the family decides which kohya prefix goes where
/// (`lora_te_` is CLIP-L on SD1/SDXL, ViT-H on SD2, bigG on the refiner).
#[derive(Debug, Clone, Copy)]
pub enum TextEncoderWeights<'a> {
    /// No text encoder loaded: text encoder modules are skipped.
    None,
    /// SD1.x: `lora_te_`/`lora_te1_` are CLIP-L.
    Sd1 {
        /// CLIP ViT-L weights by HF transformers name.
        clip_l: &'a HashMap<String, Tensor>,
    },
    /// SD2.x: `lora_te_`/`lora_te1_` are OpenCLIP ViT-H.
    Sd2 {
        /// OpenCLIP ViT-H weights by HF transformers name.
        clip_h: &'a HashMap<String, Tensor>,
    },
    /// SDXL base: `lora_te_`/`lora_te1_` are CLIP-L, `lora_te2_` bigG.
    Sdxl {
        /// CLIP ViT-L weights by HF transformers name.
        clip_l: &'a HashMap<String, Tensor>,
        /// OpenCLIP bigG weights by HF transformers name.
        clip_g: &'a HashMap<String, Tensor>,
    },
    /// The SDXL refiner: `lora_te_`/`lora_prior_te_` are its only encoder, bigG.
    SdxlRefiner {
        /// OpenCLIP bigG weights by HF transformers name.
        clip_g: &'a HashMap<String, Tensor>,
    },
}

/// Where a LoRA module writes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub component: Component,
    /// Canonical weight name in the component's map.
    pub key: String,
    pub shape: Vec<usize>,
    /// The matching bias (`diff_b`, `b_norm`), when the layer has one.
    pub bias: Option<(String, Vec<usize>)>,
}

/// LoRA module name -> canonical target, for one model.
#[derive(Debug, Clone, Default)]
pub struct KeyMap {
    targets: HashMap<String, Target>,
    components: Vec<Component>,
    unet_context: Option<usize>,
}

/// The CLIP modules LoRAs train, and their kohya spelling (ComfyUI's `LORA_CLIP_MAP`).
const LORA_CLIP_MAP: [(&str, &str); 6] = [
    ("mlp.fc1", "mlp_fc1"),
    ("mlp.fc2", "mlp_fc2"),
    ("self_attn.k_proj", "self_attn_k_proj"),
    ("self_attn.q_proj", "self_attn_q_proj"),
    ("self_attn.v_proj", "self_attn_v_proj"),
    ("self_attn.out_proj", "self_attn_out_proj"),
];

/// ComfyUI only looks at the first 32 text encoder layers (bigG has exactly 32).
const MAX_CLIP_LAYERS: usize = 32;

impl KeyMap {
    /// Builds the map for a model made of `unet` (if loaded) and `text_encoders`.
    pub fn new(unet: Option<UnetWeights<'_>>, text_encoders: TextEncoderWeights<'_>) -> Self {
        let mut map = Self::default();
        if let Some(unet) = unet {
            map.add_unet(unet);
        }
        map.add_text_encoders(text_encoders);
        map
    }

    /// The number of module names known.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether no module name is known (no component loaded).
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The canonical target of a LoRA module name, if any.
    pub fn target_of(&self, module: &str) -> Option<(Component, &str)> {
        self.targets
            .get(module)
            .map(|t| (t.component, t.key.as_str()))
    }

    /// Every module name with its target, sorted by module name.
    pub fn entries(&self) -> Vec<(&str, Component, &str)> {
        let mut v: Vec<_> = self
            .targets
            .iter()
            .map(|(m, t)| (m.as_str(), t.component, t.key.as_str()))
            .collect();
        v.sort();
        v
    }

    /// The components this map covers.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Width of the UNet's cross-attention context (`attn2.to_k` input), if a UNet is loaded.
    pub fn unet_context(&self) -> Option<usize> {
        self.unet_context
    }

    pub(crate) fn target(&self, module: &str) -> Option<&Target> {
        self.targets.get(module)
    }

    fn insert(&mut self, module: String, target: Target) {
        self.targets.insert(module, target);
    }

    fn add_unet(&mut self, unet: UnetWeights<'_>) {
        self.components.push(Component::Unet);
        let weights = unet.weights;
        let lpb = unet.layers_per_block;
        // Which up levels have attention decides the upsampler's LDM index.
        let up_has_attention = |level: usize| {
            let prefix = format!("up_blocks.{level}.attentions.");
            weights.keys().any(|k| k.starts_with(&prefix))
        };
        let mut keys: Vec<&String> = weights.keys().collect();
        keys.sort();
        for key in keys {
            let Some(tensor) = weights.get(key) else {
                continue;
            };
            let shape = tensor.dims().to_vec();
            if key.ends_with("attn2.to_k.weight") && shape.len() == 2 {
                self.unet_context = Some(shape[1]);
            }
            let target = Target {
                component: Component::Unet,
                key: key.clone(),
                shape,
                bias: bias_of(key, weights),
            };
            // The LDM name, kept only when the loader's own LDM -> diffusers map gives the key
            // back, so both directions agree by construction.
            let ldm = unet_diffusers_to_ldm(key, lpb, &up_has_attention)
                .filter(|l| unet_ldm_to_diffusers(l, lpb).as_deref() == Some(key.as_str()));
            let Some(base) = key.strip_suffix(".weight") else {
                if let Some(ldm) = ldm {
                    self.insert(format!("diffusion_model.{ldm}"), target);
                }
                continue;
            };
            if let Some(ldm_base) = ldm.as_deref().and_then(|l| l.strip_suffix(".weight")) {
                self.insert(
                    format!("lora_unet_{}", ldm_base.replace('.', "_")),
                    target.clone(),
                );
                self.insert(format!("diffusion_model.{ldm_base}"), target.clone());
            }
            let mut diffusers_names = vec![base.to_string()];
            // ComfyUI's `unet_to_diffusers` also names SDXL's label embedding `class_embedding`.
            if let Some(rest) = base.strip_prefix("add_embedding.") {
                diffusers_names.push(format!("class_embedding.{rest}"));
            }
            for name in diffusers_names {
                let underscored = name.replace('.', "_");
                self.insert(format!("lora_unet_{underscored}"), target.clone());
                self.insert(format!("lycoris_{underscored}"), target.clone());
                let mut processor = name.replace(".to_", ".processor.to_");
                if processor.ends_with(".to_out.0") {
                    processor.truncate(processor.len() - 2);
                }
                for module in [
                    processor.clone(),
                    format!("unet.{processor}"),
                    name.clone(),
                    format!("unet.{name}"),
                ] {
                    self.insert(module, target.clone());
                }
            }
        }
    }

    fn add_text_encoders(&mut self, text_encoders: TextEncoderWeights<'_>) {
        // (component, weights, [kohya prefixes], [diffusers prefixes])
        type Slot<'a> = (
            Component,
            &'a HashMap<String, Tensor>,
            &'static [&'static str],
            &'static [&'static str],
        );
        let slots: Vec<Slot<'_>> = match text_encoders {
            TextEncoderWeights::None => vec![],
            TextEncoderWeights::Sd1 { clip_l } => vec![(
                Component::ClipL,
                clip_l,
                &["lora_te_", "lora_te1_"],
                &["text_encoder."],
            )],
            TextEncoderWeights::Sd2 { clip_h } => vec![(
                Component::ClipH,
                clip_h,
                &["lora_te_", "lora_te1_"],
                &["text_encoder."],
            )],
            TextEncoderWeights::Sdxl { clip_l, clip_g } => vec![
                (
                    Component::ClipL,
                    clip_l,
                    &["lora_te_", "lora_te1_"],
                    &["text_encoder."],
                ),
                (
                    Component::ClipG,
                    clip_g,
                    &["lora_te2_"],
                    &["text_encoder_2."],
                ),
            ],
            TextEncoderWeights::SdxlRefiner { clip_g } => vec![(
                Component::ClipG,
                clip_g,
                &["lora_te_", "lora_prior_te_"],
                &["text_encoder."],
            )],
        };
        for (component, weights, kohya, diffusers) in slots {
            self.components.push(component);
            let mut keys: Vec<&String> = weights.keys().collect();
            keys.sort();
            for key in keys {
                let Some(tensor) = weights.get(key) else {
                    continue;
                };
                let Some(base) = key.strip_suffix(".weight") else {
                    continue;
                };
                let target = Target {
                    component,
                    key: key.clone(),
                    shape: tensor.dims().to_vec(),
                    bias: bias_of(key, weights),
                };
                self.insert(
                    format!(
                        "text_encoders.{}.transformer.{base}",
                        component.comfy_name()
                    ),
                    target.clone(),
                );
                if let Some((layer, module)) = clip_layer_module(base) {
                    for prefix in kohya {
                        self.insert(
                            format!("{prefix}text_model_encoder_layers_{layer}_{module}"),
                            target.clone(),
                        );
                    }
                    for prefix in diffusers {
                        self.insert(format!("{prefix}{base}"), target.clone());
                    }
                }
                if base == "text_projection" {
                    let names: &[&str] = match component {
                        Component::ClipG => {
                            &["lora_prior_te_text_projection", "lora_te2_text_projection"]
                        }
                        Component::ClipL => &["lora_te1_text_projection"],
                        _ => &[],
                    };
                    for name in names {
                        self.insert(name.to_string(), target.clone());
                    }
                }
            }
        }
    }
}

/// For `text_model.encoder.layers.N.<m>` with `m` a LoRA target and N < 32: (N, kohya `m`).
fn clip_layer_module(base: &str) -> Option<(usize, &'static str)> {
    let rest = base.strip_prefix("text_model.encoder.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= MAX_CLIP_LAYERS {
        return None;
    }
    LORA_CLIP_MAP
        .iter()
        .find(|(dotted, _)| *dotted == module)
        .map(|(_, kohya)| (layer, *kohya))
}

/// The bias beside a `.weight`, with its shape.
fn bias_of(key: &str, weights: &HashMap<String, Tensor>) -> Option<(String, Vec<usize>)> {
    let bias = format!("{}.bias", key.strip_suffix(".weight")?);
    let shape = weights.get(&bias)?.dims().to_vec();
    Some((bias, shape))
}

const RESNET_DIFFUSERS_TO_LDM: [(&str, &str); 6] = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

fn resnet_to_ldm(rest: &str) -> Option<String> {
    RESNET_DIFFUSERS_TO_LDM.iter().find_map(|(diff, ldm)| {
        rest.strip_prefix(diff)
            .filter(|r| r.starts_with('.'))
            .map(|r| format!("{ldm}{r}"))
    })
}

/// Splits `"3.resnets.1.rest"` into (3, "resnets", 1, "rest").
fn level_parts(rest: &str) -> Option<(usize, &str, usize, &str)> {
    let mut it = rest.splitn(4, '.');
    let level = it.next()?.parse().ok()?;
    let kind = it.next()?;
    let index = it.next()?.parse().ok()?;
    Some((level, kind, index, it.next()?))
}

/// The LDM name of a diffusers UNet key (the inverse of `keymap::unet_ldm_to_diffusers`, which
/// checks the result); ComfyUI's `unet_to_diffusers` read the other way.
pub fn unet_diffusers_to_ldm(
    key: &str,
    layers_per_block: usize,
    up_has_attention: &dyn Fn(usize) -> bool,
) -> Option<String> {
    let per = layers_per_block + 1;
    let simple = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
    ];
    for (diff, ldm) in simple {
        if let Some(rest) = key.strip_prefix(diff) {
            return Some(format!("{ldm}{rest}"));
        }
    }
    if let Some(rest) = key.strip_prefix("down_blocks.") {
        let (i, kind, j, rest) = level_parts(rest)?;
        return match kind {
            "resnets" => Some(format!(
                "input_blocks.{}.0.{}",
                per * i + j + 1,
                resnet_to_ldm(rest)?
            )),
            "attentions" => Some(format!("input_blocks.{}.1.{rest}", per * i + j + 1)),
            "downsamplers" => {
                let param = rest.strip_prefix("conv.")?;
                Some(format!("input_blocks.{}.0.op.{param}", per * (i + 1)))
            }
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("mid_block.") {
        let mut it = rest.splitn(3, '.');
        let (kind, j, rest) = (it.next()?, it.next()?.parse::<usize>().ok()?, it.next()?);
        return match (kind, j) {
            ("resnets", 0 | 1) => Some(format!("middle_block.{}.{}", 2 * j, resnet_to_ldm(rest)?)),
            ("attentions", 0) => Some(format!("middle_block.1.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("up_blocks.") {
        let (i, kind, j, rest) = level_parts(rest)?;
        return match kind {
            "resnets" => Some(format!(
                "output_blocks.{}.0.{}",
                per * i + j,
                resnet_to_ldm(rest)?
            )),
            "attentions" => Some(format!("output_blocks.{}.1.{rest}", per * i + j)),
            "upsamplers" => {
                let param = rest.strip_prefix("conv.")?;
                let index = if up_has_attention(i) { 2 } else { 1 };
                Some(format!(
                    "output_blocks.{}.{index}.conv.{param}",
                    per * i + layers_per_block
                ))
            }
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str, expected: &str) {
        let got = unet_diffusers_to_ldm(key, 2, &|level| level > 0).unwrap();
        assert_eq!(got, expected);
        assert_eq!(unet_ldm_to_diffusers(&got, 2).as_deref(), Some(key));
    }

    #[test]
    fn diffusers_names_invert_the_loader_map() {
        check("conv_in.weight", "input_blocks.0.0.weight");
        check(
            "down_blocks.1.resnets.0.conv_shortcut.weight",
            "input_blocks.4.0.skip_connection.weight",
        );
        check(
            "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight",
            "input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
        );
        check(
            "down_blocks.0.downsamplers.0.conv.bias",
            "input_blocks.3.0.op.bias",
        );
        check(
            "mid_block.resnets.1.norm2.weight",
            "middle_block.2.out_layers.0.weight",
        );
        check(
            "mid_block.attentions.0.proj_in.weight",
            "middle_block.1.proj_in.weight",
        );
        check(
            "up_blocks.1.resnets.2.conv1.weight",
            "output_blocks.5.0.in_layers.2.weight",
        );
        check(
            "up_blocks.1.upsamplers.0.conv.weight",
            "output_blocks.5.2.conv.weight",
        );
        check(
            "up_blocks.0.upsamplers.0.conv.weight",
            "output_blocks.2.1.conv.weight",
        );
        check("add_embedding.linear_2.bias", "label_emb.0.2.bias");
    }

    #[test]
    fn clip_modules_follow_comfy_lora_clip_map() {
        assert_eq!(
            clip_layer_module("text_model.encoder.layers.11.self_attn.out_proj"),
            Some((11, "self_attn_out_proj"))
        );
        assert_eq!(
            clip_layer_module("text_model.encoder.layers.3.layer_norm1"),
            None
        );
        assert_eq!(
            clip_layer_module("text_model.encoder.layers.32.mlp.fc1"),
            None
        );
    }
}
