//! Per-step sampler overhead without the model: an identity-cost denoiser (returns precomputed
//! tensors) on a [2,4,128,128] latent, 20 karras steps. Run with
//! `cargo run --release -p wip-sampling --example bench_sampler`.
use std::time::Instant;

use candle_core::{Device, Tensor};
use weft::engine::sampling::model_sampling::{Config, ModelSamplingDiscrete};
use weft::engine::sampling::rng::prepare_noise;
use weft::engine::sampling::samplers::{Denoised, Denoiser, Sampler, StepInfo};
use weft::engine::sampling::schedulers::{ksampler_sigmas, Scheduler};

struct Fixed(Tensor);
impl Denoiser for Fixed {
    fn denoise(&mut self, _x: &Tensor, _sigma: f64) -> candle_core::Result<Denoised> {
        Ok(Denoised {
            cond: self.0.clone(),
            uncond: Some(self.0.clone()),
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let shape = [2usize, 4, 128, 128];
    let ms = ModelSamplingDiscrete::new(&Config::sd_eps());
    let t = Instant::now();
    let noise = prepare_noise(&shape, 42, None, &dev)?;
    println!(
        "prepare_noise [2,4,128,128]: {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut model = Fixed(noise.affine(0.1, 0.0)?);
    for name in [
        "euler",
        "euler_ancestral",
        "heun",
        "dpmpp_2m",
        "dpmpp_2m_sde",
        "dpmpp_3m_sde",
        "ipndm_v",
        "seeds_3",
    ] {
        let sampler = Sampler::from_name(name)?;
        let sigmas = ksampler_sigmas(&ms, Scheduler::Karras, name, 20, 1.0);
        let x = ms.noise_scaling(sigmas[0] as f64, &noise, &noise.zeros_like()?, true)?;
        let t = Instant::now();
        let mut cb = |_: StepInfo<'_>| Ok(());
        let _ = sampler.sample(&mut model, &x, &sigmas, 42, &mut cb)?;
        let ms_per_step = t.elapsed().as_secs_f64() * 1e3 / 20.0;
        println!("{name:16} {ms_per_step:7.3} ms/step (excluding the model)");
    }
    Ok(())
}
