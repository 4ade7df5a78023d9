//! The diffusion nodes through the real server on tiny checkpoints (issues 3 and 4).

use candle_core::DType;
use serde_json::{json, Value as Json};
use weft::app::ComputeConfig;
use weft::engine::device::DeviceChoice;

use crate::helpers::{find, read_png, spawn_app, TestApp};
use crate::models::install_all;

async fn app_with_models() -> TestApp {
    let app = spawn_app().await;
    install_all(&app.dir.path().join("models"));
    app
}

/// ComfyUI's default workflow (API format, as the frontend sends it) on a tiny checkpoint.
pub(crate) fn default_workflow(
    ckpt: &str,
    sampler: &str,
    scheduler: &str,
    seed: u64,
    prefix: &str,
) -> Json {
    json!({
        "3": {"inputs": {"seed": seed, "steps": 3, "cfg": 8, "sampler_name": sampler, "scheduler": scheduler, "denoise": 1,
                         "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]},
              "class_type": "KSampler", "_meta": {"title": "KSampler"}},
        "4": {"inputs": {"ckpt_name": ckpt}, "class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"}},
        "5": {"inputs": {"width": 64, "height": 64, "batch_size": 1}, "class_type": "EmptyLatentImage"},
        "6": {"inputs": {"text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", "clip": ["4", 1]}, "class_type": "CLIPTextEncode"},
        "7": {"inputs": {"text": "text, watermark", "clip": ["4", 1]}, "class_type": "CLIPTextEncode"},
        "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode"},
        "9": {"inputs": {"filename_prefix": prefix, "images": ["8", 0]}, "class_type": "SaveImage"}
    })
}

async fn run_ok(app: &TestApp, prompt: Json) -> Json {
    app.queue_ok(
        "/prompt",
        json!({"prompt": prompt, "extra_data": {"extra_pnginfo": {"workflow": {"nodes": []}}}}),
    )
    .await
}

fn pixels_ok(pixels: &[u8]) -> bool {
    // Random weights make noise, but never a blank or constant image.
    let first = pixels[0];
    pixels.iter().any(|&p| p != first)
}

#[actix_web::test]
async fn the_default_workflow_runs_on_tiny_sd1_sd2_sdxl_checkpoints() {
    let app = app_with_models().await;
    let mut ws = app.ws("d").await;
    for (ckpt, prefix) in [
        ("tiny_sd1.safetensors", "sd1"),
        ("tiny_sd2.safetensors", "sd2"),
        ("tiny_sdxl.safetensors", "sdxl"),
    ] {
        let (status, body) = app
            .post(
                "/prompt",
                json!({"prompt": default_workflow(ckpt, "euler", "normal", 156680208700286, prefix), "client_id": "d",
                       "extra_data": {"extra_pnginfo": {"workflow": {"nodes": [], "links": []}}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let id = body["prompt_id"].as_str().unwrap().to_owned();
        let events = ws.until_done(&id).await;
        assert!(
            find(&events, "execution_success").is_some(),
            "{prefix}: {events:#?}"
        );
        // One progress event per sampler step.
        let steps: Vec<u64> = events
            .iter()
            .filter(|e| e["type"] == "progress" && e["data"]["node"] == "3")
            .map(|e| e["data"]["value"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [1, 2, 3], "{prefix}");
        let (w, h, texts, pixels) =
            read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png")));
        // The tiny VAE has two downsamplings: an 8×8 latent decodes to 32×32.
        assert_eq!((w, h), (32, 32), "{prefix}");
        assert!(pixels_ok(&pixels), "{prefix}");
        assert!(
            texts.iter().any(|(k, _)| k == "prompt") && texts.iter().any(|(k, _)| k == "workflow")
        );
    }
    let (_, stats) = app.get("/system_stats").await;
    assert!(stats["devices"][0]["name"].is_string());
    assert_eq!(stats["weft"]["models_loaded"], 3);
    assert!(stats["weft"]["model_bytes"].as_u64().unwrap() > 0);
    // POST /free unloads them.
    app.post("/free", json!({"unload_models": true})).await;
    let (_, stats) = app.get("/system_stats").await;
    assert_eq!(stats["weft"]["models_loaded"], 0);
}

/// Models are keyed by their content: one file under two names loads once, and a name whose file
/// is replaced by other bytes loads the new model.
#[actix_web::test]
async fn one_file_under_two_names_loads_once_and_a_replaced_file_reloads() {
    let app = app_with_models().await;
    let checkpoints = app.dir.path().join("models/checkpoints");
    let copy = checkpoints.join("copy.safetensors");
    std::fs::copy(checkpoints.join("tiny_sd1.safetensors"), &copy).unwrap();
    let loaded = |stats: Json| stats["weft"]["models_loaded"].as_u64().unwrap();
    run_ok(
        &app,
        default_workflow("tiny_sd1.safetensors", "euler", "normal", 5, "original"),
    )
    .await;
    run_ok(
        &app,
        default_workflow("copy.safetensors", "euler", "normal", 5, "copy"),
    )
    .await;
    assert_eq!(loaded(app.get("/system_stats").await.1), 1);
    let pixels =
        |prefix: &str| read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png"))).3;
    assert!(pixels("copy") == pixels("original"));

    std::fs::copy(checkpoints.join("tiny_sd2.safetensors"), &copy).unwrap();
    run_ok(
        &app,
        default_workflow("copy.safetensors", "euler", "normal", 5, "replaced"),
    )
    .await;
    assert_eq!(loaded(app.get("/system_stats").await.1), 2);
    assert!(pixels("replaced") != pixels("original"));
}

/// Over the model budget the least recently used model is unloaded: with room for two of the
/// three checkpoints, SD1 used after SD2 stays and SD2 goes when SDXL loads.
#[actix_web::test]
async fn the_least_recently_used_model_is_unloaded_over_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    install_all(dir.path());
    // Models count what their weights take in memory (here f32, the file less its header).
    let size = |name: &str| crate::models::tensor_bytes(&checkpoints.join(name));
    let (sd1, sd2, sdxl) = (
        size("tiny_sd1.safetensors"),
        size("tiny_sd2.safetensors"),
        size("tiny_sdxl.safetensors"),
    );
    let budget_mb = (sd1 + sd2.max(sdxl)).div_ceil(1 << 20);
    assert!(budget_mb << 20 < sd1 + sd2 + sdxl, "the three must not fit");
    let app = crate::helpers::spawn_app_with(|c| {
        c.model_budget_mb = Some(budget_mb as usize);
    })
    .await;
    install_all(&app.dir.path().join("models"));
    let run =
        |ckpt: &'static str, seed: u64| default_workflow(ckpt, "euler", "normal", seed, "lru");
    run_ok(&app, run("tiny_sd1.safetensors", 1)).await;
    run_ok(&app, run("tiny_sd2.safetensors", 1)).await;
    let (_, body) = app.get("/system_stats").await;
    assert_eq!(body["weft"]["model_bytes"], sd1 + sd2);
    // Clear the node cache (not the models) so the SD1 loader runs again and uses its model.
    app.post("/free", json!({"free_memory": true})).await;
    run_ok(&app, run("tiny_sd1.safetensors", 2)).await;
    run_ok(&app, run("tiny_sdxl.safetensors", 1)).await;
    let (_, body) = app.get("/system_stats").await;
    assert_eq!(body["weft"]["models_loaded"], 2, "{}", body["weft"]);
    assert_eq!(body["weft"]["model_bytes"], sd1 + sdxl, "{}", body["weft"]);
}

#[actix_web::test]
async fn the_same_seed_gives_the_same_image_and_another_seed_does_not() {
    let app = app_with_models().await;
    run_ok(
        &app,
        default_workflow("tiny_sd1.safetensors", "euler_ancestral", "karras", 42, "a"),
    )
    .await;
    app.post("/free", json!({"unload_models": true, "free_memory": true}))
        .await;
    run_ok(
        &app,
        default_workflow("tiny_sd1.safetensors", "euler_ancestral", "karras", 42, "b"),
    )
    .await;
    run_ok(
        &app,
        default_workflow("tiny_sd1.safetensors", "euler_ancestral", "karras", 43, "c"),
    )
    .await;
    let (_, _, _, a) = read_png(&app.data_dir().join("output/a_00001_.png"));
    let (_, _, _, b) = read_png(&app.data_dir().join("output/b_00001_.png"));
    let (_, _, _, c) = read_png(&app.data_dir().join("output/c_00001_.png"));
    assert_eq!(
        a, b,
        "a fresh load and the same seed reproduce the image exactly"
    );
    assert_ne!(a, c);
    // Changing only the seed re-ran the sampler and what follows, not the loader or the encoders.
    let (_, cache) = app.get("/api/weft/cache").await;
    let status = |id: &str| {
        cache["last_prompt"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status("4"), "cached");
    assert_eq!(status("6"), "cached");
    assert_eq!(status("3"), "executed");
    let reason = cache["last_prompt"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "3")
        .unwrap()["reason"]
        .clone();
    assert_eq!(reason, "input 'seed' changed");
}

#[actix_web::test]
async fn every_sampler_and_scheduler_runs_through_the_server() {
    use weft::engine::sampling::samplers::SAMPLER_NAMES;
    use weft::engine::sampling::schedulers::SCHEDULER_NAMES;
    let app = app_with_models().await;
    // One prompt: a KSampler per sampler, cycling through the schedulers so each is used.
    let mut prompt = default_workflow("tiny_sd1.safetensors", "euler", "normal", 7, "unused");
    let graph = prompt.as_object_mut().unwrap();
    graph.remove("3");
    graph.remove("8");
    graph.remove("9");
    for (i, sampler) in SAMPLER_NAMES.iter().enumerate() {
        let scheduler = SCHEDULER_NAMES[i % SCHEDULER_NAMES.len()];
        graph.insert(format!("k{i}"), json!({"class_type": "KSampler", "inputs": {
            "seed": 7, "steps": 3, "cfg": 5.0, "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}}));
        graph.insert(format!("d{i}"), json!({"class_type": "VAEDecode", "inputs": {"samples": [format!("k{i}"), 0], "vae": ["4", 2]}}));
        graph.insert(format!("s{i}"), json!({"class_type": "SaveImage", "inputs": {"images": [format!("d{i}"), 0], "filename_prefix": format!("sampler_{sampler}")}}));
    }
    let entry = run_ok(&app, prompt).await;
    assert_eq!(
        entry["outputs"].as_object().unwrap().len(),
        SAMPLER_NAMES.len()
    );
    for sampler in SAMPLER_NAMES {
        let (_, _, _, pixels) = read_png(
            &app.data_dir()
                .join(format!("output/sampler_{sampler}_00001_.png")),
        );
        assert!(pixels_ok(&pixels), "{sampler} gave a constant image");
    }
    // The lists in /object_info are exactly what runs.
    let (_, info) = app.get("/object_info/KSampler").await;
    assert_eq!(
        info["KSampler"]["input"]["required"]["sampler_name"][0],
        json!(SAMPLER_NAMES)
    );
    assert_eq!(
        info["KSampler"]["input"]["required"]["scheduler"][0],
        json!(SCHEDULER_NAMES)
    );
    assert_eq!(
        info["KSampler"]["input"]["required"]["seed"][1]["max"],
        json!(u64::MAX)
    );
}

#[actix_web::test]
async fn sdxl_base_and_refiner_split_with_ksampler_advanced() {
    let app = app_with_models().await;
    let prompt = json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
        "12": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl_refiner.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "6": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"clip": ["4", 1], "width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0,
               "target_width": 1024, "target_height": 1024, "text_g": "a lighthouse", "text_l": "a lighthouse, oil painting"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry"}},
        "15": {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": {"clip": ["12", 1], "ascore": 6.0, "width": 1024, "height": 1024, "text": "a lighthouse"}},
        "16": {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": {"clip": ["12", 1], "ascore": 2.5, "width": 1024, "height": 1024, "text": "blurry"}},
        "10": {"class_type": "KSamplerAdvanced", "inputs": {"model": ["4", 0], "add_noise": "enable", "noise_seed": 721897303308196_u64,
               "steps": 6, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
               "latent_image": ["5", 0], "start_at_step": 0, "end_at_step": 4, "return_with_leftover_noise": "enable"}},
        "11": {"class_type": "KSamplerAdvanced", "inputs": {"model": ["12", 0], "add_noise": "disable", "noise_seed": 0,
               "steps": 6, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "positive": ["15", 0], "negative": ["16", 0],
               "latent_image": ["10", 0], "start_at_step": 4, "end_at_step": 10000, "return_with_leftover_noise": "disable"}},
        "17": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["12", 2]}},
        "19": {"class_type": "SaveImage", "inputs": {"images": ["17", 0], "filename_prefix": "refined"}}
    });
    let mut ws = app.ws("x").await;
    let (_, body) = app
        .post("/prompt", json!({"prompt": prompt, "client_id": "x"}))
        .await;
    let id = body["prompt_id"].as_str().unwrap().to_owned();
    let events = ws.until_done(&id).await;
    assert!(find(&events, "execution_success").is_some(), "{events:#?}");
    let progress = |node: &str| {
        events
            .iter()
            .filter(|e| e["type"] == "progress" && e["data"]["node"] == node)
            .count()
    };
    assert_eq!(progress("10"), 4, "base runs steps 0-4");
    assert_eq!(progress("11"), 2, "refiner finishes steps 4-6");
    assert!(
        app.data_dir().join("output/refined_00002_.png").exists(),
        "a batch of two"
    );
}

#[actix_web::test]
async fn conditioning_latent_and_custom_sampling_nodes_run_in_graphs() {
    let app = app_with_models().await;
    let models = app.dir.path().join("models");
    std::fs::write(models.join("configs/v1-inference.yaml"), "model: {}\n").unwrap();
    // A standalone VAE in LDM names (no prefix).
    let vae = crate::engine::load::ldm_tensors("vae_tiny", "", candle_core::DType::F32);
    candle_core::safetensors::save(&vae, models.join("vae/tiny_vae.safetensors")).unwrap();
    std::fs::write(
        app.data_dir().join("input/photo.png"),
        crate::server::png_bytes(64, 64, [180, 90, 30, 200]),
    )
    .unwrap();

    let prompt = json!({
        "ckpt": {"class_type": "CheckpointLoader", "inputs": {"config_name": "v1-inference.yaml", "ckpt_name": "tiny_sd1.safetensors"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny_vae.safetensors"}},
        "skip": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["ckpt", 1], "stop_at_clip_layer": -2}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["skip", 0], "text": "(a red boat:1.3) on a lake, [calm] water"}},
        "pos2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "mountains"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "ugly"}},
        "area": {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["pos2", 0], "width": 64, "height": 64, "x": 0, "y": 0, "strength": 1.0}},
        "pct": {"class_type": "ConditioningSetAreaPercentage", "inputs": {"conditioning": ["pos2", 0], "width": 0.5, "height": 1.0, "x": 0.5, "y": 0.0, "strength": 0.8}},
        "load": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "masked": {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["pos", 0], "mask": ["load", 1], "strength": 1.0, "set_cond_area": "mask bounds"}},
        "comb": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["area", 0], "conditioning_2": ["pct", 0]}},
        "comb2": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["comb", 0], "conditioning_2": ["masked", 0]}},
        "avg": {"class_type": "ConditioningAverage", "inputs": {"conditioning_to": ["comb2", 0], "conditioning_from": ["pos2", 0], "conditioning_to_strength": 0.7}},
        "cat": {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["neg", 0], "conditioning_from": ["pos2", 0]}},
        "zero": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["cat", 0]}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0], "vae": ["vae", 0]}},
        "enct": {"class_type": "VAEEncodeTiled", "inputs": {"pixels": ["load", 0], "vae": ["ckpt", 2], "tile_size": 64, "overlap": 0, "temporal_size": 64, "temporal_overlap": 8}},
        "blend": {"class_type": "LatentBlend", "inputs": {"samples1": ["enc", 0], "samples2": ["enct", 0], "blend_factor": 0.5}},
        "up": {"class_type": "LatentUpscale", "inputs": {"samples": ["blend", 0], "upscale_method": "bilinear", "width": 0, "height": 96, "crop": "disabled"}},
        "upby": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["blend", 0], "upscale_method": "area", "scale_by": 0.5}},
        "comp": {"class_type": "LatentComposite", "inputs": {"samples_to": ["blend", 0], "samples_from": ["upby", 0], "x": 8, "y": 8, "feather": 8}},
        "rep": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["comp", 0], "amount": 3}},
        "pick": {"class_type": "LatentFromBatch", "inputs": {"samples": ["rep", 0], "batch_index": 1, "length": 2}},
        "nm": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["pick", 0], "mask": ["load", 1]}},
        "k": {"class_type": "KSampler", "inputs": {"model": ["ckpt", 0], "seed": 5, "steps": 3, "cfg": 6.0, "sampler_name": "dpmpp_2m",
              "scheduler": "karras", "positive": ["avg", 0], "negative": ["zero", 0], "latent_image": ["nm", 0], "denoise": 0.6}},
        "sel": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "sch": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "simple", "steps": 4, "denoise": 0.8}},
        "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sch", 0], "step": 2}},
        "kar": {"class_type": "KarrasScheduler", "inputs": {"steps": 3, "sigma_max": 14.614642, "sigma_min": 0.0291675, "rho": 7.0}},
        "exp": {"class_type": "ExponentialScheduler", "inputs": {"steps": 3, "sigma_max": 14.614642, "sigma_min": 0.0291675}},
        "turbo": {"class_type": "SDTurboScheduler", "inputs": {"model": ["ckpt", 0], "steps": 2, "denoise": 1.0}},
        "custom": {"class_type": "SamplerCustom", "inputs": {"model": ["ckpt", 0], "add_noise": true, "noise_seed": 9, "cfg": 4.0,
                   "positive": ["pos", 0], "negative": ["neg", 0], "sampler": ["sel", 0], "sigmas": ["kar", 0], "latent_image": ["up", 0]}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 11}},
        "nonoise": {"class_type": "DisableNoise", "inputs": {}},
        "guide": {"class_type": "CFGGuider", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "cfg": 3.0}},
        "basic": {"class_type": "BasicGuider", "inputs": {"model": ["ckpt", 0], "conditioning": ["pos", 0]}},
        "adv": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guide", 0], "sampler": ["sel", 0],
                "sigmas": ["split", 0], "latent_image": ["blend", 0]}},
        "adv2": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["nonoise", 0], "guider": ["basic", 0], "sampler": ["sel", 0],
                 "sigmas": ["split", 1], "latent_image": ["adv", 0]}},
        "adv3": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["basic", 0], "sampler": ["sel", 0],
                 "sigmas": ["exp", 0], "latent_image": ["blend", 0]}},
        "adv4": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["basic", 0], "sampler": ["sel", 0],
                 "sigmas": ["turbo", 0], "latent_image": ["blend", 0]}},
        "inp": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["load", 0], "vae": ["ckpt", 2], "mask": ["load", 1], "grow_mask_by": 6}},
        "kinp": {"class_type": "KSampler", "inputs": {"model": ["ckpt", 0], "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                 "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["inp", 0], "denoise": 1.0}},
        "dec1": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["ckpt", 2]}},
        "dec2": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["custom", 1], "vae": ["vae", 0], "tile_size": 64, "overlap": 32, "temporal_size": 64, "temporal_overlap": 8}},
        "dec3": {"class_type": "VAEDecode", "inputs": {"samples": ["adv2", 0], "vae": ["ckpt", 2]}},
        "dec4": {"class_type": "VAEDecode", "inputs": {"samples": ["adv3", 0], "vae": ["ckpt", 2]}},
        "dec5": {"class_type": "VAEDecode", "inputs": {"samples": ["adv4", 1], "vae": ["ckpt", 2]}},
        "dec6": {"class_type": "VAEDecode", "inputs": {"samples": ["kinp", 0], "vae": ["ckpt", 2]}},
        "s1": {"class_type": "SaveImage", "inputs": {"images": ["dec1", 0], "filename_prefix": "k"}},
        "s2": {"class_type": "SaveImage", "inputs": {"images": ["dec2", 0], "filename_prefix": "custom"}},
        "s3": {"class_type": "SaveImage", "inputs": {"images": ["dec3", 0], "filename_prefix": "adv"}},
        "s4": {"class_type": "PreviewImage", "inputs": {"images": ["dec4", 0]}},
        "s5": {"class_type": "PreviewImage", "inputs": {"images": ["dec5", 0]}},
        "s6": {"class_type": "SaveImage", "inputs": {"images": ["dec6", 0], "filename_prefix": "inpaint"}}
    });
    run_ok(&app, prompt).await;
    // LatentFromBatch took 2 of the 3 repeats.
    assert!(app.data_dir().join("output/k_00002_.png").exists());
    assert!(!app.data_dir().join("output/k_00003_.png").exists());
    // LatentUpscale to height 96 keeps the aspect: a 12×12 latent decodes to 48×48.
    let (w, h, _, _) = read_png(&app.data_dir().join("output/custom_00001_.png"));
    assert_eq!((w, h), (48, 48));
}

#[actix_web::test]
async fn bad_checkpoints_fail_on_their_node_with_a_clear_error() {
    let app = app_with_models().await;
    let dir = app.dir.path().join("models/checkpoints");
    let good = std::fs::read(dir.join("tiny_sd1.safetensors")).unwrap();
    std::fs::write(dir.join("truncated.safetensors"), &good[..good.len() / 2]).unwrap();
    let mut lying = good.clone();
    lying[..8].copy_from_slice(&(good.len() as u64 * 4).to_le_bytes());
    std::fs::write(dir.join("lying_header.safetensors"), &lying).unwrap();
    std::fs::write(dir.join("empty.safetensors"), b"").unwrap();
    let mut other = std::collections::HashMap::new();
    other.insert(
        "some.other.model.weight".to_string(),
        candle_core::Tensor::zeros((4, 4), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap(),
    );
    candle_core::safetensors::save(&other, dir.join("unknown_family.safetensors")).unwrap();
    for (file, expect) in [
        ("truncated.safetensors", "truncated"),
        ("lying_header.safetensors", "header"),
        ("empty.safetensors", "empty.safetensors"),
        ("unknown_family.safetensors", "unknown model family"),
    ] {
        let (_, body) = app
            .post(
                "/prompt",
                json!({"prompt": default_workflow(file, "euler", "normal", 1, "bad")}),
            )
            .await;
        let id = body["prompt_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: {body}"))
            .to_owned();
        let entry = app.wait_history(&id).await;
        assert_eq!(entry["status"]["status_str"], "error", "{file}");
        let error = &entry["status"]["messages"][2][1];
        assert_eq!(error["node_id"], "4", "{file}: {error}");
        let message = error["exception_message"].as_str().unwrap();
        assert!(
            message.contains(file),
            "{file}: message does not name the file: {message}"
        );
        assert!(message.to_lowercase().contains(expect), "{file}: {message}");
    }
    // The server is still up and runs a good prompt.
    run_ok(
        &app,
        default_workflow("tiny_sd1.safetensors", "euler", "normal", 1, "good"),
    )
    .await;
}

#[actix_web::test]
async fn standalone_text_encoders_and_textual_inversions() {
    use weft::engine::clip::ClipActivation;
    let app = app_with_models().await;
    let models = app.dir.path().join("models");
    let save = |name: &str, tensors: std::collections::HashMap<String, candle_core::Tensor>| {
        candle_core::safetensors::save(&tensors, models.join(name)).unwrap();
    };
    save(
        "text_encoders/clip_l_tiny.safetensors",
        crate::models::clip_weights(48, None, ClipActivation::QuickGelu),
    );
    save(
        "text_encoders/sdxl_l_tiny.safetensors",
        crate::models::clip_weights(32, None, ClipActivation::QuickGelu),
    );
    save(
        "text_encoders/sdxl_g_tiny.safetensors",
        crate::models::clip_weights(32, Some(32), ClipActivation::Gelu),
    );
    let mut embedding = std::collections::HashMap::new();
    embedding.insert(
        "emb_params".to_string(),
        weft::engine::synth::synth_tensor("embedding.style", (2, 48)).unwrap(),
    );
    save("embeddings/style.safetensors", embedding);

    let graph = |text: &str, prefix: &str| {
        json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
            "c": {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l_tiny.safetensors", "type": "stable_diffusion"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": text}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": ""}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 3, "steps": 2, "cfg": 7.0, "sampler_name": "euler",
                  "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
        })
    };
    run_ok(&app, graph("a boat, embedding:style", "with")).await;
    run_ok(&app, graph("a boat, embedding:nothing_here", "without")).await;
    run_ok(&app, graph("a boat,", "plain")).await;
    let (_, _, _, with) = read_png(&app.data_dir().join("output/with_00001_.png"));
    let (_, _, _, without) = read_png(&app.data_dir().join("output/without_00001_.png"));
    let (_, _, _, plain) = read_png(&app.data_dir().join("output/plain_00001_.png"));
    assert!(
        with != plain,
        "the textual inversion changes the conditioning"
    );
    // A missing embedding is skipped with a warning, as ComfyUI does: the prompt still runs.
    assert!(with != without);

    // SDXL's two encoders from separate files, in either order.
    for (first, second) in [
        ("sdxl_l_tiny.safetensors", "sdxl_g_tiny.safetensors"),
        ("sdxl_g_tiny.safetensors", "sdxl_l_tiny.safetensors"),
    ] {
        let prompt = json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
            "c": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": first, "clip_name2": second, "type": "sdxl"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": "a boat"}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 3, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                  "scheduler": "normal", "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0], "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "dual"}}
        });
        run_ok(&app, prompt).await;
    }
    // Two CLIP-L files are not an SDXL pair: a clear error on the loader.
    let (_, body) = app
        .post("/prompt", json!({"prompt": {
            "c": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "sdxl_l_tiny.safetensors", "clip_name2": "sdxl_l_tiny.safetensors", "type": "sdxl"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": "a boat"}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 3, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
                  "scheduler": "normal", "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0], "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bad"}}
        }}))
        .await;
    let entry = app.wait_history(body["prompt_id"].as_str().unwrap()).await;
    let error = &entry["status"]["messages"][2][1];
    assert_eq!(error["node_id"], "c");
    assert!(
        error["exception_message"]
            .as_str()
            .unwrap()
            .contains("OpenCLIP-bigG"),
        "{error}"
    );
}

#[actix_web::test]
async fn interrupting_a_sampler_stops_it_between_steps_and_previews_reach_clients_that_asked() {
    let app = app_with_models().await;
    let mut ws = app.ws("s").await;
    ws.send_text(r#"{"type":"feature_flags","data":{"supports_preview_metadata":true}}"#)
        .await;
    let mut prompt = default_workflow("tiny_sd1.safetensors", "euler", "normal", 1, "long");
    prompt["3"]["inputs"]["steps"] = json!(2000);
    let (_, body) = app
        .post("/prompt", json!({"prompt": prompt, "client_id": "s"}))
        .await;
    let id = body["prompt_id"].as_str().unwrap().to_owned();
    // Wait for a few sampler steps and a preview frame, then interrupt.
    let mut previews = 0;
    let mut steps = 0;
    while steps < 3 || previews == 0 {
        match ws.next_frame().await.expect("frames") {
            crate::helpers::WsFrame::Binary(frame) => {
                assert_eq!(&frame[..4], &4u32.to_be_bytes());
                previews += 1;
            }
            crate::helpers::WsFrame::Text(event) => {
                if event["type"] == "progress" && event["data"]["node"] == "3" {
                    assert_eq!(event["data"]["max"], 2000);
                    steps += 1;
                }
            }
        }
    }
    app.post("/interrupt", json!({"prompt_id": id})).await;
    let events = ws.until_done(&id).await;
    let interrupted = find(&events, "execution_interrupted").expect("interrupted");
    assert_eq!(interrupted["node_id"], "3");
    let last_step = events
        .iter()
        .filter(|e| e["type"] == "progress")
        .filter_map(|e| e["data"]["value"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(last_step < 2000, "stopped between steps, at {last_step}");
}

/// The default graph's images on the CPU in f32, for SD1 and SDXL: the reference the other
/// precisions and devices are held to.
async fn f32_cpu_images() -> Vec<Vec<u8>> {
    let reference = app_with_models().await;
    for ckpt in ["tiny_sd1.safetensors", "tiny_sdxl.safetensors"] {
        run_ok(
            &reference,
            default_workflow(ckpt, "euler", "normal", 7, "f32"),
        )
        .await;
    }
    (1..=2)
        .map(|i| read_png(&reference.data_dir().join(format!("output/f32_{i:05}_.png"))).3)
        .collect()
}

/// Runs the default graph on SD1 and SDXL with models on `compute` and checks each image is the
/// CPU f32 image up to rounding (mean difference under `tolerance` pixel levels).
async fn matches_f32_cpu(expected: &[Vec<u8>], compute: ComputeConfig, tolerance: f64) {
    let dtype = compute
        .dtype
        .map_or("default".into(), |d| format!("{d:?}").to_lowercase());
    let label = format!("{} {dtype}", compute.device);
    let app = crate::helpers::spawn_app_with(|c| c.compute = compute).await;
    install_all(&app.dir.path().join("models"));
    let (_, stats) = app.get("/system_stats").await;
    assert_eq!(stats["weft"]["device"], compute.device.to_string());
    if compute.dtype.is_some() {
        assert_eq!(stats["weft"]["weight_dtype"], dtype);
    }
    for (i, ckpt) in ["tiny_sd1.safetensors", "tiny_sdxl.safetensors"]
        .into_iter()
        .enumerate()
    {
        run_ok(&app, default_workflow(ckpt, "euler", "normal", 7, "other")).await;
        let file = app
            .data_dir()
            .join(format!("output/other_{:05}_.png", i + 1));
        let pixels = read_png(&file).3;
        let label = format!("{label} {ckpt} against f32 on the cpu");
        crate::helpers::assert_close_pixels(&label, &pixels, &expected[i], tolerance);
    }
}

/// Weights kept in f16 and in bf16 (the VAE stays in f32, as ComfyUI keeps it), arithmetic in
/// f32 on the CPU: every layer widens its weights, the default graph runs on SD1 and SDXL, and
/// the image is the f32 image up to the weights' rounding.
#[actix_web::test]
async fn half_precision_weights_run_every_model_and_match_f32_closely() {
    let expected = f32_cpu_images().await;
    for (dtype, tolerance) in [(DType::F16, 1.0), (DType::BF16, 2.0)] {
        let compute = ComputeConfig {
            device: DeviceChoice::Cpu,
            dtype: Some(dtype),
            gpu_memory_mb: None,
        };
        matches_f32_cpu(&expected, compute, tolerance).await;
    }
}

/// The same on a GPU, in every dtype it supports. Runs only where `WEFT_TEST_DEVICE` names one
/// (`cuda`, `cuda:1`, `metal`) in a build with its feature: `tools/check-gpu.sh` sets it. CI has
/// no GPU, so there the test only says that it was skipped.
#[actix_web::test]
async fn a_gpu_runs_the_default_graph_in_every_dtype_and_matches_the_cpu() {
    let Ok(device) = std::env::var("WEFT_TEST_DEVICE") else {
        eprintln!("skipped: set WEFT_TEST_DEVICE=cuda (or metal) in a GPU build to run it");
        return;
    };
    let device: DeviceChoice = device.parse().expect("WEFT_TEST_DEVICE names a device");
    let expected = f32_cpu_images().await;
    let dtypes: &[(DType, f64)] = match device {
        DeviceChoice::Cuda(_) => &[(DType::F32, 0.5), (DType::F16, 1.0), (DType::BF16, 3.0)],
        _ => &[(DType::F32, 0.5), (DType::F16, 1.0)],
    };
    for &(dtype, tolerance) in dtypes {
        let compute = ComputeConfig {
            device,
            dtype: Some(dtype),
            gpu_memory_mb: None,
        };
        matches_f32_cpu(&expected, compute, tolerance).await;
    }
    // Partial loading: 1 MB of GPU memory for weights, so most of each UNet stays in RAM and
    // crosses to the GPU layer by layer; the same image all the same.
    let compute = ComputeConfig {
        device,
        dtype: Some(DType::F16),
        gpu_memory_mb: Some(1),
    };
    matches_f32_cpu(&expected, compute, 1.0).await;
}

/// Checks that `/models/{folder}` lists `name`.
async fn assert_lists(app: &crate::helpers::TestApp, folder: &str, name: &str) {
    let (_, listed) = app.get(&format!("/models/{folder}")).await;
    let names = listed.as_array().cloned().unwrap_or_default();
    assert!(names.contains(&json!(name)), "{listed}");
}

/// Model files and folders symlinked into `models/` from elsewhere load, as ComfyUI users keep
/// them; names in requests still cannot leave the folder.
#[cfg(unix)]
#[actix_web::test]
async fn a_checkpoint_symlinked_from_outside_the_models_folder_loads() {
    let app = spawn_app().await;
    let elsewhere = tempfile::tempdir().unwrap();
    install_all(elsewhere.path());
    let checkpoints = app.dir.path().join("models/checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.path().join("checkpoints/tiny_sd1.safetensors"),
        checkpoints.join("linked.safetensors"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        elsewhere.path().join("checkpoints"),
        checkpoints.join("disk2"),
    )
    .unwrap();
    assert_lists(&app, "checkpoints", "linked.safetensors").await;
    assert_lists(&app, "checkpoints", "disk2/tiny_sd2.safetensors").await;
    run_ok(
        &app,
        default_workflow("linked.safetensors", "euler", "normal", 1, "linked"),
    )
    .await;
    run_ok(
        &app,
        default_workflow("disk2/tiny_sd2.safetensors", "euler", "normal", 1, "disk2"),
    )
    .await;
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": default_workflow("../../x.safetensors", "euler", "normal", 1, "x")}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// ComfyUI's `extra_model_paths.yaml`: an A1111 install's folders (several paths in one entry,
/// `base_path` relative to the file) are listed and load; a malformed file stops the server
/// before it starts, naming the file.
#[actix_web::test]
async fn extra_model_paths_add_an_a1111_install_s_folders() {
    let elsewhere = tempfile::tempdir().unwrap();
    let webui = elsewhere.path().join("webui");
    install_all(&webui.join("staging"));
    std::fs::create_dir_all(webui.join("models")).unwrap();
    std::fs::rename(
        webui.join("staging/checkpoints"),
        webui.join("models/Stable-diffusion"),
    )
    .unwrap();
    let yaml = elsewhere.path().join("extra_model_paths.yaml");
    std::fs::write(
        &yaml,
        "a111:\n    base_path: webui/\n    checkpoints: |\n        models/Stable-diffusion\n        models/Other\n    configs: models/Stable-diffusion\n    hypernetworks: models/hypernetworks\n",
    )
    .unwrap();
    let app = crate::helpers::spawn_app_with(|c| c.extra_model_paths = vec![yaml.clone()]).await;
    assert_lists(&app, "checkpoints", "tiny_sd1.safetensors").await;
    run_ok(
        &app,
        default_workflow("tiny_sd1.safetensors", "euler", "normal", 1, "a111"),
    )
    .await;

    std::fs::write(&yaml, "a111: [not, a, mapping]\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = weft::app::ServerConfig::new(dir.path());
    config.port = 0;
    config.extra_model_paths = vec![yaml.clone()];
    let error = weft::app::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("extra_model_paths.yaml") && error.contains("not a mapping"),
        "{error}"
    );
}

/// ConditioningSetTimestepRange (prompt switching) and ConditioningSetAreaStrength.
#[actix_web::test]
async fn timestep_ranges_switch_prompts_and_area_strength_weights_entries() {
    let app = app_with_models().await;
    let image =
        |prefix: &str| read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png"))).3;
    let graph = |prefix: &str, extra: Json, positive: Json| {
        let mut g = default_workflow("tiny_sd1.safetensors", "euler", "normal", 5, prefix);
        g["3"]["inputs"]["steps"] = json!(6);
        g["10"] = json!({"class_type": "CLIPTextEncode", "inputs": {"text": "a castle at night", "clip": ["4", 1]}});
        for (id, node) in extra.as_object().unwrap() {
            g[id] = node.clone();
        }
        g["3"]["inputs"]["positive"] = positive;
        g
    };
    let range = |input: &str, start: f64, end: f64| json!({"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": [input, 0], "start": start, "end": end}});
    let combine = |a: &str, b: &str| json!({"class_type": "ConditioningCombine", "inputs": {"conditioning_1": [a, 0], "conditioning_2": [b, 0]}});
    run_ok(&app, graph("plain", json!({}), json!(["6", 0]))).await;
    run_ok(&app, graph("castle", json!({}), json!(["10", 0]))).await;
    // The whole schedule: the same as no range.
    run_ok(
        &app,
        graph("whole", json!({"r": range("6", 0.0, 1.0)}), json!(["r", 0])),
    )
    .await;
    assert!(image("whole") == image("plain"));
    // The first prompt for the first half, the castle for the rest: unlike either.
    let switch =
        json!({"a": range("6", 0.0, 0.5), "b": range("10", 0.5, 1.0), "c": combine("a", "b")});
    run_ok(&app, graph("switch", switch, json!(["c", 0]))).await;
    let switched = image("switch");
    assert!(switched != image("plain") && switched != image("castle"));
    // An entry outside its range at every step adds nothing to the other's prediction.
    let never = json!({"n": range("10", 1.0, 1.0), "c": combine("6", "n")});
    run_ok(&app, graph("never", never, json!(["c", 0]))).await;
    assert!(image("never") == image("plain"));

    // Strength weighs overlapping entries: 1 is the default, 3 tilts the mix toward the castle.
    let strength = |input: &str, s: f64| json!({"class_type": "ConditioningSetAreaStrength", "inputs": {"conditioning": [input, 0], "strength": s}});
    run_ok(
        &app,
        graph("mix", json!({"c": combine("6", "10")}), json!(["c", 0])),
    )
    .await;
    let one = json!({"s": strength("10", 1.0), "c": combine("6", "s")});
    run_ok(&app, graph("one", one, json!(["c", 0]))).await;
    assert!(image("one") == image("mix"));
    let three = json!({"s": strength("10", 3.0), "c": combine("6", "s")});
    run_ok(&app, graph("three", three, json!(["c", 0]))).await;
    assert!(image("three") != image("mix"));

    let (_, info) = app.get("/object_info/ConditioningSetTimestepRange").await;
    let node = &info["ConditioningSetTimestepRange"];
    assert_eq!(node["category"], "advanced/conditioning");
    assert_eq!(node["input"]["required"]["end"][1]["default"], 1.0);
    assert_eq!(node["input"]["required"]["start"][1]["step"], 0.001);
}
