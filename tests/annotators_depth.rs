//! DepthAnythingV2Preprocessor through the real server, with the tiny net of
//! `tools/parity/depth_anything_v2_reference.py` (tests/fixtures/annotators/depth/) placed as
//! comfyui_controlnet_aux's `ckpts/` tree keeps it, under `models/annotators/`.

use serde_json::{json, Value as Json};

use crate::helpers::{add_annotators, annotator_fixture, max_level_diff, read_png, spawn_app};
use crate::security::history_error;

fn graph(ckpt: &str, prefix: &str) -> Json {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "2": {"class_type": "DepthAnythingV2Preprocessor",
              "inputs": {"image": ["1", 0], "ckpt_name": ckpt, "resolution": 128}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

#[actix_web::test]
async fn depth_anything_v2_runs_as_the_pack_does() {
    let app = spawn_app().await;
    let file = "depth_anything_v2_vits.pth";
    add_annotators(
        &app,
        "depth",
        &[(file, "ckpts/depth-anything/Depth-Anything-V2-Small")],
        Some("astronaut.png"),
    );

    let (_, info) = app.get("/object_info/DepthAnythingV2Preprocessor").await;
    let node = &info["DepthAnythingV2Preprocessor"];
    assert_eq!(node["display_name"], "Depth Anything V2 - Relative");
    assert_eq!(
        node["category"],
        "ControlNet Preprocessors/Normal and Depth Estimators"
    );
    let ckpt = &node["input"]["required"]["ckpt_name"];
    assert_eq!(
        ckpt[0],
        json!([
            "depth_anything_v2_vitg.pth",
            "depth_anything_v2_vitl.pth",
            "depth_anything_v2_vitb.pth",
            "depth_anything_v2_vits.pth"
        ])
    );
    assert_eq!(ckpt[1]["default"], "depth_anything_v2_vitl.pth");

    app.queue_ok("/prompt", json!({"prompt": graph(file, "depth")}))
        .await;
    let (w, h, _, pixels) = read_png(&app.data_dir().join("output/depth_00001_.png"));
    let reference = candle_core::safetensors::load(
        annotator_fixture("depth", "reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want = &reference["astronaut.output"];
    assert_eq!(want.dims(), [h as usize, w as usize, 3]);
    let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
    // SaveImage truncates 255 * (level / 255), which may land one level below.
    let worst = max_level_diff(&pixels, &want);
    assert!(worst <= 1, "largest difference {worst} levels");

    // A file the folder lacks: the error names it and where it is published.
    let id = app
        .queue(graph("depth_anything_v2_vitl.pth", "missing"), "missing")
        .await;
    let error = history_error(&app.wait_history(&id).await);
    let message = error["exception_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("'depth_anything_v2_vitl.pth' not found")
            && message.contains("depth-anything/Depth-Anything-V2-Large"),
        "{message}"
    );
}
