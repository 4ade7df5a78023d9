//! Parity of the UniFormer segmentation annotator with the ComfyUI pack's
//! `UniFormer-SemSegPreprocessor` (its vendored UniFormer backbone, mmseg UperNet head and
//! `inference_segmentor`), against `tools/parity/uniformer_reference.py`
//! (`tests/fixtures/annotators/uniformer/`: a narrowed net saved as `upernet_global_small.pth` in
//! the published layout, one direct forward, and a square and a non-square image at resolution 64,
//! which the pipeline runs at 512x512 and 512x1024).
//! Tolerances: the backbone features and the head's logits within 1e-4 of torch's f32 result
//! (logits spread about 1.6); the class map identical wherever the reference's top-2 logits differ
//! by more than `TIE` (float noise), and the node's map the palette colour of those classes.
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use weft_engine::annotators::uniformer::{semantic_segmentation, UniFormer, ADE20K_PALETTE};
use weft_engine::load::file::StateDict;
use weft_engine::preprocess::aux::resize_image_with_pad;
use weft_engine::preprocess::cv::Interpolation;

mod common;
use common::{comfy_image, fixture_dir, image_u8, max_abs};

/// A top-1 minus top-2 logit gap below which f32 rounding may flip the argmax.
const TIE: f32 = 1e-3;

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture_dir("uniformer").join("reference.safetensors"),
        &Device::Cpu,
    )
    .expect("fixture loads")
}

fn net() -> UniFormer {
    let path = fixture_dir("uniformer").join("upernet_global_small.pth");
    let sd = StateDict::open(&path).expect("upernet_global_small.pth opens");
    UniFormer::load(&Arc::new(sd), &Device::Cpu).expect("upernet_global_small.pth loads")
}

const CASES: [(&str, u32); 2] = [("astronaut_r64", 64), ("coffee_r64", 64)];

#[test]
fn palette_is_mmseg_ade() {
    let t = fixture();
    let palette = t["palette"].to_vec2::<u8>().unwrap();
    let ours: Vec<Vec<u8>> = ADE20K_PALETTE.iter().map(|c| c.to_vec()).collect();
    assert_eq!(ours, palette);
}

#[test]
fn network_matches_the_pack() {
    let t = fixture();
    let net = net();
    assert_eq!(net.classes(), 150);
    let x = &t["forward.input"];
    let feats = net.features(x).expect("features");
    for (i, f) in feats.iter().enumerate() {
        let d = max_abs(f, &t[&format!("forward.feature{i}")]);
        println!("feature {i}: max abs diff {d:e}");
        assert!(d < 1e-4, "feature {i}: {d}");
    }
    let logits = net.forward(x).expect("forward");
    let d = max_abs(&logits, &t["forward.logits"]);
    println!("logits: max abs diff {d:e}");
    assert!(d < 1e-4, "logits: {d}");
}

#[test]
fn node_matches_the_pack() {
    let t = fixture();
    let net = net();
    for (name, res) in CASES {
        let mut input = image_u8(&t[&format!("{name}.input")]);
        // common_annotator_call's uint8 round trip (`x / 255 * 255`, truncated) moves a few
        // values down by one, as run_aux does below
        for v in &mut input.data {
            *v = (f32::from(*v) / 255.0 * 255.0) as u8;
        }
        // the class map at the padded size
        let padded = resize_image_with_pad("test", &input, res as usize, Interpolation::Cubic)
            .expect("resize");
        let classes = net.segment(&padded.image).expect("segment");
        let want = t[&format!("{name}.classes")]
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap();
        let margin = t[&format!("{name}.margin")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(classes.len(), want.len(), "{name}: class map size");
        let differ: Vec<f32> = (0..want.len())
            .filter(|&p| classes[p] != usize::from(want[p]))
            .map(|p| margin[p])
            .collect();
        let worst = differ.iter().copied().fold(0f32, f32::max);
        println!(
            "{name}: {} of {} classes differ, largest reference margin there {worst:e}",
            differ.len(),
            want.len()
        );
        assert!(
            worst < TIE,
            "{name}: a class differs where the reference is sure"
        );

        // the node's map: the IMAGE tensor through run_aux
        let image = comfy_image(&t[&format!("{name}.input")]);
        let out = semantic_segmentation(&net, &image, res).expect("node");
        let got = image_u8(
            &(out.squeeze(0).unwrap() * 255.0)
                .unwrap()
                .round()
                .unwrap()
                .to_dtype(DType::U8)
                .unwrap(),
        );
        let reference = image_u8(&t[&format!("{name}.out")]);
        assert_eq!((got.height, got.width), (reference.height, reference.width));
        let pw = padded.image.width;
        for y in 0..got.height {
            for x in 0..got.width {
                let (a, b) = (
                    &got.data[(y * got.width + x) * 3..][..3],
                    &reference.data[(y * got.width + x) * 3..][..3],
                );
                let p = y * pw + x;
                assert!(
                    a == b || margin[p] < TIE,
                    "{name}: colour at ({y}, {x}) {a:?} vs {b:?}, margin {}",
                    margin[p]
                );
                assert_eq!(a, &ADE20K_PALETTE[classes[p]][..]);
            }
        }
    }
}

/// The full-size published structure (UniFormer-S, 512-wide head) from `--full DIR`.
#[test]
#[ignore = "needs WEFT_UNIFORMER_FULL=DIR from uniformer_reference.py --full DIR"]
fn full_size_file_matches_the_pack() {
    let dir = std::path::PathBuf::from(
        std::env::var("WEFT_UNIFORMER_FULL").expect("set WEFT_UNIFORMER_FULL"),
    );
    let sd = StateDict::open(&dir.join("upernet_global_small.pth")).expect("opens");
    let net = UniFormer::load(&Arc::new(sd), &Device::Cpu).expect("loads");
    let t = candle_core::safetensors::load(
        dir.join("uniformer_full_reference.safetensors"),
        &Device::Cpu,
    )
    .expect("reference loads");
    let logits = net.forward(&t["input"]).expect("forward");
    let d = max_abs(&logits, &t["logits"]);
    println!("full-size logits: max abs diff {d:e}");
    assert!(d < 1e-3, "full-size logits: {d}");
}
