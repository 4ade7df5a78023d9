//! Times one SD1.5-size UNet step (batch 2, 4x64x64 latent, context 77x768) and one VAE decode to
//! 512x512 on the CPU, with synthetic weights, f32. Compare with tools/parity/unet_vae_bench.py
//! (PyTorch/diffusers, same shapes, same output format).
//!
//! Run: cargo bench --bench unet_vae
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use weft::engine::synth::synth_var_builder;
use weft::engine::unet::{UNet2DConditionModel, UNetConfig};
use weft::engine::vae::{AutoEncoderKL, VaeConfig};

/// Peak resident set size in MiB (Linux `VmHWM`), if readable.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> candle_core::Result<()> {
    let device = Device::Cpu;
    let threads = candle_core::utils::get_num_threads();
    println!("device: cpu ({threads} threads), dtype f32");

    let t0 = Instant::now();
    let unet =
        UNet2DConditionModel::new(synth_var_builder(DType::F32, &device), &UNetConfig::sd15())?;
    println!(
        "unet build (synthetic weights): {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let x = Tensor::randn(0f32, 1.0, (2, 4, 64, 64), &device)?;
    let t = Tensor::new(&[999f32, 999.0], &device)?;
    let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), &device)?;
    let t0 = Instant::now();
    let out = unet.forward(&x, &t, &ctx, None, None)?;
    // CPU ops are synchronous; reading a value makes sure the work is done before the clock stops.
    let _ = out.sum_all()?.to_scalar::<f32>()?;
    println!(
        "unet step sd15 batch 2 64x64: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    drop(unet);

    let vae = AutoEncoderKL::new(synth_var_builder(DType::F32, &device), &VaeConfig::sd())?;
    let z = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), &device)?;
    let t0 = Instant::now();
    let img = vae.decode(&z)?;
    let _ = img.sum_all()?.to_scalar::<f32>()?;
    println!("vae decode 512x512: {:.2} s", t0.elapsed().as_secs_f64());
    match peak_rss_mib() {
        Some(mib) => println!("peak rss: {mib:.0} MiB"),
        None => println!("peak rss: unavailable"),
    }
    Ok(())
}
