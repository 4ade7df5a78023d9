//! What the annotator parity tests share: the fixtures' folder, uint8 maps as images, and the
//! largest difference of two tensors. Each test binary includes it (`mod common;`) and uses what
//! it needs.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Tensor;
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
