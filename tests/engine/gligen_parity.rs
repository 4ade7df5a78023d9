//! GLIGEN parity with `tools/parity/gligen_reference.py`: ComfyUI's own `comfy/gligen.py` on a
//! file in ComfyUI's layout with synthetic weights (SD1 rule: 768-wide tokens, 8 heads). Checked:
//! the position net's grounding tokens for two boxes, every fuser, and the tiny SD1 UNet with the
//! middle patch (the reference: diffusers' UNet calling ComfyUI's patch with each transformer's
//! index between self- and cross-attention). Tolerance 1e-4 max abs.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use weft::engine::diffusion::patches::UNetPatches;
use weft::engine::gligen::{Gligen, Grounding, TextBox, MAX_BOXES};
use weft::engine::load::file::StateDict;
use weft::engine::synth::{synth_tensor, synth_var_builder};
use weft::engine::unet::{UNet2DConditionModel, UNetControl};

use crate::engine::util::{max_abs_diff, tiny_unet_config};

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gligen")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("gligen_reference.safetensors"),
        &Device::Cpu,
    )
    .expect("fixture loads")
}

/// Writes the reference's GLIGEN file into `dir`: the synthetic tensors of `gligen_keys.json`
/// and the gates stored in the fixture. Returns its path.
pub(crate) fn write_reference_file(dir: &Path) -> PathBuf {
    let keys: Vec<(String, Vec<usize>)> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gligen_keys.json")).unwrap(),
    )
    .unwrap();
    let gates = reference()
        .into_iter()
        .filter(|(k, _)| k.contains(".fuser.alpha_"))
        .collect();
    let path = dir.join("gligen_reference.safetensors");
    write_synthetic(&path, keys, gates);
    path
}

/// Writes a safetensors file of the synthetic tensors `shapes` (key, shape) and `given` ones.
pub(crate) fn write_synthetic(
    path: &Path,
    shapes: Vec<(String, Vec<usize>)>,
    given: HashMap<String, Tensor>,
) {
    let mut tensors: HashMap<String, Tensor> = shapes
        .into_iter()
        .map(|(k, shape)| {
            let t = synth_tensor(&k, shape).unwrap();
            (k, t)
        })
        .collect();
    tensors.extend(given);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    candle_core::safetensors::save(&tensors, path).unwrap();
}

fn load(path: &Path) -> Gligen {
    let file = std::sync::Arc::new(StateDict::open(path).unwrap());
    Gligen::load(&file, DType::F32, &Device::Cpu).unwrap()
}

fn boxes(fx: &HashMap<String, Tensor>) -> Vec<TextBox> {
    let text_box = |k: usize, height, width, y, x| TextBox {
        embedding: fx[&format!("emb_{k}")].clone(),
        height,
        width,
        y,
        x,
    };
    vec![text_box(0, 4, 6, 2, 3), text_box(1, 8, 5, 0, 7)]
}

#[test]
fn position_net_fusers_and_the_unet_patch_match_comfyui() {
    let fx = reference();
    let dir = tempfile::tempdir().unwrap();
    let model = std::sync::Arc::new(load(&write_reference_file(dir.path())));
    assert_eq!(model.config().fusers.len(), 11);
    assert_eq!(model.config().key_dim, 768);

    let mut failures = Vec::new();
    let mut check = |name: &str, ours: &Tensor, want: &Tensor| {
        let err = max_abs_diff(ours, want);
        println!("{name}: max abs error {err:.2e}");
        if err > TOL {
            failures.push(format!("{name}: {err}"));
        }
    };

    let boxes = boxes(&fx);
    let tokens = model.grounding_tokens(&boxes, 8, 12).unwrap();
    assert_eq!(tokens.dims(), &[1, MAX_BOXES, 768]);
    check("objs", &tokens, &fx["objs"]);
    let batch = tokens.repeat((2, 1, 1)).unwrap();
    for i in 0..11 {
        let out = model.fuse(&fx[&format!("x_{i}")], &batch, i).unwrap();
        check(&format!("fuse_{i}"), &out, &fx[&format!("fuse_{i}")]);
    }

    let unet = UNet2DConditionModel::new(
        synth_var_builder(DType::F32, &Device::Cpu),
        &tiny_unet_config("sd1_tiny"),
    )
    .unwrap();
    let grounding = Grounding { model, boxes };
    let patches = UNetPatches {
        middle: vec![grounding.patch(2, 8, 12).unwrap()],
        ..UNetPatches::default()
    };
    let (x, t, context) = (&fx["unet_x"], &fx["unet_t"], &fx["unet_context"]);
    let forward = |patches: &UNetPatches| {
        unet.forward_patched(x, t, context, None, &UNetControl::default(), patches, 1.0)
            .unwrap()
    };
    check(
        "unet_plain",
        &forward(&UNetPatches::default()),
        &fx["unet_plain"],
    );
    check("unet_gligen", &forward(&patches), &fx["unet_gligen"]);
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn too_many_boxes_and_mismatched_unets_are_errors() {
    let fx = reference();
    let dir = tempfile::tempdir().unwrap();
    let model = load(&write_reference_file(dir.path()));
    let one = boxes(&fx).remove(0);
    let many = vec![one; MAX_BOXES + 1];
    let err = model.grounding_tokens(&many, 8, 8).unwrap_err().to_string();
    assert!(err.contains("at most 30 text boxes"), "{err}");
    let tokens = model.grounding_tokens(&many[..2], 8, 8).unwrap();
    // Transformer 0 is 32 wide; a 64-wide one is another UNet's.
    let x = Tensor::zeros((1, 4, 64), DType::F32, &Device::Cpu).unwrap();
    let err = model.fuse(&x, &tokens, 0).unwrap_err().to_string();
    assert!(err.contains("takes 32 channels"), "{err}");
    let err = model.fuse(&x, &tokens, 11).unwrap_err().to_string();
    assert!(err.contains("has 11 fusers"), "{err}");
    // A box embedding of another width (another text encoder) is refused.
    let narrow = TextBox {
        embedding: Tensor::zeros((1, 48), DType::F32, &Device::Cpu).unwrap(),
        ..boxes(&fx).remove(0)
    };
    assert!(model.grounding_tokens(&[narrow], 8, 8).is_err());
}
