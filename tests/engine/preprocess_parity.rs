//! Parity against `scripts/preprocess_reference.py` (fixtures in `tests/fixtures/preprocess_ref.safetensors`,
//! versions in `preprocess_ref.json`: torch 2.15, kornia 0.9.0, opencv-python-headless 4.14, numpy 2.4).
//! Each test names its reference function and tolerance; figures are printed with `--nocapture`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use weft::engine::preprocess::cv::{self, Interpolation};
use weft::engine::preprocess::shuffle::NumpyPcg64;
use weft::engine::preprocess::{self as pp, ImageU8};

fn fixtures() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preprocess/preprocess_ref.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).expect("fixture file")
}

fn u8_of(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

fn image_u8(t: &Tensor) -> ImageU8 {
    let d = t.dims();
    let c = if d.len() == 3 { d[2] } else { 1 };
    ImageU8 {
        height: d[0],
        width: d[1],
        channels: c,
        data: u8_of(t),
    }
}

/// The IMAGE tensor the script fed its nodes: `u8 / 255` as f32, `[1, H, W, 3]`.
fn comfy_image(t: &Tensor) -> Tensor {
    (t.to_dtype(DType::F32).unwrap() / 255.0)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// (identical %, max abs difference in uint8 levels, differing count, total).
fn agreement(got: &[u8], want: &[u8]) -> (f64, u8, usize, usize) {
    assert_eq!(got.len(), want.len(), "size mismatch");
    let diff = got.iter().zip(want).filter(|(a, b)| a != b).count();
    let max = got
        .iter()
        .zip(want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    (
        100.0 * (1.0 - diff as f64 / got.len() as f64),
        max,
        diff,
        got.len(),
    )
}

/// A node's output `[1, H, W, 3]` back to uint8 levels; a grey fixture (2-D) is compared with channel 0
/// after checking the three channels agree.
fn output_levels(out: &Tensor, want: &Tensor) -> Vec<u8> {
    let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let lv: Vec<u8> = v.iter().map(|x| (x * 255.0).round() as u8).collect();
    let d = out.dims();
    assert_eq!(d[3], 3);
    if want.dims().len() == 2 {
        assert_eq!(&d[1..3], want.dims(), "shape");
        let g: Vec<u8> = lv.chunks_exact(3).map(|p| p[0]).collect();
        assert!(
            lv.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]),
            "grey output expected"
        );
        g
    } else {
        assert_eq!(&d[1..], want.dims(), "shape");
        lv
    }
}

fn check(name: &str, got: &[u8], want: &[u8], min_pct: f64, max_abs: u8) {
    let (pct, max, diff, n) = agreement(got, want);
    println!("{name:40} identical {pct:8.4}% ({diff}/{n} differ), max abs diff {max}");
    assert!(
        pct >= min_pct && max <= max_abs,
        "{name}: {pct}% identical, max abs {max}"
    );
}

/// ComfyUI `Canny` vs kornia.filters.canny (script: `comfy_canny`), 3 images x 2 threshold pairs.
/// Tolerance: >= 99.9% identical pixels (f32 summation order and libm atan2/exp differ from torch by ulps,
/// which can flip a pixel sitting exactly on a threshold).
#[test]
fn comfy_canny_matches_kornia() {
    let f = fixtures();
    let mut total = (0usize, 0usize);
    for name in ["astronaut", "camera", "coffee"] {
        let input = comfy_image(&f[&format!("in.{name}")]);
        for (lo, hi) in [(0.4f32, 0.8f32), (0.15, 0.45)] {
            let want = &f[&format!("canny.{name}.{lo}_{hi}")];
            let out = pp::canny(
                &input,
                &pp::CannyOptions {
                    low_threshold: lo,
                    high_threshold: hi,
                },
            )
            .unwrap();
            let got = output_levels(&out, want);
            let w8: Vec<u8> = u8_of(want).iter().map(|&v| v * 255).collect();
            let (_, _, d, n) = agreement(&got, &w8);
            total.0 += d;
            total.1 += n;
            check(&format!("canny {name} {lo}/{hi}"), &got, &w8, 99.9, 255);
        }
    }
    println!("canny overall: {} of {} pixels differ", total.0, total.1);
}

fn aux_case(
    f: &HashMap<String, Tensor>,
    key: &str,
    image: &str,
    run: impl Fn(&Tensor) -> Tensor,
    min_pct: f64,
    max_abs: u8,
) {
    let input = comfy_image(&f[&format!("in.{image}")]);
    let want = &f[key];
    let out = run(&input);
    let got = output_levels(&out, want);
    check(key, &got, &u8_of(want), min_pct, max_abs);
}

/// `CannyEdgePreprocessor` vs `canny_aux` (cv2.Canny after resize_image_with_pad). Exact: integer maths;
/// the r128 coffee case goes through the INTER_CUBIC enlargement (see the resize test for its agreement).
#[test]
fn aux_canny_matches_cv2() {
    let f = fixtures();
    let o = |lo: f64, hi: f64, r: u32| pp::CannyEdgeOptions {
        low_threshold: lo,
        high_threshold: hi,
        resolution: r,
        ..Default::default()
    };
    aux_case(
        &f,
        "aux_canny.astronaut.r128",
        "astronaut",
        |i| pp::canny_edge(i, &o(100.0, 200.0, 128)).unwrap(),
        100.0,
        0,
    );
    aux_case(
        &f,
        "aux_canny.coffee.r96",
        "coffee",
        |i| pp::canny_edge(i, &o(50.0, 150.0, 96)).unwrap(),
        100.0,
        0,
    );
    aux_case(
        &f,
        "aux_canny.coffee.r128",
        "coffee",
        |i| pp::canny_edge(i, &o(100.0, 200.0, 128)).unwrap(),
        99.9,
        255,
    );
}

/// `Scribble_XDoG_Preprocessor` vs `xdog_aux` (two cv2.GaussianBlur on f32, uint8 threshold).
#[test]
fn xdog_matches_reference() {
    let f = fixtures();
    let o = |t: u32, r: u32| pp::ScribbleXdogOptions {
        threshold: t,
        resolution: r,
    };
    aux_case(
        &f,
        "xdog.astronaut.r128",
        "astronaut",
        |i| pp::scribble_xdog(i, &o(32, 128)).unwrap(),
        99.9,
        255,
    );
    aux_case(
        &f,
        "xdog.coffee.r96",
        "coffee",
        |i| pp::scribble_xdog(i, &o(20, 96)).unwrap(),
        99.9,
        255,
    );
}

/// `LineartStandardPreprocessor` vs `lineart_standard_aux` (cv2.GaussianBlur sigma 6, median scaling).
#[test]
fn lineart_standard_matches_reference() {
    let f = fixtures();
    let o = |r: u32| pp::LineartStandardOptions {
        resolution: r,
        ..Default::default()
    };
    aux_case(
        &f,
        "lineart_std.astronaut.r128",
        "astronaut",
        |i| pp::lineart_standard(i, &o(128)).unwrap(),
        99.9,
        1,
    );
    aux_case(
        &f,
        "lineart_std.coffee.r96",
        "coffee",
        |i| pp::lineart_standard(i, &o(96)).unwrap(),
        99.9,
        1,
    );
}

/// `BinaryPreprocessor` vs `binary_aux` (cv2 grey, fixed and Otsu thresholds). Exact.
#[test]
fn binary_matches_cv2() {
    let f = fixtures();
    let o = |t: u32, r: u32| pp::BinaryOptions {
        bin_threshold: t,
        resolution: r,
    };
    aux_case(
        &f,
        "binary.astronaut.t100",
        "astronaut",
        |i| pp::binary(i, &o(100, 128)).unwrap(),
        100.0,
        0,
    );
    aux_case(
        &f,
        "binary.camera.otsu",
        "camera",
        |i| pp::binary(i, &o(0, 128)).unwrap(),
        100.0,
        0,
    );
    aux_case(
        &f,
        "binary.coffee.r64",
        "coffee",
        |i| pp::binary(i, &o(0, 64)).unwrap(),
        100.0,
        0,
    );
}

/// `ColorPreprocessor` vs `color_aux` (INTER_AREA, INTER_CUBIC to 1/64, INTER_NEAREST back).
#[test]
fn color_matches_cv2() {
    let f = fixtures();
    aux_case(
        &f,
        "color.astronaut.r128",
        "astronaut",
        |i| pp::color(i, &pp::ColorOptions { resolution: 128 }).unwrap(),
        100.0,
        0,
    );
    aux_case(
        &f,
        "color.coffee.r96",
        "coffee",
        |i| pp::color(i, &pp::ColorOptions { resolution: 96 }).unwrap(),
        100.0,
        0,
    );
}

/// `ShufflePreprocessor` vs `shuffle_aux` (numpy default_rng(seed), cv2 cubic noise, cv2.remap). Exact.
#[test]
fn shuffle_matches_reference() {
    let f = fixtures();
    let o = |s: u64, r: u32| pp::ShuffleOptions {
        seed: s,
        resolution: r,
    };
    aux_case(
        &f,
        "shuffle.astronaut.s42",
        "astronaut",
        |i| pp::shuffle(i, &o(42, 128)).unwrap(),
        100.0,
        0,
    );
    aux_case(
        &f,
        "shuffle.coffee.s7",
        "coffee",
        |i| pp::shuffle(i, &o(7, 96)).unwrap(),
        100.0,
        0,
    );
}

/// `TilePreprocessor` vs `tile_aux` (INTER_AREA down, cv2.pyrUp). Exact.
#[test]
fn tile_matches_cv2() {
    let f = fixtures();
    aux_case(
        &f,
        "tile.astronaut.p3",
        "astronaut",
        |i| pp::tile(i, &pp::TileOptions { pyr_up_iters: 3 }).unwrap(),
        100.0,
        0,
    );
    aux_case(
        &f,
        "tile.coffee.p2",
        "coffee",
        |i| pp::tile(i, &pp::TileOptions { pyr_up_iters: 2 }).unwrap(),
        100.0,
        0,
    );
}

/// Normal from depth vs `normal_from_depth` (MiDaS annotator formula, cv2.Sobel f32).
#[test]
fn normal_matches_reference() {
    let f = fixtures();
    let o = |bg: f32, r: u32| pp::NormalFromDepthOptions {
        bg_threshold: bg,
        resolution: r,
        ..Default::default()
    };
    aux_case(
        &f,
        "normal.camera.r128",
        "camera",
        |i| pp::normal_from_depth(i, &o(0.1, 128)).unwrap(),
        99.9,
        1,
    );
    aux_case(
        &f,
        "normal.coffee.r96",
        "coffee",
        |i| pp::normal_from_depth(i, &o(0.4, 96)).unwrap(),
        99.9,
        1,
    );
}

/// cv2 primitives on uint8 (script: `cv2.resize`, `cv2.pyrUp`, `cv2.cvtColor`, Otsu, GaussianBlur).
#[test]
fn cv_primitives_match_opencv() {
    let f = fixtures();
    let a = image_u8(&f["in.astronaut"]);
    let c = image_u8(&f["in.coffee"]);
    let cases: [(&str, &ImageU8, usize, usize, Interpolation, f64, u8); 7] = [
        (
            "resize.area.astronaut.96x80",
            &a,
            80,
            96,
            Interpolation::Area,
            100.0,
            0,
        ),
        (
            "resize.area.astronaut.64x64",
            &a,
            64,
            64,
            Interpolation::Area,
            100.0,
            0,
        ),
        (
            "resize.area.coffee.32x48",
            &c,
            48,
            32,
            Interpolation::Area,
            100.0,
            0,
        ),
        (
            "resize.cubic.coffee.150x200",
            &c,
            200,
            150,
            Interpolation::Cubic,
            99.99,
            1,
        ),
        (
            "resize.cubic.astronaut.90x70",
            &a,
            70,
            90,
            Interpolation::Cubic,
            99.99,
            1,
        ),
        (
            "resize.nearest.coffee.150x200",
            &c,
            200,
            150,
            Interpolation::Nearest,
            100.0,
            0,
        ),
        (
            "resize.linear.coffee.150x200",
            &c,
            200,
            150,
            Interpolation::Linear,
            99.5,
            1,
        ),
    ];
    for (key, img, w, h, interp, pct, max) in cases {
        let got = cv::resize(img, w, h, interp);
        check(key, &got.data, &u8_of(&f[key]), pct, max);
    }
    check(
        "pyrup.coffee",
        &cv::pyr_up(&c).data,
        &u8_of(&f["pyrup.coffee"]),
        100.0,
        0,
    );
    let gray = cv::rgb_to_gray(&c);
    check(
        "gray.coffee",
        &gray.data,
        &u8_of(&f["gray.coffee"]),
        100.0,
        0,
    );
    let otsu: Vec<f32> = f["otsu.coffee"].to_vec1().unwrap();
    assert_eq!(cv::otsu_threshold(&gray) as f32, otsu[0]);
    let x: Vec<f32> = c.data.iter().map(|&v| v as f32).collect();
    let blur = cv::gaussian_blur_f32(&x, c.height, c.width, 3, 5.0);
    let want: Vec<f32> = f["blur5.coffee.f32"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let max = blur
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "{:40} max abs diff {max:e} (0..255 scale)",
        "gaussian_blur sigma 5 f32"
    );
    assert!(max < 1e-3, "blur max abs {max}");
}

/// numpy `default_rng(42).uniform(0, 1, (2, 3))` bit for bit.
#[test]
fn numpy_rng_matches() {
    let f = fixtures();
    let want: Vec<f64> = f["rng.default_rng42.f64"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut r = NumpyPcg64::new(42);
    let got: Vec<f64> = (0..6).map(|_| r.next_f64()).collect();
    assert_eq!(got, want);
}

/// Batches: every image of a batch is processed on its own, outputs keep `[B, H', W', 3]`.
#[test]
fn batches_are_processed_per_image() {
    let f = fixtures();
    let one = comfy_image(&f["in.coffee"]);
    let two = Tensor::cat(&[&one, &one], 0).unwrap();
    let outs = [
        pp::canny(&two, &pp::CannyOptions::default()).unwrap(),
        pp::canny_edge(
            &two,
            &pp::CannyEdgeOptions {
                resolution: 64,
                ..Default::default()
            },
        )
        .unwrap(),
        pp::tile(&two, &pp::TileOptions::default()).unwrap(),
        pp::color(&two, &pp::ColorOptions { resolution: 64 }).unwrap(),
    ];
    for out in outs {
        assert_eq!(out.dims()[0], 2);
        assert_eq!(out.dims()[3], 3);
        let a: Vec<f32> = out
            .get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = out
            .get(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
    }
    // resolution 64 on a 96x128 image: short side 64, long side round(128 * 2/3) = 85.
    let out = pp::binary(
        &two,
        &pp::BinaryOptions {
            bin_threshold: 0,
            resolution: 64,
        },
    )
    .unwrap();
    assert_eq!(out.dims(), &[2, 64, 85, 3]);
}

/// Bad inputs are errors, not panics.
#[test]
fn bad_inputs_are_errors() {
    let img = Tensor::zeros((1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(pp::canny(&img, &pp::CannyOptions::default()).is_err());
    let tiny = Tensor::zeros((1, 8, 8, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(pp::color(&tiny, &pp::ColorOptions { resolution: 64 }).is_ok());
    assert!(pp::tile(&tiny, &pp::TileOptions::default()).is_err());
    assert!(pp::tile(&tiny, &pp::TileOptions { pyr_up_iters: 0 }).is_err());
    assert!(pp::binary(
        &tiny,
        &pp::BinaryOptions {
            bin_threshold: 300,
            resolution: 64
        }
    )
    .is_err());
}
