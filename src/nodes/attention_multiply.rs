//! ComfyUI's attention multiply nodes (`comfy_extras/nodes_attention_multiply.py`):
//! UNetSelfAttentionMultiply, UNetCrossAttentionMultiply and CLIPAttentionMultiply scale the
//! weights and biases of every attention's q, k, v and output projections (ComfyUI's
//! `add_patches({key: (None,)}, 0.0, factor)`, i.e. `weight * factor`). The scaled tensors are new;
//! every other weight stays shared with the input model, which is unchanged.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::graph::spec::build::*;
use crate::graph::spec::{InputSpec, NodeSpec};
use crate::graph::SlotType;
use crate::nodes::lora::{rebuild_clip, rebuild_unet};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    registry.add(UNetAttentionMultiply {
        class_type: "UNetSelfAttentionMultiply",
        attention: "attn1",
    });
    registry.add(UNetAttentionMultiply {
        class_type: "UNetCrossAttentionMultiply",
        attention: "attn2",
    });
    registry.add(ClipAttentionMultiply);
}

fn factor_inputs() -> Vec<InputSpec> {
    ["q", "k", "v", "out"]
        .into_iter()
        .map(|name| required(name, float(1.0, 0.0, 10.0, 0.01)))
        .collect()
}

fn spec_for(
    class_type: &'static str,
    first: InputSpec,
    ty: SlotType,
    out: &'static str,
) -> NodeSpec {
    let mut inputs = vec![first];
    inputs.extend(factor_inputs());
    NodeSpec {
        python_module: "comfy_extras.nodes_attention_multiply",
        ..node(
            class_type,
            class_type,
            "_for_testing/attention_experiments",
            inputs,
            vec![output(ty, out)],
        )
    }
}

/// `(weight-name suffixes, factor)` for the q, k, v and out projections, given their names.
fn targets(inputs: &Inputs, names: [&str; 4]) -> Result<Vec<(Vec<String>, f64)>, NodeError> {
    ["q", "k", "v", "out"]
        .into_iter()
        .zip(names)
        .map(|(input, name)| {
            let suffixes = vec![format!("{name}.weight"), format!("{name}.bias")];
            Ok((suffixes, inputs.float(input)?))
        })
        .collect()
}

/// The weights with every key ending in a target suffix multiplied by its factor; `None` when
/// every factor is 1 (nothing changes, so the input model is returned as is).
fn scaled(
    weights: &HashMap<String, Tensor>,
    targets: &[(Vec<String>, f64)],
) -> Result<Option<HashMap<String, Tensor>>, NodeError> {
    if targets.iter().all(|(_, f)| *f == 1.0) {
        return Ok(None);
    }
    let mut out = weights.clone();
    for (key, tensor) in out.iter_mut() {
        let hit = targets
            .iter()
            .find(|(suffixes, _)| suffixes.iter().any(|s| key.ends_with(s.as_str())));
        if let Some((_, factor)) = hit {
            if *factor != 1.0 {
                *tensor = tensor
                    .affine(*factor, 0.0)
                    .map_err(|e| NodeError::engine("scaling attention weights", e))?;
            }
        }
    }
    Ok(Some(out))
}

/// Scales one kind of the UNet's attentions: `attn1` (self) or `attn2` (cross).
struct UNetAttentionMultiply {
    class_type: &'static str,
    attention: &'static str,
}

impl Node for UNetAttentionMultiply {
    fn spec(&self) -> NodeSpec {
        spec_for(
            self.class_type,
            required("model", link(SlotType::MODEL)),
            SlotType::MODEL,
            "MODEL",
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let a = self.attention;
        let names = [
            format!("{a}.to_q"),
            format!("{a}.to_k"),
            format!("{a}.to_v"),
            format!("{a}.to_out.0"),
        ];
        let targets = targets(inputs, names.each_ref().map(String::as_str))?;
        let weights = model
            .weights
            .as_deref()
            .ok_or_else(|| NodeError::input("model", "no weights to patch"))?;
        let out = match scaled(weights, &targets)? {
            Some(patched) => rebuild_unet(model, patched)?,
            None => model.clone(),
        };
        Ok(NodeOutput::values(vec![Value::Model(out)]))
    }
}

/// Scales the text encoders' self-attentions.
struct ClipAttentionMultiply;

impl Node for ClipAttentionMultiply {
    fn spec(&self) -> NodeSpec {
        spec_for(
            "CLIPAttentionMultiply",
            required("clip", link(SlotType::CLIP)),
            SlotType::CLIP,
            "CLIP",
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let clip = inputs.clip("clip")?;
        let names = [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
        ];
        let targets = targets(inputs, names)?;
        if targets.iter().all(|(_, f)| *f == 1.0) {
            return Ok(NodeOutput::values(vec![Value::Clip(clip.clone())]));
        }
        let patched = rebuild_clip(clip, &|weights, _| {
            Ok(scaled(weights, &targets)?.unwrap_or_else(|| weights.clone()))
        })?;
        Ok(NodeOutput::values(vec![Value::Clip(patched)]))
    }
}
