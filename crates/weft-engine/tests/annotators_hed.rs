//! Parity of the soft-edge annotators (HED, PiDiNet) with `tools/parity/hed_reference.py`: the
//! pack's node calls on narrow random-weight nets saved in the published layouts
//! (`tests/fixtures/annotators/hed/`; versions in `reference.json`: controlnet-aux 0.0.10,
//! torch 2.15, opencv-python-headless 5.1, numpy 2.4). Maps are compared in uint8 levels; the
//! tolerance is 1 level for the soft maps and a few pixels for the scribbles (a one-level
//! difference before the threshold moves a whole pixel), stated per test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use weft_engine::annotators::hed::{self, ControlNetHed, HedOptions};
use weft_engine::annotators::pidinet::{self, PiDiNet, PidiOptions};
use weft_engine::load::file::StateDict;
use weft_engine::preprocess::aux::resize_image_with_pad;
use weft_engine::preprocess::cv::{self, Interpolation};
use weft_engine::preprocess::ImageU8;

mod common;
use common::image_u8;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/annotators/hed")
}

fn fixtures() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu)
        .expect("fixture file")
}

/// The IMAGE the script fed its nodes: `u8 / 255` in f32 (a division, as numpy's), `[1, H, W, 3]`.
fn comfy_image(img: &ImageU8) -> Tensor {
    let data: Vec<f32> = img.data.iter().map(|&v| f32::from(v) / 255.0).collect();
    Tensor::from_vec(data, (1, img.height, img.width, img.channels), &Device::Cpu).unwrap()
}

/// Channel 0 of a node result `[1, H, W, 3]` in uint8 levels (all three channels must agree).
fn levels(out: &Tensor) -> (usize, usize, Vec<u8>) {
    let (_, h, w, c) = out.dims4().unwrap();
    assert_eq!(c, 3);
    let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for px in v.chunks_exact(3) {
        assert!(px[0] == px[1] && px[1] == px[2], "channels differ");
    }
    (
        h,
        w,
        v.iter()
            .step_by(3)
            .map(|&x| (x * 255.0).round() as u8)
            .collect(),
    )
}

/// (max abs difference in levels, count of differing pixels).
fn compare(got: &[u8], want: &[u8]) -> (u8, usize) {
    assert_eq!(got.len(), want.len(), "size mismatch");
    let max = got
        .iter()
        .zip(want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    (max, got.iter().zip(want).filter(|(a, b)| a != b).count())
}

const CASES: [(&str, u32); 2] = [("astronaut", 64), ("coffee", 80)];

fn hed_net() -> ControlNetHed {
    let sd = Arc::new(StateDict::open(&dir().join("ControlNetHED.pth")).unwrap());
    ControlNetHed::load(&sd, &Device::Cpu).unwrap()
}

fn pidi_net() -> PiDiNet {
    let sd = Arc::new(StateDict::open(&dir().join("table5_pidinet.pth")).unwrap());
    PiDiNet::load(&sd, &Device::Cpu).unwrap()
}

/// Max abs difference of two f32 maps.
fn max_diff(got: &[f32], want: &Tensor) -> f32 {
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Checks an intermediate f32 map (`net`'s on the padded input) against `key.<case>` within
/// `tolerance`.
fn check_map(key: &str, tolerance: f32, net: impl Fn(&ImageU8) -> (usize, usize, Vec<f32>)) {
    let f = fixtures();
    for (name, res) in CASES {
        let img = image_u8(&f[&format!("in.{name}")]);
        let padded =
            resize_image_with_pad("test", &img, res as usize, Interpolation::Cubic).unwrap();
        let (h, w, got) = net(&padded.image);
        let want = &f[&format!("{key}.{name}.r{res}")];
        assert_eq!(want.dims(), [h, w]);
        let d = max_diff(&got, want);
        println!("{key} {name}: max diff {d:e}");
        assert!(d < tolerance, "{key} {name}: {d}");
    }
}

#[test]
fn hed_side_outputs_match() {
    let net = hed_net();
    check_map("hed_mean", 1e-4, |img| net.edge_logits(img).unwrap());
}

/// The published `ControlNetHED.pth` is stored in f16: the same weights in half load, widened to
/// f32, and give nearly the same map (the difference is the weights' rounding).
#[test]
fn hed_loads_f16_weights() {
    let sd = Arc::new(StateDict::open(&dir().join("ControlNetHED_f16.pth")).unwrap());
    let net = ControlNetHed::load(&sd, &Device::Cpu).unwrap();
    check_map("hed_mean", 0.05, |img| net.edge_logits(img).unwrap());
}

#[test]
fn pidinet_map_matches() {
    let net = pidi_net();
    check_map("pidi_sigmoid", 1e-4, |img| net.edge_map(img).unwrap());
}

/// Runs each `(fixture name, safe, scribble)` of `runs` through `node` on every case and checks
/// it with [`report`].
fn check_nodes(runs: [(&str, bool, bool); 4], node: impl Fn(&Tensor, bool, bool, u32) -> Tensor) {
    let f = fixtures();
    for (name, res) in CASES {
        let x = comfy_image(&image_u8(&f[&format!("in.{name}")]));
        for (run, safe, scribble) in runs {
            report(&f, run, name, res, &node(&x, safe, scribble, res), 4);
        }
    }
}

#[test]
fn hed_nodes_match() {
    let net = hed_net();
    let runs = [
        ("hed", false, false),
        ("hed_safe", true, false),
        ("fake_scribble_safe", true, true),
        ("fake_scribble", false, true),
    ];
    check_nodes(runs, |x, safe, scribble, resolution| {
        hed::hed(
            &net,
            x,
            &HedOptions {
                safe,
                scribble,
                resolution,
            },
        )
        .unwrap()
    });
}

#[test]
fn pidinet_nodes_match() {
    let net = pidi_net();
    let runs = [
        ("pidi", false, false),
        ("pidi_safe", true, false),
        ("pidi_scribble_safe", true, true),
        ("pidi_scribble", false, true),
    ];
    check_nodes(runs, |x, safe, scribble, resolution| {
        pidinet::pidinet(
            &net,
            x,
            &PidiOptions {
                safe,
                scribble,
                resolution,
            },
        )
        .unwrap()
    });
}

/// Compares one node result with its fixture: soft maps within 1 level, scribbles (0/255)
/// differing in at most `scribble_pixels` pixels.
fn report(
    f: &HashMap<String, Tensor>,
    run: &str,
    name: &str,
    res: u32,
    out: &Tensor,
    scribble_pixels: usize,
) {
    let key = format!("{run}.{name}.r{res}");
    let want = image_u8(&f[&key]);
    let (h, w, got) = levels(out);
    assert_eq!((h, w), (want.height, want.width), "{key}");
    let (max, count) = compare(&got, &want.data);
    println!(
        "{key}: max diff {max} levels, {count} of {} pixels differ",
        got.len()
    );
    if run.contains("scribble") {
        assert!(count <= scribble_pixels, "{key}: {count} pixels differ");
    } else {
        assert!(max <= 1, "{key}: {max} levels");
    }
}

#[test]
fn scribble_steps_match_opencv() {
    let f = fixtures();
    let sparse = image_u8(&f["cv.sparse"]);
    let blur = cv::gaussian_blur_u8(&sparse, 3.0);
    assert_eq!(
        blur.data,
        image_u8(&f["cv.blur3_u8.sparse"]).data,
        "uint8 blur"
    );
    let hed_map = image_u8(&f["hed.coffee.r80"]);
    let (max, count) = compare(&hed::nms(&hed_map).data, &image_u8(&f["cv.nms.hed"]).data);
    println!("nms: {count} pixels differ");
    assert_eq!((max, count), (0, 0), "nms");
}

/// Timing of the full-size nets at 512x512 (files from `hed_reference.py --full DIR`, run with
/// `WEFT_HED_FULL=DIR cargo test --release -p weft-engine --test annotators_hed -- --ignored`).
#[test]
#[ignore]
fn full_size_timing() {
    let Ok(full) = std::env::var("WEFT_HED_FULL") else {
        return;
    };
    let full = PathBuf::from(full);
    let open = |name: &str| Arc::new(StateDict::open(&full.join(name)).unwrap());
    let hed_net = ControlNetHed::load(&open("ControlNetHED.pth"), &Device::Cpu).unwrap();
    let pidi_net = PiDiNet::load(&open("table5_pidinet.pth"), &Device::Cpu).unwrap();
    let x = (Tensor::rand(0f32, 1f32, (1, 512, 512, 3), &Device::Cpu).unwrap()).clone();
    let time = |label: &str, f: &dyn Fn() -> Tensor| {
        f();
        let mut t: Vec<f64> = (0..3)
            .map(|_| {
                let start = std::time::Instant::now();
                f();
                start.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        println!("{label}: median {:.0} ms", t[1] * 1000.0);
    };
    let opts = |safe, scribble| HedOptions {
        safe,
        scribble,
        resolution: 512,
    };
    time("HEDPreprocessor", &|| {
        hed::hed(&hed_net, &x, &opts(false, false)).unwrap()
    });
    time("FakeScribblePreprocessor", &|| {
        hed::hed(&hed_net, &x, &opts(true, true)).unwrap()
    });
    let popts = |safe, scribble| PidiOptions {
        safe,
        scribble,
        resolution: 512,
    };
    time("PiDiNetPreprocessor", &|| {
        pidinet::pidinet(&pidi_net, &x, &popts(false, false)).unwrap()
    });
    time("Scribble_PiDiNet_Preprocessor", &|| {
        pidinet::pidinet(&pidi_net, &x, &popts(true, true)).unwrap()
    });
}
