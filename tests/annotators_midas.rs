//! MiDaS-DepthMapPreprocessor and MiDaS-NormalMapPreprocessor through the real server, with the
//! tiny DPT-Hybrid of `tools/parity/midas_reference.py` (tests/fixtures/annotators/midas/
//! dpt_hybrid-midas-501f0c75.pt) under `models/annotators/`, then under comfyui_controlnet_aux's
//! `ckpts/lllyasviel/Annotators/` tree: the saved PNGs against the pack's maps within 1 level,
//! the declarations as the pack's, and a missing file named. Then the transformers folder of
//! `tools/parity/midas_hf_reference.py` (today's pack) under `ckpts/Intel/dpt-hybrid-midas/`
//! beside the `.pt`: the folder wins, the `.pt` serves once it is gone, and without either the
//! error names both.

use serde_json::{json, Value as Json};

use crate::helpers::{add_annotators, annotator_fixture, max_level_diff, read_png, spawn_app};
use crate::security::history_error;

const FILE: &str = "dpt_hybrid-midas-501f0c75.pt";

fn graph(class: &str, prefix: &str) -> Json {
    graph_of(class, prefix, "astronaut.png", 128)
}

fn graph_of(class: &str, prefix: &str, image: &str, resolution: u32) -> Json {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": class, "inputs": {"image": ["1", 0], "a": std::f64::consts::TAU,
              "bg_threshold": 0.1, "resolution": resolution}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

/// The saved `<prefix>_00001_.png` against a reference uint8 map: the largest difference.
fn saved_against(app: &crate::helpers::TestApp, prefix: &str, want: &candle_core::Tensor) -> u8 {
    let (w, h, _, pixels) = read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png")));
    assert_eq!(want.dims(), [h as usize, w as usize, 3], "{prefix}");
    let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
    max_level_diff(&pixels, &want)
}

#[actix_web::test]
async fn midas_reads_todays_transformers_folder_first() {
    let load = |family| {
        candle_core::safetensors::load(
            annotator_fixture(family, "reference.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (hf, pt) = (load("midas_hf"), load("midas"));
    let app = spawn_app().await;
    let folder = "ckpts/Intel/dpt-hybrid-midas";
    add_annotators(
        &app,
        "midas_hf/Intel/dpt-hybrid-midas",
        &[
            ("model.safetensors", folder),
            ("config.json", folder),
            ("preprocessor_config.json", folder),
        ],
        None,
    );
    add_annotators(&app, "midas_hf", &[], Some("coffee.png"));
    add_annotators(&app, "midas", &[(FILE, "")], None);
    for (class, map) in [
        ("MiDaS-DepthMapPreprocessor", "depth_map"),
        ("MiDaS-NormalMapPreprocessor", "normal_map"),
    ] {
        let prefix = format!("hf_{map}");
        app.queue_ok(
            "/prompt",
            json!({"prompt": graph_of(class, &prefix, "coffee.png", 64)}),
        )
        .await;
        // one level of truncation, here and in SaveImage
        let worst = saved_against(&app, &prefix, &hf[&format!("coffee.{map}")]);
        assert!(worst <= 1, "{class} from the folder: {worst} levels");
    }
    // Without the folder, the .pt (the same image and resolution are among its cases).
    std::fs::remove_dir_all(app.dir.path().join("models/annotators/ckpts")).unwrap();
    let prefix = "pt_depth_map";
    app.queue_ok(
        "/prompt",
        json!({"prompt": graph_of("MiDaS-DepthMapPreprocessor", prefix, "coffee.png", 64)}),
    )
    .await;
    let worst = saved_against(&app, prefix, &pt["coffee.depth_map"]);
    assert!(worst <= 1, "from the .pt: {worst} levels");
    // Without either: the error names both.
    std::fs::remove_file(app.dir.path().join("models/annotators").join(FILE)).unwrap();
    let id = app
        .queue(
            graph_of("MiDaS-DepthMapPreprocessor", "missing", "coffee.png", 64),
            "missing",
        )
        .await;
    let error = history_error(&app.wait_history(&id).await);
    let message = error["exception_message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("'{FILE}' not found"))
            && message.contains("Intel/dpt-hybrid-midas")
            && message.contains("models--Intel--dpt-hybrid-midas"),
        "{message}"
    );
}

#[actix_web::test]
async fn midas_maps_match_the_pack_from_either_folder_layout() {
    let reference = candle_core::safetensors::load(
        annotator_fixture("midas", "reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for sub in ["", "ckpts/lllyasviel/Annotators"] {
        let app = spawn_app().await;
        add_annotators(&app, "midas", &[(FILE, sub)], Some("astronaut.png"));
        for (class, display, map) in [
            ("MiDaS-DepthMapPreprocessor", "MiDaS Depth Map", "depth_map"),
            (
                "MiDaS-NormalMapPreprocessor",
                "MiDaS Normal Map",
                "normal_map",
            ),
        ] {
            let (_, info) = app.get(&format!("/object_info/{class}")).await;
            let node = &info[class];
            assert_eq!(node["display_name"], display);
            assert_eq!(
                node["category"],
                "ControlNet Preprocessors/Normal and Depth Estimators"
            );
            let inputs = &node["input"]["required"];
            let a = &inputs["a"][1];
            assert_eq!(
                (&a["default"], &a["min"], &a["max"]),
                (
                    &json!(std::f64::consts::PI * 2.0),
                    &json!(0.0),
                    &json!(std::f64::consts::PI * 5.0)
                )
            );
            let bg = &inputs["bg_threshold"][1];
            assert_eq!(
                (&bg["default"], &bg["min"], &bg["max"]),
                (&json!(0.1), &json!(0.0), &json!(1.0))
            );
            assert_eq!(node["output"], json!(["IMAGE"]));

            app.queue_ok("/prompt", json!({"prompt": graph(class, map)}))
                .await;
            let (w, h, _, pixels) =
                read_png(&app.data_dir().join(format!("output/{map}_00001_.png")));
            let want = &reference[&format!("astronaut.{map}")];
            assert_eq!(want.dims(), [h as usize, w as usize, 3], "{sub} {class}");
            let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
            // one level of truncation, here and in SaveImage
            let worst = max_level_diff(&pixels, &want);
            assert!(
                worst <= 1,
                "{sub} {class}: largest difference {worst} levels"
            );
        }
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
        let id = app
            .queue(graph("MiDaS-DepthMapPreprocessor", "missing"), "missing")
            .await;
        let error = history_error(&app.wait_history(&id).await);
        let message = error["exception_message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("'{FILE}' not found"))
                && message.contains("lllyasviel/Annotators"),
            "{message}"
        );
    }
}
