//! Per-op CPU timings at the hot shapes of the SD1.5 UNet step (batch 2, 64x64 latent) and the
//! VAE decode to 512x512, f32: candle's generic op next to Weft's own (`weft::engine::ops`).
//!
//! Run: cargo bench --bench ops [-- FILTER]
use std::time::Instant;

use candle_core::{Device, Module, Result, Tensor};

/// Median wall time of `f` in milliseconds over `runs` runs after one warm-up.
fn time_ms(runs: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    let _ = f()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = f()?;
        // CPU ops are synchronous; touching the result keeps the work from being skipped.
        let _ = out.dims();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn report(name: &str, candle_ms: f64, weft_ms: Option<f64>) {
    match weft_ms {
        Some(w) => println!(
            "{name:<44} candle {candle_ms:>9.1} ms   weft {w:>9.1} ms   x{:.2}",
            candle_ms / w
        ),
        None => println!("{name:<44} candle {candle_ms:>9.1} ms"),
    }
}

fn runs_for(elems: usize) -> usize {
    if elems > 20_000_000 {
        1
    } else {
        3
    }
}

/// A random input `(b, c_in, hw, hw)`, a `k x k` weight scaled as a trained one's and a bias.
fn conv_operands(
    dev: &Device,
    b: usize,
    c_in: usize,
    c_out: usize,
    hw: usize,
    k: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    Ok((
        Tensor::randn(0f32, 1.0, (b, c_in, hw, hw), dev)?,
        (Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), dev)? * 0.02)?,
        Tensor::randn(0f32, 1.0, c_out, dev)?,
    ))
}

fn conv(
    dev: &Device,
    b: usize,
    c_in: usize,
    c_out: usize,
    hw: usize,
    k: usize,
    stride: usize,
) -> Result<()> {
    let (x, w, bias) = conv_operands(dev, b, c_in, c_out, hw, k)?;
    let cfg = candle_nn::Conv2dConfig {
        padding: k / 2,
        stride,
        ..Default::default()
    };
    let runs = runs_for(b * c_in * hw * hw * k * k);
    let reference = candle_nn::Conv2d::new(w.clone(), Some(bias.clone()), cfg);
    let candle_ms = time_ms(runs, || reference.forward(&x))?;
    let ours = weft::engine::ops::conv::Conv2d::new(w, Some(bias), cfg);
    let weft_ms = time_ms(runs, || ours.forward(&x))?;
    report(
        &format!("conv{k}x{k}/s{stride} ({b},{c_in},{hw},{hw})->{c_out}"),
        candle_ms,
        Some(weft_ms),
    );
    Ok(())
}

/// Weft's f32 3x3 convolution alone at the shapes that run as Winograd per call, as the direct
/// form's GFLOP/s (`WEFT_WINOGRAD=off` times the direct form itself).
fn conv_f32(dev: &Device, b: usize, c_in: usize, c_out: usize, hw: usize) -> Result<()> {
    let (x, w, bias) = conv_operands(dev, b, c_in, c_out, hw, 3)?;
    let cfg = candle_nn::Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let ours = weft::engine::ops::conv::Conv2d::new(w, Some(bias), cfg);
    let ms = time_ms(5, || ours.forward(&x))?;
    let gflop = 2.0 * (b * c_out * c_in * 9 * hw * hw) as f64 / 1e9;
    println!(
        "{:<44} weft {ms:>9.1} ms ({:.0} GFLOP/s direct-equivalent)",
        format!("conv3x3 ({b},{c_in},{hw},{hw})->{c_out}"),
        gflop / ms * 1e3
    );
    Ok(())
}

/// The same convolution with bf16 weights (`--dtype bf16`: bf16 products, f32 sums) next to f32.
fn conv_bf16(dev: &Device, b: usize, c_in: usize, c_out: usize, hw: usize, k: usize) -> Result<()> {
    let (x, w, bias) = conv_operands(dev, b, c_in, c_out, hw, k)?;
    let cfg = candle_nn::Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    let runs = runs_for(b * c_in * hw * hw * k * k).max(3);
    let f32_conv = weft::engine::ops::conv::Conv2d::new(w.clone(), Some(bias.clone()), cfg);
    let f32_ms = time_ms(runs, || f32_conv.forward(&x))?;
    let bf16_conv = weft::engine::ops::conv::Conv2d::new(
        w.to_dtype(candle_core::DType::BF16)?,
        Some(bias),
        cfg,
    );
    let bf16_ms = time_ms(runs, || bf16_conv.forward(&x))?;
    let gflop = 2.0 * (b * c_out * c_in * k * k * hw * hw) as f64 / 1e9;
    println!(
        "{:<44} f32 {f32_ms:>9.1} ms   bf16 {bf16_ms:>9.1} ms ({:.0} GFLOP/s, {}) x{:.2}",
        format!("conv{k}x{k} ({b},{c_in},{hw},{hw})->{c_out}"),
        gflop / bf16_ms * 1e3,
        weft::engine::ops::gemm_bf16::kernel_name(),
        f32_ms / bf16_ms
    );
    Ok(())
}

fn group_norm(dev: &Device, b: usize, c: usize, hw: usize) -> Result<()> {
    let x = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?;
    let gamma = Tensor::randn(1f32, 0.1, c, dev)?;
    let beta = Tensor::randn(0f32, 0.1, c, dev)?;
    let reference = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, 32, 1e-5)?;
    let runs = runs_for(b * c * hw * hw);
    let candle_ms = time_ms(runs, || reference.forward(&x)?.silu())?;
    let ours = weft::engine::ops::norm::GroupNorm::new(gamma, beta, c, 32, 1e-5)?;
    let weft_ms = time_ms(runs, || ours.forward_silu(&x))?;
    report(
        &format!("group_norm+silu ({b},{c},{hw},{hw})"),
        candle_ms,
        Some(weft_ms),
    );
    Ok(())
}

fn attention(dev: &Device, bh: usize, n: usize, m: usize, d: usize) -> Result<()> {
    let q = Tensor::randn(0f32, 1.0, (1, bh, n, d), dev)?;
    let k = Tensor::randn(0f32, 1.0, (1, bh, m, d), dev)?;
    let v = Tensor::randn(0f32, 1.0, (1, bh, m, d), dev)?;
    let scale = 1.0 / (d as f64).sqrt();
    let candle_ms = time_ms(1, || {
        let scores = (q.matmul(&k.t()?)? * scale)?;
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)
    })?;
    // Weft's is fast enough to take the median of five.
    let weft_ms = time_ms(5, || {
        weft::engine::ops::attention::scaled_dot_product(&q, &k, &v)
    })?;
    report(
        &format!("attention bh={bh} n={n} m={m} d={d}"),
        candle_ms,
        Some(weft_ms),
    );
    Ok(())
}

/// Weft's attention at `shapes` (bh, n, m, d) in f32, then under `--dtype bf16` (bf16 products
/// on AMX where the CPU has it, f32 softmax): run last, since it turns the bf16 kernels on for
/// the rest of the process.
fn attention_bf16(dev: &Device, shapes: &[(usize, usize, usize, usize)]) -> Result<()> {
    let inputs = shapes
        .iter()
        .map(|&(bh, n, m, d)| {
            Ok((
                Tensor::randn(0f32, 1.0, (1, bh, n, d), dev)?,
                Tensor::randn(0f32, 1.0, (1, bh, m, d), dev)?,
                Tensor::randn(0f32, 1.0, (1, bh, m, d), dev)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // The attention of a layer with bf16 weights multiplies in bf16.
    let weight = Tensor::zeros((1, 1), candle_core::DType::BF16, dev)?;
    let time_all = || -> Result<Vec<f64>> {
        inputs
            .iter()
            .map(|(q, k, v)| {
                time_ms(5, || {
                    weft::engine::ops::attention::scaled_dot_product_in_layer(&weight, q, k, v)
                })
            })
            .collect()
    };
    let f32_ms = time_all()?;
    weft::engine::ops::gemm_bf16::enable();
    let bf16_ms = time_all()?;
    for ((&(bh, n, m, d), f), b) in shapes.iter().zip(f32_ms).zip(bf16_ms) {
        println!(
            "{:<44} f32 {f:>9.1} ms   bf16 {b:>9.1} ms ({}) x{:.2}",
            format!("attention bh={bh} n={n} m={m} d={d}"),
            weft::engine::ops::gemm_bf16::kernel_name(),
            f / b
        );
    }
    Ok(())
}

fn matmul(dev: &Device, m: usize, k: usize, n: usize) -> Result<()> {
    let a = Tensor::randn(0f32, 1.0, (m, k), dev)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), dev)?;
    let ms = time_ms(3, || a.matmul(&b))?;
    let gflops = 2.0 * (m * k * n) as f64 / (ms * 1e6);
    println!("matmul {m}x{k}x{n}: {ms:.1} ms ({gflops:.0} GFLOP/s)");
    Ok(())
}

/// `x [m, k]` by a linear weight `[n, k]`: candle's matmul (gemm's kernels) against the f32
/// kernel of `gemm_bf16` with the weight packed once and `x` packed by each task, as a layer
/// would call it (`matmul_packed_rhs_bias`).
fn linear_f32(dev: &Device, m: usize, k: usize, n: usize) -> Result<()> {
    use weft::engine::ops::gemm_bf16;
    let x = Tensor::randn(0f32, 1.0, (m, k), dev)?;
    let w = Tensor::randn(0f32, 1.0, (n, k), dev)?;
    let candle = time_ms(5, || x.matmul(&w.t()?))?;
    let gflops = |ms: f64| 2.0 * (m * k * n) as f64 / (ms * 1e6);
    let shape = format!(
        "linear f32 {m}x{k} by {n}x{k}: gemm {candle:.1} ms ({:.0} GFLOP/s)",
        gflops(candle)
    );
    // The f32 kernel needs AVX-512F; elsewhere only gemm's figure is printed.
    if !gemm_bf16::f32_available() {
        println!("{shape}, no f32 kernel on this CPU");
        return Ok(());
    }
    let packed = gemm_bf16::pack_rhs_f32(&w.t()?)?;
    let ours = time_ms(5, || gemm_bf16::matmul_packed_rhs_bias(&x, &packed, None))?;
    println!(
        "{shape}, packed f32 kernel {ours:.1} ms ({:.0} GFLOP/s)",
        gflops(ours)
    );
    Ok(())
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let on = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    println!("threads: {}", candle_core::utils::get_num_threads());
    if on("matmul") {
        matmul(&dev, 1024, 1024, 1024)?;
        matmul(&dev, 320, 2880, 4096)?;
    }
    if on("linear") {
        linear_f32(&dev, 8192, 320, 2560)?;
        linear_f32(&dev, 8192, 1280, 320)?;
        linear_f32(&dev, 8192, 320, 320)?;
        linear_f32(&dev, 2048, 640, 5120)?;
    }
    if on("conv") {
        // UNet, batch 2.
        conv(&dev, 2, 320, 320, 64, 3, 1)?;
        conv(&dev, 2, 640, 640, 32, 3, 1)?;
        conv(&dev, 2, 1280, 1280, 16, 3, 1)?;
        conv(&dev, 2, 320, 320, 64, 3, 2)?;
        conv(&dev, 2, 320, 320, 64, 1, 1)?;
        conv(&dev, 2, 4, 320, 64, 3, 1)?;
        // VAE decoder, batch 1.
        conv(&dev, 1, 512, 512, 64, 3, 1)?;
        conv(&dev, 1, 512, 512, 128, 3, 1)?;
        conv(&dev, 1, 256, 256, 256, 3, 1)?;
        conv(&dev, 1, 128, 128, 512, 3, 1)?;
        // The VAE's two largest convolutions, right after upsampling.
        conv(&dev, 1, 512, 512, 256, 3, 1)?;
        conv(&dev, 1, 256, 256, 512, 3, 1)?;
    }
    if on("winograd") {
        // The SD1.5 UNet's 3x3 convolutions at its two upper levels, batch 2 (CFG).
        conv_f32(&dev, 2, 320, 320, 64)?;
        conv_f32(&dev, 2, 960, 320, 64)?;
        conv_f32(&dev, 2, 640, 640, 32)?;
        conv_f32(&dev, 2, 1920, 640, 32)?;
        conv_f32(&dev, 2, 1280, 1280, 32)?;
    }
    if on("upconv") {
        // The VAE's upsampler before its last level: nearest 2x, then a 3x3 conv.
        let x = Tensor::randn(0f32, 1.0, (1, 256, 256, 256), &dev)?;
        let w = (Tensor::randn(0f32, 1.0, (256, 256, 3, 3), &dev)? * 0.02)?;
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let ours = weft::engine::ops::conv::Conv2d::new(w, None, cfg);
        let separate = time_ms(1, || ours.forward(&x.upsample_nearest2d(512, 512)?))?;
        let fused = time_ms(1, || ours.forward_upsampled_2x(&x))?;
        println!(
            "upsample 2x + conv3x3 (1,256,256,256)->256: separate {separate:.1} ms, fused {fused:.1} ms"
        );
    }
    if on("norm") {
        group_norm(&dev, 2, 320, 64)?;
        group_norm(&dev, 2, 1280, 16)?;
        group_norm(&dev, 1, 512, 128)?;
        group_norm(&dev, 1, 128, 512)?;
    }
    if on("attention") {
        // UNet level-0 self-attention (batch 2 x 8 heads, 4096 tokens, 40 wide) and cross-attention.
        attention(&dev, 16, 4096, 4096, 40)?;
        attention(&dev, 16, 4096, 77, 40)?;
        // Level 1 (1024 tokens, 80 wide).
        attention(&dev, 16, 1024, 1024, 80)?;
        // VAE mid-block attention at 64x64 (one head, 512 wide).
        attention(&dev, 1, 4096, 4096, 512)?;
    }
    if on("geglu") {
        // The feed-forward gate of the UNet's first level: 2 x 4096 rows of 2 x 1280.
        for dtype in [candle_core::DType::F32, candle_core::DType::BF16] {
            let h = Tensor::randn(0f32, 1.0, (2, 4096, 2560), &dev)?.to_dtype(dtype)?;
            let candle = time_ms(5, || {
                h.narrow(2, 0, 1280)? * h.narrow(2, 1280, 1280)?.gelu_erf()?
            })?;
            let ours = time_ms(5, || weft::engine::ops::geglu::geglu(&h))?;
            report(
                &format!("geglu (2,4096,2x1280) {dtype:?}"),
                candle,
                Some(ours),
            );
        }
    }
    // Last: these turn the bf16 kernels on for the rest of the process.
    if on("bf16attention") {
        attention_bf16(
            &dev,
            &[
                (16, 4096, 4096, 40),
                (16, 4096, 77, 40),
                (16, 1024, 1024, 80),
                (1, 4096, 4096, 512),
            ],
        )?;
    }
    if on("bf16conv") {
        weft::engine::ops::gemm_bf16::enable();
        conv_bf16(&dev, 2, 320, 320, 64, 3)?;
        conv_bf16(&dev, 2, 640, 640, 32, 3)?;
        conv_bf16(&dev, 2, 1280, 1280, 8, 3)?;
        conv_bf16(&dev, 2, 320, 320, 64, 1)?;
        conv_bf16(&dev, 1, 512, 512, 64, 3)?;
        conv_bf16(&dev, 1, 256, 256, 256, 3)?;
        conv_bf16(&dev, 1, 128, 128, 512, 3)?;
    }
    Ok(())
}
