//! Parity of the OpenPose annotator against `tools/parity/openpose_reference.py` (fixtures in
//! `tests/fixtures/annotators/openpose/`: a narrowed random-weight `body_pose_model.pth` in the
//! published layout, and per case the input, the candidate/subset arrays of `Body.__call__` and the
//! pack's drawn map). Figures print with `--nocapture`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use weft_engine::annotators::openpose::{self, BodyNet, OpenposeNets, OpenposeOptions};
use weft_engine::load::file::StateDict;
use weft_engine::preprocess::aux::{detect_resolution, resize_image_with_pad};
use weft_engine::preprocess::cv::Interpolation;
use weft_engine::preprocess::ImageU8;

mod common;
use common::{image_u8, max_abs};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/annotators/openpose")
}

fn fixtures() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("openpose_ref.safetensors"), &Device::Cpu)
        .expect("fixture file")
}

fn meta() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("openpose_ref.json")).expect("fixture json");
    serde_json::from_str(&text).expect("json")
}

fn net() -> BodyNet {
    let sd = Arc::new(StateDict::open(&dir().join("body_pose_model.pth")).expect("weights"));
    BodyNet::load(&sd, &Device::Cpu).expect("body net")
}

/// (differing values, max difference in levels).
fn compare(got: &ImageU8, want: &ImageU8) -> (usize, u8) {
    let differing = got
        .data
        .iter()
        .zip(&want.data)
        .filter(|(a, b)| a != b)
        .count();
    let max = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    (differing, max)
}

#[test]
fn body_net_matches_torch() {
    let fx = fixtures();
    let net = net();
    let (paf, heat) = net.forward(&fx["astronaut_256.net_in"]).unwrap();
    let (dp, dh) = (
        max_abs(&paf, &fx["astronaut_256.paf"]),
        max_abs(&heat, &fx["astronaut_256.heatmap"]),
    );
    println!("body net: PAF max |diff| {dp:e}, heatmap max |diff| {dh:e}");
    // f32 sums in another order through 46 layers; the heatmaps reach ~11 (relative 3e-5).
    assert!(dp < 1e-4 && dh < 1e-3);
}

#[test]
fn keypoints_and_maps_match_the_pack() {
    let fx = fixtures();
    let net = net();
    let mut failed = Vec::new();
    for case in meta()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let run =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_case(&fx, &net, case)));
        if run.is_err() {
            failed.push(name.to_string());
        }
    }
    assert!(failed.is_empty(), "cases differing: {failed:?}");
}

fn check_case(fx: &HashMap<String, Tensor>, net: &BodyNet, case: &serde_json::Value) {
    {
        let name = case["name"].as_str().unwrap();
        let img = image_u8(&fx[&format!("{}.input", case["image"].as_str().unwrap())]);
        let res = case["resolution"].as_u64().unwrap() as u32;
        let opts = OpenposeOptions {
            resolution: res,
            include_body: case["detect_body"].as_bool().unwrap(),
            include_hand: false,
            include_face: false,
            xinsr_stick_scaling: case["xinsr"].as_bool().unwrap(),
        };

        // Keypoints: Body.__call__'s post-processing on torch's net outputs for this image.
        let padded =
            resize_image_with_pad("test", &img, detect_resolution(res), Interpolation::Cubic)
                .unwrap();
        let bgr = openpose::bgr(&padded.image);
        let (_, dh, dw) = openpose::body_input(&bgr);
        let got = openpose::body_from_outputs(
            &fx[&format!("{name}.paf")],
            &fx[&format!("{name}.heatmap")],
            (dh, dw),
            (bgr.height, bgr.width),
        )
        .unwrap();
        let cand: Vec<Vec<f64>> = fx[&format!("{name}.candidate")].to_vec2().unwrap();
        let subset: Vec<Vec<f64>> = fx[&format!("{name}.subset")].to_vec2().unwrap();
        assert_eq!(got.candidate.len(), cand.len(), "{name}: peak count");
        let mut score_diff = 0f64;
        for (p, c) in got.candidate.iter().zip(&cand) {
            assert_eq!(
                (p.x as f64, p.y as f64, p.id as f64),
                (c[0], c[1], c[3]),
                "{name}: peak"
            );
            score_diff = score_diff.max((p.score - c[2]).abs());
        }
        assert_eq!(got.subset.len(), subset.len(), "{name}: people");
        let mut total_diff = 0f64;
        for (g, w) in got.subset.iter().zip(&subset) {
            assert_eq!(&g[..18], &w[..18], "{name}: person's parts");
            assert_eq!(g[19], w[19], "{name}: part count");
            total_diff = total_diff.max((g[18] - w[18]).abs());
        }
        assert!(
            score_diff < 1e-5 && total_diff < 1e-4,
            "{name}: scores {score_diff:e} {total_diff:e}"
        );

        // The drawn map and the JSON from those people.
        let poses = openpose::detect_poses(&got, &bgr, None, None).unwrap();
        let (map, frame) = openpose::render(&poses, &padded, &opts);
        let want = image_u8(&fx[&format!("{name}.map")]);
        assert_eq!(
            (map.height, map.width),
            (want.height, want.width),
            "{name}: map size"
        );
        let (differing, max) = compare(&map, &want);
        println!(
            "{name}: {} peaks, {} people (peak score diff {score_diff:e}, person total {total_diff:e}); map: {differing} of {} values differ, max {max} levels",
            cand.len(),
            subset.len(),
            map.data.len()
        );
        assert_eq!(differing, 0, "{name}: map differs");

        // The whole node call through Weft's net. Its f32 sums differ from torch's by ~3e-4 on
        // heatmaps reaching 11 (the narrowed test net's last layers are scaled up), which flips
        // near-ties in coffee_320 (a smoothed peak 1.4e-5 above the 0.1 threshold, two
        // neighbours 4e-4 apart): there a few joints move. The other cases are exact.
        let nets = OpenposeNets {
            body: net,
            hand: None,
            face: None,
        };
        let (full, _) = openpose::openpose_image(&nets, &img, &opts).unwrap();
        let (fd, fm) = compare(&full, &want);
        println!("{name}: through Weft's net: {fd} values differ, max {fm} levels");
        if name != "coffee_320" {
            assert_eq!(fd, 0, "{name}: node map differs");
        }
        let want_pose = &case["pose"];
        assert_eq!(frame["canvas_height"], want_pose["canvas_height"]);
        assert_eq!(frame["canvas_width"], want_pose["canvas_width"]);
        let (gp, wp) = (
            frame["people"].as_array().unwrap(),
            want_pose["people"].as_array().unwrap(),
        );
        assert_eq!(gp.len(), wp.len());
        for (g, w) in gp.iter().zip(wp) {
            let g: Vec<f64> = serde_json::from_value(g["pose_keypoints_2d"].clone()).unwrap();
            let w: Vec<f64> = serde_json::from_value(w["pose_keypoints_2d"].clone()).unwrap();
            // serde_json's default float parsing may be an ulp off Python's repr.
            assert_eq!(g.len(), w.len());
            assert!(
                g.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-12),
                "{name}: pose_keypoints_2d"
            );
        }
    }
}

/// A full-size file (`openpose_reference.py --full DIR`, then `OPENPOSE_FULL=DIR/body_pose_model.pth`)
/// loads and runs: the published widths are read from the shapes like the narrowed ones.
#[test]
#[ignore = "needs a full-size body_pose_model.pth (OPENPOSE_FULL)"]
fn full_size_file_loads() {
    let Ok(path) = std::env::var("OPENPOSE_FULL") else {
        return;
    };
    let sd = Arc::new(StateDict::open(std::path::Path::new(&path)).expect("weights"));
    let net = BodyNet::load(&sd, &Device::Cpu).expect("body net");
    let x = Tensor::zeros((1, 3, 64, 48), candle_core::DType::F32, &Device::Cpu).unwrap();
    let (paf, heat) = net.forward(&x).unwrap();
    assert_eq!(
        (paf.dims(), heat.dims()),
        (&[1, 38, 8, 6][..], &[1, 19, 8, 6][..])
    );
}
