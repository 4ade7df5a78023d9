//! Image prompts through the server (issue 17): CLIP vision, unCLIP checkpoints and
//! conditioning, SDXL revision (ComfyUI's `sdxl_revision_text_prompts` template) and style
//! models, on tiny files.

use serde_json::{json, Value as Json};

use crate::helpers::{comfy_template, read_png, shrink_editor_workflow, TestApp};
use crate::models::{
    write_checkpoint, write_clip_vision, write_style_model, write_unclip_checkpoint, Tiny,
};

async fn app() -> TestApp {
    let app = crate::helpers::spawn_app().await;
    let models = app.dir.path().join("models");
    write_unclip_checkpoint(&models.join("checkpoints/sd21-unclip-h.safetensors"));
    write_checkpoint(&models.join("checkpoints/tiny_sd1.safetensors"), Tiny::Sd1);
    write_checkpoint(
        &models.join("checkpoints/sd_xl_base_1.0.safetensors"),
        Tiny::Sdxl,
    );
    // The tiny SDXL model's pooled output is 32 wide; so are this tower's image embeddings.
    write_clip_vision(&models.join("clip_vision/clip_vision_g.safetensors"), 32);
    // The tiny SD1 context is 48 wide; the tower's states 32.
    write_style_model(&models.join("style_models/style_tiny.safetensors"), 32, 48);
    for (name, rgba) in [
        (
            "sdxl_revision_text_prompts_ref_image1.png",
            [200, 60, 20, 255],
        ),
        (
            "sdxl_revision_text_prompts_ref_image2.png",
            [20, 90, 200, 255],
        ),
    ] {
        std::fs::write(
            app.data_dir().join("input").join(name),
            crate::server::png_bytes(40, 24, rgba),
        )
        .unwrap();
    }
    app
}

async fn run(app: &TestApp, prompt: Json) -> Json {
    app.queue_ok("/prompt", json!({"prompt": prompt})).await
}

/// The pixels of the one image a finished prompt saved.
async fn saved(app: &TestApp, entry: &Json) -> Vec<u8> {
    let outputs = entry["outputs"].as_object().unwrap();
    let image = outputs.values().next().unwrap()["images"][0].clone();
    read_png(
        &app.data_dir()
            .join("output")
            .join(image["filename"].as_str().unwrap()),
    )
    .3
}

/// ComfyUI's unCLIP example: unCLIPCheckpointLoader → CLIPVisionEncode → unCLIPConditioning
/// (twice, `second` the second one's strength) → KSampler.
fn unclip_graph(strength: f64, second: f64, prefix: &str) -> Json {
    json!({
        "4": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": "sd21-unclip-h.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a house"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry"}},
        "i": {"class_type": "LoadImage", "inputs": {"image": "sdxl_revision_text_prompts_ref_image1.png"}},
        "e": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["4", 3], "image": ["i", 0], "crop": "center"}},
        "u": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["6", 0], "clip_vision_output": ["e", 0],
              "strength": strength, "noise_augmentation": 0.1}},
        "v": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["u", 0], "clip_vision_output": ["e", 0],
              "strength": second, "noise_augmentation": 0.0}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 5, "steps": 3, "cfg": 4.0, "sampler_name": "euler",
              "scheduler": "normal", "positive": ["v", 0], "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
    })
}

#[actix_web::test]
async fn unclip_checkpoint_and_conditioning_steer_the_image() {
    let app = app().await;
    let without = saved(&app, &run(&app, unclip_graph(0.0, 0.0, "none")).await).await;
    let one = saved(&app, &run(&app, unclip_graph(1.0, 0.0, "one")).await).await;
    let again = saved(&app, &run(&app, unclip_graph(1.0, 0.0, "again")).await).await;
    let merged = saved(&app, &run(&app, unclip_graph(1.0, 0.5, "merged")).await).await;
    assert_ne!(without, one, "the image embedding reaches the UNet");
    assert_eq!(
        one, again,
        "the noise augmentation is seeded by the sampler"
    );
    assert_ne!(one, merged, "a second embedding is merged in");
}

#[actix_web::test]
async fn unclip_loader_refuses_a_checkpoint_without_a_vision_tower() {
    let app = app().await;
    let mut graph = unclip_graph(1.0, 0.0, "x");
    graph["4"]["inputs"]["ckpt_name"] = json!("tiny_sd1.safetensors");
    let (status, body) = app.post("/prompt", json!({"prompt": graph})).await;
    assert_eq!(status, 200, "{body}");
    let entry = app.wait_history(body["prompt_id"].as_str().unwrap()).await;
    assert_eq!(entry["status"]["status_str"], "error", "{entry:#}");
    assert!(
        entry.to_string().contains("no CLIP vision weights"),
        "{entry:#}"
    );
}

#[actix_web::test]
async fn sdxl_revision_template_runs_on_tiny_models() {
    let app = app().await;
    let entry = run(
        &app,
        shrink_editor_workflow(comfy_template("sdxl_revision_text_prompts")),
    )
    .await;
    assert!(!entry["outputs"].as_object().unwrap().is_empty());
}

fn style_graph(strength: f64, strength_type: &str, prefix: &str) -> Json {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a house"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry"}},
        "c": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "clip_vision_g.safetensors"}},
        "i": {"class_type": "LoadImage", "inputs": {"image": "sdxl_revision_text_prompts_ref_image2.png"}},
        "e": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["c", 0], "image": ["i", 0], "crop": "none"}},
        "s": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "style_tiny.safetensors"}},
        "a": {"class_type": "StyleModelApply", "inputs": {"conditioning": ["6", 0], "style_model": ["s", 0],
              "clip_vision_output": ["e", 0], "strength": strength, "strength_type": strength_type}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 5, "steps": 3, "cfg": 4.0, "sampler_name": "euler",
              "scheduler": "normal", "positive": ["a", 0], "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
    })
}

#[actix_web::test]
async fn style_model_tokens_join_the_prompt() {
    let app = app().await;
    let full = saved(&app, &run(&app, style_graph(1.0, "multiply", "full")).await).await;
    let half = saved(&app, &run(&app, style_graph(0.5, "multiply", "half")).await).await;
    // attn_bias only builds a mask SD UNets do not read: the tokens go in unscaled.
    let bias = saved(
        &app,
        &run(&app, style_graph(0.5, "attn_bias", "bias")).await,
    )
    .await;
    assert_ne!(full, half);
    assert_eq!(full, bias);
}

#[actix_web::test]
async fn object_info_declares_the_image_prompt_nodes() {
    let app = app().await;
    let (_, info) = app.get("/object_info").await;
    let encode = &info["CLIPVisionEncode"];
    assert_eq!(
        encode["input"]["required"]["crop"][0],
        json!(["center", "none"])
    );
    assert_eq!(encode["output"], json!(["CLIP_VISION_OUTPUT"]));
    assert_eq!(encode["category"], "conditioning");
    let loader = &info["unCLIPCheckpointLoader"];
    assert_eq!(
        loader["output"],
        json!(["MODEL", "CLIP", "VAE", "CLIP_VISION"])
    );
    assert_eq!(
        loader["input"]["required"]["ckpt_name"][0]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let apply = &info["StyleModelApply"];
    assert_eq!(apply["display_name"], "Apply Style Model");
    assert_eq!(apply["category"], "conditioning/style_model");
    assert_eq!(
        apply["input"]["required"]["strength"][1],
        json!({"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001})
    );
    assert_eq!(
        apply["input"]["required"]["strength_type"][0],
        json!(["multiply", "attn_bias"])
    );
    let unclip = &info["unCLIPConditioning"];
    assert_eq!(
        unclip["input"]["required"]["noise_augmentation"][1],
        json!({"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01})
    );
    assert_eq!(
        info["CLIPVisionLoader"]["input"]["required"]["clip_name"][0],
        json!(["clip_vision_g.safetensors"])
    );
    assert_eq!(
        info["StyleModelLoader"]["input"]["required"]["style_model_name"][0],
        json!(["style_tiny.safetensors"])
    );
}
