//! ControlNet nodes: ControlNetLoader, DiffControlNetLoader, ControlNetApply and
//! ControlNetApplyAdvanced, with ComfyUI's semantics: the hint image is resized to the latent size
//! × 8 (nearest-exact, centre crop), residuals are scaled by the strength and only added while the
//! sigma is inside the start/end window, and several ControlNets on one conditioning add up.

use std::sync::Arc;

use candle_core::{DType, Device, Result as CandleResult, Tensor};

use crate::engine::controlnet::apply::{
    active_at_sigma, prepare_hint, scale_residuals, sum_residuals, ControlScaling,
};
use crate::engine::controlnet::load::{load_control, ControlModel};
use crate::engine::controlnet::{check_compatible, ControlNetModel};
use crate::engine::diffusion::{CondEntry, ControlHint};
use crate::engine::sampling::model_sampling::{Config as SamplingConfig, ModelSamplingDiscrete};
use crate::engine::unet::{ControlResiduals, UNet2DConditionModel};
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
    registry.add(ControlNetApply);
    registry.add(ControlNetApplyAdvanced);
}

/// One ControlNet applied to a conditioning entry, chained to the ones applied before it.
#[derive(Debug)]
struct ControlNetHint {
    model: Arc<ControlNetModel>,
    /// `[B, 3, H, W]` in 0..1, as given; resized to the latent at each call.
    hint: Tensor,
    strength: f64,
    sigma_start: f64,
    sigma_end: f64,
    previous: Option<Arc<dyn ControlHint>>,
}

impl ControlHint for ControlNetHint {
    fn residuals(
        &self,
        x_in: &Tensor,
        timesteps: &Tensor,
        sigma: f64,
        context: &Tensor,
        y: Option<&Tensor>,
        unet: &UNet2DConditionModel,
    ) -> CandleResult<Option<ControlResiduals>> {
        let previous = match &self.previous {
            Some(previous) => previous.residuals(x_in, timesteps, sigma, context, y, unet)?,
            None => None,
        };
        let own = if active_at_sigma(sigma, self.sigma_start, self.sigma_end) {
            check_compatible(self.model.config(), unet.config())
                .map_err(candle_core::Error::Msg)?;
            let (batch, _, h, w) = x_in.dims4()?;
            let mut hint = prepare_hint(&self.hint, h, w, 8)?;
            let hint_batch = hint.dim(0)?;
            if hint_batch != batch {
                // ComfyUI repeats the hint batch to cover the latent batch.
                hint = hint
                    .repeat((batch.div_ceil(hint_batch), 1, 1, 1))?
                    .narrow(0, 0, batch)?;
            }
            let hint = hint.to_dtype(self.model.dtype())?;
            let raw = self.model.forward(
                &x_in.to_dtype(self.model.dtype())?,
                timesteps,
                &context.to_dtype(self.model.dtype())?,
                y,
                &hint,
            )?;
            Some(scale_residuals(
                &raw,
                self.strength,
                ControlScaling::Constant,
            )?)
        } else {
            None
        };
        Ok(match (previous, own) {
            (Some(a), Some(b)) => Some(sum_residuals(&a, &b)?),
            (a, None) => a,
            (None, b) => b,
        })
    }
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
    let loaded = load_control(&path, DType::F32, &Device::Cpu)
        .map_err(|e| NodeError::input("control_net_name", e.to_string()))?;
    match loaded.model {
        ControlModel::ControlNet(model) => Ok(NodeOutput::values(vec![Value::ControlNet(Arc::from(model))])),
        ControlModel::Adapter(_) => Err(NodeError::input(
            "control_net_name",
            format!("{name} is a T2I-Adapter; Weft loads it but does not apply adapters in sampling yet"),
        )),
    }
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

/// Loads a ControlNet (LDM or diffusers layout, safetensors or pickle).
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

/// ComfyUI's loader for "difference" ControlNets; ordinary ControlNets load the same way, and
/// difference files are refused with a clear error.
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

fn attach(
    list: &[CondEntry],
    model: &Arc<ControlNetModel>,
    hint: &Tensor,
    strength: f64,
    window: (f64, f64),
) -> Value {
    let list = list
        .iter()
        .map(|entry| {
            let mut entry = entry.clone();
            let control: Arc<dyn ControlHint> = Arc::new(ControlNetHint {
                model: Arc::clone(model),
                hint: hint.clone(),
                strength,
                sigma_start: window.0,
                sigma_end: window.1,
                previous: entry.control.take(),
            });
            entry.control = Some(control);
            entry
        })
        .collect();
    Value::Conditioning(Arc::new(list))
}

/// The sigma window of start/end percents, as ComfyUI's `percent_to_sigma` gives it (the SD
/// schedule; eps and v models share it).
fn sigma_window(start: f64, end: f64) -> (f64, f64) {
    let sampling = ModelSamplingDiscrete::new(&SamplingConfig::sd_eps());
    (
        sampling.percent_to_sigma(start),
        sampling.percent_to_sigma(end),
    )
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

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let conditioning = inputs.conditioning("conditioning")?;
        let strength = inputs.float("strength")?;
        if strength == 0.0 {
            return Ok(NodeOutput::values(vec![Value::Conditioning(Arc::clone(
                conditioning,
            ))]));
        }
        let model = inputs.control_net("control_net")?;
        let hint = hint_of(inputs)?;
        Ok(NodeOutput::values(vec![attach(
            conditioning,
            model,
            &hint,
            strength,
            sigma_window(0.0, 1.0),
        )]))
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

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
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
        let model = inputs.control_net("control_net")?;
        let hint = hint_of(inputs)?;
        let window = sigma_window(start, end);
        Ok(NodeOutput::values(vec![
            attach(positive, model, &hint, strength, window),
            attach(negative, model, &hint, strength, window),
        ]))
    }
}
