//! Soft edges and scribbles from a network: comfyui_controlnet_aux's `HEDPreprocessor`,
//! `FakeScribblePreprocessor` (HED), `PiDiNetPreprocessor` and `Scribble_PiDiNet_Preprocessor`
//! (PiDiNet). Each takes `safe` (`enable`: the map quantised to three levels) and `resolution`.

use crate::engine::annotators::hed::{self, ControlNetHed, HedOptions};
use crate::engine::annotators::pidinet::{self, PiDiNet, PidiOptions};
use crate::graph::spec::build::*;
use crate::graph::spec::NodeSpec;
use crate::graph::ConstValue;
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};
use crate::paths::DataDirs;

use super::{aux_spec, image_out, resolution, AnnotatorFile};

/// HED's weights (lllyasviel's Apache-2.0 retraining).
pub const HED_FILE: AnnotatorFile = AnnotatorFile::lllyasviel("ControlNetHED.pth");
/// PiDiNet's weights.
pub const PIDINET_FILE: AnnotatorFile = AnnotatorFile::lllyasviel("table5_pidinet.pth");

const CATEGORY: &str = "ControlNet Preprocessors/Line Extractors";

pub fn register(registry: &mut Registry) {
    for node in [
        SoftEdge {
            class_type: "HEDPreprocessor",
            display_name: "HED Soft-Edge Lines",
            net: Net::Hed,
            scribble: false,
        },
        SoftEdge {
            class_type: "FakeScribblePreprocessor",
            display_name: "Fake Scribble Lines (aka scribble_hed)",
            net: Net::Hed,
            scribble: true,
        },
        SoftEdge {
            class_type: "PiDiNetPreprocessor",
            display_name: "PiDiNet Soft-Edge Lines",
            net: Net::PiDiNet,
            scribble: false,
        },
        SoftEdge {
            class_type: "Scribble_PiDiNet_Preprocessor",
            display_name: "Scribble PiDiNet Lines",
            net: Net::PiDiNet,
            scribble: true,
        },
    ] {
        registry.add(node);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    Hed,
    PiDiNet,
}

/// One of the four nodes: which net, and whether it draws a scribble.
struct SoftEdge {
    class_type: &'static str,
    display_name: &'static str,
    net: Net,
    scribble: bool,
}

impl SoftEdge {
    fn file(&self) -> AnnotatorFile {
        match self.net {
            Net::Hed => HED_FILE,
            Net::PiDiNet => PIDINET_FILE,
        }
    }
}

impl Node for SoftEdge {
    fn spec(&self) -> NodeSpec {
        aux_spec(
            self.class_type,
            self.display_name,
            CATEGORY,
            vec![required("safe", combo(&["enable", "disable"]))],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = inputs.image("image")?;
        let safe = inputs.string("safe")? == "enable";
        let resolution = resolution(inputs)?;
        let scribble = self.scribble;
        match self.net {
            Net::Hed => {
                let net = HED_FILE.load(ctx, ControlNetHed::load)?;
                let opts = HedOptions {
                    safe,
                    scribble,
                    resolution,
                };
                image_out(hed::hed(&net, image, &opts))
            }
            Net::PiDiNet => {
                let net = PIDINET_FILE.load(ctx, PiDiNet::load)?;
                let opts = PidiOptions {
                    safe,
                    scribble,
                    resolution,
                };
                image_out(pidinet::pidinet(&net, image, &opts))
            }
        }
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        _constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        AnnotatorFile::fingerprint(dirs, &[self.file()])
    }
}
