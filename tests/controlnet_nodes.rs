//! ControlNet through the server: ComfyUI's three ControlNet templates on tiny files, strength 0
//! and the start/end window, stacking, and bad inputs (issue 7).

use serde_json::{json, Value as Json};

use crate::helpers::{comfy_template, read_png, shrink_editor_workflow, TestApp};
use crate::models::{write_checkpoint, Tiny};

/// Writes the tiny SD1 ControlNet (the parity fixture's architecture, synthetic weights) in the LDM
/// layout under `control_model.`.
pub(crate) fn write_controlnet(dir: &std::path::Path, name: &str) {
    let rows = crate::engine::controlnet_parity::keymap("keymap_controlnet_sd1_tiny.json");
    crate::engine::controlnet_parity::write_weights(dir, name, &rows, |r| {
        Some(format!("control_model.{}", r.0))
    });
}

async fn app_with_controlnets() -> TestApp {
    app_with_controlnets_on(|_| {}).await
}

async fn app_with_controlnets_on(adjust: impl FnOnce(&mut weft::app::ServerConfig)) -> TestApp {
    let app = crate::helpers::spawn_app_with(adjust).await;
    let models = app.dir.path().join("models");
    for ckpt in [
        "DreamShaper_8_pruned.safetensors",
        "architecturerealmix_v11.safetensors",
        "awpainting_v14.safetensors",
        "tiny_sd1.safetensors",
    ] {
        write_checkpoint(&models.join("checkpoints").join(ckpt), Tiny::Sd1);
    }
    write_checkpoint(
        &models.join("checkpoints/tiny_sdxl.safetensors"),
        Tiny::Sdxl,
    );
    for cn in [
        "control_v11p_sd15_scribble_fp16.safetensors",
        "control_v11f1p_sd15_depth_fp16.safetensors",
        "control_v11p_sd15_openpose_fp16.safetensors",
    ] {
        write_controlnet(&models.join("controlnet"), cn);
    }
    let vae = crate::engine::load::ldm_tensors("vae_tiny", "", candle_core::DType::F32);
    candle_core::safetensors::save(
        &vae,
        models.join("vae/vae-ft-mse-840000-ema-pruned.safetensors"),
    )
    .unwrap();
    for image in [
        "controlnet_example_input_image.png",
        "depth_controlnet_input_image.png",
        "mixing_controlnets_scribble_input.png",
        "mixing_controlnets_pose_input.png",
        "hint.png",
    ] {
        std::fs::write(
            app.data_dir().join("input").join(image),
            crate::server::png_bytes(48, 40, [200, 60, 20, 255]),
        )
        .unwrap();
    }
    std::fs::write(
        app.data_dir().join("input/hint_alpha.png"),
        crate::server::png_bytes(37, 53, [10, 200, 60, 90]),
    )
    .unwrap();
    app
}

async fn run(app: &TestApp, prompt: Json) -> Json {
    app.queue_ok("/prompt", json!({"prompt": prompt})).await
}

#[actix_web::test]
async fn comfyui_controlnet_templates_run_on_tiny_files() {
    let app = app_with_controlnets().await;
    for name in [
        "controlnet_example",
        "depth_controlnet",
        "mixing_controlnets",
    ] {
        let entry = run(&app, shrink_editor_workflow(comfy_template(name))).await;
        assert!(!entry["outputs"].as_object().unwrap().is_empty(), "{name}");
    }
    // The ControlNets are held by the model manager, within its budget, like checkpoints. Models
    // are keyed by content: the three checkpoint names are one tiny SD1 file's bytes, and the three
    // ControlNet names one ControlNet's, so the manager holds a checkpoint, the VAE and a ControlNet.
    let (_, stats) = app.get("/system_stats").await;
    assert_eq!(stats["weft"]["models_loaded"], 3, "{}", stats["weft"]);
    app.post("/free", json!({"unload_models": true})).await;
    let (_, stats) = app.get("/system_stats").await;
    assert_eq!(stats["weft"]["models_loaded"], 0);
}

/// A txt2img graph with one ControlNet on both conditionings.
fn graph(strength: f64, start: f64, end: f64, image: &str, ckpt: &str, prefix: &str) -> Json {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a house"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "l": {"class_type": "LoadImage", "inputs": {"image": image}},
        "c": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_v11p_sd15_scribble_fp16.safetensors"}},
        "a": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["c", 0],
              "image": ["l", 0], "strength": strength, "start_percent": start, "end_percent": end}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 8, "steps": 4, "cfg": 5.0, "sampler_name": "euler",
              "scheduler": "normal", "positive": ["a", 0], "negative": ["a", 1], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
    })
}

fn without_controlnet(prefix: &str) -> Json {
    let mut g = graph(1.0, 0.0, 1.0, "hint.png", "tiny_sd1.safetensors", prefix);
    let graph = g.as_object_mut().unwrap();
    for id in ["l", "c", "a"] {
        graph.remove(id);
    }
    graph["3"]["inputs"]["positive"] = json!(["6", 0]);
    graph["3"]["inputs"]["negative"] = json!(["7", 0]);
    g
}

fn pixels(app: &TestApp, prefix: &str) -> Vec<u8> {
    read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png"))).3
}

#[actix_web::test]
async fn strength_zero_and_the_step_window_leave_the_result_as_without_controlnet() {
    let app = app_with_controlnets().await;
    run(&app, without_controlnet("plain")).await;
    run(
        &app,
        graph(1.0, 0.0, 1.0, "hint.png", "tiny_sd1.safetensors", "full"),
    )
    .await;
    run(
        &app,
        graph(0.0, 0.0, 1.0, "hint.png", "tiny_sd1.safetensors", "zero"),
    )
    .await;
    // A window at the very end of the schedule (sigma 0): no sampled sigma falls inside it.
    run(
        &app,
        graph(1.0, 1.0, 1.0, "hint.png", "tiny_sd1.safetensors", "late"),
    )
    .await;
    // A window covering only the first step: the control acts, the result differs from both.
    run(
        &app,
        graph(1.0, 0.0, 0.2, "hint.png", "tiny_sd1.safetensors", "early"),
    )
    .await;
    let plain = pixels(&app, "plain");
    assert!(
        pixels(&app, "full") != plain,
        "the ControlNet changes the image"
    );
    assert!(
        pixels(&app, "zero") == plain,
        "strength 0 is the same as no ControlNet"
    );
    assert!(
        pixels(&app, "late") == plain,
        "outside the window no residuals are added"
    );
    let early = pixels(&app, "early");
    assert!(early != plain && early != pixels(&app, "full"));

    // Two ControlNets stack (their residuals add): different from one.
    let mut stacked = graph(1.0, 0.0, 1.0, "hint.png", "tiny_sd1.safetensors", "stacked");
    stacked["b"] = json!({"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["a", 0], "negative": ["a", 1], "control_net": ["c", 0],
        "image": ["l", 0], "strength": 0.5, "start_percent": 0.0, "end_percent": 1.0}});
    stacked["3"]["inputs"]["positive"] = json!(["b", 0]);
    stacked["3"]["inputs"]["negative"] = json!(["b", 1]);
    run(&app, stacked).await;
    assert!(pixels(&app, "stacked") != pixels(&app, "full"));

    // A hint of odd size with alpha is resized and its alpha dropped.
    run(
        &app,
        graph(
            1.0,
            0.0,
            1.0,
            "hint_alpha.png",
            "tiny_sd1.safetensors",
            "alpha",
        ),
    )
    .await;
}

/// ComfyUI's old ControlNetApply also gives its control to the negative side when that has none
/// (`control_apply_to_uncond`): the same image as ControlNetApplyAdvanced on both sides. (Without
/// this, Weft differed from ComfyUI by up to 20/255 on a full-size SD1.5 ControlNet graph.)
#[actix_web::test]
async fn the_old_apply_node_controls_the_negative_side_too_as_comfyui_does() {
    let app = app_with_controlnets().await;
    run(
        &app,
        graph(
            0.8,
            0.0,
            1.0,
            "hint.png",
            "tiny_sd1.safetensors",
            "advanced",
        ),
    )
    .await;
    let old = |prefix: &str, negative: Json| {
        let mut g = graph(0.8, 0.0, 1.0, "hint.png", "tiny_sd1.safetensors", prefix);
        g["a"] = json!({"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["c", 0],
            "image": ["l", 0], "strength": 0.8}});
        g["3"]["inputs"]["positive"] = json!(["a", 0]);
        g["3"]["inputs"]["negative"] = negative;
        g
    };
    run(&app, old("old", json!(["7", 0]))).await;
    assert!(pixels(&app, "old") == pixels(&app, "advanced"));

    // A negative side with a control of its own keeps it alone.
    let mut own = old("own", json!(["n", 0]));
    own["n"] = json!({"class_type": "ControlNetApply", "inputs": {"conditioning": ["7", 0], "control_net": ["c", 0],
        "image": ["l", 0], "strength": 0.3}});
    run(&app, own).await;
    let mut both = graph(0.8, 0.0, 1.0, "hint.png", "tiny_sd1.safetensors", "both");
    both["a"]["inputs"]["negative"] = json!(["7", 0]);
    both["3"]["inputs"]["negative"] = json!(["n", 0]);
    both["n"] = json!({"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["7", 0], "negative": ["7", 0],
        "control_net": ["c", 0], "image": ["l", 0], "strength": 0.3, "start_percent": 0.0, "end_percent": 1.0}});
    run(&app, both).await;
    assert!(pixels(&app, "own") == pixels(&app, "both"));
}

#[actix_web::test]
async fn wrong_family_and_corrupt_controlnets_are_clear_errors() {
    let app = app_with_controlnets().await;
    // An SD1 ControlNet on an SDXL model: the error names the mismatch, on the sampler.
    let (_, body) = app
        .post(
            "/prompt",
            json!({"prompt": graph(1.0, 0.0, 1.0, "hint.png", "tiny_sdxl.safetensors", "xl")}),
        )
        .await;
    let entry = app.wait_history(body["prompt_id"].as_str().unwrap()).await;
    assert_eq!(entry["status"]["status_str"], "error");
    let error = &entry["status"]["messages"][2][1];
    assert_eq!(error["node_id"], "3", "{error}");
    assert!(
        error["exception_message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("controlnet"),
        "{error}"
    );

    let dir = app.dir.path().join("models/controlnet");
    let good = std::fs::read(dir.join("control_v11p_sd15_scribble_fp16.safetensors")).unwrap();
    std::fs::write(dir.join("broken.safetensors"), &good[..good.len() / 3]).unwrap();
    let mut prompt = graph(1.0, 0.0, 1.0, "hint.png", "tiny_sd1.safetensors", "broken");
    prompt["c"]["inputs"]["control_net_name"] = json!("broken.safetensors");
    let (_, body) = app.post("/prompt", json!({"prompt": prompt})).await;
    let entry = app.wait_history(body["prompt_id"].as_str().unwrap()).await;
    let error = &entry["status"]["messages"][2][1];
    assert_eq!(error["node_id"], "c", "{error}");
    assert!(
        error["exception_message"]
            .as_str()
            .unwrap()
            .contains("broken.safetensors"),
        "{error}"
    );
    // Still serving.
    run(&app, without_controlnet("after")).await;
}

/// Writes a tiny T2I-Adapter (a parity fixture's architecture, synthetic weights): `names` picks
/// the TencentARC/ComfyUI key (`true`) or the diffusers key of each row.
fn write_adapter(dir: &std::path::Path, fixture: &str, name: &str, tencentarc: bool) {
    let rows = crate::engine::controlnet_parity::keymap(&format!("keymap_adapter_{fixture}.json"));
    crate::engine::controlnet_parity::write_weights(dir, name, &rows, |r| {
        Some(if tencentarc { r.0.clone() } else { r.1.clone() })
    });
}

/// The tiny ControlNets plus T2I-Adapters (SD1 full and light, SDXL) and an SD1 Control-LoRA.
async fn app_with_adapters() -> TestApp {
    app_with_adapters_on(|_| {}).await
}

async fn app_with_adapters_on(adjust: impl FnOnce(&mut weft::app::ServerConfig)) -> TestApp {
    let app = app_with_controlnets_on(adjust).await;
    let dir = app.dir.path().join("models/controlnet");
    write_adapter(
        &dir,
        "full_sd1_tiny",
        "t2iadapter_canny_sd15v2.safetensors",
        true,
    );
    // ComfyUI's other ControlNet folder: the loader lists and finds files there too.
    let t2i_dir = app.dir.path().join("models/t2i_adapter");
    std::fs::create_dir_all(&t2i_dir).unwrap();
    write_adapter(
        &t2i_dir,
        "light_sd1_tiny",
        "t2iadapter_light.safetensors",
        true,
    );
    write_adapter(
        &dir,
        "xl_sdxl_tiny",
        "t2i-adapter-canny-sdxl.safetensors",
        false,
    );
    candle_core::safetensors::save(
        &crate::engine::controlnet_parity::control_lora_tensors(),
        dir.join("control-lora-canny-rank128.safetensors"),
    )
    .unwrap();
    app
}

/// [`graph`] with another control file.
fn graph_with(
    control: &str,
    strength: f64,
    start: f64,
    end: f64,
    ckpt: &str,
    prefix: &str,
) -> Json {
    let mut g = graph(strength, start, end, "hint.png", ckpt, prefix);
    g["c"]["inputs"]["control_net_name"] = json!(control);
    g
}

/// Adds a second apply node `b` (loading `control`) after `a`, feeding the sampler.
fn stack(mut g: Json, control: &str, strength: f64) -> Json {
    g["c2"] = json!({"class_type": "ControlNetLoader", "inputs": {"control_net_name": control}});
    g["b"] = json!({"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["a", 0], "negative": ["a", 1],
        "control_net": ["c2", 0], "image": ["l", 0], "strength": strength, "start_percent": 0.0, "end_percent": 1.0}});
    g["3"]["inputs"]["positive"] = json!(["b", 0]);
    g["3"]["inputs"]["negative"] = json!(["b", 1]);
    g
}

async fn run_error(app: &TestApp, prompt: Json) -> Json {
    let (status, body) = app.post("/prompt", json!({"prompt": prompt})).await;
    assert_eq!(status, 200, "{body}");
    let entry = app.wait_history(body["prompt_id"].as_str().unwrap()).await;
    assert_eq!(entry["status"]["status_str"], "error");
    entry["status"]["messages"][2][1].clone()
}

#[actix_web::test]
async fn t2i_adapters_apply_in_sampling_with_strength_window_and_stacking() {
    let app = app_with_adapters().await;
    let adapter = "t2iadapter_canny_sd15v2.safetensors";
    let sd1 = "tiny_sd1.safetensors";
    run(&app, without_controlnet("plain")).await;
    run(&app, graph_with(adapter, 1.0, 0.0, 1.0, sd1, "adapter")).await;
    run(
        &app,
        graph_with(adapter, 0.0, 0.0, 1.0, sd1, "adapter_zero"),
    )
    .await;
    // A window at the very end of the schedule: no sampled sigma falls inside it.
    run(
        &app,
        graph_with(adapter, 1.0, 1.0, 1.0, sd1, "adapter_late"),
    )
    .await;
    run(
        &app,
        graph_with(adapter, 1.0, 0.0, 0.2, sd1, "adapter_early"),
    )
    .await;
    let plain = pixels(&app, "plain");
    let full = pixels(&app, "adapter");
    assert!(full != plain, "the adapter changes the image");
    assert!(
        pixels(&app, "adapter_zero") == plain,
        "strength 0 is no adapter"
    );
    assert!(
        pixels(&app, "adapter_late") == plain,
        "outside the window nothing is added"
    );
    let early = pixels(&app, "adapter_early");
    assert!(early != plain && early != full);

    // A ControlNet and an adapter stack; so do two adapters (full and light).
    let controlnet = "control_v11p_sd15_scribble_fp16.safetensors";
    run(
        &app,
        graph_with(controlnet, 1.0, 0.0, 1.0, sd1, "controlnet"),
    )
    .await;
    run(
        &app,
        stack(
            graph_with(controlnet, 1.0, 0.0, 1.0, sd1, "cn_adapter"),
            adapter,
            1.0,
        ),
    )
    .await;
    let both = pixels(&app, "cn_adapter");
    assert!(both != pixels(&app, "controlnet") && both != full);
    run(
        &app,
        stack(
            graph_with(adapter, 1.0, 0.0, 1.0, sd1, "two_adapters"),
            "t2iadapter_light.safetensors",
            0.5,
        ),
    )
    .await;
    assert!(pixels(&app, "two_adapters") != full);

    // The SDXL adapter (diffusers names) on the SDXL model, its last feature on the mid block.
    let xl = "t2i-adapter-canny-sdxl.safetensors";
    let sdxl = "tiny_sdxl.safetensors";
    run(&app, graph_with(xl, 1.0, 0.0, 1.0, sdxl, "xl")).await;
    run(&app, graph_with(xl, 0.0, 0.0, 1.0, sdxl, "xl_zero")).await;
    assert!(pixels(&app, "xl") != pixels(&app, "xl_zero"));

    // An adapter of the other family: the sampler's error names the apply node, its input and
    // both families.
    for (control, ckpt) in [(xl, sd1), (adapter, sdxl)] {
        let error = run_error(&app, graph_with(control, 1.0, 0.0, 1.0, ckpt, "wrong")).await;
        assert_eq!(error["node_id"], "3", "{error}");
        let message = error["exception_message"].as_str().unwrap();
        for part in ["control_net of node 'a'", "t2i-adapter", "sdxl", "sd1"] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }
}

#[actix_web::test]
async fn control_lora_is_built_on_the_sampled_model() {
    let app = app_with_adapters().await;
    let lora = "control-lora-canny-rank128.safetensors";
    run(&app, without_controlnet("plain")).await;
    let model_bytes = |stats: &serde_json::Value| stats["weft"]["model_bytes"].as_u64().unwrap();
    let before = model_bytes(&app.get("/system_stats").await.1);
    run(
        &app,
        graph_with(lora, 1.0, 0.0, 1.0, "tiny_sd1.safetensors", "control_lora"),
    )
    .await;
    // The ControlNet built from the file counts against the model budget, beside the file.
    let file_len = std::fs::metadata(app.dir.path().join("models/controlnet").join(lora))
        .unwrap()
        .len();
    let after = model_bytes(&app.get("/system_stats").await.1);
    assert!(
        after > before + file_len,
        "{before} + {file_len} -> {after}"
    );
    run(
        &app,
        graph_with(
            lora,
            1.0,
            1.0,
            1.0,
            "tiny_sd1.safetensors",
            "control_lora_late",
        ),
    )
    .await;
    let plain = pixels(&app, "plain");
    assert!(pixels(&app, "control_lora") != plain);
    assert!(pixels(&app, "control_lora_late") == plain);
    // Stacked with a ControlNet, and again on the same model (the built ControlNet is reused).
    let stacked = stack(
        graph_with(
            lora,
            1.0,
            0.0,
            1.0,
            "tiny_sd1.safetensors",
            "control_lora_stacked",
        ),
        "control_v11p_sd15_scribble_fp16.safetensors",
        1.0,
    );
    run(&app, stacked).await;
    assert!(pixels(&app, "control_lora_stacked") != pixels(&app, "control_lora"));

    // On an SDXL model the families are named.
    let error = run_error(
        &app,
        graph_with(
            lora,
            1.0,
            0.0,
            1.0,
            "tiny_sdxl.safetensors",
            "control_lora_xl",
        ),
    )
    .await;
    assert_eq!(error["node_id"], "3", "{error}");
    let message = error["exception_message"].as_str().unwrap();
    for part in ["control_net of node 'a'", "control-lora", "sdxl", "sd1"] {
        assert!(message.contains(part), "{part}: {message}");
    }
}

#[actix_web::test]
async fn diff_controlnet_loader_adds_the_model_and_partial_union_files_are_refused() {
    use candle_core::{Device, Tensor};
    let app = app_with_controlnets().await;
    let models = app.dir.path().join("models");
    let scribble = "control_v11p_sd15_scribble_fp16.safetensors";
    // The difference form of the scribble ControlNet for tiny_sd1: every weight the model's UNet
    // also has, minus the model's (ComfyUI's `difference` files).
    let full =
        candle_core::safetensors::load(models.join("controlnet").join(scribble), &Device::Cpu)
            .unwrap();
    let ckpt = candle_core::safetensors::load(
        models.join("checkpoints/tiny_sd1.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut diff = std::collections::HashMap::new();
    let mut subtracted = 0;
    for (key, t) in &full {
        let base = key
            .strip_prefix("control_model.")
            .and_then(|rest| ckpt.get(&format!("model.diffusion_model.{rest}")));
        let value = match base {
            Some(b) => {
                subtracted += 1;
                (t - b).unwrap()
            }
            None => t.clone(),
        };
        diff.insert(key.clone(), value);
    }
    assert!(subtracted > 10);
    diff.insert(
        "difference".to_string(),
        Tensor::new(&[1f32], &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&diff, models.join("controlnet/diff_scribble.safetensors"))
        .unwrap();
    let diff_loader = |control: &str, prefix: &str| {
        let mut g = graph_with(control, 1.0, 0.0, 1.0, "tiny_sd1.safetensors", prefix);
        g["c"] = json!({"class_type": "DiffControlNetLoader",
            "inputs": {"model": ["4", 0], "control_net_name": control}});
        g
    };

    run(&app, without_controlnet("plain")).await;
    run(
        &app,
        graph_with(scribble, 1.0, 0.0, 1.0, "tiny_sd1.safetensors", "full"),
    )
    .await;
    run(&app, diff_loader("diff_scribble.safetensors", "diff")).await;
    run(&app, diff_loader(scribble, "diff_loader_plain_file")).await;
    let full = pixels(&app, "full");
    assert!(full != pixels(&app, "plain"));
    // (file - model) + model is the file up to f32 rounding.
    let diff = pixels(&app, "diff");
    let max = crate::helpers::max_level_diff(&full, &diff);
    assert!(max <= 1, "difference controlnet differs by {max} levels");
    assert!(pixels(&app, "diff_loader_plain_file") == full);

    // The plain loader cannot add the model: it says which loader can.
    let error = run_error(
        &app,
        graph_with(
            "diff_scribble.safetensors",
            1.0,
            0.0,
            1.0,
            "tiny_sd1.safetensors",
            "no",
        ),
    )
    .await;
    assert_eq!(error["node_id"], "c", "{error}");
    let message = error["exception_message"].as_str().unwrap();
    for part in ["diff_scribble.safetensors", "DiffControlNetLoader"] {
        assert!(message.contains(part), "{part}: {message}");
    }

    // A file with only part of the union (ControlNet++) tensors: refused by both loaders, naming
    // the file and the missing tensor.
    let mut union =
        candle_core::safetensors::load(models.join("controlnet").join(scribble), &Device::Cpu)
            .unwrap();
    union.insert(
        "control_model.task_embedding".to_string(),
        Tensor::zeros((8, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&union, models.join("controlnet/union_promax.safetensors"))
        .unwrap();
    for prompt in [
        graph_with(
            "union_promax.safetensors",
            1.0,
            0.0,
            1.0,
            "tiny_sd1.safetensors",
            "u",
        ),
        diff_loader("union_promax.safetensors", "u2"),
    ] {
        let error = run_error(&app, prompt).await;
        assert_eq!(error["node_id"], "c", "{error}");
        let message = error["exception_message"].as_str().unwrap();
        for part in [
            "union_promax.safetensors",
            "control_add_embedding.linear_1.weight",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }
}

/// Writes the tiny SDXL union ControlNet (the parity fixture's architecture, synthetic weights)
/// under diffusers names, as xinsir's release is, with `types` control types (the fixture has 8).
pub(crate) fn write_union(dir: &std::path::Path, name: &str, types: usize) {
    let rows = crate::engine::controlnet_parity::keymap("keymap_controlnet_union_sdxl_tiny.json");
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(ldm, diffusers, mut shape)| {
            if diffusers == "task_embedding" {
                shape[0] = types;
            } else if diffusers == "control_add_embedding.linear_1.weight" {
                shape[1] = shape[1] / 8 * types;
            }
            (ldm, diffusers, shape)
        })
        .collect();
    crate::engine::controlnet_parity::write_weights(dir, name, &rows, |r| Some(r.1.clone()));
}

/// [`graph_with`] with a SetUnionControlNetType node `u` of `kind` between loader and apply node.
fn union_graph(control: &str, kind: &str, ckpt: &str, prefix: &str) -> Json {
    let mut g = graph_with(control, 1.0, 0.0, 1.0, ckpt, prefix);
    g["u"] = json!({"class_type": "SetUnionControlNetType",
        "inputs": {"control_net": ["c", 0], "type": kind}});
    g["a"]["inputs"]["control_net"] = json!(["u", 0]);
    g
}

#[actix_web::test]
async fn union_controlnet_runs_with_each_type_and_auto() {
    let app = app_with_controlnets().await;
    // Declared as ComfyUI declares it.
    let (_, info) = app.get("/object_info/SetUnionControlNetType").await;
    let node = &info["SetUnionControlNetType"];
    assert_eq!(node["category"], "conditioning/controlnet", "{node}");
    assert_eq!(node["output"], json!(["CONTROL_NET"]), "{node}");
    assert_eq!(
        node["input"]["required"]["type"][0],
        json!([
            "auto",
            "openpose",
            "depth",
            "hed/pidi/scribble/ted",
            "canny/lineart/anime_lineart/mlsd",
            "normal",
            "segment",
            "tile",
            "repaint"
        ]),
        "{node}"
    );
    let dir = app.dir.path().join("models/controlnet");
    let union = "controlnet-union-sdxl-1.0-promax.safetensors";
    write_union(&dir, union, 8);
    write_union(&dir, "controlnet-union-sdxl-1.0.safetensors", 6);
    let sdxl = "tiny_sdxl.safetensors";
    let canny = "canny/lineart/anime_lineart/mlsd";
    run(&app, union_graph(union, canny, sdxl, "canny")).await;
    run(&app, union_graph(union, "depth", sdxl, "depth")).await;
    run(&app, union_graph(union, "auto", sdxl, "auto")).await;
    run(&app, graph_with(union, 1.0, 0.0, 1.0, sdxl, "untyped")).await;
    let mut diff = union_graph(union, canny, sdxl, "diff_loader");
    diff["c"] = json!({"class_type": "DiffControlNetLoader",
        "inputs": {"model": ["4", 0], "control_net_name": union}});
    run(&app, diff).await;
    let mut plain = without_controlnet("sdxl_plain");
    plain["4"]["inputs"]["ckpt_name"] = json!(sdxl);
    run(&app, plain).await;

    let canny_px = pixels(&app, "canny");
    assert!(
        canny_px != pixels(&app, "depth"),
        "the type changes the image"
    );
    assert!(canny_px != pixels(&app, "auto"));
    assert!(pixels(&app, "auto") != pixels(&app, "sdxl_plain"));
    // No SetUnionControlNetType is "auto" (ComfyUI's empty control_type), and
    // DiffControlNetLoader loads a union file as ControlNetLoader does.
    assert!(pixels(&app, "untyped") == pixels(&app, "auto"));
    assert!(pixels(&app, "diff_loader") == canny_px);

    // A type the file was not trained with: refused on the type node.
    let error = run_error(
        &app,
        union_graph(
            "controlnet-union-sdxl-1.0.safetensors",
            "repaint",
            sdxl,
            "repaint",
        ),
    )
    .await;
    assert_eq!(error["node_id"], "u", "{error}");
    let message = error["exception_message"].as_str().unwrap();
    for part in ["repaint", "6 types", "type"] {
        assert!(message.contains(part), "{part}: {message}");
    }
    // Names outside ComfyUI's list fail validation.
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": union_graph(union, "lineart", sdxl, "bad")}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // The union file on an SD1 model: the family error, on the sampler.
    let error = run_error(
        &app,
        union_graph(union, canny, "tiny_sd1.safetensors", "sd1"),
    )
    .await;
    assert_eq!(error["node_id"], "3", "{error}");
    let message = error["exception_message"].as_str().unwrap();
    for part in ["control_net of node 'a'", "sdxl controlnet", "sd1"] {
        assert!(message.contains(part), "{part}: {message}");
    }

    // On a plain ControlNet the type is kept and ignored, as in ComfyUI.
    let scribble = "control_v11p_sd15_scribble_fp16.safetensors";
    let sd1 = "tiny_sd1.safetensors";
    run(&app, union_graph(scribble, "depth", sd1, "scribble_typed")).await;
    run(&app, graph_with(scribble, 1.0, 0.0, 1.0, sd1, "scribble")).await;
    assert!(pixels(&app, "scribble_typed") == pixels(&app, "scribble"));
}

/// Every kind of control file with the models in f16 (each model boundary converts, as on a GPU):
/// T2I-Adapters, a Control-LoRA built in f16 on the f16 model, a union ControlNet with a type, and
/// a ControlNet and adapter stacked; each image is the f32 one up to half-precision rounding.
#[actix_web::test]
async fn every_control_kind_runs_with_f16_models_close_to_f32() {
    let (sd1, sdxl) = ("tiny_sd1.safetensors", "tiny_sdxl.safetensors");
    let union = "controlnet-union-sdxl-1.0-promax.safetensors";
    let graphs = [
        graph_with(
            "t2iadapter_canny_sd15v2.safetensors",
            1.0,
            0.0,
            1.0,
            sd1,
            "adapter",
        ),
        graph_with(
            "t2i-adapter-canny-sdxl.safetensors",
            1.0,
            0.0,
            1.0,
            sdxl,
            "adapter_xl",
        ),
        graph_with(
            "control-lora-canny-rank128.safetensors",
            1.0,
            0.0,
            1.0,
            sd1,
            "control_lora",
        ),
        union_graph(union, "depth", sdxl, "union"),
        stack(
            graph_with(
                "t2iadapter_light.safetensors",
                0.8,
                0.0,
                1.0,
                sd1,
                "stacked",
            ),
            "control_v11p_sd15_scribble_fp16.safetensors",
            0.7,
        ),
    ];
    let full = app_with_adapters().await;
    let half = app_with_adapters_on(|c| c.compute.dtype = Some(candle_core::DType::F16)).await;
    for app in [&full, &half] {
        write_union(&app.dir.path().join("models/controlnet"), union, 8);
        for graph in &graphs {
            run(app, graph.clone()).await;
        }
    }
    for graph in &graphs {
        let prefix = graph["9"]["inputs"]["filename_prefix"].as_str().unwrap();
        let label = format!("{prefix} in f16 against f32");
        crate::helpers::assert_close_pixels(
            &label,
            &pixels(&half, prefix),
            &pixels(&full, prefix),
            1.0,
        );
    }
}
