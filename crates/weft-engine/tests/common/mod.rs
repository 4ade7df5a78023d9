//! What the annotator parity tests share: the fixtures' folder, uint8 maps as images, the
//! largest difference of two tensors, and a node's map against the reference's in levels. Each test binary includes it (`mod common;`) and uses what
//! it needs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use weft_engine::preprocess::ImageU8;

/// `tests/fixtures/annotators/<family>` at the workspace root.
pub fn fixture_dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/annotators")
        .join(family)
}

/// A `[H, W]` or `[H, W, C]` uint8 tensor as an image.
pub fn image_u8(t: &Tensor) -> ImageU8 {
    let d = t.dims();
    ImageU8 {
        height: d[0],
        width: d[1],
        channels: if d.len() == 3 { d[2] } else { 1 },
        data: t.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    }
}

/// A fixture case's uint8 `input` through `resize_image_with_pad` at `resolution` (cubic), and
/// the padded image as a `[1, 3, H, W]` f32 tensor of 0..255 values.
pub fn padded_case(
    input: &Tensor,
    resolution: u32,
) -> (weft_engine::preprocess::aux::Padded, Tensor) {
    let padded = weft_engine::preprocess::aux::resize_image_with_pad(
        "test",
        &image_u8(input),
        resolution as usize,
        weft_engine::preprocess::cv::Interpolation::Cubic,
    )
    .expect("pad");
    let pixels =
        weft_engine::annotators::image_tensor("test", &padded.image, &candle_core::Device::Cpu)
            .expect("pixels");
    (padded, pixels)
}

/// The largest absolute difference of two f32 tensors of one shape.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A `[H, W, C]` uint8 tensor as a one-image IMAGE batch `[1, H, W, C]` of 0..1 values.
pub fn comfy_image(u8_hwc: &Tensor) -> Tensor {
    u8_hwc
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .affine(1.0 / 255.0, 0.0)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// A node's IMAGE `[1, H, W, C]` against the reference's uint8 map, in levels: (max diff,
/// values off).
pub fn levels(out: &Tensor, expected: &Tensor, what: &str) -> (u8, usize) {
    assert_eq!(out.dims()[1..], *expected.dims(), "{what}: map size");
    let got = (out * 255.0)
        .and_then(|t| t.round()?.to_dtype(DType::U8)?.squeeze(0))
        .expect("levels");
    let (got, want) = (image_u8(&got).data, image_u8(expected).data);
    let worst = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max();
    let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    (worst.unwrap_or(0), off)
}

/// A depth node's two IMAGE outputs against the reference's `<case>.depth_map` and
/// `<case>.normal_map`, each within one level (uint8 truncation on both sides); prints the
/// differences after `depth_note` (the raw depth's).
pub fn check_depth_and_normal(
    case: &str,
    depth_note: &str,
    depth_map: &Tensor,
    normal_map: &Tensor,
    reference: &HashMap<String, Tensor>,
) {
    let (dw, doff) = levels(depth_map, &reference[&format!("{case}.depth_map")], case);
    let (nw, noff) = levels(normal_map, &reference[&format!("{case}.normal_map")], case);
    println!(
        "{case}: {depth_note}; depth map max diff {dw} level(s), {doff} values off; normal map \
         max diff {nw} level(s), {noff} values off"
    );
    assert!(dw <= 1, "{case}: depth map differs by {dw} levels");
    assert!(nw <= 1, "{case}: normal map differs by {nw} levels");
}

/// A raw depth against the reference's, within `rel` of the reference's largest value; the
/// note [`check_depth_and_normal`] prints.
pub fn check_depth(depth: &Tensor, expected: &Tensor, rel: f32, case: &str) -> String {
    let range = expected
        .max_all()
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max");
    let diff = max_abs(depth, expected);
    assert!(
        diff <= rel * range,
        "{case}: depth differs by {diff} (range {range})"
    );
    format!("depth max diff {diff:.2e} of {range:.2}")
}
