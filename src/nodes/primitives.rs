//! Primitive values and the API's image output: PrimitiveInt, PrimitiveFloat, PrimitiveString,
//! PrimitiveStringMultiline, PrimitiveBoolean (ComfyUI's `comfy_extras/nodes_primitive.py`) and
//! SaveImageWebsocket (ComfyUI's `custom_nodes/websocket_image_save.py`), which sends images as
//! preview frames on the socket instead of writing files.

use candle_core::{DType, Device};

use crate::graph::spec::build::*;
use crate::graph::spec::{Freshness, InputKind, NodeSpec};
use crate::graph::SlotType;
use crate::nodes::image_io::encode_png;
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Ui};

/// Python's `sys.maxsize`, the primitives' bounds.
const MAX_SIZE: i128 = i64::MAX as i128;

pub fn register(registry: &mut Registry) {
    registry.add(Primitive {
        class_type: "PrimitiveInt",
        display_name: "Int",
        ty: SlotType::INT,
    });
    registry.add(Primitive {
        class_type: "PrimitiveFloat",
        display_name: "Float",
        ty: SlotType::FLOAT,
    });
    registry.add(Primitive {
        class_type: "PrimitiveString",
        display_name: "String",
        ty: SlotType::STRING,
    });
    registry.add(Primitive {
        class_type: "PrimitiveStringMultiline",
        display_name: "String (Multiline)",
        ty: SlotType::STRING,
    });
    registry.add(Primitive {
        class_type: "PrimitiveBoolean",
        display_name: "Boolean",
        ty: SlotType::BOOLEAN,
    });
    registry.add(SaveImageWebsocket);
}

/// A node that outputs its `value` widget.
pub struct Primitive {
    class_type: &'static str,
    display_name: &'static str,
    ty: SlotType,
}

impl Primitive {
    fn widget(&self) -> InputKind {
        match self.class_type {
            "PrimitiveInt" => InputKind::Int {
                default: 0,
                min: -MAX_SIZE,
                max: MAX_SIZE,
                step: 1,
                control_after_generate: true,
            },
            "PrimitiveFloat" => float(0.0, -MAX_SIZE as f64, MAX_SIZE as f64, 0.1),
            "PrimitiveStringMultiline" => InputKind::String {
                default: "",
                multiline: true,
                dynamic_prompts: false,
            },
            "PrimitiveBoolean" => boolean(false),
            _ => string(""),
        }
    }
}

impl Node for Primitive {
    fn spec(&self) -> NodeSpec {
        let mut spec = node(
            self.class_type,
            self.display_name,
            "utils/primitive",
            vec![required("value", self.widget())],
            vec![output(self.ty, self.ty.name())],
        );
        spec.python_module = "comfy_extras.nodes_primitive";
        spec
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let value = inputs
            .get("value")
            .cloned()
            .ok_or_else(|| NodeError::input("value", "required input is missing"))?;
        Ok(NodeOutput::values(vec![value]))
    }
}

/// Sends each image as a PNG preview frame on the socket (binary type 1, format 2), with a
/// progress event per image; writes no file and keeps no metadata.
pub struct SaveImageWebsocket;

impl Node for SaveImageWebsocket {
    fn spec(&self) -> NodeSpec {
        let mut spec = node(
            "SaveImageWebsocket",
            "SaveImageWebsocket",
            "image",
            vec![required("images", link(SlotType::IMAGE))],
            vec![],
        );
        spec.output_node = true;
        // `IS_CHANGED` returns the time: it sends its images on every run.
        spec.freshness = Freshness::Always;
        spec.python_module = "custom_nodes.websocket_image_save";
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let images = inputs.image("images")?;
        let (batch, height, width, channels) = images.dims4().map_err(|_| {
            NodeError::input(
                "images",
                format!("expected an IMAGE [B,H,W,C], got shape {:?}", images.dims()),
            )
        })?;
        if channels != 3 {
            return Err(NodeError::input(
                "images",
                format!("sends RGB images, got {channels} channels"),
            ));
        }
        let images = images.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        for step in 0..batch {
            ctx.check_interrupt()?;
            let pixels: Vec<f32> = images.get(step)?.flatten_all()?.to_vec1()?;
            // ComfyUI: clip(255 * x, 0, 255).astype(uint8), a truncation.
            let bytes: Vec<u8> = pixels
                .iter()
                .map(|v| (v * 255.0).clamp(0.0, 255.0) as u8)
                .collect();
            // ProgressBar.update_absolute(step, total, preview): the progress, then the image.
            ctx.progress(step as u64, batch as u64);
            ctx.reporter
                .output_image(&ctx.node_id, encode_png(&bytes, width, height));
        }
        Ok(NodeOutput {
            values: vec![],
            ui: Some(Ui::default()),
        })
    }
}
