//! GFLOP/s of the bf16 GEMM (`ops::gemm_bf16`) beside candle's f32 matmul, at 4096³ and at the
//! SD1.5 UNet's shapes (batch 2, 512²). Compare with `tools/parity/unet_vae_bench.py --matmul`.
//!
//! With `models` it then times one SD1.5 UNet step (batch 2, 64x64 latent) and one 512² VAE
//! decode with f32 and with bf16 synthetic weights, as the root crate's `benches/unet_vae.rs`
//! does, for machines where only this crate is built in release.
//!
//! Run: cargo bench -p weft-engine --bench gemm_bf16 [-- models | unet | vae] [--no-gemm]
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use weft_engine::ops::gemm_bf16;
use weft_engine::synth::synth_var_builder;
use weft_engine::unet::{UNet2DConditionModel, UNetConfig};
use weft_engine::vae::{AutoEncoderKL, VaeConfig};

/// Seconds of one run after one warm-up.
fn warm(f: impl Fn() -> candle_core::Result<Tensor>) -> candle_core::Result<f64> {
    f()?;
    let t0 = Instant::now();
    let _ = f()?.sum_all()?.to_scalar::<f32>()?;
    Ok(t0.elapsed().as_secs_f64())
}

/// `unet` and/or `vae`: which models to time.
fn models(dev: &Device, unet: bool, vae: bool) -> candle_core::Result<()> {
    let x = Tensor::randn(0f32, 1.0, (2, 4, 64, 64), dev)?;
    let t = Tensor::new(&[999f32, 999.0], dev)?;
    let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), dev)?;
    let z = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), dev)?;
    for dtype in [DType::F32, DType::BF16] {
        if !unet {
            break;
        }
        let unet = UNet2DConditionModel::new(synth_var_builder(dtype, dev), &UNetConfig::sd15())?;
        let secs = warm(|| unet.forward(&x, &t, &ctx, None, None))?;
        println!("unet step sd15 batch 2 64x64, {dtype:?} weights: {secs:.3} s");
    }
    for dtype in [DType::F32, DType::BF16] {
        if !vae {
            break;
        }
        let vae = AutoEncoderKL::new(synth_var_builder(dtype, dev), &VaeConfig::sd())?;
        let secs = warm(|| vae.decode(&z))?;
        println!("vae decode 512x512, {dtype:?} weights: {secs:.3} s");
    }
    Ok(())
}

/// Best seconds of `runs` after one warm-up.
fn best(
    runs: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = f()?;
        let _ = out.dims();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> candle_core::Result<()> {
    gemm_bf16::enable();
    let dev = Device::Cpu;
    let args: Vec<String> = std::env::args().collect();
    let only_models = args.iter().any(|a| a == "--no-gemm");
    println!(
        "threads {}, bf16 kernel: {}",
        candle_core::utils::get_num_threads(),
        gemm_bf16::kernel_name()
    );
    // (label, m, k, n): C[m, n] = A[m, k] B[k, n]; A is the weight for convolutions.
    let shapes = [
        ("square 4096", 4096, 4096, 4096),
        ("conv3x3 320 @64² (im2col chunk)", 320, 2880, 4096),
        ("conv3x3 640 @32²x2", 640, 5760, 2048),
        ("conv3x3 1280 @8²x2", 1280, 11520, 128),
        ("linear 8192x320->320", 8192, 320, 320),
        ("linear ff 8192x320->2560", 8192, 320, 2560),
        ("linear ff 2048x640->5120", 2048, 640, 5120),
    ];
    for (label, m, k, n) in shapes.into_iter().filter(|_| !only_models) {
        let flops = 2.0 * (m * k * n) as f64;
        let runs = if flops > 1e11 { 2 } else { 5 };
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (k, n), &dev)?;
        let f32_s = best(runs, || a.matmul(&b))?;
        // Weights packed once (as the layers keep them), activations packed per call from f32.
        let packed_a = gemm_bf16::pack_lhs(&a.to_dtype(DType::BF16)?)?;
        let bf16_s = best(runs, || gemm_bf16::matmul_packed_lhs(&packed_a, &b))?;
        // Both operands bf16 and packed per call, as a torch bf16 matmul.
        let (a16, b16) = (a.to_dtype(DType::BF16)?, b.to_dtype(DType::BF16)?);
        let both_s = best(runs, || gemm_bf16::matmul(&a16, &b16))?;
        let g = |s: f64| flops / s / 1e9;
        println!(
            "{label:34} {m}x{k}x{n}: f32 {:6.1} GFLOP/s, bf16 (packed weight) {:6.1}, bf16 (both per call) {:6.1}",
            g(f32_s),
            g(bf16_s),
            g(both_s)
        );
    }
    let asked = |name: &str| args.iter().any(|a| a == name || a == "models");
    if asked("unet") || asked("vae") {
        models(&dev, asked("unet"), asked("vae"))?;
    }
    Ok(())
}
