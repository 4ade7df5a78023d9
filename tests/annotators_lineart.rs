//! LineArtPreprocessor and AnimeLineArtPreprocessor through the real server, with the narrowed
//! random-weight files of `tools/parity/lineart_reference.py` (tests/fixtures/annotators/lineart/):
//! LoadImage -> node -> SaveImage against the pack's results, and the error for a missing file.

use serde_json::json;

use crate::helpers::{add_annotators, annotator_fixture, read_png, spawn_app, TestApp};
use crate::security::history_error;

/// A server with sk_model2.pth in `models/annotators/`, netG.pth in the pack's
/// `ckpts/lllyasviel/Annotators/` tree below it, and the PNG in `input/`.
async fn app() -> TestApp {
    let app = spawn_app().await;
    add_annotators(
        &app,
        "lineart",
        &[
            ("sk_model2.pth", ""),
            ("netG.pth", "ckpts/lllyasviel/Annotators"),
        ],
        Some("e2e_input.png"),
    );
    app
}

/// The reference's uint8 map `name` as (width, height, RGB bytes).
fn reference(name: &str) -> (u32, u32, Vec<u8>) {
    let r = candle_core::safetensors::load(
        annotator_fixture("lineart", "reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let t = &r[name];
    let (h, w, _) = t.dims3().unwrap();
    let v = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    (w as u32, h as u32, v)
}

fn assert_matches(app: &TestApp, png: &str, name: &str) {
    let (w, h, _, pixels) = read_png(&app.data_dir().join("output").join(png));
    let (want_w, want_h, want) = reference(name);
    assert_eq!((w, h), (want_w, want_h), "{png}");
    let worst = pixels
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    assert!(worst <= 1, "{png}: largest difference {worst} levels");
}

#[actix_web::test]
async fn line_art_nodes_match_the_pack_and_name_a_missing_file() {
    let app = app().await;
    let graph = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "e2e_input.png"}},
        "2": {"class_type": "LineArtPreprocessor",
              "inputs": {"image": ["1", 0], "coarse": "enable", "resolution": 128}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "real"}},
        "4": {"class_type": "AnimeLineArtPreprocessor",
              "inputs": {"image": ["1", 0], "resolution": 128}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "anime"}}
    });
    let id = app.queue(graph, "la").await;
    let entry = app.wait_history(&id).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry:#}");
    assert_matches(&app, "real_00001_.png", "e2e/lineart_coarse");
    assert_matches(&app, "anime_00001_.png", "e2e/anime");

    // `coarse: disable` reads sk_model.pth, which this models folder lacks.
    let graph = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "e2e_input.png"}},
        "2": {"class_type": "LineArtPreprocessor",
              "inputs": {"image": ["1", 0], "coarse": "disable", "resolution": 512}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "none"}}
    });
    let id = app.queue(graph, "la").await;
    let message = history_error(&app.wait_history(&id).await)["exception_message"].to_string();
    assert!(message.contains("'sk_model.pth' not found"), "{message}");
}
