//! Parity of the custom-sampling sigma lists and the sampler nodes' options against
//! `tools/parity/custom_sampling_reference.py` (ComfyUI's formulas in torch): polyexponential, VP,
//! Laplace, beta (alpha/beta), Align Your Steps, FlipSigmas and SplitSigmasDenoise; and samplers run
//! with non-default eta, s_noise, r, solver_type, order and dpm_adaptive controller settings on the
//! analytic CFG denoiser of `sampler_parity`, 10 karras steps, seed 42.
//! Tolerances: sigmas 1e-5 relative (+1e-6 absolute); final latents 1e-4 max abs error (5e-4 for
//! dpm_adaptive, whose step-size controller amplifies round-off).
use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::sampler_parity::Analytic;
use super::util::max_abs_diff;
use weft::engine::sampling::custom_schedules::{
    align_your_steps, flip, laplace, polyexponential, split_denoise, vp,
};
use weft::engine::sampling::model_sampling::{Config, ModelSamplingDiscrete};
use weft::engine::sampling::rng::prepare_noise;
use weft::engine::sampling::samplers::{Sampler, SamplerOptions, SolverType, StepInfo};
use weft::engine::sampling::schedulers::{beta, karras};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sampling/custom_sampling_reference.safetensors"
);

fn load() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURE, &Device::Cpu).expect("fixture loads")
}

/// The fixture's list (empty lists are stored as one 0 with their length beside them).
fn list(fx: &HashMap<String, Tensor>, key: &str) -> Vec<f32> {
    let len = fx[&format!("len/{key}")].to_vec1::<f32>().expect("len")[0] as usize;
    let mut v = fx
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing"))
        .to_vec1::<f32>()
        .expect("1-d");
    v.truncate(len);
    v
}

fn check(failures: &mut Vec<String>, key: &str, ours: &[f32], fx: &HashMap<String, Tensor>) {
    let want = list(fx, key);
    if ours.len() != want.len() {
        failures.push(format!("{key}: {} values, want {}", ours.len(), want.len()));
        return;
    }
    for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
        if (a - b).abs() > 1e-5 * b.abs() + 1e-6 {
            failures.push(format!("{key}[{i}]: {a} vs {b}"));
        }
    }
}

#[test]
fn sigma_lists_match_comfyui() {
    let fx = load();
    let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
    let mut failures = Vec::new();
    for n in [1usize, 5, 20] {
        for rho in [1.0, 0.5, 2.5] {
            let ours = polyexponential(n, 0.0291675, 14.614642, rho);
            check(
                &mut failures,
                &format!("poly/{n}/{rho:?}/default"),
                &ours,
                &fx,
            );
            let ours = polyexponential(n, 0.1, 80.0, rho);
            check(&mut failures, &format!("poly/{n}/{rho:?}/wide"), &ours, &fx);
        }
        let ours = vp(n, 19.9, 0.1, 0.001);
        check(&mut failures, &format!("vp/{n}/19.9/0.1/0.001"), &ours, &fx);
        let ours = laplace(n, 0.0291675, 14.614642, 0.0, 0.5);
        check(&mut failures, &format!("laplace/{n}/0.0/0.5"), &ours, &fx);
    }
    check(
        &mut failures,
        "vp/10/10.0/0.5/0.01",
        &vp(10, 10.0, 0.5, 0.01),
        &fx,
    );
    let ours = laplace(10, 0.0291675, 14.614642, 0.5, 1.0);
    check(&mut failures, "laplace/10/0.5/1.0", &ours, &fx);
    for n in [5usize, 20] {
        for (a, b) in [(0.6, 0.6), (0.3, 0.8), (1.0, 1.0)] {
            let ours = beta(&ms, n, a, b);
            check(&mut failures, &format!("beta/{n}/{a:?}/{b:?}"), &ours, &fx);
        }
    }
    for t in ["SD1", "SDXL", "SVD"] {
        for n in [10usize, 4, 25] {
            for d in [1.0, 0.5, 0.33] {
                let ours = align_your_steps(t, n, d).expect("known type");
                check(&mut failures, &format!("ays/{t}/{n}/{d:?}"), &ours, &fx);
            }
        }
    }
    let k = karras(10, ms.sigma_min() as f64, ms.sigma_max() as f64, 7.0);
    check(&mut failures, "flip/karras10", &flip(&k), &fx);
    for d in [1.0, 0.5, 0.33, 0.0] {
        let (high, low) = split_denoise(&k, d);
        check(&mut failures, &format!("split/{d:?}/high"), &high, &fx);
        check(&mut failures, &format!("split/{d:?}/low"), &low, &fx);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn options(f: impl FnOnce(&mut SamplerOptions)) -> SamplerOptions {
    let mut o = SamplerOptions::default();
    f(&mut o);
    o
}

#[test]
fn sampler_options_match_comfyui() {
    let fx = load();
    let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
    let sigmas = karras(10, ms.sigma_min() as f64, ms.sigma_max() as f64, 7.0);
    let cases: Vec<(&str, Sampler, SamplerOptions)> = vec![
        (
            "euler_ancestral/eta0.5_s0.8",
            Sampler::EulerAncestral,
            options(|o| {
                o.eta = Some(0.5);
                o.s_noise = Some(0.8);
            }),
        ),
        (
            "euler_ancestral/eta0",
            Sampler::EulerAncestral,
            options(|o| o.eta = Some(0.0)),
        ),
        (
            "euler_ancestral_cfg_pp/eta0.5_s0.7",
            Sampler::EulerAncestralCfgPp,
            options(|o| {
                o.eta = Some(0.5);
                o.s_noise = Some(0.7);
            }),
        ),
        ("lms/order2", Sampler::Lms, options(|o| o.order = Some(2))),
        ("lms/order6", Sampler::Lms, options(|o| o.order = Some(6))),
        (
            "dpmpp_sde/eta0.5_s0.9_r0.3",
            Sampler::DpmppSde,
            options(|o| {
                o.eta = Some(0.5);
                o.s_noise = Some(0.9);
                o.r = Some(0.3);
            }),
        ),
        (
            "dpmpp_2m_sde/heun_eta0.6_s0.8",
            Sampler::Dpmpp2mSdeGpu,
            options(|o| {
                o.eta = Some(0.6);
                o.s_noise = Some(0.8);
                o.solver_type = Some(SolverType::Heun);
            }),
        ),
        (
            "dpmpp_2m_sde/midpoint_eta0",
            Sampler::Dpmpp2mSde,
            options(|o| {
                o.eta = Some(0.0);
                o.solver_type = Some(SolverType::Midpoint);
            }),
        ),
        (
            "dpmpp_3m_sde/eta0.4_s1.2",
            Sampler::Dpmpp3mSde,
            options(|o| {
                o.eta = Some(0.4);
                o.s_noise = Some(1.2);
            }),
        ),
        (
            "dpmpp_2s_ancestral/eta0.5_s0.7",
            Sampler::Dpmpp2sAncestral,
            options(|o| {
                o.eta = Some(0.5);
                o.s_noise = Some(0.7);
            }),
        ),
        (
            "dpm_adaptive/order2",
            Sampler::DpmAdaptive,
            options(|o| {
                o.order = Some(2);
                o.rtol = Some(0.1);
                o.atol = Some(0.01);
                o.h_init = Some(0.1);
                o.pcoeff = Some(0.1);
                o.icoeff = Some(0.8);
                o.dcoeff = Some(0.05);
                o.accept_safety = Some(0.9);
            }),
        ),
        (
            "dpm_adaptive/order3_eta0.5",
            Sampler::DpmAdaptive,
            options(|o| {
                o.order = Some(3);
                o.h_init = Some(0.5);
                o.eta = Some(0.5);
                o.s_noise = Some(0.8);
            }),
        ),
    ];
    let noise = prepare_noise(&[1, 4, 8, 8], 42, None, &Device::Cpu).expect("noise");
    let x = ms
        .noise_scaling(
            sigmas[0] as f64,
            &noise,
            &noise.zeros_like().expect("z"),
            true,
        )
        .expect("scale");
    let mut failures = Vec::new();
    for (key, sampler, opts) in cases {
        let mut model = Analytic {
            mu_cond: fx["mu_cond"].clone(),
            mu_uncond: fx["mu_uncond"].clone(),
            cfg: 3.0,
            calls: 0,
        };
        let mut cb = |_: StepInfo<'_>| Ok(());
        let out = sampler
            .sample_with(&opts, &mut model, &x, &sigmas, 42, &mut cb)
            .expect("sampling runs");
        let err = max_abs_diff(&out, &fx[&format!("sample/{key}")]);
        // dpm_adaptive's PID controller turns last-bit differences of its error estimate into
        // slightly different step sizes (torch computes the step maths in f32, we in f64).
        let tolerance = if key.starts_with("dpm_adaptive") {
            5e-4
        } else {
            1e-4
        };
        if err > tolerance {
            failures.push(format!("{key}: max abs error {err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
