//! UniFormer-SemSegPreprocessor (and its alias SemSegPreprocessor) through the real server, with
//! the tiny UniFormer of `tools/parity/uniformer_reference.py`
//! (tests/fixtures/annotators/uniformer/upernet_global_small.pth): under `models/annotators/`, then
//! under comfyui_controlnet_aux's `ckpts/lllyasviel/Annotators/` tree; the saved PNG equal to the
//! pack's result except where its top-2 logits tie within float noise; a missing file names it.

use serde_json::{json, Value as Json};

use crate::helpers::{add_annotators, annotator_fixture, read_png, spawn_app, TestApp};
use crate::security::history_error;

/// A server with the input PNG, and the weights under `models/annotators/<sub>` if given.
async fn app_with(sub: Option<&str>) -> TestApp {
    let app = spawn_app().await;
    let files: Vec<(&str, &str)> = sub
        .map(|s| ("upernet_global_small.pth", s))
        .into_iter()
        .collect();
    add_annotators(&app, "uniformer", &files, Some("e2e_input.png"));
    app
}

fn graph(class: &str, prefix: &str) -> Json {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "e2e_input.png"}},
        "2": {"class_type": class, "inputs": {"image": ["1", 0], "resolution": 64}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

/// The pack's node result on the e2e input (the fixture's astronaut at resolution 64) and the
/// reference's top-1 minus top-2 logit margin per pixel (the padded map is as wide).
fn reference() -> (usize, usize, Vec<u8>, Vec<f32>) {
    let t = candle_core::safetensors::load(
        annotator_fixture("uniformer", "reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let out = &t["astronaut_r64.out"];
    let (h, w, _) = out.dims3().unwrap();
    let margin = t["astronaut_r64.margin"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (
        w,
        h,
        out.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
        margin,
    )
}

#[actix_web::test]
async fn segmentation_matches_the_pack_from_either_folder_layout() {
    let (want_w, want_h, want, margin) = reference();
    for (class, sub, prefix) in [
        ("UniFormer-SemSegPreprocessor", "", "seg"),
        (
            "SemSegPreprocessor",
            "ckpts/lllyasviel/Annotators",
            "seg_ckpts",
        ),
    ] {
        let app = app_with(Some(sub)).await;
        app.queue_ok("/prompt", json!({"prompt": graph(class, prefix)}))
            .await;
        let (w, h, _, pixels) =
            read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png")));
        assert_eq!((w as usize, h as usize), (want_w, want_h), "{sub}");
        let unsure = pixels
            .chunks_exact(3)
            .zip(want.chunks_exact(3))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(p, _)| margin[p])
            .fold(0f32, f32::max);
        assert!(
            unsure < 1e-3,
            "{class}: a pixel differs where the pack is sure ({unsure})"
        );
    }
}

#[actix_web::test]
async fn object_info_declares_both_nodes_as_the_pack_does() {
    let app = app_with(None).await;
    for (class, display) in [
        ("UniFormer-SemSegPreprocessor", "UniFormer Segmentor"),
        (
            "SemSegPreprocessor",
            "Semantic Segmentor (legacy, alias for UniFormer)",
        ),
    ] {
        let (status, info) = app.get(&format!("/object_info/{class}")).await;
        assert_eq!(status, 200);
        let node = &info[class];
        assert_eq!(node["display_name"], display);
        assert_eq!(
            node["category"],
            "ControlNet Preprocessors/Semantic Segmentation"
        );
        let required = &node["input"]["required"];
        assert_eq!(required["image"], json!(["IMAGE"]));
        assert_eq!(
            (
                &required["resolution"][1]["default"],
                &required["resolution"][1]["min"],
                &required["resolution"][1]["step"],
            ),
            (&json!(512), &json!(64), &json!(64))
        );
        assert_eq!(node["output"], json!(["IMAGE"]));
    }
}

#[actix_web::test]
async fn a_missing_upernet_file_names_it() {
    let app = app_with(None).await;
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": graph("UniFormer-SemSegPreprocessor", "none")}),
        )
        .await;
    let message = if status == 200 {
        let id = body["prompt_id"].as_str().unwrap_or_default().to_string();
        history_error(&app.wait_history(&id).await)["exception_message"].to_string()
    } else {
        body.to_string()
    };
    assert!(
        message.contains("'upernet_global_small.pth' not found"),
        "{message}"
    );
    assert!(message.contains("models/annotators"), "{message}");
}
