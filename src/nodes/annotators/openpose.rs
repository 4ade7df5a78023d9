//! comfyui_controlnet_aux's `OpenposePreprocessor` (`node_wrappers/openpose.py`): the pose map of
//! the OpenPose body network, with hands (`hand_pose_model.pth`) and faces (`facenet.pth`) where
//! `detect_hand` / `detect_face` are enabled, and the poses as POSE_KEYPOINT (the OpenPose JSON
//! frames, one per image). The pack loads all three files whatever the switches; Weft reads the
//! hand and face files only when their detection is on.

use std::sync::Arc;

use crate::engine::annotators::openpose::{
    self, BodyNet, FaceNet, HandNet, OpenposeNets, OpenposeOptions,
};
use crate::graph::spec::build::*;
use crate::graph::spec::{ComboOptions, InputKind, NodeSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};
use crate::paths::DataDirs;

use super::{aux_spec, resolution, AnnotatorFile};

/// The body network's published file.
pub const BODY: AnnotatorFile = AnnotatorFile::lllyasviel("body_pose_model.pth");
/// The hand network's published file.
pub const HAND: AnnotatorFile = AnnotatorFile::lllyasviel("hand_pose_model.pth");
/// The face network's published file.
pub const FACE: AnnotatorFile = AnnotatorFile::lllyasviel("facenet.pth");

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

/// A switch's value among the graph's constants (`"enable"` when not a constant, as the default).
fn switch_on(constants: &[(String, ConstValue)], name: &str) -> bool {
    !constants
        .iter()
        .any(|(k, v)| k == name && matches!(v, ConstValue::String(s) if s == "disable"))
}

/// OpenPose Pose: body, hands and faces as the pack draws them, plus the JSON poses.
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
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        let mut files = vec![BODY];
        if switch_on(constants, "detect_hand") {
            files.push(HAND);
        }
        if switch_on(constants, "detect_face") {
            files.push(FACE);
        }
        AnnotatorFile::fingerprint(dirs, &files)
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
        let body = BODY.load(ctx, BodyNet::load)?;
        let hand = opts
            .include_hand
            .then(|| HAND.load(ctx, HandNet::load))
            .transpose()?;
        let face = opts
            .include_face
            .then(|| FACE.load(ctx, FaceNet::load))
            .transpose()?;
        let nets = OpenposeNets {
            body: &body,
            hand: hand.as_deref(),
            face: face.as_deref(),
        };
        let (maps, frames) = openpose::openpose(image, &nets, &opts)
            .map_err(|e| NodeError::input("image", e.to_string()))?;
        Ok(NodeOutput::values(vec![
            Value::Image(maps),
            Value::PoseKeypoint(Arc::new(frames)),
        ]))
    }
}
