//! Times applying a rank-32 kohya-style LoRA (LDM names, every attention, feed-forward and
//! projection matrix of the transformer blocks, alpha 16) to a full-size SDXL UNet with synthetic
//! f16 weights on the CPU, and reports the memory the patching takes beyond its result.
//!
//! Run: cargo bench --bench lora   (about 10 GB of RAM)
//!
//! The patched map shares every unpatched tensor with the base map, so its new tensors are the
//! patched layers only; the peak RSS during `apply` minus those is the transient working memory
//! (one layer in f32 plus its product at a time).
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use weft::engine::lora::keys::unet_diffusers_to_ldm;
use weft::engine::lora::{apply, Component, KeyMap, LoraFile, TextEncoderWeights, UnetWeights};
use weft::engine::synth::{synth_tensor, SynthBackend};
use weft::engine::unet::{UNet2DConditionModel, UNetConfig};

const RANK: usize = 32;

/// A `/proc/self/status` field in MiB (Linux), if readable.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS (Linux `clear_refs`).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<HashMap<String, Tensor>>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = SynthBackend.get(s, name, h, dtype, dev)?;
        if let Ok(mut map) = self.0.lock() {
            map.insert(name.to_string(), t.clone());
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        SynthBackend.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    let threads = candle_core::utils::get_num_threads();
    println!("device: cpu ({threads} threads), base weights f16, patch maths f32");

    let t0 = Instant::now();
    let recorder = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F16, device.clone());
    let cfg = UNetConfig::sdxl_base();
    drop(UNet2DConditionModel::new(vb, &cfg)?);
    let unet: HashMap<String, Tensor> = recorder
        .0
        .lock()
        .map_err(|_| "recorder poisoned")?
        .drain()
        .collect();
    let params: usize = unet.values().map(|t| t.elem_count()).sum();
    println!(
        "sdxl unet: {:.0}M parameters in {} tensors, synthesised in {:.1} s",
        params as f64 / 1e6,
        unet.len(),
        t0.elapsed().as_secs_f64()
    );

    // A kohya SDXL LoRA: LDM names, every 2-d matrix of the attentions.
    let up_has_attention = |level: usize| level < 2;
    let mut lora = HashMap::new();
    let mut keys: Vec<&String> = unet.keys().collect();
    keys.sort();
    for key in keys {
        let t = &unet[key];
        if !key.contains(".attentions.") || t.rank() != 2 || !key.ends_with(".weight") {
            continue;
        }
        let Some(ldm) = unet_diffusers_to_ldm(key, cfg.layers_per_block, &up_has_attention) else {
            continue;
        };
        let module = format!(
            "lora_unet_{}",
            ldm.trim_end_matches(".weight").replace('.', "_")
        );
        let (out, inp) = (t.dims()[0], t.dims()[1]);
        let down = format!("{module}.lora_down.weight");
        let up = format!("{module}.lora_up.weight");
        lora.insert(
            down.clone(),
            synth_tensor(&down, (RANK, inp))?.to_dtype(DType::F16)?,
        );
        lora.insert(
            up.clone(),
            synth_tensor(&up, (out, RANK))?.to_dtype(DType::F16)?,
        );
        lora.insert(
            format!("{module}.alpha"),
            Tensor::new(16f32, &device)?.to_dtype(DType::F16)?,
        );
    }
    let lora_bytes: usize = lora
        .values()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    let modules = lora.len() / 3;
    println!(
        "lora: rank {RANK}, {modules} modules, {:.0} MiB (f16)",
        mib(lora_bytes)
    );
    let file = LoraFile::from_tensors(Path::new("synthetic_rank32.safetensors"), lora)?;

    let t0 = Instant::now();
    let key_map = KeyMap::new(
        Some(UnetWeights {
            weights: &unet,
            layers_per_block: cfg.layers_per_block,
        }),
        TextEncoderWeights::None,
    );
    let mapped = file.map(&key_map)?;
    println!(
        "key map ({} names) + mapping: {:.3} s",
        key_map.len(),
        t0.elapsed().as_secs_f64()
    );

    let rss_before = status_mib("VmRSS:");
    let peak_reset = reset_peak_rss();
    let t0 = Instant::now();
    let patched = apply(&unet, &[(mapped.patch(Component::Unet), 0.8)])?;
    // CPU ops are synchronous; the map is complete when `apply` returns.
    let elapsed = t0.elapsed().as_secs_f64();
    let peak = status_mib("VmHWM:");
    let new: Vec<&String> = patched
        .iter()
        .filter(|(k, t)| t.id() != unet[*k].id())
        .map(|(k, _)| k)
        .collect();
    let new_bytes: usize = new
        .iter()
        .map(|k| patched[*k].elem_count() * patched[*k].dtype().size_in_bytes())
        .sum();
    let new_params: usize = new.iter().map(|k| patched[*k].elem_count()).sum();
    println!(
        "apply: {elapsed:.2} s for {} weights ({:.0}M parameters, {:.1} ns/parameter)",
        new.len(),
        new_params as f64 / 1e6,
        elapsed * 1e9 / new_params.max(1) as f64
    );
    println!("new tensors in the patched map: {:.0} MiB", mib(new_bytes));
    match (rss_before, peak, peak_reset) {
        (Some(before), Some(peak), true) => println!(
            "peak rss delta during apply: {:.0} MiB (working memory beyond the result: {:.0} MiB)",
            peak - before,
            peak - before - mib(new_bytes)
        ),
        _ => println!("peak rss delta: unavailable"),
    }
    Ok(())
}
