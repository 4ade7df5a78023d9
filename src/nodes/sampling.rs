//! Sampling nodes: KSampler, KSamplerAdvanced and ComfyUI's custom-sampling family (SamplerCustom,
//! SamplerCustomAdvanced, KSamplerSelect, schedulers, SplitSigmas, noise and guiders).
//!
//! One loop (`run_sampler`) serves them all, so progress, previews and interrupts are handled in
//! one place.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::engine::diffusion::{
    prepare_noise_mask, CfgDenoiser, CondEntry, DiffusionModel, Guidance,
};
use crate::engine::memory;
use crate::engine::sampling::rng::prepare_noise_continuing;
use crate::engine::sampling::samplers::{
    Interrupted, Sampler, SamplerConfig, StepInfo, SAMPLER_NAMES,
};
use crate::engine::sampling::schedulers::{
    exponential, karras, ksampler_sigmas, sd_turbo, split_sigmas, step_window, Scheduler,
    SCHEDULER_NAMES,
};
use crate::graph::spec::build::*;
use crate::graph::spec::{InputKind, InputSpec, NodeSpec, OutputSpec};
use crate::graph::SlotType;
use crate::nodes::{
    Guider, GuiderKind, Inputs, Latent, Node, NodeContext, NodeError, NodeOutput, NoiseSource,
    Registry, Value,
};

pub fn register(registry: &mut Registry) {
    registry.add(KSampler);
    registry.add(KSamplerAdvanced);
    registry.add(SamplerCustom);
    registry.add(SamplerCustomAdvanced);
    registry.add(KSamplerSelect);
    registry.add(BasicScheduler);
    registry.add(KarrasScheduler);
    registry.add(ExponentialScheduler);
    registry.add(SdTurboScheduler);
    registry.add(SplitSigmas);
    registry.add(RandomNoise);
    registry.add(DisableNoise);
    registry.add(CfgGuider);
    registry.add(BasicGuider);
}

pub(super) fn spec(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
) -> NodeSpec {
    NodeSpec {
        python_module: "comfy_extras.nodes_custom_sampler",
        ..node(class_type, display_name, category, inputs, outputs)
    }
}

pub(super) fn cfg_input() -> InputKind {
    InputKind::Float {
        default: 8.0,
        min: 0.0,
        max: 100.0,
        step: 0.1,
        round: Some(0.01),
    }
}

pub(super) fn steps_input() -> InputKind {
    int(20, 1, 10000)
}

fn sampler_names() -> InputKind {
    combo(SAMPLER_NAMES)
}

fn scheduler_names() -> InputKind {
    combo(SCHEDULER_NAMES)
}

fn seed_of(inputs: &Inputs, name: &str) -> Result<u64, NodeError> {
    let seed = inputs.int(name)?;
    u64::try_from(seed)
        .map_err(|_| NodeError::input(name, format!("{seed} is not a valid seed (0 to 2^64-1)")))
}

fn parse_sampler(name: &str, input: &str) -> Result<Sampler, NodeError> {
    Sampler::from_name(name).map_err(|e| NodeError::input(input, e.to_string()))
}

fn parse_scheduler(name: &str) -> Result<Scheduler, NodeError> {
    Scheduler::from_name(name).map_err(|e| NodeError::input("scheduler", e.to_string()))
}

/// What one sampling run needs.
struct SamplingJob<'a> {
    model: &'a DiffusionModel,
    noise: NoiseSource,
    positive: &'a [CondEntry],
    negative: Option<&'a [CondEntry]>,
    cfg: f64,
    guidance: Guidance<'a>,
    sampler: SamplerConfig,
    sigmas: Vec<f32>,
    latent: &'a Latent,
}

/// Runs a sampler over a latent: noise, CFG, inpainting mask, progress, previews and interrupts.
/// Returns (output latent, last denoised prediction), both unscaled like every LATENT.
fn run_sampler(ctx: &NodeContext, job: SamplingJob<'_>) -> Result<(Latent, Latent), NodeError> {
    let model = job.model;
    let samples = job.latent.samples.to_dtype(DType::F32)?;
    let (_, channels, _, _) = samples.dims4().map_err(|_| {
        NodeError::input(
            "latent_image",
            format!("expected a latent [B,C,h,w], got {:?}", samples.dims()),
        )
    })?;
    if channels != model.latent.channels {
        return Err(NodeError::input(
            "latent_image",
            format!(
                "the model takes {}-channel latents, this one has {channels}",
                model.latent.channels
            ),
        ));
    }
    if job.sigmas.len() <= 1 {
        return Ok((job.latent.clone(), job.latent.clone()));
    }
    let shape = samples.dims().to_vec();
    // Positive and negative run as one batch.
    let (batch, h, w) = (shape[0] * 2, shape[2], shape[3]);
    let needed = memory::unet_activation_bytes(batch, h, w, model.unet.dtype().size_in_bytes());
    let what = format!("sampling {} latent(s) of {w}x{h}", shape[0]);
    ctx.reserve_memory("latent_image", needed, &what)?;
    // ComfyUI leaves an all-zero (empty) latent unshifted.
    let empty = samples.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
    let scaled = if empty {
        samples.clone()
    } else {
        model.latent.process_in(&samples)?
    };
    let (noise, seed) = match job.noise {
        NoiseSource::Random(seed) => {
            let (noise, global) = prepare_noise_continuing(
                &shape,
                seed,
                job.latent.batch_index.as_deref(),
                samples.device(),
            )?;
            // ComfyUI's noise seeded torch's global generator; ToMe draws on from there.
            model.patches.unet.start_sampling(global);
            (noise, seed)
        }
        // No noise, no seeding: the global generator goes on from wherever it was.
        NoiseSource::Disabled => (samples.zeros_like()?, 0),
    };
    let first_sigma = job.sigmas[0] as f64;
    let max_denoise = model.sampling.is_max_denoise(first_sigma);
    let x = model
        .sampling
        .noise_scaling(first_sigma, &noise, &scaled, max_denoise)?;
    let needs_uncond = job.sampler.sampler.name().contains("cfg_pp");
    let mut denoiser = CfgDenoiser::new(
        model,
        job.positive,
        job.negative,
        job.cfg,
        &shape,
        needs_uncond,
        seed,
    )?
    .with_schedule(&job.sigmas)
    .with_latent_image(scaled.clone())
    .with_guidance(job.guidance)?;
    if let Some(mask) = &job.latent.noise_mask {
        denoiser = denoiser.with_inpaint(
            prepare_noise_mask(mask, &shape)?,
            scaled.clone(),
            noise.clone(),
        )?;
    }

    let mut last_denoised: Option<Tensor> = None;
    let mut callback = |step: StepInfo<'_>| -> Result<(), Interrupted> {
        if ctx.check_interrupt().is_err() {
            return Err(Interrupted);
        }
        ctx.progress(step.step as u64 + 1, step.total as u64);
        if let Ok((pixels, w, h)) = model.latent.preview_rgb(step.denoised) {
            ctx.preview_rgb(&pixels, w, h);
        }
        last_denoised = Some(step.denoised.clone());
        Ok(())
    };
    let result = job.sampler.sampler.sample_with(
        &job.sampler.options,
        &mut denoiser,
        &x,
        &job.sigmas,
        seed,
        &mut callback,
    );
    let result = match result {
        Ok(result) => result,
        Err(e) if ctx.check_interrupt().is_err() => {
            tracing::debug!("sampler stopped: {e}");
            return Err(NodeError::Interrupted);
        }
        Err(e) => return Err(NodeError::engine("sampling failed", e)),
    };
    let out = model.latent.process_out(&result)?;
    let denoised = match last_denoised {
        Some(d) => model.latent.process_out(&d)?,
        None => out.clone(),
    };
    let keep = |samples: Tensor| Latent {
        samples,
        noise_mask: job.latent.noise_mask.clone(),
        batch_index: job.latent.batch_index.clone(),
    };
    Ok((keep(out), keep(denoised)))
}

/// Denoises a latent with a sampler and scheduler from ComfyUI's lists.
pub struct KSampler;

impl Node for KSampler {
    fn spec(&self) -> NodeSpec {
        let mut spec = spec(
            "KSampler",
            "KSampler",
            "sampling",
            vec![
                required("model", link(SlotType::MODEL)),
                required("seed", seed()),
                required("steps", steps_input()),
                required("cfg", cfg_input()),
                required("sampler_name", sampler_names()),
                required("scheduler", scheduler_names()),
                required("positive", link(SlotType::CONDITIONING)),
                required("negative", link(SlotType::CONDITIONING)),
                required("latent_image", link(SlotType::LATENT)),
                required("denoise", float(1.0, 0.0, 1.0, 0.01)),
            ],
            vec![output(SlotType::LATENT, "LATENT")],
        );
        spec.python_module = "nodes";
        spec.description = "Uses the provided model, positive and negative conditioning to denoise the latent image.";
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let sampler_name = inputs.string("sampler_name")?;
        let sampler = parse_sampler(sampler_name, "sampler_name")?;
        let scheduler = parse_scheduler(inputs.string("scheduler")?)?;
        let steps = inputs.usize("steps")?;
        let sigmas = ksampler_sigmas(
            &model.sampling,
            scheduler,
            sampler_name,
            steps,
            inputs.float("denoise")?,
        );
        let (out, _) = run_sampler(
            ctx,
            SamplingJob {
                model,
                noise: NoiseSource::Random(seed_of(inputs, "seed")?),
                positive: inputs.conditioning("positive")?,
                negative: Some(inputs.conditioning("negative")?),
                cfg: inputs.float("cfg")?,
                guidance: Guidance::Cfg,
                sampler: SamplerConfig::plain(sampler),
                sigmas,
                latent: inputs.latent("latent_image")?,
            },
        )?;
        Ok(NodeOutput::values(vec![Value::Latent(out)]))
    }
}

/// KSampler with a step window and optional leftover noise (base + refiner workflows).
pub struct KSamplerAdvanced;

impl Node for KSamplerAdvanced {
    fn spec(&self) -> NodeSpec {
        let mut spec = spec(
            "KSamplerAdvanced",
            "KSampler (Advanced)",
            "sampling",
            vec![
                required("model", link(SlotType::MODEL)),
                required("add_noise", combo(&["enable", "disable"])),
                required("noise_seed", seed()),
                required("steps", steps_input()),
                required("cfg", cfg_input()),
                required("sampler_name", sampler_names()),
                required("scheduler", scheduler_names()),
                required("positive", link(SlotType::CONDITIONING)),
                required("negative", link(SlotType::CONDITIONING)),
                required("latent_image", link(SlotType::LATENT)),
                required("start_at_step", int(0, 0, 10000)),
                required("end_at_step", int(10000, 0, 10000)),
                required("return_with_leftover_noise", combo(&["disable", "enable"])),
            ],
            vec![output(SlotType::LATENT, "LATENT")],
        );
        spec.python_module = "nodes";
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let sampler_name = inputs.string("sampler_name")?;
        let sampler = parse_sampler(sampler_name, "sampler_name")?;
        let scheduler = parse_scheduler(inputs.string("scheduler")?)?;
        let steps = inputs.usize("steps")?;
        let full = ksampler_sigmas(&model.sampling, scheduler, sampler_name, steps, 1.0);
        let force_full_denoise = inputs.string("return_with_leftover_noise")? != "enable";
        let latent = inputs.latent("latent_image")?;
        let Some(sigmas) = step_window(
            &full,
            Some(inputs.usize("start_at_step")?),
            Some(inputs.usize("end_at_step")?),
            force_full_denoise,
        ) else {
            // ComfyUI returns the input latent when the window starts past the schedule.
            return Ok(NodeOutput::values(vec![Value::Latent(latent.clone())]));
        };
        let noise = if inputs.string("add_noise")? == "disable" {
            NoiseSource::Disabled
        } else {
            NoiseSource::Random(seed_of(inputs, "noise_seed")?)
        };
        let (out, _) = run_sampler(
            ctx,
            SamplingJob {
                model,
                noise,
                positive: inputs.conditioning("positive")?,
                negative: Some(inputs.conditioning("negative")?),
                cfg: inputs.float("cfg")?,
                guidance: Guidance::Cfg,
                sampler: SamplerConfig::plain(sampler),
                sigmas,
                latent,
            },
        )?;
        Ok(NodeOutput::values(vec![Value::Latent(out)]))
    }
}

fn two_latents() -> Vec<OutputSpec> {
    vec![
        output(SlotType::LATENT, "output"),
        output(SlotType::LATENT, "denoised_output"),
    ]
}

/// Sampling with an explicit sampler and sigmas.
pub struct SamplerCustom;

impl Node for SamplerCustom {
    fn spec(&self) -> NodeSpec {
        spec(
            "SamplerCustom",
            "SamplerCustom",
            "sampling/custom_sampling",
            vec![
                required("model", link(SlotType::MODEL)),
                required("add_noise", boolean(true)),
                required("noise_seed", seed()),
                required("cfg", cfg_input()),
                required("positive", link(SlotType::CONDITIONING)),
                required("negative", link(SlotType::CONDITIONING)),
                required("sampler", link(SlotType::SAMPLER)),
                required("sigmas", link(SlotType::SIGMAS)),
                required("latent_image", link(SlotType::LATENT)),
            ],
            two_latents(),
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let seed = seed_of(inputs, "noise_seed")?;
        let noise = if inputs.bool("add_noise")? {
            NoiseSource::Random(seed)
        } else {
            NoiseSource::Disabled
        };
        let (out, denoised) = run_sampler(
            ctx,
            SamplingJob {
                model: inputs.model("model")?,
                noise,
                positive: inputs.conditioning("positive")?,
                negative: Some(inputs.conditioning("negative")?),
                cfg: inputs.float("cfg")?,
                guidance: Guidance::Cfg,
                sampler: inputs.sampler("sampler")?.as_ref().clone(),
                sigmas: inputs.sigmas("sigmas")?.as_ref().clone(),
                latent: inputs.latent("latent_image")?,
            },
        )?;
        Ok(NodeOutput::values(vec![
            Value::Latent(out),
            Value::Latent(denoised),
        ]))
    }
}

/// Sampling from a noise source, a guider, a sampler and sigmas.
pub struct SamplerCustomAdvanced;

impl Node for SamplerCustomAdvanced {
    fn spec(&self) -> NodeSpec {
        spec(
            "SamplerCustomAdvanced",
            "SamplerCustomAdvanced",
            "sampling/custom_sampling",
            vec![
                required("noise", link(SlotType::NOISE)),
                required("guider", link(SlotType::GUIDER)),
                required("sampler", link(SlotType::SAMPLER)),
                required("sigmas", link(SlotType::SIGMAS)),
                required("latent_image", link(SlotType::LATENT)),
            ],
            two_latents(),
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let guider = inputs.guider("guider")?;
        let (out, denoised) = run_sampler(
            ctx,
            SamplingJob {
                model: &guider.model,
                noise: *inputs.noise("noise")?,
                positive: &guider.positive,
                negative: guider.negative.as_deref().map(|v| v.as_slice()),
                cfg: guider.cfg,
                guidance: guider.kind.guidance(),
                sampler: inputs.sampler("sampler")?.as_ref().clone(),
                sigmas: inputs.sigmas("sigmas")?.as_ref().clone(),
                latent: inputs.latent("latent_image")?,
            },
        )?;
        Ok(NodeOutput::values(vec![
            Value::Latent(out),
            Value::Latent(denoised),
        ]))
    }
}

/// Picks a sampler by name.
pub struct KSamplerSelect;

impl Node for KSamplerSelect {
    fn spec(&self) -> NodeSpec {
        spec(
            "KSamplerSelect",
            "KSamplerSelect",
            "sampling/custom_sampling/samplers",
            vec![required("sampler_name", sampler_names())],
            vec![output(SlotType::SAMPLER, "SAMPLER")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let sampler = parse_sampler(inputs.string("sampler_name")?, "sampler_name")?;
        Ok(NodeOutput::values(vec![Value::Sampler(Arc::new(
            SamplerConfig::plain(sampler),
        ))]))
    }
}

pub(super) fn sigmas_out() -> Vec<OutputSpec> {
    vec![output(SlotType::SIGMAS, "SIGMAS")]
}

fn sigmas_value(sigmas: Vec<f32>) -> NodeOutput {
    NodeOutput::values(vec![Value::Sigmas(Arc::new(sigmas))])
}

/// A scheduler's sigmas for a model.
pub struct BasicScheduler;

impl Node for BasicScheduler {
    fn spec(&self) -> NodeSpec {
        spec(
            "BasicScheduler",
            "BasicScheduler",
            "sampling/custom_sampling/schedulers",
            vec![
                required("model", link(SlotType::MODEL)),
                required("scheduler", scheduler_names()),
                required("steps", steps_input()),
                required("denoise", float(1.0, 0.0, 1.0, 0.01)),
            ],
            sigmas_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let scheduler = parse_scheduler(inputs.string("scheduler")?)?;
        let steps = inputs.usize("steps")?;
        let denoise = inputs.float("denoise")?;
        if denoise <= 0.0 {
            return Ok(sigmas_value(Vec::new()));
        }
        let total = if denoise < 1.0 {
            (steps as f64 / denoise) as usize
        } else {
            steps
        };
        let sigmas = scheduler.sigmas(&model.sampling, total);
        let keep = (steps + 1).min(sigmas.len());
        Ok(sigmas_value(sigmas[sigmas.len() - keep..].to_vec()))
    }
}

pub(super) fn sigma_input(default: f64) -> InputKind {
    InputKind::Float {
        default,
        min: 0.0,
        max: 5000.0,
        step: 0.01,
        round: None,
    }
}

/// Karras sigmas with explicit bounds.
pub struct KarrasScheduler;

impl Node for KarrasScheduler {
    fn spec(&self) -> NodeSpec {
        spec(
            "KarrasScheduler",
            "KarrasScheduler",
            "sampling/custom_sampling/schedulers",
            vec![
                required("steps", steps_input()),
                required("sigma_max", sigma_input(14.614642)),
                required("sigma_min", sigma_input(0.0291675)),
                required("rho", float(7.0, 0.0, 100.0, 0.01)),
            ],
            sigmas_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        Ok(sigmas_value(karras(
            inputs.usize("steps")?,
            inputs.float("sigma_min")?,
            inputs.float("sigma_max")?,
            inputs.float("rho")?,
        )))
    }
}

/// Exponential sigmas with explicit bounds.
pub struct ExponentialScheduler;

impl Node for ExponentialScheduler {
    fn spec(&self) -> NodeSpec {
        spec(
            "ExponentialScheduler",
            "ExponentialScheduler",
            "sampling/custom_sampling/schedulers",
            vec![
                required("steps", steps_input()),
                required("sigma_max", sigma_input(14.614642)),
                required("sigma_min", sigma_input(0.0291675)),
            ],
            sigmas_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        Ok(sigmas_value(exponential(
            inputs.usize("steps")?,
            inputs.float("sigma_min")?,
            inputs.float("sigma_max")?,
        )))
    }
}

/// SDXL-Turbo's few-step schedule.
pub struct SdTurboScheduler;

impl Node for SdTurboScheduler {
    fn spec(&self) -> NodeSpec {
        spec(
            "SDTurboScheduler",
            "SDTurboScheduler",
            "sampling/custom_sampling/schedulers",
            vec![
                required("model", link(SlotType::MODEL)),
                required("steps", int(1, 1, 10)),
                required("denoise", float(1.0, 0.0, 1.0, 0.01)),
            ],
            sigmas_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        Ok(sigmas_value(sd_turbo(
            &model.sampling,
            inputs.usize("steps")?,
            inputs.float("denoise")?,
        )))
    }
}

/// Splits sigmas at a step (the shared sigma belongs to both halves).
pub struct SplitSigmas;

impl Node for SplitSigmas {
    fn spec(&self) -> NodeSpec {
        spec(
            "SplitSigmas",
            "SplitSigmas",
            "sampling/custom_sampling/sigmas",
            vec![
                required("sigmas", link(SlotType::SIGMAS)),
                required("step", int(0, 0, 10000)),
            ],
            vec![
                output(SlotType::SIGMAS, "high_sigmas"),
                output(SlotType::SIGMAS, "low_sigmas"),
            ],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let (high, low) = split_sigmas(inputs.sigmas("sigmas")?, inputs.usize("step")?);
        Ok(NodeOutput::values(vec![
            Value::Sigmas(Arc::new(high)),
            Value::Sigmas(Arc::new(low)),
        ]))
    }
}

/// Seeded noise, as KSampler makes it.
pub struct RandomNoise;

impl Node for RandomNoise {
    fn spec(&self) -> NodeSpec {
        spec(
            "RandomNoise",
            "RandomNoise",
            "sampling/custom_sampling/noise",
            vec![required("noise_seed", seed())],
            vec![output(SlotType::NOISE, "NOISE")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        Ok(NodeOutput::values(vec![Value::Noise(NoiseSource::Random(
            seed_of(inputs, "noise_seed")?,
        ))]))
    }
}

/// No initial noise (continue from a partly denoised latent).
pub struct DisableNoise;

impl Node for DisableNoise {
    fn spec(&self) -> NodeSpec {
        spec(
            "DisableNoise",
            "DisableNoise",
            "sampling/custom_sampling/noise",
            vec![],
            vec![output(SlotType::NOISE, "NOISE")],
        )
    }

    fn run(&self, _ctx: &NodeContext, _inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        Ok(NodeOutput::values(vec![Value::Noise(
            NoiseSource::Disabled,
        )]))
    }
}

/// Classifier-free guidance between a positive and a negative conditioning.
pub struct CfgGuider;

impl Node for CfgGuider {
    fn spec(&self) -> NodeSpec {
        spec(
            "CFGGuider",
            "CFGGuider",
            "sampling/custom_sampling/guiders",
            vec![
                required("model", link(SlotType::MODEL)),
                required("positive", link(SlotType::CONDITIONING)),
                required("negative", link(SlotType::CONDITIONING)),
                required("cfg", cfg_input()),
            ],
            vec![output(SlotType::GUIDER, "GUIDER")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let cfg = inputs.float("cfg")?;
        guider_value(inputs, "positive", Some("negative"), cfg, GuiderKind::Cfg)
    }
}

/// The model with one conditioning and no CFG.
pub struct BasicGuider;

impl Node for BasicGuider {
    fn spec(&self) -> NodeSpec {
        spec(
            "BasicGuider",
            "BasicGuider",
            "sampling/custom_sampling/guiders",
            vec![
                required("model", link(SlotType::MODEL)),
                required("conditioning", link(SlotType::CONDITIONING)),
            ],
            vec![output(SlotType::GUIDER, "GUIDER")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        guider_value(inputs, "conditioning", None, 1.0, GuiderKind::Cfg)
    }
}

/// A GUIDER from the node's `model` and the named conditioning inputs.
pub(super) fn guider_value(
    inputs: &Inputs,
    positive: &str,
    negative: Option<&str>,
    cfg: f64,
    kind: GuiderKind,
) -> Result<NodeOutput, NodeError> {
    let guider = Guider {
        model: Arc::clone(inputs.model("model")?),
        positive: Arc::clone(inputs.conditioning(positive)?),
        negative: match negative {
            Some(name) => Some(Arc::clone(inputs.conditioning(name)?)),
            None => None,
        },
        cfg,
        kind,
    };
    Ok(NodeOutput::values(vec![Value::Guider(Arc::new(guider))]))
}
