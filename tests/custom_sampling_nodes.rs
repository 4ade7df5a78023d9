//! The custom-sampling nodes (sampler options, schedulers, sigma operations) through the real
//! server on a tiny SD1 checkpoint. Their maths is checked against ComfyUI in
//! `engine::custom_sampling_parity`; here: declarations, wiring, neutral settings and errors.

use serde_json::{json, Value as Json};

use crate::helpers::{read_png, spawn_app, TestApp};
use crate::models::install_all;

async fn app_with_models() -> TestApp {
    let app = spawn_app().await;
    install_all(&app.dir.path().join("models"));
    app
}

/// SamplerCustom on tiny SD1 with the given sampler and sigmas nodes (ids "sampler", "sigmas";
/// both may be linked to from `extra`), saved under `prefix`.
fn custom_graph(sampler: Json, sigmas: Json, extra: Json, prefix: &str) -> Json {
    let mut graph = json!({
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a lighthouse"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "blurry"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sampler": sampler,
        "sigmas": sigmas,
        "custom": {"class_type": "SamplerCustom", "inputs": {"model": ["ckpt", 0], "add_noise": true, "noise_seed": 3,
                   "cfg": 5.0, "positive": ["pos", 0], "negative": ["neg", 0], "sampler": ["sampler", 0],
                   "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["custom", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": prefix}}
    });
    if let (Some(g), Some(e)) = (graph.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            g.insert(k.clone(), v.clone());
        }
    }
    graph
}

async fn pixels(app: &TestApp, graph: Json, prefix: &str) -> Vec<u8> {
    app.queue_ok("/prompt", json!({"prompt": graph})).await;
    read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png"))).3
}

fn karras(steps: u32) -> Json {
    json!({"class_type": "KarrasScheduler", "inputs": {"steps": steps, "sigma_max": 14.614642, "sigma_min": 0.0291675, "rho": 7.0}})
}

fn select(name: &str) -> Json {
    json!({"class_type": "KSamplerSelect", "inputs": {"sampler_name": name}})
}

#[actix_web::test]
async fn object_info_declares_comfyui_inputs() {
    let app = spawn_app().await;
    for (class, inputs) in [
        ("SamplerEulerAncestral", &["eta", "s_noise"][..]),
        ("SamplerEulerAncestralCFGPP", &["eta", "s_noise"]),
        ("SamplerLMS", &["order"]),
        ("SamplerDPMPP_SDE", &["eta", "s_noise", "r", "noise_device"]),
        (
            "SamplerDPMPP_2M_SDE",
            &["solver_type", "eta", "s_noise", "noise_device"],
        ),
        ("SamplerDPMPP_3M_SDE", &["eta", "s_noise", "noise_device"]),
        ("SamplerDPMPP_2S_Ancestral", &["eta", "s_noise"]),
        (
            "SamplerDPMAdaptative",
            &[
                "order",
                "rtol",
                "atol",
                "h_init",
                "pcoeff",
                "icoeff",
                "dcoeff",
                "accept_safety",
                "eta",
                "s_noise",
            ],
        ),
        (
            "PolyexponentialScheduler",
            &["steps", "sigma_max", "sigma_min", "rho"],
        ),
        ("VPScheduler", &["steps", "beta_d", "beta_min", "eps_s"]),
        (
            "LaplaceScheduler",
            &["steps", "sigma_max", "sigma_min", "mu", "beta"],
        ),
        (
            "BetaSamplingScheduler",
            &["model", "steps", "alpha", "beta"],
        ),
        (
            "AlignYourStepsScheduler",
            &["model_type", "steps", "denoise"],
        ),
        ("FlipSigmas", &["sigmas"]),
        ("SplitSigmasDenoise", &["sigmas", "denoise"]),
    ] {
        let (status, info) = app.get(&format!("/object_info/{class}")).await;
        assert_eq!(status, 200);
        let order: Vec<&str> = info[class]["input_order"]["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{class}: {info}"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(order, inputs, "{class}");
    }
    let (_, info) = app.get("/object_info/SamplerDPMAdaptative").await;
    let order = &info["SamplerDPMAdaptative"]["input"]["required"]["order"][1];
    assert_eq!(
        (
            order["default"].as_i64(),
            order["min"].as_i64(),
            order["max"].as_i64()
        ),
        (Some(3), Some(2), Some(3))
    );
    let (_, info) = app.get("/object_info/SamplerEulerAncestralCFGPP").await;
    assert_eq!(
        info["SamplerEulerAncestralCFGPP"]["display_name"],
        "SamplerEulerAncestralCFG++"
    );
    let (_, info) = app.get("/object_info/SplitSigmasDenoise").await;
    assert_eq!(
        info["SplitSigmasDenoise"]["output_name"],
        json!(["high_sigmas", "low_sigmas"])
    );
    let (_, info) = app.get("/object_info/AlignYourStepsScheduler").await;
    assert_eq!(
        info["AlignYourStepsScheduler"]["input"]["required"]["model_type"][0],
        json!(["SD1", "SDXL", "SVD"])
    );
}

#[actix_web::test]
async fn sampler_nodes_with_default_options_equal_the_plain_sampler() {
    let app = app_with_models().await;
    for (node, plain, prefix) in [
        (
            json!({"class_type": "SamplerEulerAncestral", "inputs": {"eta": 1.0, "s_noise": 1.0}}),
            "euler_ancestral",
            "ea",
        ),
        (
            json!({"class_type": "SamplerLMS", "inputs": {"order": 4}}),
            "lms",
            "lms",
        ),
        (
            json!({"class_type": "SamplerDPMPP_2M_SDE", "inputs": {"solver_type": "midpoint", "eta": 1.0, "s_noise": 1.0, "noise_device": "cpu"}}),
            "dpmpp_2m_sde",
            "sde2m",
        ),
    ] {
        let ours = pixels(
            &app,
            custom_graph(node, karras(3), json!({}), prefix),
            prefix,
        )
        .await;
        let plain_prefix = format!("{prefix}_plain");
        let reference = pixels(
            &app,
            custom_graph(select(plain), karras(3), json!({}), &plain_prefix),
            &plain_prefix,
        )
        .await;
        assert_eq!(ours, reference, "{prefix}");
    }
    // eta 0.5 really changes the image.
    let half =
        json!({"class_type": "SamplerEulerAncestral", "inputs": {"eta": 0.5, "s_noise": 1.0}});
    let vp = json!({"class_type": "VPScheduler", "inputs": {"steps": 3, "beta_d": 19.9, "beta_min": 0.1, "eps_s": 0.001}});
    let half_px = pixels(
        &app,
        custom_graph(half, vp.clone(), json!({}), "half"),
        "half",
    )
    .await;
    let full_px = pixels(
        &app,
        custom_graph(select("euler_ancestral"), vp, json!({}), "full"),
        "full",
    )
    .await;
    assert_ne!(half_px, full_px);
}

#[actix_web::test]
async fn every_new_sampler_and_sigma_node_runs() {
    let app = app_with_models().await;
    let samplers = [
        json!({"class_type": "SamplerEulerAncestralCFGPP", "inputs": {"eta": 0.5, "s_noise": 0.8}}),
        json!({"class_type": "SamplerDPMPP_SDE", "inputs": {"eta": 0.7, "s_noise": 1.0, "r": 0.4, "noise_device": "gpu"}}),
        json!({"class_type": "SamplerDPMPP_2M_SDE", "inputs": {"solver_type": "heun", "eta": 0.5, "s_noise": 1.0, "noise_device": "gpu"}}),
        json!({"class_type": "SamplerDPMPP_3M_SDE", "inputs": {"eta": 0.5, "s_noise": 1.0, "noise_device": "cpu"}}),
        json!({"class_type": "SamplerDPMPP_2S_Ancestral", "inputs": {"eta": 0.5, "s_noise": 1.0}}),
        json!({"class_type": "SamplerDPMAdaptative", "inputs": {"order": 2, "rtol": 0.5, "atol": 0.5, "h_init": 1.0, "pcoeff": 0.0,
               "icoeff": 1.0, "dcoeff": 0.0, "accept_safety": 0.81, "eta": 0.3, "s_noise": 1.0}}),
    ];
    let sigma_nodes = [
        json!({"class_type": "PolyexponentialScheduler", "inputs": {"steps": 2, "sigma_max": 14.614642, "sigma_min": 0.0291675, "rho": 1.5}}),
        json!({"class_type": "LaplaceScheduler", "inputs": {"steps": 3, "sigma_max": 14.614642, "sigma_min": 0.0291675, "mu": 0.0, "beta": 0.5}}),
        json!({"class_type": "BetaSamplingScheduler", "inputs": {"model": ["ckpt", 0], "steps": 2, "alpha": 0.5, "beta": 0.7}}),
        json!({"class_type": "AlignYourStepsScheduler", "inputs": {"model_type": "SD1", "steps": 3, "denoise": 1.0}}),
        json!({"class_type": "SplitSigmasDenoise", "inputs": {"sigmas": ["k4", 0], "denoise": 0.5}}),
    ];
    for (i, (sampler, sigmas)) in samplers.iter().zip(sigma_nodes.iter().cycle()).enumerate() {
        let prefix = format!("run{i}");
        let extra = json!({"k4": karras(4)});
        let px = pixels(
            &app,
            custom_graph(sampler.clone(), sigmas.clone(), extra, &prefix),
            &prefix,
        )
        .await;
        assert!(px.iter().any(|&p| p != px[0]), "{prefix}");
    }
    // FlipSigmas feeds an unsampling run (sigmas rising from 0.0001).
    let flip = json!({"class_type": "FlipSigmas", "inputs": {"sigmas": ["k4", 0]}});
    pixels(
        &app,
        custom_graph(select("euler"), flip, json!({"k4": karras(2)}), "flip"),
        "flip",
    )
    .await;
}

#[actix_web::test]
async fn bad_inputs_name_the_node_input() {
    let app = app_with_models().await;
    // A log-space schedule with sigma_min 0 fails at run time on that input.
    let poly = json!({"class_type": "PolyexponentialScheduler", "inputs": {"steps": 2, "sigma_max": 14.6, "sigma_min": 0.0, "rho": 1.0}});
    let id = app
        .queue(custom_graph(select("euler"), poly, json!({}), "bad"), "bad")
        .await;
    let entry = app.wait_history(&id).await;
    assert_eq!(entry["status"]["status_str"], "error");
    let error = &entry["status"]["messages"][2][1];
    assert_eq!(error["node_id"], "sigmas");
    assert!(
        error["exception_message"]
            .as_str()
            .unwrap()
            .contains("sigma_min"),
        "{error}"
    );
    // Out-of-range widgets and unknown combo values are rejected at submit.
    for (sampler, input) in [
        (
            json!({"class_type": "SamplerDPMAdaptative", "inputs": {"order": 4, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05,
                "pcoeff": 0.0, "icoeff": 1.0, "dcoeff": 0.0, "accept_safety": 0.81, "eta": 0.0, "s_noise": 1.0}}),
            "order",
        ),
        (
            json!({"class_type": "SamplerDPMPP_2M_SDE", "inputs": {"solver_type": "rk4", "eta": 1.0, "s_noise": 1.0, "noise_device": "cpu"}}),
            "solver_type",
        ),
        (
            json!({"class_type": "SamplerEulerAncestralCFGPP", "inputs": {"eta": 1.5, "s_noise": 1.0}}),
            "eta",
        ),
    ] {
        let (status, body) = app
            .post(
                "/prompt",
                json!({"prompt": custom_graph(sampler, karras(2), json!({}), "rej")}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let details =
            body["node_errors"]["sampler"]["errors"][0]["extra_info"]["input_name"].as_str();
        assert_eq!(details, Some(input), "{body}");
    }
}
