//! OpenposePreprocessor through the real server, with the narrowed random-weight
//! `body_pose_model.pth` of `tools/parity/openpose_reference.py` (tests/fixtures/annotators/openpose/):
//! LoadImage -> OpenposePreprocessor -> SaveImage gives the pack's map exactly, with the file in
//! `models/annotators/` or in a `ckpts/lllyasviel/Annotators/` tree below it; without the file the
//! error names it.

use serde_json::{json, Value as Json};

use crate::helpers::{add_annotators, annotator_fixture, read_png, spawn_app, TestApp};
use crate::security::history_error;

/// A server with the weights at `models/annotators/<sub>` (none when `sub` is None) and the input.
async fn app_with(sub: Option<&str>) -> TestApp {
    let app = spawn_app().await;
    let files: Vec<(&str, &str)> = sub
        .map(|s| ("body_pose_model.pth", s))
        .into_iter()
        .collect();
    add_annotators(&app, "openpose", &files, Some("astronaut.png"));
    app
}

fn graph(prefix: &str, detect_hand: &str) -> Json {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "2": {"class_type": "OpenposePreprocessor", "inputs": {
            "image": ["1", 0], "detect_hand": detect_hand, "detect_body": "enable",
            "detect_face": "disable", "resolution": 256, "scale_stick_for_xinsr_cn": "disable"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

/// The pack's map for this input at resolution 256 (`astronaut_256.map`, uint8 HWC).
fn reference_map() -> (usize, usize, Vec<u8>) {
    let fx = candle_core::safetensors::load(
        annotator_fixture("openpose", "openpose_ref.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let map = &fx["astronaut_256.map"];
    let (h, w, _) = map.dims3().unwrap();
    (w, h, map.flatten_all().unwrap().to_vec1::<u8>().unwrap())
}

async fn run_and_compare(app: &TestApp, prefix: &str) {
    let id = app.queue(graph(prefix, "disable"), prefix).await;
    let entry = app.wait_history(&id).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry:#}");
    let (w, h, _, pixels) = read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png")));
    let (want_w, want_h, want) = reference_map();
    assert_eq!((w as usize, h as usize), (want_w, want_h));
    let differing = pixels.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{differing} of {} values differ", want.len());
    assert!(want.iter().any(|&v| v > 0), "the reference draws people");
}

#[actix_web::test]
async fn openpose_map_matches_the_pack() {
    let app = app_with(Some("")).await;
    run_and_compare(&app, "pose").await;
    let app = app_with(Some("ckpts/lllyasviel/Annotators")).await;
    run_and_compare(&app, "pose_ckpts").await;
}

#[actix_web::test]
async fn missing_weights_and_hands_are_reported() {
    let app = app_with(None).await;
    let id = app.queue(graph("none", "disable"), "none").await;
    let entry = app.wait_history(&id).await;
    let message = history_error(&entry)["exception_message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("body_pose_model.pth"), "{message}");

    let app = app_with(Some("")).await;
    let id = app.queue(graph("hands", "enable"), "hands").await;
    let entry = app.wait_history(&id).await;
    let message = history_error(&entry)["exception_message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("detect_hand"), "{message}");
}

#[actix_web::test]
async fn object_info_declares_the_pack_node() {
    let app = spawn_app().await;
    let (status, info) = app.get("/object_info/OpenposePreprocessor").await;
    assert_eq!(status, 200);
    let node = &info["OpenposePreprocessor"];
    assert_eq!(node["display_name"], "OpenPose Pose");
    assert_eq!(
        node["category"],
        "ControlNet Preprocessors/Faces and Poses Estimators"
    );
    assert_eq!(node["output"], json!(["IMAGE", "POSE_KEYPOINT"]));
    let order: Vec<&str> = node["input_order"]["optional"]
        .as_array()
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        order,
        [
            "detect_hand",
            "detect_body",
            "detect_face",
            "scale_stick_for_xinsr_cn"
        ],
        "{node:#}"
    );
}
