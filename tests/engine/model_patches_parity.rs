//! Parity of the model patches against `tools/parity/model_patches_reference.py` (ComfyUI's
//! RescaleCFG, CFGZeroStar, Epsilon Scaling, APG, TCFG through `cfg_function`'s hook order;
//! FreeU's Fourier filter and output-block patch; the ModelSamplingDiscrete lcm/zsnr tables) on
//! seeded random tensors. Tolerance: 1e-4 max abs error (values of order 1-10, f32 maths); sigma
//! tables 1e-4 relative.
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::util::max_abs_diff;
use weft::engine::diffusion::differential::DifferentialDiffusion;
use weft::engine::diffusion::freeu::{fourier_filter, FreeU, FreeUVersion};
use weft::engine::diffusion::guidance::{
    perp_neg, Apg, CfgZeroStar, EpsilonScaling, PerpNeg, RescaleCfg, Tcfg,
};
use weft::engine::diffusion::patches::{
    DenoiseMaskFunction, ModelPatches, OutputBlockPatch, Reruns,
};
use weft::engine::sampling::model_sampling::{Config, ModelSamplingDiscrete, Prediction};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sampling/model_patches_reference.safetensors"
);

fn load() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURE, &Device::Cpu).expect("fixture loads")
}

fn close(failures: &mut Vec<String>, key: &str, ours: &Tensor, want: &Tensor) {
    let err = max_abs_diff(ours, want);
    if err > 1e-4 {
        failures.push(format!("{key}: max abs error {err}"));
    }
}

#[test]
fn cfg_hooks_match_comfyui() {
    let fx = load();
    let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
    let (x, cond, uncond) = (&fx["x"], &fx["cond"], &fx["uncond"]);
    let run = |patches: &ModelPatches, c: &Tensor, u: &Tensor, sigma: f64| {
        patches
            .combine(
                x,
                sigma,
                6.5,
                &ms,
                c.clone(),
                Some(u.clone()),
                &[],
                Reruns::default(),
            )
            .expect("combine")
            .0
    };
    let mut failures = Vec::new();
    let plain = ModelPatches::default();
    close(
        &mut failures,
        "plain",
        &run(&plain, cond, uncond, 3.7),
        &fx["plain"],
    );
    let rescale = ModelPatches {
        cfg_function: Some(Arc::new(RescaleCfg { multiplier: 0.7 })),
        ..ModelPatches::default()
    };
    close(
        &mut failures,
        "rescale_cfg",
        &run(&rescale, cond, uncond, 3.7),
        &fx["rescale_cfg"],
    );
    let zero = ModelPatches {
        post_cfg: vec![Arc::new(CfgZeroStar)],
        ..ModelPatches::default()
    };
    close(
        &mut failures,
        "cfg_zero_star",
        &run(&zero, cond, uncond, 3.7),
        &fx["cfg_zero_star"],
    );
    let eps = ModelPatches {
        post_cfg: vec![Arc::new(EpsilonScaling {
            scaling_factor: 1.005,
        })],
        ..ModelPatches::default()
    };
    close(
        &mut failures,
        "epsilon_scaling",
        &run(&eps, cond, uncond, 3.7),
        &fx["epsilon_scaling"],
    );
    let tcfg = ModelPatches {
        pre_cfg: vec![Arc::new(Tcfg)],
        ..ModelPatches::default()
    };
    close(
        &mut failures,
        "tcfg",
        &run(&tcfg, cond, uncond, 3.7),
        &fx["tcfg"],
    );
    let apg = ModelPatches {
        pre_cfg: vec![Arc::new(Apg::new(0.6, 2.0, 0.4))],
        ..ModelPatches::default()
    };
    close(
        &mut failures,
        "apg/1",
        &run(&apg, cond, uncond, 3.7),
        &fx["apg/1"],
    );
    close(
        &mut failures,
        "apg/2",
        &run(&apg, &fx["cond2"], &fx["uncond2"], 2.1),
        &fx["apg/2"],
    );
    close(
        &mut failures,
        "apg/3_restart",
        &run(&apg, cond, uncond, 5.0),
        &fx["apg/3_restart"],
    );
    let all = ModelPatches {
        pre_cfg: vec![Arc::new(Tcfg)],
        cfg_function: Some(Arc::new(RescaleCfg { multiplier: 0.5 })),
        post_cfg: vec![
            Arc::new(CfgZeroStar),
            Arc::new(EpsilonScaling {
                scaling_factor: 0.98,
            }),
        ],
        ..ModelPatches::default()
    };
    close(
        &mut failures,
        "all",
        &run(&all, cond, uncond, 3.7),
        &fx["all"],
    );
    let pn = perp_neg(cond, uncond, &fx["cond2"], 0.7, 6.5).expect("perp_neg");
    close(&mut failures, "perp_neg", &pn, &fx["perp_neg"]);
    let node = ModelPatches {
        cfg_function: Some(Arc::new(PerpNeg {
            empty: [Arc::new(Vec::new())],
            neg_scale: 0.7,
        })),
        post_cfg: vec![Arc::new(EpsilonScaling {
            scaling_factor: 1.02,
        })],
        ..ModelPatches::default()
    };
    let extra = [fx["cond2"].clone()];
    let (ours, _) = node
        .combine(
            x,
            3.7,
            6.5,
            &ms,
            cond.clone(),
            Some(uncond.clone()),
            &extra,
            Reruns::default(),
        )
        .expect("combine");
    close(&mut failures, "perp_neg_node", &ours, &fx["perp_neg_node"]);
    // Without a negative prediction every hook leaves the positive one alone.
    let (alone, _) = all
        .combine(x, 3.7, 1.0, &ms, cond.clone(), None, &[], Reruns::default())
        .expect("combine");
    let expected = (x - (x - cond).unwrap().affine(1.0 / 0.98, 0.0).unwrap()).unwrap();
    close(&mut failures, "no uncond", &alone, &expected);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn freeu_matches_comfyui() {
    let fx = load();
    let mut failures = Vec::new();
    for key in ["2x3x8x6", "1x2x5x7", "1x1x1x3", "1x2x2x2"] {
        let ours = fourier_filter(&fx[&format!("fourier/{key}/in")], 0.2).expect("filter");
        close(
            &mut failures,
            key,
            &ours,
            &fx[&format!("fourier/{key}/out")],
        );
    }
    for (version, name) in [(FreeUVersion::V1, "v1"), (FreeUVersion::V2, "v2")] {
        let patch = FreeU {
            version,
            base_channels: 2,
            level1: (1.3, 0.9),
            level2: (1.4, 0.2),
        };
        for ch in [8, 4, 6] {
            let k = format!("freeu/{name}/{ch}");
            let (h, skip) = patch
                .patch(
                    fx[&format!("{k}/h")].clone(),
                    fx[&format!("{k}/hsp")].clone(),
                )
                .expect("patch");
            close(
                &mut failures,
                &format!("{k}/h"),
                &h,
                &fx[&format!("{k}/h_out")],
            );
            close(
                &mut failures,
                &format!("{k}/hsp"),
                &skip,
                &fx[&format!("{k}/hsp_out")],
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn differential_diffusion_matches_comfyui() {
    let fx = load();
    let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
    let schedule: Vec<f64> = fx["dd/sigmas"]
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let mut failures = Vec::new();
    for strength in [1.0, 0.4] {
        let patch = DifferentialDiffusion { strength };
        for (i, &sigma) in schedule[..schedule.len() - 1].iter().enumerate() {
            let ours = patch.mask(sigma, &fx["dd/mask"], &schedule, &ms).unwrap();
            close(
                &mut failures,
                &format!("dd/{strength:?}/{i}"),
                &ours,
                &fx[&format!("dd/{strength:?}/{i}")],
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn table(ms: &ModelSamplingDiscrete) -> Tensor {
    Tensor::new(ms.sigmas(), &Device::Cpu).expect("table")
}

#[test]
fn model_sampling_variants_match_comfyui() {
    let fx = load();
    let base = ModelSamplingDiscrete::new(&Config::sd_eps());
    let mut failures = Vec::new();
    // Max of |ours - want| / (|want| + 1e-6).
    let rel = |ours: &Tensor, want: &Tensor| -> f32 {
        let scale = want.abs().and_then(|w| w.affine(1.0, 1e-6)).expect("scale");
        let (a, b) = (ours / &scale, want / &scale);
        max_abs_diff(&a.expect("divide"), &b.expect("divide"))
    };
    for (key, ms) in [
        ("ms/zsnr", base.clone().zero_terminal_snr()),
        ("ms/lcm", base.clone().distilled(50)),
        (
            "ms/lcm_zsnr",
            base.clone().distilled(50).zero_terminal_snr(),
        ),
    ] {
        // zsnr's `(1 - alpha_bar) / alpha_bar` cancels at the smallest sigmas (alpha_bar near 1),
        // where one f32 ulp of alpha_bar is 7e-5 of the result.
        let err = rel(&table(&ms), &fx[key]);
        if err > 1e-4 {
            failures.push(format!("{key}: max relative error {err}"));
        }
    }
    let lcm = base.clone().distilled(50).with_prediction(Prediction::Lcm);
    let ts: Vec<f32> = [14.6f32, 3.0, 1.0, 0.5, 0.03]
        .iter()
        .map(|&s| lcm.timestep(s))
        .collect();
    assert_eq!(ts, fx["ms/lcm_timestep"].to_vec1::<f32>().unwrap());
    let sig: Vec<f32> = [999.0f32, 500.0, 37.5, 0.0]
        .iter()
        .map(|&t| lcm.sigma(t))
        .collect();
    let err = rel(
        &Tensor::new(sig.as_slice(), &Device::Cpu).unwrap(),
        &fx["ms/lcm_sigma"],
    );
    assert!(err < 1e-5, "lcm sigma {err}");
    let d = lcm
        .calculate_denoised(1.0, &fx["cond"], &fx["x"])
        .expect("denoised");
    close(&mut failures, "lcm denoised", &d, &fx["ms/lcm_denoised"]);
    let x0 = base.with_prediction(Prediction::X0);
    let d = x0
        .calculate_denoised(2.0, &fx["cond"], &fx["x"])
        .expect("x0");
    close(&mut failures, "x0 denoised", &d, &fx["cond"]);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
