//! ControlNet and T2I-Adapter parity with diffusers. Expected tensors come from
//! tools/parity/controlnet_reference.py (diffusers `ControlNetModel`, `T2IAdapter` and
//! `UNet2DConditionModel` with the synthetic weights of tools/parity/synth.py; the UNet forward
//! with `down_block_additional_residuals`/`mid_block_additional_residual` for ControlNets and
//! `down_intrablock_additional_residuals` for adapters). Tolerance 1e-4 max abs.
//!
//! The same models are built three ways: from the synthetic backend, from an LDM single file and
//! from a diffusers file, both written here at test time from the committed key maps (whose LDM
//! names the script validated with diffusers' `convert_controlnet_checkpoint`).
//!
//! The union ControlNet (`union_controlnet_*`) is checked against
//! tools/parity/controlnet_union_reference.py: a tiny diffusers `ControlNetUnionModel` with a
//! control type, ComfyUI's per-item merge and "auto".
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use weft::engine::controlnet::adapter::{AdapterKind, T2IAdapter, T2IAdapterConfig};
use weft::engine::controlnet::apply::{scale_residuals, ControlScaling, SOFT_INJECTION_BASE};
use weft::engine::controlnet::detect::controlnet_config_from_diffusers;
use weft::engine::controlnet::load::{
    load_control, load_controlnet, load_controlnet_diffusers_dir, ControlModel,
};
use weft::engine::controlnet::{check_compatible, ControlNetConfig, ControlNetModel};
use weft::engine::synth::{synth_tensor, synth_var_builder};
use weft::engine::unet::{
    sdxl_adm, AttentionHeads, EncoderAdditions, UNet2DConditionModel, UNetConfig, UNetControl,
};

use crate::engine::util::{get, max_abs_diff, tiny_unet_config};

const TOL: f32 = 1e-4;
/// ControlNet fixture -> the tiny UNet it controls.
const CONTROLNETS: [(&str, &str); 3] = [
    ("sd1_tiny", "sd1_tiny"),
    ("sdxl_tiny", "sdxl_tiny"),
    ("sdxl_mid_tiny", "sdxl_tiny"),
];

/// A diffusers ControlNet folder in `dir`: `weights` beside fixture `name`'s config.json.
fn diffusers_folder(dir: &Path, weights: &Path, name: &str) -> PathBuf {
    let folder = dir.join(format!("{name}_dir"));
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(weights, folder.join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::copy(
        path(&format!("controlnet_config_{name}.json")),
        folder.join("config.json"),
    )
    .unwrap();
    folder
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/controlnet")
        .join(name)
}

fn fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path(name), &Device::Cpu).expect("fixture present")
}

fn config(name: &str) -> ControlNetConfig {
    let text = std::fs::read_to_string(path(&format!("controlnet_config_{name}.json"))).unwrap();
    controlnet_config_from_diffusers(&serde_json::from_str(&text).unwrap()).unwrap()
}

/// (ldm or tencentarc key, diffusers key, shape) rows of a committed key map.
pub(crate) fn keymap(name: &str) -> Vec<(String, String, Vec<usize>)> {
    keymap_at(&path(name))
}

fn keymap_at(file: &Path) -> Vec<(String, String, Vec<usize>)> {
    let text = std::fs::read_to_string(file).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Writes the synthetic weights of `rows` under `file_key(row)` as a safetensors file.
pub(crate) fn write_weights(
    dir: &Path,
    file: &str,
    rows: &[(String, String, Vec<usize>)],
    file_key: impl Fn(&(String, String, Vec<usize>)) -> Option<String>,
) -> PathBuf {
    let tensors: HashMap<String, Tensor> = rows
        .iter()
        .filter_map(|row| {
            Some((
                file_key(row)?,
                synth_tensor(&row.1, row.2.as_slice()).unwrap(),
            ))
        })
        .collect();
    let p = dir.join(file);
    candle_core::safetensors::save(&tensors, &p).unwrap();
    p
}

fn adm(fx: &HashMap<String, Tensor>) -> Option<Tensor> {
    fx.get("pooled").map(|pooled| {
        let sizes = get(fx, "size_values").to_vec2::<f32>().unwrap();
        sdxl_adm(pooled, &sizes).unwrap()
    })
}

fn synth_unet(name: &str) -> UNet2DConditionModel {
    let vb = synth_var_builder(DType::F32, &Device::Cpu);
    UNet2DConditionModel::new(vb, &tiny_unet_config(name)).unwrap()
}

/// Runs the fixture through `model` and the UNet; returns (residual, UNet output) max abs errors.
fn check_controlnet(
    model: &ControlNetModel,
    name: &str,
    unet: &UNet2DConditionModel,
) -> (f32, f32) {
    let fx = fixture(&format!("controlnet_{name}.safetensors"));
    let y = adm(&fx);
    let (x, t, ctx) = (get(&fx, "x"), get(&fx, "t"), get(&fx, "context"));
    let res = model
        .forward(x, t, ctx, y.as_ref(), get(&fx, "hint"))
        .unwrap();
    assert_eq!(res.down.len(), unet.num_skips());
    let mut err = max_abs_diff(&res.mid, get(&fx, "mid"));
    for (k, d) in res.down.iter().enumerate() {
        err = err.max(max_abs_diff(d, get(&fx, &format!("down_{k}"))));
    }
    let out = unet.forward(x, t, ctx, y.as_ref(), Some(&res)).unwrap();
    (err, max_abs_diff(&out, get(&fx, "out_control")))
}

/// Compares configs up to the head description, which shapes cannot give for SD2/SDXL-style
/// per-level counts.
fn same_architecture(a: &ControlNetConfig, b: &ControlNetConfig) -> bool {
    let strip = |c: &ControlNetConfig| ControlNetConfig {
        encoder: UNetConfig {
            heads: AttentionHeads::HeadDim(0),
            out_channels: 0,
            ..c.encoder.clone()
        },
        ..c.clone()
    };
    strip(a) == strip(b)
}

#[test]
fn controlnet_matches_diffusers_with_synthetic_weights() {
    for (name, unet_name) in CONTROLNETS {
        let vb = synth_var_builder(DType::F32, &Device::Cpu);
        let model = ControlNetModel::new(vb, &config(name)).unwrap();
        let (res, out) = check_controlnet(&model, name, &synth_unet(unet_name));
        println!("controlnet {name} (synthetic): residuals {res:.3e}, unet out {out:.3e}");
        assert!(res < TOL && out < TOL, "{name}: residuals {res}, out {out}");
    }
}

#[test]
fn controlnet_loads_from_ldm_and_diffusers_files() {
    let dir = tempfile::tempdir().unwrap();
    for (name, unet_name) in CONTROLNETS {
        let rows = keymap(&format!("keymap_controlnet_{name}.json"));
        let unet = synth_unet(unet_name);
        // lllyasviel's original layout (`control_model.` prefix) for SD1, the ControlNet 1.1 /
        // community layout (bare) for SDXL.
        let prefix = if name == "sd1_tiny" {
            "control_model."
        } else {
            ""
        };
        let ldm = write_weights(dir.path(), &format!("{name}_ldm.safetensors"), &rows, |r| {
            Some(format!("{prefix}{}", r.0))
        });
        let diffusers = write_weights(dir.path(), &format!("{name}.safetensors"), &rows, |r| {
            Some(r.1.clone())
        });
        for file in [&ldm, &diffusers] {
            let loaded = load_control(file, DType::F32, &Device::Cpu).unwrap();
            let ControlModel::ControlNet(model) = loaded.model.as_ref() else {
                panic!("{} is not a controlnet", file.display());
            };
            assert!(
                same_architecture(model.config(), &config(name)),
                "{name}: detected {:?}",
                model.config()
            );
            let (res, out) = check_controlnet(model, name, &unet);
            println!(
                "controlnet {name} ({}): residuals {res:.3e}, unet out {out:.3e}",
                file.file_name().unwrap().to_string_lossy()
            );
            assert!(res < TOL && out < TOL, "{name}: residuals {res}, out {out}");
        }
        // A diffusers folder: config.json next to the weights.
        let folder = diffusers_folder(dir.path(), &diffusers, name);
        let loaded = load_controlnet_diffusers_dir(&folder, DType::F32, &Device::Cpu).unwrap();
        assert!(!loaded.global_average_pooling);
        let ControlModel::ControlNet(model) = loaded.model.as_ref() else {
            panic!("{} is not a controlnet", folder.display());
        };
        let (res, out) = check_controlnet(model, name, &unet);
        assert!(
            res < TOL && out < TOL,
            "{name} folder: residuals {res}, out {out}"
        );
    }
}

#[test]
fn wrong_family_controlnet_is_refused() {
    let sd1 = config("sd1_tiny");
    let sdxl_mid = config("sdxl_mid_tiny");
    check_compatible(&sd1, &tiny_unet_config("sd1_tiny")).unwrap();
    // Reduced transformer depth ("mid"/"small") is fine.
    check_compatible(&sdxl_mid, &tiny_unet_config("sdxl_tiny")).unwrap();
    let err = check_compatible(&sd1, &tiny_unet_config("sdxl_tiny")).unwrap_err();
    assert!(
        err.contains("sd1.x controlnet") && err.contains("sdxl"),
        "{err}"
    );
    let err = check_compatible(&sdxl_mid, &tiny_unet_config("sd1_tiny")).unwrap_err();
    assert!(
        err.contains("sdxl controlnet") && err.contains("sd1.x"),
        "{err}"
    );
    let err = check_compatible(&ControlNetConfig::sd21(), &UNetConfig::sd15()).unwrap_err();
    assert!(err.contains("sd2.x controlnet"), "{err}");
    check_compatible(&ControlNetConfig::sdxl(), &UNetConfig::sdxl_base()).unwrap();
    assert_eq!(ControlNetConfig::sd15().num_down_residuals(), 12);
    assert_eq!(ControlNetConfig::sdxl().num_down_residuals(), 9);
}

#[test]
fn strength_zero_leaves_the_unet_unchanged() {
    let fx = fixture("controlnet_sd1_tiny.safetensors");
    let model = ControlNetModel::new(
        synth_var_builder(DType::F32, &Device::Cpu),
        &config("sd1_tiny"),
    )
    .unwrap();
    let unet = synth_unet("sd1_tiny");
    let (x, t, ctx) = (get(&fx, "x"), get(&fx, "t"), get(&fx, "context"));
    let res = model.forward(x, t, ctx, None, get(&fx, "hint")).unwrap();
    for scaling in [
        ControlScaling::Constant,
        ControlScaling::Soft {
            base: SOFT_INJECTION_BASE,
        },
    ] {
        let zero = scale_residuals(&res, 0.0, scaling).unwrap();
        for r in zero.down.iter().chain(std::iter::once(&zero.mid)) {
            let max = r.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert_eq!(max.to_scalar::<f32>().unwrap(), 0.0);
        }
        let plain = unet.forward(x, t, ctx, None, None).unwrap();
        let with = unet.forward(x, t, ctx, None, Some(&zero)).unwrap();
        assert_eq!(max_abs_diff(&plain, &with), 0.0);
    }
    // Soft injection: residual k of 9 times 0.825^(9 - k); two controls sum.
    let soft = scale_residuals(
        &res,
        2.0,
        ControlScaling::Soft {
            base: SOFT_INJECTION_BASE,
        },
    )
    .unwrap();
    let n = res.down.len();
    for (k, (s, r)) in soft.down.iter().zip(&res.down).enumerate() {
        let expected = (r * (2.0 * SOFT_INJECTION_BASE.powi((n - k) as i32))).unwrap();
        assert!(max_abs_diff(s, &expected) < 1e-6);
    }
    let twice = res.sum(&res).unwrap();
    assert!(max_abs_diff(&twice.mid, &(&res.mid * 2.0).unwrap()) < 1e-6);
}

#[test]
fn one_hint_is_shared_by_the_batch() {
    let fx = fixture("controlnet_sd1_tiny.safetensors");
    let model = ControlNetModel::new(
        synth_var_builder(DType::F32, &Device::Cpu),
        &config("sd1_tiny"),
    )
    .unwrap();
    let (x, t, ctx) = (get(&fx, "x"), get(&fx, "t"), get(&fx, "context"));
    let hint = get(&fx, "hint").narrow(0, 0, 1).unwrap();
    let one = model.forward(x, t, ctx, None, &hint).unwrap();
    let both = Tensor::cat(&[&hint, &hint], 0).unwrap();
    let two = model.forward(x, t, ctx, None, &both).unwrap();
    // Not bit-equal: on the CPU, small images of a batch share one matmul (engine::ops::conv), so
    // the rounding depends on the batch size; a hint that was not shared would differ by O(1).
    assert!(max_abs_diff(&one.mid, &two.mid) < 1e-5);
    let wrong = get(&fx, "hint").narrow(2, 0, 32).unwrap();
    let err = model.forward(x, t, ctx, None, &wrong).unwrap_err();
    assert!(err.to_string().contains("hint"), "{err}");
}

#[test]
fn load_errors_name_the_file_and_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let rows = keymap("keymap_controlnet_sd1_tiny.json");
    let missing = write_weights(dir.path(), "missing.safetensors", &rows, |r| {
        (r.0 != "zero_convs.3.0.weight").then(|| r.0.clone())
    });
    let err = load_controlnet(&missing, DType::F32, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("missing.safetensors") && msg.contains("controlnet_down_blocks.3.weight"),
        "{msg}"
    );
    // A hint conv of the wrong shape: the message names the file's own key.
    let mut bad = rows.clone();
    for row in bad
        .iter_mut()
        .filter(|r| r.0 == "input_hint_block.2.weight")
    {
        row.2 = vec![16, 16, 1, 1];
    }
    let bad = write_weights(dir.path(), "bad_shape.safetensors", &bad, |r| {
        Some(r.0.clone())
    });
    let msg = load_controlnet(&bad, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bad_shape.safetensors") && msg.contains("input_hint_block.2.weight"),
        "{msg}"
    );
    let unrelated = write_weights(dir.path(), "unrelated.safetensors", &rows[..2], |r| {
        Some(format!("first_stage_model.{}", r.1))
    });
    let msg = load_control(&unrelated, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unrelated.safetensors") && msg.contains("zero_convs.0.0.weight"),
        "{msg}"
    );
    // An adapter is not a ControlNet.
    let adapter_rows = keymap("keymap_adapter_full_sd1_tiny.json");
    let adapter = write_weights(dir.path(), "adapter.safetensors", &adapter_rows, |r| {
        Some(r.0.clone())
    });
    let msg = load_controlnet(&adapter, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("t2i-adapter"), "{msg}");
}

/// (fixture, UNet, config) of the adapter fixtures.
fn adapters() -> [(&'static str, &'static str, T2IAdapterConfig); 3] {
    let full = T2IAdapterConfig {
        kind: AdapterKind::Full,
        hint_channels: 3,
        channels: vec![32, 64, 64],
        num_res_blocks: 2,
        kernel_size: 1,
    };
    [
        ("full_sd1_tiny", "sd1_tiny", full.clone()),
        (
            "light_sd1_tiny",
            "sd1_tiny",
            T2IAdapterConfig {
                kind: AdapterKind::Light,
                kernel_size: 3,
                ..full.clone()
            },
        ),
        (
            "xl_sdxl_tiny",
            "sdxl_tiny",
            T2IAdapterConfig {
                kind: AdapterKind::FullXl,
                channels: vec![32, 64, 128, 128],
                ..full
            },
        ),
    ]
}

/// Runs the adapter fixture; returns (features, UNet output) max abs errors.
fn check_adapter(adapter: &T2IAdapter, name: &str, unet: &UNet2DConditionModel) -> (f32, f32) {
    let fx = fixture(&format!("adapter_{name}.safetensors"));
    let y = adm(&fx);
    let (x, t, ctx) = (get(&fx, "x"), get(&fx, "t"), get(&fx, "context"));
    let features = adapter.forward(get(&fx, "hint")).unwrap();
    let mut err = 0f32;
    for (k, f) in features.iter().enumerate() {
        err = err.max(max_abs_diff(f, get(&fx, &format!("feature_{k}"))));
    }
    let strength = get(&fx, "strength").to_vec1::<f32>().unwrap()[0];
    let additions = adapter
        .residuals(&features, unet.num_skips(), unet.config().layers_per_block)
        .unwrap()
        .scaled(f64::from(strength))
        .unwrap();
    let control = UNetControl {
        residuals: None,
        encoder: Some(additions),
    };
    let out = unet
        .forward_controlled(x, t, ctx, y.as_ref(), &control)
        .unwrap();
    (err, max_abs_diff(&out, get(&fx, "out_adapter")))
}

#[test]
fn adapters_match_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    for (name, unet_name, cfg) in adapters() {
        let unet = synth_unet(unet_name);
        let synthetic = T2IAdapter::new(synth_var_builder(DType::F32, &Device::Cpu), &cfg).unwrap();
        let (feat, out) = check_adapter(&synthetic, name, &unet);
        println!("adapter {name} (synthetic): features {feat:.3e}, unet out {out:.3e}");
        assert!(
            feat < TOL && out < TOL,
            "{name}: features {feat}, out {out}"
        );
        // TencentARC / ComfyUI names and diffusers names, written at test time.
        let rows = keymap(&format!("keymap_adapter_{name}.json"));
        let tencentarc = write_weights(dir.path(), &format!("{name}_ta.safetensors"), &rows, |r| {
            Some(r.0.clone())
        });
        let diffusers = write_weights(dir.path(), &format!("{name}.safetensors"), &rows, |r| {
            Some(r.1.clone())
        });
        let mut files = vec![tencentarc, diffusers];
        // The script also pickles one adapter (TencentARC's .pth format).
        let pickled = path(&format!("adapter_{name}.pth"));
        if pickled.is_file() {
            files.push(pickled);
        }
        for file in &files {
            let loaded = load_control(file, DType::F32, &Device::Cpu).unwrap();
            let ControlModel::Adapter(adapter) = loaded.model.as_ref() else {
                panic!("{} is not an adapter", file.display());
            };
            assert_eq!(adapter.config(), &cfg, "{name}");
            let (feat, out) = check_adapter(adapter, name, &unet);
            println!(
                "adapter {name} ({}): features {feat:.3e}, unet out {out:.3e}",
                file.file_name().unwrap().to_string_lossy()
            );
            assert!(
                feat < TOL && out < TOL,
                "{name}: features {feat}, out {out}"
            );
        }
    }
}

#[test]
fn adapter_and_controlnet_residuals_combine() {
    // With no adapter residual anywhere, the adapter forward is the UNet forward with control.
    let fx = fixture("controlnet_sd1_tiny.safetensors");
    let unet = synth_unet("sd1_tiny");
    let model = ControlNetModel::new(
        synth_var_builder(DType::F32, &Device::Cpu),
        &config("sd1_tiny"),
    )
    .unwrap();
    let (x, t, ctx) = (get(&fx, "x"), get(&fx, "t"), get(&fx, "context"));
    let res = model.forward(x, t, ctx, None, get(&fx, "hint")).unwrap();
    let empty = EncoderAdditions {
        input: vec![None; unet.num_skips()],
        mid: None,
    };
    let control = UNetControl {
        residuals: Some(res.clone()),
        encoder: Some(empty),
    };
    let a = unet.forward_controlled(x, t, ctx, None, &control).unwrap();
    assert!(max_abs_diff(&a, get(&fx, "out_control")) < TOL);
    let b = unet.forward(x, t, ctx, None, Some(&res)).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

/// The tensors of a tiny SD1 Control-LoRA laid out like Stability's files, for the tiny SD1 UNet:
/// the ControlNet's own layers (hint block, zero convs, mid block out) in full, a rank-2 `up`/`down`
/// pair for every 2-D+ encoder weight, the mid block's biases and norms overridden, and the marker.
pub(crate) fn control_lora_tensors() -> HashMap<String, Tensor> {
    let rank = 2;
    let mut file: HashMap<String, Tensor> = HashMap::new();
    for (ldm, name, shape) in keymap("keymap_controlnet_sd1_tiny.json") {
        let is_control = ldm.starts_with("input_hint_block")
            || ldm.starts_with("zero_convs")
            || ldm.starts_with("middle_block_out");
        if is_control {
            file.insert(ldm, synth_tensor(&name, shape.as_slice()).unwrap());
        } else if shape.len() >= 2 {
            let mut up_shape = vec![shape[0], rank];
            let mut down_shape = vec![rank];
            down_shape.extend(&shape[1..]);
            if shape.len() == 4 {
                up_shape.extend([1, 1]);
            }
            let up =
                (synth_tensor(&format!("up.{name}"), up_shape.as_slice()).unwrap() * 0.3).unwrap();
            let down = synth_tensor(&format!("down.{name}"), down_shape.as_slice()).unwrap();
            let module = ldm.strip_suffix(".weight").unwrap();
            file.insert(format!("{module}.up"), up);
            file.insert(format!("{module}.down"), down);
        } else if ldm.starts_with("middle_block") {
            let other = synth_tensor(&format!("override.{name}"), shape.as_slice()).unwrap();
            file.insert(ldm, other);
        }
    }
    file.insert(
        "lora_controlnet".into(),
        Tensor::new(&[1f32], &Device::Cpu).unwrap(),
    );
    file
}

/// Control-LoRA against ComfyUI's recipe (`ControlLora.pre_run` + `ControlLoraOps`), computed
/// here: the expected ControlNet has the base UNet's encoder weights plus `up @ down` on every
/// 2-D+ weight of the encoder, and the file's own hint block, zero convs and (overridden) norms.
/// No reference implementation is installed, so this checks our plumbing against the formula;
/// tolerance 1e-5.
#[test]
fn control_lora_builds_on_the_base_unet() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let file = control_lora_tensors();
    let lora = dir.path().join("control-lora-tiny.safetensors");
    candle_core::safetensors::save(&file, &lora).unwrap();

    // The base: the tiny SD1 UNet's encoder, diffusers names, as a model keeps them.
    let mut base: HashMap<String, Tensor> = HashMap::new();
    let mut expected: HashMap<String, Tensor> = HashMap::new();
    for (ldm, name, shape) in keymap("keymap_controlnet_sd1_tiny.json") {
        let own = synth_tensor(&name, shape.as_slice()).unwrap();
        let module = ldm.strip_suffix(".weight").unwrap_or(&ldm);
        let want = if let Some(t) = file.get(&ldm) {
            t.clone()
        } else if let (Some(up), Some(down)) = (
            file.get(&format!("{module}.up")),
            file.get(&format!("{module}.down")),
        ) {
            let delta = up
                .flatten_from(1)
                .unwrap()
                .matmul(&down.flatten_from(1).unwrap())
                .unwrap()
                .reshape(shape.as_slice())
                .unwrap();
            (&own + delta).unwrap()
        } else {
            own.clone()
        };
        if !file.contains_key(&ldm) || ldm.starts_with("middle_block.") {
            base.insert(name.clone(), own);
        }
        expected.insert(name, want);
    }
    let base = Arc::new(base);

    let unet_cfg = tiny_unet_config("sd1_tiny");
    let loaded = load_control(&lora, DType::F32, &Device::Cpu).unwrap();
    let ControlModel::ControlLora(control_lora) = loaded.model.as_ref() else {
        panic!("not recognised as a control-lora");
    };
    let model = control_lora
        .for_model(&base, &unet_cfg, DType::F32, &Device::Cpu)
        .unwrap();
    let reference = ControlNetModel::new(
        candle_nn::VarBuilder::from_tensors(expected, DType::F32, &Device::Cpu),
        &ControlNetConfig::for_unet(&unet_cfg),
    )
    .unwrap();
    let fx = fixture("controlnet_sd1_tiny.safetensors");
    let (x, t, ctx) = (get(&fx, "x"), get(&fx, "t"), get(&fx, "context"));
    let hint = get(&fx, "hint");
    let got = model.forward(x, t, ctx, None, hint).unwrap();
    let want = reference.forward(x, t, ctx, None, hint).unwrap();
    let mut err = max_abs_diff(&got.mid, &want.mid);
    for (a, b) in got.down.iter().zip(&want.down) {
        err = err.max(max_abs_diff(a, b));
    }
    println!("control-lora sd1_tiny: residuals {err:.3e}");
    assert!(err < 1e-5, "{err}");
    // The deltas and overrides matter: the plain synthetic ControlNet differs.
    let plain = ControlNetModel::new(
        synth_var_builder(DType::F32, &Device::Cpu),
        &ControlNetConfig::for_unet(&unet_cfg),
    )
    .unwrap()
    .forward(x, t, ctx, None, hint)
    .unwrap();
    assert!(max_abs_diff(&plain.mid, &got.mid) > 1e-2);

    // Built once per base model: the same weights give the same ControlNet, other weights (a
    // LoRA-patched copy) a new one.
    let again = control_lora
        .for_model(&base, &unet_cfg, DType::F32, &Device::Cpu)
        .unwrap();
    assert!(Arc::ptr_eq(&model, &again));
    let copy = Arc::new((*base).clone());
    let other = control_lora
        .for_model(&copy, &unet_cfg, DType::F32, &Device::Cpu)
        .unwrap();
    assert!(!Arc::ptr_eq(&model, &other));

    // The ControlNet-only loader says what the file is; an SDXL model is refused by family.
    let msg = load_controlnet(&lora, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("control-lora"), "{msg}");
    let msg = control_lora
        .check_compatible(&tiny_unet_config("sdxl_tiny"))
        .unwrap_err();
    assert!(msg.contains("sdxl") && msg.contains("sd1"), "{msg}");
}

/// The union ControlNet fixture (tools/parity/controlnet_union_reference.py).
const UNION: &str = "union_sdxl_tiny";

/// Max abs error of `model` against the union fixture's three cases: diffusers with one hint for
/// the batch and a control type, ComfyUI's per-item merge with a hint per item, and "auto".
fn check_union(model: &ControlNetModel) -> f32 {
    let fx = fixture(&format!("controlnet_{UNION}.safetensors"));
    let y = adm(&fx);
    let (x, t, ctx) = (get(&fx, "x"), get(&fx, "t"), get(&fx, "context"));
    let kind = get(&fx, "type").to_vec1::<f32>().unwrap()[0] as usize;
    let mut worst = 0f32;
    for (case, hint, control_type) in [
        ("typed_", "hint", Some(kind)),
        ("distinct_", "hints", Some(kind)),
        ("auto_", "hints", None),
    ] {
        let res = model
            .forward_typed(x, t, ctx, y.as_ref(), get(&fx, hint), control_type)
            .unwrap();
        let mut err = max_abs_diff(&res.mid, get(&fx, &format!("{case}mid")));
        for (k, d) in res.down.iter().enumerate() {
            err = err.max(max_abs_diff(d, get(&fx, &format!("{case}down_{k}"))));
        }
        println!("union controlnet {case}: residuals {err:.3e}");
        worst = worst.max(err);
    }
    worst
}

#[test]
fn union_controlnet_matches_diffusers_and_comfyui() {
    let cfg = config(UNION);
    let union = cfg.union.clone().expect("a union config");
    assert_eq!((union.num_control_types, union.channels), (8, 32));
    let model = ControlNetModel::new(synth_var_builder(DType::F32, &Device::Cpu), &cfg).unwrap();
    assert!(model.is_union());
    let err = check_union(&model);
    assert!(err < TOL, "union residuals {err}");
    // The type matters, and one the model was not trained with is refused.
    let fx = fixture(&format!("controlnet_{UNION}.safetensors"));
    let y = adm(&fx);
    let (x, t, ctx, hint) = (
        get(&fx, "x"),
        get(&fx, "t"),
        get(&fx, "context"),
        get(&fx, "hint"),
    );
    let depth = model
        .forward_typed(x, t, ctx, y.as_ref(), hint, Some(1))
        .unwrap();
    assert!(max_abs_diff(&depth.mid, get(&fx, "typed_mid")) > 1e-3);
    let err = model
        .forward_typed(x, t, ctx, y.as_ref(), hint, Some(8))
        .unwrap_err();
    assert!(err.to_string().contains("knows 8 types"), "{err}");
    // A plain ControlNet ignores the type (ComfyUI passes it in kwargs its forward ignores).
    let plain = ControlNetModel::new(
        synth_var_builder(DType::F32, &Device::Cpu),
        &config("sdxl_tiny"),
    )
    .unwrap();
    let sd = fixture("controlnet_sdxl_tiny.safetensors");
    let sy = adm(&sd);
    let (sx, st, sc, sh) = (
        get(&sd, "x"),
        get(&sd, "t"),
        get(&sd, "context"),
        get(&sd, "hint"),
    );
    let a = plain.forward(sx, st, sc, sy.as_ref(), sh).unwrap();
    let b = plain
        .forward_typed(sx, st, sc, sy.as_ref(), sh, Some(3))
        .unwrap();
    assert_eq!(max_abs_diff(&a.mid, &b.mid), 0.0);
}

#[test]
fn union_controlnet_loads_from_comfyui_and_diffusers_names() {
    let dir = tempfile::tempdir().unwrap();
    let rows = keymap(&format!("keymap_controlnet_{UNION}.json"));
    // The LDM names with ComfyUI's `attn.in_proj.weight`, bare and under `control_model.`.
    let ldm = write_weights(dir.path(), "union_ldm.safetensors", &rows, |r| {
        Some(r.0.clone())
    });
    let pth_style = write_weights(dir.path(), "union_prefixed.safetensors", &rows, |r| {
        Some(format!("control_model.{}", r.0))
    });
    // xinsir's release: diffusers names in one safetensors file.
    let diffusers = write_weights(dir.path(), "union.safetensors", &rows, |r| {
        Some(r.1.clone())
    });
    for file in [&ldm, &pth_style, &diffusers] {
        let loaded = load_control(file, DType::F32, &Device::Cpu).unwrap();
        let ControlModel::ControlNet(model) = loaded.model.as_ref() else {
            panic!("{} is not a controlnet", file.display());
        };
        assert!(
            same_architecture(model.config(), &config(UNION)),
            "detected {:?}",
            model.config()
        );
        let err = check_union(model);
        assert!(err < TOL, "{}: union residuals {err}", file.display());
    }
    // A diffusers folder with its config.json.
    let folder = diffusers_folder(dir.path(), &diffusers, UNION);
    let loaded = load_controlnet_diffusers_dir(&folder, DType::F32, &Device::Cpu).unwrap();
    let ControlModel::ControlNet(model) = loaded.model.as_ref() else {
        panic!("the folder is not a controlnet");
    };
    assert!(check_union(model) < TOL);
    // Part of the union tensors: refused, naming what is missing.
    let partial = write_weights(dir.path(), "partial.safetensors", &rows, |r| {
        (!r.1.starts_with("control_add_embedding.")).then(|| r.1.clone())
    });
    let err = load_control(&partial, DType::F32, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("partial.safetensors")
            && msg.contains("control_add_embedding.linear_1.weight"),
        "{msg}"
    );
}
