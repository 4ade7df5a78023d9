//! CPU time of the ControlNet preprocessors on one 512x512 image at `resolution` 512 (what the
//! seed promises under 100 ms), each the whole node call: uint8 round trip, resize and pad, the
//! network (f32) and its post-processing. The networks load from full-size random-weight files
//! in their published layouts, which `tools/parity/<x>_reference.py --full DIR` writes
//! (`WEFT_ANNOTATOR_BENCH_DIR`, default /tmp/weft-annotators); a missing file skips its row.
//! `tools/parity/annotators_bench.py` times comfyui_controlnet_aux's calls on PyTorch on the same
//! files, for the README's side-by-side table.
//!
//! Run: cargo bench --bench annotators [-- RUNS] [-- NAME] (only the rows whose name contains
//! NAME)
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use candle_core::{Device, Tensor};
use weft::engine::annotators;
use weft::engine::annotators::depth_anything_v2::DepthAnythingV2;
use weft::engine::annotators::hed::{ControlNetHed, HedOptions};
use weft::engine::annotators::lineart::{AnimeUnet, LineartGenerator};
use weft::engine::annotators::midas::{Midas, MidasMap};
use weft::engine::annotators::mlsd::{Mlsd, MlsdOptions};
use weft::engine::annotators::normalbae::NormalBae;
use weft::engine::annotators::openpose::{
    BodyNet, FaceNet, HandNet, OpenposeNets, OpenposeOptions,
};
use weft::engine::annotators::pidinet::{PiDiNet, PidiOptions};
use weft::engine::annotators::uniformer::UniFormer;
use weft::engine::annotators::zoe::Zoe;
use weft::engine::load::file::StateDict;
use weft::engine::preprocess;

/// The part of a row's name given on the command line, if any.
static ONLY: OnceLock<Option<String>> = OnceLock::new();

/// One row: the median and the spread of `runs` timed calls after one warm-up.
fn bench(name: &str, runs: usize, mut f: impl FnMut() -> anyhow::Result<Tensor>) {
    if ONLY
        .get()
        .and_then(Option::as_ref)
        .is_some_and(|only| !name.contains(only.as_str()))
    {
        return;
    }
    let out = match f() {
        Ok(out) => out,
        Err(e) => {
            println!("{name:<34} failed: {e}");
            return;
        }
    };
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            let _ = f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "{name:<34} median {:>8.1} ms  (min {:.1}, max {:.1})  -> {:?}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        out.dims()
    );
}

/// A 512x512 photo-like test image, `[1, 512, 512, 3]` in 0..1: smooth gradients, circles and
/// bars (edges for the line detectors), and a little texture.
fn test_image() -> anyhow::Result<Tensor> {
    let (h, w) = (512usize, 512usize);
    let mut data = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let d = ((fx - 0.4).powi(2) + (fy - 0.45).powi(2)).sqrt();
            let disk = if d < 0.22 { 0.35 } else { 0.0 };
            let bar = if (x / 48) % 3 == 0 && y > 300 {
                0.3
            } else {
                0.0
            };
            let texture = ((x * 7919 + y * 104729) % 97) as f32 / 97.0 * 0.05;
            data.push((0.2 + 0.5 * fx + disk + texture).min(1.0));
            data.push((0.3 + 0.4 * fy + bar + texture).min(1.0));
            data.push((0.6 - 0.3 * fx * fy + disk * 0.5).clamp(0.0, 1.0));
        }
    }
    Ok(Tensor::from_vec(data, (1, h, w, 3), &Device::Cpu)?)
}

fn bench_dir() -> PathBuf {
    std::env::var_os("WEFT_ANNOTATOR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/weft-annotators"))
}

/// The file `name` under the bench folder, or `None` (its row is skipped) with a note.
fn file(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(name);
    if path.exists() {
        Some(path)
    } else {
        println!("{name:<34} skipped: no {}", path.display());
        None
    }
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    // cargo passes `--bench` itself; a word that is not a number names the rows to run.
    let only = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--") && a.parse::<usize>().is_err());
    let _ = ONLY.set(only);
    let image = test_image()?;
    println!(
        "ControlNet preprocessors, 512x512 in, resolution 512, f32, {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // Classical (no weights).
    bench("Canny (kornia)", runs, || {
        Ok(preprocess::canny(
            &image,
            &preprocess::CannyOptions::default(),
        )?)
    });
    bench("CannyEdgePreprocessor", runs, || {
        Ok(preprocess::canny_edge(
            &image,
            &preprocess::CannyEdgeOptions::default(),
        )?)
    });
    bench("Scribble_XDoG_Preprocessor", runs, || {
        Ok(preprocess::scribble_xdog(
            &image,
            &preprocess::ScribbleXdogOptions::default(),
        )?)
    });
    bench("LineartStandardPreprocessor", runs, || {
        Ok(preprocess::lineart_standard(
            &image,
            &preprocess::LineartStandardOptions::default(),
        )?)
    });
    bench("BinaryPreprocessor", runs, || {
        Ok(preprocess::binary(
            &image,
            &preprocess::BinaryOptions::default(),
        )?)
    });
    bench("ColorPreprocessor", runs, || {
        Ok(preprocess::color(
            &image,
            &preprocess::ColorOptions::default(),
        )?)
    });

    // Networks, each loaded once (the node loads through the model manager, once per file).
    let dir = bench_dir();
    let device = Device::Cpu;
    let open = |name: &str| -> Option<Arc<StateDict>> {
        let path = file(&dir, name)?;
        match StateDict::open(&path) {
            Ok(sd) => Some(Arc::new(sd)),
            Err(e) => {
                println!("{name:<34} failed to open: {e}");
                None
            }
        }
    };
    if let Some(sd) = open("ControlNetHED.pth") {
        let net = ControlNetHed::load(&sd, &device)?;
        for (name, scribble) in [
            ("HEDPreprocessor", false),
            ("FakeScribblePreprocessor", true),
        ] {
            let opts = HedOptions {
                safe: true,
                scribble,
                resolution: 512,
            };
            bench(name, runs, || {
                Ok(annotators::hed::hed(&net, &image, &opts)?)
            });
        }
    }
    if let Some(sd) = open("table5_pidinet.pth") {
        let net = PiDiNet::load(&sd, &device)?;
        for (name, scribble) in [
            ("PiDiNetPreprocessor", false),
            ("Scribble_PiDiNet_Preprocessor", true),
        ] {
            let opts = PidiOptions {
                safe: true,
                scribble,
                resolution: 512,
            };
            bench(name, runs, || {
                Ok(annotators::pidinet::pidinet(&net, &image, &opts)?)
            });
        }
    }
    if let Some(sd) = open("sk_model.pth") {
        let net = LineartGenerator::load(&sd, &device)?;
        bench("LineArtPreprocessor", runs, || {
            Ok(annotators::lineart::lineart(&image, &net, 512)?)
        });
    }
    if let Some(sd) = open("netG.pth") {
        let net = AnimeUnet::load(&sd, &device)?;
        bench("AnimeLineArtPreprocessor", runs, || {
            Ok(annotators::lineart::lineart_anime(&image, &net, 512)?)
        });
    }
    if let Some(sd) = open("mlsd_large_512_fp32.pth") {
        let net = Mlsd::load(&sd, &device)?;
        let opts = MlsdOptions {
            score_threshold: 0.1,
            dist_threshold: 0.1,
            resolution: 512,
        };
        bench("M-LSDPreprocessor", runs, || {
            Ok(annotators::mlsd::mlsd(&net, &image, &opts)?)
        });
    }
    if let Some(sd) = open("scannet.pt") {
        let net = NormalBae::load(&sd, &device)?;
        bench("BAE-NormalMapPreprocessor", runs, || {
            Ok(annotators::normalbae::normal_map(&net, &image, 512)?)
        });
    }
    if let Some(sd) = open("depth_anything_v2_vits.pth") {
        let net = DepthAnythingV2::load(&sd, &device)?;
        bench("DepthAnythingV2Preprocessor vits", runs, || {
            Ok(annotators::depth_anything_v2::depth_anything_v2(
                &net, &image, 512,
            )?)
        });
    }
    if let Some(sd) = open("dpt_hybrid-midas-501f0c75.pt") {
        let net = Midas::load(&sd, &device)?;
        bench("MiDaS-DepthMapPreprocessor", runs, || {
            Ok(annotators::midas::midas(
                &net,
                &image,
                512,
                MidasMap::Depth,
            )?)
        });
    }
    // the .pt, then today's transformers folder (`zoe_hf_reference.py --full DIR`)
    for (name, file) in [
        ("Zoe-DepthMapPreprocessor", "ZoeD_M12_N.pt"),
        (
            "Zoe-DepthMapPreprocessor (HF NK)",
            "Intel/zoedepth-nyu-kitti/model.safetensors",
        ),
    ] {
        if let Some(sd) = open(file) {
            let net = Zoe::load(&sd, &device)?;
            bench(name, runs, || Ok(annotators::zoe::zoe(&net, &image, 512)?));
        }
    }
    if let Some(sd) = open("upernet_global_small.pth") {
        let net = UniFormer::load(&sd, &device)?;
        bench("UniFormer-SemSegPreprocessor", runs, || {
            Ok(annotators::uniformer::semantic_segmentation(
                &net, &image, 512,
            )?)
        });
    }
    if let Some(sd) = open("shi-labs/oneformer_ade20k_swin_large/model.safetensors") {
        let net = annotators::oneformer::load(&sd, &device)?;
        bench("OneFormer-ADE20K-SemSegPreprocessor", runs, || {
            Ok(annotators::oneformer::semantic_segmentation(
                &net, &image, 512,
            )?)
        });
    }
    if let Some(sd) = open("body_pose_model.pth") {
        let net = BodyNet::load(&sd, &device)?;
        let mut opts = OpenposeOptions {
            resolution: 512,
            include_body: true,
            include_hand: false,
            include_face: false,
            xinsr_stick_scaling: false,
        };
        let body_only = OpenposeNets {
            body: &net,
            hand: None,
            face: None,
        };
        bench("OpenposePreprocessor (body)", runs, || {
            Ok(annotators::openpose::openpose(&image, &body_only, &opts)?.0)
        });
        if let (Some(hand), Some(face)) = (open("hand_pose_model.pth"), open("facenet.pth")) {
            let (hand, face) = (
                HandNet::load(&hand, &device)?,
                FaceNet::load(&face, &device)?,
            );
            let nets = OpenposeNets {
                body: &net,
                hand: Some(&hand),
                face: Some(&face),
            };
            opts.include_hand = true;
            opts.include_face = true;
            bench("OpenposePreprocessor (body+hand+face)", runs, || {
                Ok(annotators::openpose::openpose(&image, &nets, &opts)?.0)
            });
        }
    }
    Ok(())
}
