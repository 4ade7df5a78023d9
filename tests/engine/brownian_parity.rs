//! Parity of the Brownian-tree noise of the SDE samplers with torchsde 0.2.6 and ComfyUI's
//! `BrownianTreeNoiseSampler`, against `tools/parity/brownian_reference.py`
//! (`tests/fixtures/sampling/brownian_reference.safetensors`; its docstring lists the cases).
//! Tolerances: every increment and every noise draw within 1e-6 of torch's f32 (they are expected to
//! be bit-identical); final latents of dpmpp_sde / dpmpp_2m_sde / dpmpp_3m_sde on the analytic
//! denoiser of sampler_parity.rs within 1e-4 (our step coefficients are f64, torch's f32).
use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::engine::sampler_parity::{self, max_abs, run_analytic, CFG};
use weft::engine::sampling::brownian::{BrownianNoise, BrownianTree};
use weft::engine::sampling::model_sampling::{Config, ModelSamplingDiscrete};
use weft::engine::sampling::samplers::Sampler;
use weft::engine::sampling::schedulers::{ksampler_sigmas, Scheduler};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sampling/brownian_reference.safetensors"
);

struct Case {
    kind: String,
    t0: f32,
    t1: f32,
    shape: Vec<usize>,
    seeds: Vec<u64>,
}

fn load() -> (HashMap<String, Tensor>, HashMap<String, Case>) {
    let bytes = std::fs::read(FIXTURE).expect("fixture readable");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("fixture header");
    let meta = meta.metadata().clone().unwrap_or_default();
    let cases: serde_json::Value = serde_json::from_str(&meta["cases"]).expect("cases json");
    let cases = cases
        .as_object()
        .expect("cases object")
        .iter()
        .map(|(name, c)| {
            let ints = |k: &str| -> Vec<u64> {
                c[k].as_array()
                    .expect("int list")
                    .iter()
                    .map(|v| v.as_u64().expect("u64"))
                    .collect()
            };
            let case = Case {
                kind: c["kind"].as_str().expect("kind").to_string(),
                t0: c["t0"].as_f64().expect("t0") as f32,
                t1: c["t1"].as_f64().expect("t1") as f32,
                shape: ints("shape").into_iter().map(|v| v as usize).collect(),
                seeds: ints("seeds"),
            };
            (name.clone(), case)
        })
        .collect();
    let tensors = candle_core::safetensors::load(FIXTURE, &Device::Cpu).expect("fixture loads");
    (tensors, cases)
}

/// Replays a case's queries; returns one flat vector per query.
fn replay(case: &Case, queries: &[Vec<f32>]) -> Vec<Vec<f32>> {
    if case.kind == "tree" {
        let numel = case.shape.iter().product();
        let mut tree = BrownianTree::new(case.t0, case.t1, numel, case.seeds[0]);
        return queries.iter().map(|q| tree.increment(q[0], q[1])).collect();
    }
    let mut noise = if case.seeds.len() > 1 {
        BrownianNoise::per_item(&case.shape, case.t0, case.t1, &case.seeds)
            .expect("one seed per item")
    } else {
        BrownianNoise::new(&case.shape, case.t0, case.t1, case.seeds[0])
    };
    queries.iter().map(|q| noise.sample(q[0], q[1])).collect()
}

#[test]
fn increments_match_torchsde() {
    let (fx, cases) = load();
    assert!(cases.len() >= 30, "fixture has its cases");
    let (mut worst, mut differing, mut total) = (0f32, 0usize, 0usize);
    let mut failures = Vec::new();
    for (name, case) in &cases {
        let queries: Vec<Vec<f32>> = fx[&format!("{name}/queries")].to_vec2().expect("queries");
        let want = fx[&format!("{name}/out")]
            .flatten_from(1)
            .and_then(|t| t.to_vec2::<f32>())
            .expect("out");
        let got = replay(case, &queries);
        let mut case_worst = 0f32;
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), w.len(), "{name}: size");
            for (a, b) in g.iter().zip(w) {
                let d = (a - b).abs();
                differing += usize::from(a.to_bits() != b.to_bits());
                total += 1;
                case_worst = case_worst.max(if d.is_nan() { f32::INFINITY } else { d });
            }
        }
        worst = worst.max(case_worst);
        if case_worst > 1e-6 {
            failures.push(format!("{name}: max abs diff {case_worst:e}"));
        }
    }
    println!(
        "{} cases, {total} values: {differing} not bit-identical, max abs diff {worst:e}",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sde_samplers_match_comfyui_end_to_end() {
    let (fx, _) = load();
    let base = sampler_parity::load();
    let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
    let mut failures = Vec::new();
    let mut worst = 0f32;
    for (key, want) in fx.iter().filter(|(k, _)| k.starts_with("sample/")) {
        let parts: Vec<&str> = key.split('/').collect();
        let [_, sampler, scheduler, steps, seed] = parts[..] else {
            panic!("bad key {key}");
        };
        let sampler = Sampler::from_name(sampler).expect("sampler");
        let scheduler = Scheduler::from_name(scheduler).expect("scheduler");
        let steps: usize = steps.parse().expect("steps");
        let seed: u64 = seed.parse().expect("seed");
        let sigmas = ksampler_sigmas(&ms, scheduler, sampler.name(), steps, 1.0);
        let (out, _) = run_analytic(sampler, &sigmas, seed, &base, &ms, CFG);
        let err = max_abs(&out, want);
        worst = worst.max(err);
        if err.is_nan() || err > 1e-4 {
            failures.push(format!("{key}: max abs error {err:e}"));
        }
    }
    println!("end to end: max abs error {worst:e}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
