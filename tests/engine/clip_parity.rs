//! Parity of the CLIP tokenizer, text transformer and ComfyUI encoding against HF transformers.
//!
//! Expected numbers come from `clip/scripts/clip_reference.py` (regenerate with
//! `/opt/refpy/bin/python clip/scripts/clip_reference.py`), which builds HF `CLIPTokenizer` from
//! the vocabulary bundled in `instant-clip-tokenizer`, HF `CLIPTextModelWithProjection` with two
//! tiny configs filled by the shared synthetic generator, and a python port of ComfyUI's
//! `SDTokenizer.tokenize_with_weights` / `encode_token_weights` run on those models.
//! Token ids and chunk layouts must match exactly; tensors within 1e-4 max abs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde_json::Value;
use weft::engine::clip::{
    openclip_to_hf, sdxl_clip_g, ClipActivation, ClipConfig, ClipForwardOptions, ClipTextModel,
    TextEncoder,
};
use weft::engine::synth::{synth_tensor, SynthBackend};
use weft::engine::tokenizer::{ClipBpe, PromptToken, SdTokenizer, SdTokenizerConfig, TextCleaning};

const TOL: f32 = 1e-4;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn meta() -> Value {
    let text =
        std::fs::read_to_string(fixture_dir().join("clip_reference.json")).expect("fixture json");
    serde_json::from_str(&text).expect("fixture json parses")
}

fn tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture_dir().join("clip_reference.safetensors"),
        &Device::Cpu,
    )
    .expect("fixture safetensors")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn check_close(what: &str, got: &Tensor, expected: &Tensor) {
    let err = max_abs(got, expected);
    println!("{what}: max abs err {err:.3e}");
    assert!(err <= TOL, "{what}: max abs err {err} > {TOL}");
}

fn tiny_config(kind: &str) -> ClipConfig {
    // Same shapes as tiny_config() in clip_reference.py.
    let (hidden, act, proj) = match kind {
        "tiny_l" => (64, ClipActivation::QuickGelu, 48),
        _ => (32, ClipActivation::Gelu, 32),
    };
    ClipConfig {
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
    }
}

fn synth_model(kind: &str) -> ClipTextModel {
    let vb = VarBuilder::from_backend(Box::new(SynthBackend), DType::F32, Device::Cpu);
    ClipTextModel::new(vb, &tiny_config(kind)).expect("tiny model builds")
}

/// Textual-inversion vectors of the script: "style" = synth("embedding.style.{dim}", [2, dim]).
fn lookup(name: &str, _key: &str, dim: usize) -> Option<Tensor> {
    (name == "style").then(|| synth_tensor(&format!("embedding.style.{dim}"), &[2, dim]).unwrap())
}

#[test]
fn bpe_ids_match_hf_tokenizer() {
    let bpe = ClipBpe::new();
    for case in meta()["tokenizer"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(bpe.encode(prompt), expected, "prompt {prompt:?}");
    }
}

/// `clip_tokenizer_slow.json` comes from `clip_reference.py --transformers4 DIR`: transformers
/// 4.57's slow `CLIPTokenizer` without ftfy (what ComfyUI ran before transformers 5).
#[test]
fn bpe_ids_match_transformers4_slow_tokenizer() {
    let text = std::fs::read_to_string(fixture_dir().join("clip_tokenizer_slow.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let bpe = ClipBpe::with_cleaning(TextCleaning::Transformers4Slow);
    for case in fixture["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(bpe.encode(prompt), expected, "prompt {prompt:?}");
    }
}

#[test]
fn chunks_match_comfyui_tokenize_with_weights() {
    let bpe = Arc::new(ClipBpe::new());
    for case in meta()["chunks"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let pad = case["pad"].as_u64().unwrap() as u32;
        let dim = case["dim"].as_u64().unwrap() as usize;
        let cfg = SdTokenizerConfig {
            pad_token: pad,
            embedding_dim: dim,
            ..SdTokenizerConfig::clip_l()
        };
        let tok = SdTokenizer::new(bpe.clone(), cfg);
        let chunks = tok.tokenize_with_weights(prompt, Some(&lookup));
        let expected = case["chunks"].as_array().unwrap();
        assert_eq!(chunks.len(), expected.len(), "chunk count for {prompt:?}");
        for (chunk, exp) in chunks.iter().zip(expected) {
            let exp = exp.as_array().unwrap();
            assert_eq!(chunk.len(), exp.len(), "chunk length for {prompt:?}");
            for (j, (t, e)) in chunk.iter().zip(exp).enumerate() {
                let w = e[1].as_f64().unwrap();
                assert!(
                    (t.weight - w).abs() < 1e-12,
                    "{prompt:?} pos {j}: weight {} vs {w}",
                    t.weight
                );
                match (&t.token, &e[0]) {
                    (PromptToken::Id(id), Value::Number(n)) => {
                        assert_eq!(u64::from(*id), n.as_u64().unwrap(), "{prompt:?} pos {j}")
                    }
                    (PromptToken::Embedding(v), Value::String(s)) => {
                        let row: usize = s.rsplit(':').next().unwrap().parse().unwrap();
                        let name = s.trim_start_matches("emb:").split(':').next().unwrap();
                        let expected = lookup(name, "", dim).unwrap().get(row).unwrap();
                        assert_eq!(max_abs(v, &expected), 0.0, "{prompt:?} pos {j}");
                    }
                    (got, exp) => panic!("{prompt:?} pos {j}: {got:?} vs {exp}"),
                }
            }
        }
    }
}

fn check_model(kind: &str, model: &ClipTextModel, fx: &HashMap<String, Tensor>) {
    let ids = fx[&format!("{kind}.ids")].to_dtype(DType::U32).unwrap();
    let run = |layer: Option<isize>, ln: bool| {
        model
            .forward(
                &ids,
                &ClipForwardOptions {
                    intermediate_layer: layer,
                    final_layer_norm_intermediate: ln,
                },
            )
            .unwrap()
    };
    let out = run(Some(-2), false);
    check_close(
        &format!("{kind} last_hidden_state"),
        &out.last_hidden_state,
        &fx[&format!("{kind}.last")],
    );
    check_close(
        &format!("{kind} hidden[-2]"),
        out.intermediate.as_ref().unwrap(),
        &fx[&format!("{kind}.penultimate")],
    );
    check_close(
        &format!("{kind} pooled"),
        &out.pooled,
        &fx[&format!("{kind}.pooled")],
    );
    check_close(
        &format!("{kind} projected"),
        out.projected.as_ref().unwrap(),
        &fx[&format!("{kind}.projected")],
    );
    let out = run(Some(-2), true);
    check_close(
        &format!("{kind} final_ln(hidden[-2])"),
        out.intermediate.as_ref().unwrap(),
        &fx[&format!("{kind}.penultimate_ln")],
    );
    let out = run(Some(0), false);
    check_close(
        &format!("{kind} hidden[layer 0]"),
        out.intermediate.as_ref().unwrap(),
        &fx[&format!("{kind}.hidden0")],
    );
}

#[test]
fn text_model_matches_hf() {
    let fx = tensors();
    for kind in ["tiny_l", "tiny_g"] {
        check_model(kind, &synth_model(kind), &fx);
    }
}

#[test]
fn comfyui_encoding_matches_reference() {
    let fx = tensors();
    let bpe = Arc::new(ClipBpe::new());
    let (l, g) = (synth_model("tiny_l"), synth_model("tiny_g"));
    let families = [
        ("sd1", TextEncoder::sd1(l.clone(), bpe.clone())),
        ("sd2", TextEncoder::sd2(g.clone(), bpe.clone())),
        ("sdxl", TextEncoder::sdxl(l, g.clone(), bpe.clone())),
        ("refiner", TextEncoder::sdxl_refiner(g, bpe)),
    ];
    for case in meta()["encode"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompt = case["prompt"].as_str().unwrap();
        let clip_skip = case["clip_skip"].as_i64().map(|v| v as isize);
        for (family, enc) in &families {
            let cond = enc.encode(prompt, Some(&lookup), clip_skip).unwrap();
            check_close(
                &format!("{family} {name} context"),
                &cond.context,
                &fx[&format!("{family}.{name}.context")],
            );
            check_close(
                &format!("{family} {name} pooled"),
                &cond.pooled,
                &fx[&format!("{family}.{name}.pooled")],
            );
        }
    }
}

/// Records every tensor a model asks for while serving the synthetic values, which gives the
/// HF-layout state dict of a synthetic model.
struct Recorder(Mutex<HashMap<String, Tensor>>);

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

/// HF names back to an OpenCLIP checkpoint layout (the inverse of `openclip_to_hf`, test only).
pub(crate) fn to_openclip(hf: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    let mut qkv: HashMap<(String, String), [Option<Tensor>; 3]> = HashMap::new();
    for (k, t) in hf {
        let new = if k == "text_model.embeddings.token_embedding.weight" {
            "token_embedding.weight".to_string()
        } else if k == "text_model.embeddings.position_embedding.weight" {
            "positional_embedding".to_string()
        } else if let Some(leaf) = k.strip_prefix("text_model.final_layer_norm.") {
            format!("ln_final.{leaf}")
        } else if k == "text_projection.weight" {
            out.insert(
                format!("{prefix}text_projection"),
                t.t().unwrap().contiguous().unwrap(),
            );
            continue;
        } else if let Some(rest) = k.strip_prefix("text_model.encoder.layers.") {
            let (i, leaf) = rest.split_once('.').unwrap();
            let slot = [
                "self_attn.q_proj.",
                "self_attn.k_proj.",
                "self_attn.v_proj.",
            ]
            .iter()
            .position(|p| leaf.starts_with(p));
            if let Some(slot) = slot {
                let param = leaf.rsplit('.').next().unwrap().to_string();
                qkv.entry((i.to_string(), param)).or_default()[slot] = Some(t.clone());
                continue;
            }
            let leaf = leaf
                .replace("self_attn.out_proj.", "attn.out_proj.")
                .replace("layer_norm1.", "ln_1.")
                .replace("layer_norm2.", "ln_2.")
                .replace("mlp.fc1.", "mlp.c_fc.")
                .replace("mlp.fc2.", "mlp.c_proj.");
            format!("transformer.resblocks.{i}.{leaf}")
        } else {
            panic!("unexpected key {k}");
        };
        out.insert(format!("{prefix}{new}"), t.clone());
    }
    for ((i, param), parts) in qkv {
        let parts: Vec<Tensor> = parts.into_iter().map(Option::unwrap).collect();
        out.insert(
            format!("{prefix}transformer.resblocks.{i}.attn.in_proj_{param}"),
            Tensor::cat(&parts, 0).unwrap(),
        );
    }
    out.insert(
        format!("{prefix}logit_scale"),
        Tensor::new(4.6f32, &Device::Cpu).unwrap(),
    );
    out
}

#[test]
fn openclip_checkpoint_converts_to_the_same_model() {
    let fx = tensors();
    let cfg = tiny_config("tiny_g");
    let recorder = Arc::new(Recorder(Mutex::new(HashMap::new())));
    struct Shared(Arc<Recorder>);
    impl SimpleBackend for Shared {
        fn get(
            &self,
            s: Shape,
            n: &str,
            h: candle_nn::Init,
            d: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get(s, n, h, d, dev)
        }
        fn get_unchecked(&self, n: &str, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(n, d, dev)
        }
        fn contains_tensor(&self, n: &str) -> bool {
            self.0.contains_tensor(n)
        }
    }
    let vb = VarBuilder::from_backend(Box::new(Shared(recorder.clone())), DType::F32, Device::Cpu);
    let hf_model = ClipTextModel::new(vb, &cfg).unwrap();
    let hf = recorder.0.lock().unwrap().clone();

    // A full SDXL-style checkpoint: bigG under conditioner.embedders.1.model. plus unrelated keys.
    let mut ckpt = to_openclip(&hf, "conditioner.embedders.1.model.");
    ckpt.insert(
        "model.diffusion_model.out.2.bias".to_string(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    let converted = sdxl_clip_g(&ckpt).unwrap();
    let mut got_keys: Vec<_> = converted.keys().cloned().collect();
    let mut want_keys: Vec<_> = hf.keys().cloned().collect();
    got_keys.sort();
    want_keys.sort();
    assert_eq!(got_keys, want_keys);
    for (k, t) in &hf {
        assert_eq!(max_abs(&converted[k], t), 0.0, "{k}");
    }
    let vb = VarBuilder::from_tensors(converted, DType::F32, &Device::Cpu);
    let converted_model = ClipTextModel::new(vb, &cfg).unwrap();
    check_model("tiny_g", &converted_model, &fx);

    // Same outputs as the HF-layout model, bit for bit.
    let ids = fx["tiny_g.ids"].to_dtype(DType::U32).unwrap();
    let opts = ClipForwardOptions {
        intermediate_layer: Some(-2),
        final_layer_norm_intermediate: false,
    };
    let a = hf_model.forward(&ids, &opts).unwrap();
    let b = converted_model.forward(&ids, &opts).unwrap();
    assert_eq!(max_abs(&a.last_hidden_state, &b.last_hidden_state), 0.0);
    assert_eq!(
        max_abs(a.projected.as_ref().unwrap(), b.projected.as_ref().unwrap()),
        0.0
    );

    // The bare OpenCLIP map (no prefix) converts the same way.
    let bare = openclip_to_hf(&to_openclip(&hf, "")).unwrap();
    assert_eq!(bare.len(), hf.len());
}
