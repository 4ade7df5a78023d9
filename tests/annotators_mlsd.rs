//! `M-LSDPreprocessor` through the real server: LoadImage -> M-LSD -> SaveImage with the narrow
//! random-weight `mlsd_large_512_fp32.pth` of `tools/parity/mlsd_reference.py`
//! (tests/fixtures/annotators/mlsd/), the saved map equal to the aux node's.

use std::path::Path;

use serde_json::{json, Value as Json};

use crate::helpers::{add_annotators, annotator_fixture, read_png, spawn_app, TestApp};
use crate::security::history_error;

const FILE: &str = "mlsd_large_512_fp32.pth";

/// A server with the input PNG, and the weights in `models/annotators/<sub>` (none: no file).
async fn app_with(sub: Option<&str>) -> TestApp {
    let app = spawn_app().await;
    let files: Vec<(&str, &str)> = sub.map(|s| (FILE, s)).into_iter().collect();
    add_annotators(&app, "mlsd", &files, Some("e2e_input.png"));
    app
}

/// The astronaut_default case of the script: thresholds 0.1/0.1 at resolution 128.
fn graph(prefix: &str) -> Json {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "e2e_input.png"}},
        "2": {"class_type": "M-LSDPreprocessor", "inputs": {
            "image": ["1", 0], "score_threshold": 0.1, "dist_threshold": 0.1, "resolution": 128}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

fn reference_map() -> Vec<u8> {
    let refs = candle_core::safetensors::load(
        annotator_fixture("mlsd", "reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    refs["astronaut_default_map"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap()
}

fn differing(path: &Path, want: &[u8]) -> usize {
    let (w, h, _, pixels) = read_png(path);
    assert_eq!((w, h), (128, 128));
    assert_eq!(pixels.len(), want.len());
    pixels.iter().zip(want).filter(|(a, b)| a != b).count()
}

#[actix_web::test]
async fn mlsd_lines_match_the_aux_node_from_either_folder_layout() {
    let want = reference_map();
    for (sub, prefix) in [("", "mlsd"), ("ckpts/lllyasviel/Annotators", "mlsd_ckpts")] {
        let app = app_with(Some(sub)).await;
        let id = app.queue(graph(prefix), prefix).await;
        let entry = app.wait_history(&id).await;
        assert_eq!(entry["status"]["status_str"], "success", "{entry:#}");
        let out = app.data_dir().join(format!("output/{prefix}_00001_.png"));
        // The map is binary: within 1/255 means identical.
        assert_eq!(differing(&out, &want), 0, "{sub}");
    }
}

#[actix_web::test]
async fn mlsd_is_declared_as_the_pack_declares_it_and_names_a_missing_file() {
    let app = app_with(None).await;
    let (status, info) = app.get("/object_info/M-LSDPreprocessor").await;
    assert_eq!(status, 200);
    let node = &info["M-LSDPreprocessor"];
    assert_eq!(node["display_name"], "M-LSD Lines");
    assert_eq!(node["category"], "ControlNet Preprocessors/Line Extractors");
    assert_eq!(node["output"], json!(["IMAGE"]));
    let required = &node["input"]["required"];
    assert_eq!(required["score_threshold"][1]["default"], json!(0.1));
    assert_eq!(required["score_threshold"][1]["max"], json!(2.0));
    assert_eq!(required["dist_threshold"][1]["max"], json!(20.0));
    assert_eq!(required["resolution"][1]["default"], json!(512));

    let id = app.queue(graph("missing"), "missing").await;
    let error = history_error(&app.wait_history(&id).await);
    assert_eq!(error["node_type"], "M-LSDPreprocessor", "{error}");
    let message = error["exception_message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("annotator file '{FILE}' not found"))
            && message.contains("models/annotators/"),
        "{message}"
    );
}
