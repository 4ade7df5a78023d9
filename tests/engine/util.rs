//! Shared helpers: tiny configs that mirror unet/scripts/unet_vae_reference.py, fixture reading.
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use weft::engine::unet::{AttentionHeads, UNetConfig};

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("unet")
        .join(name)
}

pub fn fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_path(name), &Device::Cpu).expect("fixture present")
}

pub fn get<'a>(map: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    map.get(key)
        .unwrap_or_else(|| panic!("fixture tensor {key}"))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The tiny UNet configs of unet_vae_reference.py, as our `UNetConfig`.
pub fn tiny_unet_config(name: &str) -> UNetConfig {
    let base = UNetConfig {
        in_channels: 4,
        out_channels: 4,
        block_out_channels: vec![32, 64, 64],
        layers_per_block: 2,
        transformer_depth: vec![1, 1, 0],
        mid_transformer_depth: 1,
        heads: AttentionHeads::PerLevel(vec![8, 8, 8]),
        context_dim: 48,
        use_linear_projection: false,
        adm_in_channels: None,
        norm_num_groups: 32,
        norm_eps: 1e-5,
    };
    match name {
        "sd1_tiny" => base,
        "sd2_tiny" => UNetConfig {
            block_out_channels: vec![64, 128, 128],
            heads: AttentionHeads::HeadDim(64),
            context_dim: 64,
            use_linear_projection: true,
            ..base
        },
        "sdxl_tiny" => UNetConfig {
            block_out_channels: vec![32, 64, 128],
            transformer_depth: vec![0, 1, 2],
            mid_transformer_depth: 2,
            heads: AttentionHeads::HeadDim(64),
            context_dim: 64,
            use_linear_projection: true,
            adm_in_channels: Some(32 + 6 * 256),
            ..base
        },
        "refiner_tiny" => UNetConfig {
            block_out_channels: vec![32, 64, 128, 128],
            transformer_depth: vec![0, 2, 2, 0],
            mid_transformer_depth: 2,
            heads: AttentionHeads::HeadDim(64),
            context_dim: 32,
            use_linear_projection: true,
            adm_in_channels: Some(32 + 5 * 256),
            ..base
        },
        other => panic!("unknown tiny config {other}"),
    }
}

pub const TINY_UNETS: [&str; 4] = ["sd1_tiny", "sd2_tiny", "sdxl_tiny", "refiner_tiny"];
