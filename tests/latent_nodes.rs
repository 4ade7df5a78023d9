//! The latent nodes (issue 17): values against ComfyUI's formulas
//! (`tools/parity/latent_nodes_reference.py`, fixtures in `tests/fixtures/latent/`), `.latent`
//! files, list semantics (RebatchLatents feeding VAEDecode), primitives, SaveImageWebsocket's
//! frames and bad inputs, through the real server on tiny checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value as Json};
use weft::nodes::latent_files::LoadLatent;
use weft::nodes::{Inputs, Latent, NodeError, NodeOutput, Registry, Value};

use crate::helpers::{context_in, find, read_png, spawn_app, TestApp, WsFrame};
use crate::models::install_all;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/latent")
}

fn fixtures() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture_dir().join("latent_nodes_ref.safetensors"),
        &Device::Cpu,
    )
    .expect("fixture file")
}

/// Runs node `class` directly on `inputs`.
fn run(class: &str, inputs: Vec<(&str, Value)>) -> Result<NodeOutput, NodeError> {
    let dir = tempfile::tempdir().unwrap();
    let dirs = weft::paths::DataDirs::new(dir.path(), &dir.path().join("models"));
    dirs.create().unwrap();
    let registry = Registry::standard();
    let inputs = Inputs::new(inputs.into_iter().map(|(n, v)| (n.to_owned(), v)).collect());
    registry
        .node(class)
        .expect("registered")
        .run(&context_in(dirs), &inputs)
}

fn latent(t: &Tensor) -> Value {
    Value::Latent(Latent::new(t.clone()))
}

fn samples(output: &NodeOutput) -> &Tensor {
    match &output.values[0] {
        Value::Latent(l) => &l.samples,
        other => panic!("not a latent: {other:?}"),
    }
}

/// The largest difference relative to the expected value's size, at least 1 (f32 carries about
/// 7 digits: values near 4 differ in their last bits where torch and Weft round differently).
fn max_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shape");
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    got.iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f32::max)
}

fn check(label: &str, got: &Tensor, want: &Tensor, tolerance: f32) {
    let diff = max_diff(got, want);
    println!("{label}: max |Δ|/max(1, |want|) = {diff:e}");
    assert!(diff <= tolerance, "{label}: {diff} > {tolerance}");
}

/// LatentUpscale and LatentUpscaleBy with `bislerp` against ComfyUI's `comfy.utils.bislerp`
/// (`tools/parity/bislerp_reference.py`): up by 2, by odd factors, down, one axis unchanged, a
/// batch of two with a zero vector and equal and opposite neighbours. Tolerance: 5e-5 relative:
/// near-opposite neighbours (dot -0.99) amplify f32 rounding through `acos` and `1 / sin`; a
/// float32 transcription in numpy differs from torch by 1.2e-5 there too.
#[test]
fn latent_upscale_bislerp_matches_comfyui() {
    let f =
        candle_core::safetensors::load(fixture_dir().join("bislerp_ref.safetensors"), &Device::Cpu)
            .expect("fixture file");
    let x = &f["x"];
    for (name, (width, height)) in [
        ("up2", (20, 22)),
        ("odd", (13, 9)),
        ("down", (8, 8)),
        ("same_w", (10, 17)),
    ] {
        let out = run(
            "LatentUpscale",
            vec![
                ("samples", latent(x)),
                ("upscale_method", Value::String("bislerp".into())),
                ("width", Value::Int(width * 8)),
                ("height", Value::Int(height * 8)),
                ("crop", Value::String("disabled".into())),
            ],
        )
        .unwrap();
        check(&format!("bislerp {name}"), samples(&out), &f[name], 5e-5);
    }
    let by = run(
        "LatentUpscaleBy",
        vec![
            ("samples", latent(x)),
            ("upscale_method", Value::String("bislerp".into())),
            ("scale_by", Value::Float(2.0)),
        ],
    )
    .unwrap();
    check("bislerp by 2", samples(&by), &f["up2"], 5e-5);
}

#[test]
fn latent_nodes_match_comfyui_formulas() {
    let f = fixtures();
    let t = |k: &str| f.get(k).unwrap_or_else(|| panic!("fixture {k}")).clone();
    let (a, c) = (t("a"), t("c"));
    let pair = |class: &str| {
        run(
            class,
            vec![("samples1", latent(&a)), ("samples2", latent(&c))],
        )
    };
    check(
        "LatentAdd",
        samples(&pair("LatentAdd").unwrap()),
        &t("add"),
        1e-6,
    );
    check(
        "LatentSubtract",
        samples(&pair("LatentSubtract").unwrap()),
        &t("subtract"),
        1e-6,
    );
    check(
        "LatentBatch",
        samples(&pair("LatentBatch").unwrap()),
        &t("batch"),
        1e-6,
    );
    let multiplied = run(
        "LatentMultiply",
        vec![("samples", latent(&a)), ("multiplier", Value::Float(1.7))],
    );
    check(
        "LatentMultiply",
        samples(&multiplied.unwrap()),
        &t("multiply"),
        1e-6,
    );
    for (first, second, ratio, want) in [
        ("single1", "single2", 0.3, "interpolate_single"),
        ("a4", "b4", 0.7, "interpolate_four"),
    ] {
        let out = run(
            "LatentInterpolate",
            vec![
                ("samples1", latent(&t(first))),
                ("samples2", latent(&t(second))),
                ("ratio", Value::Float(ratio)),
            ],
        );
        check(want, samples(&out.unwrap()), &t(want), 1e-6);
    }
    // The masked case is bounded by f32 itself: torch's own f32 result is 1.6e-6 (relative) from
    // its f64 one, through the mask's bilinear resize.
    for (x, y, resize, mask, want, tolerance) in [
        (16, 8, false, Some(t("mask")), "composite_mask", 2e-6),
        (0, 0, true, None, "composite_resize", 1e-6),
        (64, 40, false, None, "composite_edge", 1e-6),
    ] {
        let mut inputs = vec![
            ("destination", latent(&a)),
            ("source", latent(&c)),
            ("x", Value::Int(x)),
            ("y", Value::Int(y)),
            ("resize_source", Value::Bool(resize)),
        ];
        if let Some(mask) = mask {
            inputs.push(("mask", Value::Mask(mask)));
        }
        check(
            want,
            samples(&run("LatentCompositeMasked", inputs).unwrap()),
            &t(want),
            tolerance,
        );
    }
    for (w, h, x, y, want) in [
        (64, 40, 16, 8, "crop"),
        (128, 128, 200, 200, "crop_clamped"),
    ] {
        let inputs = vec![
            ("samples", latent(&a)),
            ("width", Value::Int(w)),
            ("height", Value::Int(h)),
            ("x", Value::Int(x)),
            ("y", Value::Int(y)),
        ];
        check(
            want,
            samples(&run("LatentCrop", inputs).unwrap()),
            &t(want),
            0.0,
        );
    }
    for (method, want) in [
        ("x-axis: vertically", "flip_x"),
        ("y-axis: horizontally", "flip_y"),
    ] {
        let out = run(
            "LatentFlip",
            vec![
                ("samples", latent(&a)),
                ("flip_method", Value::String(method.into())),
            ],
        );
        check(want, samples(&out.unwrap()), &t(want), 0.0);
    }
    for (rotation, want) in [
        ("90 degrees", "rotate_90"),
        ("180 degrees", "rotate_180"),
        ("270 degrees", "rotate_270"),
    ] {
        let out = run(
            "LatentRotate",
            vec![
                ("samples", latent(&a)),
                ("rotation", Value::String(rotation.into())),
            ],
        );
        check(want, samples(&out.unwrap()), &t(want), 0.0);
    }
}

/// An operation node's LATENT_OPERATION applied by LatentApplyOperation to `input`.
fn apply_operation(
    class: &str,
    settings: Vec<(&str, Value)>,
    input: &Tensor,
) -> Result<Tensor, NodeError> {
    let operation = run(class, settings)?.values.remove(0);
    let out = run(
        "LatentApplyOperation",
        vec![("samples", latent(input)), ("operation", operation)],
    )?;
    Ok(samples(&out).clone())
}

#[test]
fn latent_operations_match_comfyui_formulas() {
    let f = fixtures();
    let t = |k: &str| f[k].clone();
    let tonemap = |m: f64| {
        apply_operation(
            "LatentOperationTonemapReinhard",
            vec![("multiplier", Value::Float(m))],
            &t("a"),
        )
    };
    check(
        "TonemapReinhard",
        &tonemap(1.3).unwrap(),
        &t("tonemap"),
        1e-6,
    );
    // A 7x7 or 19x19 kernel summed in f32 in another order than torch's convolution.
    let sharpen = |r: i128, s: f64, al: f64, input: &Tensor| {
        apply_operation(
            "LatentOperationSharpen",
            vec![
                ("sharpen_radius", Value::Int(r)),
                ("sigma", Value::Float(s)),
                ("alpha", Value::Float(al)),
            ],
            input,
        )
    };
    check(
        "Sharpen r3",
        &sharpen(3, 1.0, 0.5, &t("a")).unwrap(),
        &t("sharpen"),
        2e-6,
    );
    check(
        "Sharpen default",
        &sharpen(9, 1.0, 0.1, &t("big")).unwrap(),
        &t("sharpen_default"),
        2e-6,
    );
    // Reflected edges need the latent to be larger than the radius: a clear error otherwise.
    let error = sharpen(9, 1.0, 0.1, &t("a")).unwrap_err().to_string();
    assert!(
        error.starts_with("input 'operation': sharpen_radius 9 needs"),
        "{error}"
    );

    // LatentApplyOperationCFG's step: operation(cond − uncond) + uncond.
    let operation = weft::nodes::latent_filters::TonemapReinhard { multiplier: 1.0 };
    let (cond, uncond) = (t("cfg_cond"), t("cfg_uncond"));
    use weft::engine::diffusion::LatentOperation;
    let got = (operation.apply(&(&cond - &uncond).unwrap()).unwrap() + &uncond).unwrap();
    check("pre-CFG tonemap", &got, &t("cfg_tonemap"), 1e-6);
}

#[test]
fn rebatch_latents_regroups_as_comfyui() {
    let f = fixtures();
    let t = |k: &str| f[k].clone();
    let masked = Value::Latent(Latent {
        samples: t("a4"),
        noise_mask: Some(t("half_mask")),
        batch_index: None,
    });
    let list = Value::List(std::sync::Arc::new(vec![
        latent(&t("a")),
        masked,
        latent(&t("c")),
    ]));
    let out = run(
        "RebatchLatents",
        vec![("latents", list), ("batch_size", Value::Int(3))],
    )
    .unwrap();
    let items = out.values[0].elements();
    let count = t("rebatch_count").to_vec1::<i64>().unwrap()[0] as usize;
    assert_eq!(items.len(), count);
    for (i, item) in items.iter().enumerate() {
        let Value::Latent(l) = item else {
            panic!("not a latent")
        };
        check(
            &format!("rebatch {i}"),
            &l.samples,
            &t(&format!("rebatch_{i}_samples")),
            0.0,
        );
        let want: Vec<usize> = t(&format!("rebatch_{i}_index"))
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as usize)
            .collect();
        assert_eq!(
            l.batch_index.as_deref(),
            Some(&want[..]),
            "rebatch {i} indices"
        );
        match (f.get(&format!("rebatch_{i}_mask")), &l.noise_mask) {
            (Some(want), Some(got)) => check(&format!("rebatch {i} mask"), got, want, 0.0),
            (None, None) => {}
            (want, got) => panic!(
                "rebatch {i}: mask expected {}, got {}",
                want.is_some(),
                got.is_some()
            ),
        }
    }
}

#[test]
fn load_latent_reads_comfyui_files_and_rescales_old_ones() {
    let f = fixtures();
    let written = std::fs::read(fixture_dir().join("comfy_written.latent")).unwrap();
    check(
        "ComfyUI's SaveLatent file",
        &LoadLatent::decode(&written).unwrap(),
        &f["a"],
        0.0,
    );
    let old = std::fs::read(fixture_dir().join("old_format.latent")).unwrap();
    let want = candle_core::safetensors::load(
        fixture_dir().join("old_format_loaded.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    check(
        "old format",
        &LoadLatent::decode(&old).unwrap(),
        &want["loaded_old"],
        1e-6,
    );
    assert!(LoadLatent::decode(b"not a latent")
        .unwrap_err()
        .starts_with("not a latent file"));
}

async fn app_with_models() -> TestApp {
    let app = spawn_app().await;
    install_all(&app.dir.path().join("models"));
    app
}

async fn run_ok(app: &TestApp, prompt: Json) -> Json {
    app.queue_ok("/prompt", json!({"prompt": prompt})).await
}

/// The history entry of a prompt that failed while running, and its error.
async fn run_failing(app: &TestApp, prompt: Json) -> Json {
    let (status, body) = app.post("/prompt", json!({"prompt": prompt})).await;
    assert_eq!(status, 200, "{body:#}");
    let entry = app.wait_history(body["prompt_id"].as_str().unwrap()).await;
    let messages = entry["status"]["messages"].as_array().unwrap().clone();
    let error = messages
        .iter()
        .find(|m| m[0] == "execution_error")
        .unwrap_or_else(|| panic!("{entry:#}"));
    error[1].clone()
}

fn checkpoint() -> Json {
    json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}})
}

#[actix_web::test]
async fn a_latent_chain_decodes_through_a_tiny_vae() {
    let app = app_with_models().await;
    let prompt = json!({
        "ckpt": checkpoint(),
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "flip": {"class_type": "LatentFlip", "inputs": {"samples": ["empty", 0], "flip_method": "x-axis: vertically"}},
        "rot": {"class_type": "LatentRotate", "inputs": {"samples": ["flip", 0], "rotation": "90 degrees"}},
        "small": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 48, "batch_size": 1}},
        "add": {"class_type": "LatentAdd", "inputs": {"samples1": ["rot", 0], "samples2": ["small", 0]}},
        "mul": {"class_type": "LatentMultiply", "inputs": {"samples": ["add", 0], "multiplier": 2.5}},
        "sharpen": {"class_type": "LatentOperationSharpen", "inputs": {"sharpen_radius": 3, "sigma": 1.0, "alpha": 0.1}},
        "apply": {"class_type": "LatentApplyOperation", "inputs": {"samples": ["mul", 0], "operation": ["sharpen", 0]}},
        "batch": {"class_type": "LatentBatch", "inputs": {"samples1": ["apply", 0], "samples2": ["small", 0]}},
        "seed": {"class_type": "LatentBatchSeedBehavior", "inputs": {"samples": ["batch", 0], "seed_behavior": "fixed"}},
        "comp": {"class_type": "LatentCompositeMasked", "inputs": {"destination": ["seed", 0], "source": ["small", 0], "x": 8, "y": 8, "resize_source": false}},
        "crop": {"class_type": "LatentCrop", "inputs": {"samples": ["comp", 0], "width": 64, "height": 64, "x": 0, "y": 0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["crop", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "chain"}},
    });
    let entry = run_ok(&app, prompt).await;
    let images = entry["outputs"]["save"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 3, "two latents plus one batched on");
    let (w, h, _, _) = read_png(&app.data_dir().join("output/chain_00003_.png"));
    assert_eq!(
        (w, h),
        (32, 32),
        "an 8×8 latent decodes to 32×32 on the tiny VAE"
    );
}

#[actix_web::test]
async fn latent_apply_operation_cfg_changes_what_the_sampler_makes() {
    let app = app_with_models().await;
    let graph = |patched: bool, prefix: &str| {
        let model = if patched {
            json!(["cfg_op", 0])
        } else {
            json!(["ckpt", 0])
        };
        json!({
            "ckpt": checkpoint(),
            "op": {"class_type": "LatentOperationTonemapReinhard", "inputs": {"multiplier": 0.2}},
            "cfg_op": {"class_type": "LatentApplyOperationCFG", "inputs": {"model": ["ckpt", 0], "operation": ["op", 0]}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle", "clip": ["ckpt", 1]}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "text", "clip": ["ckpt", 1]}},
            "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "k": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 2, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
                  "denoise": 1.0, "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0]}},
            "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["ckpt", 2]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": prefix}},
        })
    };
    run_ok(&app, graph(false, "plain")).await;
    run_ok(&app, graph(true, "patched")).await;
    let (_, _, _, plain) = read_png(&app.data_dir().join("output/plain_00001_.png"));
    let (_, _, _, patched) = read_png(&app.data_dir().join("output/patched_00001_.png"));
    assert_ne!(plain, patched, "the operation acts on the guidance");
}

#[actix_web::test]
async fn save_latent_then_load_latent_round_trips_and_reads_comfyui_files() {
    let app = spawn_app().await;
    let input = app.data_dir().join("input");
    std::fs::copy(
        fixture_dir().join("comfy_written.latent"),
        input.join("comfy_written.latent"),
    )
    .unwrap();
    let (_, info) = app.get("/object_info/LoadLatent").await;
    assert_eq!(
        info["LoadLatent"]["input"]["required"]["latent"][0],
        json!(["comfy_written.latent"])
    );

    let save = |from: Json, prefix: &str| {
        json!({
            "load": {"class_type": "LoadLatent", "inputs": {"latent": from}},
            "save": {"class_type": "SaveLatent", "inputs": {"samples": ["load", 0], "filename_prefix": prefix}},
        })
    };
    let entry = run_ok(&app, save(json!("comfy_written.latent"), "latents/rt")).await;
    assert_eq!(
        entry["outputs"]["save"],
        json!({"latents": [{"filename": "rt_00001_.latent", "subfolder": "latents", "type": "output"}]})
    );
    let path = app.data_dir().join("output/latents/rt_00001_.latent");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("latent_format_version_0").unwrap().shape(), [0]);
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = metadata.metadata().clone().unwrap();
    let prompt: Json = serde_json::from_str(&metadata["prompt"]).unwrap();
    assert_eq!(prompt["save"]["class_type"], "SaveLatent");
    let a = &fixtures()["a"];
    check("saved", &LoadLatent::decode(&bytes).unwrap(), a, 0.0);

    // Loaded back from the output folder (an annotated name), saved again: the same samples,
    // the counter moved on.
    let entry = run_ok(
        &app,
        save(json!("latents/rt_00001_.latent [output]"), "latents/rt"),
    )
    .await;
    assert_eq!(
        entry["outputs"]["save"]["latents"][0]["filename"],
        "rt_00002_.latent"
    );
    let again = std::fs::read(app.data_dir().join("output/latents/rt_00002_.latent")).unwrap();
    check("round trip", &LoadLatent::decode(&again).unwrap(), a, 0.0);
}

#[actix_web::test]
async fn rebatch_latents_splits_five_into_batches_of_two_each_decoded() {
    let app = app_with_models().await;
    let mut ws = app.ws("rb").await;
    let prompt = json!({
        "ckpt": checkpoint(),
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 5}},
        "rebatch": {"class_type": "RebatchLatents", "inputs": {"latents": ["empty", 0], "batch_size": 2}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["rebatch", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "rb"}},
        "count": {"class_type": "RebatchImages", "inputs": {"images": ["dec", 0], "batch_size": 4}},
        "save_count": {"class_type": "SaveImage", "inputs": {"images": ["count", 0], "filename_prefix": "rbc"}},
    });
    let id = app.queue(prompt.clone(), "rb").await;
    let events = ws.until_done(&id).await;
    assert!(find(&events, "execution_success").is_some(), "{events:#?}");
    // One `executing` per node, however many times it ran; SaveImage's UI joins its three runs.
    let executing_dec = events
        .iter()
        .filter(|e| e["type"] == "executing" && e["data"]["node"] == "dec")
        .count();
    assert_eq!(executing_dec, 1);
    let entry = app.wait_history(&id).await;
    let names: Vec<&str> = entry["outputs"]["save"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["filename"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "rb_00001_.png",
            "rb_00002_.png",
            "rb_00003_.png",
            "rb_00004_.png",
            "rb_00005_.png"
        ]
    );
    // The decoded list is 2 + 2 + 1 images, regrouped as 4 + 1.
    assert_eq!(
        entry["outputs"]["save_count"]["images"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    // The same prompt again comes from the cache, lists and all.
    let id = app.queue(prompt, "rb").await;
    let events = ws.until_done(&id).await;
    let cached = find(&events, "execution_cached").unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(cached["nodes"].as_array().unwrap().len(), 7);
    let entry = app.wait_history(&id).await;
    assert_eq!(
        entry["outputs"]["save"]["images"].as_array().unwrap().len(),
        5
    );
}

#[actix_web::test]
async fn primitives_feed_an_empty_latent_image() {
    let app = app_with_models().await;
    let prompt = json!({
        "ckpt": checkpoint(),
        "size": {"class_type": "PrimitiveInt", "inputs": {"value": 64}},
        "count": {"class_type": "PrimitiveInt", "inputs": {"value": 2}},
        "gain": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.5}},
        "prefix": {"class_type": "PrimitiveString", "inputs": {"value": "prim"}},
        "text": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "latents/multi"}},
        "flag": {"class_type": "PrimitiveBoolean", "inputs": {"value": true}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": ["size", 0], "height": ["size", 0], "batch_size": ["count", 0]}},
        "mul": {"class_type": "LatentMultiply", "inputs": {"samples": ["empty", 0], "multiplier": ["gain", 0]}},
        "comp": {"class_type": "LatentCompositeMasked", "inputs": {"destination": ["mul", 0], "source": ["empty", 0], "x": 0, "y": 0, "resize_source": ["flag", 0]}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["comp", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": ["prefix", 0]}},
        "keep": {"class_type": "SaveLatent", "inputs": {"samples": ["comp", 0], "filename_prefix": ["text", 0]}},
    });
    let entry = run_ok(&app, prompt).await;
    assert_eq!(
        entry["outputs"]["keep"]["latents"][0]["filename"],
        "multi_00001_.latent"
    );
    assert_eq!(
        entry["outputs"]["save"]["images"].as_array().unwrap().len(),
        2
    );
    let (w, h, _, _) = read_png(&app.data_dir().join("output/prim_00002_.png"));
    assert_eq!((w, h), (32, 32));
}

#[actix_web::test]
async fn save_image_websocket_sends_each_image_as_a_png_frame() {
    let app = spawn_app().await;
    let mut ws = app.ws("wsimg").await;
    let prompt = json!({
        "img": {"class_type": "EmptyImage", "inputs": {"width": 12, "height": 8, "batch_size": 2, "color": 0x336699}},
        "send": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["img", 0]}},
    });
    for round in 0..2 {
        let id = app.queue(prompt.clone(), "wsimg").await;
        let mut frames = Vec::new();
        let mut progress = Vec::new();
        loop {
            match ws.next_frame().await.expect("socket open") {
                WsFrame::Binary(bytes) => frames.push(bytes),
                WsFrame::Text(event) => {
                    if event["type"] == "progress" {
                        progress
                            .push((event["data"]["value"].clone(), event["data"]["max"].clone()));
                    }
                    if event["type"] == "executing"
                        && event["data"]["node"].is_null()
                        && event["data"]["prompt_id"] == id
                    {
                        break;
                    }
                }
            }
        }
        // Never cached: every run sends its images.
        assert_eq!(frames.len(), 2, "round {round}");
        assert_eq!(progress, [(json!(0), json!(2)), (json!(1), json!(2))]);
        for frame in &frames {
            assert_eq!(&frame[..8], &[0, 0, 0, 1, 0, 0, 0, 2], "PREVIEW_IMAGE, PNG");
            let decoder = png::Decoder::new(std::io::Cursor::new(&frame[8..]));
            let mut reader = decoder.read_info().unwrap();
            let mut pixels = vec![0; reader.output_buffer_size()];
            let info = reader.next_frame(&mut pixels).unwrap();
            assert_eq!(
                (info.width, info.height, info.color_type),
                (12, 8, png::ColorType::Rgb)
            );
            assert_eq!(&pixels[..3], &[0x33, 0x66, 0x99]);
        }
        let entry = app.wait_history(&id).await;
        assert_eq!(entry["status"]["status_str"], "success");
    }
}

#[actix_web::test]
async fn object_info_lists_the_classes_with_comfyui_inputs_and_list_flags() {
    let app = spawn_app().await;
    let (_, info) = app.get("/object_info").await;
    let required = |class: &str| -> Vec<String> {
        let mut names: Vec<String> = info[class]["input_order"]["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{class} missing"))
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        if let Some(optional) = info[class]["input_order"]["optional"].as_array() {
            names.extend(optional.iter().map(|n| n.as_str().unwrap().to_owned()));
        }
        names
    };
    for (class, inputs) in [
        ("LatentAdd", &["samples1", "samples2"][..]),
        ("LatentSubtract", &["samples1", "samples2"]),
        ("LatentMultiply", &["samples", "multiplier"]),
        ("LatentInterpolate", &["samples1", "samples2", "ratio"]),
        ("LatentBatch", &["samples1", "samples2"]),
        ("LatentBatchSeedBehavior", &["samples", "seed_behavior"]),
        (
            "LatentCompositeMasked",
            &["destination", "source", "x", "y", "resize_source", "mask"],
        ),
        ("LatentCrop", &["samples", "width", "height", "x", "y"]),
        ("LatentFlip", &["samples", "flip_method"]),
        ("LatentRotate", &["samples", "rotation"]),
        ("RebatchLatents", &["latents", "batch_size"]),
        ("RebatchImages", &["images", "batch_size"]),
        ("LoadLatent", &["latent"]),
        ("SaveLatent", &["samples", "filename_prefix"]),
        ("LatentApplyOperation", &["samples", "operation"]),
        ("LatentApplyOperationCFG", &["model", "operation"]),
        (
            "LatentOperationSharpen",
            &["sharpen_radius", "sigma", "alpha"],
        ),
        ("LatentOperationTonemapReinhard", &["multiplier"]),
        ("PrimitiveInt", &["value"]),
        ("PrimitiveFloat", &["value"]),
        ("PrimitiveString", &["value"]),
        ("PrimitiveStringMultiline", &["value"]),
        ("PrimitiveBoolean", &["value"]),
        ("SaveImageWebsocket", &["images"]),
    ] {
        assert_eq!(required(class), inputs, "{class}");
        assert!(info[class].get("output_is_list").is_some(), "{class}");
    }
    for class in ["RebatchLatents", "RebatchImages"] {
        assert_eq!(info[class]["output_is_list"], json!([true]), "{class}");
        assert_eq!(info[class]["is_input_list"], json!(true), "{class}");
    }
    assert_eq!(info["LatentAdd"]["output_is_list"], json!([false]));
    assert!(info["LatentAdd"].get("is_input_list").is_none());
    assert_eq!(
        info["LatentOperationSharpen"]["output"],
        json!(["LATENT_OPERATION"])
    );
    assert_eq!(
        info["LatentBatchSeedBehavior"]["input"]["required"]["seed_behavior"],
        json!([["random", "fixed"], {"default": "fixed"}])
    );
    assert_eq!(info["LatentRotate"]["display_name"], "Rotate Latent");
    assert_eq!(
        info["PrimitiveStringMultiline"]["display_name"],
        "String (Multiline)"
    );
    assert_eq!(
        info["SaveLatent"]["input"]["required"]["filename_prefix"][1]["default"],
        "latents/ComfyUI"
    );
}

/// A LATENT of 3 channels, written as a `.latent` file into the input folder.
fn write_three_channel_latent(app: &TestApp) {
    let samples = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let mut tensors = HashMap::new();
    tensors.insert("latent_tensor".to_owned(), samples);
    tensors.insert(
        "latent_format_version_0".to_owned(),
        Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, app.data_dir().join("input/three.latent")).unwrap();
}

#[actix_web::test]
async fn bad_latent_inputs_name_the_node_input() {
    let app = spawn_app().await;
    write_three_channel_latent(&app);
    std::fs::write(app.dir.path().join("data/secret.latent"), b"x").unwrap();
    let empty = json!({"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}});

    // Shape mismatches fail the node with the input named.
    for (class, second) in [("LatentAdd", "samples2"), ("LatentBatch", "samples2")] {
        let prompt = json!({
            "empty": empty,
            "three": {"class_type": "LoadLatent", "inputs": {"latent": "three.latent"}},
            "op": {"class_type": class, "inputs": {"samples1": ["empty", 0], "samples2": ["three", 0]}},
            "save": {"class_type": "SaveLatent", "inputs": {"samples": ["op", 0], "filename_prefix": "x"}},
        });
        let error = run_failing(&app, prompt).await;
        assert_eq!(error["node_id"], "op");
        let message = error["exception_message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("input '{second}': has 3 channels")),
            "{message}"
        );
    }
    let prompt = json!({
        "empty": empty,
        "op": {"class_type": "LatentInterpolate", "inputs": {"samples1": ["empty", 0], "samples2": ["empty", 0], "ratio": 0.5}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["op", 0], "filename_prefix": "x"}},
    });
    let error = run_failing(&app, prompt).await;
    assert!(error["exception_message"]
        .as_str()
        .unwrap()
        .starts_with("input 'samples1': ComfyUI's LatentInterpolate takes"));

    // A missing file and a name leaving the input folder are refused when queued.
    for (name, expected) in [
        ("nope.latent", "Invalid latent file: nope.latent"),
        ("../secret.latent", "contains '..'"),
    ] {
        let prompt = json!({
            "load": {"class_type": "LoadLatent", "inputs": {"latent": name}},
            "save": {"class_type": "SaveLatent", "inputs": {"samples": ["load", 0], "filename_prefix": "x"}},
        });
        let (status, body) = app.post("/prompt", json!({"prompt": prompt})).await;
        assert_eq!(status, 400, "{body:#}");
        let error = &body["node_errors"]["load"]["errors"][0];
        assert_eq!(error["extra_info"]["input_name"], "latent", "{body:#}");
        assert!(
            error["details"].as_str().unwrap().contains(expected),
            "{body:#}"
        );
        assert!(
            !error["details"]
                .as_str()
                .unwrap()
                .contains(&app.data_dir().display().to_string()),
            "{body:#}"
        );
    }
}
