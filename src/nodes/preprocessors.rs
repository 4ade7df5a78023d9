//! Image-only ControlNet preprocessors: ComfyUI's `Canny`, and the `comfyui_controlnet_aux` pack's
//! canny, scribble (XDoG), lineart standard, binary, color palette, shuffle and tile nodes, plus
//! a normal map from a depth image. The maths is in `engine::preprocess`.

use candle_core::Tensor;

use crate::engine::preprocess::{self, cv::Interpolation};
use crate::graph::spec::build::*;
use crate::graph::spec::{InputSpec, NodeSpec};
use crate::graph::SlotType;
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    registry.add(Canny);
    registry.add(CannyEdgePreprocessor);
    registry.add(ScribbleXdogPreprocessor);
    registry.add(LineartStandardPreprocessor);
    registry.add(BinaryPreprocessor);
    registry.add(ColorPreprocessor);
    registry.add(ShufflePreprocessor);
    registry.add(TilePreprocessor);
    registry.add(NormalFromDepth);
}

fn spec(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    python_module: &'static str,
    inputs: Vec<InputSpec>,
) -> NodeSpec {
    NodeSpec {
        python_module,
        ..node(
            class_type,
            display_name,
            category,
            inputs,
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }
}

/// The aux pack's nodes: category and module, and their `resolution` input.
pub(crate) fn aux(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    mut inputs: Vec<InputSpec>,
) -> NodeSpec {
    inputs.insert(0, required("image", link(SlotType::IMAGE)));
    inputs.push(required("resolution", int_step(512, 64, 16384, 64)));
    spec(
        class_type,
        display_name,
        category,
        "custom_nodes.comfyui_controlnet_aux",
        inputs,
    )
}

pub(crate) fn image_out(result: preprocess::Result<Tensor>) -> Result<NodeOutput, NodeError> {
    let image = result.map_err(|e| NodeError::input("image", e.to_string()))?;
    Ok(NodeOutput::values(vec![Value::Image(image)]))
}

pub(crate) fn resolution(inputs: &Inputs) -> Result<u32, NodeError> {
    u32::try_from(inputs.int("resolution")?)
        .map_err(|_| NodeError::input("resolution", "out of range"))
}

pub(crate) fn u32_input(inputs: &Inputs, name: &str) -> Result<u32, NodeError> {
    u32::try_from(inputs.int(name)?).map_err(|_| NodeError::input(name, "out of range"))
}

/// ComfyUI's Canny (kornia's algorithm; thresholds on a 0–1 image).
pub struct Canny;

impl Node for Canny {
    fn spec(&self) -> NodeSpec {
        spec(
            "Canny",
            "Canny",
            "image/preprocessors",
            "comfy_extras.nodes_canny",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("low_threshold", float(0.4, 0.01, 0.99, 0.01)),
                required("high_threshold", float(0.8, 0.01, 0.99, 0.01)),
            ],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let opts = preprocess::CannyOptions {
            low_threshold: inputs.float("low_threshold")? as f32,
            high_threshold: inputs.float("high_threshold")? as f32,
        };
        image_out(preprocess::canny(inputs.image("image")?, &opts))
    }
}

/// OpenCV Canny with 0–255 thresholds at a working resolution.
pub struct CannyEdgePreprocessor;

impl Node for CannyEdgePreprocessor {
    fn spec(&self) -> NodeSpec {
        aux(
            "CannyEdgePreprocessor",
            "Canny Edge",
            "ControlNet Preprocessors/Line Extractors",
            vec![
                required("low_threshold", int(100, 0, 255)),
                required("high_threshold", int(200, 0, 255)),
            ],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let opts = preprocess::CannyEdgeOptions {
            low_threshold: inputs.float("low_threshold")?,
            high_threshold: inputs.float("high_threshold")?,
            resolution: resolution(inputs)?,
            upscale_method: Interpolation::Cubic,
        };
        image_out(preprocess::canny_edge(inputs.image("image")?, &opts))
    }
}

/// Scribble lines by extended difference of Gaussians.
pub struct ScribbleXdogPreprocessor;

impl Node for ScribbleXdogPreprocessor {
    fn spec(&self) -> NodeSpec {
        aux(
            "Scribble_XDoG_Preprocessor",
            "Scribble XDoG Lines",
            "ControlNet Preprocessors/Line Extractors",
            vec![required("threshold", int(32, 1, 64))],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let opts = preprocess::ScribbleXdogOptions {
            threshold: u32_input(inputs, "threshold")?,
            resolution: resolution(inputs)?,
        };
        image_out(preprocess::scribble_xdog(inputs.image("image")?, &opts))
    }
}

/// "Lineart standard": a Gaussian-difference line extractor.
pub struct LineartStandardPreprocessor;

impl Node for LineartStandardPreprocessor {
    fn spec(&self) -> NodeSpec {
        aux(
            "LineartStandardPreprocessor",
            "Standard Lineart",
            "ControlNet Preprocessors/Line Extractors",
            // The pack spells it "guassian_sigma"; kept so its workflows load.
            vec![
                required("guassian_sigma", float(6.0, 0.0, 100.0, 0.1)),
                required("intensity_threshold", int(8, 0, 16)),
            ],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let opts = preprocess::LineartStandardOptions {
            gaussian_sigma: inputs.float("guassian_sigma")?,
            intensity_threshold: inputs.int("intensity_threshold")? as f32,
            resolution: resolution(inputs)?,
        };
        image_out(preprocess::lineart_standard(inputs.image("image")?, &opts))
    }
}

/// Black and white at a threshold (0 or 255: Otsu's threshold).
pub struct BinaryPreprocessor;

impl Node for BinaryPreprocessor {
    fn spec(&self) -> NodeSpec {
        aux(
            "BinaryPreprocessor",
            "Binary Lines",
            "ControlNet Preprocessors/Line Extractors",
            vec![required("bin_threshold", int(100, 0, 255))],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let opts = preprocess::BinaryOptions {
            bin_threshold: u32_input(inputs, "bin_threshold")?,
            resolution: resolution(inputs)?,
        };
        image_out(preprocess::binary(inputs.image("image")?, &opts))
    }
}

/// A coarse colour palette (downsampled 64×, then enlarged).
pub struct ColorPreprocessor;

impl Node for ColorPreprocessor {
    fn spec(&self) -> NodeSpec {
        aux(
            "ColorPreprocessor",
            "Color Pallete",
            "ControlNet Preprocessors/T2IAdapter-only",
            vec![],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        image_out(preprocess::color(
            inputs.image("image")?,
            &preprocess::ColorOptions {
                resolution: resolution(inputs)?,
            },
        ))
    }
}

/// Content shuffle: a seeded random warp.
pub struct ShufflePreprocessor;

impl Node for ShufflePreprocessor {
    fn spec(&self) -> NodeSpec {
        aux(
            "ShufflePreprocessor",
            "Content Shuffle",
            "ControlNet Preprocessors/color style",
            vec![required("seed", seed())],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let seed = u64::try_from(inputs.int("seed")?)
            .map_err(|_| NodeError::input("seed", "out of range"))?;
        image_out(preprocess::shuffle(
            inputs.image("image")?,
            &preprocess::ShuffleOptions {
                seed,
                resolution: resolution(inputs)?,
            },
        ))
    }
}

/// Tile: blur by repeated pyramid down/up.
pub struct TilePreprocessor;

impl Node for TilePreprocessor {
    fn spec(&self) -> NodeSpec {
        aux(
            "TilePreprocessor",
            "Tile",
            "ControlNet Preprocessors/tile",
            vec![required("pyrUp_iters", int(3, 1, 10))],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let opts = preprocess::TileOptions {
            pyr_up_iters: u32_input(inputs, "pyrUp_iters")?,
        };
        image_out(preprocess::tile(inputs.image("image")?, &opts))
    }
}

/// A normal map from a depth image (the MiDaS annotator's gradient method).
pub struct NormalFromDepth;

impl Node for NormalFromDepth {
    fn spec(&self) -> NodeSpec {
        let mut spec = aux(
            "WeftNormalFromDepth",
            "Normal Map from Depth",
            "ControlNet Preprocessors/Normal and Depth Estimators",
            vec![
                required("a", float(std::f64::consts::TAU, 0.0, 50.0, 0.05)),
                required("bg_threshold", float(0.1, 0.0, 1.0, 0.05)),
            ],
        );
        spec.python_module = "weft";
        spec
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let opts = preprocess::NormalFromDepthOptions {
            bg_threshold: inputs.float("bg_threshold")? as f32,
            a: inputs.float("a")? as f32,
            resolution: resolution(inputs)?,
        };
        image_out(preprocess::normal_from_depth(inputs.image("image")?, &opts))
    }
}
