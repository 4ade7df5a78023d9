//! "Difference" ControlNets (a `difference` marker, LDM layout): the weights the base UNet also
//! has are stored as deltas to the base model's. They load with
//! [`crate::controlnet::load::load_control_on`], which adds the base model's UNet weights as
//! ComfyUI's `load_controlnet(path, model)` does; `load_control` refuses them ([`needs_model`]).

use std::sync::Arc;

use candle_core::{DType, Device};

use crate::controlnet::base::{BaseSource, BaseWeights};
use crate::controlnet::detect::detect_controlnet;
use crate::controlnet::format::UNUSED_WARNING;
use crate::controlnet::keymap::controlnet_ldm_names;
use crate::controlnet::ControlNetModel;
use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};

/// The error for a difference ControlNet loaded without its base model.
pub(crate) fn needs_model() -> LoadErrorKind {
    LoadErrorKind::UnsupportedFormat(
        "this is a difference controlnet: its weights are added to the base model's; load it with \
         DiffControlNetLoader and the model"
            .into(),
    )
}

/// Builds a difference ControlNet: every weight whose name the base UNet also has is the file's
/// plus the base's (in f32), the rest (hint block, zero convs) is the file's.
pub(crate) fn load_difference_from(
    sd: &Arc<StateDict>,
    prefix: &str,
    base: &Arc<BaseWeights>,
    dtype: DType,
    device: &Device,
) -> Result<ControlNetModel, LoadError> {
    let err = |k| LoadError::new(sd.path(), k);
    let names = controlnet_ldm_names(sd, prefix).map_err(err)?;
    let cfg = detect_controlnet(sd, &names).map_err(err)?;
    let sources = names
        .into_iter()
        .map(|(name, key)| {
            let source = if base.contains_key(&name) {
                BaseSource::Difference {
                    key,
                    base: name.clone(),
                }
            } else {
                BaseSource::Key(key)
            };
            (name, source)
        })
        .collect();
    Renaming::with_context(sources, Arc::clone(base))
        .warn_unused(UNUSED_WARNING)
        .build(sd, dtype, device, |vb| ControlNetModel::new(vb, &cfg))
}
