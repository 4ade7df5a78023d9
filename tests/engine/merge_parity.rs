//! Model merging and LoRA extraction parity with ComfyUI.
//!
//! Reference: tools/parity/model_merging_reference.py (regenerate with
//! `/tmp/peer-venv/bin/python tools/parity/model_merging_reference.py`), a transcription of
//! ComfyUI's merge nodes (`add_patches` with their strengths, ModelMergeBlocks' prefix rule) and of
//! `calculate_weight`'s whole-weight patch, and `torch.linalg.svd` / `torch.quantile` for LoRA
//! extraction. Tolerances: merged f32 weights 1e-6, f16 ones exact (both round once from f32),
//! except after a stacked patch (Weft stores the patched weight before merging: one f16 ulp);
//! rank-r products 1e-4.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use weft::engine::merge::extract::{low_rank_factors, quantile, CLAMP_QUANTILE};
use weft::engine::merge::{block_strength, merge, MergeStrength};

use crate::engine::util::max_abs_diff;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model_merging")
        .join(name)
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).unwrap()
}

fn part(all: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    all.iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(prefix)?.to_string(), t.clone())))
        .collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    max_abs_diff(&f(a), &f(b))
}

#[test]
fn merges_match_comfyui() {
    let inputs = load("inputs.safetensors");
    let expected = load("expected.safetensors");
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap();
    let model1 = part(&inputs, "model1/");
    let model2 = part(&inputs, "model2/");
    for (name, case) in cases.as_object().unwrap() {
        let mut base = model1.clone();
        let mut tolerance = 1e-6f32;
        if let Some(patch) = case.get("model1_patch") {
            // A whole-weight patch applied before the merge (a LoRA, in Weft stored first).
            let key = patch[0].as_str().unwrap();
            let (patched, _) = merge(&base, &part(&inputs, "patch/"), |k| {
                if k == key {
                    MergeStrength {
                        model: 1.0,
                        patch: patch[1].as_f64().unwrap(),
                    }
                } else {
                    MergeStrength::ratio(1.0)
                }
            })
            .unwrap();
            base = patched;
            tolerance = 2e-3;
        }
        let ratios: Vec<(String, f64)> = case
            .get("ratios")
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        let prefixes: Vec<(&str, f64)> = ratios.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let strength = |key: &str| match case["node"].as_str().unwrap() {
            "ModelMergeSimple" => MergeStrength::ratio(case["ratio"].as_f64().unwrap()),
            "ModelMergeSubtract" => MergeStrength::subtract(case["multiplier"].as_f64().unwrap()),
            "ModelMergeAdd" => MergeStrength::add(),
            _ => MergeStrength::ratio(block_strength(key, &prefixes).unwrap()),
        };
        let (merged, report) = merge(&base, &model2, strength).unwrap();
        assert_eq!(merged.len(), model1.len(), "{name}");
        let expected = part(&expected, &format!("{name}/"));
        assert_eq!(expected.len(), merged.len(), "{name}");
        for (key, want) in &expected {
            let got = &merged[key];
            assert_eq!(got.dtype(), want.dtype(), "{name}/{key}");
            let diff = max_abs(got, want);
            assert!(diff <= tolerance, "{name}/{key}: {diff}");
        }
        if name != "simple_one" {
            assert_eq!(
                report.shape_mismatches,
                vec!["input_blocks.0.0.weight"],
                "{name}"
            );
        }
    }
}

#[test]
fn lora_extraction_matches_torch_svd() {
    let inputs = load("inputs.safetensors");
    let expected = load("expected.safetensors");
    for name in ["linear", "wide", "conv", "decaying"] {
        let diff = &inputs[&format!("diff/{name}")];
        for rank in [4, 64] {
            let (up, down) = low_rank_factors(diff, rank).unwrap();
            let r = up.dim(1).unwrap();
            let product = up
                .reshape((up.dim(0).unwrap(), r))
                .unwrap()
                .matmul(&down.reshape((r, ())).unwrap())
                .unwrap()
                .reshape(diff.dims())
                .unwrap();
            let want = &expected[&format!("svd/{name}/r{rank}")];
            let d = max_abs(&product, want);
            assert!(d < 1e-4, "{name} rank {rank}: {d}");
        }
    }
    let values: Vec<f32> = inputs["quantile/values"].to_vec1().unwrap();
    let want: Vec<f32> = expected["quantile/result"].to_vec1().unwrap();
    let got = quantile(&values, CLAMP_QUANTILE);
    assert!((got - want[0]).abs() < 1e-6, "{got} vs {}", want[0]);
}
