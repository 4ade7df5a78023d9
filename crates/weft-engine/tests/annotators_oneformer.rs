//! Parity of OneFormer read from transformers' `shi-labs/oneformer_ade20k_swin_large` folder with
//! transformers' `OneFormerForUniversalSegmentation` run as today's comfyui_controlnet_aux runs it
//! (`tools/parity/oneformer_reference.py`), fixtures in `tests/fixtures/annotators/oneformer/`:
//! a narrowed net saved with `save_pretrained` and a processor config; a square image and a 4:3
//! one, both enlarged by the processor; the task ids, the palette, the processor's resized input,
//! the backbone's and pixel decoder's maps (first case), the class and mask logits, the class map
//! and the node's coloured map.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::{comfy_image, fixture_dir, image_u8, levels, max_abs};
use weft_engine::annotators::oneformer::{
    load, palette, resize_antialias, semantic_segmentation, task_ids, OneFormer, Size,
};
use weft_engine::load::file::StateDict;
use weft_engine::preprocess::aux::resize_image_with_pad;
use weft_engine::preprocess::cv::Interpolation;
use weft_engine::preprocess::resample::Filter;

fn open(path: &Path) -> OneFormer {
    let sd = Arc::new(StateDict::open(path).expect("file"));
    load(&sd, &Device::Cpu).expect("loads")
}

/// Score margin under which the reference's argmax may go either way.
const TIE: f32 = 1e-5;

/// Largest difference relative to the reference's largest magnitude.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_abs(a, b) / scale.max(1e-6)
}

#[test]
fn oneformer_from_the_transformers_folder_matches_the_pack() {
    let dir = fixture_dir("oneformer");
    let model = open(&dir.join("shi-labs/oneformer_ade20k_swin_large/model.safetensors"));
    let p = model.processor();
    assert_eq!(
        (p.size, p.filter),
        (
            Size::Edges {
                shortest: 160,
                longest: Some(320)
            },
            Filter::Bilinear
        )
    );
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .expect("reference");

    // the CLIP ids of "the task is semantic", padded with zeros to task_seq_len
    let ids = reference["task_inputs"].to_vec1::<f32>().unwrap();
    assert_eq!(task_ids(ids.len()), ids, "task ids");
    let want: Vec<[u8; 3]> = reference["palette"]
        .to_vec2::<u8>()
        .unwrap()
        .into_iter()
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    assert_eq!(palette(), want, "palette");
    // the post-processing's resize, shrinking and growing
    for (name, (h, w)) in [("shrunk", (16, 20)), ("grown", (97, 130))] {
        let got = resize_antialias(&reference["resize.scores"], h, w).expect("resize");
        let d = max_abs(&got, &reference[&format!("resize.{name}")]);
        println!("scores {name}: max diff {d:.2e}");
        assert!(d < 1e-5, "{name}: {d}");
    }

    for (case, resolution) in [("astronaut", 128), ("coffee", 64)] {
        let input = &reference[&format!("{case}.input")];
        let padded =
            resize_image_with_pad("test", &image_u8(input), resolution, Interpolation::Cubic)
                .expect("pad");
        let (resized, x) = model.pixel_values(&padded.image).expect("processor");
        assert_eq!(
            resized,
            image_u8(&reference[&format!("{case}.resized")]),
            "{case}: resized input"
        );
        if let Some(f0) = reference.get(&format!("{case}.features.0")) {
            let features = model.features(&x).expect("swin");
            for (i, f) in features.iter().enumerate() {
                let want = &reference[&format!("{case}.features.{i}")];
                let d = rel(&f.squeeze(0).unwrap(), want);
                println!("{case}: Swin stage {} max diff {d:.2e} (relative)", i + 1);
                assert!(d < 1e-4, "{case}: Swin stage {}: {d}", i + 1);
            }
            assert_eq!(features[0].dims()[1..], *f0.dims());
        }
        let pred = model.forward(&x).expect("net");
        let dc = rel(&pred.class, &reference[&format!("{case}.class_logits")]);
        let dm = rel(&pred.masks, &reference[&format!("{case}.mask_logits")]);
        println!("{case}: class logits max diff {dc:.2e}, mask logits {dm:.2e} (relative)");
        assert!(dc < 1e-4 && dm < 1e-4, "{case}: logits {dc} {dm}");

        // The class map: equal except where the reference's two best scores are within TIE
        // (the scores' own rounding differs there).
        let classes = model.segment(&padded.image).expect("segment");
        let flat = |name: &str, dtype| {
            reference[&format!("{case}.{name}")]
                .flatten_all()
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let want = flat("classes", DType::I64).to_vec1::<i64>().unwrap();
        let margin = flat("margin", DType::F32).to_vec1::<f32>().unwrap();
        let off: Vec<usize> = (0..want.len())
            .filter(|&i| classes[i] as i64 != want[i])
            .collect();
        let ties = off.iter().filter(|&&i| margin[i] < TIE).count();
        println!(
            "{case}: {} of {} pixels in another class, {ties} of them at ties (margin < {TIE})",
            off.len(),
            want.len()
        );
        assert_eq!(ties, off.len(), "{case}: class map off where no tie");

        // The coloured map: exact but for those pixels (cropped to the unpadded size).
        let out =
            semantic_segmentation(&model, &comfy_image(input), resolution as u32).expect("node");
        let (worst, differing) = levels(&out, &reference[&format!("{case}.map")], case);
        println!("{case}: map max diff {worst} levels, {differing} values off");
        assert!(differing <= 3 * off.len(), "{case}: coloured map");
    }
}

/// The same net in the detectron2 checkpoint's layout (`250_16_swin_l_oneformer_ade20k_160k.pth`,
/// nested under "model", q/k/v joined, the text encoder's tensors beside): the same logits as
/// the folder's on the same input, and the processor the conversion wrote (this tiny net's 6
/// classes are not ADE20K's 150: COCO's 800 / 1333).
#[test]
fn the_detectron2_checkpoint_gives_the_same_net() {
    let dir = fixture_dir("oneformer");
    let folder = open(&dir.join("shi-labs/oneformer_ade20k_swin_large/model.safetensors"));
    let d2 = open(&dir.join("250_16_swin_l_oneformer_ade20k_160k.pth"));
    assert_eq!(
        d2.processor().size,
        Size::Edges {
            shortest: 800,
            longest: Some(1333)
        }
    );
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .expect("reference");
    let input = image_u8(&reference["coffee.input"]);
    let padded = resize_image_with_pad("test", &input, 64, Interpolation::Cubic).expect("pad");
    let (_, x) = folder.pixel_values(&padded.image).expect("processor");
    let (a, b) = (
        folder.forward(&x).expect("folder"),
        d2.forward(&x).expect("d2"),
    );
    assert_eq!(max_abs(&a.class, &b.class), 0.0, "class logits");
    assert_eq!(max_abs(&a.masks, &b.masks), 0.0, "mask logits");
    assert!(rel(&b.class, &reference["coffee.class_logits"]) < 1e-4);
}

/// A full-size folder (`oneformer_reference.py --full DIR`) loads and maps a 512x512 image:
/// `WEFT_ONEFORMER_FILE=DIR/shi-labs/oneformer_ade20k_swin_large/model.safetensors cargo test
/// -p weft-engine --test annotators_oneformer -- --ignored --nocapture`.
#[test]
#[ignore = "needs a full-size folder's model.safetensors named by WEFT_ONEFORMER_FILE"]
fn full_size_folder_loads_and_runs() {
    let Some(path) = std::env::var_os("WEFT_ONEFORMER_FILE") else {
        return;
    };
    let model = open(Path::new(&path));
    let image = Tensor::rand(0f32, 1f32, (1, 512, 512, 3), &Device::Cpu).expect("image");
    let start = std::time::Instant::now();
    let out = semantic_segmentation(&model, &image, 512).expect("runs");
    println!("{:?} in {:.2?}", out.dims(), start.elapsed());
    assert_eq!(out.dims(), [1, 512, 512, 3]);
}
