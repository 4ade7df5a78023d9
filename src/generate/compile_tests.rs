//! Unit tests of the compiler, without a server: each request shape compiles against a data
//! folder of tiny model files and is compared with its golden file, and each error `compile` can
//! return names the request field at fault.
//!
//! Golden files: `tests/fixtures/generate/compile/<case>.json`, one per case in [`CASES`], each
//! holding the request, what `resolved` reports and the expected API-format graph (`prompt`).
//! After a deliberate change to the compiler, rewrite them with
//!
//! ```text
//! WEFT_BLESS=1 cargo test --lib generate::compile
//! ```
//!
//! and review the diff before committing. A new case is a line in the `golden!` list below; its
//! file is written the first time it runs blessed. The cases shared with `tests/generate.rs` (which
//! runs them through the server and keeps its graphs in `tests/fixtures/generate/<case>.json`)
//! must compile to the same graph here: `the_end_to_end_fixtures_agree` checks that.
//!
//! Model files: the compiler reads only safetensors headers (family detection, ControlNet kind) and
//! SD2's one prediction-type tensor, so [`write_safetensors`] writes the header of the tiny models'
//! key maps (`tests/fixtures/unet`, `tests/fixtures/controlnet`) and leaves the data a sparse run
//! of zeros. LoRAs and VAEs are only listed, so they are empty files.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value as Json};
use tempfile::TempDir;

use super::*;
use crate::generate::request::parse;

/// The seed the caller supplies for requests without one.
const SEED: u64 = 1234;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Writes a safetensors file with `tensors` (name, shape) in f16, all zeros: the header is
/// written, the data is a hole the file system fills with zeros.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = 2 * shape.iter().product::<usize>() as u64;
        header.insert(
            name.clone(),
            json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_vec(&Json::Object(header)).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    file.write_all(&text).unwrap();
    file.set_len(8 + text.len() as u64 + offset).unwrap();
}

/// (LDM key, diffusers key, shape) rows of a committed key map.
fn keymap(relative: &str) -> Vec<(String, String, Vec<usize>)> {
    let text = std::fs::read_to_string(repo_path(relative)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A single-file checkpoint holding the UNet of the tiny key map `unet` (`sd1_tiny`, …) and any
/// `extra` tensors.
fn write_checkpoint(path: &Path, unet: &str, extra: &[&str]) {
    let mut tensors: Vec<(String, Vec<usize>)> =
        keymap(&format!("tests/fixtures/unet/keymap_{unet}.json"))
            .into_iter()
            .map(|(ldm, _, shape)| (format!("model.diffusion_model.{ldm}"), shape))
            .collect();
    tensors.extend(extra.iter().map(|k| (k.to_string(), vec![1])));
    write_safetensors(path, &tensors);
}

/// A ControlNet of the tiny key map `map`, under LDM names (`control_model.`) or diffusers names.
fn write_controlnet(path: &Path, map: &str, ldm: bool) {
    let tensors: Vec<(String, Vec<usize>)> =
        keymap(&format!("tests/fixtures/controlnet/keymap_{map}.json"))
            .into_iter()
            .map(|(l, d, shape)| {
                let name = if ldm { format!("control_model.{l}") } else { d };
                (name, shape)
            })
            .collect();
    write_safetensors(path, &tensors);
}

fn write_png(path: &Path, width: u32, height: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbaImage::from_pixel(width, height, image::Rgba([128, 64, 32, 255]))
        .save(path)
        .unwrap();
}

/// A data folder in a temporary directory.
struct Layout {
    _dir: TempDir,
    dirs: DataDirs,
}

impl Layout {
    fn empty() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let dirs = DataDirs::new(dir.path(), &dir.path().join("models"));
        dirs.create().unwrap();
        Layout { _dir: dir, dirs }
    }

    fn model(&self, relative: &str) -> PathBuf {
        self.dirs.models.join(relative)
    }

    /// The files of `tests/generate.rs` under the same names, so its cases compile to the same
    /// graphs, and files for the branches and errors those do not reach.
    fn full() -> Layout {
        let l = Layout::empty();
        for (name, unet, extra) in [
            ("sd15_tiny", "sd1_tiny", &[][..]),
            ("sd_xl_base_tiny", "sdxl_tiny", &[]),
            ("sd_xl_refiner_tiny", "refiner_tiny", &[]),
            // All-zero weights: ComfyUI's SD2 guess says epsilon.
            ("sd2_tiny", "sd2_tiny", &[]),
            ("sd2_v_tiny", "sd2_tiny", &["v_pred"]),
        ] {
            write_checkpoint(
                &l.model(&format!("checkpoints/{name}.safetensors")),
                unet,
                extra,
            );
        }
        // Checkpoints family detection refuses: no UNet; a UNet missing its output layer; not a
        // safetensors file at all.
        write_safetensors(
            &l.model("checkpoints/not_a_checkpoint.safetensors"),
            &[(
                "first_stage_model.encoder.conv_in.weight".into(),
                vec![8, 3, 3, 3],
            )],
        );
        write_safetensors(
            &l.model("checkpoints/half_unet.safetensors"),
            &[(
                "model.diffusion_model.input_blocks.0.0.weight".into(),
                vec![32, 4, 3, 3],
            )],
        );
        std::fs::write(
            l.model("checkpoints/broken.safetensors"),
            b"this is not a model file",
        )
        .unwrap();
        // Only listed by the compiler: names are enough.
        for file in [
            "vae/sdxl_vae.safetensors",
            "loras/art_style.safetensors",
            "loras/landscape.safetensors",
            "loras/xl/xl_style.safetensors",
            "loras/a/dup.safetensors",
            "loras/b/dup.safetensors",
        ] {
            std::fs::create_dir_all(l.model(file).parent().unwrap()).unwrap();
            std::fs::write(l.model(file), b"").unwrap();
        }
        for name in [
            "control_v11p_sd15_canny",
            "control_v11f1p_sd15_depth",
            "control_v11p_sd15_lineart",
            "control_v11p_sd15s2_lineart_anime",
            "control_v11p_sd15_scribble",
        ] {
            write_controlnet(
                &l.model(&format!("controlnet/{name}.safetensors")),
                "controlnet_sd1_tiny",
                true,
            );
        }
        write_controlnet(
            &l.model("controlnet/controlnet_canny_sdxl_tiny.safetensors"),
            "controlnet_sdxl_tiny",
            true,
        );
        write_controlnet(
            &l.model("controlnet/controlnet-union-sdxl-1.0-promax.safetensors"),
            "controlnet_union_sdxl_tiny",
            false,
        );
        std::fs::write(
            l.model("controlnet/control_broken_mlsd.safetensors"),
            b"this is not a model file",
        )
        .unwrap();
        // The annotator files of the network preprocessors: the compiler only looks for them.
        for file in [
            "annotators/sk_model.pth",
            "annotators/scannet.pt",
            "annotators/mlsd_large_512_fp32.pth",
            "annotators/body_pose_model.pth",
            "annotators/ControlNetHED.pth",
            "annotators/upernet_global_small.pth",
            "annotators/ckpts/depth-anything/Depth-Anything-V2-Small/depth_anything_v2_vits.pth",
        ] {
            std::fs::create_dir_all(l.model(file).parent().unwrap()).unwrap();
            std::fs::write(l.model(file), b"").unwrap();
        }
        let input = &l.dirs.input;
        write_png(&input.join("start.png"), 64, 64);
        write_png(&input.join("photo.png"), 48, 40);
        write_png(&input.join("mask.png"), 64, 64);
        write_png(&input.join("wide.png"), 100, 75);
        write_png(&input.join("maps/depth.png"), 64, 64);
        std::fs::write(input.join("broken.png"), b"not a png").unwrap();
        l
    }

    fn compile(&self, request: &Json) -> Result<Compiled, RequestError> {
        let req = parse(request).unwrap_or_else(|e| panic!("{request} does not parse: {e}"));
        compile(&req, &self.dirs, SEED)
    }
}

fn golden_path(case: &str) -> PathBuf {
    repo_path("tests/fixtures/generate/compile").join(format!("{case}.json"))
}

fn bless() -> bool {
    // As tests/generate.rs: set at all means bless.
    std::env::var_os("WEFT_BLESS").is_some()
}

/// The first place where `got` and `expected` differ, as a path and the two values.
fn first_difference(path: &str, got: &Json, expected: &Json) -> Option<String> {
    match (got, expected) {
        (Json::Object(g), Json::Object(e)) => {
            for key in g.keys().chain(e.keys()) {
                let (gv, ev) = (g.get(key), e.get(key));
                let sub = format!("{path}/{key}");
                match (gv, ev) {
                    (Some(gv), Some(ev)) => {
                        if let Some(d) = first_difference(&sub, gv, ev) {
                            return Some(d);
                        }
                    }
                    _ => return Some(format!("{sub}: got {gv:?}, expected {ev:?}")),
                }
            }
            // Same entries in another order: ids are numbered in order, so that is a change too.
            let (gk, ek): (Vec<_>, Vec<_>) = (g.keys().collect(), e.keys().collect());
            (gk != ek).then(|| format!("{path}: keys in order {gk:?}, expected {ek:?}"))
        }
        _ if got == expected => None,
        _ => Some(format!("{path}: got {got}, expected {expected}")),
    }
}

/// Compiles the request of `case` and compares it with (or, blessed, writes) its golden file.
fn check_golden(case: &str) {
    let request = request(case);
    let layout = Layout::full();
    let compiled = layout
        .compile(&request)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let got = json!({"request": request, "resolved": compiled.resolved, "prompt": compiled.prompt});
    let path = golden_path(case);
    if bless() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing (WEFT_BLESS=1 writes it)", path.display()));
    let expected: Json = serde_json::from_str(&text).unwrap();
    if let Some(diff) = first_difference("", &got, &expected) {
        panic!(
            "{case}: the compiled request differs from {} at {diff}\n\
             (if the change is intended: WEFT_BLESS=1 cargo test --lib generate::compile, then \
             review the diff)\ngot:\n{}",
            path.display(),
            serde_json::to_string_pretty(&got).unwrap()
        );
    }
}

/// One `#[test]` per case, [`CASES`] naming them all and `request` giving each one's request.
macro_rules! golden {
    ($($(#[doc = $doc:literal])* $case:ident: $request:expr,)*) => {
        /// Every golden case, by file name.
        const CASES: &[&str] = &[$(stringify!($case)),*];

        fn request(case: &str) -> Json {
            match case {
                $(stringify!($case) => $request,)*
                other => panic!("no golden case {other}"),
            }
        }

        mod golden {
            $(
                $(#[doc = $doc])*
                #[test]
                fn $case() {
                    super::check_golden(stringify!($case));
                }
            )*
        }
    };
}

golden! {
    // The request shapes of tests/generate.rs, unchanged.

    /// SD1 txt2img: empty latent, KSampler, the base checkpoint's VAE.
    txt2img_defaults: json!({"prompt": "a beautiful landscape painting", "model": "sd15_tiny", "hyperparameters": {"seed": 42, "width": 64, "height": 64}, "scheduler": {"steps": 2}}),
    /// SDXL base + refiner (KSamplerAdvanced split at refiner_switch) with a separate VAE and a
    /// batch.
    sdxl_base_refiner_vae: json!({
        "prompt": "a beautiful landscape painting", "negative_prompt": "blurry",
        "model": {"base": "sd_xl_base_tiny.safetensors", "refiner": "sd_xl_refiner_tiny.safetensors", "vae": "sdxl_vae.safetensors"},
        "scheduler": {"type": "DPM++", "steps": 4},
        "hyperparameters": {"guidance_scale": 7.5, "seed": 12345, "width": 64, "height": 64, "batch_size": 2, "refiner_switch": 0.5},
    }),
    /// LoRAs by name and by path, a disabled one skipped, the global multiplier, CLIP skip.
    lora_stack: json!({
        "prompt": "a castle", "model": {"base": "sd15_tiny.safetensors"},
        "lora": ["art_style:0.8", {"name": "landscape", "path": "models/loras/landscape.safetensors", "weight": 0.6, "clip_weight": 0.4, "enabled": true}, {"name": "art_style", "enabled": false}],
        "lora_config": {"global_weight_multiplier": 0.5},
        "scheduler": {"type": "Euler a", "steps": 2},
        "hyperparameters": {"seed": 7, "width": 64, "height": 64, "clip_skip": 2},
    }),
    /// img2img with two ControlNets: canny preprocessed from the init image (one LoadImage for
    /// both), depth from its own ready map.
    controlnets_img2img: json!({
        "prompt": "a house", "model": "sd15_tiny.safetensors",
        "controlnet": ["canny:0.8", {"type": "depth", "conditioning_scale": 0.6, "control_guidance_start": 0.1, "control_guidance_end": 0.9, "condition_image": "input/photo.png", "preprocess_condition": false}],
        "init_image": "input/start.png",
        "scheduler": {"type": "DPM++ 2M Karras", "steps": 3},
        "hyperparameters": {"seed": 3, "denoise": 0.6},
    }),
    /// Inpainting at full denoise (VAEEncodeForInpaint), the init image resized to the request.
    inpaint: json!({
        "prompt": "a red door", "model": "sd15_tiny.safetensors",
        "init_image": "input/start.png", "mask_image": "input/mask.png",
        "scheduler": {"type": "ddim", "steps": 2},
        "hyperparameters": {"seed": 5, "width": 48, "height": 48},
    }),
    /// Inpainting below full denoise: VAEEncode + SetLatentNoiseMask.
    inpaint_partial_denoise: json!({
        "prompt": "a red door", "model": "sd15_tiny.safetensors",
        "init_image": "start.png", "mask_image": "mask.png",
        "scheduler": {"type": "UniPC", "steps": 2},
        "hyperparameters": {"seed": 5, "denoise": 0.5},
    }),
    /// No SDXL depth or pose file: both use the union ControlNet, one loader, a type each.
    union_controlnet_sdxl: json!({
        "prompt": "a house", "model": "sd_xl_base_tiny",
        "controlnet": [
            {"type": "depth", "condition_image": "photo.png", "preprocess_condition": false},
            {"type": "pose", "conditioning_scale": 0.5, "condition_image": "start.png"},
        ],
        "scheduler": {"steps": 2},
        "hyperparameters": {"seed": 11, "width": 64, "height": 64},
    }),
    /// The issue's full example: LoRA, preprocessed ControlNet, inpainting, refiner, VAE.
    everything_sdxl: json!({
        "prompt": "a beautiful landscape painting", "negative_prompt": "blurry",
        "model": {"base": "sd_xl_base_tiny", "refiner": "sd_xl_refiner_tiny", "vae": "sdxl_vae"},
        "lora": ["xl_style:0.8"],
        "controlnet": [{"type": "canny", "conditioning_scale": 0.6, "control_guidance_start": 0.0, "control_guidance_end": 1.0, "condition_image": "input/photo.png", "preprocess_condition": true}],
        "scheduler": {"type": "DPM++", "steps": 4},
        "hyperparameters": {"guidance_scale": 7.5, "seed": 12345, "width": 64, "height": 64, "batch_size": 1, "denoise": 1.0, "refiner_switch": 0.8},
        "init_image": "input/start.png", "mask_image": "input/mask.png",
        "lora_config": {"global_weight_multiplier": 1.0},
    }),

    // Defaults that depend on the model.

    /// Nothing but a prompt and an SD1 model: 512², 20 steps, euler/normal, cfg 7.5, the
    /// caller's seed, the "weft" prefix.
    sd1_defaults: json!({"prompt": "a cat", "model": "sd15_tiny"}),
    /// SDXL base: 1024².
    sdxl_defaults: json!({"prompt": "a cat", "model": "sd_xl_base_tiny"}),
    /// SD2 epsilon (no marker, the weight statistic says epsilon): 512².
    sd2_defaults: json!({"prompt": "a cat", "model": "sd2_tiny"}),
    /// SD2 v-prediction (`v_pred` marker): 768².
    sd2_v_defaults: json!({"prompt": "a cat", "model": "sd2_v_tiny"}),

    // Other request options.

    /// A friendly scheduler with its scheduler overridden, cfg, a batch, a negative prompt, CLIP
    /// skip 1 (no CLIPSetLastLayer), an output subfolder prefix.
    sampling_options: json!({
        "prompt": "a cat", "negative_prompt": "dogs", "model": "sd15_tiny",
        "scheduler": {"type": "DPM++ 2M", "scheduler": "beta", "steps": 12},
        "hyperparameters": {"guidance_scale": 4.0, "seed": 99, "width": 64, "height": 96, "batch_size": 3, "clip_skip": 1},
        "filename_prefix": "runs/cat",
    }),
    /// The scheduler as a plain string: a ComfyUI sampler name, scheduler "normal".
    comfy_sampler_name: json!({"prompt": "a cat", "model": "sd15_tiny", "scheduler": "dpmpp_2m_sde_gpu", "hyperparameters": {"width": 64, "height": 64}}),
    /// img2img with nothing else: the init image's size, denoise 0.75, VAEEncode.
    img2img: json!({"prompt": "a cat", "model": "sd15_tiny", "init_image": "start.png"}),
    /// img2img resized to the requested size (ImageScale), encoded with the requested VAE.
    img2img_resized_vae: json!({
        "prompt": "a cat", "model": {"base": "sd15_tiny", "vae": "sdxl_vae"},
        "init_image": "start.png",
        "hyperparameters": {"width": 96, "height": 64, "denoise": 0.4},
    }),
    /// img2img from a 100×75 image: the size defaults to the image's rounded down to multiples of
    /// 8, 96×72 (what the VAE encodes, and what the request parser would accept).
    img2img_size_not_multiple_of_8: json!({"prompt": "a cat", "model": "sd15_tiny", "init_image": "wide.png"}),
    /// One side given: the other keeps the image's aspect ratio (100×75 at width 200: height 150,
    /// rounded down to a multiple of 8, 144).
    img2img_one_side_keeps_the_aspect_ratio: json!({"prompt": "a cat", "model": "sd15_tiny", "init_image": "wide.png",
        "hyperparameters": {"width": 200}}),

    // ControlNets.

    /// Preprocessors: scribble and lineart (its network) from the init image (preprocessed by
    /// default), canny from its own image with preprocess_condition; the preprocessors work at
    /// the short side, at least 64. Lineart has two SD1 files, so the request names one.
    controlnet_preprocessors: json!({
        "prompt": "a house", "model": "sd15_tiny", "init_image": "start.png",
        "controlnet": [
            "scribble:0.7",
            {"type": "lineart", "model": "control_v11p_sd15_lineart"},
            {"type": "canny", "condition_image": "photo.png", "preprocess_condition": true, "control_guidance_start": 0.2, "control_guidance_end": 0.8},
        ],
        "hyperparameters": {"width": 48, "height": 48, "seed": 1},
    }),
    /// Two entries of one file: one ControlNetLoader; an image from a subfolder of input; an
    /// init image used as it is (preprocess_condition false); a disabled entry skipped.
    controlnet_shared_loader: json!({
        "prompt": "a house", "model": "sd15_tiny", "init_image": "start.png",
        "controlnet": [
            {"type": "canny", "preprocess_condition": false, "conditioning_scale": 0.3},
            {"type": "canny", "condition_image": "input/maps/depth.png", "conditioning_scale": 0.9},
            {"type": "depth", "enabled": false},
        ],
        "hyperparameters": {"seed": 1},
    }),
    /// SDXL: canny has its own file; the other types fall back to the union file with their
    /// union type; a union file named with `model` gets its type too.
    union_controlnet_types: json!({
        "prompt": "a house", "model": "sd_xl_base_tiny",
        "controlnet": [
            {"type": "canny", "condition_image": "photo.png", "preprocess_condition": false},
            {"type": "scribble", "condition_image": "photo.png"},
            {"type": "normal", "condition_image": "photo.png"},
            {"type": "seg", "condition_image": "photo.png"},
            {"type": "mlsd", "condition_image": "photo.png"},
            {"type": "lineart", "condition_image": "photo.png"},
            {"type": "canny", "model": "controlnet-union-sdxl-1.0-promax", "condition_image": "photo.png"},
        ],
        "hyperparameters": {"width": 64, "height": 64, "seed": 1},
    }),

    // The refiner with an init image.

    /// img2img with a refiner: KSamplerAdvanced starts at steps × (1 - denoise) = 5 and the
    /// refiner takes over at the default switch 0.8 (step 8); the refiner's size conditioning is
    /// the init image's.
    sdxl_refiner_img2img: json!({
        "prompt": "a cat", "model": {"base": "sd_xl_base_tiny", "refiner": "sd_xl_refiner_tiny"},
        "init_image": "start.png",
        "scheduler": {"steps": 10},
        "hyperparameters": {"denoise": 0.5, "seed": 2},
    }),
    /// Inpainting below full denoise with a refiner: SetLatentNoiseMask into the split.
    sdxl_refiner_inpaint_partial_denoise: json!({
        "prompt": "a cat", "model": {"base": "sd_xl_base_tiny", "refiner": "sd_xl_refiner_tiny"},
        "init_image": "start.png", "mask_image": "mask.png",
        "scheduler": {"steps": 8},
        "hyperparameters": {"denoise": 0.75, "refiner_switch": 0.5, "seed": 2},
    }),
    /// A switch before the img2img start (0.5 × 10 = 5 < 10 × (1 - 0.3) = 7): the base would have
    /// an empty window (7..7) and hand over the encoded image without noise, so the refiner runs
    /// alone from step 7 and adds the noise itself.
    sdxl_refiner_switch_before_start: json!({
        "prompt": "a cat", "model": {"base": "sd_xl_base_tiny", "refiner": "sd_xl_refiner_tiny"},
        "init_image": "start.png",
        "scheduler": {"steps": 10},
        "hyperparameters": {"denoise": 0.3, "refiner_switch": 0.5, "seed": 2},
    }),
    /// The same in txt2img with refiner_switch 0 (the parser allows 0..=1): the refiner alone,
    /// adding the noise, from step 0.
    sdxl_refiner_switch_zero: json!({
        "prompt": "a cat", "model": {"base": "sd_xl_base_tiny", "refiner": "sd_xl_refiner_tiny"},
        "scheduler": {"steps": 4},
        "hyperparameters": {"width": 64, "height": 64, "refiner_switch": 0.0, "seed": 2},
    }),
}

#[test]
fn every_golden_file_is_a_case() {
    let dir = repo_path("tests/fixtures/generate/compile");
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        match name.strip_suffix(".json") {
            Some(case) if CASES.contains(&case) => {}
            _ => orphans.push(name),
        }
    }
    assert!(
        orphans.is_empty(),
        "files in {} without a case: {orphans:?}",
        dir.display()
    );
}

/// The cases `tests/generate.rs` runs through the server compile to its committed graphs here
/// too (a request or file name changed on one side only shows here).
#[test]
fn the_end_to_end_fixtures_agree() {
    let layout = Layout::full();
    let mut shared = 0;
    for case in CASES {
        let e2e = repo_path("tests/fixtures/generate").join(format!("{case}.json"));
        let Ok(text) = std::fs::read_to_string(&e2e) else {
            continue;
        };
        let graph: Json = serde_json::from_str(&text).unwrap();
        let compiled = layout.compile(&request(case)).unwrap();
        assert_eq!(
            first_difference("", &compiled.prompt, &graph),
            None,
            "{case}: the graph compiled here and {} differ",
            e2e.display()
        );
        shared += 1;
    }
    assert_eq!(shared, 8, "the eight request shapes of tests/generate.rs");
}

#[test]
fn the_same_request_compiles_to_the_same_graph() {
    let layout = Layout::full();
    let request = json!({
        "prompt": "a cat", "model": "sd_xl_base_tiny", "lora": ["xl_style"],
        "controlnet": [{"type": "depth", "preprocess_condition": false}],
        "init_image": "start.png", "mask_image": "mask.png",
    });
    assert_eq!(
        layout.compile(&request).unwrap(),
        layout.compile(&request).unwrap()
    );
}

#[test]
fn the_base_model_defaults_to_the_only_checkpoint() {
    let layout = Layout::empty();
    write_checkpoint(
        &layout.model("checkpoints/sub/only.safetensors"),
        "sd1_tiny",
        &[],
    );
    let compiled = layout.compile(&json!({"prompt": "a cat"})).unwrap();
    assert_eq!(
        compiled.prompt["1"]["inputs"]["ckpt_name"],
        "sub/only.safetensors"
    );
    assert_eq!(compiled.resolved["model"]["base"], "sub/only.safetensors");
    assert_eq!(compiled.resolved["model"]["family"], "SD1.x");
    // The seed argument is used when the request has none, and the request's otherwise.
    assert_eq!(compiled.resolved["seed"], SEED);
    let seeded = layout
        .compile(&json!({"prompt": "a cat", "hyperparameters": {"seed": 0}}))
        .unwrap();
    assert_eq!(seeded.resolved["seed"], 0);
}

/// Compiles `request` against `layout`, expecting an error naming `field` whose message has
/// `words`.
fn assert_refused(layout: &Layout, request: Json, field: &str, words: &str) {
    let e = match layout.compile(&request) {
        Ok(_) => panic!("{request} compiled; expected an error on {field}"),
        Err(e) => e,
    };
    assert_eq!(e.field, field, "{request} → {e}");
    assert!(
        e.message.contains(words),
        "{request} → {e}; expected '{words}'"
    );
}

#[test]
fn an_empty_checkpoint_folder_is_refused_on_model_base() {
    assert_refused(
        &Layout::empty(),
        json!({"prompt": "x"}),
        "model.base",
        "models/checkpoints is empty",
    );
}

#[test]
fn model_errors_name_the_model_field() {
    let layout = Layout::full();
    let cases = [
        (json!({"model": "nope"}), "model.base", "no model 'nope'"),
        (
            json!({}),
            "model.base",
            "required when models/checkpoints has several files",
        ),
        (
            json!({"model": "sd_xl_refiner_tiny"}),
            "model.base",
            "is an SDXL refiner",
        ),
        (
            json!({"model": "not_a_checkpoint"}),
            "model.base",
            "no diffusion model weights",
        ),
        (
            json!({"model": "half_unet"}),
            "model.base",
            "cannot use 'half_unet.safetensors'",
        ),
        (
            json!({"model": "broken"}),
            "model.base",
            "broken.safetensors",
        ),
        (
            json!({"model": {"base": "sd_xl_base_tiny", "refiner": "nope"}}),
            "model.refiner",
            "no model 'nope'",
        ),
        (
            json!({"model": {"base": "sd_xl_base_tiny", "refiner": "broken"}}),
            "model.refiner",
            "broken.safetensors",
        ),
        (
            json!({"model": {"base": "sd_xl_base_tiny", "refiner": "sd15_tiny"}}),
            "model.refiner",
            "is an SD1.x model, not an SDXL refiner",
        ),
        (
            json!({"model": {"base": "sd15_tiny", "refiner": "sd_xl_refiner_tiny"}}),
            "model.refiner",
            "needs an SDXL base model; 'sd15_tiny.safetensors' is SD1.x",
        ),
        (
            json!({"model": {"base": "sd2_tiny", "refiner": "sd_xl_refiner_tiny"}}),
            "model.refiner",
            "is SD2.x",
        ),
        (
            json!({"model": {"base": "sd15_tiny", "vae": "nope"}}),
            "model.vae",
            "no model 'nope' in models/vae",
        ),
    ];
    for (mut request, field, words) in cases {
        request["prompt"] = json!("x");
        assert_refused(&layout, request, field, words);
    }
}

#[test]
fn setting_errors_name_their_field() {
    let layout = Layout::full();
    let cases = [
        (
            json!({"scheduler": {"type": "Turbo Magic"}}),
            "scheduler.type",
            "unknown scheduler type 'Turbo Magic'",
        ),
        (
            json!({"scheduler": "Turbo Magic"}),
            "scheduler.type",
            "unknown scheduler type",
        ),
        (
            json!({"scheduler": {"type": "Euler", "scheduler": "fast"}}),
            "scheduler.scheduler",
            "unknown scheduler 'fast'",
        ),
        (
            json!({"init_image": "nope.png"}),
            "init_image",
            "no image 'nope.png'",
        ),
        (json!({"init_image": "../secret.png"}), "init_image", ".."),
        (
            json!({"init_image": "broken.png"}),
            "init_image",
            "cannot read image 'broken.png'",
        ),
        (
            json!({"init_image": "start.png", "mask_image": "nope.png"}),
            "mask_image",
            "no image 'nope.png'",
        ),
        (
            json!({"mask_image": "mask.png"}),
            "mask_image",
            "inpainting needs init_image",
        ),
        (
            json!({"init_image": "start.png", "hyperparameters": {"batch_size": 2}}),
            "hyperparameters.batch_size",
            "a batch_size of 2 is larger than the image batch",
        ),
    ];
    for (mut request, field, words) in cases {
        request["prompt"] = json!("x");
        request["model"] = json!("sd15_tiny");
        assert_refused(&layout, request, field, words);
    }
}

#[test]
fn lora_errors_name_the_entry() {
    let layout = Layout::full();
    let cases = [
        (
            json!(["missing_lora"]),
            "lora[0]",
            "no model 'missing_lora' in models/loras",
        ),
        (
            json!(["art_style", {"path": "models/loras/gone.safetensors"}]),
            "lora[1].path",
            "no model 'gone.safetensors'",
        ),
        (
            json!("dup"),
            "lora",
            "'dup' matches several files in models/loras: a/dup.safetensors, b/dup.safetensors",
        ),
        (
            json!([{"name": "off", "enabled": false}, {"name": "dup", "weight": 0.5}]),
            "lora[1]",
            "matches several files",
        ),
    ];
    for (loras, field, words) in cases {
        let request = json!({"prompt": "x", "model": "sd15_tiny", "lora": loras});
        assert_refused(&layout, request, field, words);
    }
}

#[test]
fn controlnet_errors_name_the_entry() {
    let layout = Layout::full();
    let cases = [
        (json!([{"type": "canny", "model": "nope"}]), "controlnet[0].model", "no model 'nope' in models/controlnet"),
        (json!([{"type": "canny", "model": "controlnet_canny_sdxl_tiny"}]), "controlnet[0].model", "is a SDXL ControlNet but the base model is SD1.x"),
        (json!([{"type": "mlsd", "model": "control_broken_mlsd"}]), "controlnet[0].model", "cannot use 'control_broken_mlsd.safetensors'"),
        (json!(["canny", "pose"]), "controlnet[1]", "no pose ControlNet for SD1.x"),
        (json!(["lineart:0.5"]), "controlnet[0]", "several lineart ControlNets for SD1.x match: control_v11p_sd15_lineart.safetensors, control_v11p_sd15s2_lineart_anime.safetensors"),
        (json!("mlsd"), "controlnet", "not usable: control_broken_mlsd.safetensors (unreadable"),
        (json!([{"type": "canny", "condition_image": "nope.png"}]), "controlnet[0].condition_image", "no image 'nope.png'"),
        (json!([{"type": "canny", "condition_image": "broken.png"}]), "controlnet[0].condition_image", "cannot read image"),
    ];
    for (controlnets, field, words) in cases {
        let request = json!({"prompt": "x", "model": "sd15_tiny", "init_image": "start.png", "controlnet": controlnets});
        assert_refused(&layout, request, field, words);
    }
    // Without an init image a ControlNet needs its own image.
    assert_refused(
        &layout,
        json!({"prompt": "x", "model": "sd15_tiny", "controlnet": ["canny", "depth"]}),
        "controlnet[0].condition_image",
        "there is no init_image",
    );
    // A named file of another family is refused the other way round too.
    assert_refused(
        &layout,
        json!({"prompt": "x", "model": "sd_xl_base_tiny", "controlnet": [{"type": "canny", "model": "control_v11p_sd15_canny", "condition_image": "photo.png"}]}),
        "controlnet[0].model",
        "is a SD1.x ControlNet but the base model is SDXL",
    );
}

/// Depth without Depth Anything V2 small: MiDaS where its file is; without either, the error
/// names both files.
#[test]
fn depth_falls_back_to_midas() {
    let layout = Layout::full();
    let request = json!({"prompt": "x", "model": "sd15_tiny", "controlnet": [
        {"type": "depth", "model": "control_v11p_sd15_canny", "condition_image": "photo.png", "preprocess_condition": true}]});
    let small = layout
        .dirs
        .annotator_file("depth_anything_v2_vits.pth")
        .unwrap();
    std::fs::remove_file(small).unwrap();
    for file in ["depth_anything_v2_vits.pth", "dpt_hybrid-midas-501f0c75.pt"] {
        assert_refused(
            &layout,
            request.clone(),
            "controlnet[0].preprocess_condition",
            &format!("annotator file '{file}' not found"),
        );
    }
    std::fs::write(layout.model("annotators/dpt_hybrid-midas-501f0c75.pt"), b"").unwrap();
    let compiled = layout.compile(&request).unwrap();
    let midas = compiled
        .prompt
        .as_object()
        .unwrap()
        .values()
        .find(|n| n["class_type"] == "MiDaS-DepthMapPreprocessor")
        .expect("MiDaS node");
    assert_eq!(midas["inputs"]["bg_threshold"], 0.1);
}

#[test]
fn network_preprocessors_compile_with_their_files_and_name_them_without() {
    let layout = Layout::full();
    for (kind, class, file) in [
        (
            "depth",
            "DepthAnythingV2Preprocessor",
            "depth_anything_v2_vits.pth",
        ),
        ("normal", "BAE-NormalMapPreprocessor", "scannet.pt"),
        ("mlsd", "M-LSDPreprocessor", "mlsd_large_512_fp32.pth"),
        ("lineart", "LineArtPreprocessor", "sk_model.pth"),
        ("pose", "OpenposePreprocessor", "body_pose_model.pth"),
        ("scribble", "FakeScribblePreprocessor", "ControlNetHED.pth"),
        (
            "segmentation",
            "UniFormer-SemSegPreprocessor",
            "upernet_global_small.pth",
        ),
    ] {
        let request = json!({"prompt": "x", "model": "sd15_tiny", "controlnet": [
            {"type": kind, "model": "control_v11p_sd15_canny", "condition_image": "photo.png", "preprocess_condition": true}]});
        let compiled = layout.compile(&request).unwrap();
        let classes: Vec<&str> = compiled
            .prompt
            .as_object()
            .unwrap()
            .values()
            .filter_map(|n| n["class_type"].as_str())
            .collect();
        assert!(classes.contains(&class), "{kind}: {classes:?}");

        // Without the file: a 400 naming it and where it is published.
        let path = layout.dirs.annotator_file(file).unwrap();
        let moved = path.with_extension("away");
        std::fs::rename(&path, &moved).unwrap();
        assert_refused(
            &layout,
            request,
            "controlnet[0].preprocess_condition",
            &format!("annotator file '{file}' not found: put it in models/annotators/"),
        );
        std::fs::rename(&moved, &path).unwrap();
    }
}
