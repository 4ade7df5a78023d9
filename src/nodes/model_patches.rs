//! Model patch nodes: each takes a MODEL and returns a patched clone of the handle (weights
//! shared, see `engine::diffusion::patches`): CFG-level guidance (RescaleCFG, CFGZeroStar,
//! Epsilon Scaling, APG, TCFG), the model-sampling overrides (ModelSamplingDiscrete,
//! ModelSamplingContinuousEDM), the
//! inpainting-mask patch (DifferentialDiffusion) and UNet patches (FreeU, FreeU_V2).
//!
//! Each class is a table row: its declaration and a function from the input model and widgets
//! to the patched model.

use std::sync::Arc;

use crate::engine::diffusion::differential::DifferentialDiffusion;
use crate::engine::diffusion::downscale::{DownscaleBlock, UpscaleToSkip};
use crate::engine::diffusion::freeu::{FreeU, FreeUVersion};
use crate::engine::diffusion::guidance::{
    Apg, CfgZeroStar, EpsilonScaling, PerpNeg, PerturbedAttention, RescaleCfg, Tcfg,
};
use crate::engine::diffusion::hypertile::HyperTile;
use crate::engine::diffusion::sag::SelfAttentionGuidance;
use crate::engine::diffusion::tome::TokenMerging;
use crate::engine::diffusion::{DiffusionModel, LatentFormat};
use crate::engine::resize::UpscaleMethod;
use crate::engine::sampling::model_sampling::{Config, ModelSamplingDiscrete, Prediction};
use crate::graph::spec::build::*;
use crate::graph::spec::{InputKind, InputSpec, NodeSpec};
use crate::graph::SlotType;
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    for node in PATCH_NODES {
        registry.add(node.clone());
    }
}

/// A node from MODEL (+ widgets) to a patched MODEL.
#[derive(Clone)]
struct PatchNode {
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    python_module: &'static str,
    description: &'static str,
    /// Inputs after `model`.
    inputs: fn() -> Vec<InputSpec>,
    output_name: &'static str,
    patch: fn(&DiffusionModel, &Inputs) -> Result<DiffusionModel, NodeError>,
}

impl Node for PatchNode {
    fn spec(&self) -> NodeSpec {
        let mut inputs = vec![required("model", link(SlotType::MODEL))];
        inputs.extend((self.inputs)());
        NodeSpec {
            python_module: self.python_module,
            description: self.description,
            ..node(
                self.class_type,
                self.display_name,
                self.category,
                inputs,
                vec![output(SlotType::MODEL, self.output_name)],
            )
        }
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let patched = (self.patch)(model, inputs)?;
        Ok(NodeOutput::values(vec![Value::Model(Arc::new(patched))]))
    }
}

fn freeu(
    model: &DiffusionModel,
    inputs: &Inputs,
    version: FreeUVersion,
) -> Result<DiffusionModel, NodeError> {
    let patch = FreeU {
        version,
        base_channels: model_channels(model)?,
        level1: (inputs.float("b1")?, inputs.float("s1")?),
        level2: (inputs.float("b2")?, inputs.float("s2")?),
    };
    Ok(model.patched(|p| p.unet.output_block.push(Arc::new(patch))))
}

/// The channels of the UNet's first level (ComfyUI's `model_channels`).
fn model_channels(model: &DiffusionModel) -> Result<usize, NodeError> {
    model
        .unet
        .config()
        .block_out_channels
        .first()
        .copied()
        .ok_or_else(|| NodeError::input("model", "the UNet has no blocks"))
}

fn freeu_inputs(b1: f64, b2: f64) -> Vec<InputSpec> {
    vec![
        required("b1", float(b1, 0.0, 10.0, 0.01)),
        required("b2", float(b2, 0.0, 10.0, 0.01)),
        required("s1", float(0.9, 0.0, 10.0, 0.01)),
        required("s2", float(0.2, 0.0, 10.0, 0.01)),
    ]
}

/// ModelSamplingContinuousEDM's `sampling` choices.
const EDM_SAMPLINGS: &[&str] = &[
    "v_prediction",
    "edm",
    "edm_playground_v2.5",
    "eps",
    "cosmos_rflow",
];

/// ModelSamplingContinuousEDM: the continuous EDM schedule between the two sigmas with the chosen
/// prediction; Playground v2.5 also brings its latent format.
fn continuous_edm(model: &DiffusionModel, i: &Inputs) -> Result<DiffusionModel, NodeError> {
    let (prediction, sigma_data, latent) = match i.string("sampling")? {
        "eps" => (Prediction::Eps, 1.0, None),
        "v_prediction" => (Prediction::V, 1.0, None),
        "edm" => (Prediction::Edm, 0.5, None),
        "edm_playground_v2.5" => (
            Prediction::Edm,
            0.5,
            Some(LatentFormat::sdxl_playground_2_5()),
        ),
        "cosmos_rflow" => {
            return Err(NodeError::input(
                "sampling",
                "cosmos_rflow is for Cosmos models, which Weft does not run",
            ))
        }
        other => {
            return Err(NodeError::input(
                "sampling",
                format!("'{other}' is not one of {}", EDM_SAMPLINGS.join(", ")),
            ))
        }
    };
    let (sigma_min, sigma_max) = (i.float("sigma_min")?, i.float("sigma_max")?);
    if !(sigma_min > 0.0 && sigma_max > 0.0) {
        return Err(NodeError::input(
            "sigma_min",
            "sigma_min and sigma_max must be above 0 (their logarithms span the schedule)",
        ));
    }
    let sampling =
        ModelSamplingDiscrete::continuous_edm(sigma_min, sigma_max, sigma_data, prediction);
    let mut patched = model.with_sampling(sampling);
    if let Some(latent) = latent {
        patched.latent = latent;
    }
    Ok(patched)
}

/// `PatchModelAddDownscale.upscale_methods`.
const DOWNSCALE_METHODS: &[&str] = &["bicubic", "nearest-exact", "bilinear", "area", "bislerp"];

fn scale_method(inputs: &Inputs, name: &str) -> Result<UpscaleMethod, NodeError> {
    let method = inputs.string(name)?;
    match UpscaleMethod::parse(method) {
        Some(m) if method != "lanczos" => Ok(m),
        _ => Err(NodeError::input(
            name,
            format!("'{method}' is not one of {}", DOWNSCALE_METHODS.join(", ")),
        )),
    }
}

fn add_downscale(model: &DiffusionModel, i: &Inputs) -> Result<DiffusionModel, NodeError> {
    let factor = i.float("downscale_factor")?;
    if factor <= 0.0 {
        return Err(NodeError::input(
            "downscale_factor",
            "must be greater than 0",
        ));
    }
    let down = DownscaleBlock {
        block: i.usize("block_number")?,
        factor,
        sigma_start: model.sampling.percent_to_sigma(i.float("start_percent")?),
        sigma_end: model.sampling.percent_to_sigma(i.float("end_percent")?),
        method: scale_method(i, "downscale_method")?,
    };
    let up = UpscaleToSkip {
        method: scale_method(i, "upscale_method")?,
    };
    let after_skip = i.bool("downscale_after_skip")?;
    Ok(model.patched(|p| {
        if after_skip {
            p.unet.input_block_after_skip.push(Arc::new(down));
        } else {
            p.unet.input_block.push(Arc::new(down));
        }
        p.unet.output_block.push(Arc::new(up));
    }))
}

const ADVANCED_MODEL: &str = "advanced/model";
const GUIDANCE: &str = "advanced/guidance";

static PATCH_NODES: &[PatchNode] = &[
    PatchNode {
        class_type: "RescaleCFG",
        display_name: "RescaleCFG",
        category: ADVANCED_MODEL,
        python_module: "comfy_extras.nodes_model_advanced",
        description: "",
        inputs: || vec![required("multiplier", float(0.7, 0.0, 1.0, 0.01))],
        output_name: "MODEL",
        patch: |model, i| {
            let multiplier = i.float("multiplier")?;
            Ok(model.patched(|p| p.cfg_function = Some(Arc::new(RescaleCfg { multiplier }))))
        },
    },
    PatchNode {
        class_type: "ModelSamplingDiscrete",
        display_name: "ModelSamplingDiscrete",
        category: ADVANCED_MODEL,
        python_module: "comfy_extras.nodes_model_advanced",
        description: "",
        inputs: || {
            vec![
                required("sampling", combo(&["eps", "v_prediction", "lcm", "x0"])),
                required("zsnr", boolean(false)),
            ]
        },
        output_name: "MODEL",
        patch: |model, i| {
            // A fresh schedule (SD1/SD2/SDXL share it), as ComfyUI builds one from the config.
            let base = ModelSamplingDiscrete::new(&Config::sd_eps());
            let sampling = match i.string("sampling")? {
                "eps" => base,
                "v_prediction" => base.with_prediction(Prediction::V),
                "lcm" => base.distilled(50).with_prediction(Prediction::Lcm),
                "x0" => base.with_prediction(Prediction::X0),
                other => {
                    return Err(NodeError::input(
                        "sampling",
                        format!("'{other}' is not one of eps, v_prediction, lcm, x0"),
                    ))
                }
            };
            let sampling = if i.bool("zsnr")? {
                sampling.zero_terminal_snr()
            } else {
                sampling
            };
            Ok(model.with_sampling(sampling))
        },
    },
    PatchNode {
        class_type: "ModelSamplingContinuousEDM",
        display_name: "ModelSamplingContinuousEDM",
        category: ADVANCED_MODEL,
        python_module: "comfy_extras.nodes_model_advanced",
        description: "",
        inputs: || {
            vec![
                required("sampling", combo(EDM_SAMPLINGS)),
                required("sigma_max", float(120.0, 0.0, 1000.0, 0.001)),
                required("sigma_min", float(0.002, 0.0, 1000.0, 0.001)),
            ]
        },
        output_name: "MODEL",
        patch: continuous_edm,
    },
    PatchNode {
        class_type: "CFGZeroStar",
        display_name: "CFGZeroStar",
        category: GUIDANCE,
        python_module: "comfy_extras.nodes_cfg",
        description: "",
        inputs: Vec::new,
        output_name: "patched_model",
        patch: |model, _| Ok(model.patched(|p| p.post_cfg.push(Arc::new(CfgZeroStar)))),
    },
    PatchNode {
        class_type: "Epsilon Scaling",
        display_name: "Epsilon Scaling",
        category: "model/patch/unet",
        python_module: "comfy_extras.nodes_eps",
        description: "",
        inputs: || vec![required("scaling_factor", float(1.005, 0.5, 1.5, 0.001))],
        output_name: "MODEL",
        patch: |model, i| {
            let scaling_factor = i.float("scaling_factor")?;
            Ok(model.patched(|p| p.post_cfg.push(Arc::new(EpsilonScaling { scaling_factor }))))
        },
    },
    PatchNode {
        class_type: "APG",
        display_name: "Adaptive Projected Guidance",
        category: "sampling/custom_sampling",
        python_module: "comfy_extras.nodes_apg",
        description: "",
        inputs: || {
            vec![
                required("eta", float(1.0, -10.0, 10.0, 0.01)),
                required("norm_threshold", float(5.0, 0.0, 50.0, 0.1)),
                required("momentum", float(0.0, 0.0, 1.0, 0.01)),
            ]
        },
        output_name: "MODEL",
        patch: |model, i| {
            let apg = Apg::new(
                i.float("eta")?,
                i.float("norm_threshold")?,
                i.float("momentum")?,
            );
            Ok(model.patched(|p| p.pre_cfg.push(Arc::new(apg))))
        },
    },
    PatchNode {
        class_type: "TCFG",
        display_name: "Tangential Damping CFG",
        category: GUIDANCE,
        python_module: "comfy_extras.nodes_tcfg",
        description: "TCFG – Tangential Damping CFG (2503.18137)\n\nRefine the uncond (negative) to align with the cond (positive) for improving quality.",
        inputs: Vec::new,
        output_name: "patched_model",
        patch: |model, _| Ok(model.patched(|p| p.pre_cfg.push(Arc::new(Tcfg)))),
    },
    PatchNode {
        class_type: "FreeU",
        display_name: "FreeU",
        category: "model_patches",
        python_module: "comfy_extras.nodes_freelunch",
        description: "",
        inputs: || freeu_inputs(1.1, 1.2),
        output_name: "MODEL",
        patch: |model, i| freeu(model, i, FreeUVersion::V1),
    },
    PatchNode {
        class_type: "FreeU_V2",
        display_name: "FreeU_V2",
        category: "model_patches",
        python_module: "comfy_extras.nodes_freelunch",
        description: "",
        inputs: || freeu_inputs(1.3, 1.4),
        output_name: "MODEL",
        patch: |model, i| freeu(model, i, FreeUVersion::V2),
    },
    PatchNode {
        class_type: "DifferentialDiffusion",
        display_name: "Differential Diffusion",
        category: "_for_testing",
        python_module: "comfy_extras.nodes_differential_diffusion",
        description: "",
        inputs: || vec![optional("strength", float(1.0, 0.0, 1.0, 0.01))],
        output_name: "MODEL",
        patch: |model, i| {
            let strength = match i.get("strength") {
                Some(_) => i.float("strength")?,
                None => 1.0,
            };
            let patch = DifferentialDiffusion { strength };
            Ok(model.patched(|p| p.denoise_mask = Some(Arc::new(patch))))
        },
    },
    PatchNode {
        class_type: "PatchModelAddDownscale",
        display_name: "PatchModelAddDownscale (Kohya Deep Shrink)",
        category: "_for_testing",
        python_module: "comfy_extras.nodes_model_downscale",
        description: "",
        inputs: || {
            vec![
                required("block_number", int(3, 1, 32)),
                required("downscale_factor", float(2.0, 0.1, 9.0, 0.001)),
                required("start_percent", float(0.0, 0.0, 1.0, 0.001)),
                required("end_percent", float(0.35, 0.0, 1.0, 0.001)),
                required("downscale_after_skip", boolean(true)),
                required("downscale_method", combo(DOWNSCALE_METHODS)),
                required("upscale_method", combo(DOWNSCALE_METHODS)),
            ]
        },
        output_name: "MODEL",
        patch: add_downscale,
    },
    PatchNode {
        class_type: "PerturbedAttentionGuidance",
        display_name: "PerturbedAttentionGuidance",
        category: "model_patches/unet",
        python_module: "comfy_extras.nodes_pag",
        description: "",
        inputs: || {
            vec![required(
                "scale",
                InputKind::Float {
                    default: 3.0,
                    min: 0.0,
                    max: 100.0,
                    step: 0.01,
                    round: Some(0.01),
                },
            )]
        },
        output_name: "MODEL",
        patch: |model, i| {
            let scale = i.float("scale")?;
            Ok(model.patched(|p| p.post_cfg.push(Arc::new(PerturbedAttention { scale }))))
        },
    },
    PatchNode {
        class_type: "SelfAttentionGuidance",
        display_name: "Self-Attention Guidance",
        category: "_for_testing",
        python_module: "comfy_extras.nodes_sag",
        description: "",
        inputs: || {
            vec![
                required("scale", float(0.5, -2.0, 5.0, 0.01)),
                required("blur_sigma", float(2.0, 0.0, 10.0, 0.1)),
            ]
        },
        output_name: "MODEL",
        patch: |model, i| {
            let (scale, blur_sigma) = (i.float("scale")?, i.float("blur_sigma")?);
            Ok(SelfAttentionGuidance::patch(model, scale, blur_sigma))
        },
    },
    PatchNode {
        class_type: "HyperTile",
        display_name: "HyperTile",
        category: "_for_testing",
        python_module: "comfy_extras.nodes_hypertile",
        description: "",
        inputs: || {
            vec![
                required("tile_size", int(256, 1, 2048)),
                required("swap_size", int(2, 1, 128)),
                required("max_depth", int(0, 0, 10)),
                required("scale_depth", boolean(false)),
            ]
        },
        output_name: "MODEL",
        patch: |model, i| {
            let patch = HyperTile::new(
                model_channels(model)?,
                i.usize("tile_size")?,
                i.usize("swap_size")?,
                i.usize("max_depth")?,
                i.bool("scale_depth")?,
            );
            Ok(model.patched(|p| p.unet.self_attention.push(Arc::new(patch))))
        },
    },
    PatchNode {
        class_type: "TomePatchModel",
        display_name: "TomePatchModel",
        category: "_for_testing",
        python_module: "comfy_extras.nodes_tomesd",
        description: "",
        inputs: || vec![required("ratio", float(0.3, 0.0, 1.0, 0.01))],
        output_name: "MODEL",
        patch: |model, i| {
            let patch = TokenMerging::new(i.float("ratio")?);
            Ok(model.patched(|p| p.unet.self_attention.push(Arc::new(patch))))
        },
    },
    PatchNode {
        class_type: "PerpNeg",
        display_name: "Perp-Neg (DEPRECATED by PerpNegGuider)",
        category: "_for_testing",
        python_module: "comfy_extras.nodes_perpneg",
        description: "",
        inputs: || {
            vec![
                required("empty_conditioning", link(SlotType::CONDITIONING)),
                required("neg_scale", float(1.0, 0.0, 100.0, 0.01)),
            ]
        },
        output_name: "MODEL",
        patch: |model, i| {
            let patch = PerpNeg {
                empty: [Arc::clone(i.conditioning("empty_conditioning")?)],
                neg_scale: i.float("neg_scale")?,
            };
            Ok(model.patched(|p| p.cfg_function = Some(Arc::new(patch))))
        },
    },
];
