//! Memory: the budget taken from the (injected) container limit, models and activations refused
//! with a clear `weft.OutOfMemory` when they cannot fit, the next prompt still running, the VAE
//! falling back to tiles, and `/system_stats` and `/free` showing and releasing memory.

use std::path::PathBuf;

use serde_json::{json, Value as Json};
use weft::engine::memory::{MemoryProbe, RESERVE};

use crate::helpers::{find, read_png, spawn_app_with, TestApp};
use crate::models::{install_all, tensor_bytes};

/// A fake machine: `/proc/meminfo`, `/proc/self/cgroup` and a cgroup v2 folder, rewritten at
/// will (the server reads them again before every load and every large computation).
pub(crate) struct FakeMemory {
    dir: tempfile::TempDir,
}

impl FakeMemory {
    pub(crate) fn new() -> FakeMemory {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cgroup")).unwrap();
        std::fs::write(
            dir.path().join("meminfo"),
            "MemTotal:       67108864 kB\nMemAvailable:   67108864 kB\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("self_cgroup"), "0::/\n").unwrap();
        let fake = FakeMemory { dir };
        fake.set_free(64 << 30);
        fake
    }

    pub(crate) fn probe(&self) -> MemoryProbe {
        MemoryProbe {
            cgroup_root: self.dir.path().join("cgroup"),
            self_cgroup: self.dir.path().join("self_cgroup"),
            meminfo: self.dir.path().join("meminfo"),
        }
    }

    /// A container limit leaving `free` bytes for Weft beyond its reserve.
    pub(crate) fn set_free(&self, free: u64) {
        let cgroup: PathBuf = self.dir.path().join("cgroup");
        std::fs::write(cgroup.join("memory.max"), format!("{}\n", free + RESERVE)).unwrap();
        std::fs::write(cgroup.join("memory.current"), "0\n").unwrap();
    }
}

/// A one-step txt2img graph (the seed decides which cached work it can share).
fn graph(ckpt: &str, (width, height): (u64, u64), decode: Json, prefix: &str, seed: u64) -> Json {
    json!({
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 1, "cfg": 8, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0],
              "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": decode,
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}}
    })
}

fn decode() -> Json {
    json!({"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}})
}

/// Queues `prompt` and checks that it ran without an error.
async fn run_ok(app: &TestApp, prompt: Json) {
    assert_eq!(run(app, prompt).await, None);
}

/// The message of `error`, a `weft.OutOfMemory` on a node of class `node_type`.
fn out_of_memory_on(error: &Json, node_type: &str) -> String {
    assert_eq!(error["node_type"], node_type, "{error}");
    assert_eq!(error["exception_type"], "weft.OutOfMemory", "{error}");
    error["exception_message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Queues `prompt` and returns its `execution_error`, if any.
async fn run(app: &TestApp, prompt: Json) -> Option<Json> {
    let mut ws = app.ws("mem").await;
    let id = app.queue(prompt, "mem").await;
    let events = ws.until_done(&id).await;
    find(&events, "execution_error").cloned()
}

#[actix_web::test]
async fn the_budget_follows_the_limit_and_what_cannot_fit_fails_clearly_while_the_server_goes_on() {
    let fake = FakeMemory::new();
    fake.set_free(4 << 30);
    let app = spawn_app_with(|c| c.memory = fake.probe()).await;
    install_all(&app.dir.path().join("models"));
    let ckpt = app
        .dir
        .path()
        .join("models/checkpoints/tiny_sd1.safetensors");

    // The default budget is three quarters of the limit in force, and it is reported.
    let (_, stats) = app.get("/system_stats").await;
    let limit = (4u64 << 30) + RESERVE;
    assert_eq!(
        stats["weft"]["memory_limit_bytes"], limit,
        "{}",
        stats["weft"]
    );
    assert_eq!(stats["weft"]["model_budget_bytes"], limit / 4 * 3);
    assert!(stats["weft"]["memory_limit_source"]
        .as_str()
        .unwrap()
        .contains("memory.max"));

    // A latent whose sampling needs more than there is: a clear error on the sampler.
    let error = run(
        &app,
        graph("tiny_sd1.safetensors", (4096, 4096), decode(), "big", 1),
    )
    .await;
    let error = error.expect("the huge latent must be refused");
    let message = out_of_memory_on(&error, "KSampler");
    assert!(
        message.starts_with("input 'latent_image': sampling 1 latent(s) of 512x512 needs"),
        "{message}"
    );
    assert!(
        message.contains("available") && message.contains("memory.max"),
        "{message}"
    );

    // The next prompt runs.
    run_ok(
        &app,
        graph("tiny_sd1.safetensors", (64, 64), decode(), "small", 2),
    )
    .await;
    let (_, stats) = app.get("/system_stats").await;
    assert_eq!(stats["weft"]["model_bytes"], tensor_bytes(&ckpt));

    // `/free` releases the models and the cached values that hold them.
    app.post("/free", json!({"unload_models": true})).await;
    let (_, stats) = app.get("/system_stats").await;
    assert_eq!(stats["weft"]["model_bytes"], 0);
    assert_eq!(stats["weft"]["models_loaded"], 0);

    // A checkpoint larger than the memory left: refused on its loader, naming the file.
    fake.set_free(tensor_bytes(&ckpt) / 2);
    let error = run(
        &app,
        graph("tiny_sd1.safetensors", (64, 64), decode(), "load", 3),
    )
    .await;
    let error = error.expect("the load must be refused");
    let message = out_of_memory_on(&error, "CheckpointLoaderSimple");
    assert!(
        message.starts_with("input 'ckpt_name': loading '")
            && message.contains("tiny_sd1.safetensors"),
        "{message}"
    );
    let (_, stats) = app.get("/system_stats").await;
    assert_eq!(
        stats["weft"]["models_loaded"], 0,
        "nothing half-loaded stays"
    );

    // Memory back: the same graph runs.
    fake.set_free(4 << 30);
    run_ok(
        &app,
        graph("tiny_sd1.safetensors", (64, 64), decode(), "again", 4),
    )
    .await;
}

/// A decode whose whole frame would not fit runs in ComfyUI's fallback tiles, exactly as
/// VAEDecodeTiled with those tiles does.
#[actix_web::test]
async fn a_decode_that_does_not_fit_whole_falls_back_to_tiles() {
    let fake = FakeMemory::new();
    let app = spawn_app_with(|c| c.memory = fake.probe()).await;
    install_all(&app.dir.path().join("models"));
    let ckpt = "tiny_sd1.safetensors";
    // 576x64 pixels: a 72x8 latent. Whole: 2178*64*576*4 bytes (321 MB); a 64-wide tile 285 MB.
    // "tiles" and "auto" share a seed, so their sampling is cached and only the decoders differ;
    // "whole" has its own, or its cached decode would stand in for "auto".
    let size = (576, 64);
    run_ok(&app, graph(ckpt, size, decode(), "whole", 5)).await;
    let pixels =
        |prefix: &str| read_png(&app.data_dir().join(format!("output/{prefix}_00001_.png")));
    // VAEDecodeTiled takes image pixels: ComfyUI's fallback tiles (64 latent pixels, overlap 16)
    // in this VAE's scale.
    let scale = pixels("whole").0 as u64 / 72;
    let tiled = json!({"class_type": "VAEDecodeTiled", "inputs": {"samples": ["3", 0], "vae": ["4", 2],
        "tile_size": 64 * scale, "overlap": 16 * scale, "temporal_size": 64, "temporal_overlap": 8}});
    run_ok(&app, graph(ckpt, size, tiled, "tiles", 6)).await;
    fake.set_free(300 << 20);
    run_ok(&app, graph(ckpt, size, decode(), "auto", 6)).await;
    assert_eq!(
        pixels("auto").3,
        pixels("tiles").3,
        "the fallback decodes in ComfyUI's tiles"
    );

    // Not even a tile fits: a clear error on the decoder.
    fake.set_free(100 << 20);
    let error = run(&app, graph(ckpt, (584, 64), decode(), "none", 8))
        .await
        .expect("refused");
    let message = out_of_memory_on(&error, "VAEDecode");
    assert!(
        message.contains("decoding a 8x73 latent in tiles"),
        "{message}"
    );
}

/// An f16 checkpoint on the CPU, by default: widened to f32 once at load when that fits (the
/// budget and the memory free), else kept f16 and widened per layer; either way the pixels are
/// those of the same file loaded with `--dtype f32`, to the bit.
#[actix_web::test]
async fn an_f16_checkpoint_is_widened_at_load_when_it_fits_else_stays_half_size() {
    let widened = spawn_app_with(|c| c.compute.dtype = Some(candle_core::DType::F32)).await;
    let roomy = spawn_app_with(|_| {}).await;
    // A budget with room for the f16 weights (about 12 MB), not for an f32 copy (22 MB).
    let tight = spawn_app_with(|c| c.model_budget_mb = Some(16)).await;
    let mut bytes = Vec::new();
    let mut images = Vec::new();
    for app in [&widened, &roomy, &tight] {
        let models = app.dir.path().join("models");
        install_all(&models);
        let f32_file = models.join("checkpoints/tiny_sd1.safetensors");
        let tensors = candle_core::safetensors::load(&f32_file, &candle_core::Device::Cpu).unwrap();
        let half: std::collections::HashMap<_, _> = tensors
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(candle_core::DType::F16).unwrap()))
            .collect();
        candle_core::safetensors::save(&half, models.join("checkpoints/half.safetensors")).unwrap();
        run_ok(
            app,
            graph("half.safetensors", (64, 64), decode(), "half", 9),
        )
        .await;
        let (_, stats) = app.get("/system_stats").await;
        bytes.push(stats["weft"]["model_bytes"].as_u64().unwrap());
        images.push(read_png(&app.data_dir().join("output/half_00001_.png")).3);
    }
    assert_eq!(images[0], images[1], "widening at load is exact");
    assert_eq!(images[0], images[2], "widening per layer is exact");
    assert_eq!(bytes[0], bytes[1], "widened at load when it fits");
    // UNet and CLIP at 2 bytes, the VAE kept at 4.
    assert!(bytes[2] * 10 < bytes[0] * 6, "{bytes:?}");
    let (_, stats) = roomy.get("/system_stats").await;
    assert_eq!(stats["weft"]["weight_dtype"], "stored");
    assert_eq!(stats["weft"]["dtype"], "f32");
}

/// Resizes whose result cannot fit are refused before anything is allocated (the 48 GB and
/// 274 GB allocations that used to abort the process), and the server goes on.
#[actix_web::test]
async fn a_resize_too_large_for_memory_is_refused_not_an_abort() {
    let fake = FakeMemory::new();
    fake.set_free(8 << 30);
    let app = spawn_app_with(|c| {
        c.memory = fake.probe();
        c.test_nodes = true;
    })
    .await;
    let images = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 4096, "color": 0}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
              "width": 16384, "height": 16384, "crop": "disabled"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    });
    let latents = json!({
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 4096}},
        "2": {"class_type": "LatentUpscale", "inputs": {"samples": ["1", 0], "upscale_method": "nearest-exact",
              "width": 16384, "height": 16384, "crop": "disabled"}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["4", 2]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    });
    install_all(&app.dir.path().join("models"));
    for (graph, class, input) in [
        (images, "ImageScale", "image"),
        (latents, "LatentUpscale", "samples"),
    ] {
        let error = run(&app, graph).await.expect("refused");
        let message = out_of_memory_on(&error, class);
        assert!(
            message.starts_with(&format!("input '{input}': resizing 4096 ")),
            "{message}"
        );
    }
    run_ok(
        &app,
        graph("tiny_sd1.safetensors", (64, 64), decode(), "after", 1),
    )
    .await;
}

/// Partial loading, as on a GPU too small for the model (`--gpu-memory`): on the CPU the split
/// is bookkeeping (both halves in RAM), which checks the plan, the accounting and that a model
/// built from placed weights, LoRA-patched too, gives the same image as a whole one.
#[actix_web::test]
async fn a_checkpoint_beyond_the_gpu_budget_loads_partially_and_gives_the_same_pixels() {
    let whole = spawn_app_with(|_| {}).await;
    let partial = spawn_app_with(|c| c.compute.gpu_memory_mb = Some(1)).await;
    let mut images = Vec::new();
    for app in [&whole, &partial] {
        let models = app.dir.path().join("models");
        install_all(&models);
        candle_core::safetensors::save(
            &crate::lora_nodes::kohya_lora("partial"),
            models.join("loras/partial.safetensors"),
        )
        .unwrap();
        run_ok(
            app,
            graph("tiny_sdxl.safetensors", (64, 64), decode(), "p", 4),
        )
        .await;
        let mut lora = graph("tiny_sd1.safetensors", (64, 64), decode(), "p", 4);
        lora["10"] = json!({"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
            "lora_name": "partial.safetensors", "strength_model": 1.0, "strength_clip": 1.0}});
        lora["3"]["inputs"]["model"] = json!(["10", 0]);
        run_ok(app, lora).await;
        images.push(
            [1, 2].map(|i| read_png(&app.data_dir().join(format!("output/p_{i:05}_.png"))).3),
        );
    }
    assert_eq!(images[0], images[1], "placed weights give the same image");
    let (_, stats) = whole.get("/system_stats").await;
    assert_eq!(stats["weft"]["model_offloaded_bytes"], 0);
    let (_, stats) = partial.get("/system_stats").await;
    assert_eq!(stats["weft"]["model_budget_bytes"], 1 << 20);
    let offloaded = stats["weft"]["model_offloaded_bytes"].as_u64().unwrap();
    let loaded = stats["weft"]["model_bytes"].as_u64().unwrap();
    // The SDXL model went to make room; the SD1 one is in, nearly all of its UNet in "RAM".
    assert_eq!(stats["weft"]["models_loaded"], 1, "{stats}");
    assert!(
        offloaded > 0 && offloaded < loaded,
        "{offloaded} of {loaded}"
    );
}
