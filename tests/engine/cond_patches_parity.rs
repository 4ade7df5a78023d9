//! Parity of issue 17's conditioning and model patches against ComfyUI's formulas: the
//! inpainting / InstructPix2Pix concat channels and ModelSamplingContinuousEDM against
//! `tools/parity/cond_patches_reference.py` (`concat_cond`, `IP2P.concat_cond`,
//! `resize_to_batch_size`, `ModelSamplingContinuousEDM` with EPS / V_PREDICTION / EDM, the
//! Playground v2.5 latent format; tolerance 1e-5 relative to the largest value), and SAG,
//! HyperTile and ToMe against their own scripts (see each test).
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::util::max_abs_diff;
use weft::engine::diffusion::concat::{resize_to_batch_size, ConcatKind, PreparedConcat};
use weft::engine::diffusion::hypertile::{find_hw_candidates, HyperTile, PythonRandom};
use weft::engine::diffusion::sag::{gaussian_blur_2d, SelfAttentionGuidance};
use weft::engine::diffusion::tome::Matching;
use weft::engine::diffusion::{
    prepare_noise_mask, CfgDenoiser, CondEntry, DiffusionModel, LatentFormat,
};
use weft::engine::load::detect::{ModelFamily, Prediction as Family};
use weft::engine::sampling::model_sampling::{ModelSamplingDiscrete, Prediction};
use weft::engine::sampling::samplers::Denoiser;
use weft::engine::synth::synth_var_builder;
use weft::engine::unet::{AttentionHeads, UNet2DConditionModel, UNetConfig};

/// `tests/fixtures/sampling/{name}_reference.safetensors`.
fn load_named(name: &str) -> HashMap<String, Tensor> {
    let path = format!(
        "{}/tests/fixtures/sampling/{name}_reference.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    candle_core::safetensors::load(path, &Device::Cpu).expect("fixture loads")
}

fn load() -> HashMap<String, Tensor> {
    load_named("cond_patches")
}

fn check(failures: &mut Vec<String>, key: &str, ours: &Tensor, want: &Tensor) {
    check_within(failures, key, ours, want, 1e-5);
}

/// Records a failure when `ours` differs from `want` by more than `tolerance` relative to
/// `want`'s largest magnitude (at least 1).
fn check_within(
    failures: &mut Vec<String>,
    key: &str,
    ours: &Tensor,
    want: &Tensor,
    tolerance: f32,
) {
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
    if err > tolerance {
        failures.push(format!("{key}: max error {err} (relative to {scale})"));
    }
}

/// A model (SD1 family, epsilon) on a UNet of `config` with the synthetic weights.
fn model_of(config: &UNetConfig) -> DiffusionModel {
    let unet = UNet2DConditionModel::new(synth_var_builder(DType::F32, &Device::Cpu), config)
        .expect("tiny unet");
    DiffusionModel::new(unet, ModelFamily::Sd1, Family::Epsilon, 0)
}

/// A tiny SD1-family model whose UNet takes `in_channels`.
fn tiny_model(in_channels: usize) -> DiffusionModel {
    model_of(&UNetConfig {
        in_channels,
        block_out_channels: vec![32, 32],
        transformer_depth: vec![1, 0],
        mid_transformer_depth: 1,
        heads: AttentionHeads::PerLevel(vec![2, 2]),
        context_dim: 16,
        layers_per_block: 1,
        ..UNetConfig::sd15()
    })
}

/// The tiny SD1 UNet of `unet_vae_reference.py` with its synthetic weights, as a model.
fn sd1_tiny() -> DiffusionModel {
    model_of(&super::util::tiny_unet_config("sd1_tiny"))
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
    let fx = load();
    let model = tiny_model(9);
    let shape = [1usize, 4, 8, 8];
    let x = Tensor::full(0.3f32, &shape[..], &Device::Cpu).unwrap();
    let denoise = |entries: &[CondEntry]| {
        CfgDenoiser::new(&model, entries, None, 1.0, &shape, false, 0)
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
/// the negative prediction, the guided result and the blur. Tolerance: 1e-4 relative to the
/// largest value (three UNet evaluations in f32).
#[test]
fn self_attention_guidance_matches_comfyui_on_a_tiny_unet() {
    let fx = load_named("sag");
    let sag = SelfAttentionGuidance::patch(&sd1_tiny(), 0.7, 2.0);
    let positive = [CondEntry::new(fx["positive"].clone(), None)];
    let negative = [CondEntry::new(fx["negative"].clone(), None)];
    let (x, sigma) = (&fx["x"], sigma_of(&fx));
    let denoise = |cfg: f64| {
        CfgDenoiser::new(&sag, &positive, Some(&negative), cfg, x.dims(), false, 0)
            .unwrap()
            .denoise(x, sigma)
            .unwrap()
    };
    let denoised = denoise(5.0);
    let mut failures = Vec::new();
    let uncond = denoised.uncond.as_ref().unwrap();
    check_within(&mut failures, "uncond", uncond, &fx["uncond"], 1e-4);
    check_within(&mut failures, "result", &denoised.cond, &fx["result"], 1e-4);
    let blurred = gaussian_blur_2d(&fx["blur/in"], 9, 1.3).unwrap();
    check_within(&mut failures, "blur", &blurred, &fx["blur/out"], 1e-5);
    // SAG acts even at cfg 1, where the negative side is otherwise skipped.
    assert!(denoise(1.0).uncond.is_some());
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The fixture's sigma (an SD table entry, so its timestep is exact).
fn sigma_of(fx: &HashMap<String, Tensor>) -> f64 {
    fx["sigma"].to_vec1::<f32>().unwrap()[0] as f64
}

/// HyperTile on the tiny SD1 UNet against `tools/parity/hypertile_reference.py` (newer ComfyUI's
/// nodes_hypertile.py where attention.py applies attn1 patches): two denoiser calls in a row (the
/// counter moves on, so the tiles change), on a square latent and on a wide one with two tiled
/// depths; at cfg 3 with a negative prompt (ComfyUI's one batched call for both); and Python's
/// `random` draws and `find_hw_candidates` directly. Tolerance: 1e-4
/// relative to the largest value.
#[test]
fn hypertile_matches_comfyui_on_a_tiny_unet() {
    let fx = load_named("hypertile");
    let mut draws = Vec::new();
    for counter in 1..40u64 {
        for n in [1u32, 2, 3, 7] {
            draws.push(PythonRandom::seeded(counter).randbelow(n) as i64);
        }
    }
    assert_eq!(draws, fx["random/draws"].to_vec1::<i64>().unwrap());
    let cases = [
        (384, 1.5),
        (256, 1.0),
        (60, 1.5),
        (70, 1.3),
        (96, 0.75),
        (7, 2.0),
    ];
    let hw: Vec<Vec<i64>> = fx["hw"].to_vec2().unwrap();
    for (row, (n, aspect)) in hw.iter().zip(cases) {
        let (h, w) = find_hw_candidates(n, aspect);
        assert_eq!(vec![h as i64, w as i64], *row, "{n} tokens at {aspect}");
    }

    let sigma = sigma_of(&fx);
    let mut failures = Vec::new();
    for (name, (tile, swap, depth, scale_depth)) in [
        ("square", (32, 2, 0, false)),
        ("wide_deep", (32, 3, 1, true)),
    ] {
        let patch = Arc::new(HyperTile::new(32, tile, swap, depth, scale_depth));
        let model = sd1_tiny().patched(|p| p.unet.self_attention.push(patch));
        let x = &fx[&format!("{name}/x")];
        let positive = [CondEntry::new(fx[&format!("{name}/context")].clone(), None)];
        let mut denoiser =
            CfgDenoiser::new(&model, &positive, None, 1.0, x.dims(), false, 0).unwrap();
        for step in 0..2 {
            let ours = denoiser.denoise(x, sigma).unwrap().cond;
            let key = format!("{name}/denoised/{step}");
            check_within(&mut failures, &key, &ours, &fx[&key], 1e-4);
        }
    }
    // At cfg 3 ComfyUI batches both prompts into one call, which draws once: Weft's two calls
    // share the draws.
    let patch = Arc::new(HyperTile::new(32, 32, 3, 1, true));
    let model = sd1_tiny().patched(|p| p.unet.self_attention.push(patch));
    let x = &fx["cfg/x"];
    let positive = [CondEntry::new(fx["cfg/positive"].clone(), None)];
    let negative = [CondEntry::new(fx["cfg/negative"].clone(), None)];
    let mut denoiser =
        CfgDenoiser::new(&model, &positive, Some(&negative), 3.0, x.dims(), false, 0).unwrap();
    for step in 0..2 {
        let ours = denoiser.denoise(x, sigma).unwrap().cond;
        let key = format!("cfg/denoised/{step}");
        check_within(&mut failures, &key, &ours, &fx[&key], 1e-4);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Token merging's merge and unmerge against `tools/parity/tome_reference.py` (ComfyUI's
/// `bipartite_soft_matching_random2d` with the same destination draw): the merged token count and
/// `unmerge(merge(x) * 2 + 1)`, on an even grid with a batch of 2, an odd grid and everything
/// merged. Tolerance: 1e-6.
#[test]
fn token_merging_matches_comfyui() {
    let fx = load_named("tome");
    let mut failures = Vec::new();
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
        let key = format!("{name}/roundtrip");
        check_within(&mut failures, &key, &roundtrip, &fx[&key], 1e-6);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// ToMe's own draws against ComfyUI's: after `prepare_noise` (seed 123, a 7x9 latent whose 252
/// noise values end in a ragged tail) each patched call draws its destinations with
/// `torch.randint` from the same global generator (`tools/parity/tome_reference.py`, "global").
/// Three calls in a row on a batch of two, as ComfyUI batches the positive and negative sides;
/// Weft runs the sides one by one and rewinds the draw between them, as the denoiser does.
/// Tolerance: 1e-6.
#[test]
fn token_merging_draws_from_comfyuis_global_stream() {
    use weft::engine::diffusion::patches::{SelfAttentionPatch, UNetPatches};
    use weft::engine::diffusion::tome::TokenMerging;
    use weft::engine::sampling::rng::prepare_noise_continuing;
    let fx = load_named("tome");
    let setup = fx["global/seed"].to_vec1::<i64>().unwrap();
    let (seed, h, w) = (setup[0] as u64, setup[1] as usize, setup[2] as usize);
    let ratio = fx["global/ratio"].to_vec1::<f64>().unwrap()[0];
    let patch = Arc::new(TokenMerging::new(ratio));
    let unet = UNetPatches {
        self_attention: vec![patch.clone()],
        ..Default::default()
    };
    let (_, global) = prepare_noise_continuing(&[1, 4, h, w], seed, None, &Device::Cpu).unwrap();
    unet.start_sampling(global);
    let mut failures = Vec::new();
    for call in 0..3 {
        let x = &fx[&format!("global{call}/x")];
        let states = unet.draw_states();
        let mut sides = Vec::new();
        for side in 0..2 {
            if side == 1 {
                unet.restore_draw_states(&states);
            }
            let q = x.narrow(0, side, 1).unwrap();
            let (merged, _, _, undo) = patch.before(q.clone(), q.clone(), q, (h, w)).unwrap();
            sides.push(undo(merged.affine(2.0, 1.0).unwrap()).unwrap());
        }
        let roundtrip = Tensor::cat(&sides, 0).unwrap();
        let key = format!("global{call}/roundtrip");
        check_within(&mut failures, &key, &roundtrip, &fx[&key], 1e-6);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// HypernetworkLoader's patch against `tools/parity/hypernetwork_reference.py` (ComfyUI's
/// `load_hypernetwork_patch` walk and `hypernetwork_patch`, applied as attn1 and attn2 patches):
/// the activations on a probe (1e-6), the shifted keys and values of the text context (1e-5), and
/// one denoiser call of the tiny SD1 UNet (1e-4 relative to the largest value) for an A1111 `.pt`
/// with relu and layer norms (widths 48 and 32: cross- and level-0 self-attention), one with mish
/// on its output at a negative strength, and a flattened `.safetensors`.
#[test]
fn hypernetwork_matches_comfyui_on_a_tiny_unet() {
    use weft::engine::hypernetwork::{Activation, Hypernetwork};
    let fx = load_named("hypernetwork");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampling");
    let mut failures = Vec::new();
    let probe = &fx["act/probe"];
    for name in [
        "linear",
        "relu",
        "leakyrelu",
        "elu",
        "swish",
        "tanh",
        "sigmoid",
        "softsign",
        "mish",
    ] {
        let ours = Activation::parse(name).unwrap().forward(probe).unwrap();
        check_within(
            &mut failures,
            name,
            &ours,
            &fx[&format!("act/{name}")],
            1e-6,
        );
    }
    let sigma = sigma_of(&fx);
    let (x, context) = (&fx["x"], &fx["context"]);
    let positive = [CondEntry::new(context.clone(), None)];
    let denoise = |model: &DiffusionModel| {
        let mut denoiser =
            CfgDenoiser::new(model, &positive, None, 1.0, x.dims(), false, 0).unwrap();
        denoiser.denoise(x, sigma).unwrap().cond
    };
    let plain = denoise(&sd1_tiny());
    check_within(
        &mut failures,
        "unpatched",
        &plain,
        &fx["unpatched/denoised"],
        1e-4,
    );
    for (name, file, strength) in [
        ("relu_ln", "hypernetwork_relu_ln.pt", 0.7),
        ("mish", "hypernetwork_mish.pt", -1.5),
        ("flat", "hypernetwork_flat.safetensors", 1.0),
    ] {
        let mut net = Hypernetwork::open(&dir.join(file)).unwrap();
        net.strength = strength;
        let (k, v) = net.shift(context.clone(), context.clone()).unwrap();
        check_within(
            &mut failures,
            &format!("{name}/k48"),
            &k,
            &fx[&format!("{name}/k48")],
            1e-5,
        );
        check_within(
            &mut failures,
            &format!("{name}/v48"),
            &v,
            &fx[&format!("{name}/v48")],
            1e-5,
        );
        let net = Arc::new(net);
        let model = sd1_tiny().patched(|p| {
            p.unet.self_attention.push(net.clone());
            p.unet.cross_attention.push(net);
        });
        let key = format!("{name}/denoised");
        check_within(&mut failures, &key, &denoise(&model), &fx[&key], 1e-4);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Hypernetwork dropout against `tools/parity/hypernetwork_reference.py` ("dropout" cases):
/// ComfyUI leaves dropout on, drawing each mask from torch's global generator after
/// `prepare_noise` (seed 77, a 1x4x16x16 latent), over the batch of both sides, negative first.
/// Two denoiser calls in a row at cfg 3, for a (1, 2, 2, 1) relu file and one with layer norms and
/// `last_layer_dropout`, and the first with prompts of 10 and 5 tokens (ComfyUI repeats the
/// shorter to batch them, so the masks cover 10). Tolerance: 1e-4 relative to the largest value.
#[test]
fn hypernetwork_dropout_draws_comfyuis_masks() {
    use weft::engine::hypernetwork::Hypernetwork;
    use weft::engine::sampling::rng::prepare_noise_continuing;
    let fx = load_named("hypernetwork");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampling");
    let sigmas = fx["dropout/steps"].to_vec1::<f64>().unwrap();
    let x = &fx["dropout/x"];
    let positive = [CondEntry::new(fx["dropout/positive"].clone(), None)];
    let negative = [CondEntry::new(fx["dropout/negative"].clone(), None)];
    let long_positive = [CondEntry::new(fx["dropout/long_positive"].clone(), None)];
    let cfg = 3.0;
    let mut failures = Vec::new();
    // "long": the first file with a 10-token positive prompt beside the 5-token negative, which
    // ComfyUI repeats to 10 tokens to batch them.
    for (name, file, positive) in [
        ("dropout", "dropout", &positive),
        ("dropout_ln", "dropout_ln", &positive),
        ("long", "dropout", &long_positive),
    ] {
        let mut net = Hypernetwork::open(&dir.join(format!("hypernetwork_{file}.pt"))).unwrap();
        assert!(net.options.use_dropout, "{name}");
        net.strength = 0.8;
        let net = Arc::new(net);
        let model = sd1_tiny().patched(|p| {
            p.unet.self_attention.push(net.clone());
            p.unet.cross_attention.push(net);
        });
        let (_, global) =
            prepare_noise_continuing(&[1, 4, 16, 16], 77, None, &Device::Cpu).unwrap();
        model.patches.unet.start_sampling(global);
        let mut denoiser =
            CfgDenoiser::new(&model, positive, Some(&negative), cfg, x.dims(), false, 0).unwrap();
        for (step, &sigma) in sigmas.iter().enumerate() {
            let out = denoiser.denoise(x, sigma).unwrap();
            let (cond, uncond) = (
                &fx[&format!("{name}/cond/{step}")],
                &fx[&format!("{name}/uncond/{step}")],
            );
            let want = (uncond + ((cond - uncond).unwrap() * cfg).unwrap()).unwrap();
            let key = format!("{name}/{step}");
            check_within(&mut failures, &key, &out.cond, &want, 1e-4);
            if let Some(ours) = &out.uncond {
                check_within(&mut failures, &format!("{key}/uncond"), ours, uncond, 1e-4);
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
