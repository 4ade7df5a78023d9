//! Parity of the CLIP vision encoder, unCLIP's noise augmentation and the style adapter with
//! `tools/parity/clip_vision_reference.py` (transformers' `CLIPVisionModelWithProjection`,
//! ComfyUI's `clip_preprocess`, `unclip_adm` and `StyleAdapter`), fixtures in
//! `tests/fixtures/clip_vision/`: "tiny_h" (exact GELU, HF names) and "tiny_l" (quick GELU, 24
//! layers, OpenCLIP `visual.*` names), each image resized with and without the centre crop.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use weft::engine::clip::ClipActivation;
use weft::engine::clip_vision::convert::file_prefix;
use weft::engine::clip_vision::{
    clip_vision_from_weights, preprocess, ClipVisionModel, StyleAdapter,
};
use weft::engine::diffusion::unclip::{unclip_adm, NoiseAugmentor, UnclipCond};

use crate::engine::util::max_abs_diff;

pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_vision")
}

fn load(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(file), &Device::Cpu).expect("fixture file")
}

fn model(file: &str) -> ClipVisionModel {
    let tensors = load(file);
    let prefix = file_prefix(&tensors);
    clip_vision_from_weights(&tensors, prefix, DType::F32, &Device::Cpu).expect(file)
}

fn check(name: &str, got: &Tensor, expected: &Tensor, tolerance: f32) {
    let diff = max_abs_diff(got, expected);
    assert!(diff < tolerance, "{name}: max difference {diff}");
}

#[test]
fn clip_vision_matches_transformers_and_comfyui_preprocessing() {
    let reference = load("reference.safetensors");
    for (name, file, act) in [
        (
            "tiny_h",
            "clip_vision_tiny_h.safetensors",
            ClipActivation::Gelu,
        ),
        (
            "tiny_l",
            "clip_vision_tiny_l.safetensors",
            ClipActivation::QuickGelu,
        ),
    ] {
        let model = model(file);
        assert_eq!(model.config().hidden_act, act, "{name}");
        let size = model.config().image_size;
        for image in ["image_wide", "image_tall"] {
            for crop in ["center", "none"] {
                let tag = format!("{name}/{image}/{crop}");
                let pixels = preprocess(&reference[image], size, crop == "center").unwrap();
                check(
                    &tag,
                    &pixels,
                    &reference[&format!("{tag}/pixel_values")],
                    1e-5,
                );
                let out = model
                    .encode_image(&reference[image], crop == "center")
                    .unwrap();
                for (part, got) in [
                    ("last_hidden_state", &out.last_hidden_state),
                    ("penultimate_hidden_states", &out.penultimate_hidden_states),
                    ("image_embeds", &out.image_embeds),
                ] {
                    check(
                        &format!("{tag}/{part}"),
                        got,
                        &reference[&format!("{tag}/{part}")],
                        2e-5,
                    );
                }
            }
        }
    }
}

#[test]
fn unclip_noise_augmentation_matches_comfyui() {
    let reference = load("reference.safetensors");
    let embeds = &reference["tiny_h/image_wide/center/image_embeds"];
    let augmentor = NoiseAugmentor::new(8);
    let cond = |image_embeds: Tensor, strength, noise_augmentation| UnclipCond {
        image_embeds,
        strength,
        noise_augmentation,
    };
    let single = unclip_adm(
        &[cond(embeds.narrow(0, 0, 1).unwrap(), 1.5, 0.3)],
        &augmentor,
        0.05,
        7,
    )
    .unwrap();
    check("single", &single, &reference["unclip/single"], 1e-5);
    let multi = unclip_adm(
        &[
            cond(embeds.clone(), 0.75, 0.0),
            cond(embeds.narrow(0, 1, 1).unwrap(), -1.0, 1.0),
        ],
        &augmentor,
        0.05,
        7,
    )
    .unwrap();
    check("multi", &multi, &reference["unclip/multi"], 1e-5);
}

#[test]
fn style_adapter_matches_comfyui() {
    let reference = load("reference.safetensors");
    let style =
        StyleAdapter::from_weights(&load("style_tiny.safetensors"), DType::F32, &Device::Cpu)
            .unwrap()
            .expect("a style model");
    assert_eq!(
        (style.width(), style.tokens(), style.context_dim()),
        (32, 3, 16)
    );
    let tokens = style
        .forward(&reference["tiny_h/image_wide/center/last_hidden_state"])
        .unwrap();
    check("style", &tokens, &reference["style/tokens"], 1e-5);
    // Not a style model: no `style_embedding`.
    let other = load("clip_vision_tiny_h.safetensors");
    assert!(StyleAdapter::from_weights(&other, DType::F32, &Device::Cpu)
        .unwrap()
        .is_none());
}
