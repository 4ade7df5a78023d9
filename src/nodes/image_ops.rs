//! Image utilities that need no model: scaling, inversion, batching, padding, blank images.

use candle_core::{DType, Device, Tensor};

use crate::engine::resize::{resize_image, Crop, UpscaleMethod};
use crate::graph::spec::build::*;
use crate::graph::spec::{InputKind, NodeSpec};
use crate::graph::SlotType;
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

/// `image` resized to `width` x `height`, after making sure the result and the resize's
/// intermediates (about three times the result in f32) fit in memory.
fn scaled(
    ctx: &NodeContext,
    image: &Tensor,
    width: usize,
    height: usize,
    method: UpscaleMethod,
    crop: Crop,
) -> Result<Tensor, NodeError> {
    let (b, _, _, c) = image.dims4()?;
    let bytes = 3 * 4 * (b as u64) * (c as u64) * (width as u64) * (height as u64);
    let what = format!("resizing {b} image(s) to {width}x{height}");
    ctx.reserve_memory("image", bytes, &what)?;
    Ok(resize_image(image, width, height, method, crop)?)
}

/// ComfyUI's `MAX_RESOLUTION`.
pub const MAX_RESOLUTION: i128 = 16384;
const UPSCALE_METHODS: &[&str] = &["nearest-exact", "bilinear", "area", "bicubic", "lanczos"];
const CROP_METHODS: &[&str] = &["disabled", "center"];

pub fn register(registry: &mut Registry) {
    registry.add(ImageScale);
    registry.add(ImageScaleBy);
    registry.add(ImageScaleToTotalPixels);
    registry.add(ImageInvert);
    registry.add(ImageBatch);
    registry.add(ImagePadForOutpaint);
    registry.add(EmptyImage);
}

fn spec(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    inputs: Vec<crate::graph::spec::InputSpec>,
    outputs: Vec<crate::graph::spec::OutputSpec>,
) -> NodeSpec {
    node(class_type, display_name, category, inputs, outputs)
}

fn method(inputs: &Inputs) -> Result<UpscaleMethod, NodeError> {
    let name = inputs.string("upscale_method")?;
    UpscaleMethod::parse(name)
        .ok_or_else(|| NodeError::input("upscale_method", format!("unknown method '{name}'")))
}

fn image_size(image: &Tensor) -> Result<(usize, usize, usize, usize), NodeError> {
    image.dims4().map_err(|_| {
        NodeError::input(
            "image",
            format!("expected an IMAGE [B,H,W,C], got shape {:?}", image.dims()),
        )
    })
}

/// Resizes to a width and height; 0 keeps the aspect ratio from the other side.
pub struct ImageScale;

impl Node for ImageScale {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageScale",
            "Upscale Image",
            "image/upscaling",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("upscale_method", combo(UPSCALE_METHODS)),
                required("width", int(512, 0, MAX_RESOLUTION)),
                required("height", int(512, 0, MAX_RESOLUTION)),
                required("crop", combo(CROP_METHODS)),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = inputs.image("image")?;
        let (_, h, w, _) = image_size(image)?;
        let mut width = inputs.usize("width")?;
        let mut height = inputs.usize("height")?;
        let crop = if inputs.string("crop")? == "center" {
            Crop::Center
        } else {
            Crop::Disabled
        };
        if width == 0 && height == 0 {
            return Ok(NodeOutput::values(vec![Value::Image(image.clone())]));
        }
        if width == 0 {
            width = ((w as f64 * height as f64 / h as f64).round() as usize).max(1);
        } else if height == 0 {
            height = ((h as f64 * width as f64 / w as f64).round() as usize).max(1);
        }
        let out = scaled(ctx, image, width, height, method(inputs)?, crop)?;
        Ok(NodeOutput::values(vec![Value::Image(out)]))
    }
}

/// Resizes by a factor.
pub struct ImageScaleBy;

impl Node for ImageScaleBy {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageScaleBy",
            "Upscale Image By",
            "image/upscaling",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("upscale_method", combo(UPSCALE_METHODS)),
                required("scale_by", float(1.0, 0.01, 8.0, 0.01)),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = inputs.image("image")?;
        let (_, h, w, _) = image_size(image)?;
        let scale = inputs.float("scale_by")?;
        let width = ((w as f64 * scale).round() as usize).max(1);
        let height = ((h as f64 * scale).round() as usize).max(1);
        let out = scaled(ctx, image, width, height, method(inputs)?, Crop::Disabled)?;
        Ok(NodeOutput::values(vec![Value::Image(out)]))
    }
}

/// Resizes to about a number of megapixels, keeping the aspect ratio.
pub struct ImageScaleToTotalPixels;

impl Node for ImageScaleToTotalPixels {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageScaleToTotalPixels",
            "Scale Image to Total Pixels",
            "image/upscaling",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("upscale_method", combo(UPSCALE_METHODS)),
                required("megapixels", float(1.0, 0.01, 16.0, 0.01)),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = inputs.image("image")?;
        let (_, h, w, _) = image_size(image)?;
        let total = inputs.float("megapixels")? * 1024.0 * 1024.0;
        let scale = (total / (w as f64 * h as f64)).sqrt();
        let width = ((w as f64 * scale).round() as usize).max(1);
        let height = ((h as f64 * scale).round() as usize).max(1);
        let out = scaled(ctx, image, width, height, method(inputs)?, Crop::Disabled)?;
        Ok(NodeOutput::values(vec![Value::Image(out)]))
    }
}

/// 1 − pixel.
pub struct ImageInvert;

impl Node for ImageInvert {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageInvert",
            "Invert Image",
            "image",
            vec![required("image", link(SlotType::IMAGE))],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = inputs.image("image")?;
        Ok(NodeOutput::values(vec![Value::Image(
            image.affine(-1.0, 1.0)?,
        )]))
    }
}

/// Concatenates two batches; the second is resized (bilinear, center crop) to the first's size.
pub struct ImageBatch;

impl Node for ImageBatch {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageBatch",
            "Batch Images",
            "image",
            vec![
                required("image1", link(SlotType::IMAGE)),
                required("image2", link(SlotType::IMAGE)),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let first = inputs.image("image1")?;
        let mut second = inputs.image("image2")?.clone();
        let (_, h1, w1, c1) = image_size(first)?;
        let (_, h2, w2, c2) = image_size(&second)?;
        if c1 != c2 {
            return Err(NodeError::input(
                "image2",
                format!("has {c2} channels but image1 has {c1}"),
            ));
        }
        if (h1, w1) != (h2, w2) {
            second = scaled(ctx, &second, w1, h1, UpscaleMethod::Bilinear, Crop::Center)?;
        }
        Ok(NodeOutput::values(vec![Value::Image(Tensor::cat(
            &[first, &second],
            0,
        )?)]))
    }
}

/// Pads an image for outpainting; the mask marks the new area (1) with a feathered edge.
pub struct ImagePadForOutpaint;

impl Node for ImagePadForOutpaint {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImagePadForOutpaint",
            "Pad Image for Outpainting",
            "image",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("left", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("top", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("right", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("bottom", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("feathering", int(40, 0, MAX_RESOLUTION)),
            ],
            vec![
                output(SlotType::IMAGE, "IMAGE"),
                output(SlotType::MASK, "MASK"),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = inputs.image("image")?;
        let (b, h, w, c) = image_size(image)?;
        let (left, top, right, bottom) = (
            inputs.usize("left")?,
            inputs.usize("top")?,
            inputs.usize("right")?,
            inputs.usize("bottom")?,
        );
        let feathering = inputs.usize("feathering")?;
        let (new_h, new_w) = (h + top + bottom, w + left + right);
        ctx.check_interrupt()?;

        let src: Vec<f32> = image.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut out = vec![0.5f32; b * new_h * new_w * c];
        for bi in 0..b {
            for y in 0..h {
                let from = ((bi * h + y) * w) * c;
                let to = ((bi * new_h + y + top) * new_w + left) * c;
                out[to..to + w * c].copy_from_slice(&src[from..from + w * c]);
            }
        }
        // ComfyUI: ones outside, a squared linear ramp near padded edges inside, zeros elsewhere.
        let mut mask = vec![1.0f32; new_h * new_w];
        let feather = feathering > 0 && feathering * 2 < h && feathering * 2 < w;
        for i in 0..h {
            for j in 0..w {
                let mut value = 0.0;
                if feather {
                    let dt = if top != 0 { i } else { h };
                    let db = if bottom != 0 { h - i } else { h };
                    let dl = if left != 0 { j } else { w };
                    let dr = if right != 0 { w - j } else { w };
                    let d = dt.min(db).min(dl).min(dr);
                    if d < feathering {
                        let v = (feathering - d) as f32 / feathering as f32;
                        value = v * v;
                    }
                }
                mask[(i + top) * new_w + j + left] = value;
            }
        }
        let image = Tensor::from_vec(out, (b, new_h, new_w, c), &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, (1, new_h, new_w), &Device::Cpu)?;
        Ok(NodeOutput::values(vec![
            Value::Image(image),
            Value::Mask(mask),
        ]))
    }
}

/// A batch of images of one colour.
pub struct EmptyImage;

impl Node for EmptyImage {
    fn spec(&self) -> NodeSpec {
        spec(
            "EmptyImage",
            "EmptyImage",
            "image",
            vec![
                required("width", int(512, 1, MAX_RESOLUTION)),
                required("height", int(512, 1, MAX_RESOLUTION)),
                required("batch_size", int(1, 1, 4096)),
                required(
                    "color",
                    InputKind::Int {
                        default: 0,
                        min: 0,
                        max: 0xFFFFFF,
                        step: 1,
                        control_after_generate: false,
                    },
                ),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let (w, h, b) = (
            inputs.usize("width")?,
            inputs.usize("height")?,
            inputs.usize("batch_size")?,
        );
        let pixels = w
            .checked_mul(h)
            .and_then(|p| p.checked_mul(b))
            .filter(|p| *p <= 1 << 30)
            .ok_or_else(|| {
                NodeError::input(
                    "batch_size",
                    format!("{b} images of {w}x{h} is more than Weft will allocate at once"),
                )
            })?;
        let color = inputs.int("color")?;
        let channel = |shift: u32| ((color >> shift) & 0xFF) as f32 / 255.0;
        let rgb = [channel(16), channel(8), channel(0)];
        let data: Vec<f32> = (0..pixels).flat_map(|_| rgb).collect();
        let image = Tensor::from_vec(data, (b, h, w, 3), &Device::Cpu)?;
        Ok(NodeOutput::values(vec![Value::Image(image)]))
    }
}
