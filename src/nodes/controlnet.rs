//! ControlNet nodes: ControlNetLoader, DiffControlNetLoader, SetUnionControlNetType,
//! ControlNetApply and ControlNetApplyAdvanced, with ComfyUI's semantics. A CONTROL_NET is a ControlNet, a T2I-Adapter
//! or a Control-LoRA (see `engine::controlnet::apply::AppliedControl` for how each is evaluated):
//! the hint image is resized to the latent size × 8 (nearest-exact, centre crop), residuals and
//! adapter features are scaled by the strength and only added while the sigma is inside the
//! start/end window, and several controls on one conditioning add up. The old ControlNetApply's
//! control also reaches a negative side that has none (`CondEntry::control_apply_to_uncond`), as in
//! ComfyUI; ControlNetApplyAdvanced says for each side. Whether a control fits the
//! model is only known when sampling, so that error comes from the sampler and names the apply
//! node and its `control_net` input.

use std::sync::Arc;

use candle_core::Tensor;

use crate::engine::controlnet::apply::{AppliedControl, ControlTiming};
use crate::engine::controlnet::load::{load_control_on, ControlModel, LoadedControl};
use crate::engine::controlnet::union::{union_type_index, UNION_CONTROL_TYPES};
use crate::engine::diffusion::{CondEntry, ControlHint};
use crate::engine::sampling::model_sampling::{Config as SamplingConfig, ModelSamplingDiscrete};
use crate::graph::spec::build::*;
use crate::graph::spec::{ComboOptions, FileList, Freshness, InputKind, NodeSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::{
    file_fingerprint, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value,
};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(ControlNetLoader);
    registry.add(DiffControlNetLoader);
    registry.add(SetUnionControlNetType);
    registry.add(ControlNetApply);
    registry.add(ControlNetApplyAdvanced);
}

fn control_net_names() -> InputKind {
    InputKind::Combo {
        options: ComboOptions::Files(FileList::Models("controlnet")),
        default: None,
        image_upload: false,
    }
}

fn load(ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
    let name = inputs.string("control_net_name")?;
    let path = ctx.model_path("controlnet", "control_net_name", name)?;
    let loaded = ctx
        .models
        .control(&path)
        .map_err(|e| NodeError::model_load("control_net_name", e))?;
    Ok(NodeOutput::values(vec![Value::ControlNet(loaded)]))
}

fn loader_spec(
    class_type: &'static str,
    display_name: &'static str,
    mut inputs: Vec<crate::graph::spec::InputSpec>,
) -> NodeSpec {
    inputs.push(required("control_net_name", control_net_names()));
    NodeSpec {
        freshness: Freshness::ReadsFiles,
        ..node(
            class_type,
            display_name,
            "loaders",
            inputs,
            vec![output(SlotType::CONTROL_NET, "CONTROL_NET")],
        )
    }
}

/// Loads a ControlNet (LDM or diffusers layout, safetensors or pickle), a T2I-Adapter or a
/// Control-LoRA.
pub struct ControlNetLoader;

impl Node for ControlNetLoader {
    fn spec(&self) -> NodeSpec {
        loader_spec("ControlNetLoader", "Load ControlNet Model", vec![])
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        load(ctx, inputs)
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "controlnet", constants, "control_net_name")
    }
}

/// ComfyUI's loader for "difference" ControlNets, whose encoder weights are added to the model's
/// (LoRA patches included); every other control file loads as with ControlNetLoader.
pub struct DiffControlNetLoader;

impl Node for DiffControlNetLoader {
    fn spec(&self) -> NodeSpec {
        loader_spec(
            "DiffControlNetLoader",
            "Load ControlNet Model (diff)",
            vec![required("model", link(SlotType::MODEL))],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let base = model
            .weights
            .as_ref()
            .ok_or_else(|| NodeError::input("model", "the model keeps no weights to add to"))?;
        let name = inputs.string("control_net_name")?;
        let path = ctx.model_path("controlnet", "control_net_name", name)?;
        let loaded = ctx
            .models
            .file_weight_dtype(&path)
            .and_then(|dtype| load_control_on(&path, base, dtype, ctx.models.device()))
            .map_err(|e| NodeError::model_load("control_net_name", e))?;
        Ok(NodeOutput::values(vec![Value::ControlNet(Arc::new(
            loaded,
        ))]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "controlnet", constants, "control_net_name")
    }
}

/// ComfyUI's `type` options: "auto" (no type), then its `UNION_CONTROL_TYPES`.
const UNION_TYPE_OPTIONS: [&str; 9] = [
    "auto",
    UNION_CONTROL_TYPES[0],
    UNION_CONTROL_TYPES[1],
    UNION_CONTROL_TYPES[2],
    UNION_CONTROL_TYPES[3],
    UNION_CONTROL_TYPES[4],
    UNION_CONTROL_TYPES[5],
    UNION_CONTROL_TYPES[6],
    UNION_CONTROL_TYPES[7],
];

/// Sets the control type of a union (ControlNet++) ControlNet; "auto" clears it. Like ComfyUI, a
/// copy of the control is returned (the model is shared) and any other control passes through
/// with the type kept and ignored. A type the union model was not trained with (the original
/// controlnet-union-sdxl-1.0 knows 6, "promax" 8) is refused here rather than when sampling.
pub struct SetUnionControlNetType;

impl Node for SetUnionControlNetType {
    fn spec(&self) -> NodeSpec {
        node(
            "SetUnionControlNetType",
            "SetUnionControlNetType",
            "conditioning/controlnet",
            vec![
                required("control_net", link(SlotType::CONTROL_NET)),
                required("type", combo(&UNION_TYPE_OPTIONS)),
            ],
            vec![output(SlotType::CONTROL_NET, "CONTROL_NET")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let control = inputs.control_net("control_net")?;
        let name = inputs.string("type")?;
        let control_type = union_type_index(name);
        if let (ControlModel::ControlNet(net), Some(t)) = (control.model.as_ref(), control_type) {
            let known = net.config().union.as_ref().map(|u| u.num_control_types);
            if let Some(n) = known.filter(|&n| t >= n) {
                return Err(NodeError::input(
                    "type",
                    format!(
                        "'{name}' is control type {t}, and this union controlnet knows {n} types \
                         ({})",
                        UNION_CONTROL_TYPES[..n.min(UNION_CONTROL_TYPES.len())].join(", ")
                    ),
                ));
            }
        }
        Ok(NodeOutput::values(vec![Value::ControlNet(Arc::new(
            control.with_control_type(control_type),
        ))]))
    }
}

fn hint_of(inputs: &Inputs) -> Result<Tensor, NodeError> {
    let image = inputs.image("image")?;
    let (_, _, _, channels) = image
        .dims4()
        .map_err(|_| NodeError::input("image", "expected an IMAGE [B,H,W,C]"))?;
    if channels < 3 {
        return Err(NodeError::input(
            "image",
            format!("a ControlNet hint needs 3 colour channels, got {channels}"),
        ));
    }
    // Alpha is dropped: the hint is RGB.
    Ok(image.narrow(3, 0, 3)?.permute((0, 3, 1, 2))?.contiguous()?)
}

/// Applies one control to every entry of each list; the entries share it.
fn attach(
    lists: &[&Arc<Vec<CondEntry>>],
    control: &Arc<LoadedControl>,
    hint: Tensor,
    timing: ControlTiming,
    origin: String,
    apply_to_uncond: bool,
) -> Vec<Value> {
    let applied: Arc<dyn ControlHint> = Arc::new(AppliedControl::new(
        Arc::clone(control),
        hint,
        timing,
        origin,
    ));
    lists
        .iter()
        .map(|list| {
            let list = list
                .iter()
                .map(|entry| {
                    let mut entry = entry.clone();
                    entry.controls.push(Arc::clone(&applied));
                    entry.control_apply_to_uncond = apply_to_uncond;
                    entry
                })
                .collect();
            Value::Conditioning(Arc::new(list))
        })
        .collect()
}

/// Names the `control_net` input of the apply node, for sampling-time errors.
fn origin(ctx: &NodeContext, class_type: &str) -> String {
    format!("control_net of node '{}' ({class_type})", ctx.node_id)
}

/// The strength and the sigma window of start/end percents, as ComfyUI's `percent_to_sigma`
/// gives it (the SD schedule; eps and v models share it).
fn timing(strength: f64, start: f64, end: f64) -> ControlTiming {
    let sampling = ModelSamplingDiscrete::new(&SamplingConfig::sd_eps());
    ControlTiming {
        strength,
        sigma_start: sampling.percent_to_sigma(start),
        sigma_end: sampling.percent_to_sigma(end),
    }
}

/// Applies a ControlNet to one conditioning (ComfyUI's deprecated node).
pub struct ControlNetApply;

impl Node for ControlNetApply {
    fn spec(&self) -> NodeSpec {
        node(
            "ControlNetApply",
            "Apply ControlNet (OLD)",
            "conditioning/controlnet",
            vec![
                required("conditioning", link(SlotType::CONDITIONING)),
                required("control_net", link(SlotType::CONTROL_NET)),
                required("image", link(SlotType::IMAGE)),
                required("strength", float(1.0, 0.0, 10.0, 0.01)),
            ],
            vec![output(SlotType::CONDITIONING, "CONDITIONING")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let conditioning = inputs.conditioning("conditioning")?;
        let strength = inputs.float("strength")?;
        if strength == 0.0 {
            return Ok(NodeOutput::values(vec![Value::Conditioning(Arc::clone(
                conditioning,
            ))]));
        }
        let control = inputs.control_net("control_net")?;
        let hint = hint_of(inputs)?;
        Ok(NodeOutput::values(attach(
            &[conditioning],
            control,
            hint,
            timing(strength, 0.0, 1.0),
            origin(ctx, "ControlNetApply"),
            // As in ComfyUI: the old node's control also reaches the negative side.
            true,
        )))
    }
}

/// Applies a ControlNet to the positive and negative conditioning, within a step window.
pub struct ControlNetApplyAdvanced;

impl Node for ControlNetApplyAdvanced {
    fn spec(&self) -> NodeSpec {
        node(
            "ControlNetApplyAdvanced",
            "Apply ControlNet",
            "conditioning/controlnet",
            vec![
                required("positive", link(SlotType::CONDITIONING)),
                required("negative", link(SlotType::CONDITIONING)),
                required("control_net", link(SlotType::CONTROL_NET)),
                required("image", link(SlotType::IMAGE)),
                required("strength", float(1.0, 0.0, 10.0, 0.01)),
                required("start_percent", float(0.0, 0.0, 1.0, 0.001)),
                required("end_percent", float(1.0, 0.0, 1.0, 0.001)),
                optional("vae", link(SlotType::VAE)),
            ],
            vec![
                output(SlotType::CONDITIONING, "positive"),
                output(SlotType::CONDITIONING, "negative"),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let positive = inputs.conditioning("positive")?;
        let negative = inputs.conditioning("negative")?;
        let strength = inputs.float("strength")?;
        if strength == 0.0 {
            return Ok(NodeOutput::values(vec![
                Value::Conditioning(Arc::clone(positive)),
                Value::Conditioning(Arc::clone(negative)),
            ]));
        }
        let (start, end) = (inputs.float("start_percent")?, inputs.float("end_percent")?);
        if start > end {
            return Err(NodeError::input(
                "start_percent",
                format!("start_percent {start} is after end_percent {end}"),
            ));
        }
        let control = inputs.control_net("control_net")?;
        let hint = hint_of(inputs)?;
        Ok(NodeOutput::values(attach(
            &[positive, negative],
            control,
            hint,
            timing(strength, start, end),
            origin(ctx, "ControlNetApplyAdvanced"),
            false,
        )))
    }
}
