//! Times one SD1.5-size UNet step (batch 2, 4x64x64 latent, context 77x768) and one VAE decode to
//! 512x512, with synthetic weights. Compare with tools/parity/unet_vae_bench.py (PyTorch/diffusers,
//! same shapes, same output format).
//!
//! Run: cargo bench --bench unet_vae                      (CPU: f32, bf16, then f16-stored weights)
//!      WEFT_BENCH_DTYPE=bf16 cargo bench --bench unet_vae (CPU: bf16 weights only)
//!      WEFT_BENCH_ONLY=unet cargo bench --bench unet_vae  (only the step, or `vae`: for profiles)
//!      WEFT_BENCH_RUNS=5 cargo bench --bench unet_vae     (the median of 5 timed runs)
//!      WEFT_BENCH_KEEP_MB=0 cargo bench --bench unet_vae  (keep no freed blocks: `allocator`)
//!      WEFT_BENCH_DEVICE=cuda WEFT_BENCH_DTYPE=f16 cargo bench --features cuda --bench unet_vae
//! On the CPU, f16-stored weights are widened per layer and computed in f32; bf16 weights run
//! their convolutions and linear layers as bf16 matmuls with f32 sums (`ops::gemm_bf16`) where
//! that kernel outruns f32 (`gemm_bf16::outruns_f32`: AMX, or AVX512_BF16 off Intel), as the
//! server does, and are widened per layer like f16 elsewhere; compare with
//! `unet_vae_bench.py --channels-last --autocast bf16`. On a GPU each figure is the median of 5
//! runs after one warm-up (the first run loads kernels); on the CPU one run after one warm-up,
//! each taking seconds, unless `WEFT_BENCH_RUNS` says otherwise.
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use weft::engine::device::{compute_dtype, gpu_memory, parse_dtype, DeviceChoice};
use weft::engine::manager::ModelManager;
use weft::engine::ops::gemm_bf16;
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

/// Seconds for `run`, as the median of `runs` after `warmups` (the device synchronised around each).
fn time(
    device: &Device,
    warmups: usize,
    runs: usize,
    mut run: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<f64> {
    for _ in 0..warmups {
        run()?;
    }
    device.synchronize()?;
    let (_, hits0, misses0) = weft::engine::allocator::kept_stats();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = run()?;
        // Reading a value makes sure the work is done before the clock stops.
        let _ = out.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    if device.is_cpu() {
        let (_, hits, misses) = weft::engine::allocator::kept_stats();
        println!(
            "  large blocks per timed run: {} reused, {} from the system",
            (hits - hits0) / runs as u64,
            (misses - misses0) / runs as u64
        );
    }
    Ok(times[times.len() / 2])
}

fn main() -> anyhow::Result<()> {
    // The bf16 rows measure what `--dtype bf16` runs in the server: the bf16 kernels where they
    // outrun f32 arithmetic, else bf16 weights widened per layer.
    if gemm_bf16::outruns_f32() {
        gemm_bf16::enable();
    }
    let choice: DeviceChoice = std::env::var("WEFT_BENCH_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .map_err(anyhow::Error::msg)?;
    let device = choice.open()?;
    let dtypes = match std::env::var("WEFT_BENCH_DTYPE") {
        Ok(d) => vec![choice.check_dtype(parse_dtype(&d).map_err(anyhow::Error::msg)?)?],
        Err(_) if device.is_cpu() => vec![DType::F32, DType::BF16, DType::F16],
        Err(_) => vec![DType::F32],
    };
    let runs = match std::env::var("WEFT_BENCH_RUNS") {
        Ok(n) => n
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| anyhow::anyhow!("WEFT_BENCH_RUNS={n}: expected a count of runs"))?,
        Err(_) if device.is_cpu() => 1,
        Err(_) => 5,
    };
    let warmups = 1;
    if let Ok(mb) = std::env::var("WEFT_BENCH_KEEP_MB") {
        let mb: usize = mb
            .parse()
            .map_err(|_| anyhow::anyhow!("WEFT_BENCH_KEEP_MB={mb}: expected MiB"))?;
        weft::engine::allocator::set_kept_limit(mb << 20);
    }
    if let Ok(mb) = std::env::var("WEFT_BENCH_SPARE_MB") {
        let mb: usize = mb
            .parse()
            .map_err(|_| anyhow::anyhow!("WEFT_BENCH_SPARE_MB={mb}: expected MiB"))?;
        weft::engine::allocator::set_kept_spare(mb << 20);
    }
    match choice {
        DeviceChoice::Cpu => println!(
            "device: cpu ({} threads), weights {dtypes:?}, bf16 matmul kernel: {}",
            candle_core::utils::get_num_threads(),
            if gemm_bf16::available() {
                gemm_bf16::kernel_name()
            } else {
                "none (bf16 weights widen to f32)"
            }
        ),
        other => println!("device: {other}, dtype {dtypes:?}"),
    }

    let only = std::env::var("WEFT_BENCH_ONLY").ok();
    let (unet_on, vae_on) = match only.as_deref() {
        None => (true, true),
        Some("unet") => (true, false),
        Some("vae") => (false, true),
        Some(other) => anyhow::bail!("WEFT_BENCH_ONLY={other}: expected `unet` or `vae`"),
    };
    let mut steps = Vec::new();
    for &dtype in dtypes.iter().filter(|_| unet_on) {
        let compute = compute_dtype(&device, dtype);
        let t0 = Instant::now();
        let unet =
            UNet2DConditionModel::new(synth_var_builder(dtype, &device), &UNetConfig::sd15())?;
        println!(
            "unet build ({dtype:?} synthetic weights): {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        let x = Tensor::randn(0f32, 1.0, (2, 4, 64, 64), &device)?.to_dtype(compute)?;
        let t = Tensor::new(&[999f32, 999.0], &device)?;
        let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), &device)?.to_dtype(compute)?;
        let secs = time(&device, warmups, runs, || {
            unet.forward(&x, &t, &ctx, None, None)
        })?;
        println!("unet step sd15 batch 2 64x64, {dtype:?} weights: {secs:.3} s");
        steps.push((dtype, secs));
    }
    let step_of = |wanted| steps.iter().find(|(d, _)| *d == wanted).map(|&(_, s)| s);
    if let (Some(f32_step), true) = (step_of(DType::F32), device.is_cpu()) {
        for other in [DType::BF16, DType::F16] {
            if let Some(secs) = step_of(other) {
                println!("{other:?} / F32 unet step: {:.3}x", secs / f32_step);
            }
        }
    }

    // On the CPU each VAE row runs in the dtype the server would give it (`vae_dtype`: f32
    // unless bf16 weights meet the bf16 kernel; f16 is kept out of VAEs).
    let vae_dtypes: Vec<DType> = if device.is_cpu() {
        let mut v: Vec<DType> = dtypes
            .iter()
            .map(|&d| ModelManager::new(0, device.clone(), d).vae_dtype())
            .collect();
        v.sort_by_key(|d| *d != DType::F32);
        v.dedup();
        v
    } else {
        vec![dtypes[0]]
    };
    for dtype in vae_dtypes.into_iter().filter(|_| vae_on) {
        let vae = AutoEncoderKL::new(synth_var_builder(dtype, &device), &VaeConfig::sd())?;
        let z = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), &device)?.to_dtype(vae.dtype())?;
        let secs = time(&device, warmups, runs, || vae.decode(&z))?;
        println!("vae decode 512x512, {dtype:?} weights: {secs:.3} s");
    }
    let (kept, hits, misses) = weft::engine::allocator::kept_stats();
    println!(
        "allocator: {hits} large blocks reused, {misses} from the system, {:.0} MiB kept at the end",
        kept as f64 / (1 << 20) as f64
    );
    match peak_rss_mib() {
        Some(mib) => println!("peak rss: {mib:.0} MiB"),
        None => println!("peak rss: unavailable"),
    }
    if let Some((total, free)) = gpu_memory(&device) {
        println!(
            "gpu memory in use at the end: {:.0} MiB",
            (total - free) as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
