//! OpenposePreprocessor through the real server, with the narrowed random-weight
//! `body_pose_model.pth`, `hand_pose_model.pth` and `facenet.pth` of `tools/parity/openpose_reference.py`
//! and `openpose_hand_face_reference.py` (tests/fixtures/annotators/openpose/): LoadImage ->
//! OpenposePreprocessor -> SaveImage gives the pack's map exactly, body only or with hands and
//! faces, with the files in `models/annotators/` or in a `ckpts/lllyasviel/Annotators/` tree below
//! it; without a file the node needs, the error names it.

use serde_json::{json, Value as Json};

use crate::helpers::{add_annotators, annotator_fixture, read_png, spawn_app, TestApp};
use crate::security::history_error;

/// A server with `files` at `models/annotators/<sub>` and the input.
async fn app_with(files: &[(&str, &str)]) -> TestApp {
    let app = spawn_app().await;
    add_annotators(&app, "openpose", files, Some("astronaut.png"));
    app
}

fn graph(prefix: &str, detect_hand: &str, detect_face: &str) -> Json {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "2": {"class_type": "OpenposePreprocessor", "inputs": {
            "image": ["1", 0], "detect_hand": detect_hand, "detect_body": "enable",
            "detect_face": detect_face, "resolution": 256, "scale_stick_for_xinsr_cn": "disable"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

/// The pack's map for this input at resolution 256 (uint8 HWC): `fixture`'s tensor `name`.
fn reference_map(fixture: &str, name: &str) -> (usize, usize, Vec<u8>) {
    let fx = candle_core::safetensors::load(
        annotator_fixture("openpose", fixture),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let map = &fx[name];
    let (h, w, _) = map.dims3().unwrap();
    (w, h, map.flatten_all().unwrap().to_vec1::<u8>().unwrap())
}

async fn run_and_compare(app: &TestApp, prefix: &str, hands_and_faces: bool) {
    let on = if hands_and_faces { "enable" } else { "disable" };
    let id = app.queue(graph(prefix, on, on), prefix).await;
    let entry = app.wait_history(&id).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry:#}");
    let (w, h, _, pixels) = read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png")));
    let (want_w, want_h, want) = if hands_and_faces {
        reference_map("hand_face_ref.safetensors", "node_256.map")
    } else {
        reference_map("openpose_ref.safetensors", "astronaut_256.map")
    };
    assert_eq!((w as usize, h as usize), (want_w, want_h));
    let differing = pixels.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{differing} of {} values differ", want.len());
    assert!(want.iter().any(|&v| v > 0), "the reference draws people");
}

const ALL: [&str; 3] = ["body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"];

#[actix_web::test]
async fn openpose_map_matches_the_pack() {
    let app = app_with(&[("body_pose_model.pth", "")]).await;
    run_and_compare(&app, "pose", false).await;
    let app = app_with(&[("body_pose_model.pth", "ckpts/lllyasviel/Annotators")]).await;
    run_and_compare(&app, "pose_ckpts", false).await;
}

#[actix_web::test]
async fn hands_and_faces_match_the_pack() {
    let files: Vec<(&str, &str)> = ALL.iter().map(|f| (*f, "")).collect();
    let app = app_with(&files).await;
    run_and_compare(&app, "pose_hf", true).await;
    let files: Vec<(&str, &str)> = ALL
        .iter()
        .map(|f| (*f, "ckpts/lllyasviel/Annotators"))
        .collect();
    let app = app_with(&files).await;
    run_and_compare(&app, "pose_hf_ckpts", true).await;
}

async fn error_of(app: &TestApp, graph: Json, prefix: &str) -> String {
    let id = app.queue(graph, prefix).await;
    let entry = app.wait_history(&id).await;
    history_error(&entry)["exception_message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[actix_web::test]
async fn missing_weights_are_named() {
    let app = app_with(&[]).await;
    let message = error_of(&app, graph("none", "disable", "disable"), "none").await;
    assert!(message.contains("body_pose_model.pth"), "{message}");

    // The body file alone: enough with hands and faces off, each switch then needs its file.
    let app = app_with(&[("body_pose_model.pth", "")]).await;
    let message = error_of(&app, graph("hands", "enable", "disable"), "hands").await;
    assert!(message.contains("hand_pose_model.pth"), "{message}");
    let message = error_of(&app, graph("faces", "disable", "enable"), "faces").await;
    assert!(message.contains("facenet.pth"), "{message}");
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
