//! The soft-edge nodes (HEDPreprocessor, FakeScribblePreprocessor, PiDiNetPreprocessor,
//! Scribble_PiDiNet_Preprocessor) through the real server, with the narrow random-weight files of
//! `tools/parity/hed_reference.py` (tests/fixtures/annotators/hed/): LoadImage -> node ->
//! SaveImage equals the pack's result within 1 level (scribbles: a few pixels).

use serde_json::{json, Value as Json};

use crate::helpers::{add_annotators, annotator_fixture, read_png, spawn_app, TestApp};
use crate::security::history_error;

/// Writes the reference's coffee input (72x96) as `input/coffee.png`.
fn write_input(app: &TestApp) {
    let reference = candle_core::safetensors::load(
        annotator_fixture("hed", "reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let img = &reference["in.coffee"];
    let (h, w, _) = img.dims3().unwrap();
    let data = img.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let input = app.data_dir().join("input");
    std::fs::create_dir_all(&input).unwrap();
    image::RgbImage::from_raw(w as u32, h as u32, data)
        .unwrap()
        .save(input.join("coffee.png"))
        .unwrap();
}

fn reference(key: &str) -> Vec<u8> {
    let reference = candle_core::safetensors::load(
        annotator_fixture("hed", "reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    reference[key]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap()
}

fn node(class_type: &str, safe: &str) -> Json {
    json!({"class_type": class_type, "inputs": {"image": ["1", 0], "safe": safe, "resolution": 80}})
}

fn save(from: &str, prefix: &str) -> Json {
    json!({"class_type": "SaveImage", "inputs": {"images": [from, 0], "filename_prefix": prefix}})
}

#[actix_web::test]
async fn soft_edge_nodes_match_the_pack() {
    let app = spawn_app().await;
    // HED's file directly in models/annotators, PiDiNet's in the pack's own ckpts tree there.
    add_annotators(
        &app,
        "hed",
        &[
            ("ControlNetHED.pth", ""),
            ("table5_pidinet.pth", "ckpts/lllyasviel/Annotators"),
        ],
        None,
    );
    write_input(&app);
    let graph = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "coffee.png"}},
        "2": node("HEDPreprocessor", "disable"),
        "3": save("2", "hed"),
        "4": node("FakeScribblePreprocessor", "enable"),
        "5": save("4", "fake_scribble_safe"),
        "6": node("PiDiNetPreprocessor", "enable"),
        "7": save("6", "pidi_safe"),
        "8": node("Scribble_PiDiNet_Preprocessor", "disable"),
        "9": save("8", "pidi_scribble"),
    });
    let id = app.queue(graph, "soft").await;
    let entry = app.wait_history(&id).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry:#}");
    for prefix in ["hed", "fake_scribble_safe", "pidi_safe", "pidi_scribble"] {
        let (w, h, _, pixels) =
            read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png")));
        assert_eq!((w, h), (107, 80), "{prefix}");
        let want = reference(&format!("{prefix}.coffee.r80"));
        let got: Vec<u8> = pixels.chunks_exact(3).map(|p| p[0]).collect();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!("{prefix}: max diff {worst} levels, {off} pixels differ");
        if prefix.contains("scribble") {
            assert!(off <= 4, "{prefix}: {off} pixels differ");
        } else {
            assert!(worst <= 1, "{prefix}: {worst} levels");
        }
    }
}

#[actix_web::test]
async fn a_missing_weight_file_is_named() {
    let app = spawn_app().await;
    write_input(&app);
    for (class_type, file) in [
        ("HEDPreprocessor", "ControlNetHED.pth"),
        ("Scribble_PiDiNet_Preprocessor", "table5_pidinet.pth"),
    ] {
        let graph = json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "coffee.png"}},
            "2": node(class_type, "enable"),
            "3": save("2", "missing"),
        });
        let (status, body) = app.post("/prompt", json!({"prompt": graph})).await;
        let message = if status == 200 {
            let id = body["prompt_id"].as_str().unwrap().to_string();
            history_error(&app.wait_history(&id).await)["exception_message"].to_string()
        } else {
            body.to_string()
        };
        assert!(
            message.contains(&format!("annotator file '{file}' not found")),
            "{message}"
        );
    }
}

#[actix_web::test]
async fn object_info_declares_the_pack_inputs() {
    let app = spawn_app().await;
    let (_, info) = app.get("/object_info").await;
    for class_type in [
        "HEDPreprocessor",
        "FakeScribblePreprocessor",
        "PiDiNetPreprocessor",
        "Scribble_PiDiNet_Preprocessor",
    ] {
        let node = &info[class_type];
        assert_eq!(
            node["category"], "ControlNet Preprocessors/Line Extractors",
            "{class_type}"
        );
        let inputs = &node["input"]["required"];
        assert_eq!(
            inputs["safe"][0],
            json!(["enable", "disable"]),
            "{class_type}"
        );
        assert_eq!(inputs["resolution"][1]["default"], 512, "{class_type}");
        assert_eq!(node["output"], json!(["IMAGE"]), "{class_type}");
    }
    assert_eq!(
        info["FakeScribblePreprocessor"]["display_name"],
        "Fake Scribble Lines (aka scribble_hed)"
    );
}
