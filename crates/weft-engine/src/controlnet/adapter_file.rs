//! T2I-Adapter files (ComfyUI's `load_t2i_adapter`): diffusers (`adapter.conv_in`,
//! `adapter.body.i.resnets.j`) or TencentARC / ComfyUI (`conv_in`, `body.k`) names; full SD1,
//! full SDXL (told apart, as ComfyUI does, by a `conv_in` input of 256 or 768 channels, i.e. a 16x
//! pixel unshuffle) and light adapters. The architecture is read off the tensor shapes.
//!
//! Not supported, with an error that says so: adapters with `skep` or strided-conv downsampling
//! (`down_opt.op`).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::controlnet::adapter::{AdapterKind, T2IAdapter, T2IAdapterConfig};
use crate::controlnet::format::UNUSED_WARNING;
use crate::load::detect::count_indexed;
use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};

/// Builds the T2I-Adapter of `sd`, whose keys are diffusers' (`diffusers_names`) or TencentARC's.
pub(crate) fn load_adapter_from(
    sd: &Arc<StateDict>,
    diffusers_names: bool,
    dtype: DType,
    device: &Device,
) -> Result<T2IAdapter, LoadError> {
    let err = |k| LoadError::new(sd.path(), k);
    for bad in ["skep.weight", "down_opt.op.weight"] {
        if let Some(k) = sd.shapes().keys().find(|k| k.ends_with(bad)) {
            return Err(err(LoadErrorKind::UnsupportedFormat(format!(
                "t2i-adapter with '{k}' (skip convolutions or strided-conv downsampling) is not \
                 supported"
            ))));
        }
    }
    let light =
        sd.contains("body.0.in_conv.weight") || sd.contains("adapter.body.0.out_conv.weight");
    let names: HashMap<String, String> = if diffusers_names {
        identity_names(sd, "")
            .into_iter()
            .filter(|(k, _)| k.starts_with("adapter."))
            .collect()
    } else {
        sd.shapes()
            .keys()
            .filter_map(|k| Some((adapter_tencentarc_to_diffusers(k, light)?, k.clone())))
            .collect()
    };
    let cfg = detect_adapter(sd, &names, light).map_err(err)?;
    Renaming::new(names)
        .warn_unused(UNUSED_WARNING)
        .build(sd, dtype, device, |vb| T2IAdapter::new(vb, &cfg))
}

/// Identity names for the keys under `prefix` (prefix removed on the model side).
fn identity_names(sd: &StateDict, prefix: &str) -> HashMap<String, String> {
    sd.shapes()
        .keys()
        .filter_map(|k| Some((k.strip_prefix(prefix)?.to_string(), k.clone())))
        .collect()
}

/// Number of resnets per level in TencentARC full adapters (ComfyUI: `nums_rb=2`).
const FULL_ADAPTER_RESNETS: usize = 2;

/// Maps a TencentARC / ComfyUI adapter key to its diffusers name (the inverse of the renaming in
/// ComfyUI's `load_t2i_adapter`). Full adapters: `body.{2i+j}` is level `i`, resnet `j`.
pub fn adapter_tencentarc_to_diffusers(key: &str, light: bool) -> Option<String> {
    if let Some(param) = key.strip_prefix("conv_in.") {
        return (!light).then(|| format!("adapter.conv_in.{param}"));
    }
    let rest = key.strip_prefix("body.")?;
    let (k, rest) = rest.split_once('.')?;
    let k: usize = k.parse().ok()?;
    if light {
        if let Some(rest) = rest.strip_prefix("body.") {
            let (j, rest) = rest.split_once('.')?;
            return Some(format!("adapter.body.{k}.resnets.{j}.{rest}"));
        }
        return (rest.starts_with("in_conv.") || rest.starts_with("out_conv."))
            .then(|| format!("adapter.body.{k}.{rest}"));
    }
    let (i, j) = (k / FULL_ADAPTER_RESNETS, k % FULL_ADAPTER_RESNETS);
    if rest.starts_with("block1.") || rest.starts_with("block2.") {
        return Some(format!("adapter.body.{i}.resnets.{j}.{rest}"));
    }
    (rest.starts_with("in_conv.") && j == 0).then(|| format!("adapter.body.{i}.{rest}"))
}

/// Infers a T2I-Adapter's architecture from diffusers-named shapes.
fn detect_adapter(
    sd: &StateDict,
    names: &HashMap<String, String>,
    light: bool,
) -> Result<T2IAdapterConfig, LoadErrorKind> {
    let shape = |n: &str| names.get(n).and_then(|k| sd.shape(k));
    let require = |n: &str| {
        shape(n)
            .filter(|s| s.len() == 4)
            .ok_or_else(|| LoadErrorKind::MissingTensor(n.to_string()))
    };
    let levels = count_indexed(names.keys(), "adapter.body.");
    let num_res_blocks = count_indexed(names.keys(), "adapter.body.0.resnets.");
    if levels == 0 || num_res_blocks == 0 {
        return Err(LoadErrorKind::MissingTensor(
            "adapter.body.0.resnets.0.block1.weight".into(),
        ));
    }
    let (kind, unshuffle, cin, channels, kernel_size) = if light {
        let cin = require("adapter.body.0.in_conv.weight")?[1];
        let channels = (0..levels)
            .map(|i| Ok(require(&format!("adapter.body.{i}.out_conv.weight"))?[0]))
            .collect::<Result<Vec<_>, LoadErrorKind>>()?;
        (AdapterKind::Light, 8, cin, channels, 3)
    } else {
        let conv_in = require("adapter.conv_in.weight")?;
        let channels = (0..levels)
            .map(|i| Ok(require(&format!("adapter.body.{i}.resnets.0.block1.weight"))?[0]))
            .collect::<Result<Vec<_>, LoadErrorKind>>()?;
        let kernel = require("adapter.body.0.resnets.0.block2.weight")?[2];
        // ComfyUI: a 256- or 768-channel conv_in (1 or 3 channels after a 16x unshuffle) is SDXL.
        let xl = conv_in[1] == 256 || conv_in[1] == 768;
        let (kind, unshuffle) = if xl {
            (AdapterKind::FullXl, 16)
        } else {
            (AdapterKind::Full, 8)
        };
        (kind, unshuffle, conv_in[1], channels, kernel)
    };
    if cin % (unshuffle * unshuffle) != 0 {
        return Err(LoadErrorKind::BadConfig(format!(
            "adapter input of {cin} channels is not a multiple of {}x{} unshuffled pixels",
            unshuffle, unshuffle
        )));
    }
    let cfg = T2IAdapterConfig {
        kind,
        hint_channels: cin / (unshuffle * unshuffle),
        channels,
        num_res_blocks,
        kernel_size,
    };
    cfg.validate().map_err(LoadErrorKind::BadConfig)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tencentarc_adapter_keys_map_like_comfyui() {
        let full = [
            ("conv_in.weight", "adapter.conv_in.weight"),
            ("body.3.block2.bias", "adapter.body.1.resnets.1.block2.bias"),
            ("body.2.in_conv.weight", "adapter.body.1.in_conv.weight"),
        ];
        for (t, d) in full {
            assert_eq!(
                adapter_tencentarc_to_diffusers(t, false).as_deref(),
                Some(d)
            );
        }
        assert_eq!(
            adapter_tencentarc_to_diffusers("body.3.in_conv.weight", false),
            None
        );
        assert_eq!(
            adapter_tencentarc_to_diffusers("body.2.body.3.block1.weight", true).as_deref(),
            Some("adapter.body.2.resnets.3.block1.weight")
        );
    }
}
