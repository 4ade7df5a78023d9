//! Zoe-DepthMapPreprocessor through the real server, with the tiny ZoeDepth of
//! `tools/parity/zoe_reference.py` (tests/fixtures/annotators/zoe/ZoeD_M12_N.pt) under
//! `models/annotators/`, then under comfyui_controlnet_aux's `ckpts/lllyasviel/Annotators/` tree:
//! the saved PNG against the pack's map within 1 level, the declaration as the pack's, and a
//! missing file named. And today's pack's `Intel/zoedepth-nyu-kitti` folder
//! (`tools/parity/zoe_hf_reference.py`) in a Hugging Face cache layout beside the `.pt`: the
//! folder wins, the `.pt` serves once it is gone, and without either the error names both.

use serde_json::{json, Value as Json};

use crate::helpers::{
    add_annotators, annotator_fixture, max_level_diff, read_png, spawn_app, TestApp,
};
use crate::security::history_error;

const FILE: &str = "ZoeD_M12_N.pt";
const CLASS: &str = "Zoe-DepthMapPreprocessor";

fn graph(prefix: &str) -> Json {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "2": {"class_type": CLASS, "inputs": {"image": ["1", 0], "resolution": 128}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

#[actix_web::test]
async fn zoe_map_matches_the_pack_from_either_folder_layout() {
    let reference = candle_core::safetensors::load(
        annotator_fixture("zoe", "reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for sub in ["", "ckpts/lllyasviel/Annotators"] {
        let app = spawn_app().await;
        add_annotators(&app, "zoe", &[(FILE, sub)], Some("astronaut.png"));
        let (_, info) = app.get(&format!("/object_info/{CLASS}")).await;
        let node = &info[CLASS];
        assert_eq!(node["display_name"], "Zoe Depth Map");
        assert_eq!(
            node["category"],
            "ControlNet Preprocessors/Normal and Depth Estimators"
        );
        let required = node["input"]["required"].as_object().unwrap();
        assert_eq!(
            required.keys().collect::<Vec<_>>(),
            ["image", "resolution"],
            "{node}"
        );
        assert_eq!(node["output"], json!(["IMAGE"]));

        app.queue_ok("/prompt", json!({"prompt": graph("zoe")}))
            .await;
        let (w, h, _, pixels) = read_png(&app.data_dir().join("output/zoe_00001_.png"));
        let want = &reference["astronaut.depth_map"];
        assert_eq!(want.dims(), [h as usize, w as usize, 3], "{sub}");
        let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
        // one level of truncation, here and in SaveImage
        let worst = max_level_diff(&pixels, &want);
        assert!(worst <= 1, "{sub}: largest difference {worst} levels");
        if sub.is_empty() {
            continue;
        }
        // Without the file: the error names it and where it is published.
        std::fs::remove_file(
            app.dir
                .path()
                .join("models/annotators")
                .join(sub)
                .join(FILE),
        )
        .unwrap();
        let id = app.queue(graph("missing"), "missing").await;
        let error = history_error(&app.wait_history(&id).await);
        let message = error["exception_message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("'{FILE}' not found"))
                && message.contains("lllyasviel/Annotators"),
            "{message}"
        );
    }
}

/// The saved `<prefix>_00001_.png` against a reference map: (largest difference, values more
/// than one level off).
fn saved_against(app: &TestApp, prefix: &str, want: &candle_core::Tensor) -> (u8, usize) {
    let (w, h, _, pixels) = read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png")));
    assert_eq!(want.dims(), [h as usize, w as usize, 3], "{prefix}");
    let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
    let far = pixels
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.abs_diff(**b) > 1)
        .count();
    (max_level_diff(&pixels, &want), far)
}

#[actix_web::test]
async fn zoe_reads_todays_transformers_folder_first() {
    let load = |family| {
        candle_core::safetensors::load(
            annotator_fixture(family, "reference.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (hf, pt) = (load("zoe_hf"), load("zoe"));
    let app = spawn_app().await;
    let folder = "hub/models--Intel--zoedepth-nyu-kitti/snapshots/0123abc";
    add_annotators(
        &app,
        "zoe_hf/Intel/zoedepth-nyu-kitti",
        &[
            ("model.safetensors", folder),
            ("config.json", folder),
            ("preprocessor_config.json", folder),
        ],
        None,
    );
    add_annotators(&app, "zoe", &[(FILE, "")], Some("astronaut.png"));
    app.queue_ok("/prompt", json!({"prompt": graph("hf")}))
        .await;
    // The pipeline truncates the depth to uint8 before the pack stretches the 2nd..85th
    // percentile span (167 levels here) over 255: where a value lands on the other side of a
    // level boundary (26 of 16384 in the engine's parity test) the map moves by 2 levels.
    let want = &hf["astronaut.depth_map"];
    let (worst, far) = saved_against(&app, "hf", want);
    let share = far as f32 / want.elem_count() as f32;
    assert!(
        worst <= 3 && share <= 0.005,
        "from the folder: {worst} levels, {far} values more than one off"
    );
    // Without the folder, the .pt (the same image at the same resolution).
    std::fs::remove_dir_all(app.dir.path().join("models/annotators/hub")).unwrap();
    app.queue_ok("/prompt", json!({"prompt": graph("pt")}))
        .await;
    let (worst, _) = saved_against(&app, "pt", &pt["astronaut.depth_map"]);
    assert!(worst <= 1, "from the .pt: {worst} levels");
    // Without either: the error names both.
    std::fs::remove_file(app.dir.path().join("models/annotators").join(FILE)).unwrap();
    let id = app.queue(graph("missing"), "missing").await;
    let error = history_error(&app.wait_history(&id).await);
    let message = error["exception_message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("'{FILE}' not found"))
            && message.contains("lllyasviel/Annotators")
            && message.contains("https://huggingface.co/Intel/zoedepth-nyu-kitti")
            && message.contains("models--Intel--zoedepth-nyu-kitti"),
        "{message}"
    );
}
