//! What a control file holds, told from its keys in ComfyUI's `load_controlnet` order
//! ([`classify`]): a Control-LoRA (`lora_controlnet` marker), a difference ControlNet
//! (`difference` marker), a ControlNet in diffusers or LDM layout (`control_model.`-prefixed or
//! bare), or a T2I-Adapter in diffusers or TencentARC names. Stable Cascade ControlNets are not
//! recognised (an unknown-format error listing the keys looked for), nor are pickles that nest the
//! weights under an `adapter` key.

use crate::load::file::StateDict;
use crate::load::LoadErrorKind;

/// Prefix of the ControlNet in lllyasviel's original `.pth` files.
pub const CONTROL_MODEL_PREFIX: &str = "control_model.";

/// What a control file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFileKind {
    /// A ControlNet in LDM layout; `prefix` is `control_model.` or empty.
    ControlNetLdm {
        /// The key prefix of its weights.
        prefix: String,
    },
    /// A "difference" ControlNet in LDM layout: the weights the base UNet also has are deltas to
    /// it.
    ControlNetDifference {
        /// The key prefix of its weights (`control_model.` or empty).
        prefix: String,
    },
    /// A ControlNet in diffusers layout.
    ControlNetDiffusers,
    /// A T2I-Adapter, in diffusers (`adapter.` prefix) or TencentARC names.
    Adapter {
        /// `true` for diffusers names, `false` for TencentARC's.
        diffusers_names: bool,
    },
    /// A Stability Control-LoRA (`lora_controlnet` marker): LDM names, low-rank deltas against
    /// the base UNet; see [`crate::controlnet::control_lora`].
    ControlLora,
}

/// Tells the kind of control file from its keys (ComfyUI's `load_controlnet` order).
pub fn classify(sd: &StateDict) -> Result<ControlFileKind, LoadErrorKind> {
    let unsupported = |what: &str| Err(LoadErrorKind::UnsupportedFormat(what.to_string()));
    if sd.contains("lora_controlnet") {
        return Ok(ControlFileKind::ControlLora);
    }
    if sd.contains("difference") {
        for prefix in [CONTROL_MODEL_PREFIX, ""] {
            if sd.contains(&format!("{prefix}zero_convs.0.0.weight")) {
                return Ok(ControlFileKind::ControlNetDifference {
                    prefix: prefix.to_string(),
                });
            }
        }
        return unsupported("a difference controlnet without LDM zero_convs is not supported");
    }
    if sd.contains("controlnet_cond_embedding.conv_in.weight") {
        return Ok(ControlFileKind::ControlNetDiffusers);
    }
    for prefix in [CONTROL_MODEL_PREFIX, ""] {
        if sd.contains(&format!("{prefix}zero_convs.0.0.weight")) {
            return Ok(ControlFileKind::ControlNetLdm {
                prefix: prefix.to_string(),
            });
        }
    }
    if sd.contains("adapter.conv_in.weight") || sd.contains("adapter.body.0.in_conv.weight") {
        return Ok(ControlFileKind::Adapter {
            diffusers_names: true,
        });
    }
    if sd.contains("conv_in.weight") && sd.contains("body.0.block1.weight")
        || sd.contains("body.0.in_conv.weight")
    {
        return Ok(ControlFileKind::Adapter {
            diffusers_names: false,
        });
    }
    Err(LoadErrorKind::UnknownFamily {
        looked_for: vec![
            "controlnet_cond_embedding.conv_in.weight".into(),
            format!("{CONTROL_MODEL_PREFIX}zero_convs.0.0.weight"),
            "zero_convs.0.0.weight".into(),
            "adapter.conv_in.weight".into(),
            "conv_in.weight + body.0.block1.weight".into(),
            "body.0.in_conv.weight".into(),
        ],
    })
}

/// What is logged when a control file has tensors the model does not use.
pub(crate) const UNUSED_WARNING: &str = "control model file has weights the model does not use";
