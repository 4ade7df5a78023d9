//! Parity of the NormalBae annotator with controlnet_aux 0.0.10's NNET and the ComfyUI pack's
//! `BAE-NormalMapPreprocessor` call, against `tools/parity/normalbae_reference.py`
//! (`tests/fixtures/annotators/normalbae/`: a narrowed tf_efficientnet_b5_ap NNET saved as
//! `scannet.pt` in the published layout, and three images at resolutions 64, 80 and 96, one
//! square, one 96x128 and one upscaled 48x64).
//! Tolerances: the padded network input exactly; the network's unit normals within 5e-4 of torch's f32 result, and
//! within 3x torch's own f32 distance from the same net run in f64 (float32 rounding, amplified by
//! the normalisation where xyz is short); the
//! node's uint8 map within 1 level (1/255).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use weft_engine::annotators::normalbae::{normal_map, NormalBae};
use weft_engine::load::file::StateDict;
use weft_engine::preprocess::aux::resize_image_with_pad;
use weft_engine::preprocess::cv::Interpolation;

mod common;
use common::{comfy_image, image_u8, max_abs};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/annotators/normalbae")
}

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu)
        .expect("fixture loads")
}

fn net() -> NormalBae {
    let sd = StateDict::open(&dir().join("scannet.pt")).expect("scannet.pt opens");
    NormalBae::load(&Arc::new(sd), &Device::Cpu).expect("scannet.pt loads")
}

/// `[H, W, 3]` uint8 -> `[1, 3, H, W]`, `/255` and ImageNet-normalised as the detector does.
fn normalised(u8_hwc: &Tensor) -> Tensor {
    let x = u8_hwc
        .to_dtype(DType::F32)
        .unwrap()
        .permute((2, 0, 1))
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let stat = |v: [f32; 3]| {
        Tensor::new(&v, &Device::Cpu)
            .unwrap()
            .reshape((1, 3, 1, 1))
            .unwrap()
    };
    (x / 255.0)
        .unwrap()
        .broadcast_sub(&stat([0.485, 0.456, 0.406]))
        .unwrap()
        .broadcast_div(&stat([0.229, 0.224, 0.225]))
        .unwrap()
}

const CASES: [(&str, u32); 3] = [
    ("astronaut_r64", 64),
    ("coffee_r80", 80),
    ("chelsea_r96", 96),
];

#[test]
fn network_matches_nnet() {
    let t = fixture();
    let net = net();
    for (name, res) in CASES {
        let input = image_u8(&t[&format!("{name}.input")]);
        let padded = resize_image_with_pad("test", &input, res as usize, Interpolation::Cubic)
            .expect("resize");
        assert_eq!(
            padded.image,
            image_u8(&t[&format!("{name}.padded")]),
            "{name}: padded input"
        );
        let x = normalised(&t[&format!("{name}.padded")]);
        let normal = net.forward(&x).expect("forward").squeeze(0).unwrap();
        let torch32 = &t[&format!("{name}.normal")];
        let exact = &t[&format!("{name}.normal_f64")];
        let diff = max_abs(&normal, torch32);
        let ours = max_abs(&normal, exact);
        let theirs = max_abs(torch32, exact);
        println!(
            "{name}: normals max abs diff {diff:.2e} to torch f32; to f64: ours {ours:.2e}, torch \
             f32 {theirs:.2e}"
        );
        assert!(diff < 5e-4, "{name}: normals differ by {diff}");
        assert!(
            ours < 3.0 * theirs,
            "{name}: {ours} from f64, torch f32 {theirs}"
        );
    }
}

#[test]
fn node_map_matches_pack() {
    let t = fixture();
    let net = net();
    for (name, res) in CASES {
        let input = comfy_image(&t[&format!("{name}.input")]);
        let out = normal_map(&net, &input, res).expect("normal map");
        let levels = (out.squeeze(0).unwrap() * 255.0).unwrap().round().unwrap();
        let want = t[&format!("{name}.out")].to_dtype(DType::F32).unwrap();
        assert_eq!(levels.dims(), want.dims(), "{name}: size");
        let diff = max_abs(&levels, &want);
        println!("{name}: map max diff {diff} levels");
        assert!(diff <= 1.0, "{name}: map differs by {diff} levels");
    }
}

#[test]
fn wrong_file_is_refused() {
    // A state dict without NormalBae's encoder: the error names what it looked for.
    let path = dir().join("reference.safetensors");
    let sd = StateDict::open(&path).expect("opens");
    let err = NormalBae::load(&Arc::new(sd), &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("conv_stem"),
        "unexpected error: {err}"
    );
}

/// The full-size structure (B5's stage repeats and widths, the 2048-wide decoder): a file written
/// by `normalbae_reference.py --full DIR`, with `WEFT_NORMALBAE_FULL=DIR`.
#[test]
#[ignore = "needs a full-size file: WEFT_NORMALBAE_FULL=DIR from normalbae_reference.py --full DIR"]
fn full_size_file_matches() {
    let dir = PathBuf::from(std::env::var("WEFT_NORMALBAE_FULL").expect("WEFT_NORMALBAE_FULL"));
    let sd = StateDict::open(&dir.join("scannet.pt")).expect("scannet.pt opens");
    let net = NormalBae::load(&Arc::new(sd), &Device::Cpu).expect("scannet.pt loads");
    let t = candle_core::safetensors::load(
        dir.join("normalbae_full_reference.safetensors"),
        &Device::Cpu,
    )
    .expect("reference loads");
    let x = normalised(&t["input"]);
    let normal = net.forward(&x).expect("forward").squeeze(0).unwrap();
    let diff = max_abs(&normal, &t["normal"]);
    println!("full size: normals max abs diff {diff:.2e}");
    assert!(diff < 5e-4, "full size: normals differ by {diff}");
}

#[test]
fn keys_without_the_module_prefix_load_too() {
    // load_checkpoint strips "module." where present: the same weights saved without it (as
    // safetensors) give the same network.
    let sd = StateDict::open(&dir().join("scannet.pt")).expect("scannet.pt opens");
    let plain: HashMap<String, Tensor> = sd
        .shapes()
        .keys()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .map(|k| {
            let name = k.strip_prefix("module.").expect("prefixed").to_string();
            (name, sd.get(k).expect("tensor"))
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scannet.safetensors");
    candle_core::safetensors::save(&plain, &path).unwrap();
    let unprefixed = NormalBae::load(&Arc::new(StateDict::open(&path).unwrap()), &Device::Cpu)
        .expect("unprefixed file loads");
    let t = fixture();
    let x = normalised(&t["astronaut_r64.padded"]);
    let a = net().forward(&x).unwrap();
    let b = unprefixed.forward(&x).unwrap();
    assert_eq!(max_abs(&a, &b), 0.0);
}
