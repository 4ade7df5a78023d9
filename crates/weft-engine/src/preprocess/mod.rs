//! Image-only ControlNet preprocessors as pure functions on ComfyUI `IMAGE` tensors.
//!
//! Every public preprocessor takes a candle `Tensor` `[B, H, W, C]` (f32, 0..1, ComfyUI's IMAGE layout,
//! C in 1..=4) and returns `[B, H', W', 3]` f32 in 0..1, as the reference nodes do.
//!
//! Two families, each matched to a named reference:
//! - [`canny::canny`]: ComfyUI's core `Canny` node, i.e. `kornia.filters.canny` in f32.
//! - the comfyui_controlnet_aux nodes (`CannyEdgePreprocessor`, `Scribble_XDoG_Preprocessor`,
//!   `LineartStandardPreprocessor`, `BinaryPreprocessor`, `ColorPreprocessor`, `ShufflePreprocessor`,
//!   `TilePreprocessor`, and the MiDaS normal-from-depth formula). Those nodes convert each image to
//!   uint8 (`(x * 255) as u8`, truncating), run OpenCV/numpy maths on it, and return `u8 / 255`. The
//!   OpenCV primitives they rely on live in [`cv`], written here to reproduce OpenCV's integer and
//!   fixed-point arithmetic (the `image`/`imageproc` crates use different kernels, borders and
//!   rounding, so they do not match the references).
//!
//! This module owns no model weights and imports no other Weft layer.

pub mod aux;
pub mod binary;
pub mod canny;
pub mod color;
pub mod cv;
pub mod cv_canny;
pub mod cv_draw;
pub mod lineart;
pub mod normal;
pub mod resample;
pub mod shuffle;
pub mod tile;

pub use aux::{hwc3, resize_image_with_pad, Padded};
pub use binary::{binary, BinaryOptions};
pub use canny::{canny, CannyOptions};
pub use color::{color, ColorOptions};
pub use cv_canny::{canny_edge, CannyEdgeOptions};
pub use lineart::{lineart_standard, scribble_xdog, LineartStandardOptions, ScribbleXdogOptions};
pub use normal::{normal_from_depth, NormalFromDepthOptions};
pub use shuffle::{shuffle, ShuffleOptions};
pub use tile::{tile, TileOptions};

use candle_core::{DType, Device, Tensor};

/// Errors of the preprocessors. Each names the preprocessor (`op`) that raised it.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The input is not an IMAGE tensor `[B, H, W, C]` with C in 1..=4.
    #[error("{op}: expected an image tensor [B, H, W, C] with C in 1..=4, got shape {shape:?}")]
    BadShape {
        /// The preprocessor.
        op: &'static str,
        /// The shape received.
        shape: Vec<usize>,
    },
    /// The image is too small for the operation.
    #[error("{op}: image of {height}x{width} is too small: {reason}")]
    TooSmall {
        /// The preprocessor.
        op: &'static str,
        /// Image height.
        height: usize,
        /// Image width.
        width: usize,
        /// What needs more pixels.
        reason: &'static str,
    },
    /// An option is out of its range.
    #[error("{op}: invalid option {name}: {reason}")]
    BadOption {
        /// The preprocessor.
        op: &'static str,
        /// The option's name, as the node input is called.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A tensor operation failed.
    #[error("{op}: tensor error")]
    Candle {
        /// The preprocessor.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: candle_core::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, PreprocessError>;

/// One interleaved `H x W x C` uint8 image, the form the aux annotators work on (numpy HWC uint8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageU8 {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels per pixel.
    pub channels: usize,
    /// `height * width * channels` bytes, row-major, channels interleaved.
    pub data: Vec<u8>,
}

impl ImageU8 {
    /// A zero image.
    pub fn zeros(height: usize, width: usize, channels: usize) -> Self {
        Self {
            height,
            width,
            channels,
            data: vec![0; height * width * channels],
        }
    }

    /// Sample at (y, x, c); callers keep the indices in range.
    #[inline]
    pub(crate) fn at(&self, y: usize, x: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * self.channels + c]
    }

    /// Rows `0..h` and columns `0..w` (numpy `x[:h, :w]`).
    pub fn crop(&self, h: usize, w: usize) -> ImageU8 {
        let (h, w) = (h.min(self.height), w.min(self.width));
        let c = self.channels;
        let mut out = ImageU8::zeros(h, w, c);
        for y in 0..h {
            let src = &self.data[y * self.width * c..(y * self.width + w) * c];
            out.data[y * w * c..(y + 1) * w * c].copy_from_slice(src);
        }
        out
    }
}

/// Split an IMAGE tensor into per-image f32 HWC buffers, checking the layout.
pub(crate) fn tensor_to_f32_images(
    op: &'static str,
    image: &Tensor,
) -> Result<(Vec<Vec<f32>>, usize, usize, usize)> {
    let dims = image.dims().to_vec();
    let &[b, h, w, c] = dims.as_slice() else {
        return Err(PreprocessError::BadShape { op, shape: dims });
    };
    if !(1..=4).contains(&c) || b == 0 || h == 0 || w == 0 {
        return Err(PreprocessError::BadShape { op, shape: dims });
    }
    let cand = |source| PreprocessError::Candle { op, source };
    let flat = image
        .to_dtype(DType::F32)
        .map_err(cand)?
        .flatten_all()
        .map_err(cand)?;
    let flat = flat.to_vec1::<f32>().map_err(cand)?;
    let per = h * w * c;
    Ok((flat.chunks(per).map(|s| s.to_vec()).collect(), h, w, c))
}

/// The uint8 image an aux node sees: `np.asarray(image * 255., dtype=np.uint8)` (f32 product, truncated;
/// out-of-range values are clamped first, where numpy's cast would be undefined).
pub(crate) fn f32_to_u8_trunc(v: f32) -> u8 {
    let x = v * 255.0f32;
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= 255.0 {
        255
    } else {
        x as u8
    }
}

/// Convert an IMAGE tensor to aux-style uint8 images.
pub(crate) fn tensor_to_u8_images(op: &'static str, image: &Tensor) -> Result<Vec<ImageU8>> {
    let (imgs, h, w, c) = tensor_to_f32_images(op, image)?;
    Ok(imgs
        .into_iter()
        .map(|v| ImageU8 {
            height: h,
            width: w,
            channels: c,
            data: v.iter().map(|&x| f32_to_u8_trunc(x)).collect(),
        })
        .collect())
}

/// Stack uint8 results back into an IMAGE tensor `[B, H, W, C]` of `u8 / 255` (all results must share a
/// shape, as they do when the inputs came from one batch).
pub(crate) fn u8_images_to_tensor(
    op: &'static str,
    imgs: &[ImageU8],
    device: &Device,
) -> Result<Tensor> {
    let first = imgs
        .first()
        .ok_or(PreprocessError::BadShape { op, shape: vec![0] })?;
    let (h, w, c) = (first.height, first.width, first.channels);
    let mut data = Vec::with_capacity(imgs.len() * h * w * c);
    for im in imgs {
        if (im.height, im.width, im.channels) != (h, w, c) {
            return Err(PreprocessError::BadShape {
                op,
                shape: vec![im.height, im.width, im.channels],
            });
        }
        data.extend(im.data.iter().map(|&v| v as f32 / 255.0));
    }
    Tensor::from_vec(data, (imgs.len(), h, w, c), device)
        .map_err(|source| PreprocessError::Candle { op, source })
}

/// Run an aux-style uint8 function over every image of a batch, the way `common_annotator_call` does.
pub(crate) fn run_aux(
    op: &'static str,
    image: &Tensor,
    f: impl Fn(&ImageU8) -> Result<ImageU8>,
) -> Result<Tensor> {
    let imgs = tensor_to_u8_images(op, image)?;
    let outs = imgs.iter().map(&f).collect::<Result<Vec<_>>>()?;
    u8_images_to_tensor(op, &outs, image.device())
}
