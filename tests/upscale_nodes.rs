//! UpscaleModelLoader and ImageUpscaleWithModel through the real server, with the tiny models of
//! `tools/parity/upscale_reference.py` (tests/fixtures/upscale/) copied into
//! `models/upscale_models`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};
use weft::nodes::{Inputs, Node, NodeContext, NodeError, Reporter, Value};

use crate::helpers::{context, max_level_diff, read_png, spawn_app, TestApp};
use crate::security::history_error;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upscale")
}

/// A server with `files` from the fixtures in `models/upscale_models` and the PNG in `input/`.
async fn app_with(files: &[&str]) -> TestApp {
    let app = spawn_app().await;
    let folder = app.dir.path().join("models/upscale_models");
    std::fs::create_dir_all(&folder).unwrap();
    for file in files {
        std::fs::copy(fixtures().join(file), folder.join(file)).unwrap();
    }
    let input = app.data_dir().join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(
        fixtures().join("e2e_input.png"),
        input.join("e2e_input.png"),
    )
    .unwrap();
    app
}

fn upscale_graph(model: &str, image: Json, prefix: &str) -> Json {
    json!({
        "1": image,
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}}
    })
}

fn load_image() -> Json {
    json!({"class_type": "LoadImage", "inputs": {"image": "e2e_input.png"}})
}

/// The reference's "e2e/out" ([1, H, W, 3] in 0..1) as SaveImage writes it: 255x, clipped,
/// truncated.
fn reference_pixels() -> (usize, usize, Vec<u8>) {
    let reference = candle_core::safetensors::load(
        fixtures().join("reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let out = &reference["e2e/out"];
    let (_, h, w, _) = out.dims4().unwrap();
    let values = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let pixels = values
        .iter()
        .map(|v| (v * 255.0).clamp(0.0, 255.0) as u8)
        .collect();
    (w, h, pixels)
}

#[actix_web::test]
async fn load_image_upscale_and_save_match_comfyui() {
    let app = app_with(&["esrgan_old_x4.pth"]).await;
    let mut ws = app.ws("up").await;
    let id = app
        .queue(upscale_graph("esrgan_old_x4.pth", load_image(), "up"), "up")
        .await;
    let events = ws.until_done(&id).await;
    let entry = app.wait_history(&id).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry:#}");
    // One tile (the image is smaller than 512): one progress step on the upscale node.
    let progress: Vec<&Json> = events
        .iter()
        .filter(|e| e["type"] == "progress" && e["data"]["node"] == "3")
        .collect();
    assert_eq!(progress.len(), 1, "{events:#?}");
    assert_eq!(
        (&progress[0]["data"]["value"], &progress[0]["data"]["max"]),
        (&json!(1), &json!(1))
    );
    let (w, h, _, pixels) = read_png(&app.data_dir().join("output/up_00001_.png"));
    let (want_w, want_h, want) = reference_pixels();
    assert_eq!((w as usize, h as usize), (want_w, want_h));
    assert_eq!((w, h), (16 * 4, 12 * 4));
    // Truncation to 8 bits can fall either side of a level where the floats differ by 1e-7.
    let worst = max_level_diff(&pixels, &want);
    assert!(worst <= 1, "largest difference {worst} levels");
    let off = pixels.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert!(off * 100 < pixels.len(), "{off} of {} differ", pixels.len());

    // A SwinIR file (a {"params": …} pickle) through the same graph.
    let swin = "swinir_classical_x2.pth";
    std::fs::copy(
        fixtures().join(swin),
        app.dir.path().join("models/upscale_models").join(swin),
    )
    .unwrap();
    app.queue_ok(
        "/prompt",
        json!({"prompt": upscale_graph(swin, load_image(), "swin")}),
    )
    .await;
    let (w, h, _, _) = read_png(&app.data_dir().join("output/swin_00001_.png"));
    assert_eq!((w, h), (16 * 2, 12 * 2));
}

#[actix_web::test]
async fn object_info_declares_both_nodes_as_comfyui_does() {
    let app = app_with(&["esrgan_old_x4.pth", "compact_x2.safetensors"]).await;
    let (status, info) = app.get("/object_info").await;
    assert_eq!(status, 200);
    let loader = &info["UpscaleModelLoader"];
    assert_eq!(loader["display_name"], "Load Upscale Model");
    assert_eq!(loader["category"], "loaders");
    assert_eq!(loader["output"], json!(["UPSCALE_MODEL"]));
    assert_eq!(loader["output_name"], json!(["UPSCALE_MODEL"]));
    assert_eq!(loader["python_module"], "comfy_extras.nodes_upscale_model");
    assert_eq!(
        loader["input"]["required"]["model_name"][0],
        json!(["compact_x2.safetensors", "esrgan_old_x4.pth"])
    );
    let upscale = &info["ImageUpscaleWithModel"];
    assert_eq!(upscale["display_name"], "Upscale Image (using Model)");
    assert_eq!(upscale["category"], "image/upscaling");
    assert_eq!(
        upscale["input"]["required"],
        json!({"upscale_model": ["UPSCALE_MODEL"], "image": ["IMAGE"]})
    );
    assert_eq!(upscale["output"], json!(["IMAGE"]));
    assert_eq!(upscale["output_node"], false);

    // The model browser and the folder lists know the folder.
    let (status, files) = app.get("/experiment/models/upscale_models").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["compact_x2.safetensors", "esrgan_old_x4.pth"]);
    let (_, folders) = app.get("/models").await;
    assert!(folders
        .as_array()
        .unwrap()
        .contains(&json!("upscale_models")));
    let (_, listed) = app.get("/models/upscale_models").await;
    assert_eq!(
        listed,
        json!(["compact_x2.safetensors", "esrgan_old_x4.pth"])
    );
    let (_, paths) = app.get("/internal/folder_paths").await;
    let folder = app.dir.path().join("models/upscale_models");
    assert_eq!(
        paths["upscale_models"],
        json!([folder.display().to_string()])
    );
}

#[actix_web::test]
async fn bad_model_files_fail_naming_the_input_and_the_file() {
    let app = app_with(&["unknown_keys.safetensors", "evil.pth"]).await;
    let cases = [
        ("unknown_keys.safetensors", "unknown model family"),
        ("evil.pth", "refusing the pickle"),
    ];
    for (file, why) in cases {
        let id = app
            .queue(upscale_graph(file, load_image(), "bad"), "bad")
            .await;
        let entry = app.wait_history(&id).await;
        let error = history_error(&entry);
        assert_eq!(error["node_type"], "UpscaleModelLoader", "{error}");
        let message = error["exception_message"].as_str().unwrap_or_default();
        assert!(message.contains("input 'model_name'"), "{message}");
        assert!(
            message.contains(&format!("models/upscale_models/{file}")),
            "{message}"
        );
        assert!(message.contains(why), "{message}");
    }
    // The unknown file's error lists what was looked for.
    let id = app
        .queue(
            upscale_graph("unknown_keys.safetensors", load_image(), "bad"),
            "bad",
        )
        .await;
    let message = history_error(&app.wait_history(&id).await)["exception_message"].to_string();
    assert!(
        message.contains("Real-ESRGAN (conv_first.weight"),
        "{message}"
    );
}

/// For calling ImageUpscaleWithModel directly: records `ctx`'s progress, and gives inputs of
/// compact_x2 (loaded through `ctx`'s model manager) and a grey `w` x `h` image.
fn direct_run(app: &TestApp, ctx: &mut NodeContext, w: usize, h: usize) -> (Arc<Steps>, Inputs) {
    let steps = Arc::new(Steps::default());
    ctx.reporter = steps.clone();
    let path = app
        .dir
        .path()
        .join("models/upscale_models/compact_x2.safetensors");
    let model = ctx.models.upscale(&path).unwrap();
    let image = candle_core::Tensor::full(0.5f32, (1, h, w, 3), &candle_core::Device::Cpu).unwrap();
    let inputs = Inputs::new(vec![
        ("upscale_model".into(), Value::UpscaleModel(model)),
        ("image".into(), Value::Image(image)),
    ]);
    (steps, inputs)
}

/// Progress as a node reports it.
#[derive(Default)]
struct Steps(Mutex<Vec<(u64, u64)>>);

impl Reporter for Steps {
    fn progress(&self, _: &str, value: u64, max: u64) {
        self.0.lock().unwrap().push((value, max));
    }
    fn preview(&self, _: &str, _: Vec<u8>, _: bool) {}
}

/// A 600 x 40 image is two 512-pixel tiles (at 0 and 480, overlapping by 32): a progress step
/// after each, and an interrupt stops after the first.
#[actix_web::test]
async fn tiles_report_progress_and_an_interrupt_stops_between_them() {
    let app = app_with(&["compact_x2.safetensors"]).await;
    let wide = json!({"class_type": "EmptyImage", "inputs": {"width": 600, "height": 40, "batch_size": 1, "color": 0x336699}});
    let mut ws = app.ws("tiles").await;
    let id = app
        .queue(
            upscale_graph("compact_x2.safetensors", wide, "wide"),
            "tiles",
        )
        .await;
    let events = ws.until_done(&id).await;
    let steps: Vec<(Json, Json)> = events
        .iter()
        .filter(|e| e["type"] == "progress" && e["data"]["node"] == "3")
        .map(|e| (e["data"]["value"].clone(), e["data"]["max"].clone()))
        .collect();
    assert_eq!(steps, [(json!(1), json!(2)), (json!(2), json!(2))]);
    let (w, h, _, _) = read_png(&app.data_dir().join("output/wide_00001_.png"));
    assert_eq!((w, h), (1200, 80));

    // Called directly with the interrupt flag up: the first tile runs, then it stops.
    let mut ctx = context(&app);
    ctx.interrupt
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (steps, inputs) = direct_run(&app, &mut ctx, 600, 40);
    let result = weft::nodes::upscale::ImageUpscaleWithModel.run(&ctx, &inputs);
    assert!(matches!(result, Err(NodeError::Interrupted)), "{result:?}");
    assert_eq!(*steps.0.lock().unwrap(), [(1, 2)]);
}

/// When the memory for a 512-pixel tile is not there, ComfyUI halves the tile: here the result
/// and a 256-pixel tile fit and a 512-pixel one does not, so the 600 x 40 image runs as three
/// 256-pixel tiles (at 0, 224 and 448).
#[actix_web::test]
async fn a_tile_that_does_not_fit_is_halved() {
    let app = app_with(&["compact_x2.safetensors"]).await;
    let memory = crate::memory::FakeMemory::new();
    let mut ctx = context(&app);
    ctx.models = Arc::new(weft::engine::manager::ModelManager::with_probe(
        1 << 30,
        candle_core::Device::Cpu,
        Some(candle_core::DType::F32),
        memory.probe(),
    ));
    let (w, h) = (600, 40);
    let (steps, inputs) = direct_run(&app, &mut ctx, w, h);
    let model = inputs.upscale_model("upscale_model").unwrap();
    let result = (3 * 4 * 3 * (2 * w) * (2 * h)) as u64;
    let tile = |side: usize| model.activation_bytes(h.min(side), w.min(side));
    memory.set_free(result + (tile(256) + tile(512)) / 2);
    let out = weft::nodes::upscale::ImageUpscaleWithModel
        .run(&ctx, &inputs)
        .unwrap();
    let Value::Image(out) = &out.values[0] else {
        panic!("an IMAGE")
    };
    assert_eq!(out.dims(), &[1, 2 * h, 2 * w, 3]);
    assert_eq!(*steps.0.lock().unwrap(), [(1, 3), (2, 3), (3, 3)]);

    // Not even 128-pixel tiles fit: out of memory, naming the input.
    memory.set_free(result);
    let err = weft::nodes::upscale::ImageUpscaleWithModel
        .run(&ctx, &inputs)
        .unwrap_err();
    assert!(
        matches!(&err, NodeError::OutOfMemory { input, .. } if input == "image"),
        "{err}"
    );
}
