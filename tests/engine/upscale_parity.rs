//! Parity against spandrel 0.4.2 (torch 2.15) through `tools/parity/upscale_reference.py`, which
//! wrote the tiny random-weight models and `reference.safetensors` in `tests/fixtures/upscale/`:
//! "<model>/small" is spandrel's `ImageModelDescriptor(image_small)` (padding, clamp, crop), and
//! "<model>/tiled" ComfyUI's `comfy.utils.tiled_scale` with tile 12, overlap 4 over it. Tolerance
//! 1e-4 (f32 on both sides; the differences are summation order). The SwinIR classical and
//! real-world files have num_feat 8 where SwinIR fixes 64; the script builds those with
//! spandrel's classes and calls them through spandrel's descriptor (see its docstring).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use weft::engine::upscale::detect::Architecture;
use weft::engine::upscale::{tile, UpscaleModel};

use crate::engine::util::max_abs_diff;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upscale")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu)
        .expect("fixture file")
}

fn load(file: &str) -> UpscaleModel {
    UpscaleModel::load_file(&dir().join(file), DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// (file, scale, description).
const MODELS: &[(&str, usize, &str)] = &[
    ("esrgan_old_x4.pth", 4, "ESRGAN 4x 8nf 1nb"),
    ("esrgan_old_x1.safetensors", 1, "ESRGAN 1x 8nf 1nb"),
    ("esrgan_new_x8.safetensors", 8, "ESRGAN 8x 8nf 1nb"),
    ("esrgan_new_x2.pth", 2, "ESRGAN 2x 8nf 1nb unshuffle"),
    (
        "esrgan_new_x1.safetensors",
        1,
        "ESRGAN 1x 8nf 1nb unshuffle",
    ),
    ("esrgan_bsrgan_x2.pth", 2, "ESRGAN 2x 8nf 1nb"),
    ("esrgan_plus_x2.safetensors", 2, "ESRGAN+ 2x 8nf 1nb"),
    ("compact_x2.safetensors", 2, "Compact 2x 8nf 2nc"),
    ("compact_x4.pth", 4, "Compact 4x 8nf 2nc"),
    (
        "swinir_classical_x2.pth",
        2,
        "SwinIR 2x 12dim [2, 2] w4 classical",
    ),
    (
        "swinir_lightweight_x3.safetensors",
        3,
        "SwinIR 3x 12dim [2, 2] w4 lightweight",
    ),
    (
        "swinir_realworld_x4.safetensors",
        4,
        "SwinIR 4x 12dim [2, 2] w4 real-world",
    ),
    (
        "swinir_restore_x1.pth",
        1,
        "SwinIR 1x 12dim [2] w7 restoration",
    ),
];

#[test]
fn every_layout_is_detected_and_matches_spandrel() {
    let reference = reference();
    let image = &reference["image_small"];
    for &(file, scale, description) in MODELS {
        let model = load(file);
        assert_eq!(model.scale(), scale, "{file}");
        assert_eq!(model.describe(), description, "{file}");
        if let Architecture::Esrgan(cfg) = model.architecture() {
            assert_eq!(cfg.num_grow, 4, "{file}");
        }
        let name = file.split('.').next().unwrap_or_default();
        let got = model.upscale(image).unwrap();
        let diff = max_abs_diff(&got, &reference[&format!("{name}/small")]);
        println!("{file}: max abs diff {diff:e}");
        assert!(diff < 1e-4, "{file}: {diff}");
    }
}

#[test]
fn tiled_scale_matches_comfyui() {
    let reference = reference();
    let image = &reference["image_tiled"];
    for file in [
        "esrgan_old_x4.pth",
        "esrgan_new_x2.pth",
        "compact_x2.safetensors",
    ] {
        let model = load(file);
        let mut tiles = 0;
        let got = tile::tiled_scale(
            image,
            12,
            4,
            model.scale(),
            3,
            |t| model.upscale(t),
            || {
                tiles += 1;
                Ok::<(), candle_core::Error>(())
            },
        )
        .unwrap();
        assert_eq!(tiles, 2 * 3, "{file}");
        let name = file.split('.').next().unwrap_or_default();
        let diff = max_abs_diff(&got, &reference[&format!("{name}/tiled")]);
        println!("{file} tiled: max abs diff {diff:e}");
        assert!(diff < 1e-4, "{file}: {diff}");
    }
}

#[test]
fn files_that_are_no_upscale_model_are_named_in_the_error() {
    let err = UpscaleModel::load_file(
        &dir().join("unknown_keys.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown_keys.safetensors"), "{err}");
    assert!(err.contains("ESRGAN (model.0.weight"), "{err}");
    let err = UpscaleModel::load_file(&dir().join("evil.pth"), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("evil.pth"), "{err}");
    assert!(err.contains("refusing the pickle"), "{err}");
}
