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
use weft::engine::synth::SynthBackend;

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
    let recorded = Arc::new(Mutex::new(HashMap::new()));
    let vb = VarBuilder::from_backend(
        Box::new(Recorder(Arc::clone(&recorded))),
        DType::F32,
        Device::Cpu,
    );
    ClipTextModel::new(vb, &config).expect("tiny clip builds");
    let map = recorded.lock().unwrap().clone();
    map
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
