//! LoRA parity with ComfyUI.
//!
//! Reference: tools/parity/lora_reference.py (regenerate with
//! `/opt/refpy/bin/python tools/parity/lora_reference.py`), a transcription of ComfyUI's
//! `model_lora_keys_unet`/`model_lora_keys_clip`, `load_lora` and the adapters'
//! `calculate_weight` (comfy/lora.py, comfy/weight_adapter/{lora,loha,lokr,base}.py), run on the
//! tiny SD1/SDXL UNets and tiny CLIP encoders with the shared synthetic weights. It writes the LoRA
//! files under tests/fixtures/lora/ and the expected patched weights.
//! Tolerances: patched weights 1e-5 max abs; the patched SD1 UNet's forward (against diffusers)
//! 1e-4 max abs; key maps exactly (sha256 of the sorted lines).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde_json::Value;
use sha2::{Digest, Sha256};
use weft::engine::clip::{ClipActivation, ClipConfig, ClipTextModel};
use weft::engine::lora::{
    apply, Component, KeyMap, LoraError, LoraErrorKind, LoraFile, TextEncoderWeights, UnetWeights,
};
use weft::engine::synth::SynthBackend;
use weft::engine::unet::UNet2DConditionModel;

use crate::engine::util::tiny_unet_config;

const TOL: f32 = 1e-5;
const FORWARD_TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lora")
        .join(name)
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu).unwrap()
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Serves synthetic weights and records every tensor a model builder asks for: the canonical
/// weight map of a synthetic model.
#[derive(Clone, Default)]
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

fn recorded(build: impl FnOnce(VarBuilder<'static>)) -> HashMap<String, Tensor> {
    let recorder = Recorder::default();
    build(VarBuilder::from_backend(
        Box::new(recorder.clone()),
        DType::F32,
        Device::Cpu,
    ));
    let map = recorder.0.lock().unwrap().clone();
    map
}

/// The tiny CLIP configs of clip_reference.py ("tiny_l" = CLIP-L, "tiny_g" = bigG).
fn tiny_clip(kind: &str) -> HashMap<String, Tensor> {
    let (hidden, act, proj) = match kind {
        "tiny_l" => (64, ClipActivation::QuickGelu, 48),
        _ => (32, ClipActivation::Gelu, 32),
    };
    let cfg = ClipConfig {
        vocab_size: 49408,
        hidden_size: hidden,
        intermediate_size: 128,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        max_position_embeddings: 77,
        hidden_act: act,
        layer_norm_eps: 1e-5,
        projection_dim: Some(proj),
        eos_token_id: 49407,
    };
    recorded(|vb| {
        ClipTextModel::new(vb, &cfg).unwrap();
    })
}

/// A tiny model's canonical weight maps.
struct TinyModel {
    name: String,
    unet: HashMap<String, Tensor>,
    clip_l: HashMap<String, Tensor>,
    clip_g: Option<HashMap<String, Tensor>>,
}

impl TinyModel {
    fn new(name: &str) -> Self {
        let cfg = tiny_unet_config(&format!("{name}_tiny"));
        let unet = recorded(|vb| {
            UNet2DConditionModel::new(vb, &cfg).unwrap();
        });
        Self {
            name: name.to_string(),
            unet,
            clip_l: tiny_clip("tiny_l"),
            clip_g: (name == "sdxl").then(|| tiny_clip("tiny_g")),
        }
    }

    fn text_encoders(&self) -> TextEncoderWeights<'_> {
        match &self.clip_g {
            Some(clip_g) => TextEncoderWeights::Sdxl {
                clip_l: &self.clip_l,
                clip_g,
            },
            None => TextEncoderWeights::Sd1 {
                clip_l: &self.clip_l,
            },
        }
    }

    fn keys(&self) -> KeyMap {
        KeyMap::new(Some(self.unet_weights()), self.text_encoders())
    }

    fn unet_weights(&self) -> UnetWeights<'_> {
        UnetWeights {
            weights: &self.unet,
            layers_per_block: 2,
        }
    }

    fn components(&self) -> Vec<(Component, &'static str, &HashMap<String, Tensor>)> {
        let mut v = vec![
            (Component::Unet, "unet", &self.unet),
            (Component::ClipL, "clip_l", &self.clip_l),
        ];
        if let Some(g) = &self.clip_g {
            v.push((Component::ClipG, "clip_g", g));
        }
        v
    }
}

/// Applies a case's LoRAs; returns (component name, base map, patched map) per component.
fn run_case(
    model: &TinyModel,
    loras: &[(String, f64, f64)],
) -> Vec<(&'static str, HashMap<String, Tensor>)> {
    let keys = model.keys();
    let mapped: Vec<_> = loras
        .iter()
        .map(|(file, sm, sc)| {
            let lora = LoraFile::open(&fixture(file))
                .and_then(|f| f.map(&keys))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                lora.report().unmatched.is_empty(),
                "{file}: unmatched {:?}",
                lora.report().unmatched
            );
            (lora, *sm, *sc)
        })
        .collect();
    model
        .components()
        .into_iter()
        .map(|(component, name, base)| {
            let patches: Vec<_> = mapped
                .iter()
                .map(|(lora, sm, sc)| {
                    let s = if component == Component::Unet {
                        *sm
                    } else {
                        *sc
                    };
                    (lora.patch(component), s)
                })
                .collect();
            (name, apply(base, &patches).unwrap())
        })
        .collect()
}

/// One case of cases.json: a model and the LoRAs applied to it, each with its model and clip
/// strengths.
struct Case {
    name: String,
    model: String,
    loras: Vec<(String, f64, f64)>,
}

fn cases() -> Vec<Case> {
    let cases = json("cases.json");
    cases
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, case)| Case {
            name: name.clone(),
            model: case["model"].as_str().unwrap().to_string(),
            loras: case["loras"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    (
                        l[0].as_str().unwrap().to_string(),
                        l[1].as_f64().unwrap(),
                        l[2].as_f64().unwrap(),
                    )
                })
                .collect(),
        })
        .collect()
}

#[test]
fn lora_formats_patch_like_comfyui() {
    let expected = expected();
    let models = [TinyModel::new("sd1"), TinyModel::new("sdxl")];
    for Case {
        name: case,
        model: model_name,
        loras,
    } in cases()
    {
        let model = models.iter().find(|m| m.name == model_name).unwrap();
        let mut worst = 0f32;
        let mut count = 0;
        for ((_, name, base), (_, patched)) in
            model.components().into_iter().zip(run_case(model, &loras))
        {
            let prefix = format!("{case}/{name}/");
            for (key, tensor) in &patched {
                let want = expected.get(&format!("{prefix}{key}"));
                let same = tensor.id() == base[key].id();
                match want {
                    Some(want) => {
                        assert!(!same, "{case}: {name} {key} was not patched");
                        let err = max_abs(tensor, want);
                        assert!(err <= TOL, "{case}: {name} {key}: max abs err {err}");
                        worst = worst.max(err);
                        count += 1;
                    }
                    None => assert!(same, "{case}: {name} {key} changed but ComfyUI leaves it"),
                }
            }
        }
        let want_count = expected
            .keys()
            .filter(|k| k.starts_with(&format!("{case}/")) && !k.contains("/forward/"))
            .count();
        assert_eq!(count, want_count, "{case}: patched weights");
        println!("{case}: {count} weights patched, max abs err {worst:.2e}");
    }
}

#[test]
fn stacked_loras_drive_the_unet_like_diffusers() {
    let expected = expected();
    let model = TinyModel::new("sd1");
    let case = cases().into_iter().find(|c| c.name == "stack_sd1").unwrap();
    let patched = run_case(&model, &case.loras).remove(0).1;
    let vb = VarBuilder::from_tensors(patched, DType::F32, &Device::Cpu);
    let unet = UNet2DConditionModel::new(vb, &tiny_unet_config("sd1_tiny")).unwrap();
    let get = |k: &str| expected[&format!("stack_sd1/forward/{k}")].clone();
    let out = unet
        .forward(&get("x"), &get("t"), &get("context"), None, None)
        .unwrap();
    let err = max_abs(&out, &get("out"));
    println!("stack_sd1 forward: max abs err {err:.2e}");
    assert!(err <= FORWARD_TOL, "{err}");
}

/// sha256 over the sorted keys, shapes, dtypes and bytes of a weight map.
fn map_hash(map: &HashMap<String, Tensor>) -> String {
    let mut keys: Vec<_> = map.keys().collect();
    keys.sort();
    let mut h = Sha256::new();
    for k in keys {
        let t = &map[k];
        h.update(k.as_bytes());
        h.update(format!("{:?}{:?}", t.dims(), t.dtype()).as_bytes());
        let values = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for v in values {
            h.update(v.to_bits().to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

#[test]
fn unpatching_is_the_base_map_bit_for_bit() {
    let model = TinyModel::new("sd1");
    let keys = model.keys();
    let before = map_hash(&model.unet);
    let loras: Vec<_> = [
        "kohya_sd1.safetensors",
        "locon_sd1.safetensors",
        "dora_sd1.safetensors",
    ]
    .iter()
    .map(|f| LoraFile::open(&fixture(f)).unwrap().map(&keys).unwrap())
    .collect();
    let patches: Vec<_> = loras
        .iter()
        .zip([1.0, -0.5, 0.7])
        .map(|(l, s)| (l.patch(Component::Unet), s))
        .collect();
    let patched = apply(&model.unet, &patches).unwrap();
    assert_ne!(map_hash(&patched), before);
    drop(patched);
    // The base map is untouched: using it again is the unpatched model.
    assert_eq!(map_hash(&model.unet), before);

    // Strength 0 everywhere gives the base map itself, tensor for tensor.
    let zero: Vec<_> = patches.iter().map(|(p, _)| (*p, 0.0)).collect();
    let same = apply(&model.unet, &zero).unwrap();
    assert_eq!(same.len(), model.unet.len());
    for (k, t) in &same {
        assert_eq!(t.id(), model.unet[k].id(), "{k}");
    }

    // A LoRA and its negation cancel up to rounding.
    let kohya = loras[0].patch(Component::Unet);
    let there_and_back = apply(&model.unet, &[(kohya, 0.8), (kohya, -0.8)]).unwrap();
    for (key, _) in kohya.targets() {
        assert!(
            max_abs(&there_and_back[key], &model.unet[key]) < 1e-6,
            "{key}"
        );
    }
}

#[test]
fn key_maps_match_comfyui() {
    let digests = json("keymaps.json");
    for name in ["sd1", "sdxl"] {
        let model = TinyModel::new(name);
        let keys = model.keys();
        let component_name = |c: Component| match c {
            Component::Unet => "unet",
            Component::ClipL => "clip_l",
            Component::ClipG => "clip_g",
            Component::ClipH => "clip_h",
        };
        // Weft's one extension: plain diffusers/PEFT names of attention layers.
        let extension = |module: &str, c: Component, key: &str| {
            let base = key.strip_suffix(".weight").unwrap_or(key);
            c == Component::Unet
                && base.contains(".to_")
                && (module == base || module.strip_prefix("unet.") == Some(base))
        };
        let mut lines: Vec<String> = keys
            .entries()
            .into_iter()
            .filter(|(m, c, k)| !extension(m, *c, k))
            .map(|(m, c, k)| format!("{m}\t{}/{k}\n", component_name(c)))
            .collect();
        lines.sort();
        let digest = hex::encode(Sha256::digest(lines.concat().as_bytes()));
        let want = &digests[name];
        let sample: Vec<&str> = want["sample"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for line in sample {
            assert!(
                lines.iter().any(|l| l.trim_end() == line),
                "{name}: missing {line}"
            );
        }
        assert_eq!(
            lines.len() as u64,
            want["count"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(digest, want["sha256"].as_str().unwrap(), "{name}");
        println!("{name}: {} key map lines match ComfyUI", lines.len());
    }
}

#[test]
fn f16_weights_are_patched_in_f32_and_stay_f16() {
    let expected = expected();
    let model = TinyModel::new("sd1");
    let keys = model.keys();
    let lora = LoraFile::open(&fixture("kohya_sd1.safetensors"))
        .unwrap()
        .map(&keys)
        .unwrap();
    let half: HashMap<String, Tensor> = model
        .unet
        .iter()
        .map(|(k, t)| (k.clone(), t.to_dtype(DType::F16).unwrap()))
        .collect();
    let patched = apply(&half, &[(lora.patch(Component::Unet), 0.8)]).unwrap();
    for (key, _) in lora.patch(Component::Unet).targets() {
        assert_eq!(patched[key].dtype(), DType::F16);
        let err = max_abs(&patched[key], &expected[&format!("kohya_sd1/unet/{key}")]);
        assert!(err < 2e-3, "{key}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors: each names the file and what is wrong, never panics.

fn open_err(path: &Path, keys: &KeyMap) -> LoraError {
    match LoraFile::open(path).and_then(|f| f.map(keys)) {
        Ok(_) => panic!("{} should fail", path.display()),
        Err(e) => e,
    }
}

fn write_lora(dir: &Path, name: &str, tensors: &[(&str, &[usize])]) -> PathBuf {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, s)| {
            let t = weft::engine::synth::synth_tensor(k, *s).unwrap();
            (k.to_string(), t)
        })
        .collect();
    let path = dir.join(name);
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

const Q: &str = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";

#[test]
fn ordinary_torch_pickles_pass_the_pickle_check() {
    // An LDM-style checkpoint (weights under "state_dict", an int beside them, f16 and bf16
    // storages) and a plain state dict, both written by torch.save (unet_vae_reference.py).
    for name in ["tiny_ldm.ckpt", "tiny_plain.pt"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/unet")
            .join(name);
        let file = LoraFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!file.tensors().is_empty(), "{name}");
    }
}

#[test]
fn broken_files_give_errors_naming_the_file() {
    let model = TinyModel::new("sd1");
    let keys = model.keys();
    let dir = tempfile::tempdir().unwrap();

    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let e = open_err(&empty, &keys);
    assert!(matches!(e.kind, LoraErrorKind::Empty), "{e}");
    assert!(e.to_string().contains("empty.safetensors"), "{e}");

    let bytes = std::fs::read(fixture("kohya_sd1.safetensors")).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let e = open_err(&truncated, &keys);
    assert!(e.to_string().contains("truncated"), "{e}");

    let pt = std::fs::read(fixture("pickle_sd1.pt")).unwrap();
    let truncated_pt = dir.path().join("truncated.pt");
    std::fs::write(&truncated_pt, &pt[..pt.len() / 2]).unwrap();
    let e = open_err(&truncated_pt, &keys);
    assert!(matches!(e.kind, LoraErrorKind::BadPickle(_)), "{e}");
    println!("{e}");

    let e = open_err(&fixture("bad_global.pt"), &keys);
    assert!(
        matches!(&e.kind, LoraErrorKind::BadPickle(m) if m.contains("system")),
        "{e}"
    );
    println!("{e}");
    let e = open_err(&fixture("bad_shape.pt"), &keys);
    assert!(
        matches!(&e.kind, LoraErrorKind::BadTensor { reason, .. } if reason.contains("needs more data")),
        "{e}"
    );
    println!("{e}");
    let e = open_err(&fixture("bad_opcode.pt"), &keys);
    assert!(
        matches!(&e.kind, LoraErrorKind::BadPickle(m) if m.contains("0xfe")),
        "{e}"
    );
    println!("{e}");
}

#[test]
fn malformed_adapters_name_the_key() {
    let model = TinyModel::new("sd1");
    let keys = model.keys();
    let dir = tempfile::tempdir().unwrap();

    let up = format!("{Q}.lora_up.weight");
    let down = format!("{Q}.lora_down.weight");
    let path = write_lora(
        dir.path(),
        "shape.safetensors",
        &[(&up, &[32, 4]), (&down, &[4, 40])],
    );
    let e = open_err(&path, &keys);
    match &e.kind {
        LoraErrorKind::ShapeMismatch { key, target, .. } => {
            assert_eq!(key, Q);
            assert_eq!(
                target,
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
            );
        }
        other => panic!("{other}"),
    }
    println!("{e}");

    let path = write_lora(dir.path(), "half.safetensors", &[(&up, &[32, 4])]);
    let e = open_err(&path, &keys);
    assert!(
        matches!(&e.kind, LoraErrorKind::MissingPartner { missing, .. } if missing == &down),
        "{e}"
    );

    let a1 = format!("{Q}.a1.weight");
    let path = write_lora(dir.path(), "glora.safetensors", &[(&a1, &[4, 32])]);
    let e = open_err(&path, &keys);
    assert!(
        matches!(&e.kind, LoraErrorKind::Unsupported { kind, .. } if kind.contains("GLoRA")),
        "{e}"
    );

    let alpha = format!("{Q}.alpha");
    let path = write_lora(
        dir.path(),
        "alpha.safetensors",
        &[(&up, &[32, 4]), (&down, &[4, 32]), (&alpha, &[2])],
    );
    let e = open_err(&path, &keys);
    assert!(
        matches!(&e.kind, LoraErrorKind::BadTensor { key, .. } if key == &alpha),
        "{e}"
    );
}

#[test]
fn a_lora_for_another_family_is_an_error() {
    let sd1 = TinyModel::new("sd1");
    let e = open_err(&fixture("kohya_sdxl.safetensors"), &sd1.keys());
    match &e.kind {
        LoraErrorKind::FamilyMismatch {
            lora_context,
            model_context,
            ..
        } => assert_eq!((*lora_context, *model_context), (64, 48)),
        other => panic!("{other}"),
    }
    println!("{e}");

    // Names that exist in no SD UNet at all.
    let dir = tempfile::tempdir().unwrap();
    let path = write_lora(
        dir.path(),
        "flux.safetensors",
        &[
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
                &[8, 4],
            ),
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                &[4, 8],
            ),
            (&format!("{Q}.lora_up.weight"), &[32, 4]),
            (&format!("{Q}.lora_down.weight"), &[4, 32]),
            ("lora_unet_single_blocks_0_linear1.lora_up.weight", &[8, 4]),
            (
                "lora_unet_single_blocks_0_linear1.lora_down.weight",
                &[4, 8],
            ),
        ],
    );
    let e = open_err(&path, &sd1.keys());
    assert!(
        matches!(
            &e.kind,
            LoraErrorKind::MostlyUnmatched {
                unmatched: 2,
                total: 3,
                ..
            }
        ),
        "{e}"
    );
    println!("{e}");
}

#[test]
fn reports_list_unmatched_and_skipped_keys() {
    let model = TinyModel::new("sd1");
    let dir = tempfile::tempdir().unwrap();
    let path = write_lora(
        dir.path(),
        "mixed.safetensors",
        &[
            (&format!("{Q}.lora_up.weight"), &[32, 4]),
            (&format!("{Q}.lora_down.weight"), &[4, 32]),
            ("lora_unet_not_a_layer.lora_up.weight", &[8, 4]),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                &[128, 4],
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                &[4, 64],
            ),
        ],
    );
    let file = LoraFile::open(&path).unwrap();

    let lora = file.map(&model.keys()).unwrap();
    assert_eq!(lora.report().modules, 2);
    assert_eq!(
        lora.report().unmatched,
        vec!["lora_unet_not_a_layer.lora_up.weight".to_string()]
    );
    assert_eq!(lora.patch(Component::ClipL).targets().len(), 1);

    // Without text encoders (a model-only loader), their keys are skipped, not unmatched.
    let unet_only = KeyMap::new(Some(model.unet_weights()), TextEncoderWeights::None);
    let lora = file.map(&unet_only).unwrap();
    assert_eq!(lora.report().modules, 1);
    assert_eq!(lora.report().skipped.len(), 2);
    assert!(lora.patch(Component::ClipL).is_empty());
}

#[test]
fn patching_a_map_without_the_target_is_an_error() {
    let model = TinyModel::new("sd1");
    let lora = LoraFile::open(&fixture("kohya_sd1.safetensors"))
        .unwrap()
        .map(&model.keys())
        .unwrap();
    let e = apply(&model.clip_l, &[(lora.patch(Component::Unet), 1.0)]).unwrap_err();
    assert!(matches!(e.kind, LoraErrorKind::MissingWeight { .. }), "{e}");
}
