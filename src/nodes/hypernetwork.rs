//! HypernetworkLoader (comfy_extras/nodes_hypernetwork.py): reads a hypernetwork file from
//! `models/hypernetworks` (`engine::hypernetwork`) and returns a clone of the model handle with it
//! as both an attn1 and an attn2 patch, as ComfyUI sets it; the weights are shared, never copied.

use std::sync::Arc;

use crate::engine::hypernetwork::Hypernetwork;
use crate::graph::spec::build::*;
use crate::graph::spec::{ComboOptions, FileList, Freshness, InputKind, NodeSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::{
    file_fingerprint, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value,
};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(HypernetworkLoader);
}

/// Patches the model's attention with a hypernetwork at a strength.
pub struct HypernetworkLoader;

impl Node for HypernetworkLoader {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            python_module: "comfy_extras.nodes_hypernetwork",
            freshness: Freshness::ReadsFiles,
            ..node(
                "HypernetworkLoader",
                "HypernetworkLoader",
                "loaders",
                vec![
                    required("model", link(SlotType::MODEL)),
                    required(
                        "hypernetwork_name",
                        InputKind::Combo {
                            options: ComboOptions::Files(FileList::Models("hypernetworks")),
                            default: None,
                            image_upload: false,
                        },
                    ),
                    required("strength", float(1.0, -10.0, 10.0, 0.01)),
                ],
                vec![output(SlotType::MODEL, "MODEL")],
            )
        }
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = inputs.model("model")?;
        let name = inputs.string("hypernetwork_name")?;
        let path = ctx.model_path("hypernetworks", "hypernetwork_name", name)?;
        let file_error = |e: String| NodeError::input("hypernetwork_name", e);
        let mut net = Hypernetwork::open(&path)
            .map_err(|e| file_error(e.to_string()))?
            .to_device(model.unet.device())
            .map_err(|e| file_error(format!("cannot place '{name}': {e}")))?;
        net.strength = inputs.float("strength")?;
        let net = Arc::new(net);
        let patched = model.patched(|p| {
            p.unet.self_attention.push(net.clone());
            p.unet.cross_attention.push(net);
        });
        Ok(NodeOutput::values(vec![Value::Model(Arc::new(patched))]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "hypernetworks", constants, "hypernetwork_name")
    }
}
