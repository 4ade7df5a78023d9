//! Parity of MiDaS DPT-Hybrid read from transformers' `Intel/dpt-hybrid-midas` folder with
//! transformers' `DPTForDepthEstimation` run as today's comfyui_controlnet_aux runs it
//! (`tools/parity/midas_hf_reference.py`), fixtures in `tests/fixtures/annotators/midas_hf/`:
//! a narrowed net saved with `save_pretrained` and a processor config, a square image shrunk by
//! the processor and a 4:3 one enlarged; the processor's resized input, the raw depth, the depth
//! map and the normal map.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use common::{check_depth, check_depth_and_normal, comfy_image, fixture_dir, image_u8};
use weft_engine::annotators::midas::{midas, Input, Midas, MidasMap, Stage};
use weft_engine::load::file::StateDict;
use weft_engine::preprocess::aux::resize_image_with_pad;
use weft_engine::preprocess::cv::Interpolation;
use weft_engine::preprocess::resample::{resize_u8_antialias, Filter};

fn load(path: &Path) -> Midas {
    let sd = Arc::new(StateDict::open(path).expect("file"));
    Midas::load(&sd, &Device::Cpu).expect("loads")
}

/// The shape read from the weights and config.json: stages as (blocks, width, mid); [stem, ViT
/// width, blocks, heads, MLP width, position grid side]; the read-out layers.
fn check_config(
    model: &Midas,
    stages: [(usize, usize, usize); 3],
    vit: [usize; 6],
    hooks: [usize; 2],
) {
    let cfg = model.config();
    let stages: Vec<Stage> = stages
        .iter()
        .map(|&(blocks, width, mid)| Stage { blocks, width, mid })
        .collect();
    assert_eq!(cfg.stages, stages);
    assert_eq!(
        [
            cfg.stem,
            cfg.embed_dim,
            cfg.depth,
            cfg.heads,
            cfg.mlp,
            cfg.pos_side
        ],
        vit
    );
    assert_eq!(cfg.hooks, hooks, "backbone_out_indices[2..] of config.json");
    assert_eq!(cfg.layer_norm_eps, 1e-12);
}

#[test]
fn midas_from_the_transformers_folder_matches_the_pack() {
    let dir = fixture_dir("midas_hf");
    let model = load(&dir.join("Intel/dpt-hybrid-midas/model.safetensors"));
    check_config(
        &model,
        [(1, 128, 32), (2, 128, 32), (1, 128, 32)],
        [32, 64, 4, 1, 64, 12],
        [1, 3],
    );
    let cfg = model.config();
    assert_eq!([cfg.readout[0], cfg.readout[1], cfg.features], [64, 64, 16]);
    let Input::Processor(processor) = model.input().clone() else {
        panic!("the transformers layout runs through the processor");
    };
    assert_eq!(
        (processor.height, processor.width, processor.filter),
        (192, 192, Filter::Bicubic)
    );

    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .expect("reference");
    let a = (std::f64::consts::PI * 2.0) as f32;
    for (case, resolution) in [("astronaut", 256), ("coffee", 64)] {
        let input = &reference[&format!("{case}.input")];
        let padded =
            resize_image_with_pad("test", &image_u8(input), resolution, Interpolation::Cubic)
                .expect("pad");
        // torchvision's uint8 antialiased resize, exactly
        let resized = resize_u8_antialias(&padded.image, 192, 192, Filter::Bicubic);
        assert_eq!(
            resized,
            image_u8(&reference[&format!("{case}.resized")]),
            "{case}: resized input"
        );
        if case == "astronaut" {
            // both filters exactly, from the pack's own padded image
            let theirs = image_u8(&reference["resize.padded"]);
            for (filter, want) in [
                (Filter::Bicubic, &reference["astronaut.resized"]),
                (Filter::Bilinear, &reference["resize.bilinear"]),
            ] {
                let got = resize_u8_antialias(&theirs, 192, 192, filter);
                assert_eq!(got, image_u8(want), "{filter:?} resize");
            }
        }

        let depth = model
            .infer_processed(&padded.image, &processor)
            .expect("depth");
        let expected = &reference[&format!("{case}.depth")];
        let note = check_depth(&depth, expected, 1e-4, case);

        let image = comfy_image(input);
        let run = |map| midas(&model, &image, resolution as u32, map).expect("node");
        let normal = MidasMap::Normal {
            a,
            bg_threshold: 0.1,
        };
        check_depth_and_normal(case, &note, &run(MidasMap::Depth), &run(normal), &reference);
    }
}

/// A full-size folder (`midas_hf_reference.py --full DIR`) loads with the published shape and
/// maps a 512x512 image: `WEFT_MIDAS_HF_FILE=DIR/Intel/dpt-hybrid-midas/model.safetensors cargo
/// test -p weft-engine --test annotators_midas_hf -- --ignored --nocapture`.
#[test]
#[ignore = "needs a full-size folder's model.safetensors named by WEFT_MIDAS_HF_FILE"]
fn full_size_folder_loads_and_runs() {
    let Some(path) = std::env::var_os("WEFT_MIDAS_HF_FILE") else {
        return;
    };
    let model = load(Path::new(&path));
    check_config(
        &model,
        [(3, 256, 64), (4, 512, 128), (9, 1024, 256)],
        [64, 768, 12, 12, 3072, 24],
        [8, 11],
    );
    let image = Tensor::rand(0f32, 1f32, (1, 512, 512, 3), &Device::Cpu).expect("image");
    let start = std::time::Instant::now();
    let out = midas(&model, &image, 512, MidasMap::Depth).expect("runs");
    println!("{:?} in {:.2?}", out.dims(), start.elapsed());
    assert_eq!(out.dims(), [1, 512, 512, 3]);
}
