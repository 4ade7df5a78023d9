//! Parity of the inpainting / InstructPix2Pix concat channels and of ModelSamplingContinuousEDM
//! against `tools/parity/cond_patches_reference.py` (ComfyUI's `concat_cond`, `IP2P.concat_cond`,
//! `resize_to_batch_size`, `ModelSamplingContinuousEDM` with EPS / V_PREDICTION / EDM, the
//! Playground v2.5 latent format). Tolerance: 1e-5 max abs error (f32 maths on values of order 1);
//! sigma tables 1e-5 relative.
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::util::max_abs_diff;
use weft::engine::diffusion::concat::{resize_to_batch_size, ConcatKind, PreparedConcat};
use weft::engine::diffusion::{prepare_noise_mask, CondEntry, DiffusionModel, LatentFormat};
use weft::engine::load::detect::{ModelFamily, Prediction as Family};
use weft::engine::sampling::model_sampling::{ModelSamplingDiscrete, Prediction};
use weft::engine::synth::synth_var_builder;
use weft::engine::unet::{AttentionHeads, UNet2DConditionModel, UNetConfig};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sampling/cond_patches_reference.safetensors"
);

fn load() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURE, &Device::Cpu).expect("fixture loads")
}

fn check(failures: &mut Vec<String>, key: &str, ours: &Tensor, want: &Tensor) {
    if ours.dims() != want.dims() {
        failures.push(format!(
            "{key}: shape {:?}, want {:?}",
            ours.dims(),
            want.dims()
        ));
        return;
    }
    let ours = ours.to_dtype(DType::F32).unwrap();
    let want = want.to_dtype(DType::F32).unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0);
    let err = max_abs_diff(&ours, &want) / scale;
    if err > 1e-5 {
        failures.push(format!("{key}: max error {err} (relative to {scale})"));
    }
}

/// A tiny SD1-family model whose UNet takes `in_channels`.
fn tiny_model(in_channels: usize) -> DiffusionModel {
    let config = UNetConfig {
        in_channels,
        block_out_channels: vec![32, 32],
        transformer_depth: vec![1, 0],
        mid_transformer_depth: 1,
        heads: AttentionHeads::PerLevel(vec![2, 2]),
        context_dim: 16,
        layers_per_block: 1,
        ..UNetConfig::sd15()
    };
    let unet = UNet2DConditionModel::new(synth_var_builder(DType::F32, &Device::Cpu), &config)
        .expect("tiny unet");
    DiffusionModel::new(unet, ModelFamily::Sd1, Family::Epsilon, 0)
}

fn entry(image: Option<&Tensor>, mask: Option<&Tensor>) -> CondEntry {
    let mut e = CondEntry::new(
        Tensor::zeros((1, 2, 16), DType::F32, &Device::Cpu).unwrap(),
        None,
    );
    e.concat_latent_image = image.cloned();
    e.concat_mask = mask.cloned();
    e
}

#[test]
fn concat_channels_match_comfyui() {
    let fx = load();
    let (noise, latent) = (&fx["concat/noise"], &fx["concat/latent"]);
    let (image, pixel_mask) = (&fx["concat/image"], &fx["concat/pixel_mask"]);
    let shape = noise.dims().to_vec();
    let noise_mask = prepare_noise_mask(&fx["concat/noise_mask"], &shape).unwrap();
    let mut failures = Vec::new();
    check(
        &mut failures,
        "prepared_noise_mask",
        &noise_mask,
        &fx["concat/prepared_noise_mask"],
    );

    let inpaint = tiny_model(9);
    assert_eq!(inpaint.concat_kind(), Some(ConcatKind::Inpaint));
    let build = |model: &DiffusionModel, e: &CondEntry, mask: Option<&Tensor>| {
        PreparedConcat::new(model, e, &shape)
            .unwrap()
            .build(model.concat_kind(), noise, mask, Some(latent))
            .unwrap()
            .expect("a concat")
    };
    let cases = [
        (
            "inpaint_entry",
            entry(Some(image), Some(pixel_mask)),
            Some(&noise_mask),
        ),
        (
            "inpaint_entry_no_mask",
            entry(Some(image), Some(pixel_mask)),
            None,
        ),
        ("inpaint_noise_mask", entry(None, None), Some(&noise_mask)),
        ("inpaint_image_only", entry(Some(image), None), None),
        ("inpaint_nothing", entry(None, None), None),
    ];
    for (key, e, mask) in &cases {
        let ours = build(&inpaint, e, *mask);
        check(&mut failures, key, &ours, &fx[&format!("concat/{key}")]);
    }

    let ip2p = tiny_model(8);
    assert_eq!(ip2p.concat_kind(), Some(ConcatKind::InstructPix2Pix));
    let ours = build(&ip2p, &entry(Some(image), None), Some(&noise_mask));
    check(&mut failures, "ip2p_image", &ours, &fx["concat/ip2p_image"]);
    let ours = build(&ip2p, &entry(None, None), None);
    check(
        &mut failures,
        "ip2p_nothing",
        &ours,
        &fx["concat/ip2p_nothing"],
    );

    // A plain 4-channel UNet takes nothing, whatever the entry carries.
    let plain = tiny_model(4);
    assert_eq!(plain.concat_kind(), None);
    let none = PreparedConcat::new(&plain, &entry(Some(image), Some(pixel_mask)), &shape)
        .unwrap()
        .build(None, noise, Some(&noise_mask), Some(latent))
        .unwrap();
    assert!(none.is_none());

    for n in [1usize, 2, 3, 7] {
        let ours = resize_to_batch_size(&fx["batch/in"], n).unwrap();
        check(
            &mut failures,
            &format!("batch/{n}"),
            &ours,
            &fx[&format!("batch/{n}")],
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The samplers see an inpainting UNet's extra channels: a 9-channel model denoises without
/// error and its prediction depends on the entry's concat image.
#[test]
fn a_nine_channel_unet_samples_with_its_concat() {
    use weft::engine::diffusion::CfgDenoiser;
    use weft::engine::sampling::samplers::Denoiser;
    let fx = load();
    let model = tiny_model(9);
    let shape = [1usize, 4, 8, 8];
    let x = Tensor::full(0.3f32, &shape[..], &Device::Cpu).unwrap();
    let denoise = |entries: &[CondEntry]| {
        CfgDenoiser::new(&model, entries, None, 1.0, &shape, false)
            .unwrap()
            .with_latent_image(x.zeros_like().unwrap())
            .denoise(&x, 2.0)
            .unwrap()
            .cond
    };
    let plain = denoise(&[entry(None, None)]);
    let with_image = denoise(&[entry(
        Some(&fx["concat/image"]),
        Some(&fx["concat/pixel_mask"]),
    )]);
    assert_eq!(plain.dims(), &shape);
    assert!(max_abs_diff(&plain, &with_image) > 1e-4);
}

#[test]
fn continuous_edm_sampling_matches_comfyui() {
    let fx = load();
    let (x, out) = (&fx["edm/x"], &fx["edm/out"]);
    let mut failures = Vec::new();
    for (name, (smin, smax, sd, prediction)) in [
        ("v_prediction", (0.002, 120.0, 1.0, Prediction::V)),
        ("edm", (0.002, 120.0, 0.5, Prediction::Edm)),
        ("eps", (0.03, 14.6, 1.0, Prediction::Eps)),
    ] {
        let ms = ModelSamplingDiscrete::continuous_edm(smin, smax, sd, prediction);
        let key = |k: &str| format!("edm/{name}/{k}");
        let vec = |v: Vec<f32>| Tensor::new(v, &Device::Cpu).unwrap();
        check(
            &mut failures,
            &key("sigmas"),
            &vec(ms.sigmas().to_vec()),
            &fx[&key("sigmas")],
        );
        let ts = [80.0f32, 3.3, 0.05].map(|s| ms.timestep(s)).to_vec();
        check(
            &mut failures,
            &key("timestep"),
            &vec(ts),
            &fx[&key("timestep")],
        );
        let sig = [1.2f32, -0.4, -1.5].map(|t| ms.sigma(t)).to_vec();
        check(&mut failures, &key("sigma"), &vec(sig), &fx[&key("sigma")]);
        let percents = [0.0, 0.25, 0.5, 0.9, 1.0]
            .map(|p| ms.percent_to_sigma(p))
            .to_vec();
        let percents = Tensor::new(percents, &Device::Cpu).unwrap();
        check(
            &mut failures,
            &key("percent"),
            &percents,
            &fx[&key("percent")],
        );
        let sigma = 2.7f32 as f64;
        check(
            &mut failures,
            &key("input"),
            &ms.calculate_input(sigma, x).unwrap(),
            &fx[&key("input")],
        );
        let denoised = ms.calculate_denoised(sigma, out, x).unwrap();
        check(
            &mut failures,
            &key("denoised"),
            &denoised,
            &fx[&key("denoised")],
        );
    }
    let playground = LatentFormat::sdxl_playground_2_5();
    check(
        &mut failures,
        "playground/in",
        &playground.process_in(x).unwrap(),
        &fx["playground/in"],
    );
    check(
        &mut failures,
        "playground/out",
        &playground.process_out(x).unwrap(),
        &fx["playground/out"],
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// SelfAttentionGuidance's denoiser output on the tiny SD1 UNet against
/// `tools/parity/sag_reference.py` (ComfyUI's nodes_sag.py on the same diffusers model):
/// the recorded attention, the blurred negative prediction and the guided result. Tolerance: 1e-4
/// relative to the largest value (three UNet evaluations in f32).
#[test]
fn self_attention_guidance_matches_comfyui_on_a_tiny_unet() {
    use weft::engine::diffusion::sag::{gaussian_blur_2d, SelfAttentionGuidance};
    use weft::engine::diffusion::CfgDenoiser;
    use weft::engine::sampling::samplers::Denoiser;
    let fx = candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sampling/sag_reference.safetensors"
        ),
        &Device::Cpu,
    )
    .expect("fixture loads");
    let config = super::util::tiny_unet_config("sd1_tiny");
    let unet = UNet2DConditionModel::new(synth_var_builder(DType::F32, &Device::Cpu), &config)
        .expect("tiny unet");
    let model = DiffusionModel::new(unet, ModelFamily::Sd1, Family::Epsilon, 0);
    let sag = SelfAttentionGuidance::patch(&model, 0.7, 2.0);
    let positive = [CondEntry::new(fx["positive"].clone(), None)];
    let negative = [CondEntry::new(fx["negative"].clone(), None)];
    let x = &fx["x"];
    let sigma = fx["sigma"].to_vec1::<f32>().unwrap()[0] as f64;
    let denoised = CfgDenoiser::new(&sag, &positive, Some(&negative), 5.0, x.dims(), false)
        .unwrap()
        .denoise(x, sigma)
        .unwrap();
    let mut failures = Vec::new();
    let mut close = |key: &str, ours: &Tensor, want: &Tensor| {
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let err = max_abs_diff(ours, want) / scale.max(1.0);
        if err > 1e-4 {
            failures.push(format!("{key}: max error {err}"));
        }
    };
    close("uncond", denoised.uncond.as_ref().unwrap(), &fx["uncond"]);
    close("result", &denoised.cond, &fx["result"]);
    let blurred = gaussian_blur_2d(&fx["blur/in"], 9, 1.3).unwrap();
    close("blur", &blurred, &fx["blur/out"]);
    // SAG acts even at cfg 1, where the negative side is otherwise skipped.
    let at_cfg1 = CfgDenoiser::new(&sag, &positive, Some(&negative), 1.0, x.dims(), false)
        .unwrap()
        .denoise(x, sigma)
        .unwrap();
    assert!(at_cfg1.uncond.is_some());
    assert!(failures.is_empty(), "{failures:#?}");
}

/// HyperTile on the tiny SD1 UNet against `tools/parity/hypertile_reference.py` (newer ComfyUI's
/// nodes_hypertile.py where attention.py applies attn1 patches): two denoiser calls in a row (the
/// counter moves on, so the tiles change), on a square latent and on a wide one with two tiled
/// depths; and Python's `random` draws and `find_hw_candidates` directly. Tolerance: 1e-4
/// relative to the largest value.
#[test]
fn hypertile_matches_comfyui_on_a_tiny_unet() {
    use std::sync::Arc;
    use weft::engine::diffusion::hypertile::{find_hw_candidates, HyperTile, PythonRandom};
    use weft::engine::diffusion::CfgDenoiser;
    use weft::engine::sampling::samplers::Denoiser;
    let fx = candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sampling/hypertile_reference.safetensors"
        ),
        &Device::Cpu,
    )
    .expect("fixture loads");
    let draws: Vec<i64> = fx["random/draws"].to_vec1().unwrap();
    let mut ours = Vec::new();
    for counter in 1..40u64 {
        for n in [1u32, 2, 3, 7] {
            ours.push(PythonRandom::seeded(counter).randbelow(n) as i64);
        }
    }
    assert_eq!(ours, draws);
    let hw: Vec<Vec<i64>> = fx["hw"].to_vec2().unwrap();
    for (row, (n, aspect)) in hw.iter().zip([
        (384, 1.5),
        (256, 1.0),
        (60, 1.5),
        (70, 1.3),
        (96, 0.75),
        (7, 2.0),
    ]) {
        let (h, w) = find_hw_candidates(n, aspect);
        assert_eq!(vec![h as i64, w as i64], *row, "{n} tokens at {aspect}");
    }

    let sigma = fx["sigma"].to_vec1::<f32>().unwrap()[0] as f64;
    let config = super::util::tiny_unet_config("sd1_tiny");
    let mut failures = Vec::new();
    for (name, (tile, swap, depth, scale_depth)) in [
        ("square", (32, 2, 0, false)),
        ("wide_deep", (32, 3, 1, true)),
    ] {
        let unet = UNet2DConditionModel::new(synth_var_builder(DType::F32, &Device::Cpu), &config)
            .expect("tiny unet");
        let model = DiffusionModel::new(unet, ModelFamily::Sd1, Family::Epsilon, 0);
        let patch = HyperTile::new(32, tile, swap, depth, scale_depth);
        let model = model.patched(|p| p.unet.self_attention.push(Arc::new(patch)));
        let x = &fx[&format!("{name}/x")];
        let positive = [CondEntry::new(fx[&format!("{name}/context")].clone(), None)];
        let mut denoiser = CfgDenoiser::new(&model, &positive, None, 1.0, x.dims(), false).unwrap();
        for step in 0..2 {
            let ours = denoiser.denoise(x, sigma).unwrap().cond;
            let want = &fx[&format!("{name}/denoised/{step}")];
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let err = max_abs_diff(&ours, want) / scale.max(1.0);
            if err > 1e-4 {
                failures.push(format!("{name} step {step}: max error {err}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Token merging's merge and unmerge against `tools/parity/tome_reference.py` (ComfyUI's
/// `bipartite_soft_matching_random2d` with the same destination draw): the merged token count and
/// `unmerge(merge(x) * 2 + 1)`, on an even grid with a batch of 2, an odd grid and everything
/// merged. Tolerance: 1e-6.
#[test]
fn token_merging_matches_comfyui() {
    use weft::engine::diffusion::tome::Matching;
    let fx = candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sampling/tome_reference.safetensors"
        ),
        &Device::Cpu,
    )
    .expect("fixture loads");
    for (name, (h, w, ratio)) in [
        ("even", (8, 8, 0.3)),
        ("odd", (7, 9, 0.5)),
        ("all", (6, 6, 1.0)),
    ] {
        let x = &fx[&format!("{name}/x")];
        let cells: Vec<usize> = fx[&format!("{name}/cells")]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|c| c as usize)
            .collect();
        let r = (x.dim(1).unwrap() as f64 * ratio) as usize;
        let matching = Matching::new(x, (w, h), &cells, r).unwrap();
        let merged = matching.merge(x).unwrap();
        let want_tokens = fx[&format!("{name}/merged_tokens")]
            .to_vec1::<i64>()
            .unwrap()[0];
        assert_eq!(merged.dim(1).unwrap() as i64, want_tokens, "{name}");
        let roundtrip = matching.unmerge(&merged.affine(2.0, 1.0).unwrap()).unwrap();
        let err = max_abs_diff(&roundtrip, &fx[&format!("{name}/roundtrip")]);
        assert!(err < 1e-6, "{name}: max error {err}");
    }
}
