//! Parity of Depth Anything V2 with comfyui_controlnet_aux's own network and detector
//! (`tools/parity/depth_anything_v2_reference.py`), fixtures in `tests/fixtures/annotators/depth/`:
//! a narrowed net in the published `depth_anything_v2_vits.pth` layout, a square image whose map is
//! enlarged to the resolution and a 4:3 one whose map is reduced; and ViT-g's SwiGLU blocks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use weft_engine::annotators::depth_anything_v2::{depth_anything_v2, DepthAnythingV2, Ffn};
use weft_engine::load::file::StateDict;
use weft_engine::preprocess::ImageU8;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/annotators/depth")
}

fn u8_values(t: &Tensor) -> Vec<u8> {
    t.flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("uint8 tensor")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu)
        .expect("reference")
}

fn load(file: &str) -> DepthAnythingV2 {
    let sd = Arc::new(StateDict::open(&dir().join(file)).expect("fixture"));
    DepthAnythingV2::load(&sd, &Device::Cpu).expect("tiny net loads")
}

/// Checks `model` on the reference's `case` against `{prefix}{case}.depth` (the network's depth
/// at the image's size, within 1e-4 of its range) and `{prefix}{case}.output` (the node's map,
/// within one level).
fn check(
    model: &DepthAnythingV2,
    reference: &HashMap<String, Tensor>,
    prefix: &str,
    case: &str,
    resolution: u32,
) {
    let input = &reference[&format!("{case}.input")];
    let (h, w, c) = input.dims3().expect("HWC");
    let img = ImageU8 {
        height: h,
        width: w,
        channels: c,
        data: u8_values(input),
    };
    let depth = model.infer_image(&img).expect("depth");
    let expected = &reference[&format!("{prefix}{case}.depth")];
    let range = expected
        .max_all()
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max");
    let diff = (depth - expected)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("diff");
    assert!(
        diff <= 1e-4 * range,
        "{prefix}{case}: depth differs by {diff} (range {range})"
    );

    let image = (input.to_dtype(DType::F32).expect("f32") / 255.0)
        .and_then(|t| t.unsqueeze(0))
        .expect("IMAGE");
    let out = depth_anything_v2(model, &image, resolution).expect("node");
    let expected = &reference[&format!("{prefix}{case}.output")];
    assert_eq!(
        out.dims()[1..],
        *expected.dims(),
        "{prefix}{case}: map size"
    );
    let got = (out * 255.0)
        .and_then(|t| t.round()?.to_dtype(DType::U8))
        .expect("levels");
    let (got, want) = (u8_values(&got), u8_values(expected));
    let worst = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max();
    let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    println!(
        "{prefix}{case}: depth max diff {diff:.2e} of {range:.2}, map max diff {worst:?} \
         level(s), {off} of {} values off",
        got.len()
    );
    assert!(
        worst <= Some(1),
        "{prefix}{case}: map differs by {worst:?} levels"
    );
}

#[test]
fn depth_anything_v2_matches_the_pack() {
    let model = load("depth_anything_v2_vits.pth");
    let cfg = model.config();
    assert_eq!(
        (cfg.embed_dim, cfg.depth, cfg.heads, cfg.ffn, cfg.pos_side),
        (128, 4, 2, Ffn::Mlp(128), 9)
    );
    assert_eq!(
        (cfg.features, cfg.out_channels, cfg.layers),
        (16, [8, 16, 24, 32], [0, 1, 2, 3])
    );
    let reference = reference();
    check(&model, &reference, "", "astronaut", 128);
    check(&model, &reference, "", "coffee", 64);
}

/// ViT-g's blocks: the SwiGLU feed-forward (`mlp.w12`, `mlp.w3`), on a narrower net.
#[test]
fn depth_anything_v2_giant_blocks_match_the_pack() {
    let model = load("depth_anything_v2_vitg.pth");
    let cfg = model.config();
    assert_eq!(
        (cfg.embed_dim, cfg.heads, cfg.ffn),
        (64, 1, Ffn::SwiGlu(48))
    );
    check(&model, &reference(), "vitg.", "astronaut", 128);
}

/// A full-size file (`depth_anything_v2_reference.py --full DIR [--encoder vits]`) loads and maps
/// a 512x512 image: `WEFT_DEPTH_ANYTHING_FILE=DIR/depth_anything_v2_vits.pth cargo test -p
/// weft-engine --test annotators_depth -- --ignored --nocapture`.
#[test]
#[ignore = "needs a full-size file named by WEFT_DEPTH_ANYTHING_FILE"]
fn full_size_file_loads_and_runs() {
    let Some(path) = std::env::var_os("WEFT_DEPTH_ANYTHING_FILE") else {
        return;
    };
    let sd = Arc::new(StateDict::open(std::path::Path::new(&path)).expect("file"));
    let model = DepthAnythingV2::load(&sd, &Device::Cpu).expect("loads");
    println!("{:?}", model.config());
    let image = Tensor::rand(0f32, 1f32, (1, 512, 512, 3), &Device::Cpu).expect("image");
    let start = std::time::Instant::now();
    let out = depth_anything_v2(&model, &image, 512).expect("runs");
    println!("{:?} in {:.2?}", out.dims(), start.elapsed());
    assert_eq!(out.dims(), [1, 512, 512, 3]);
}
