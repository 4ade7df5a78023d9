//! OneFormer-ADE20K-SemSegPreprocessor and OneFormer-COCO-SemSegPreprocessor through the real
//! server, with the tiny OneFormer folder of `tools/parity/oneformer_reference.py`
//! (tests/fixtures/annotators/oneformer/shi-labs/oneformer_ade20k_swin_large/): under
//! comfyui_controlnet_aux's `ckpts/shi-labs/...` tree for ADE20K and in a Hugging Face cache's
//! snapshot for COCO (the same tiny net); the saved PNG equal to the pack's map (the parity test
//! shows no pixel of this case off); the declarations as the pack's; without the folders the
//! detectron2 checkpoint under `ckpts/lllyasviel/Annotators/` serves; without any, the error
//! names the folder, where it is published and the checkpoint the pack maps to it.

use serde_json::{json, Value as Json};

use crate::helpers::{add_annotators, annotator_fixture, max_level_diff, read_png, spawn_app};
use crate::security::history_error;

const FIXTURE: &str = "oneformer/shi-labs/oneformer_ade20k_swin_large";
const FILES: [&str; 3] = [
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
];

fn graph(class: &str, prefix: &str) -> Json {
    json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "coffee.png"}},
        "2": {"class_type": class, "inputs": {"image": ["1", 0], "resolution": 64}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

#[actix_web::test]
async fn oneformer_maps_match_the_pack_from_the_transformers_folders() {
    let reference = candle_core::safetensors::load(
        annotator_fixture("oneformer", "reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want = &reference["coffee.map"];
    let app = spawn_app().await;
    let ade = "ckpts/shi-labs/oneformer_ade20k_swin_large";
    let coco = "hub/models--shi-labs--oneformer_coco_swin_large/snapshots/0123abc";
    for folder in [ade, coco] {
        let files: Vec<(&str, &str)> = FILES.iter().map(|f| (*f, folder)).collect();
        add_annotators(&app, FIXTURE, &files, None);
    }
    add_annotators(&app, "oneformer", &[], Some("coffee.png"));
    for (class, display, prefix) in [
        (
            "OneFormer-ADE20K-SemSegPreprocessor",
            "OneFormer ADE20K Segmentor",
            "ade20k",
        ),
        (
            "OneFormer-COCO-SemSegPreprocessor",
            "OneFormer COCO Segmentor",
            "coco",
        ),
    ] {
        let (_, info) = app.get(&format!("/object_info/{class}")).await;
        let node = &info[class];
        assert_eq!(node["display_name"], display);
        assert_eq!(
            node["category"],
            "ControlNet Preprocessors/Semantic Segmentation"
        );
        let inputs = &node["input"]["required"];
        assert_eq!(inputs["image"][0], "IMAGE");
        assert_eq!(inputs["resolution"][1]["default"], 512);
        assert_eq!(node["output"], json!(["IMAGE"]));

        app.queue_ok("/prompt", json!({"prompt": graph(class, prefix)}))
            .await;
        let (w, h, _, pixels) =
            read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png")));
        assert_eq!(want.dims(), [h as usize, w as usize, 3], "{class}");
        let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(max_level_diff(&pixels, &want), 0, "{class}");
    }

    // Without the folders, the detectron2 checkpoint in the pack's ckpts tree: the same net (the
    // processor its conversion wrote for this tiny net's classes: 800 / 1333, so another map).
    std::fs::remove_dir_all(app.dir.path().join("models/annotators/ckpts")).unwrap();
    std::fs::remove_dir_all(app.dir.path().join("models/annotators/hub")).unwrap();
    let pth = "250_16_swin_l_oneformer_ade20k_160k.pth";
    add_annotators(
        &app,
        "oneformer",
        &[(pth, "ckpts/lllyasviel/Annotators")],
        None,
    );
    let class = "OneFormer-ADE20K-SemSegPreprocessor";
    app.queue_ok("/prompt", json!({"prompt": graph(class, "d2")}))
        .await;
    let (w, h, _, _) = read_png(&app.data_dir().join("output/d2_00001_.png"));
    assert_eq!(want.dims()[..2], [h as usize, w as usize], "from the .pth");

    // Without either: the error names the folder, where it is published, and the checkpoint.
    std::fs::remove_dir_all(app.dir.path().join("models/annotators/ckpts")).unwrap();
    let id = app.queue(graph(class, "missing"), "missing").await;
    let error = history_error(&app.wait_history(&id).await);
    let message = error["exception_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("shi-labs/oneformer_ade20k_swin_large")
            && message.contains("https://huggingface.co/shi-labs/oneformer_ade20k_swin_large")
            && message.contains(&format!("'{pth}' not found"))
            && message.contains("lllyasviel/Annotators"),
        "{message}"
    );
}
