//! Tiny checkpoints in the real single-file (LDM) layout, written at test time from the shared
//! synthetic weights: the UNet and VAE key maps come from the diffusers-validated fixtures
//! (`tests/fixtures/unet/keymap_*.json`), the text encoders are built by our CLIP model and saved
//! under their checkpoint prefixes (OpenCLIP names for SD2 and SDXL's bigG).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use weft::engine::clip::{ClipActivation, ClipConfig, ClipTextModel};
use weft::engine::clip_vision::{ClipVisionConfig, ClipVisionModel};
use weft::engine::synth::{synth_tensor, SynthBackend};

use crate::engine::clip_parity::to_openclip;
use crate::engine::load::ldm_tensors;

/// The model families the tests build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiny {
    Sd1,
    Sd2,
    Sdxl,
    SdxlRefiner,
}

#[derive(Clone)]
struct Recorder(Arc<Mutex<HashMap<String, Tensor>>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = SynthBackend.get(s, name, h, dtype, dev)?;
        self.0.lock().unwrap().insert(name.to_string(), t.clone());
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        SynthBackend.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// The HF-named weights of a tiny CLIP text model.
pub(crate) fn clip_weights(
    hidden: usize,
    projection: Option<usize>,
    act: ClipActivation,
) -> HashMap<String, Tensor> {
    let config = ClipConfig {
        vocab_size: 49408,
        hidden_size: hidden,
        intermediate_size: hidden * 2,
        num_hidden_layers: 2,
        // The loader's convention for narrow test encoders: 16-wide heads (64 for real ones).
        num_attention_heads: if hidden.is_multiple_of(64) {
            hidden / 64
        } else {
            hidden / 16
        },
        max_position_embeddings: 77,
        hidden_act: act,
        layer_norm_eps: 1e-5,
        projection_dim: projection,
        eos_token_id: 49407,
    };
    recorded(|vb| {
        ClipTextModel::new(vb, &config).expect("tiny clip builds");
    })
}

/// The synthetic weights `build` asks for, by name.
fn recorded(build: impl FnOnce(VarBuilder)) -> HashMap<String, Tensor> {
    let recorded = Arc::new(Mutex::new(HashMap::new()));
    build(VarBuilder::from_backend(
        Box::new(Recorder(Arc::clone(&recorded))),
        DType::F32,
        Device::Cpu,
    ));
    let map = recorded.lock().unwrap().clone();
    map
}

/// The HF-named weights of a tiny CLIP vision tower (3 layers, 32 wide, 8-pixel patches of a
/// 16-pixel image) whose image embeddings are `projection` wide.
pub(crate) fn clip_vision_weights(projection: usize) -> HashMap<String, Tensor> {
    let config = ClipVisionConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 3,
        num_attention_heads: 16,
        hidden_act: ClipActivation::Gelu,
        layer_norm_eps: 1e-5,
        patch_size: 8,
        image_size: 16,
        projection_dim: projection,
    };
    recorded(|vb| {
        ClipVisionModel::new(vb, &config).expect("tiny clip vision builds");
    })
}

/// A tiny CLIP vision file in `models/clip_vision` (HF names).
pub fn write_clip_vision(path: &Path, projection: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    candle_core::safetensors::save(&clip_vision_weights(projection), path).unwrap();
}

/// A tiny T2I style model reading `width`-wide vision states (the tiny tower's 32) and giving
/// two `context`-wide tokens, in the file layout (`transformer_layes.N` OpenCLIP blocks).
pub fn write_style_model(path: &Path, width: usize, context: usize) {
    let mut tensors = HashMap::new();
    let mut put = |key: String, shape: &[usize]| {
        let t = synth_tensor(&key, shape).unwrap();
        tensors.insert(key, t);
    };
    put("style_embedding".into(), &[1, 2, width]);
    put("proj".into(), &[width, context]);
    for ln in ["ln_pre", "ln_post"] {
        put(format!("{ln}.weight"), &[width]);
        put(format!("{ln}.bias"), &[width]);
    }
    for i in 0..2 {
        let b = format!("transformer_layes.{i}");
        put(format!("{b}.attn.in_proj_weight"), &[3 * width, width]);
        put(format!("{b}.attn.in_proj_bias"), &[3 * width]);
        put(format!("{b}.attn.out_proj.weight"), &[width, width]);
        put(format!("{b}.attn.out_proj.bias"), &[width]);
        for ln in ["ln_1", "ln_2"] {
            put(format!("{b}.{ln}.weight"), &[width]);
            put(format!("{b}.{ln}.bias"), &[width]);
        }
        put(format!("{b}.mlp.c_fc.weight"), &[4 * width, width]);
        put(format!("{b}.mlp.c_fc.bias"), &[4 * width]);
        put(format!("{b}.mlp.c_proj.weight"), &[width, 4 * width]);
        put(format!("{b}.mlp.c_proj.bias"), &[width]);
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// Width of the tiny unCLIP checkpoint's image embeddings (its adm input is twice that).
pub const UNCLIP_EMBED: usize = 16;

/// A tiny SD2.1 unCLIP checkpoint: the tiny SD2 one with an adm input (`label_emb`) of
/// `2 × UNCLIP_EMBED`, and the tiny vision tower in OpenCLIP names under
/// `embedder.model.visual.`.
pub fn write_unclip_checkpoint(path: &Path) {
    write_checkpoint(path, Tiny::Sd2);
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    // The tiny SD2 UNet's time embedding is 4 × 64 wide.
    let time_embed = 256;
    for (key, shape) in [
        ("label_emb.0.0.weight", vec![time_embed, 2 * UNCLIP_EMBED]),
        ("label_emb.0.0.bias", vec![time_embed]),
        ("label_emb.0.2.weight", vec![time_embed, time_embed]),
        ("label_emb.0.2.bias", vec![time_embed]),
    ] {
        let key = format!("model.diffusion_model.{key}");
        let t = synth_tensor(&key, shape).unwrap();
        tensors.insert(key, t);
    }
    tensors.extend(to_openclip_visual(
        &clip_vision_weights(UNCLIP_EMBED),
        "embedder.model.visual.",
    ));
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// HF vision names to OpenCLIP's `visual.*` layout under `prefix` (the blocks through the text
/// tower's converter, whose block names are the same).
fn to_openclip_visual(hf: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    let mut layers = HashMap::new();
    for (k, t) in hf {
        let name = match k.as_str() {
            "vision_model.embeddings.class_embedding" => "class_embedding",
            "vision_model.embeddings.patch_embedding.weight" => "conv1.weight",
            "vision_model.embeddings.position_embedding.weight" => "positional_embedding",
            "vision_model.pre_layrnorm.weight" => "ln_pre.weight",
            "vision_model.pre_layrnorm.bias" => "ln_pre.bias",
            "vision_model.post_layernorm.weight" => "ln_post.weight",
            "vision_model.post_layernorm.bias" => "ln_post.bias",
            "visual_projection.weight" => {
                out.insert(
                    format!("{prefix}proj"),
                    t.t().unwrap().contiguous().unwrap(),
                );
                continue;
            }
            _ => {
                let rest = k.strip_prefix("vision_model.encoder.layers.").unwrap();
                layers.insert(format!("text_model.encoder.layers.{rest}"), t.clone());
                continue;
            }
        };
        out.insert(format!("{prefix}{name}"), t.clone());
    }
    out.extend(
        to_openclip(&layers, prefix)
            .into_iter()
            .filter(|(k, _)| !k.ends_with("logit_scale")),
    );
    out
}

fn prefixed(map: HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    map.into_iter()
        .map(|(k, t)| (format!("{prefix}{k}"), t))
        .collect()
}

/// Writes a tiny single-file checkpoint of `family` to `path`.
pub fn write_checkpoint(path: &Path, family: Tiny) {
    let unet = match family {
        Tiny::Sd1 => "sd1_tiny",
        Tiny::Sd2 => "sd2_tiny",
        Tiny::Sdxl => "sdxl_tiny",
        Tiny::SdxlRefiner => "refiner_tiny",
    };
    let mut tensors = ldm_tensors(unet, "model.diffusion_model.", DType::F32);
    tensors.extend(ldm_tensors("vae_tiny", "first_stage_model.", DType::F32));
    match family {
        // UNet context 48: CLIP-L 48 wide.
        Tiny::Sd1 => tensors.extend(prefixed(
            clip_weights(48, None, ClipActivation::QuickGelu),
            "cond_stage_model.transformer.",
        )),
        Tiny::Sd2 => {
            let hf = clip_weights(sd2_context(), None, ClipActivation::Gelu);
            tensors.extend(to_openclip(&hf, "cond_stage_model.model."));
        }
        // Context 64 = CLIP-L 32 + bigG 32; y = pooled 32 + 6 × 256.
        Tiny::Sdxl => {
            tensors.extend(prefixed(
                clip_weights(32, None, ClipActivation::QuickGelu),
                "conditioner.embedders.0.transformer.",
            ));
            let g = clip_weights(32, Some(32), ClipActivation::Gelu);
            tensors.extend(to_openclip(&g, "conditioner.embedders.1.model."));
        }
        // Context 32 = bigG 32; y = pooled 32 + 5 × 256.
        Tiny::SdxlRefiner => {
            let g = clip_weights(32, Some(32), ClipActivation::Gelu);
            tensors.extend(to_openclip(&g, "conditioner.embedders.0.model."));
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    candle_core::safetensors::save(&tensors, path).expect("checkpoint written");
}

fn sd2_context() -> usize {
    let text = std::fs::read_to_string(crate::engine::util::fixture_path(
        "unet_config_sd2_tiny.json",
    ))
    .unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["cross_attention_dim"].as_u64().unwrap() as usize
}

/// Writes the four tiny checkpoints into `models/checkpoints/` of a test app.
/// Bytes a tiny checkpoint's tensors take in memory (its f32 data: the file after the header).
pub fn tensor_bytes(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("checkpoint");
    let header = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    bytes.len() as u64 - 8 - header
}

pub fn install_all(models: &Path) {
    let dir = models.join("checkpoints");
    for (name, family) in [
        ("tiny_sd1.safetensors", Tiny::Sd1),
        ("tiny_sd2.safetensors", Tiny::Sd2),
        ("tiny_sdxl.safetensors", Tiny::Sdxl),
        ("tiny_sdxl_refiner.safetensors", Tiny::SdxlRefiner),
    ] {
        write_checkpoint(&dir.join(name), family);
    }
}
