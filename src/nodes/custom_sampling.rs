//! ComfyUI's custom-sampling building blocks beyond the basics in `sampling.rs`: sampler nodes
//! that set a sampler's options (`comfy.samplers.ksampler(name, extra_options)`), the scheduler
//! nodes with their own parameters, sigma-list operations, and the guiders that combine more than
//! two conditionings (DualCFGGuider, PerpNegGuider)
//! (`comfy_extras/nodes_custom_sampler.py`, `nodes_align_your_steps.py`, `nodes_perpneg.py`).
//!
//! Each class is a table row: its name, inputs and a function from inputs to the value, so the
//! shared `Node` plumbing is written once.

use std::sync::Arc;

use crate::engine::sampling::custom_schedules::{
    align_your_steps, flip, laplace, polyexponential, split_denoise, vp, AYS_MODEL_TYPES,
};
use crate::engine::sampling::samplers::{Sampler, SamplerConfig, SamplerOptions, SolverType};
use crate::engine::sampling::schedulers::beta;
use crate::graph::spec::build::*;
use crate::graph::spec::{InputKind, InputSpec, NodeSpec, OutputSpec};
use crate::graph::SlotType;
use crate::nodes::sampling::{cfg_input, guider_value, sigma_input, sigmas_out, spec, steps_input};
use crate::nodes::{GuiderKind, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    for node in SAMPLER_NODES {
        registry.add(node.clone());
    }
    for node in SIGMA_NODES {
        registry.add(node.clone());
    }
    registry.add(DualCfgGuider);
    registry.add(PerpNegGuider);
}

const SAMPLERS: &str = "sampling/custom_sampling/samplers";
const SCHEDULERS: &str = "sampling/custom_sampling/schedulers";
const SIGMAS: &str = "sampling/custom_sampling/sigmas";

/// A node whose only output is a SAMPLER built from its widgets.
#[derive(Clone)]
struct SamplerNode {
    class_type: &'static str,
    display_name: &'static str,
    inputs: fn() -> Vec<InputSpec>,
    build: fn(&Inputs) -> Result<SamplerConfig, NodeError>,
}

impl Node for SamplerNode {
    fn spec(&self) -> NodeSpec {
        spec(
            self.class_type,
            self.display_name,
            SAMPLERS,
            (self.inputs)(),
            vec![output(SlotType::SAMPLER, "SAMPLER")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let sampler = (self.build)(inputs)?;
        Ok(NodeOutput::values(vec![Value::Sampler(Arc::new(sampler))]))
    }
}

/// `eta`/`s_noise` style widgets: default as given, 0 to `max`, step 0.01, no rounding.
fn amount(default: f64, max: f64) -> InputKind {
    float(default, 0.0, max, 0.01)
}

fn eta_noise() -> Vec<InputSpec> {
    vec![
        required("eta", amount(1.0, 100.0)),
        required("s_noise", amount(1.0, 100.0)),
    ]
}

fn noise_device() -> InputSpec {
    required("noise_device", combo(&["gpu", "cpu"]))
}

/// The sampler with `eta` and `s_noise` from the node's widgets.
fn with_eta_noise(sampler: Sampler, inputs: &Inputs) -> Result<SamplerConfig, NodeError> {
    Ok(SamplerConfig {
        sampler,
        options: SamplerOptions {
            eta: Some(inputs.float("eta")?),
            s_noise: Some(inputs.float("s_noise")?),
            ..SamplerOptions::default()
        },
    })
}

/// `noise_device`: "cpu" picks the plain sampler, "gpu" its `_gpu` twin (ComfyUI moves the Brownian
/// tree to the GPU; the maths is the same).
fn by_device(inputs: &Inputs, cpu: Sampler, gpu: Sampler) -> Result<Sampler, NodeError> {
    match inputs.string("noise_device")? {
        "cpu" => Ok(cpu),
        "gpu" => Ok(gpu),
        other => Err(NodeError::input(
            "noise_device",
            format!("'{other}' is not one of gpu, cpu"),
        )),
    }
}

/// An INT widget as `usize`, within the node's declared limits.
fn order_of(inputs: &Inputs) -> Result<usize, NodeError> {
    inputs.usize("order")
}

static SAMPLER_NODES: &[SamplerNode] = &[
    SamplerNode {
        class_type: "SamplerEulerAncestral",
        display_name: "SamplerEulerAncestral",
        inputs: eta_noise,
        build: |i| with_eta_noise(Sampler::EulerAncestral, i),
    },
    SamplerNode {
        class_type: "SamplerEulerAncestralCFGPP",
        display_name: "SamplerEulerAncestralCFG++",
        inputs: || {
            vec![
                required("eta", amount(1.0, 1.0)),
                required("s_noise", amount(1.0, 10.0)),
            ]
        },
        build: |i| with_eta_noise(Sampler::EulerAncestralCfgPp, i),
    },
    SamplerNode {
        class_type: "SamplerLMS",
        display_name: "SamplerLMS",
        inputs: || vec![required("order", int(4, 1, 100))],
        build: |i| {
            Ok(SamplerConfig {
                sampler: Sampler::Lms,
                options: SamplerOptions {
                    order: Some(order_of(i)?),
                    ..SamplerOptions::default()
                },
            })
        },
    },
    SamplerNode {
        class_type: "SamplerDPMPP_3M_SDE",
        display_name: "SamplerDPMPP_3M_SDE",
        inputs: || [eta_noise(), vec![noise_device()]].concat(),
        build: |i| {
            let sampler = by_device(i, Sampler::Dpmpp3mSde, Sampler::Dpmpp3mSdeGpu)?;
            with_eta_noise(sampler, i)
        },
    },
    SamplerNode {
        class_type: "SamplerDPMPP_2M_SDE",
        display_name: "SamplerDPMPP_2M_SDE",
        inputs: || {
            [
                vec![required("solver_type", combo(&["midpoint", "heun"]))],
                eta_noise(),
                vec![noise_device()],
            ]
            .concat()
        },
        build: |i| {
            let sampler = by_device(i, Sampler::Dpmpp2mSde, Sampler::Dpmpp2mSdeGpu)?;
            let mut config = with_eta_noise(sampler, i)?;
            config.options.solver_type = Some(match i.string("solver_type")? {
                "midpoint" => SolverType::Midpoint,
                "heun" => SolverType::Heun,
                other => {
                    return Err(NodeError::input(
                        "solver_type",
                        format!("'{other}' is not one of midpoint, heun"),
                    ))
                }
            });
            Ok(config)
        },
    },
    SamplerNode {
        class_type: "SamplerDPMPP_SDE",
        display_name: "SamplerDPMPP_SDE",
        inputs: || {
            [
                eta_noise(),
                vec![required("r", amount(0.5, 100.0)), noise_device()],
            ]
            .concat()
        },
        build: |i| {
            let sampler = by_device(i, Sampler::DpmppSde, Sampler::DpmppSdeGpu)?;
            let mut config = with_eta_noise(sampler, i)?;
            let r = i.float("r")?;
            if r <= 0.0 {
                // ComfyUI divides by 2r.
                return Err(NodeError::input("r", "must be greater than 0"));
            }
            config.options.r = Some(r);
            Ok(config)
        },
    },
    SamplerNode {
        class_type: "SamplerDPMPP_2S_Ancestral",
        display_name: "SamplerDPMPP_2S_Ancestral",
        inputs: eta_noise,
        build: |i| with_eta_noise(Sampler::Dpmpp2sAncestral, i),
    },
    SamplerNode {
        class_type: "SamplerDPMAdaptative",
        display_name: "SamplerDPMAdaptative",
        inputs: || {
            vec![
                required("order", int(3, 2, 3)),
                required("rtol", amount(0.05, 100.0)),
                required("atol", amount(0.0078, 100.0)),
                required("h_init", amount(0.05, 100.0)),
                required("pcoeff", amount(0.0, 100.0)),
                required("icoeff", amount(1.0, 100.0)),
                required("dcoeff", amount(0.0, 100.0)),
                required("accept_safety", amount(0.81, 100.0)),
                required("eta", amount(0.0, 100.0)),
                required("s_noise", amount(1.0, 100.0)),
            ]
        },
        build: |i| {
            let mut config = with_eta_noise(Sampler::DpmAdaptive, i)?;
            let o = &mut config.options;
            o.order = Some(order_of(i)?);
            o.rtol = Some(i.float("rtol")?);
            o.atol = Some(i.float("atol")?);
            o.h_init = Some(i.float("h_init")?);
            o.pcoeff = Some(i.float("pcoeff")?);
            o.icoeff = Some(i.float("icoeff")?);
            o.dcoeff = Some(i.float("dcoeff")?);
            o.accept_safety = Some(i.float("accept_safety")?);
            Ok(config)
        },
    },
];

/// A node whose outputs are SIGMAS computed from its inputs.
#[derive(Clone)]
struct SigmaNode {
    class_type: &'static str,
    category: &'static str,
    python_module: &'static str,
    inputs: fn() -> Vec<InputSpec>,
    outputs: fn() -> Vec<OutputSpec>,
    run: fn(&Inputs) -> Result<Vec<Vec<f32>>, NodeError>,
}

impl Node for SigmaNode {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            python_module: self.python_module,
            ..spec(
                self.class_type,
                self.class_type,
                self.category,
                (self.inputs)(),
                (self.outputs)(),
            )
        }
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let lists = (self.run)(inputs)?;
        Ok(NodeOutput::values(
            lists
                .into_iter()
                .map(|s| Value::Sigmas(Arc::new(s)))
                .collect(),
        ))
    }
}

const CUSTOM_SAMPLER: &str = "comfy_extras.nodes_custom_sampler";

fn bounds() -> Vec<InputSpec> {
    vec![
        required("steps", steps_input()),
        required("sigma_max", sigma_input(14.614642)),
        required("sigma_min", sigma_input(0.0291675)),
    ]
}

fn high_low() -> Vec<OutputSpec> {
    vec![
        output(SlotType::SIGMAS, "high_sigmas"),
        output(SlotType::SIGMAS, "low_sigmas"),
    ]
}

/// `sigma_min`/`sigma_max` that a log-space schedule can use.
fn positive_bounds(inputs: &Inputs) -> Result<(f64, f64), NodeError> {
    let (min, max) = (inputs.float("sigma_min")?, inputs.float("sigma_max")?);
    if min <= 0.0 {
        return Err(NodeError::input("sigma_min", "must be greater than 0"));
    }
    if max <= 0.0 {
        return Err(NodeError::input("sigma_max", "must be greater than 0"));
    }
    Ok((min, max))
}

static SIGMA_NODES: &[SigmaNode] = &[
    SigmaNode {
        class_type: "PolyexponentialScheduler",
        category: SCHEDULERS,
        python_module: CUSTOM_SAMPLER,
        inputs: || {
            [
                bounds(),
                vec![required("rho", float(1.0, 0.0, 100.0, 0.01))],
            ]
            .concat()
        },
        outputs: sigmas_out,
        run: |i| {
            let (min, max) = positive_bounds(i)?;
            Ok(vec![polyexponential(
                i.usize("steps")?,
                min,
                max,
                i.float("rho")?,
            )])
        },
    },
    SigmaNode {
        class_type: "LaplaceScheduler",
        category: SCHEDULERS,
        python_module: CUSTOM_SAMPLER,
        inputs: || {
            [
                bounds(),
                vec![
                    required("mu", float(0.0, -10.0, 10.0, 0.1)),
                    required("beta", float(0.5, 0.0, 10.0, 0.1)),
                ],
            ]
            .concat()
        },
        outputs: sigmas_out,
        run: |i| {
            Ok(vec![laplace(
                i.usize("steps")?,
                i.float("sigma_min")?,
                i.float("sigma_max")?,
                i.float("mu")?,
                i.float("beta")?,
            )])
        },
    },
    SigmaNode {
        class_type: "VPScheduler",
        category: SCHEDULERS,
        python_module: CUSTOM_SAMPLER,
        inputs: || {
            vec![
                required("steps", steps_input()),
                required("beta_d", float(19.9, 0.0, 5000.0, 0.01)),
                required("beta_min", float(0.1, 0.0, 5000.0, 0.01)),
                required("eps_s", float(0.001, 0.0, 1.0, 0.0001)),
            ]
        },
        outputs: sigmas_out,
        run: |i| {
            Ok(vec![vp(
                i.usize("steps")?,
                i.float("beta_d")?,
                i.float("beta_min")?,
                i.float("eps_s")?,
            )])
        },
    },
    SigmaNode {
        class_type: "BetaSamplingScheduler",
        category: SCHEDULERS,
        python_module: CUSTOM_SAMPLER,
        inputs: || {
            vec![
                required("model", link(SlotType::MODEL)),
                required("steps", steps_input()),
                required("alpha", float(0.6, 0.0, 50.0, 0.01)),
                required("beta", float(0.6, 0.0, 50.0, 0.01)),
            ]
        },
        outputs: sigmas_out,
        run: |i| {
            let model = i.model("model")?;
            Ok(vec![beta(
                &model.sampling,
                i.usize("steps")?,
                i.float("alpha")?,
                i.float("beta")?,
            )])
        },
    },
    SigmaNode {
        class_type: "AlignYourStepsScheduler",
        category: SCHEDULERS,
        python_module: "comfy_extras.nodes_align_your_steps",
        inputs: || {
            vec![
                required("model_type", combo(AYS_MODEL_TYPES)),
                required("steps", int(10, 1, 10000)),
                required("denoise", float(1.0, 0.0, 1.0, 0.01)),
            ]
        },
        outputs: sigmas_out,
        run: |i| {
            let model_type = i.string("model_type")?;
            let sigmas = align_your_steps(model_type, i.usize("steps")?, i.float("denoise")?)
                .ok_or_else(|| {
                    NodeError::input(
                        "model_type",
                        format!(
                            "'{model_type}' is not one of {}",
                            AYS_MODEL_TYPES.join(", ")
                        ),
                    )
                })?;
            Ok(vec![sigmas])
        },
    },
    SigmaNode {
        class_type: "FlipSigmas",
        category: SIGMAS,
        python_module: CUSTOM_SAMPLER,
        inputs: || vec![required("sigmas", link(SlotType::SIGMAS))],
        outputs: sigmas_out,
        run: |i| Ok(vec![flip(i.sigmas("sigmas")?)]),
    },
    SigmaNode {
        class_type: "SplitSigmasDenoise",
        category: SIGMAS,
        python_module: CUSTOM_SAMPLER,
        inputs: || {
            vec![
                required("sigmas", link(SlotType::SIGMAS)),
                required("denoise", float(1.0, 0.0, 1.0, 0.01)),
            ]
        },
        outputs: high_low,
        run: |i| {
            let (high, low) = split_denoise(i.sigmas("sigmas")?, i.float("denoise")?);
            Ok(vec![high, low])
        },
    },
];

const GUIDERS: &str = "sampling/custom_sampling/guiders";

fn guider_slot() -> Vec<OutputSpec> {
    vec![output(SlotType::GUIDER, "GUIDER")]
}

/// Two positive conditionings: `cond1` against `cond2` at `cfg_conds`, `cond2` against the
/// negative at `cfg_cond2_negative` ("regular"), or CFG nested the other way ("nested").
pub struct DualCfgGuider;

impl Node for DualCfgGuider {
    fn spec(&self) -> NodeSpec {
        spec(
            "DualCFGGuider",
            "DualCFGGuider",
            GUIDERS,
            vec![
                required("model", link(SlotType::MODEL)),
                required("cond1", link(SlotType::CONDITIONING)),
                required("cond2", link(SlotType::CONDITIONING)),
                required("negative", link(SlotType::CONDITIONING)),
                required("cfg_conds", cfg_input()),
                required("cfg_cond2_negative", cfg_input()),
                required("style", combo(&["regular", "nested"])),
            ],
            guider_slot(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let nested = match inputs.string("style")? {
            "regular" => false,
            "nested" => true,
            other => {
                return Err(NodeError::input(
                    "style",
                    format!("'{other}' is not one of regular, nested"),
                ))
            }
        };
        let kind = GuiderKind::Dual {
            middle: Arc::clone(inputs.conditioning("cond2")?),
            cfg2: inputs.float("cfg_cond2_negative")?,
            nested,
        };
        let cfg = inputs.float("cfg_conds")?;
        guider_value(inputs, "cond1", Some("negative"), cfg, kind)
    }
}

/// Perp-Neg: only the part of the negative perpendicular to the positive (both taken relative to
/// the empty prompt) steers away.
pub struct PerpNegGuider;

impl Node for PerpNegGuider {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            python_module: "comfy_extras.nodes_perpneg",
            ..spec(
                "PerpNegGuider",
                "PerpNegGuider",
                "_for_testing",
                vec![
                    required("model", link(SlotType::MODEL)),
                    required("positive", link(SlotType::CONDITIONING)),
                    required("negative", link(SlotType::CONDITIONING)),
                    required("empty_conditioning", link(SlotType::CONDITIONING)),
                    required("cfg", cfg_input()),
                    required("neg_scale", float(1.0, 0.0, 100.0, 0.01)),
                ],
                guider_slot(),
            )
        }
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let kind = GuiderKind::PerpNeg {
            empty: Arc::clone(inputs.conditioning("empty_conditioning")?),
            neg_scale: inputs.float("neg_scale")?,
        };
        let cfg = inputs.float("cfg")?;
        guider_value(inputs, "positive", Some("negative"), cfg, kind)
    }
}
