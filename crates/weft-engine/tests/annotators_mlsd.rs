//! M-LSD against `tools/parity/mlsd_reference.py` (fixtures in `tests/fixtures/annotators/mlsd/`:
//! a narrow random-weight `mlsd_large_512_fp32.pth` in the published key layout, and what
//! comfyui_controlnet_aux's node computed with it under torch 2.15, controlnet-aux 0.0.10,
//! opencv-python 5.1.0, numpy 2.4).
//!
//! Tolerances: the network map (values up to ~50) within 2e-3: f32 with other summation orders
//! and BatchNorm folded (PyTorch's own f32 result is 4e-4 from its f64 one on this fixture); the
//! segment end points within 4e-3 px (twice the map's displacements). The line map is binary, so
//! it must be identical (an end point one pixel off would be 255 levels): compared exactly, i.e.
//! within 0/255.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use weft_engine::annotators::mlsd::{self, Mlsd, MlsdOptions};
use weft_engine::load::file::StateDict;
use weft_engine::preprocess::{cv_draw, ImageU8};

mod common;
use common::image_u8;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/annotators/mlsd")
}

fn fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(name), &Device::Cpu).expect("fixture file")
}

fn net() -> Mlsd {
    let sd = Arc::new(StateDict::open(&dir().join("mlsd_large_512_fp32.pth")).expect("weights"));
    Mlsd::load(&sd, &Device::Cpu).expect("M-LSD loads")
}

struct Case {
    name: &'static str,
    image: &'static str,
    score_threshold: f64,
    dist_threshold: f64,
    resolution: u32,
}

/// The script's CASES.
const CASES: [Case; 3] = [
    Case {
        name: "astronaut_default",
        image: "astronaut",
        score_threshold: 0.1,
        dist_threshold: 0.1,
        resolution: 128,
    },
    Case {
        name: "astronaut_strict",
        image: "astronaut",
        score_threshold: 0.5,
        dist_threshold: 12.0,
        resolution: 128,
    },
    Case {
        name: "coffee_default",
        image: "coffee",
        score_threshold: 0.1,
        dist_threshold: 0.1,
        resolution: 96,
    },
];

/// The IMAGE tensor the script fed the node: `u8 / 255` in f32, `[1, H, W, 3]`.
fn comfy_image(img: &ImageU8) -> Tensor {
    let data: Vec<f32> = img.data.iter().map(|&v| f32::from(v) / 255.0).collect();
    Tensor::from_vec(data, (1, img.height, img.width, img.channels), &Device::Cpu).unwrap()
}

#[test]
fn mlsd_matches_the_aux_node() {
    let net = net();
    let refs = fixture("reference.safetensors");
    for case in &CASES {
        let input = image_u8(&refs[&format!("input_{}", case.image)]);
        let opts = MlsdOptions {
            score_threshold: case.score_threshold,
            dist_threshold: case.dist_threshold,
            resolution: case.resolution,
        };
        let det = mlsd::detect(&net, &input, &opts).unwrap();
        let padded = image_u8(&refs[&format!("{}_padded", case.name)]);
        assert_eq!(det.padded, padded, "{}: padded input", case.name);

        let tp = refs[&format!("{}_tp", case.name)]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let tp_diff = det
            .tp
            .iter()
            .zip(&tp)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert_eq!(det.tp.len(), tp.len());
        let want_lines = refs[&format!("{}_lines", case.name)]
            .to_vec2::<f64>()
            .unwrap();
        assert_eq!(
            det.segments.len(),
            want_lines.len(),
            "{}: segment count",
            case.name
        );
        let seg_diff = det
            .segments
            .iter()
            .zip(&want_lines)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0f64, f64::max);

        let want = image_u8(&refs[&format!("{}_map", case.name)]);
        let out = mlsd::mlsd(&net, &comfy_image(&input), &opts).unwrap();
        assert_eq!(out.dims(), &[1, want.height, want.width, 3]);
        let got: Vec<u8> = out
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect();
        let differing = got.iter().zip(&want.data).filter(|(a, b)| a != b).count();
        println!(
            "{}: network map max |diff| {tp_diff:.2e}, {} segments, end points max |diff| \
             {seg_diff:.2e} px, line map: {differing} of {} values differ",
            case.name,
            want_lines.len(),
            got.len()
        );
        assert!(
            tp_diff < 2e-3,
            "{}: network map differs by {tp_diff}",
            case.name
        );
        assert!(
            seg_diff < 4e-3,
            "{}: segments differ by {seg_diff}",
            case.name
        );
        assert_eq!(differing, 0, "{}: line map", case.name);
    }
}

#[test]
fn lines_are_drawn_as_opencv_draws_them() {
    let refs = fixture("lines.safetensors");
    let points = refs["points"].to_vec2::<i32>().unwrap();
    let bits = refs["canvas_bits"].to_vec1::<u8>().unwrap();
    let (h, w) = (37, 53);
    let mut wrong = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let mut canvas = ImageU8::zeros(h, w, 1);
        cv_draw::line(&mut canvas, (p[0], p[1]), (p[2], p[3]), 255);
        let want = (0..h * w).map(|k| {
            let bit = i * h * w + k;
            if bits[bit / 8] >> (7 - bit % 8) & 1 == 1 {
                255
            } else {
                0
            }
        });
        if !canvas.data.iter().copied().eq(want) {
            wrong.push(p.clone());
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} lines differ: {:?}",
        wrong.len(),
        points.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn too_small_a_map_draws_nothing() {
    // torch.topk(200) of a map with fewer centres raises inside the detector's `try`.
    assert!(mlsd::decode(&[0.0; 9 * 10 * 10], 10, 10, 0.1, 0.1).is_empty());
}
