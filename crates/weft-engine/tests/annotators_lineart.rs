//! Parity of the line-art annotators with comfyui_controlnet_aux (fixtures written by
//! tools/parity/lineart_reference.py: narrowed random-weight sk_model.pth, sk_model2.pth and
//! netG.pth in the published layouts, and the pack's node results). Tolerance: 1/255 on the
//! node's maps; 1e-4 on the raw network outputs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use weft_engine::annotators::lineart::{lineart, lineart_anime, AnimeUnet, LineartGenerator};
use weft_engine::load::file::StateDict;
use weft_engine::preprocess::aux::resize_image_with_pad;
use weft_engine::preprocess::cv::{self, Interpolation};
use weft_engine::preprocess::ImageU8;

mod common;
use common::max_abs;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/annotators/lineart")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn open(name: &str) -> Arc<StateDict> {
    Arc::new(StateDict::open(&dir().join(name)).unwrap())
}

/// `[1, H, W, 3]` of `u8 / 255`, as the reference's `to_comfy`.
fn comfy_image(input: &Tensor) -> Tensor {
    (input.to_dtype(DType::F32).unwrap() / 255.0)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// The image the aux call sees: `uint8(x * 255)` truncated, from the comfy image.
fn aux_u8(input: &Tensor) -> ImageU8 {
    let (h, w, c) = input.dims3().unwrap();
    let v = input.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    ImageU8 {
        height: h,
        width: w,
        channels: c,
        data: v
            .iter()
            .map(|&b| (b as f32 / 255.0 * 255.0) as u8)
            .collect(),
    }
}

/// Largest difference in 1/255 levels between a node result and the reference's uint8 map.
fn levels(out: &Tensor, want: &Tensor) -> f32 {
    let want = want.to_dtype(DType::F32).unwrap().unsqueeze(0).unwrap();
    assert_eq!(out.dims(), want.dims());
    max_abs(&(out * 255.0).unwrap(), &want)
}

fn resolution(r: &HashMap<String, Tensor>, case: &str) -> u32 {
    r[&format!("{case}/resolution")].to_vec1::<i64>().unwrap()[0] as u32
}

/// The image the network gets, computed here from the case's input, and the reference's.
fn feeds(case: &str, r: &HashMap<String, Tensor>, anime: bool) -> (ImageU8, ImageU8) {
    let img = aux_u8(&r[&format!("{case}/input")]);
    let p = resize_image_with_pad(
        "test",
        &img,
        resolution(r, case) as usize,
        Interpolation::Cubic,
    )
    .unwrap();
    let feed = if anime {
        let (h, w) = (p.image.height, p.image.width);
        cv::resize(
            &p.image,
            w.next_multiple_of(256),
            h.next_multiple_of(256),
            Interpolation::Cubic,
        )
    } else {
        p.image
    };
    (feed, aux_u8(&r[&format!("{case}/feed")]))
}

/// The network's output on the reference's feed, against the reference's.
fn net_diff(
    feed: &ImageU8,
    want: &Tensor,
    anime: bool,
    forward: impl Fn(&Tensor) -> Tensor,
) -> f32 {
    let x = weft_engine::annotators::image_tensor("test", feed, &Device::Cpu).unwrap();
    let x = if anime {
        x.affine(1.0 / 127.5, -1.0).unwrap()
    } else {
        (x / 255.0).unwrap()
    };
    max_abs(&forward(&x).squeeze(0).unwrap().squeeze(0).unwrap(), want)
}

fn feed_diff(ours: &ImageU8, want: &ImageU8) -> u8 {
    assert_eq!((ours.height, ours.width), (want.height, want.width));
    ours.data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0)
}

/// One case: the network's input computed here against the reference's (within one level: the
/// INTER_CUBIC taps), the net on the reference's input (1e-4), the node's map (1/255).
fn check_case(
    r: &HashMap<String, Tensor>,
    case: &str,
    anime: bool,
    net: impl Fn(&Tensor) -> Tensor,
    node: impl Fn(&Tensor, u32) -> Tensor,
) {
    let (ours, want) = feeds(case, r, anime);
    let d_feed = feed_diff(&ours, &want);
    let d_net = net_diff(&want, &r[&format!("{case}/net")], anime, net);
    let out = node(
        &comfy_image(&r[&format!("{case}/input")]),
        resolution(r, case),
    );
    let d = levels(&out, &r[&format!("{case}/output")]);
    println!("{case}: feed max diff {d_feed}, net max diff {d_net:.2e}, map max diff {d} levels");
    assert!(
        d_feed <= 1,
        "{case}: the network's input differs by {d_feed}"
    );
    assert!(d_net < 1e-4, "{case}: net differs by {d_net}");
    assert!(d <= 1.0, "{case}: map differs by {d} levels");
}

#[test]
fn lineart_matches_the_pack() {
    let r = reference();
    let fine = LineartGenerator::load(&open("sk_model.pth"), &Device::Cpu).unwrap();
    let coarse = LineartGenerator::load(&open("sk_model2.pth"), &Device::Cpu).unwrap();
    for (case, model) in [
        ("lineart/astronaut", &fine),
        ("lineart/coffee", &fine),
        ("lineart_coarse/coffee", &coarse),
    ] {
        check_case(
            &r,
            case,
            false,
            |x| model.forward(x).unwrap(),
            |image, res| lineart(image, model, res).unwrap(),
        );
    }
}

#[test]
fn anime_lineart_matches_the_pack() {
    let r = reference();
    let model = AnimeUnet::load(&open("netG.pth"), &Device::Cpu).unwrap();
    assert_eq!(model.depth(), 8);
    for case in ["anime/astronaut", "anime/coffee"] {
        check_case(
            &r,
            case,
            true,
            |x| model.forward(x).unwrap(),
            |image, res| lineart_anime(image, &model, res).unwrap(),
        );
    }
}

#[test]
fn a_file_of_the_other_kind_is_refused() {
    let err = LineartGenerator::load(&open("netG.pth"), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("netG.pth"), "{err}");
    let err = AnimeUnet::load(&open("sk_model.pth"), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("sk_model.pth"), "{err}");
}

/// The full-size files of `lineart_reference.py --full DIR` (published sizes: 64 channels, 3
/// residual blocks, 8 U-Net levels) load and run; set `WEFT_LINEART_FULL=DIR`.
#[test]
#[ignore = "needs WEFT_LINEART_FULL, full-size files written by the reference script"]
fn full_size_files_load_and_run() {
    let dir = PathBuf::from(std::env::var("WEFT_LINEART_FULL").expect("WEFT_LINEART_FULL"));
    let image = Tensor::rand(0f32, 1f32, (1, 200, 300, 3), &Device::Cpu).unwrap();
    for name in ["sk_model.pth", "sk_model2.pth"] {
        let sd = Arc::new(StateDict::open(&dir.join(name)).unwrap());
        let model = LineartGenerator::load(&sd, &Device::Cpu).unwrap();
        let out = lineart(&image, &model, 256).unwrap();
        assert_eq!(out.dims(), &[1, 256, 384, 3]);
    }
    let sd = Arc::new(StateDict::open(&dir.join("netG.pth")).unwrap());
    let model = AnimeUnet::load(&sd, &Device::Cpu).unwrap();
    assert_eq!(model.depth(), 8);
    let out = lineart_anime(&image, &model, 256).unwrap();
    assert_eq!(out.dims(), &[1, 256, 384, 3]);
}
