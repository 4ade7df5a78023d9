//! Zoe-DepthMapPreprocessor through the real server, with the tiny ZoeDepth of
//! `tools/parity/zoe_reference.py` (tests/fixtures/annotators/zoe/ZoeD_M12_N.pt) under
//! `models/annotators/`, then under comfyui_controlnet_aux's `ckpts/lllyasviel/Annotators/` tree:
//! the saved PNG against the pack's map within 1 level, the declaration as the pack's, and a
//! missing file named.

use serde_json::{json, Value as Json};

use crate::helpers::{add_annotators, annotator_fixture, max_level_diff, read_png, spawn_app};
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
