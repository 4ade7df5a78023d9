//! comfyui_controlnet_aux's `OpenposePreprocessor` (`node_wrappers/openpose.py`): the pose map of
//! the OpenPose body network and the poses as POSE_KEYPOINT (the OpenPose JSON frames, one per
//! image). Hand and face detection (`detect_hand`, `detect_face`) are not implemented: enabling
//! them fails with a message saying so, rather than giving a map that differs from the pack's.

use std::sync::Arc;

use crate::engine::annotators::openpose::{self, BodyNet, OpenposeOptions};
use crate::graph::spec::build::*;
use crate::graph::spec::{ComboOptions, InputKind, NodeSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};
use crate::paths::DataDirs;

use super::{aux_spec, resolution, AnnotatorFile};

/// The body network's published file.
pub const BODY: AnnotatorFile = AnnotatorFile::lllyasviel("body_pose_model.pth");

pub fn register(registry: &mut Registry) {
    registry.add(OpenposePreprocessor);
}

const ENABLE_DISABLE: &[&str] = &["enable", "disable"];
const DISABLE_ENABLE: &[&str] = &["disable", "enable"];

fn switch(options: &'static [&'static str]) -> InputKind {
    InputKind::Combo {
        options: ComboOptions::Static(options),
        default: Some(options[0]),
        image_upload: false,
    }
}

/// An enable/disable input; absent (the pack declares them optional) means its default.
fn enabled(inputs: &Inputs, name: &str, default: bool) -> Result<bool, NodeError> {
    match inputs.get(name) {
        None => Ok(default),
        Some(_) => match inputs.string(name)? {
            "enable" => Ok(true),
            "disable" => Ok(false),
            other => Err(NodeError::input(
                name,
                format!("'{other}' is not enable or disable"),
            )),
        },
    }
}

/// OpenPose Pose: the body (hands and faces not yet) as the pack draws it, plus the JSON poses.
pub struct OpenposePreprocessor;

impl Node for OpenposePreprocessor {
    fn spec(&self) -> NodeSpec {
        let mut spec = aux_spec(
            "OpenposePreprocessor",
            "OpenPose Pose",
            "ControlNet Preprocessors/Faces and Poses Estimators",
            vec![
                optional("detect_hand", switch(ENABLE_DISABLE)),
                optional("detect_body", switch(ENABLE_DISABLE)),
                optional("detect_face", switch(ENABLE_DISABLE)),
            ],
        );
        // The pack's order: `resolution` (added last by aux_spec) before the stick option.
        spec.inputs
            .push(optional("scale_stick_for_xinsr_cn", switch(DISABLE_ENABLE)));
        spec.outputs
            .push(output(SlotType::POSE_KEYPOINT, "POSE_KEYPOINT"));
        spec
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        _constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        AnnotatorFile::fingerprint(dirs, &[BODY])
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let opts = OpenposeOptions {
            resolution: resolution(inputs)?,
            include_body: enabled(inputs, "detect_body", true)?,
            include_hand: enabled(inputs, "detect_hand", true)?,
            include_face: enabled(inputs, "detect_face", true)?,
            xinsr_stick_scaling: enabled(inputs, "scale_stick_for_xinsr_cn", false)?,
        };
        let image = inputs.image("image")?;
        // Refuse hands/faces before loading anything.
        if opts.include_hand || opts.include_face {
            let name = if opts.include_hand {
                "detect_hand"
            } else {
                "detect_face"
            };
            return Err(NodeError::input(
                name,
                "hand and face detection are not implemented in Weft yet: set detect_hand and \
                 detect_face to disable",
            ));
        }
        let net = BODY.load(ctx, BodyNet::load)?;
        let (maps, frames) = openpose::openpose(image, &net, &opts)
            .map_err(|e| NodeError::input("image", e.to_string()))?;
        Ok(NodeOutput::values(vec![
            Value::Image(maps),
            Value::PoseKeypoint(Arc::new(frames)),
        ]))
    }
}
