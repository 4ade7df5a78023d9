//! Parity of schedulers and samplers against `sampling/scripts/sampler_reference.py`, which runs
//! ComfyUI's scheduler functions and sampler maths (eps model; `comfy/k_diffusion/sampling.py`, `deis.py`,
//! `sa_solver.py`, `comfy/extra_samplers/uni_pc.py`) in torch
//! with an analytic CFG denoiser (data ~ N(mu, 0.5^2): D = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), cfg 3)
//! on a [1,4,8,8] latent, seed 42, 10 steps, for every (sampler, scheduler) pair.
//! Tolerances: sigmas 1e-5 relative (+1e-6 absolute); final latents 1e-5 max abs error, for the
//! deterministic samplers and the default-noise-sampler ones (our noise is bit-identical to torch's).
//! The Brownian-tree SDE samplers draw from torchsde's tree in both (see brownian_parity.rs).
use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::helpers::COMFY_SAMPLERS;
use weft::engine::sampling::model_sampling::{Config, ModelSamplingDiscrete};
use weft::engine::sampling::rng::prepare_noise;
use weft::engine::sampling::samplers::{
    Denoised, Denoiser, NoiseKind, Sampler, StepInfo, SAMPLER_NAMES,
};
use weft::engine::sampling::schedulers::{ksampler_sigmas, Scheduler, SCHEDULER_NAMES};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sampling/sampler_reference.safetensors"
);
const S_DATA: f64 = 0.5;
const ROUNDING_LIMITED: &[&str] = &[
    "sample/lms/linear_quadratic",
    "sample/dpmpp_2m_cfg_pp/karras",
    "sample/dpmpp_2m_cfg_pp/exponential",
    "sample/dpmpp_2m_cfg_pp/ddim_uniform",
    "sample/dpmpp_2m_cfg_pp/normal",
    "sample/dpmpp_2m_cfg_pp/kl_optimal",
    "sample/dpmpp_3m_sde/ddim_uniform",
    "sample/dpmpp_3m_sde/normal",
    "sample/dpmpp_3m_sde_gpu/ddim_uniform",
    "sample/dpmpp_3m_sde_gpu/normal",
    "sample/ipndm_v/linear_quadratic",
    "sample/res_multistep/normal",
    "sample/res_multistep_ancestral/normal",
];
pub(crate) const CFG: f64 = 3.0;

pub(crate) fn load() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURE, &Device::Cpu).expect("fixture loads")
}

pub(crate) struct Analytic {
    pub(crate) mu_cond: Tensor,
    pub(crate) mu_uncond: Tensor,
    pub(crate) cfg: f64,
    pub(crate) calls: usize,
}

impl Denoiser for Analytic {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> candle_core::Result<Denoised> {
        self.calls += 1;
        let s2 = sigma * sigma;
        let a = S_DATA * S_DATA / (S_DATA * S_DATA + s2);
        let b = s2 / (S_DATA * S_DATA + s2);
        let xa = x.affine(a, 0.0)?;
        let cond = (&xa
            + (self.mu_cond.affine(b * self.cfg, 0.0)?
                + self.mu_uncond.affine(b * (1.0 - self.cfg), 0.0)?)?)?;
        let uncond = (&xa + self.mu_uncond.affine(b, 0.0)?)?;
        Ok(Denoised {
            cond,
            uncond: Some(uncond),
        })
    }
}

pub(crate) fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

fn run(
    sampler: Sampler,
    scheduler: Scheduler,
    fx: &HashMap<String, Tensor>,
    ms: &ModelSamplingDiscrete,
    cfg: f64,
) -> (Tensor, usize) {
    let sigmas = ksampler_sigmas(ms, scheduler, sampler.name(), 10, 1.0);
    run_analytic(sampler, &sigmas, 42, fx, ms, cfg)
}

/// Samples a [1,4,8,8] latent of `seed` down `sigmas` with the analytic denoiser of the fixture's
/// `mu_cond`/`mu_uncond`; returns the result and the number of callbacks.
pub(crate) fn run_analytic(
    sampler: Sampler,
    sigmas: &[f32],
    seed: u64,
    fx: &HashMap<String, Tensor>,
    ms: &ModelSamplingDiscrete,
    cfg: f64,
) -> (Tensor, usize) {
    let noise = prepare_noise(&[1, 4, 8, 8], seed, None, &Device::Cpu).expect("noise");
    let latent = noise.zeros_like().expect("zeros");
    let x = ms
        .noise_scaling(
            sigmas[0] as f64,
            &noise,
            &latent,
            ms.is_max_denoise(sigmas[0] as f64),
        )
        .expect("scale");
    let mut model = Analytic {
        mu_cond: fx["mu_cond"].clone(),
        mu_uncond: fx["mu_uncond"].clone(),
        cfg,
        calls: 0,
    };
    let mut steps = 0;
    let mut cb = |_: StepInfo<'_>| {
        steps += 1;
        Ok(())
    };
    let out = sampler
        .sample(&mut model, &x, sigmas, seed, &mut cb)
        .expect("sampling runs");
    (out, steps)
}

#[test]
fn initial_noise_matches_fixture() {
    let fx = load();
    let noise = prepare_noise(&[1, 4, 8, 8], 42, None, &Device::Cpu).expect("noise");
    assert_eq!(max_abs(&noise, &fx["noise"]), 0.0);
}

#[test]
fn scheduler_sigmas_match_comfyui() {
    let fx = load();
    let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
    let mut failures = Vec::new();
    let mut worst = 0f64;
    for name in SCHEDULER_NAMES {
        let sched = Scheduler::from_name(name).expect("known scheduler");
        for n in [1usize, 2, 3, 5, 10, 25] {
            let want: Vec<f32> = fx[&format!("sigmas/{name}/{n}")].to_vec1().expect("vec");
            let got = sched.sigmas(&ms, n);
            if got.len() != want.len() {
                failures.push(format!("{name}/{n}: len {} != {}", got.len(), want.len()));
                continue;
            }
            for (g, w) in got.iter().zip(&want) {
                let err = (*g as f64 - *w as f64).abs();
                worst = worst.max(err / (*w as f64).abs().max(1e-3));
                if err > 1e-5 * (*w as f64).abs() + 1e-6 {
                    failures.push(format!("{name}/{n}: got {got:?} want {want:?}"));
                    break;
                }
            }
        }
    }
    println!("worst relative sigma error: {worst:e}");
    assert!(
        failures.is_empty(),
        "scheduler mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn samplers_match_comfyui() {
    let fx = load();
    let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for &sampler in Sampler::ALL {
        let mut worst = 0f32;
        let mut compared = 0;
        for &scheduler in &Scheduler::ALL {
            let key = format!("sample/{}/{}", sampler.name(), scheduler.name());
            let (out, steps) = run(sampler, scheduler, &fx, &ms, CFG);
            assert!(steps > 0, "{key}: callback never ran");
            let Some(want) = fx.get(&key) else {
                failures.push(format!("{key}: missing from fixture"));
                continue;
            };
            let err = max_abs(&out, want);
            compared += 1;
            worst = worst.max(err);
            // FIXME: these pairs miss 1e-5 because torch evaluates the step coefficients in f32 (large
            // cancellations in ipndm_v / lms on linear_quadratic, 2m_cfg_pp, 3m_sde): an f64 run of the
            // same python maths differs from the f32 fixture by the same amount (3.1e-4 for
            // ipndm_v/linear_quadratic, 1.6e-5 lms, 1.7e-5 2m_cfg_pp, 1.1e-5 3m_sde), while we use f64.
            // FIXME: dpm_adaptive's step-size controller starts from error estimates at f32 rounding
            // level (~1e-6), so rounding differences move every later step: the same python maths
            // run in f64 differs from the f32 fixture by 0.6e-3..1.3e-3 (linear_quadratic 2e-6),
            // and we differ from it by at most 7.2e-4. Checked at 2e-3.
            // FIXME: kl_optimal's sigmas come from torch's f32 `tan` (MKL, not correctly rounded),
            // so some differ from ours by an ulp; the SDE samplers' Brownian tree resolves times to
            // 1e-6, where that moves the noise by ~1e-3 of its size. Measured 1.9e-4.
            let sigma_ulp_limited =
                scheduler.name() == "kl_optimal" && sampler.noise_kind() == NoiseKind::Brownian;
            let tol = if sampler.name() == "dpm_adaptive" {
                2e-3
            } else if sigma_ulp_limited || ROUNDING_LIMITED.contains(&key.as_str()) {
                5e-4
            } else {
                1e-5
            };
            if err.is_nan() || err > tol {
                failures.push(format!("{key}: max abs error {err:e}"));
            }
        }
        report.push(format!(
            "{:32} {:>2} pairs  max abs err {:e}",
            sampler.name(),
            compared,
            worst
        ));
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} sampler pairs over 1e-5:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn names_are_comfyui_names_in_order() {
    // SAMPLER_NAMES must be a subsequence of ComfyUI's KSampler.SAMPLERS.
    let mut it = COMFY_SAMPLERS.iter();
    for name in SAMPLER_NAMES {
        assert!(
            it.any(|c| c == name),
            "{name} out of ComfyUI order or unknown"
        );
        assert_eq!(Sampler::from_name(name).expect("parses").name(), *name);
    }
    assert_eq!(
        SAMPLER_NAMES.len(),
        COMFY_SAMPLERS.len(),
        "every ComfyUI sampler is implemented"
    );
    assert!(Sampler::from_name("not_a_sampler").is_err());
}
