//! CLIP vision encoders (ComfyUI's CLIP_VISION and CLIP_VISION_OUTPUT) and the T2I style
//! adapter that reads their output.
//!
//! - `model`: the vision transformer (`ClipVisionModel`, HF names) on the text tower's layers,
//!   and ComfyUI's `clip_preprocess`;
//! - `convert`: HF, OpenCLIP `visual.*` and unCLIP-checkpoint layouts to HF names, the shape
//!   inferred from the weights;
//! - `style`: the style adapter (`StyleAdapter`).
//!
//! Nothing here reads files; errors are the CLIP encoders' `ClipError`.

pub mod convert;
pub mod model;
pub mod style;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use convert::{infer_vision_config, vision_weights, UNCLIP_CHECKPOINT_PREFIX};
pub use model::{preprocess, ClipVisionConfig, ClipVisionModel, ClipVisionOutput};
pub use style::StyleAdapter;

use crate::clip::ClipError;

/// Builds the vision tower under `prefix` in `sd` (any of the layouts `convert` knows) with
/// weights in `dtype` on `device`.
pub fn clip_vision_from_weights(
    sd: &HashMap<String, Tensor>,
    prefix: &str,
    dtype: DType,
    device: &Device,
) -> Result<ClipVisionModel, ClipError> {
    let hf = vision_weights(sd, prefix)?;
    let config = infer_vision_config(&hf)?;
    ClipVisionModel::new(VarBuilder::from_tensors(hf, dtype, device), &config)
}
