//! The model patch nodes through the real server on a tiny SD1 checkpoint: declarations, that a
//! patch changes the image and neutral settings do not (bit for bit), that the input model is left
//! unpatched, and input errors. The maths is checked in `engine::model_patches_parity`.

use serde_json::{json, Value as Json};

use crate::helpers::{read_png, spawn_app, TestApp};
use crate::models::install_all;

async fn app_with_models() -> TestApp {
    let app = spawn_app().await;
    install_all(&app.dir.path().join("models"));
    app
}

/// Loader → `patches` (a chain of (id, node without its "model" input)) → KSampler → SaveImage.
fn graph(patches: &[(&str, Json)], prefix: &str, sampler: &str) -> Json {
    let mut g = json!({
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a red barn"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "fog"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": prefix}}
    });
    let nodes = g.as_object_mut().expect("object");
    let mut model = json!(["ckpt", 0]);
    for (id, node) in patches {
        let mut node = node.clone();
        node["inputs"]["model"] = model;
        nodes.insert((*id).to_string(), node);
        model = json!([id, 0]);
    }
    nodes.insert(
        "k".into(),
        json!({"class_type": "KSampler", "inputs": {"model": model, "seed": 4, "steps": 3, "cfg": 6.0,
               "sampler_name": sampler, "scheduler": "karras", "positive": ["pos", 0], "negative": ["neg", 0],
               "latent_image": ["latent", 0], "denoise": 1.0}}),
    );
    g
}

async fn pixels(app: &TestApp, patches: &[(&str, Json)], prefix: &str) -> Vec<u8> {
    app.queue_ok(
        "/prompt",
        json!({"prompt": graph(patches, prefix, "euler")}),
    )
    .await;
    read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png"))).3
}

fn freeu(class: &str, b: f64, s: f64) -> Json {
    json!({"class_type": class, "inputs": {"b1": b, "b2": b, "s1": s, "s2": s}})
}

#[actix_web::test]
async fn object_info_declares_comfyui_inputs() {
    let app = spawn_app().await;
    for (class, inputs, output, category) in [
        (
            "RescaleCFG",
            &["model", "multiplier"][..],
            "MODEL",
            "advanced/model",
        ),
        (
            "ModelSamplingDiscrete",
            &["model", "sampling", "zsnr"],
            "MODEL",
            "advanced/model",
        ),
        (
            "CFGZeroStar",
            &["model"],
            "patched_model",
            "advanced/guidance",
        ),
        (
            "Epsilon Scaling",
            &["model", "scaling_factor"],
            "MODEL",
            "model/patch/unet",
        ),
        (
            "APG",
            &["model", "eta", "norm_threshold", "momentum"],
            "MODEL",
            "sampling/custom_sampling",
        ),
        ("TCFG", &["model"], "patched_model", "advanced/guidance"),
        (
            "PerturbedAttentionGuidance",
            &["model", "scale"],
            "MODEL",
            "model_patches/unet",
        ),
        (
            "FreeU",
            &["model", "b1", "b2", "s1", "s2"],
            "MODEL",
            "model_patches",
        ),
        (
            "FreeU_V2",
            &["model", "b1", "b2", "s1", "s2"],
            "MODEL",
            "model_patches",
        ),
        ("DifferentialDiffusion", &["model"], "MODEL", "_for_testing"),
        (
            "SelfAttentionGuidance",
            &["model", "scale", "blur_sigma"],
            "MODEL",
            "_for_testing",
        ),
        (
            "HyperTile",
            &[
                "model",
                "tile_size",
                "swap_size",
                "max_depth",
                "scale_depth",
            ],
            "MODEL",
            "_for_testing",
        ),
        (
            "TomePatchModel",
            &["model", "ratio"],
            "MODEL",
            "_for_testing",
        ),
        (
            "PerpNeg",
            &["model", "empty_conditioning", "neg_scale"],
            "MODEL",
            "_for_testing",
        ),
        (
            "PerpNegGuider",
            &[
                "model",
                "positive",
                "negative",
                "empty_conditioning",
                "cfg",
                "neg_scale",
            ],
            "GUIDER",
            "_for_testing",
        ),
        (
            "DualCFGGuider",
            &[
                "model",
                "cond1",
                "cond2",
                "negative",
                "cfg_conds",
                "cfg_cond2_negative",
                "style",
            ],
            "GUIDER",
            "sampling/custom_sampling/guiders",
        ),
    ] {
        let (status, info) = app
            .get(&format!("/object_info/{}", class.replace(' ', "%20")))
            .await;
        assert_eq!(status, 200, "{class}");
        let node = &info[class];
        let order: Vec<&str> = node["input_order"]["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{class}: {info}"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(order, inputs, "{class}");
        assert_eq!(node["output_name"], json!([output]), "{class}");
        assert_eq!(node["category"], category, "{class}");
    }
    let (_, info) = app.get("/object_info/FreeU_V2").await;
    assert_eq!(
        info["FreeU_V2"]["input"]["required"]["b1"][1]["default"],
        1.3
    );
    let (_, info) = app.get("/object_info/ModelSamplingDiscrete").await;
    assert_eq!(
        info["ModelSamplingDiscrete"]["input"]["required"]["sampling"][0],
        json!(["eps", "v_prediction", "lcm", "x0"])
    );
    let (_, info) = app.get("/object_info/APG").await;
    assert_eq!(info["APG"]["display_name"], "Adaptive Projected Guidance");
}

#[actix_web::test]
async fn patches_change_the_image_and_neutral_settings_do_not() {
    let app = app_with_models().await;
    let plain = pixels(&app, &[], "plain").await;
    // The chain: FreeU → RescaleCFG → KSampler.
    let patched = pixels(
        &app,
        &[
            ("freeu", freeu("FreeU", 1.1, 0.9)),
            (
                "rescale",
                json!({"class_type": "RescaleCFG", "inputs": {"multiplier": 0.7}}),
            ),
        ],
        "patched",
    )
    .await;
    assert_ne!(patched, plain);
    // Neutral settings give the unpatched image exactly.
    let neutral = pixels(
        &app,
        &[
            ("f1", freeu("FreeU", 1.0, 1.0)),
            ("f2", freeu("FreeU_V2", 1.0, 1.0)),
            ("rescale", json!({"class_type": "RescaleCFG", "inputs": {"multiplier": 0.0}})),
            ("eps", json!({"class_type": "Epsilon Scaling", "inputs": {"scaling_factor": 1.0}})),
            ("ms", json!({"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "eps", "zsnr": false}})),
            ("pag", json!({"class_type": "PerturbedAttentionGuidance", "inputs": {"scale": 0.0}})),
            // Tiles as large as the latent, no tokens merged.
            ("ht", json!({"class_type": "HyperTile", "inputs": {"tile_size": 2048, "swap_size": 2, "max_depth": 0, "scale_depth": false}})),
            ("tome", json!({"class_type": "TomePatchModel", "inputs": {"ratio": 0.0}})),
        ],
        "neutral",
    )
    .await;
    assert_eq!(neutral, plain);
    // Each other patch runs and changes the image.
    for (i, node) in [
        freeu("FreeU_V2", 1.3, 0.2),
        json!({"class_type": "CFGZeroStar", "inputs": {}}),
        json!({"class_type": "Epsilon Scaling", "inputs": {"scaling_factor": 1.05}}),
        json!({"class_type": "APG", "inputs": {"eta": 0.5, "norm_threshold": 2.0, "momentum": 0.3}}),
        json!({"class_type": "TCFG", "inputs": {}}),
        json!({"class_type": "PerturbedAttentionGuidance", "inputs": {"scale": 3.0}}),
        json!({"class_type": "SelfAttentionGuidance", "inputs": {"scale": 0.5, "blur_sigma": 2.0}}),
        json!({"class_type": "HyperTile", "inputs": {"tile_size": 32, "swap_size": 1, "max_depth": 0, "scale_depth": false}}),
        json!({"class_type": "TomePatchModel", "inputs": {"ratio": 0.5}}),
        json!({"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "v_prediction", "zsnr": true}}),
        json!({"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "lcm", "zsnr": false}}),
        json!({"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "x0", "zsnr": false}}),
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = format!("p{i}");
        let px = pixels(&app, &[("patch", node.clone())], &prefix).await;
        assert_ne!(px, plain, "{node}");
    }
}

#[actix_web::test]
async fn a_patch_leaves_its_input_model_alone() {
    let app = app_with_models().await;
    let plain = pixels(&app, &[], "alone").await;
    // One prompt samples the loader's model and a FreeU clone of it; the plain branch is unchanged.
    let mut g = graph(&[("freeu", freeu("FreeU", 1.5, 0.5))], "branch", "euler");
    let nodes = g.as_object_mut().unwrap();
    let mut k2 = nodes["k"].clone();
    k2["inputs"]["model"] = json!(["ckpt", 0]);
    nodes.insert("k2".into(), k2);
    nodes.insert(
        "dec2".into(),
        json!({"class_type": "VAEDecode", "inputs": {"samples": ["k2", 0], "vae": ["ckpt", 2]}}),
    );
    nodes.insert("save2".into(), json!({"class_type": "SaveImage", "inputs": {"images": ["dec2", 0], "filename_prefix": "unpatched"}}));
    app.queue_ok("/prompt", json!({"prompt": g})).await;
    let unpatched = read_png(&app.data_dir().join("output/unpatched_00001_.png")).3;
    let patched = read_png(&app.data_dir().join("output/branch_00001_.png")).3;
    assert_eq!(unpatched, plain);
    assert_ne!(patched, plain);
}

#[actix_web::test]
async fn bad_inputs_name_the_node_input() {
    let app = app_with_models().await;
    for (node, input) in [
        (
            json!({"class_type": "RescaleCFG", "inputs": {"multiplier": 1.5}}),
            "multiplier",
        ),
        (
            json!({"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "flow", "zsnr": false}}),
            "sampling",
        ),
        (
            json!({"class_type": "Epsilon Scaling", "inputs": {"scaling_factor": 0.1}}),
            "scaling_factor",
        ),
        (freeu("FreeU", 11.0, 0.5), "b1"),
    ] {
        let (status, body) = app
            .post(
                "/prompt",
                json!({"prompt": graph(&[("patch", node)], "bad", "euler")}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let name = body["node_errors"]["patch"]["errors"][0]["extra_info"]["input_name"].as_str();
        assert_eq!(name, Some(input), "{body}");
    }
}

#[actix_web::test]
async fn differential_diffusion_reshapes_a_soft_inpainting_mask() {
    let app = app_with_models().await;
    // Alpha 200 gives a constant soft mask of 1 - 200/255.
    std::fs::write(
        app.data_dir().join("input/soft.png"),
        crate::server::png_bytes(64, 64, [180, 90, 30, 200]),
    )
    .unwrap();
    let run = |patches: Vec<(&'static str, Json)>, prefix: &'static str| {
        let mut g = graph(&patches, prefix, "euler");
        let nodes = g.as_object_mut().unwrap();
        nodes.insert(
            "load".into(),
            json!({"class_type": "LoadImage", "inputs": {"image": "soft.png"}}),
        );
        nodes.insert("masked".into(), json!({"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["latent", 0], "mask": ["load", 1]}}));
        nodes.get_mut("k").unwrap()["inputs"]["latent_image"] = json!(["masked", 0]);
        g
    };
    let mut out = Vec::new();
    for (patches, prefix) in [
        (vec![], "soft"),
        (
            vec![(
                "dd",
                json!({"class_type": "DifferentialDiffusion", "inputs": {}}),
            )],
            "dd",
        ),
        (
            vec![(
                "dd",
                json!({"class_type": "DifferentialDiffusion", "inputs": {"strength": 0.5}}),
            )],
            "dd_half",
        ),
    ] {
        app.queue_ok("/prompt", json!({"prompt": run(patches, prefix)}))
            .await;
        out.push(read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png"))).3);
    }
    assert_ne!(out[0], out[1]);
    assert_ne!(out[1], out[2]);
}

/// SamplerCustomAdvanced with the guider node `guider` (its model, positive and negative inputs
/// linked by the caller) on tiny SD1; returns the saved pixels.
async fn guided(app: &TestApp, guider: Json, prefix: &str) -> Vec<u8> {
    let g = json!({
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a red barn"}},
        "pos2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "snow"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "fog"}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 8}},
        "sel": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sig": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "karras", "steps": 3, "denoise": 1.0}},
        "guide": guider,
        "adv": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guide", 0], "sampler": ["sel", 0],
                "sigmas": ["sig", 0], "latent_image": ["latent", 0]}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["adv", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": prefix}}
    });
    app.queue_ok("/prompt", json!({"prompt": g})).await;
    read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png"))).3
}

#[actix_web::test]
async fn dual_cfg_and_perp_neg_guiders_reduce_to_cfg_and_otherwise_differ() {
    let app = app_with_models().await;
    let cfg = |negative: &str| json!({"class_type": "CFGGuider", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": [negative, 0], "cfg": 6.0}});
    let dual = |cond2: &str, style: &str| {
        json!({"class_type": "DualCFGGuider", "inputs": {"model": ["ckpt", 0], "cond1": ["pos", 0], "cond2": [cond2, 0],
               "negative": ["neg", 0], "cfg_conds": 4.0, "cfg_cond2_negative": 6.0, "style": style}})
    };
    let perp = |neg_scale: f64| {
        json!({"class_type": "PerpNegGuider", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
               "empty_conditioning": ["empty", 0], "cfg": 6.0, "neg_scale": neg_scale}})
    };
    let plain = guided(&app, cfg("neg"), "cfg").await;
    // cond1 = cond2 leaves plain CFG between cond2 and the negative.
    assert_eq!(
        guided(&app, dual("pos", "regular"), "dual_same").await,
        plain
    );
    assert_ne!(guided(&app, dual("pos2", "regular"), "dual").await, plain);
    assert_ne!(
        guided(&app, dual("pos2", "nested"), "dual_nested").await,
        plain
    );
    // neg_scale 0 is CFG against the empty prompt.
    let against_empty = guided(&app, cfg("empty"), "cfg_empty").await;
    assert_eq!(guided(&app, perp(0.0), "perp0").await, against_empty);
    assert_ne!(guided(&app, perp(1.0), "perp1").await, against_empty);
    // The deprecated PerpNeg patch runs through KSampler.
    let mut g = graph(
        &[(
            "perp",
            json!({"class_type": "PerpNeg", "inputs": {"empty_conditioning": ["pos", 0], "neg_scale": 1.0}}),
        )],
        "perp_node",
        "euler",
    );
    g["empty"] =
        json!({"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}});
    g["perp"]["inputs"]["empty_conditioning"] = json!(["empty", 0]);
    app.queue_ok("/prompt", json!({"prompt": g})).await;
    assert!(app.data_dir().join("output/perp_node_00001_.png").exists());
}

#[actix_web::test]
async fn attention_multiply_nodes_scale_attention_weights() {
    let app = app_with_models().await;
    let plain = pixels(&app, &[], "att_plain").await;
    let node = |class: &str, q: f64| json!({"class_type": class, "inputs": {"q": q, "k": 1.0, "v": 1.0, "out": 1.0}});
    for class in ["UNetSelfAttentionMultiply", "UNetCrossAttentionMultiply"] {
        let same = pixels(&app, &[("att", node(class, 1.0))], &format!("{class}_1")).await;
        assert_eq!(same, plain, "{class}");
        let scaled = pixels(&app, &[("att", node(class, 1.7))], &format!("{class}_2")).await;
        assert_ne!(scaled, plain, "{class}");
    }
    // CLIPAttentionMultiply changes the prompt's encoding, hence the image.
    let mut g = graph(&[], "clip_att", "euler");
    g["catt"] = json!({"class_type": "CLIPAttentionMultiply", "inputs": {"clip": ["ckpt", 1], "q": 1.0, "k": 1.0, "v": 2.0, "out": 0.5}});
    g["pos"]["inputs"]["clip"] = json!(["catt", 0]);
    app.queue_ok("/prompt", json!({"prompt": g})).await;
    let clip_scaled = read_png(&app.data_dir().join("output/clip_att_00001_.png")).3;
    assert_ne!(clip_scaled, plain);
    let (_, info) = app.get("/object_info/CLIPAttentionMultiply").await;
    let order = &info["CLIPAttentionMultiply"]["input_order"]["required"];
    assert_eq!(order, &json!(["clip", "q", "k", "v", "out"]));
    assert_eq!(
        info["CLIPAttentionMultiply"]["category"],
        "_for_testing/attention_experiments"
    );
}

#[actix_web::test]
async fn patch_model_add_downscale_shrinks_a_block_inside_its_window() {
    let app = app_with_models().await;
    let plain = pixels(&app, &[], "ds_plain").await;
    let node = |start: f64, end: f64, after_skip: bool, down: &str| {
        json!({"class_type": "PatchModelAddDownscale", "inputs": {"block_number": 1, "downscale_factor": 2.0,
               "start_percent": start, "end_percent": end, "downscale_after_skip": after_skip,
               "downscale_method": down, "upscale_method": "bicubic"}})
    };
    // An empty window (start after end) changes nothing.
    assert_eq!(
        pixels(&app, &[("ds", node(0.9, 0.5, true, "bicubic"))], "ds_none").await,
        plain
    );
    let after = pixels(&app, &[("ds", node(0.0, 1.0, true, "bicubic"))], "ds_after").await;
    assert_ne!(after, plain);
    let before = pixels(&app, &[("ds", node(0.0, 1.0, false, "area"))], "ds_before").await;
    assert_ne!(before, after);
    // bislerp (checked against ComfyUI in `latent_nodes::latent_upscale_bislerp_matches_comfyui`).
    let slerped = pixels(
        &app,
        &[("ds", node(0.0, 1.0, true, "bislerp"))],
        "ds_bislerp",
    )
    .await;
    assert_ne!(slerped, after);
}

/// HypernetworkLoader: declared as in ComfyUI with `models/hypernetworks` listed; an A1111 `.pt`
/// (the parity fixture, whose widths 48 and 32 are the tiny SD1's context and first level) changes
/// the image, strength 0 gives the unpatched image bit for bit, and a pickle with a foreign global
/// is refused with an error naming the node and the file. The maths is checked in
/// `engine::cond_patches_parity::hypernetwork_matches_comfyui_on_a_tiny_unet`.
#[actix_web::test]
async fn hypernetwork_loader_patches_attention() {
    let app = app_with_models().await;
    let dir = app.dir.path().join("models/hypernetworks");
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sampling/hypernetwork_relu_ln.pt"
    );
    std::fs::copy(fixture, dir.join("tiny.pt")).unwrap();
    std::fs::write(
        dir.join("evil.pt"),
        weft::engine::fuzzing::torch_zip(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR."),
    )
    .unwrap();

    let (status, info) = app.get("/object_info/HypernetworkLoader").await;
    assert_eq!(status, 200);
    let node = &info["HypernetworkLoader"];
    assert_eq!(
        node["input_order"]["required"],
        json!(["model", "hypernetwork_name", "strength"])
    );
    let required = &node["input"]["required"];
    assert_eq!(
        required["hypernetwork_name"][0],
        json!(["evil.pt", "tiny.pt"])
    );
    assert_eq!(
        required["strength"][1],
        json!({"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})
    );
    assert_eq!(node["output"], json!(["MODEL"]));
    assert_eq!(node["category"], "loaders");

    let hn = |name: &str, strength: f64| {
        json!({"class_type": "HypernetworkLoader",
               "inputs": {"hypernetwork_name": name, "strength": strength}})
    };
    let plain = pixels(&app, &[], "hn_plain").await;
    let patched = pixels(&app, &[("hn", hn("tiny.pt", 1.0))], "hn_on").await;
    assert_ne!(patched, plain);
    let zero = pixels(&app, &[("hn", hn("tiny.pt", 0.0))], "hn_zero").await;
    assert_eq!(zero, plain);

    let id = app
        .queue(
            graph(&[("hn", hn("evil.pt", 1.0))], "hn_evil", "euler"),
            "hn",
        )
        .await;
    let entry = app.wait_history(&id).await;
    let error = &entry["status"]["messages"][2][1];
    assert_eq!(error["node_id"], "hn");
    assert_eq!(error["node_type"], "HypernetworkLoader");
    let message = error["exception_message"].as_str().unwrap();
    assert!(
        message.contains("evil.pt") && message.contains("os.system"),
        "{error}"
    );
}
