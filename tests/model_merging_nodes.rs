//! Model merging and saving through the server: two tiny SD1 checkpoints merged (UNet and text
//! encoder), saved with CheckpointSave, CLIPSave and VAESave, and loaded back with the loaders
//! give the in-memory merge's pixels exactly; a LoRA extracted with LoraSave from a model
//! difference loads with LoraLoader and patches every module; UNETLoader reads a bare UNet file
//! and DiffusersLoader a diffusers folder made from the same weights, with the same pixels.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::{json, Value as Json};
use weft::engine::synth::synth_tensor;

use crate::helpers::{read_png, spawn_app, TestApp};
use crate::models::{write_checkpoint, Tiny};

/// A second tiny SD1 checkpoint: the first with every UNet and text-encoder weight moved by a
/// synthetic offset (the VAE kept).
fn write_other_checkpoint(first: &Path, path: &Path) {
    let tensors = candle_core::safetensors::load(first, &candle_core::Device::Cpu).unwrap();
    let moved: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(key, t)| {
            if key.starts_with("first_stage_model.") || !t.dtype().is_float() {
                return (key, t);
            }
            let offset = synth_tensor(&format!("other.{key}"), t.dims()).unwrap();
            let moved = (t + (offset * 0.2).unwrap()).unwrap();
            (key, moved)
        })
        .collect();
    candle_core::safetensors::save(&moved, path).unwrap();
}

async fn app_with_two_checkpoints() -> TestApp {
    let app = spawn_app().await;
    let dir = app.dir.path().join("models/checkpoints");
    write_checkpoint(&dir.join("a.safetensors"), Tiny::Sd1);
    write_other_checkpoint(&dir.join("a.safetensors"), &dir.join("b.safetensors"));
    app
}

/// Sampling and decoding nodes on `model`, `clip` and `vae` links, saving under `prefix`.
fn sample(graph: &mut Json, model: Json, clip: Json, vae: Json, prefix: &str) {
    let nodes = graph.as_object_mut().unwrap();
    let add = |nodes: &mut serde_json::Map<String, Json>, id: &str, node: Json| {
        nodes.insert(id.to_string(), node);
    };
    add(
        nodes,
        "p",
        json!({"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "a house"}}),
    );
    add(
        nodes,
        "n",
        json!({"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "blurry"}}),
    );
    add(
        nodes,
        "e",
        json!({"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}),
    );
    add(
        nodes,
        "k",
        json!({"class_type": "KSampler", "inputs": {"model": model, "seed": 3, "steps": 2, "cfg": 5.0,
        "sampler_name": "euler", "scheduler": "normal", "positive": ["p", 0], "negative": ["n", 0],
        "latent_image": ["e", 0], "denoise": 1.0}}),
    );
    add(
        nodes,
        "d",
        json!({"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": vae}}),
    );
    add(
        nodes,
        "s",
        json!({"class_type": "SaveImage", "inputs": {"images": ["d", 0], "filename_prefix": prefix}}),
    );
}

async fn run(app: &TestApp, prompt: Json) -> Json {
    app.queue_ok("/prompt", json!({"prompt": prompt})).await
}

fn pixels(app: &TestApp, prefix: &str) -> Vec<u8> {
    read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png"))).3
}

fn copy_output(app: &TestApp, from: &str, to: &str) {
    let models = app.dir.path().join("models");
    let to = models.join(to);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(app.data_dir().join("output").join(from), to).unwrap();
}

#[actix_web::test]
async fn a_saved_merge_loads_back_with_the_same_pixels() {
    let app = app_with_two_checkpoints().await;
    let mut merged = json!({
        "a": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "b": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "m": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["a", 0], "model2": ["b", 0], "ratio": 0.4}},
        "c": {"class_type": "CLIPMergeSimple", "inputs": {"clip1": ["a", 1], "clip2": ["b", 1], "ratio": 0.3}},
        "save": {"class_type": "CheckpointSave", "inputs": {"model": ["m", 0], "clip": ["c", 0], "vae": ["a", 2],
            "filename_prefix": "checkpoints/merged"}},
        "clip_save": {"class_type": "CLIPSave", "inputs": {"clip": ["c", 0], "filename_prefix": "clip/merged"}},
        "vae_save": {"class_type": "VAESave", "inputs": {"vae": ["a", 2], "filename_prefix": "vae/merged_vae"}}
    });
    sample(
        &mut merged,
        json!(["m", 0]),
        json!(["c", 0]),
        json!(["a", 2]),
        "in_memory",
    );
    run(&app, merged).await;

    let mut plain = json!({"a": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}}});
    sample(
        &mut plain,
        json!(["a", 0]),
        json!(["a", 1]),
        json!(["a", 2]),
        "plain",
    );
    run(&app, plain).await;
    assert!(
        pixels(&app, "in_memory") != pixels(&app, "plain"),
        "the merge changes the image"
    );

    // The checkpoint in ComfyUI's layout, with the prompt in its header.
    let saved = app
        .data_dir()
        .join("output/checkpoints/merged_00001_.safetensors");
    let bytes = std::fs::read(&saved).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Json = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    assert!(header["__metadata__"]["prompt"]
        .as_str()
        .unwrap()
        .contains("ModelMergeSimple"));
    assert_eq!(header["__metadata__"]["modelspec.predict_key"], "epsilon");
    for key in [
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.mid.attn_1.q.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ] {
        assert!(header.get(key).is_some(), "{key} missing");
    }
    assert_eq!(
        header["first_stage_model.decoder.mid.attn_1.q.weight"]["shape"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    copy_output(
        &app,
        "checkpoints/merged_00001_.safetensors",
        "checkpoints/merged.safetensors",
    );
    let mut reloaded = json!({"r": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "merged.safetensors"}}});
    sample(
        &mut reloaded,
        json!(["r", 0]),
        json!(["r", 1]),
        json!(["r", 2]),
        "reloaded",
    );
    run(&app, reloaded).await;
    assert!(
        pixels(&app, "reloaded") == pixels(&app, "in_memory"),
        "the saved checkpoint differs"
    );

    // CLIPSave and VAESave files load with CLIPLoader and VAELoader.
    copy_output(
        &app,
        "clip/merged_clip_l_00001_.safetensors",
        "text_encoders/merged_clip_l.safetensors",
    );
    copy_output(
        &app,
        "vae/merged_vae_00001_.safetensors",
        "vae/merged_vae.safetensors",
    );
    let mut parts = json!({
        "r": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "merged.safetensors"}},
        "cl": {"class_type": "CLIPLoader", "inputs": {"clip_name": "merged_clip_l.safetensors", "type": "stable_diffusion"}},
        "vl": {"class_type": "VAELoader", "inputs": {"vae_name": "merged_vae.safetensors"}}
    });
    sample(
        &mut parts,
        json!(["r", 0]),
        json!(["cl", 0]),
        json!(["vl", 0]),
        "parts",
    );
    run(&app, parts).await;
    assert!(
        pixels(&app, "parts") == pixels(&app, "in_memory"),
        "the saved text encoder or VAE differs"
    );
}

#[actix_web::test]
async fn merges_stack_with_loras_and_an_extracted_lora_loads() {
    let app = app_with_two_checkpoints().await;
    // A LoRA extracted from a - b at full rank (its factors clamped at their 99th percentile, as
    // ComfyUI does, and stored in f16), applied to b, brings it nearer a.
    let graph = json!({
        "a": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "b": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "d": {"class_type": "ModelMergeSubtract", "inputs": {"model1": ["a", 0], "model2": ["b", 0], "multiplier": 1.0}},
        "dc": {"class_type": "CLIPMergeSubtract", "inputs": {"clip1": ["a", 1], "clip2": ["b", 1], "multiplier": 1.0}},
        "x": {"class_type": "LoraSave", "inputs": {"filename_prefix": "loras/extracted", "rank": 64,
            "lora_type": "standard", "bias_diff": true, "model_diff": ["d", 0], "text_encoder_diff": ["dc", 0]}}
    });
    run(&app, graph).await;
    copy_output(
        &app,
        "loras/extracted_00001_.safetensors",
        "loras/extracted.safetensors",
    );

    let mut with_lora = json!({
        "b": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "l": {"class_type": "LoraLoader", "inputs": {"model": ["b", 0], "clip": ["b", 1],
            "lora_name": "extracted.safetensors", "strength_model": 1.0, "strength_clip": 1.0}},
        // Blocks merge after the LoRA: input and output blocks from b+lora, the middle from b.
        "m": {"class_type": "ModelMergeBlocks", "inputs": {"model1": ["l", 0], "model2": ["b", 0],
            "input": 1.0, "middle": 0.0, "out": 1.0}}
    });
    sample(
        &mut with_lora,
        json!(["l", 0]),
        json!(["l", 1]),
        json!(["b", 2]),
        "b_plus_lora",
    );
    let entry = run(&app, with_lora.clone()).await;
    let report = entry["outputs"]["l"]["text"].as_array().unwrap();
    assert!(
        report[0].as_str().unwrap().contains("modules patched"),
        "{report:?}"
    );
    assert_eq!(
        report.len(),
        1,
        "every key of the extracted lora matched: {report:?}"
    );

    let mut plain_a = json!({"a": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}}});
    sample(
        &mut plain_a,
        json!(["a", 0]),
        json!(["a", 1]),
        json!(["a", 2]),
        "a",
    );
    run(&app, plain_a).await;
    let mut plain_b = json!({"b": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}}});
    sample(
        &mut plain_b,
        json!(["b", 0]),
        json!(["b", 1]),
        json!(["b", 2]),
        "b",
    );
    run(&app, plain_b).await;
    let distance = |x: &[u8], y: &[u8]| -> f64 {
        x.iter()
            .zip(y)
            .map(|(p, q)| (*p as f64 - *q as f64).abs())
            .sum::<f64>()
            / x.len() as f64
    };
    let (a, b, b_lora) = (
        pixels(&app, "a"),
        pixels(&app, "b"),
        pixels(&app, "b_plus_lora"),
    );
    assert!(
        distance(&b_lora, &a) < distance(&b, &a) / 2.0,
        "b + lora(a - b) is not near a: {} vs {}",
        distance(&b_lora, &a),
        distance(&b, &a)
    );

    // The blocks merge runs on the LoRA-patched model; sampling it changes the image.
    with_lora["k"]["inputs"]["model"] = json!(["m", 0]);
    with_lora["s"]["inputs"]["filename_prefix"] = json!("blocks");
    run(&app, with_lora).await;
    assert!(pixels(&app, "blocks") != b_lora);
}

#[actix_web::test]
async fn unet_loader_reads_a_bare_unet_file() {
    let app = app_with_two_checkpoints().await;
    let models = app.dir.path().join("models");
    let all = candle_core::safetensors::load(
        models.join("checkpoints/a.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let unet: HashMap<String, Tensor> = all
        .into_iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("model.diffusion_model.")?.to_string(), t)))
        .collect();
    // The same UNet in diffusers' layout, as a pipeline's `unet/` weights file on its own.
    let diffusers: HashMap<String, Tensor> = unet
        .iter()
        .map(|(k, t)| {
            let name = weft::engine::load::keymap::unet_ldm_to_diffusers(k, 2).unwrap();
            (name, t.clone())
        })
        .collect();
    std::fs::create_dir_all(models.join("unet")).unwrap();
    candle_core::safetensors::save(&unet, models.join("unet/tiny_unet.safetensors")).unwrap();
    candle_core::safetensors::save(
        &diffusers,
        models.join("unet/tiny_unet_diffusers.safetensors"),
    )
    .unwrap();

    let (_, info) = app.get("/object_info/UNETLoader").await;
    let options = &info["UNETLoader"]["input"]["required"]["unet_name"][0];
    assert_eq!(
        options,
        &json!(["tiny_unet.safetensors", "tiny_unet_diffusers.safetensors"])
    );

    let mut graph = json!({
        "a": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "u": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_unet.safetensors", "weight_dtype": "default"}}
    });
    sample(
        &mut graph,
        json!(["u", 0]),
        json!(["a", 1]),
        json!(["a", 2]),
        "unet_only",
    );
    run(&app, graph.clone()).await;
    run_checkpoint_a(&app, "full").await;
    assert!(pixels(&app, "unet_only") == pixels(&app, "full"));

    graph["u"]["inputs"]["unet_name"] = json!("tiny_unet_diffusers.safetensors");
    graph["s"]["inputs"]["filename_prefix"] = json!("unet_diffusers");
    run(&app, graph.clone()).await;
    assert!(pixels(&app, "unet_diffusers") == pixels(&app, "full"));

    // fp8 weights (rounded as torch rounds them, widened per layer): near the full-precision
    // image, not equal to it.
    let full = pixels(&app, "full");
    for dtype in ["fp8_e4m3fn", "fp8_e5m2"] {
        graph["u"]["inputs"]["weight_dtype"] = json!(dtype);
        graph["s"]["inputs"]["filename_prefix"] = json!(dtype);
        run(&app, graph.clone()).await;
        let fp8 = pixels(&app, dtype);
        assert_eq!(fp8.len(), full.len());
        assert!(fp8 != full, "{dtype} gave the full-precision pixels");
        let mean = fp8
            .iter()
            .zip(&full)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / full.len() as f64;
        assert!(mean < 12.0, "{dtype}: mean difference {mean} levels");
    }
}

/// Writes the tiny SD1 checkpoint `ckpt` as a diffusers pipeline folder at `root`.
fn write_diffusers_folder(ckpt: &Path, root: &Path) {
    use weft::engine::load::keymap::{unet_ldm_to_diffusers, vae_ldm_to_diffusers};
    let all = candle_core::safetensors::load(ckpt, &candle_core::Device::Cpu).unwrap();
    let mut parts: HashMap<&str, HashMap<String, Tensor>> = HashMap::new();
    for (key, t) in all {
        let (sub, name) = if let Some(k) = key.strip_prefix("model.diffusion_model.") {
            ("unet", unet_ldm_to_diffusers(k, 2).unwrap())
        } else if let Some(k) = key.strip_prefix("first_stage_model.") {
            ("vae", vae_ldm_to_diffusers(k, 3).unwrap())
        } else if let Some(k) = key.strip_prefix("cond_stage_model.transformer.") {
            ("text_encoder", k.to_string())
        } else {
            continue;
        };
        parts.entry(sub).or_default().insert(name, t);
    }
    let fixture = |name: &str| crate::engine::util::fixture_path(name);
    for (sub, tensors) in parts {
        let dir = root.join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        let file = if sub == "text_encoder" {
            "model.safetensors"
        } else {
            "diffusion_pytorch_model.safetensors"
        };
        candle_core::safetensors::save(&tensors, dir.join(file)).unwrap();
        let config = match sub {
            "unet" => Some("unet_config_sd1_tiny.json"),
            "vae" => Some("vae_config_tiny.json"),
            _ => None,
        };
        if let Some(config) = config {
            std::fs::copy(fixture(config), dir.join("config.json")).unwrap();
        }
    }
    std::fs::write(root.join("model_index.json"), "{}").unwrap();
}

#[actix_web::test]
async fn diffusers_loader_reads_a_pipeline_folder() {
    let app = app_with_two_checkpoints().await;
    let models = app.dir.path().join("models");
    write_diffusers_folder(
        &models.join("checkpoints/a.safetensors"),
        &models.join("diffusers/tiny/sd1"),
    );

    let (_, info) = app.get("/object_info/DiffusersLoader").await;
    assert_eq!(
        info["DiffusersLoader"]["input"]["required"]["model_path"][0],
        json!(["tiny/sd1"])
    );

    let mut graph =
        json!({"dl": {"class_type": "DiffusersLoader", "inputs": {"model_path": "tiny/sd1"}}});
    sample(
        &mut graph,
        json!(["dl", 0]),
        json!(["dl", 1]),
        json!(["dl", 2]),
        "pipeline",
    );
    run(&app, graph).await;
    run_checkpoint_a(&app, "full").await;
    assert!(pixels(&app, "pipeline") == pixels(&app, "full"));
}

/// Samples with checkpoint `a` loaded whole, saving under `prefix`: the reference image.
async fn run_checkpoint_a(app: &TestApp, prefix: &str) {
    let mut plain = json!({"a": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}}});
    sample(
        &mut plain,
        json!(["a", 0]),
        json!(["a", 1]),
        json!(["a", 2]),
        prefix,
    );
    run(app, plain).await;
}
