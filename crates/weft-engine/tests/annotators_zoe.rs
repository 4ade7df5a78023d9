//! Parity of ZoeDepth (MiDaS BEiT core + metric bins head) with PyPI controlnet_aux's network
//! run as comfyui_controlnet_aux's `ZoeDetector` ran it (`tools/parity/zoe_reference.py`),
//! fixtures in `tests/fixtures/annotators/zoe/`: a narrowed net in the published `ZoeD_M12_N.pt`
//! layout, a square image enlarged to the resolution (a square token grid) and a 4:3 one reduced
//! and padded (an 18x32 grid: the relative position table resized both ways); the metric depth of
//! one run, `infer`'s padded and flip-averaged depth, and the node's map.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::{fixture_dir, levels, max_abs, padded_case};
use weft_engine::annotators::zoe::{core_input, zoe, Config, Processor, Zoe};
use weft_engine::load::file::StateDict;

fn load(path: &Path) -> Zoe {
    let sd = Arc::new(StateDict::open(path).expect("file"));
    Zoe::load(&sd, &Device::Cpu).expect("loads")
}

/// The shape read from the weights: [BEiT width, blocks, heads, MLP, patch, table side];
/// hooks; readout widths; [features, hidden, bins, seed hidden, embedding, projector hidden,
/// attractor hidden, binomial hidden].
fn check_config(
    cfg: &Config,
    beit: [usize; 6],
    hooks: [usize; 4],
    readout: [usize; 4],
    head: [usize; 8],
) {
    let b = &cfg.beit;
    assert_eq!(
        [b.embed_dim, b.depth, b.heads, b.mlp, b.patch, b.table_side],
        beit
    );
    assert_eq!(b.hooks, hooks);
    assert_eq!(b.readout, readout);
    let [bins] = cfg.heads.as_slice() else {
        panic!("{} bins heads", cfg.heads.len())
    };
    assert_eq!(
        [
            cfg.features,
            cfg.head_hidden,
            bins.bins,
            bins.seed_hidden,
            cfg.embedding,
            cfg.projector_hidden,
            bins.attractor_hidden,
            bins.binomial_hidden
        ],
        head
    );
    assert_eq!(bins.attractors, [16, 8, 4, 1]);
    assert!(bins.relative && cfg.router.is_none());
}

fn max(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max")
}

#[test]
fn zoe_matches_the_pack() {
    let dir = fixture_dir("zoe");
    let model = load(&dir.join("ZoeD_M12_N.pt"));
    check_config(
        model.config(),
        [32, 4, 2, 64, 16, 47],
        [0, 1, 2, 3],
        [8, 16, 32, 32],
        [16, 32, 32, 256, 32, 128, 128, 32],
    );
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .expect("reference");
    for (case, resolution) in [("astronaut", 128u32), ("coffee", 64)] {
        let input = &reference[&format!("{case}.input")];
        let (padded, pixels) = padded_case(input, resolution);
        let pixels = (pixels / 255.0).expect("0..1");

        // one run of the net on the core's input
        let (net_input, _) = core_input(&pixels, &Processor::INFER).expect("core input");
        let metric = model
            .forward(&net_input)
            .and_then(|t| t.squeeze(0)?.squeeze(0))
            .expect("metric");
        let expected = &reference[&format!("{case}.metric")];
        let metric_diff = max_abs(&metric, expected);
        let metric_range = max(expected);
        assert!(
            metric_diff <= 2e-3 * metric_range,
            "{case}: metric depth differs by {metric_diff} (max {metric_range})"
        );

        // infer: padding, resize back, flip average
        let depth = model.infer_image(&padded.image).expect("depth");
        let expected = &reference[&format!("{case}.depth")];
        let depth_diff = max_abs(&depth, expected);
        let depth_range = max(expected);
        assert!(
            depth_diff <= 1e-3 * depth_range,
            "{case}: depth differs by {depth_diff} (max {depth_range})"
        );

        let image = (input.to_dtype(DType::F32).expect("f32") / 255.0)
            .and_then(|t| t.unsqueeze(0))
            .expect("IMAGE");
        let out = zoe(&model, &image, resolution).expect("node");
        let (worst, off) = levels(&out, &reference[&format!("{case}.depth_map")], case);
        println!(
            "{case}: metric max diff {metric_diff:.2e} (max {metric_range:.2}); depth max diff \
             {depth_diff:.2e} (max {depth_range:.2}); map max diff {worst} level(s), {off} values off"
        );
        assert!(worst <= 1, "{case}: map differs by {worst} levels");
    }
}

/// A full-size file (`zoe_reference.py --full DIR`) loads with the published shape and maps a
/// 512x512 image: `WEFT_ZOE_FILE=DIR/ZoeD_M12_N.pt cargo test -p weft-engine --test
/// annotators_zoe -- --ignored --nocapture`.
#[test]
#[ignore = "needs a full-size file named by WEFT_ZOE_FILE"]
fn full_size_file_loads_and_runs() {
    let Some(path) = std::env::var_os("WEFT_ZOE_FILE") else {
        return;
    };
    let model = load(Path::new(&path));
    check_config(
        model.config(),
        [1024, 24, 16, 4096, 16, 47],
        [5, 11, 17, 23],
        [256, 512, 1024, 1024],
        [256, 32, 64, 256, 128, 128, 128, 80],
    );
    let image = Tensor::rand(0f32, 1f32, (1, 512, 512, 3), &Device::Cpu).expect("image");
    let start = std::time::Instant::now();
    let out = zoe(&model, &image, 512).expect("runs");
    println!("{:?} in {:.2?}", out.dims(), start.elapsed());
    assert_eq!(out.dims(), [1, 512, 512, 3]);
}
