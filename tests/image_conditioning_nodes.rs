//! Conditioning nodes for UNets with extra input channels, the ControlNet-only text encoder and
//! ModelSamplingContinuousEDM through the real server (issue 17): ComfyUI's inpaint template on a
//! tiny 9-channel inpainting checkpoint, as written (VAEEncodeForInpaint) and with
//! InpaintModelConditioning; InstructPixToPixConditioning on an 8-channel one;
//! CLIPTextEncodeControlnet reaching only the ControlNet. The maths is checked in
//! `engine::cond_patches_parity`.

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::{json, Value as Json};

use crate::helpers::{comfy_template, read_png, shrink_editor_workflow, spawn_app, TestApp};
use crate::models::{write_checkpoint, Tiny};

/// The tiny SD1 checkpoint with a UNet taking `in_channels` (its `conv_in` widened with synthetic
/// weights), as inpainting (9) and InstructPix2Pix (8) checkpoints are.
fn write_wide_checkpoint(path: &Path, in_channels: usize) {
    write_checkpoint(path, Tiny::Sd1);
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let key = "model.diffusion_model.input_blocks.0.0.weight";
    let (out, _, k, _) = tensors[key].dims4().unwrap();
    let wide = weft::engine::synth::synth_tensor("conv_in.weight", (out, in_channels, k, k))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    tensors.insert(key.to_owned(), wide);
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// A 48x40 RGBA picture whose right half is transparent (LoadImage's mask: 1 there).
fn half_masked_png() -> Vec<u8> {
    crate::generate::png(48, 40, |x, y| {
        let alpha = if x < 24 { 255 } else { 0 };
        [(x * 5) as u8, (y * 6) as u8, 120, alpha]
    })
}

async fn app_with_models() -> TestApp {
    let app = spawn_app().await;
    let checkpoints = app.dir.path().join("models/checkpoints");
    write_wide_checkpoint(&checkpoints.join("512-inpainting-ema.safetensors"), 9);
    write_wide_checkpoint(&checkpoints.join("tiny_ip2p.safetensors"), 8);
    write_checkpoint(&checkpoints.join("tiny_sd1.safetensors"), Tiny::Sd1);
    crate::controlnet_nodes::write_controlnet(
        &app.dir.path().join("models/controlnet"),
        "cn.safetensors",
    );
    std::fs::write(
        app.data_dir().join("input/inpaint_example_input_image.png"),
        half_masked_png(),
    )
    .unwrap();
    app
}

async fn run(app: &TestApp, prompt: Json) -> Json {
    app.queue_ok("/prompt", json!({"prompt": prompt})).await
}

async fn image(app: &TestApp, prompt: Json, prefix: &str) -> Vec<u8> {
    run(app, prompt).await;
    read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png"))).3
}

/// ComfyUI's inpaint template in the API format, cut to tiny sizes.
fn inpaint_template(prefix: &str) -> Json {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/editor/expected/inpaint_example.json");
    let mut prompt: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    prompt["33"]["inputs"]["megapixels"] = json!(0.01);
    prompt["3"]["inputs"]["steps"] = json!(3);
    prompt["9"]["inputs"]["filename_prefix"] = json!(prefix);
    prompt
}

/// The template with InpaintModelConditioning in VAEEncodeForInpaint's place, as ComfyUI's newer
/// inpainting examples wire it.
fn with_inpaint_model_conditioning(prefix: &str, noise_mask: bool) -> Json {
    let mut prompt = inpaint_template(prefix);
    prompt["26"] = json!({"class_type": "InpaintModelConditioning", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "vae": ["29", 2], "pixels": ["33", 0],
        "mask": ["20", 1], "noise_mask": noise_mask}});
    let k = &mut prompt["3"]["inputs"];
    k["positive"] = json!(["26", 0]);
    k["negative"] = json!(["26", 1]);
    k["latent_image"] = json!(["26", 2]);
    prompt
}

#[actix_web::test]
async fn the_inpaint_template_runs_on_a_nine_channel_checkpoint() {
    let app = app_with_models().await;
    // The editor file as ComfyUI ships it: VAEEncodeForInpaint's noise mask and latent fill the
    // inpainting UNet's mask and masked-image channels.
    let entry = run(
        &app,
        shrink_editor_workflow(comfy_template("inpaint_example")),
    )
    .await;
    assert!(!entry["outputs"].as_object().unwrap().is_empty());
    let plain = image(&app, inpaint_template("plain"), "plain").await;
    let model_cond = image(&app, with_inpaint_model_conditioning("imc", true), "imc").await;
    let no_noise_mask = image(&app, with_inpaint_model_conditioning("nm", false), "nm").await;
    assert_ne!(plain, model_cond, "the entry's own concat image is used");
    assert_ne!(
        model_cond, no_noise_mask,
        "noise_mask keeps the unmasked latent"
    );
    // Deterministic.
    let again = image(&app, with_inpaint_model_conditioning("imc2", true), "imc2").await;
    assert_eq!(model_cond, again);
}

#[actix_web::test]
async fn extra_channel_checkpoints_sample_without_an_image_too() {
    let app = app_with_models().await;
    for ckpt in ["512-inpainting-ema.safetensors", "tiny_ip2p.safetensors"] {
        let prefix = ckpt.split('.').next().unwrap();
        let prompt = json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a cat"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 2}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 1, "steps": 2, "cfg": 4.0,
                  "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["6", 0],
                  "latent_image": ["5", 0], "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
        });
        let entry = run(&app, prompt).await;
        assert!(!entry["outputs"].as_object().unwrap().is_empty(), "{ckpt}");
    }
}

#[actix_web::test]
async fn instruct_pix2pix_conditioning_feeds_an_eight_channel_checkpoint() {
    let app = app_with_models().await;
    let graph = |image_node: Option<Json>, prefix: &str| {
        let mut g = json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_ip2p.safetensors"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "make it night"}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
            "l": {"class_type": "LoadImage", "inputs": {"image": "inpaint_example_input_image.png"}},
            "p": {"class_type": "InstructPixToPixConditioning", "inputs": {"positive": ["6", 0],
                  "negative": ["7", 0], "vae": ["4", 2], "pixels": ["l", 0]}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 2, "steps": 2, "cfg": 3.0,
                  "sampler_name": "euler", "scheduler": "normal", "positive": ["p", 0], "negative": ["p", 1],
                  "latent_image": ["p", 2], "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
        });
        if let Some(node) = image_node {
            g["l"] = node;
        }
        g
    };
    let first = image(&app, graph(None, "ip2p"), "ip2p").await;
    // The image decides the result: another picture gives another edit.
    std::fs::write(
        app.data_dir().join("input/other.png"),
        crate::server::png_bytes(48, 40, [10, 200, 60, 255]),
    )
    .unwrap();
    let other = json!({"class_type": "LoadImage", "inputs": {"image": "other.png"}});
    let second = image(&app, graph(Some(other), "ip2p_other"), "ip2p_other").await;
    assert_ne!(first, second);
    // The latent is zeros of the image's latent size: 48x40 crops to 48x40, 6x5 latents.
    let (w, h, _, _) = read_png(&app.data_dir().join("output/ip2p_00001_.png"));
    assert_eq!((w, h), (48, 40));
}

/// A ControlNet graph whose positive prompt may get a ControlNet-only text.
fn controlnet_graph(controlnet_text: Option<&str>, with_controlnet: bool, prefix: &str) -> Json {
    let mut g = json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a house"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "l": {"class_type": "LoadImage", "inputs": {"image": "inpaint_example_input_image.png"}},
        "c": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn.safetensors"}},
        "a": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["t", 0], "negative": ["7", 0],
              "control_net": ["c", 0], "image": ["l", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 8, "steps": 2, "cfg": 5.0,
              "sampler_name": "euler", "scheduler": "normal", "positive": ["a", 0], "negative": ["a", 1],
              "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
    });
    // Without a ControlNet text, `t` is a node that leaves the conditioning as it is.
    g["t"] = match controlnet_text {
        Some(text) => json!({"class_type": "CLIPTextEncodeControlnet",
                             "inputs": {"clip": ["4", 1], "conditioning": ["6", 0], "text": text}}),
        None => json!({"class_type": "ConditioningSetAreaStrength",
                       "inputs": {"conditioning": ["6", 0], "strength": 1.0}}),
    };
    if !with_controlnet {
        let nodes = g.as_object_mut().unwrap();
        for id in ["l", "c", "a"] {
            nodes.remove(id);
        }
        nodes["3"]["inputs"]["positive"] = json!(["t", 0]);
        nodes["3"]["inputs"]["negative"] = json!(["7", 0]);
    }
    g
}

#[actix_web::test]
async fn clip_text_encode_controlnet_reaches_only_the_controlnet() {
    let app = app_with_models().await;
    let plain = image(&app, controlnet_graph(None, true, "cn_plain"), "cn_plain").await;
    // The ControlNet attends to the same text: nothing changes, bit for bit.
    let same = image(
        &app,
        controlnet_graph(Some("a house"), true, "cn_same"),
        "cn_same",
    )
    .await;
    assert_eq!(plain, same);
    let other = image(
        &app,
        controlnet_graph(Some("a ship"), true, "cn_other"),
        "cn_other",
    )
    .await;
    assert_ne!(plain, other, "the ControlNet sees the other text");
    // Without a ControlNet the text goes nowhere.
    let bare = image(&app, controlnet_graph(None, false, "bare"), "bare").await;
    let bare_text = image(
        &app,
        controlnet_graph(Some("a ship"), false, "bare_t"),
        "bare_t",
    )
    .await;
    assert_eq!(bare, bare_text);
}

#[actix_web::test]
async fn model_sampling_continuous_edm_resamples_the_model() {
    let app = app_with_models().await;
    let graph = |patch: Option<Json>, prefix: &str| {
        let mut g = json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a cat"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 1, "steps": 3, "cfg": 4.0,
                  "sampler_name": "euler", "scheduler": "karras", "positive": ["6", 0], "negative": ["6", 0],
                  "latent_image": ["5", 0], "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
        });
        if let Some(patch) = patch {
            g["m"] = patch;
            g["3"]["inputs"]["model"] = json!(["m", 0]);
        }
        g
    };
    let edm = |sampling: &str| {
        json!({"class_type": "ModelSamplingContinuousEDM", "inputs": {"model": ["4", 0],
               "sampling": sampling, "sigma_max": 120.0, "sigma_min": 0.002}})
    };
    let plain = image(&app, graph(None, "plain"), "plain").await;
    let mut seen = vec![plain];
    for sampling in ["v_prediction", "edm", "edm_playground_v2.5", "eps"] {
        let prefix = sampling.replace('.', "_");
        let out = image(&app, graph(Some(edm(sampling)), &prefix), &prefix).await;
        assert!(!seen.contains(&out), "{sampling} changes the result");
        seen.push(out);
    }
    // Cosmos' rectified flow needs a Cosmos model.
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": graph(Some(edm("cosmos_rflow")), "cosmos")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let history = app.wait_history(body["prompt_id"].as_str().unwrap()).await;
    assert_eq!(history["status"]["status_str"], "error", "{history}");
}

#[actix_web::test]
async fn object_info_declares_comfyui_inputs() {
    let app = spawn_app().await;
    let (_, info) = app.get("/object_info").await;
    for (class, inputs, outputs, category) in [
        (
            "InpaintModelConditioning",
            &[
                "positive",
                "negative",
                "vae",
                "pixels",
                "mask",
                "noise_mask",
            ][..],
            &["positive", "negative", "latent"][..],
            "conditioning/inpaint",
        ),
        (
            "InstructPixToPixConditioning",
            &["positive", "negative", "vae", "pixels"],
            &["positive", "negative", "latent"],
            "conditioning/instructpix2pix",
        ),
        (
            "CLIPTextEncodeControlnet",
            &["clip", "conditioning", "text"],
            &["CONDITIONING"],
            "_for_testing/conditioning",
        ),
        (
            "ModelSamplingContinuousEDM",
            &["model", "sampling", "sigma_max", "sigma_min"],
            &["MODEL"],
            "advanced/model",
        ),
    ] {
        let node = &info[class];
        let required: Vec<&str> = node["input_order"]["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{class}: {node}"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, inputs, "{class}");
        let names: Vec<&str> = node["output_name"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names, outputs, "{class}");
        assert_eq!(node["category"], category, "{class}");
    }
    let noise_mask = &info["InpaintModelConditioning"]["input"]["required"]["noise_mask"];
    assert_eq!(noise_mask[0], "BOOLEAN");
    assert_eq!(noise_mask[1]["default"], true);
    let edm = &info["ModelSamplingContinuousEDM"]["input"]["required"];
    assert_eq!(
        edm["sampling"][0],
        json!([
            "v_prediction",
            "edm",
            "edm_playground_v2.5",
            "eps",
            "cosmos_rflow"
        ])
    );
    assert_eq!(edm["sigma_max"][1]["default"], 120.0);
    assert_eq!(edm["sigma_min"][1]["default"], 0.002);
}
