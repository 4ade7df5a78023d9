//! `POST /api/weft/generate` (issue 9): each request shape compiles to the committed API-format
//! graph and runs through the server on tiny models; the returned workflow saves to the library
//! and converts back; bad requests are 400s naming the field, with nothing queued.
//!
//! Expected graphs live in `tests/fixtures/generate/`; `WEFT_BLESS=1` rewrites them (review the
//! diff before committing).

use serde_json::{json, Value as Json};

use crate::helpers::{read_png, spawn_app_with, TestApp};
use crate::models::{write_checkpoint, Tiny};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/generate")
        .join(format!("{name}.json"))
}

/// An RGBA PNG whose pixels come from `f(x, y)`.
pub(crate) fn png(width: u32, height: u32, f: impl Fn(u32, u32) -> [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .flat_map(|(x, y)| f(x, y))
            .collect();
        writer.write_image_data(&data).unwrap();
    }
    out
}

async fn app_with_models() -> TestApp {
    app_with_models_on(|_| {}).await
}

async fn app_with_models_on(adjust: impl FnOnce(&mut weft::app::ServerConfig)) -> TestApp {
    let app = spawn_app_with(adjust).await;
    let models = app.dir.path().join("models");
    write_checkpoint(&models.join("checkpoints/sd15_tiny.safetensors"), Tiny::Sd1);
    write_checkpoint(
        &models.join("checkpoints/sd_xl_base_tiny.safetensors"),
        Tiny::Sdxl,
    );
    write_checkpoint(
        &models.join("checkpoints/sd_xl_refiner_tiny.safetensors"),
        Tiny::SdxlRefiner,
    );
    let vae = crate::engine::load::ldm_tensors("vae_tiny", "", candle_core::DType::F32);
    candle_core::safetensors::save(&vae, models.join("vae/sdxl_vae.safetensors")).unwrap();
    // SD1 LoRAs in kohya's format, and an SDXL one.
    for (name, salt) in [("art_style", "art"), ("landscape", "land")] {
        candle_core::safetensors::save(
            &crate::lora_nodes::kohya_lora(salt),
            models.join(format!("loras/{name}.safetensors")),
        )
        .unwrap();
    }
    std::fs::create_dir_all(models.join("loras/xl")).unwrap();
    candle_core::safetensors::save(&sdxl_lora(), models.join("loras/xl/xl_style.safetensors"))
        .unwrap();
    // ControlNets in the LDM layout: SD1 canny, depth and two lineart, SDXL canny.
    let controlnets = models.join("controlnet");
    for name in [
        "control_v11p_sd15_canny.safetensors",
        "control_v11f1p_sd15_depth.safetensors",
        "control_v11p_sd15_lineart.safetensors",
        "control_v11p_sd15s2_lineart_anime.safetensors",
    ] {
        crate::controlnet_nodes::write_controlnet(&controlnets, name);
    }
    let rows = crate::engine::controlnet_parity::keymap("keymap_controlnet_sdxl_tiny.json");
    crate::engine::controlnet_parity::write_weights(
        &controlnets,
        "controlnet_canny_sdxl_tiny.safetensors",
        &rows,
        |r| Some(format!("control_model.{}", r.0)),
    );
    // A union ControlNet (ControlNet++) for SDXL: the SDXL types without their own file use it.
    crate::controlnet_nodes::write_union(
        &controlnets,
        "controlnet-union-sdxl-1.0-promax.safetensors",
        8,
    );
    let input = app.data_dir().join("input");
    std::fs::write(
        input.join("start.png"),
        png(64, 64, |x, y| [(x * 4) as u8, (y * 4) as u8, 128, 255]),
    )
    .unwrap();
    std::fs::write(
        input.join("photo.png"),
        png(48, 40, |x, y| {
            if (x / 8 + y / 8) % 2 == 0 {
                [250, 250, 250, 255]
            } else {
                [10, 10, 10, 255]
            }
        }),
    )
    .unwrap();
    // White = repaint, as diffusers reads masks.
    std::fs::write(
        input.join("mask.png"),
        png(64, 64, |x, _| {
            if x >= 32 {
                [255, 255, 255, 255]
            } else {
                [0, 0, 0, 255]
            }
        }),
    )
    .unwrap();
    app
}

/// A kohya LoRA for the tiny SDXL checkpoint: one UNet self-attention projection (LDM path) and
/// one projection in each text encoder, rank 4.
fn sdxl_lora() -> std::collections::HashMap<String, candle_core::Tensor> {
    use weft::engine::synth::synth_tensor;
    let unet = crate::engine::load::ldm_tensors("sdxl_tiny", "", candle_core::DType::F32);
    let (to_q, weight) = unet
        .iter()
        .find(|(k, _)| k.ends_with("attn1.to_q.weight"))
        .expect("the tiny SDXL UNet has attention");
    let (out_dim, in_dim) = weight.dims2().unwrap();
    let unet_module = format!(
        "lora_unet_{}",
        to_q.trim_end_matches(".weight").replace('.', "_")
    );
    let mut tensors = std::collections::HashMap::new();
    for (name, out_dim, in_dim) in [
        (unet_module.as_str(), out_dim, in_dim),
        (
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
            32,
            32,
        ),
        (
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
            32,
            32,
        ),
    ] {
        tensors.insert(
            format!("{name}.lora_down.weight"),
            synth_tensor(&format!("xl.{name}.down"), (4, in_dim)).unwrap(),
        );
        tensors.insert(
            format!("{name}.lora_up.weight"),
            synth_tensor(&format!("xl.{name}.up"), (out_dim, 4)).unwrap(),
        );
        tensors.insert(
            format!("{name}.alpha"),
            candle_core::Tensor::new(4f32, &candle_core::Device::Cpu).unwrap(),
        );
    }
    tensors
}

/// The request shapes of the issue, small enough to run on tiny models.
fn cases() -> Vec<(&'static str, Json)> {
    let tiny = json!({"seed": 42, "width": 64, "height": 64});
    vec![
        (
            "txt2img_defaults",
            json!({"prompt": "a beautiful landscape painting", "model": "sd15_tiny", "hyperparameters": tiny, "scheduler": {"steps": 2}}),
        ),
        (
            "sdxl_base_refiner_vae",
            json!({
                "prompt": "a beautiful landscape painting", "negative_prompt": "blurry",
                "model": {"base": "sd_xl_base_tiny.safetensors", "refiner": "sd_xl_refiner_tiny.safetensors", "vae": "sdxl_vae.safetensors"},
                "scheduler": {"type": "DPM++", "steps": 4},
                "hyperparameters": {"guidance_scale": 7.5, "seed": 12345, "width": 64, "height": 64, "batch_size": 2, "refiner_switch": 0.5},
            }),
        ),
        (
            "lora_stack",
            json!({
                "prompt": "a castle", "model": {"base": "sd15_tiny.safetensors"},
                "lora": ["art_style:0.8", {"name": "landscape", "path": "models/loras/landscape.safetensors", "weight": 0.6, "clip_weight": 0.4, "enabled": true}, {"name": "art_style", "enabled": false}],
                "lora_config": {"global_weight_multiplier": 0.5},
                "scheduler": {"type": "Euler a", "steps": 2},
                "hyperparameters": {"seed": 7, "width": 64, "height": 64, "clip_skip": 2},
            }),
        ),
        (
            "controlnets_img2img",
            json!({
                "prompt": "a house", "model": "sd15_tiny.safetensors",
                "controlnet": ["canny:0.8", {"type": "depth", "conditioning_scale": 0.6, "control_guidance_start": 0.1, "control_guidance_end": 0.9, "condition_image": "input/photo.png", "preprocess_condition": false}],
                "init_image": "input/start.png",
                "scheduler": {"type": "DPM++ 2M Karras", "steps": 3},
                "hyperparameters": {"seed": 3, "denoise": 0.6},
            }),
        ),
        (
            "inpaint",
            json!({
                "prompt": "a red door", "model": "sd15_tiny.safetensors",
                "init_image": "input/start.png", "mask_image": "input/mask.png",
                "scheduler": {"type": "ddim", "steps": 2},
                "hyperparameters": {"seed": 5, "width": 48, "height": 48},
            }),
        ),
        (
            "inpaint_partial_denoise",
            json!({
                "prompt": "a red door", "model": "sd15_tiny.safetensors",
                "init_image": "start.png", "mask_image": "mask.png",
                "scheduler": {"type": "UniPC", "steps": 2},
                "hyperparameters": {"seed": 5, "denoise": 0.5},
            }),
        ),
        (
            // No SDXL depth or pose file: both use the union ControlNet, one loader, a type each.
            "union_controlnet_sdxl",
            json!({
                "prompt": "a house", "model": "sd_xl_base_tiny",
                "controlnet": [
                    {"type": "depth", "condition_image": "photo.png", "preprocess_condition": false},
                    {"type": "pose", "conditioning_scale": 0.5, "condition_image": "start.png"},
                ],
                "scheduler": {"steps": 2},
                "hyperparameters": {"seed": 11, "width": 64, "height": 64},
            }),
        ),
        (
            // The full example on tiny SDXL files.
            "everything_sdxl",
            json!({
                "prompt": "a beautiful landscape painting", "negative_prompt": "blurry",
                "model": {"base": "sd_xl_base_tiny", "refiner": "sd_xl_refiner_tiny", "vae": "sdxl_vae"},
                "lora": ["xl_style:0.8"],
                "controlnet": [{"type": "canny", "conditioning_scale": 0.6, "control_guidance_start": 0.0, "control_guidance_end": 1.0, "condition_image": "input/photo.png", "preprocess_condition": true}],
                "scheduler": {"type": "DPM++", "steps": 4},
                "hyperparameters": {"guidance_scale": 7.5, "seed": 12345, "width": 64, "height": 64, "batch_size": 1, "denoise": 1.0, "refiner_switch": 0.8},
                "init_image": "input/start.png", "mask_image": "input/mask.png",
                "lora_config": {"global_weight_multiplier": 1.0},
            }),
        ),
    ]
}

/// The class types of a compiled request's graph.
fn class_types(compiled: &Json) -> Vec<String> {
    compiled["prompt"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|n| n["class_type"].as_str().map(str::to_string))
        .collect()
}

async fn compile(app: &TestApp, request: &Json) -> Json {
    let (status, body) = app
        .post("/api/weft/generate/compile", request.clone())
        .await;
    assert_eq!(status, 200, "{body:#}");
    body
}

#[actix_web::test]
async fn each_request_shape_compiles_to_its_graph_and_runs() {
    let app = app_with_models().await;
    let bless = std::env::var_os("WEFT_BLESS").is_some();
    for (name, request) in cases() {
        let compiled = compile(&app, &request).await;
        let path = fixture(name);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&compiled["prompt"]).unwrap() + "\n",
            )
            .unwrap();
        }
        let expected: Json = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("{} (WEFT_BLESS=1 writes it)", path.display())),
        )
        .unwrap();
        assert_eq!(
            compiled["prompt"], expected,
            "{name}: the compiled graph changed"
        );

        let (status, body) = app.post("/api/weft/generate", request.clone()).await;
        assert_eq!(status, 200, "{name}: {body:#}");
        assert_eq!(body["prompt"], expected, "{name}");
        let prompt_id = body["prompt_id"].as_str().unwrap();
        let entry = app.wait_history(prompt_id).await;
        assert_eq!(
            entry["status"]["status_str"], "success",
            "{name}: {:#}",
            entry["status"]
        );
        let images: Vec<&Json> = entry["outputs"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|o| o["images"].as_array())
            .flatten()
            .collect();
        let batch = request["hyperparameters"]["batch_size"]
            .as_u64()
            .unwrap_or(1) as usize;
        assert_eq!(images.len(), batch, "{name}");
        // The tiny VAE scales by 4, not 8: an empty latent of width/8 decodes to width/2, an
        // encoded image comes back at its own size.
        let scale = if request.get("init_image").is_some() {
            1
        } else {
            2
        };
        let width = body["resolved"]["width"].as_u64().unwrap() as u32 / scale;
        let height = body["resolved"]["height"].as_u64().unwrap() as u32 / scale;
        for image in images {
            let file = app
                .data_dir()
                .join("output")
                .join(image["filename"].as_str().unwrap());
            let (w, h, text, _) = read_png(&file);
            assert_eq!((w, h), (width, height), "{name}");
            // The image carries the generated graph and its editor workflow.
            let embedded: Json =
                serde_json::from_str(&text.iter().find(|(k, _)| k == "prompt").unwrap().1).unwrap();
            assert_eq!(embedded, expected, "{name}");
            assert!(text.iter().any(|(k, _)| k == "workflow"), "{name}");
        }
    }
}

#[actix_web::test]
async fn defaults_come_from_the_model_and_are_reported() {
    let app = app_with_models().await;
    let body = compile(&app, &json!({"prompt": "x", "model": "sd_xl_base_tiny"})).await;
    let resolved = &body["resolved"];
    assert_eq!(resolved["width"], 1024);
    assert_eq!(resolved["height"], 1024);
    assert_eq!(resolved["steps"], 20);
    assert_eq!(resolved["sampler_name"], "euler");
    assert_eq!(resolved["scheduler"], "normal");
    assert_eq!(resolved["model"]["family"], "SDXL");
    assert!(resolved["seed"].as_u64().is_some());
    let sd1 = compile(
        &app,
        &json!({"prompt": "x", "model": "sd15_tiny", "init_image": "start.png"}),
    )
    .await;
    assert_eq!(
        (
            sd1["resolved"]["width"].as_u64(),
            sd1["resolved"]["denoise"].as_f64()
        ),
        (Some(64), Some(0.75))
    );
}

#[actix_web::test]
async fn the_returned_workflow_saves_to_the_library_and_opens_as_the_same_graph() {
    let app = app_with_models().await;
    let (_, request) = cases()
        .into_iter()
        .find(|(n, _)| *n == "controlnets_img2img")
        .unwrap();
    let (status, body) = app.post("/api/weft/generate", request).await;
    assert_eq!(status, 200, "{body:#}");
    app.wait_history(body["prompt_id"].as_str().unwrap()).await;
    let (status, saved) = app
        .post(
            "/api/weft/workflows",
            json!({"name": "from generate", "workflow": body["workflow"]}),
        )
        .await;
    assert_eq!(status, 201, "{saved}");
    let (_, stored) = app
        .get(&format!(
            "/api/weft/workflows/{}",
            saved["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(stored["workflow"], body["workflow"]);
    // What the editor queues from the stored workflow is the graph that was generated.
    let (status, converted) = app
        .post("/api/weft/convert", stored["workflow"].clone())
        .await;
    assert_eq!(status, 200, "{converted}");
    assert!(converted["missing_node_types"]
        .as_array()
        .unwrap()
        .is_empty());
    let strip = |prompt: &Json| -> Json {
        let mut prompt = prompt.clone();
        for node in prompt.as_object_mut().unwrap().values_mut() {
            node.as_object_mut().unwrap().remove("_meta");
        }
        prompt
    };
    assert_eq!(strip(&converted["prompt"]), strip(&body["prompt"]));
    // Every node has a position and its title in the editor document.
    for node in body["workflow"]["nodes"].as_array().unwrap() {
        assert!(node["pos"].is_array(), "{node}");
    }
}

#[actix_web::test]
async fn bad_requests_are_400s_naming_the_field_and_nothing_is_queued() {
    let app = app_with_models().await;
    let base = json!({"prompt": "x", "model": "sd15_tiny.safetensors"});
    let with = |extra: Json| {
        let mut request = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
        }
        request
    };
    let cases = [
        (with(json!({"lora": 5})), "lora", "expected"),
        (
            with(json!({"scheduler": ["DPM++"]})),
            "scheduler",
            "expected",
        ),
        (
            with(json!({"lora": [{"name": "art_style", "weight": "heavy"}]})),
            "lora[0].weight",
            "number",
        ),
        (
            with(json!({"lora": ["art_style:heavy"]})),
            "lora[0]",
            "not a number",
        ),
        (
            with(json!({"controlnet": ["hed:0.5"]})),
            "controlnet[0]",
            "unknown ControlNet type",
        ),
        (
            with(json!({"model": {"base": "nope.safetensors"}})),
            "model.base",
            "no model 'nope.safetensors'",
        ),
        (
            with(json!({"model": {"base": "sd15_tiny", "vae": "missing_vae"}})),
            "model.vae",
            "no model",
        ),
        (
            with(json!({"model": {"base": "sd15_tiny", "refiner": "sd_xl_refiner_tiny"}})),
            "model.refiner",
            "SDXL base",
        ),
        (
            with(json!({"model": {"base": "sd_xl_base_tiny", "refiner": "sd15_tiny"}})),
            "model.refiner",
            "not an SDXL refiner",
        ),
        (
            with(json!({"model": "sd_xl_refiner_tiny"})),
            "model.base",
            "refiner",
        ),
        (
            with(json!({"lora": ["missing_lora"]})),
            "lora[0]",
            "no model 'missing_lora'",
        ),
        (
            with(json!({"init_image": "start.png", "hyperparameters": {"batch_size": 2}})),
            "hyperparameters.batch_size",
            "larger than the image batch",
        ),
        (
            with(json!({"init_image": "nope.png"})),
            "init_image",
            "upload it",
        ),
        (
            with(json!({"init_image": "../secret.png"})),
            "init_image",
            "..",
        ),
        (
            with(json!({"mask_image": "mask.png"})),
            "mask_image",
            "init_image",
        ),
        (
            with(json!({"controlnet": ["canny"]})),
            "controlnet[0].condition_image",
            "no init_image",
        ),
        (
            with(json!({"controlnet": ["lineart:0.5"], "init_image": "start.png"})),
            "controlnet[0]",
            "several lineart ControlNets",
        ),
        (
            with(json!({"controlnet": ["pose"], "init_image": "start.png"})),
            "controlnet[0]",
            "no pose ControlNet",
        ),
        (
            with(json!({"controlnet": ["depth"], "init_image": "start.png"})),
            "controlnet[0].preprocess_condition",
            "annotator file 'depth_anything_v2_vits.pth' not found",
        ),
        (
            with(
                json!({"controlnet": [{"type": "canny", "model": "controlnet_canny_sdxl_tiny"}], "init_image": "start.png"}),
            ),
            "controlnet[0].model",
            "SDXL ControlNet but the base model is SD1.x",
        ),
        (
            with(json!({"scheduler": {"type": "Turbo Magic"}})),
            "scheduler.type",
            "unknown scheduler type",
        ),
        (
            with(json!({"scheduler": {"type": "Euler", "scheduler": "fast"}})),
            "scheduler.scheduler",
            "unknown scheduler",
        ),
        (
            with(json!({"hyperparameters": {"seed": "12"}})),
            "hyperparameters.seed",
            "whole number",
        ),
        (
            with(json!({"hyperparameters": {"width": 100}})),
            "hyperparameters.width",
            "multiple of 8",
        ),
        (
            with(json!({"negative": "blurry"})),
            "negative",
            "unknown field",
        ),
        (json!({"model": "sd15_tiny"}), "prompt", "required"),
    ];
    for (request, field, words) in cases {
        let (status, body) = app.post("/api/weft/generate", request.clone()).await;
        assert_eq!(status, 400, "{request} → {body}");
        assert_eq!(body["error"]["type"], "invalid_generate_request", "{body}");
        assert_eq!(
            body["error"]["extra_info"]["field"], field,
            "{request} → {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
        assert!(message.contains(words), "{request} → {message}");
    }
    // Not JSON at all.
    let (status, _) = app
        .post_raw("/api/weft/generate", b"{nope".to_vec(), "application/json")
        .await;
    assert_eq!(status, 400);
    let (_, queue) = app.get("/queue").await;
    assert_eq!(queue["queue_pending"], json!([]));
    assert_eq!(queue["queue_running"], json!([]));
    let (_, history) = app.get("/history").await;
    assert_eq!(history, json!({}));
    // The server is still serving.
    let (status, _) = app.post("/api/weft/generate/compile", base).await;
    assert_eq!(status, 200);
}

/// Queues `request` and returns the pixels of its images, in output order.
async fn generated_pixels(app: &TestApp, request: &Json) -> Vec<Vec<u8>> {
    let entry = app.queue_ok("/api/weft/generate", request.clone()).await;
    let mut files: Vec<String> = entry["outputs"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|o| o["images"].as_array())
        .flatten()
        .map(|image| image["filename"].as_str().unwrap().to_string())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| read_png(&app.data_dir().join("output").join(f)).3)
        .collect()
}

/// Every request shape (LoRA stacks patched on the host, ControlNet hints, VAE encode for img2img
/// and inpainting, SDXL with its refiner) with the models in f16: each model boundary converts,
/// as on a GPU, and the images are the f32 ones up to half-precision rounding.
#[actix_web::test]
async fn every_request_shape_runs_with_f16_models_close_to_f32() {
    let full = app_with_models().await;
    let half = app_with_models_on(|c| c.compute.dtype = Some(candle_core::DType::F16)).await;
    for (name, request) in cases() {
        let expected = generated_pixels(&full, &request).await;
        let got = generated_pixels(&half, &request).await;
        assert_eq!(got.len(), expected.len(), "{name}");
        for (got, expected) in got.iter().zip(&expected) {
            let label = format!("{name} in f16 against f32");
            crate::helpers::assert_close_pixels(&label, got, expected, 1.0);
        }
    }
}

/// The one-request API with `preprocess_condition: true` for each control type Weft preprocesses:
/// the classical ones need nothing, the network ones their annotator file (the tiny parity
/// fixtures, in the published layouts) under `models/annotators/`; a missing file is a 400
/// naming it.
#[actix_web::test]
async fn each_control_type_preprocesses_its_condition_image() {
    let app = app_with_models().await;
    let annotators = app.dir.path().join("models/annotators");
    for (family, file) in [
        ("lineart", "sk_model.pth"),
        ("normalbae", "scannet.pt"),
        ("mlsd", "mlsd_large_512_fp32.pth"),
        ("depth", "depth_anything_v2_vits.pth"),
        ("openpose", "body_pose_model.pth"),
        ("hed", "ControlNetHED.pth"),
        ("uniformer", "upernet_global_small.pth"),
    ] {
        crate::helpers::add_annotators(&app, family, &[(file, "")], None);
    }
    let request = |kind: &str| {
        json!({
            "prompt": "a house", "model": "sd15_tiny",
            "controlnet": [{"type": kind, "model": "control_v11p_sd15_canny", "condition_image": "photo.png", "preprocess_condition": true}],
            "scheduler": {"steps": 1}, "hyperparameters": {"seed": 1, "width": 64, "height": 64},
        })
    };
    for (kind, class) in [
        ("canny", "Canny"),
        ("scribble", "FakeScribblePreprocessor"),
        ("lineart", "LineArtPreprocessor"),
        ("depth", "DepthAnythingV2Preprocessor"),
        ("normal", "BAE-NormalMapPreprocessor"),
        ("mlsd", "M-LSDPreprocessor"),
        ("pose", "OpenposePreprocessor"),
        ("segmentation", "UniFormer-SemSegPreprocessor"),
    ] {
        let compiled = compile(&app, &request(kind)).await;
        let classes = class_types(&compiled);
        assert!(classes.iter().any(|c| c == class), "{kind}: {classes:?}");
        let entry = app.queue_ok("/api/weft/generate", request(kind)).await;
        assert_eq!(entry["status"]["status_str"], "success", "{kind}");
    }

    // Depth without Depth Anything V2 small falls back to MiDaS; without either, a 400 naming both.
    std::fs::remove_file(annotators.join("depth_anything_v2_vits.pth")).unwrap();
    crate::helpers::add_annotators(&app, "midas", &[("dpt_hybrid-midas-501f0c75.pt", "")], None);
    let compiled = compile(&app, &request("depth")).await;
    let classes = class_types(&compiled);
    assert!(
        classes.iter().any(|c| c == "MiDaS-DepthMapPreprocessor"),
        "{classes:?}"
    );
    let entry = app.queue_ok("/api/weft/generate", request("depth")).await;
    assert_eq!(entry["status"]["status_str"], "success", "depth by MiDaS");
    std::fs::remove_file(annotators.join("dpt_hybrid-midas-501f0c75.pt")).unwrap();
    let (status, body) = app.post("/api/weft/generate", request("depth")).await;
    assert_eq!(status, 400, "{body:#}");
    let text = body.to_string();
    assert!(
        text.contains("'depth_anything_v2_vits.pth' not found")
            && text.contains("'dpt_hybrid-midas-501f0c75.pt' not found"),
        "{text}"
    );

    std::fs::remove_file(annotators.join("scannet.pt")).unwrap();
    let (status, body) = app.post("/api/weft/generate", request("normal")).await;
    assert_eq!(status, 400, "{body:#}");
    let text = body.to_string();
    assert!(
        text.contains("controlnet[0].preprocess_condition")
            && text.contains("'scannet.pt' not found"),
        "{text}"
    );
    std::fs::remove_file(annotators.join("upernet_global_small.pth")).unwrap();
    let (status, body) = app
        .post("/api/weft/generate", request("segmentation"))
        .await;
    assert_eq!(status, 400, "{body:#}");
    assert!(
        body.to_string()
            .contains("'upernet_global_small.pth' not found"),
        "{body}"
    );
}
