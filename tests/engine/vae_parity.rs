//! VAE parity with diffusers. Expected tensors come from unet/scripts/unet_vae_reference.py
//! (`vae_fixture`: diffusers `AutoencoderKL` with synthetic weights; `latent_dist.mean/logvar`,
//! `decode`, and the script's re-implementation of ComfyUI `tiled_scale_multidim` around them).
//! Tolerance 1e-4 max abs.
use candle_core::{DType, Device};
use weft::engine::synth::synth_var_builder;
use weft::engine::vae::{AutoEncoderKL, VaeConfig};

use crate::engine::util::{fixture, get, max_abs_diff};

pub const TOL: f32 = 1e-4;

pub fn tiny_vae_config() -> VaeConfig {
    VaeConfig {
        block_out_channels: vec![32, 32, 64],
        ..VaeConfig::sd()
    }
}

/// (mean, logvar, decode, tiled decode, tiled encode) max abs errors.
pub fn check_vae(vae: &AutoEncoderKL) -> [f32; 5] {
    let fx = fixture("vae_tiny.safetensors");
    let dist = vae.encode(get(&fx, "image")).unwrap();
    let z = get(&fx, "z");
    [
        max_abs_diff(dist.mode(), get(&fx, "mean")),
        max_abs_diff(&dist.logvar, get(&fx, "logvar")),
        max_abs_diff(&vae.decode(z).unwrap(), get(&fx, "decoded")),
        max_abs_diff(
            &vae.decode_tiled(z, 4, 2).unwrap(),
            get(&fx, "decoded_tiled"),
        ),
        max_abs_diff(
            &vae.encode_tiled(get(&fx, "image"), 16, 4).unwrap(),
            get(&fx, "encoded_tiled"),
        ),
    ]
}

#[test]
fn vae_matches_diffusers_with_synthetic_weights() {
    let vae = AutoEncoderKL::new(
        synth_var_builder(DType::F32, &Device::Cpu),
        &tiny_vae_config(),
    )
    .unwrap();
    let errs = check_vae(&vae);
    println!("vae_tiny: max abs err mean/logvar/decode/tiled decode/tiled encode {errs:?}");
    assert!(errs.iter().all(|e| *e < TOL), "{errs:?}");
}

#[test]
fn scaled_helpers_apply_the_family_factor() {
    let cfg = VaeConfig {
        scaling_factor: 0.13025,
        ..tiny_vae_config()
    };
    let vae = AutoEncoderKL::new(synth_var_builder(DType::F32, &Device::Cpu), &cfg).unwrap();
    let fx = fixture("vae_tiny.safetensors");
    let scaled = vae.encode_scaled(get(&fx, "image")).unwrap();
    let expected = (get(&fx, "mean") * 0.13025).unwrap();
    assert!(max_abs_diff(&scaled, &expected) < TOL);
    let z = get(&fx, "z");
    let dec = vae.decode_scaled(&(z * 0.13025).unwrap()).unwrap();
    assert!(max_abs_diff(&dec, get(&fx, "decoded")) < TOL);
    let sample = vae.encode(get(&fx, "image")).unwrap();
    let zero = sample.mean.zeros_like().unwrap();
    assert!(max_abs_diff(&sample.sample(&zero).unwrap(), &sample.mean) == 0.0);
}
