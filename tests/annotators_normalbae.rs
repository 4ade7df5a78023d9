//! BAE-NormalMapPreprocessor through the real server, with the tiny NormalBae of
//! `tools/parity/normalbae_reference.py` (tests/fixtures/annotators/normalbae/scannet.pt): under
//! `models/annotators/`, then under comfyui_controlnet_aux's `ckpts/lllyasviel/Annotators/` tree;
//! the saved PNG against the pack's result within 1 level; a missing file names the file.

use serde_json::{json, Value as Json};

use crate::helpers::{add_annotators, annotator_fixture, read_png, spawn_app, TestApp};
use crate::security::history_error;

/// A server with the input PNG, and `scannet.pt` under `models/annotators/<sub>` if given.
async fn app_with(sub: Option<&str>) -> TestApp {
    let app = spawn_app().await;
    let files: Vec<(&str, &str)> = sub.map(|s| ("scannet.pt", s)).into_iter().collect();
    add_annotators(&app, "normalbae", &files, Some("e2e_input.png"));
    app
}

fn graph(prefix: &str) -> Json {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "e2e_input.png"}},
        "2": {"class_type": "BAE-NormalMapPreprocessor", "inputs": {"image": ["1", 0], "resolution": 64}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

/// The pack's node result on the e2e input (the fixture's astronaut at resolution 64).
fn reference() -> (usize, usize, Vec<u8>) {
    let t = candle_core::safetensors::load(
        annotator_fixture("normalbae", "reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let out = &t["astronaut_r64.out"];
    let (h, w, _) = out.dims3().unwrap();
    (w, h, out.flatten_all().unwrap().to_vec1::<u8>().unwrap())
}

#[actix_web::test]
async fn normal_map_matches_the_pack_from_either_folder_layout() {
    let (want_w, want_h, want) = reference();
    for (sub, prefix) in [("", "bae"), ("ckpts/lllyasviel/Annotators", "bae_ckpts")] {
        let app = app_with(Some(sub)).await;
        app.queue_ok("/prompt", json!({"prompt": graph(prefix)}))
            .await;
        let (w, h, _, pixels) =
            read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png")));
        assert_eq!((w as usize, h as usize), (want_w, want_h), "{sub}");
        let worst = pixels
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        assert!(worst <= 1, "{sub}: largest difference {worst} levels");
    }
}

#[actix_web::test]
async fn object_info_declares_the_node_as_the_pack_does() {
    let app = app_with(None).await;
    let (status, info) = app.get("/object_info/BAE-NormalMapPreprocessor").await;
    assert_eq!(status, 200);
    let node = &info["BAE-NormalMapPreprocessor"];
    assert_eq!(node["display_name"], "BAE Normal Map");
    assert_eq!(
        node["category"],
        "ControlNet Preprocessors/Normal and Depth Estimators"
    );
    let required = &node["input"]["required"];
    assert_eq!(required["image"], json!(["IMAGE"]));
    assert_eq!(required["resolution"][0], "INT");
    assert_eq!(
        (
            &required["resolution"][1]["default"],
            &required["resolution"][1]["min"],
            &required["resolution"][1]["max"],
            &required["resolution"][1]["step"],
        ),
        (&json!(512), &json!(64), &json!(16384), &json!(64))
    );
    assert_eq!(node["output"], json!(["IMAGE"]));
}

#[actix_web::test]
async fn a_missing_scannet_file_names_it() {
    let app = app_with(None).await;
    let (status, body) = app.post("/prompt", json!({"prompt": graph("none")})).await;
    let message = if status == 200 {
        let id = body["prompt_id"].as_str().unwrap_or_default().to_string();
        history_error(&app.wait_history(&id).await)["exception_message"].to_string()
    } else {
        body.to_string()
    };
    assert!(message.contains("'scannet.pt' not found"), "{message}");
    assert!(message.contains("models/annotators"), "{message}");
}
