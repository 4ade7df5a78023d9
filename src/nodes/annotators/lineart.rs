//! comfyui_controlnet_aux's line-art nodes with networks: `LineArtPreprocessor` ("Realistic
//! Lineart", `sk_model.pth`, or `sk_model2.pth` when `coarse` is enabled) and
//! `AnimeLineArtPreprocessor` ("Anime Lineart", `netG.pth`). The networks and the detector calls
//! are in `engine::annotators::lineart`.

use crate::engine::annotators::lineart::{lineart, lineart_anime, AnimeUnet, LineartGenerator};
use crate::graph::spec::build::*;
use crate::graph::spec::NodeSpec;
use crate::graph::ConstValue;
use crate::nodes::annotators::{aux_spec, image_out, resolution, AnnotatorFile};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};
use crate::paths::DataDirs;

const CATEGORY: &str = "ControlNet Preprocessors/Line Extractors";

/// The realistic line-art net.
pub const SK_MODEL: AnnotatorFile = AnnotatorFile::lllyasviel("sk_model.pth");
/// Its coarse variant (same architecture, other weights).
pub const SK_MODEL_COARSE: AnnotatorFile = AnnotatorFile::lllyasviel("sk_model2.pth");
/// The anime line-art U-Net.
pub const NET_G: AnnotatorFile = AnnotatorFile::lllyasviel("netG.pth");

pub fn register(registry: &mut Registry) {
    registry.add(LineArtPreprocessor);
    registry.add(AnimeLineArtPreprocessor);
}

/// `LineArtPreprocessor`: realistic line art; `coarse` picks the coarse net.
pub struct LineArtPreprocessor;

impl LineArtPreprocessor {
    fn file(coarse: &str) -> AnnotatorFile {
        if coarse == "enable" {
            SK_MODEL_COARSE
        } else {
            SK_MODEL
        }
    }
}

impl Node for LineArtPreprocessor {
    fn spec(&self) -> NodeSpec {
        aux_spec(
            "LineArtPreprocessor",
            "Realistic Lineart",
            CATEGORY,
            vec![required("coarse", combo(&["disable", "enable"]))],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = Self::file(inputs.string("coarse")?).load(ctx, LineartGenerator::load)?;
        image_out(lineart(inputs.image("image")?, &model, resolution(inputs)?))
    }

    /// The file `coarse` picks; both while `coarse` is not a constant.
    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        let coarse = constants.iter().find_map(|(name, v)| match v {
            ConstValue::String(s) if name == "coarse" => Some(s.as_str()),
            _ => None,
        });
        match coarse {
            Some(c) => AnnotatorFile::fingerprint(dirs, &[Self::file(c)]),
            None => AnnotatorFile::fingerprint(dirs, &[SK_MODEL, SK_MODEL_COARSE]),
        }
    }
}

/// `AnimeLineArtPreprocessor`: anime line art.
pub struct AnimeLineArtPreprocessor;

impl Node for AnimeLineArtPreprocessor {
    fn spec(&self) -> NodeSpec {
        aux_spec(
            "AnimeLineArtPreprocessor",
            "Anime Lineart",
            CATEGORY,
            vec![],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let model = NET_G.load(ctx, AnimeUnet::load)?;
        image_out(lineart_anime(
            inputs.image("image")?,
            &model,
            resolution(inputs)?,
        ))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        _: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        AnnotatorFile::fingerprint(dirs, &[NET_G])
    }
}
