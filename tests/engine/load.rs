//! Loader tests: LDM key maps against diffusers-validated fixtures, family/config detection,
//! single-file checkpoints written at test time (synthetic weights under LDM names) loaded back
//! and compared with the diffusers outputs of unet/scripts/unet_vae_reference.py (tolerance 1e-4),
//! diffusers folders, pickles, and error reporting on bad files.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use weft::engine::load::checkpoint::{
    load_checkpoint, load_diffusers_folder, load_unet_ldm, load_vae_file, split_components,
    unet_ldm_names, vae_ldm_names,
};
use weft::engine::load::detect::{detect_unet, ModelFamily, Prediction, PredictionSource};
use weft::engine::load::file::StateDict;
use weft::engine::load::LoadErrorKind;
use weft::engine::synth::synth_tensor;

use crate::engine::unet_parity::{check_unet, TOL};
use crate::engine::util::{fixture_path, tiny_unet_config, TINY_UNETS};
use crate::engine::vae_parity::check_vae;

/// (ldm_key, diffusers_key, ldm_shape) rows written by unet_vae_reference.py after diffusers'
/// converters validated them.
fn keymap(name: &str) -> Vec<(String, String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixture_path(&format!("keymap_{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// LDM-named tensors holding the synthetic weights of their diffusers names.
pub(crate) fn ldm_tensors(name: &str, prefix: &str, dtype: DType) -> HashMap<String, Tensor> {
    keymap(name)
        .into_iter()
        .map(|(ldm, diff, shape)| {
            // [C, C, 1, 1] and [C, C] give the same values (same fan-in), so the LDM shape works.
            let t = synth_tensor(&diff, shape).unwrap();
            (format!("{prefix}{ldm}"), t.to_dtype(dtype).unwrap())
        })
        .collect()
}

fn write(dir: &Path, file: &str, tensors: &HashMap<String, Tensor>) -> std::path::PathBuf {
    let path = dir.join(file);
    candle_core::safetensors::save(tensors, &path).unwrap();
    path
}

#[test]
fn unet_key_map_and_detection_match_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    for name in TINY_UNETS {
        let path = write(
            dir.path(),
            "u.safetensors",
            &ldm_tensors(name, "model.diffusion_model.", DType::F32),
        );
        let sd = StateDict::open(&path).unwrap();
        let detected = detect_unet(&sd, "model.diffusion_model.").unwrap();
        assert_eq!(detected.config, tiny_unet_config(name), "{name}");
        let expected_family = match name {
            "sd1_tiny" => ModelFamily::Sd1,
            "sd2_tiny" => ModelFamily::Sd2,
            "sdxl_tiny" => ModelFamily::SdxlBase,
            _ => ModelFamily::SdxlRefiner,
        };
        assert_eq!(detected.family, expected_family, "{name}");
        let names = unet_ldm_names(
            &sd,
            "model.diffusion_model.",
            detected.config.layers_per_block,
        );
        let rows = keymap(name);
        assert_eq!(names.len(), rows.len(), "{name}");
        for (ldm, diff, _) in rows {
            assert_eq!(
                names.get(&diff),
                Some(&format!("model.diffusion_model.{ldm}")),
                "{name}: {diff}"
            );
        }
    }
}

#[test]
fn vae_key_map_matches_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "v.safetensors",
        &ldm_tensors("vae_tiny", "first_stage_model.", DType::F32),
    );
    let sd = StateDict::open(&path).unwrap();
    let names = vae_ldm_names(&sd, "first_stage_model.", 3);
    let rows = keymap("vae_tiny");
    assert_eq!(names.len(), rows.len());
    for (ldm, diff, _) in rows {
        assert_eq!(
            names.get(&diff),
            Some(&format!("first_stage_model.{ldm}")),
            "{diff}"
        );
    }
}

#[test]
fn single_file_checkpoints_load_and_match_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    for name in TINY_UNETS {
        let mut tensors = ldm_tensors(name, "model.diffusion_model.", DType::F32);
        tensors.extend(ldm_tensors("vae_tiny", "first_stage_model.", DType::F32));
        let clip_key = "cond_stage_model.transformer.text_model.final_layer_norm.weight";
        tensors.insert(
            clip_key.into(),
            Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(),
        );
        let path = write(dir.path(), &format!("{name}.safetensors"), &tensors);
        let ckpt = load_checkpoint(&path, DType::F32, &Device::Cpu).unwrap();
        let (plain, ctrl) = check_unet(&ckpt.unet, name);
        println!(
            "{name} via LDM single file: max abs err plain {plain:.3e}, with control {ctrl:.3e}"
        );
        assert!(plain < TOL && ctrl < TOL, "{name}: {plain} {ctrl}");
        let vae = ckpt.vae.expect("vae present");
        let errs = check_vae(&vae);
        assert!(errs.iter().all(|e| *e < TOL), "{errs:?}");
        assert_eq!(ckpt.clip.len(), 1);
        assert_eq!(ckpt.clip[0].prefix, "cond_stage_model.");
        assert!(ckpt.clip[0]
            .tensors
            .contains_key("transformer.text_model.final_layer_norm.weight"));
        let scale = vae.config().scaling_factor;
        let expected = if name.starts_with("sd1") || name.starts_with("sd2") {
            0.18215
        } else {
            0.13025
        };
        assert_eq!(scale, expected);
        if name == "sd1_tiny" {
            let errs = check_vae(&vae);
            println!("vae_tiny via LDM single file: {errs:?}");
        }
    }
}

#[test]
fn f16_checkpoint_converts_once_to_the_model_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "h.safetensors",
        &ldm_tensors("sd1_tiny", "model.diffusion_model.", DType::F16),
    );
    let ckpt = load_checkpoint(&path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(ckpt.unet.dtype(), DType::F32);
    // f16 rounding of the weights only: the output stays close to the f32 reference.
    let (plain, _) = check_unet(&ckpt.unet, "sd1_tiny");
    assert!(plain < 2e-2, "{plain}");
}

#[test]
fn sd2_v_prediction_markers_and_statistic() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = ldm_tensors("sd2_tiny", "model.diffusion_model.", DType::F32);
    let path = write(dir.path(), "eps.safetensors", &tensors);
    let d = detect_unet(&StateDict::open(&path).unwrap(), "model.diffusion_model.").unwrap();
    // Synthetic biases are uniform in [-0.1, 0.1]: std 0.058 < 0.09, so epsilon.
    assert_eq!(d.prediction, Prediction::Epsilon);
    assert!(matches!(
        d.prediction_source,
        PredictionSource::WeightStatistic { .. }
    ));
    let key = "model.diffusion_model.output_blocks.8.1.transformer_blocks.0.norm1.bias";
    let big = (tensors[key].clone() * 3.0).unwrap();
    tensors.insert(key.into(), big);
    let path = write(dir.path(), "v.safetensors", &tensors);
    let d = detect_unet(&StateDict::open(&path).unwrap(), "model.diffusion_model.").unwrap();
    assert_eq!(d.prediction, Prediction::V);
    tensors.insert(
        "v_pred".into(),
        Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "ztsnr".into(),
        Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap(),
    );
    let path = write(dir.path(), "marker.safetensors", &tensors);
    let d = detect_unet(&StateDict::open(&path).unwrap(), "model.diffusion_model.").unwrap();
    assert_eq!((d.prediction, d.zero_terminal_snr), (Prediction::V, true));
    assert_eq!(
        d.prediction_source,
        PredictionSource::KeyMarker("v_pred".into())
    );
}

#[test]
fn sdxl_checkpoint_components_are_split() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = ldm_tensors("sdxl_tiny", "model.diffusion_model.", DType::F32);
    for k in [
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
        "conditioner.embedders.1.model.ln_final.weight",
    ] {
        tensors.insert(k.into(), Tensor::ones(4, DType::F32, &Device::Cpu).unwrap());
    }
    let path = write(dir.path(), "xl.safetensors", &tensors);
    let sd = StateDict::open(&path).unwrap();
    let c = split_components(&sd);
    assert_eq!(c.unet.as_deref(), Some("model.diffusion_model."));
    assert_eq!(c.vae, None);
    assert_eq!(
        c.clip,
        vec![
            "conditioner.embedders.0.".to_string(),
            "conditioner.embedders.1.".to_string()
        ]
    );
    let ckpt = load_checkpoint(&path, DType::F32, &Device::Cpu).unwrap();
    assert!(ckpt.vae.is_none());
    assert!(ckpt.clip[1].tensors.contains_key("model.ln_final.weight"));
}

#[test]
fn diffusers_folder_loads_and_matches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (sub, name) in [("unet", "sdxl_tiny"), ("vae", "vae_tiny")] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        // Diffusers names and shapes (the VAE attention is linear there).
        let tensors: HashMap<String, Tensor> = keymap(name)
            .into_iter()
            .map(|(_, diff, shape)| {
                let mut shape = shape;
                if diff.contains("mid_block.attentions.0.to_") && diff.ends_with("weight") {
                    shape.truncate(2);
                }
                let t = synth_tensor(&diff, shape)
                    .unwrap()
                    .to_dtype(DType::F16)
                    .unwrap();
                (diff, t)
            })
            .collect();
        write(
            &root.join(sub),
            "diffusion_pytorch_model.fp16.safetensors",
            &tensors,
        );
        let cfg = if sub == "unet" {
            "unet_config_sdxl_tiny.json"
        } else {
            "vae_config_tiny.json"
        };
        std::fs::copy(fixture_path(cfg), root.join(sub).join("config.json")).unwrap();
    }
    std::fs::create_dir_all(root.join("text_encoder_2")).unwrap();
    let te: HashMap<String, Tensor> = [(
        "text_model.final_layer_norm.weight".to_string(),
        Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(),
    )]
    .into();
    write(&root.join("text_encoder_2"), "model.safetensors", &te);
    let p = load_diffusers_folder(root, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(p.detected.family, ModelFamily::SdxlBase);
    let (plain, ctrl) = check_unet(&p.unet, "sdxl_tiny");
    assert!(plain < 2e-2 && ctrl < 2e-2, "{plain} {ctrl}");
    assert_eq!(p.vae.config().scaling_factor, 0.18215);
    assert_eq!(p.text_encoders.len(), 1);
    assert_eq!(p.text_encoders[0].0, "text_encoder_2");
}

#[test]
fn pickled_checkpoints_are_read_without_executing_code() {
    let sd = StateDict::open(&fixture_path("tiny_ldm.ckpt")).unwrap();
    assert_eq!(sd.shape("first_stage_model.a"), Some(&[2usize, 3][..]));
    let a = sd.get("first_stage_model.a").unwrap();
    assert_eq!(a.dtype(), DType::F16);
    let expected = synth_tensor("first_stage_model.a", (2, 3)).unwrap();
    let err = crate::engine::util::max_abs_diff(&a.to_dtype(DType::F32).unwrap(), &expected);
    assert!(err < 1e-3, "{err}");
    assert_eq!(
        sd.get("model.diffusion_model.b").unwrap().dtype(),
        DType::BF16
    );
    let plain = StateDict::open(&fixture_path("tiny_plain.pt")).unwrap();
    let w = plain.get("w").unwrap();
    assert_eq!(
        crate::engine::util::max_abs_diff(&w, &synth_tensor("w", (3, 2)).unwrap()),
        0.0
    );
}

fn kind_of(path: &Path) -> LoadErrorKind {
    let err = StateDict::open(path).unwrap_err();
    assert_eq!(err.path, path);
    err.kind
}

#[test]
fn bad_files_give_errors_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.safetensors",
        &ldm_tensors("vae_tiny", "first_stage_model.", DType::F32),
    );
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        kind_of(&truncated),
        LoadErrorKind::Truncated { .. }
    ));

    let lying = dir.path().join("lying.safetensors");
    let mut b = (u64::MAX / 2).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    std::fs::write(&lying, &b).unwrap();
    assert!(matches!(
        kind_of(&lying),
        LoadErrorKind::HeaderTooLarge { .. }
    ));

    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, b"abc").unwrap();
    assert!(matches!(kind_of(&tiny), LoadErrorKind::Truncated { .. }));

    let text = dir.path().join("notes.ckpt");
    std::fs::write(&text, b"hello, this is not a checkpoint at all").unwrap();
    let k = kind_of(&text);
    assert!(
        matches!(
            k,
            LoadErrorKind::HeaderTooLarge { .. } | LoadErrorKind::BadHeader(_)
        ),
        "{k}"
    );

    let zip = dir.path().join("broken.ckpt");
    std::fs::write(&zip, b"PK\x03\x04garbage").unwrap();
    // The pickle guard reads the zip structure before candle's reader does.
    let k = kind_of(&zip);
    assert!(
        matches!(&k, LoadErrorKind::UnsafePickle(m) if m.contains("not a valid zip archive")),
        "{k}"
    );

    // A VAE-only file is not a UNet checkpoint: the error lists what detection looked for.
    let err = load_checkpoint(&good, DType::F32, &Device::Cpu).unwrap_err();
    match &err.kind {
        LoadErrorKind::UnknownFamily { looked_for } => {
            assert!(looked_for
                .iter()
                .any(|k| k == "model.diffusion_model.input_blocks.0.0.weight"));
        }
        other => panic!("{other}"),
    }
    println!("{err}");

    // A missing tensor is named.
    let mut tensors = ldm_tensors("sd1_tiny", "model.diffusion_model.", DType::F32);
    tensors.remove("model.diffusion_model.middle_block.1.proj_out.weight");
    let path = write(dir.path(), "missing.safetensors", &tensors);
    let sd = Arc::new(StateDict::open(&path).unwrap());
    let err = load_unet_ldm(
        &sd,
        "model.diffusion_model.",
        &tiny_unet_config("sd1_tiny"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(
        matches!(&err.kind, LoadErrorKind::MissingTensor(n) if n == "mid_block.attentions.0.proj_out.weight"),
        "{err}"
    );
    println!("{err}");
}

#[test]
fn standalone_vae_files_load_in_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    // Bare LDM names (e.g. vae-ft-mse-840000-ema-pruned.safetensors).
    let ldm = write(
        dir.path(),
        "ldm.safetensors",
        &ldm_tensors("vae_tiny", "", DType::F32),
    );
    let vae = load_vae_file(&ldm, 0.18215, DType::F32, &Device::Cpu).unwrap();
    assert!(check_vae(&vae).iter().all(|e| *e < TOL));
    // Diffusers names without config.json.
    let tensors: HashMap<String, Tensor> = keymap("vae_tiny")
        .into_iter()
        .map(|(_, diff, mut shape)| {
            if diff.contains("mid_block.attentions.0.to_") && diff.ends_with("weight") {
                shape.truncate(2);
            }
            let t = synth_tensor(&diff, shape).unwrap();
            (diff, t)
        })
        .collect();
    let diff = write(dir.path(), "diffusers.safetensors", &tensors);
    let vae = load_vae_file(&diff, 0.13025, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.config().block_out_channels, vec![32, 32, 64]);
    assert!(check_vae(&vae).iter().all(|e| *e < TOL));
}
