//! UNet parity with diffusers. Expected tensors come from unet/scripts/unet_vae_reference.py
//! (`unet_fixture`: diffusers `UNet2DConditionModel` with synthetic weights, plain forward and with
//! `down_block_additional_residuals`/`mid_block_additional_residual`). Tolerance 1e-4 max abs.
use candle_core::{DType, Device, Tensor};
use weft::engine::synth::synth_var_builder;
use weft::engine::unet::{sdxl_adm, ControlResiduals, UNet2DConditionModel};

use crate::engine::util::{fixture, get, max_abs_diff, tiny_unet_config, TINY_UNETS};

pub const TOL: f32 = 1e-4;

/// Runs the fixture's two forwards on `model`; returns (plain, control) max abs errors.
pub fn check_unet(model: &UNet2DConditionModel, name: &str) -> (f32, f32) {
    let fx = fixture(&format!("unet_{name}.safetensors"));
    let y = fx.get("pooled").map(|pooled| {
        let sizes = get(&fx, "size_values").to_vec2::<f32>().unwrap();
        sdxl_adm(pooled, &sizes).unwrap()
    });
    let (x, t, ctx) = (get(&fx, "x"), get(&fx, "t"), get(&fx, "context"));
    let out = model.forward(x, t, ctx, y.as_ref(), None).unwrap();
    let plain = max_abs_diff(&out, get(&fx, "out"));
    let n = model.num_skips();
    let down: Vec<Tensor> = (0..n)
        .map(|k| get(&fx, &format!("control_down_{k}")).clone())
        .collect();
    let control = ControlResiduals {
        down,
        mid: get(&fx, "control_mid").clone(),
    };
    let out_c = model
        .forward(x, t, ctx, y.as_ref(), Some(&control))
        .unwrap();
    let ctrl = max_abs_diff(&out_c, get(&fx, "out_control"));
    (plain, ctrl)
}

#[test]
fn unet_matches_diffusers_with_synthetic_weights() {
    for name in TINY_UNETS {
        let vb = synth_var_builder(DType::F32, &Device::Cpu);
        let model = UNet2DConditionModel::new(vb, &tiny_unet_config(name)).unwrap();
        let (plain, ctrl) = check_unet(&model, name);
        println!("{name}: max abs err plain {plain:.3e}, with control {ctrl:.3e}");
        assert!(
            plain < TOL && ctrl < TOL,
            "{name}: plain {plain}, control {ctrl}"
        );
    }
}

#[test]
fn control_residual_count_mismatch_is_an_error() {
    let vb = synth_var_builder(DType::F32, &Device::Cpu);
    let model = UNet2DConditionModel::new(vb, &tiny_unet_config("sd1_tiny")).unwrap();
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    let ctx = Tensor::zeros((1, 3, 48), DType::F32, &Device::Cpu).unwrap();
    let control = ControlResiduals {
        down: vec![],
        mid: x.clone(),
    };
    assert!(model.forward(&x, &t, &ctx, None, Some(&control)).is_err());
    assert!(model.forward(&x, &t, &ctx, Some(&x), None).is_err());
}

#[test]
fn f16_model_stays_near_the_f32_reference() {
    // f16 weights and activations (timestep and size embeddings still computed in f32): only f16
    // rounding separates the output from diffusers' f32 result.
    let vb = synth_var_builder(DType::F16, &Device::Cpu);
    let model = UNet2DConditionModel::new(vb, &tiny_unet_config("sdxl_tiny")).unwrap();
    let (plain, ctrl) = check_unet(&model, "sdxl_tiny");
    println!("sdxl_tiny f16: max abs err plain {plain:.3e}, with control {ctrl:.3e}");
    assert!(plain < 5e-2 && ctrl < 5e-2, "{plain} {ctrl}");
}
