//! Conditioning that carries an image for UNets with extra input channels: InpaintModelConditioning
//! (`nodes.py`) for inpainting models and InstructPixToPixConditioning
//! (`comfy_extras/nodes_ip2p.py`). Each puts an encoded image (and a mask) on every entry; the
//! sampler hands them to the UNet (`engine::diffusion::concat`).

use std::sync::Arc;

use candle_core::Tensor;

use crate::engine::diffusion::CondEntry;
use crate::graph::spec::build::*;
use crate::graph::spec::NodeSpec;
use crate::graph::SlotType;
use crate::nodes::latent::{encode_image, inpaint_pixels};
use crate::nodes::{Inputs, Latent, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    registry.add(InpaintModelConditioning);
    registry.add(InstructPixToPixConditioning);
}

/// Both conditionings with `edit` applied to every entry, then `latent`.
fn outputs(
    inputs: &Inputs,
    edit: impl Fn(&mut CondEntry),
    latent: Latent,
) -> Result<NodeOutput, NodeError> {
    let mut values = Vec::with_capacity(3);
    for name in ["positive", "negative"] {
        let mut list = inputs.conditioning(name)?.as_ref().clone();
        list.iter_mut().for_each(&edit);
        values.push(Value::Conditioning(Arc::new(list)));
    }
    values.push(Value::Latent(latent));
    Ok(NodeOutput::values(values))
}

fn cond_inputs_spec(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    extra: Vec<crate::graph::spec::InputSpec>,
) -> NodeSpec {
    let mut inputs = vec![
        required("positive", link(SlotType::CONDITIONING)),
        required("negative", link(SlotType::CONDITIONING)),
        required("vae", link(SlotType::VAE)),
        required("pixels", link(SlotType::IMAGE)),
    ];
    inputs.extend(extra);
    node(
        class_type,
        display_name,
        category,
        inputs,
        vec![
            output(SlotType::CONDITIONING, "positive"),
            output(SlotType::CONDITIONING, "negative"),
            output(SlotType::LATENT, "latent"),
        ],
    )
}

/// For inpainting models: the image with the masked part greyed out, encoded, and the mask go on
/// both conditionings; the latent is the whole image encoded, with the mask as its noise mask
/// unless `noise_mask` is off.
pub struct InpaintModelConditioning;

impl Node for InpaintModelConditioning {
    fn spec(&self) -> NodeSpec {
        let mut spec = cond_inputs_spec(
            "InpaintModelConditioning",
            "InpaintModelConditioning",
            "conditioning/inpaint",
            vec![
                required("mask", link(SlotType::MASK)),
                required("noise_mask", boolean(true)),
            ],
        );
        spec.inputs[5].tooltip = Some(
            "Add a noise mask to the latent so sampling will only happen within the mask. Might improve results or completely break things depending on the model.",
        );
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let vae = inputs.vae("vae")?;
        let pixels = inputs.image("pixels")?;
        let prepared = inpaint_pixels(vae, pixels, inputs.mask("mask")?)?;
        let concat_latent = encode_image(ctx, vae, &prepared.greyed)?;
        let samples = encode_image(ctx, vae, pixels)?;
        let latent = Latent {
            samples,
            noise_mask: inputs.bool("noise_mask")?.then(|| prepared.mask.clone()),
            batch_index: None,
        };
        outputs(
            inputs,
            |entry| {
                entry.concat_latent_image = Some(concat_latent.clone());
                entry.concat_mask = Some(prepared.mask.clone());
            },
            latent,
        )
    }
}

/// For InstructPix2Pix models: the image, encoded, goes on both conditionings; the latent is
/// zeros of its size.
pub struct InstructPixToPixConditioning;

impl Node for InstructPixToPixConditioning {
    fn spec(&self) -> NodeSpec {
        let mut spec = cond_inputs_spec(
            "InstructPixToPixConditioning",
            "InstructPixToPixConditioning",
            "conditioning/instructpix2pix",
            vec![],
        );
        spec.python_module = "comfy_extras.nodes_ip2p";
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let concat_latent = encode_image(ctx, inputs.vae("vae")?, inputs.image("pixels")?)?;
        let latent = Latent::new(Tensor::zeros_like(&concat_latent)?);
        outputs(
            inputs,
            |entry| entry.concat_latent_image = Some(concat_latent.clone()),
            latent,
        )
    }
}
