//! Bit-exact parity of the torch-compatible generator.
//!
//! Numbers come from `sampling/scripts/rng_reference.py` (torch `manual_seed` + `randn` on the CPU, and
//! ComfyUI's `comfy/sample.py prepare_noise`), for torch's x86 SIMD kernel and its DEFAULT kernel.
//! Tolerance: none, every f32 must have the same bits.
use std::collections::HashMap;

use candle_core::{Device, Tensor};
use weft::engine::sampling::rng::{prepare_noise, NormalKernel, TorchGenerator};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sampling/rng_reference.safetensors"
);

fn load() -> (HashMap<String, Vec<f32>>, HashMap<String, String>) {
    let bytes = std::fs::read(FIXTURE).expect("fixture readable");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("fixture header");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture parses");
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(name, v);
    }
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn fnv1a64(values: &[f32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in values {
        for b in v.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32 tensor")
}

/// Counts bit mismatches, returning (mismatches, max abs diff).
fn compare(got: &[f32], want: &[f32]) -> (usize, f32) {
    assert_eq!(got.len(), want.len());
    let mut bad = 0;
    let mut max = 0f32;
    for (a, b) in got.iter().zip(want) {
        if a.to_bits() != b.to_bits() {
            bad += 1;
            max = max.max((a - b).abs());
        }
    }
    (bad, max)
}

#[test]
fn randn_is_bit_identical_to_torch() {
    let (tensors, meta) = load();
    let dev = Device::Cpu;
    let mut failures = Vec::new();
    let check = |failures: &mut Vec<String>,
                 name: String,
                 got: &[f32],
                 tensors: &HashMap<String, Vec<f32>>| {
        let Some(want) = tensors.get(&name) else {
            failures.push(format!("{name}: missing from fixture"));
            return;
        };
        let (bad, max) = compare(got, want);
        if bad > 0 {
            failures.push(format!(
                "{name}: {bad}/{} values differ, max abs {max:e}",
                want.len()
            ));
        }
    };
    for (kernel, tag) in [
        (NormalKernel::X86Simd, "x86simd"),
        (NormalKernel::Scalar, "scalar"),
    ] {
        for seed in [0u64, 42, u64::MAX] {
            let p = format!("{tag}/seed{seed}");
            let mut g = TorchGenerator::with_kernel(seed, kernel);
            check(
                &mut failures,
                format!("{p}/1x4x8x8"),
                &g.randn_vec_f32(256),
                &tensors,
            );
            let big = TorchGenerator::with_kernel(seed, kernel).randn_vec_f32(2 * 4 * 64 * 64);
            check(
                &mut failures,
                format!("{p}/2x4x64x64/head"),
                &big[..256],
                &tensors,
            );
            check(
                &mut failures,
                format!("{p}/2x4x64x64/tail"),
                &big[big.len() - 64..],
                &tensors,
            );
            let want_sum = meta
                .get(&format!("{p}/2x4x64x64/fnv1a64"))
                .cloned()
                .unwrap_or_default();
            if fnv1a64(&big).to_string() != want_sum {
                failures.push(format!(
                    "{p}/2x4x64x64: checksum {} != {want_sum}",
                    fnv1a64(&big)
                ));
            }
            for n in [1usize, 3, 15, 16, 17, 37] {
                check(
                    &mut failures,
                    format!("{p}/n{n}"),
                    &TorchGenerator::with_kernel(seed, kernel).randn_vec_f32(n),
                    &tensors,
                );
            }
            let mut g = TorchGenerator::with_kernel(seed, kernel);
            let mut chain = g.randn_vec_f32(3);
            chain.extend(g.randn_vec_f32(3));
            chain.extend(g.randn_vec_f32(20));
            check(&mut failures, format!("{p}/chain3_3_20"), &chain, &tensors);
            if kernel == NormalKernel::X86Simd {
                // prepare_noise always uses the default (x86) kernel.
                let t = prepare_noise(&[1, 4, 8, 8], seed, None, &dev).expect("noise");
                check(&mut failures, format!("{p}/1x4x8x8"), &flat(&t), &tensors);
                let t = prepare_noise(&[3, 4, 2, 2], seed, Some(&[2, 0, 2]), &dev).expect("noise");
                check(
                    &mut failures,
                    format!("{p}/batch_index_3x4x2x2_2_0_2"),
                    &flat(&t),
                    &tensors,
                );
                let t = prepare_noise(&[2, 1, 1, 3], seed, Some(&[1, 3]), &dev).expect("noise");
                check(
                    &mut failures,
                    format!("{p}/batch_index_2x1x1x3_1_3"),
                    &flat(&t),
                    &tensors,
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "rng parity failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn prepare_noise_rejects_mismatched_batch_index() {
    let err = prepare_noise(&[2, 4, 8, 8], 0, Some(&[0]), &Device::Cpu);
    assert!(err.is_err());
}
