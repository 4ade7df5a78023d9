//! CPU speed of a 4x ESRGAN/RRDBNet (nf=64, nb=23, gc=32: RealESRGAN_x4plus's shape) on one
//! 128x128 image, f32, through `UpscaleModel::upscale` (what each ImageUpscaleWithModel tile
//! runs). The PyTorch side is `tools/parity/upscale_bench.py`, which also writes the random
//! weights this loads (`WEFT_UPSCALE_BENCH_MODEL`, default
//! /tmp/weft-upscale-bench/rrdb_x4_64_23.safetensors); without that file the weights are
//! synthetic (`engine::synth`), the same shapes and scale.
//!
//! Run: cargo bench --bench upscale [-- RUNS]
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use weft::engine::synth::synth_var_builder;
use weft::engine::upscale::detect::Architecture;
use weft::engine::upscale::{esrgan, UpscaleModel};

/// CPU seconds this process has used, all threads (Linux `/proc/self/stat` utime + stime, at
/// the usual 100 ticks a second); 0 elsewhere. On a shared machine the wall time depends on the
/// other load, this does not.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let device = Device::Cpu;
    let path = std::env::var_os("WEFT_UPSCALE_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/weft-upscale-bench/rrdb_x4_64_23.safetensors"));
    let (model, weights) = if path.exists() {
        (
            UpscaleModel::load_file(&path, DType::F32, &device)?,
            path.display().to_string(),
        )
    } else {
        let shape = Architecture::Esrgan(esrgan::Config {
            in_channels: 3,
            out_channels: 3,
            num_feat: 64,
            num_block: 23,
            num_grow: 32,
            upsamples: 2,
            unshuffle: None,
            plus: false,
        });
        (
            UpscaleModel::new(synth_var_builder(DType::F32, &device), &shape)?,
            "synthetic".to_string(),
        )
    };
    let image = Tensor::rand(0f32, 1.0, (1, 3, 128, 128), &device)?;
    let _ = model.upscale(&image)?; // warm-up
    let mut times = Vec::with_capacity(runs);
    let mut dims = Vec::new();
    let cpu0 = cpu_seconds();
    for _ in 0..runs {
        let t0 = Instant::now();
        // The CPU computes synchronously; the result is on the host when this returns.
        let out = model.upscale(&image)?;
        times.push(t0.elapsed().as_secs_f64());
        dims = out.dims().to_vec();
    }
    let cpu = (cpu_seconds() - cpu0) / runs as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let list: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    println!(
        "weft cpu f32 ({weights}): {} 128x128 -> {dims:?}: median {:.2} s over {runs} runs ({}); \
         {cpu:.1} CPU s per run",
        model.describe(),
        sorted[sorted.len() / 2],
        list.join(", ")
    );
    Ok(())
}
