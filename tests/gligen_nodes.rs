//! GLIGENLoader and GLIGENTextBoxApply through the server (issue 17), and ComfyUI's templates
//! that needed them or the upscale models (`gligen_textbox_example`, `esrgan_example`,
//! `hiresfix_esrgan_workflow`) run on tiny files. The maths is checked against ComfyUI in
//! `engine::gligen_parity`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use serde_json::{json, Value as Json};
use weft::nodes::{Inputs, Node, Value};

use crate::helpers::{comfy_template, context, read_png, shrink_editor_workflow, TestApp};
use crate::models::{write_checkpoint, Tiny};

/// The tiny SD2 UNet's transformers in LDM numbering with their channels; its text encoder's
/// pooled output is 64 wide, so the fusers have 64-wide heads (ComfyUI's rule for files whose
/// tokens are not 768 wide).
const SD2_TINY_TRANSFORMERS: [(&str, usize); 11] = [
    ("input_blocks.1", 64),
    ("input_blocks.2", 64),
    ("input_blocks.4", 128),
    ("input_blocks.5", 128),
    ("middle_block.1", 128),
    ("output_blocks.3", 128),
    ("output_blocks.4", 128),
    ("output_blocks.5", 128),
    ("output_blocks.6", 64),
    ("output_blocks.7", 64),
    ("output_blocks.8", 64),
];
const KEY_DIM: usize = 64;

/// Writes a GLIGEN file in ComfyUI's layout for the tiny SD2 model: synthetic weights, every
/// gate at `gate` (`alpha` values; 0 makes the file a no-op).
fn write_tiny_gligen(path: &Path, gate: f32) {
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    for (block, q) in SD2_TINY_TRANSFORMERS {
        let prefix = format!("{block}.1.transformer_blocks.0.fuser.");
        for (name, shape) in [
            ("linear.weight", vec![q, KEY_DIM]),
            ("linear.bias", vec![q]),
            ("attn.to_q.weight", vec![q, q]),
            ("attn.to_k.weight", vec![q, q]),
            ("attn.to_v.weight", vec![q, q]),
            ("attn.to_out.0.weight", vec![q, q]),
            ("attn.to_out.0.bias", vec![q]),
            ("ff.net.0.proj.weight", vec![8 * q, q]),
            ("ff.net.0.proj.bias", vec![8 * q]),
            ("ff.net.2.weight", vec![q, 4 * q]),
            ("ff.net.2.bias", vec![q]),
            ("norm1.weight", vec![q]),
            ("norm1.bias", vec![q]),
            ("norm2.weight", vec![q]),
            ("norm2.bias", vec![q]),
        ] {
            shapes.push((format!("{prefix}{name}"), shape));
        }
    }
    for (name, shape) in [
        ("linears.0.weight", vec![512, KEY_DIM + 64]),
        ("linears.0.bias", vec![512]),
        ("linears.2.weight", vec![512, 512]),
        ("linears.2.bias", vec![512]),
        ("linears.4.weight", vec![KEY_DIM, 512]),
        ("linears.4.bias", vec![KEY_DIM]),
        ("null_positive_feature", vec![KEY_DIM]),
        ("null_position_feature", vec![64]),
    ] {
        shapes.push((format!("position_net.{name}"), shape));
    }
    let mut gates = HashMap::new();
    for (block, _) in SD2_TINY_TRANSFORMERS {
        for alpha in ["alpha_attn", "alpha_dense"] {
            let key = format!("{block}.1.transformer_blocks.0.fuser.{alpha}");
            gates.insert(key, Tensor::new(gate, &candle_core::Device::Cpu).unwrap());
        }
    }
    crate::engine::gligen_parity::write_synthetic(path, shapes, gates);
}

/// A server with tiny files under the names ComfyUI's templates use: the SD2-like tiny model
/// where the GLIGEN template wants its SD1.5 (the tiny SD1's 32-wide transformers are too narrow
/// for a fuser head), the tiny SD1 for DreamShaper, a GLIGEN file, a tiny ESRGAN (2x).
async fn app_with_template_files() -> TestApp {
    let app = crate::helpers::spawn_app().await;
    let models = app.dir.path().join("models");
    let checkpoints = models.join("checkpoints");
    write_checkpoint(
        &checkpoints.join("v1-5-pruned-emaonly-fp16.safetensors"),
        Tiny::Sd2,
    );
    write_checkpoint(
        &checkpoints.join("DreamShaper_8_pruned.safetensors"),
        Tiny::Sd1,
    );
    write_tiny_gligen(
        &models.join("gligen/gligen_sd14_textbox_pruned.safetensors"),
        1.0,
    );
    write_tiny_gligen(&models.join("gligen/gated_off.safetensors"), 0.0);
    let upscale = models.join("upscale_models");
    std::fs::create_dir_all(&upscale).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/upscale/esrgan_plus_x2.safetensors"),
        upscale.join("RealESRGAN_x4plus.safetensors"),
    )
    .unwrap();
    app
}

async fn run(app: &TestApp, prompt: Json) -> Json {
    app.queue_ok("/prompt", json!({"prompt": prompt})).await
}

fn image_size(app: &TestApp, entry: &Json, node: &str) -> (u32, u32) {
    let image = &entry["outputs"][node]["images"][0];
    let path = app
        .data_dir()
        .join(image["type"].as_str().unwrap())
        .join(image["subfolder"].as_str().unwrap())
        .join(image["filename"].as_str().unwrap());
    let (w, h, _, _) = read_png(&path);
    (w, h)
}

#[actix_web::test]
async fn comfyui_gligen_and_esrgan_templates_run_on_tiny_files() {
    let app = app_with_template_files().await;
    let entry = run(
        &app,
        shrink_editor_workflow(comfy_template("gligen_textbox_example")),
    )
    .await;
    assert_eq!(image_size(&app, &entry, "9"), (32, 32));

    // The tiny VAE decodes 8x8 latents to 32x32 images; the tiny ESRGAN doubles them.
    let entry = run(
        &app,
        shrink_editor_workflow(comfy_template("esrgan_example")),
    )
    .await;
    assert_eq!(image_size(&app, &entry, "16"), (32, 32));
    assert_eq!(image_size(&app, &entry, "9"), (64, 64));

    // Upscaled with the model, scaled back down, encoded and sampled again at denoise 0.5.
    let entry = run(
        &app,
        shrink_editor_workflow(comfy_template("hiresfix_esrgan_workflow")),
    )
    .await;
    assert_eq!(image_size(&app, &entry, "28"), (32, 32));
    assert_eq!(image_size(&app, &entry, "12"), (96, 96));
}

/// A txt2img graph on the tiny SD2 model, with the boxes of `boxes` (GLIGEN file, x) applied to
/// the positive prompt in turn.
fn graph(boxes: &[(&str, u32)], prefix: &str) -> Json {
    let mut g = json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a landscape"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 3, "steps": 3, "cfg": 5.0,
              "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
              "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
    });
    let mut positive = json!(["6", 0]);
    for (k, (file, x)) in boxes.iter().enumerate() {
        let (loader, apply) = (format!("l{k}"), format!("b{k}"));
        g[&loader] = json!({"class_type": "GLIGENLoader", "inputs": {"gligen_name": file}});
        g[&apply] = json!({"class_type": "GLIGENTextBoxApply", "inputs": {"conditioning_to": positive,
            "clip": ["4", 1], "gligen_textbox_model": [loader, 0], "text": "a red ball",
            "width": 32, "height": 24, "x": x, "y": 8}});
        positive = json!([apply, 0]);
    }
    g["3"]["inputs"]["positive"] = positive;
    g
}

fn pixels(app: &TestApp, prefix: &str) -> Vec<u8> {
    read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png"))).3
}

#[actix_web::test]
async fn text_boxes_steer_the_sample_and_a_closed_gate_changes_nothing() {
    let app = app_with_template_files().await;
    let file = "gligen_sd14_textbox_pruned.safetensors";
    run(&app, graph(&[], "plain")).await;
    run(&app, graph(&[(file, 0)], "one")).await;
    run(&app, graph(&[(file, 0), (file, 16)], "two")).await;
    run(&app, graph(&[("gated_off.safetensors", 0)], "off")).await;
    let plain = pixels(&app, "plain");
    let one = pixels(&app, "one");
    assert!(one != plain, "a text box changes the image");
    assert!(pixels(&app, "two") != one, "a second box adds to the first");
    // Gates of tanh(0) = 0 add nothing to any block: the same image as without GLIGEN.
    assert!(pixels(&app, "off") == plain);
}

#[actix_web::test]
async fn boxes_accumulate_on_every_entry_in_latent_pixels() {
    let app = app_with_template_files().await;
    let ctx = context(&app);
    let checkpoint = app
        .dir
        .path()
        .join("models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors");
    let loaded = ctx.models.checkpoint(&checkpoint).unwrap();
    let clip = Value::Clip(weft::nodes::Clip {
        encoder: Arc::clone(loaded.clip.as_ref().unwrap()),
        clip_skip: None,
    });
    let loader = weft::nodes::gligen::GligenLoader;
    let model = loader
        .run(
            &ctx,
            &Inputs::new(vec![(
                "gligen_name".into(),
                Value::String("gligen_sd14_textbox_pruned.safetensors".into()),
            )]),
        )
        .unwrap()
        .values
        .remove(0);
    let text = |t: &str| Value::String(t.into());
    let apply = |conditioning: Value, box_text: &str, x: i128| {
        let inputs = Inputs::new(vec![
            ("conditioning_to".into(), conditioning),
            ("clip".into(), clip.clone()),
            ("gligen_textbox_model".into(), model.clone()),
            ("text".into(), text(box_text)),
            ("width".into(), Value::Int(100)),
            ("height".into(), Value::Int(64)),
            ("x".into(), Value::Int(x)),
            ("y".into(), Value::Int(15)),
        ]);
        weft::nodes::gligen::GligenTextBoxApply
            .run(&ctx, &inputs)
            .unwrap()
            .values
            .remove(0)
    };
    let entry = |v: f32| {
        weft::engine::diffusion::CondEntry::new(
            Tensor::full(v, (1, 2, 64), &candle_core::Device::Cpu).unwrap(),
            None,
        )
    };
    let start = Value::Conditioning(Arc::new(vec![entry(0.0), entry(1.0)]));
    let once = apply(start, "a cat", 40);
    let twice = apply(once.clone(), "a dog", 0);
    let Value::Conditioning(list) = twice else {
        panic!("CONDITIONING")
    };
    assert_eq!(list.len(), 2);
    for e in list.iter() {
        let boxes = &e.gligen.as_ref().unwrap().boxes;
        let geometry: Vec<_> = boxes
            .iter()
            .map(|b| (b.height, b.width, b.y, b.x))
            .collect();
        assert_eq!(geometry, [(8, 12, 1, 5), (8, 12, 1, 0)]);
        assert_eq!(boxes[0].embedding.dims(), &[1, KEY_DIM]);
        assert_eq!(boxes[0].embedding.dtype(), DType::F32);
    }
    // The input conditioning is left as it was.
    let Value::Conditioning(first) = once else {
        panic!("CONDITIONING")
    };
    assert_eq!(first[0].gligen.as_ref().unwrap().boxes.len(), 1);
}

#[actix_web::test]
async fn object_info_declares_both_nodes_as_comfyui_does_and_bad_files_fail() {
    let app = app_with_template_files().await;
    let (_, info) = app.get("/object_info").await;
    let loader = &info["GLIGENLoader"];
    assert_eq!(loader["display_name"], "GLIGENLoader");
    assert_eq!(loader["category"], "loaders");
    assert_eq!(loader["output"], json!(["GLIGEN"]));
    assert_eq!(
        loader["input"]["required"]["gligen_name"][0],
        json!([
            "gated_off.safetensors",
            "gligen_sd14_textbox_pruned.safetensors"
        ])
    );
    let apply = &info["GLIGENTextBoxApply"];
    assert_eq!(apply["category"], "conditioning/gligen");
    assert_eq!(apply["output"], json!(["CONDITIONING"]));
    let required = &apply["input"]["required"];
    assert_eq!(required["conditioning_to"], json!(["CONDITIONING"]));
    assert_eq!(required["clip"], json!(["CLIP"]));
    assert_eq!(required["gligen_textbox_model"], json!(["GLIGEN"]));
    assert_eq!(required["text"][1]["multiline"], true);
    assert_eq!(
        required["width"],
        json!(["INT", {"default": 64, "min": 8, "max": 16384, "step": 8}])
    );
    assert_eq!(
        required["x"],
        json!(["INT", {"default": 0, "min": 0, "max": 16384, "step": 8}])
    );
    assert_eq!(
        apply["input_order"]["required"],
        json!([
            "conditioning_to",
            "clip",
            "gligen_textbox_model",
            "text",
            "width",
            "height",
            "x",
            "y"
        ])
    );

    // A checkpoint is not a GLIGEN file: the loader's input is named with why.
    std::fs::copy(
        app.dir
            .path()
            .join("models/checkpoints/DreamShaper_8_pruned.safetensors"),
        app.dir.path().join("models/gligen/not_gligen.safetensors"),
    )
    .unwrap();
    let mut bad = graph(&[("not_gligen.safetensors", 0)], "bad");
    bad["3"]["inputs"]["steps"] = json!(1);
    let id = app.queue(bad, "bad").await;
    let entry = app.wait_history(&id).await;
    let error = crate::security::history_error(&entry).to_string();
    assert!(error.contains("gligen_name"), "{error}");
    assert!(error.contains("fuser"), "{error}");
}
