//! Image geometry and batch nodes (ComfyUI's `comfy_extras/nodes_images.py`): crop, pick from and
//! repeat a batch, flip, rotate, stitch, resize-and-pad, size, and film-grain noise.

use crate::engine::resize::{Crop, UpscaleMethod};
use crate::engine::sampling::rng::TorchGenerator;
use crate::graph::spec::build::*;
use crate::graph::spec::{InputKind, NodeSpec};
use crate::graph::SlotType;
use crate::nodes::image_ops::MAX_RESOLUTION;
use crate::nodes::mask::crop;
use crate::nodes::pixels::{self, Pixels};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    registry.add(ImageCrop);
    registry.add(RepeatImageBatch);
    registry.add(ImageFromBatch);
    registry.add(ImageAddNoise);
    registry.add(ImageStitch);
    registry.add(ResizeAndPadImage);
    registry.add(GetImageSize);
    registry.add(ImageRotate);
    registry.add(ImageFlip);
}

fn spec(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    inputs: Vec<crate::graph::spec::InputSpec>,
) -> NodeSpec {
    pixels::extras_node(
        "comfy_extras.nodes_images",
        class_type,
        display_name,
        category,
        inputs,
        vec![output(SlotType::IMAGE, "IMAGE")],
    )
}

fn image_in(inputs: &Inputs, name: &str) -> Result<Pixels, NodeError> {
    Pixels::image(inputs.image(name)?, name)
}

/// A combo whose editor default is `default`.
fn combo_with(options: &'static [&'static str], default: &'static str) -> InputKind {
    InputKind::Combo {
        options: crate::graph::spec::ComboOptions::Static(options),
        default: Some(default),
        image_upload: false,
    }
}

/// A rectangle of every image; a start past the edge moves to the last row or column, and the
/// rectangle is cut at the edges (ComfyUI clamps rather than fails).
pub struct ImageCrop;

impl Node for ImageCrop {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageCrop",
            "Crop Image",
            "image/transform",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("width", int(512, 1, MAX_RESOLUTION)),
                required("height", int(512, 1, MAX_RESOLUTION)),
                required("x", int(0, 0, MAX_RESOLUTION)),
                required("y", int(0, 0, MAX_RESOLUTION)),
            ],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = image_in(inputs, "image")?;
        if image.w == 0 || image.h == 0 {
            return image.image_output();
        }
        let x = inputs.usize("x")?.min(image.w - 1);
        let y = inputs.usize("y")?.min(image.h - 1);
        let w = inputs.usize("width")?.min(image.w - x);
        let h = inputs.usize("height")?.min(image.h - y);
        crop(&image, x, y, w, h).image_output()
    }
}

/// The batch repeated `amount` times.
pub struct RepeatImageBatch;

impl Node for RepeatImageBatch {
    fn spec(&self) -> NodeSpec {
        spec(
            "RepeatImageBatch",
            "RepeatImageBatch",
            "image/batch",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("amount", int(1, 1, 4096)),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = image_in(inputs, "image")?;
        let amount = inputs.usize("amount")?;
        let batch = image.b.saturating_mul(amount);
        let n = pixels::count("amount", [batch, image.h, image.w, image.c])?;
        pixels::reserve(ctx, "amount", n, 0, &format!("{batch} images"))?;
        image.repeat_to_batch(batch).image_output()
    }
}

/// `length` images of a batch from `batch_index`, both clamped to the batch as ComfyUI does.
pub struct ImageFromBatch;

impl Node for ImageFromBatch {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageFromBatch",
            "ImageFromBatch",
            "image/batch",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("batch_index", int(0, 0, 4095)),
                required("length", int(1, 1, 4096)),
            ],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = image_in(inputs, "image")?;
        if image.b == 0 {
            return Err(NodeError::input("image", "the batch is empty"));
        }
        let index = inputs.usize("batch_index")?.min(image.b - 1);
        let length = inputs.usize("length")?.min(image.b - index);
        let n = image.h * image.w * image.c;
        let data = image.data[index * n..(index + length) * n].to_vec();
        (Pixels {
            data,
            b: length,
            ..image
        })
        .image_output()
    }
}

/// Adds seeded Gaussian noise (`torch.randn` on the CPU generator), clipped to 0..1.
pub struct ImageAddNoise;

impl Node for ImageAddNoise {
    fn spec(&self) -> NodeSpec {
        let mut spec = spec(
            "ImageAddNoise",
            "ImageAddNoise",
            "image",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("seed", seed()),
                required("strength", float(0.5, 0.0, 1.0, 0.01)),
            ],
        );
        spec.inputs[1].tooltip = Some("The random seed used for creating the noise.");
        spec
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = image_in(inputs, "image")?;
        let seed = inputs.int("seed")?;
        let seed = u64::try_from(seed)
            .map_err(|_| NodeError::input("seed", format!("{seed} is not a valid seed")))?;
        let strength = inputs.float("strength")? as f32;
        let noise = TorchGenerator::manual_seed(seed).randn_vec_f32(image.data.len());
        let data = image
            .data
            .iter()
            .zip(noise)
            .map(|(v, n)| (v + strength * n).clamp(0.0, 1.0))
            .collect();
        (Pixels { data, ..image }).image_output()
    }
}

const DIRECTIONS: &[&str] = &["right", "down", "left", "up"];
const SPACING_COLORS: &[&str] = &["white", "black", "red", "green", "blue"];

/// Stitches `image2` beside `image1` (KJNodes' ImageStitch, upstreamed into ComfyUI).
pub struct ImageStitch;

impl Node for ImageStitch {
    fn spec(&self) -> NodeSpec {
        let mut spec = spec(
            "ImageStitch",
            "Image Stitch",
            "image/transform",
            vec![
                required("image1", link(SlotType::IMAGE)),
                required("direction", combo_with(DIRECTIONS, "right")),
                required("match_image_size", boolean(true)),
                required("spacing_width", int_step(0, 0, 1024, 2)),
                required("spacing_color", combo_with(SPACING_COLORS, "white")),
                optional("image2", link(SlotType::IMAGE)),
            ],
        );
        spec.description = "Stitches image2 to image1 in the specified direction.\nIf image2 is not provided, returns image1 unchanged.\nOptional spacing can be added between images.";
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let mut first = image_in(inputs, "image1")?;
        if inputs.get("image2").is_none() {
            return first.image_output();
        }
        let mut second = image_in(inputs, "image2")?;
        let direction = inputs.string("direction")?;
        if !DIRECTIONS.contains(&direction) {
            return Err(NodeError::input(
                "direction",
                format!("unknown direction '{direction}'"),
            ));
        }
        let horizontal = matches!(direction, "left" | "right");
        let spacing_color = inputs.string("spacing_color")?;
        let color: &[f32] = match spacing_color {
            "white" => &[1.0],
            "black" => &[0.0],
            "red" => &[1.0, 0.0, 0.0],
            "green" => &[0.0, 1.0, 0.0],
            "blue" => &[0.0, 0.0, 1.0],
            other => {
                return Err(NodeError::input(
                    "spacing_color",
                    format!("unknown colour '{other}'"),
                ))
            }
        };
        // The shorter batch repeats its last image.
        let batch = first.b.max(second.b);
        first = pad_batch(first, batch);
        second = pad_batch(second, batch);
        if inputs.bool("match_image_size")? {
            let aspect = second.w as f64 / second.h as f64;
            let (w, h) = if horizontal {
                ((first.h as f64 * aspect) as usize, first.h)
            } else {
                (first.w, (first.w as f64 / aspect) as usize)
            };
            if w == 0 || h == 0 {
                return Err(NodeError::input(
                    "image2",
                    format!("matching its size to image1 would leave it {w}x{h}"),
                ));
            }
            let n = pixels::count("image2", [batch, h, w, second.c])?;
            pixels::reserve(ctx, "image2", n, 3, "resizing image2")?;
            second = second.resized(w, h, UpscaleMethod::Lanczos, Crop::Disabled)?;
        } else {
            // Centre the smaller across the joint, padded with the spacing grey level (or black
            // for a coloured spacing).
            let value = if color.len() == 1 { color[0] } else { 0.0 };
            if horizontal {
                let h = first.h.max(second.h);
                let (w1, w2) = (first.w, second.w);
                first = pad_centered(first, h, w1, value);
                second = pad_centered(second, h, w2, value);
            } else {
                let w = first.w.max(second.w);
                let (h1, h2) = (first.h, second.h);
                first = pad_centered(first, h1, w, value);
                second = pad_centered(second, h2, w, value);
            }
        }
        let channels = first.c.max(second.c);
        first = with_channels(first, channels);
        second = with_channels(second, channels);
        let mut spacing = inputs.usize("spacing_width")?;
        spacing += spacing % 2;
        let mut parts = if matches!(direction, "left" | "up") {
            vec![second, first]
        } else {
            vec![first, second]
        };
        if spacing > 0 {
            let (h, w) = if horizontal {
                (parts[0].h.max(parts[1].h), spacing)
            } else {
                (spacing, parts[0].w.max(parts[1].w))
            };
            let mut fill = vec![0.0f32; channels];
            if color.len() == 1 {
                fill.iter_mut().take(3).for_each(|v| *v = color[0]);
            } else {
                fill.iter_mut().zip(color).for_each(|(v, c)| *v = *c);
            }
            if channels == 4 {
                fill[3] = 1.0;
            }
            let data = (0..batch * h * w)
                .flat_map(|_| fill.iter().copied())
                .collect();
            parts.insert(
                1,
                Pixels {
                    data,
                    b: batch,
                    h,
                    w,
                    c: channels,
                },
            );
        }
        concat(&parts, horizontal)?.image_output()
    }
}

/// The batch grown to `batch` by repeating its last image.
fn pad_batch(p: Pixels, batch: usize) -> Pixels {
    if p.b >= batch || p.b == 0 {
        return p;
    }
    let mut data = p.data.clone();
    let last = p.item(p.b - 1).to_vec();
    for _ in p.b..batch {
        data.extend_from_slice(&last);
    }
    Pixels {
        data,
        b: batch,
        ..p
    }
}

/// `p` centred in `h` x `w` (the extra split with the odd pixel after), filled with `value`.
fn pad_centered(p: Pixels, h: usize, w: usize, value: f32) -> Pixels {
    if (p.h, p.w) == (h, w) {
        return p;
    }
    let (top, left) = ((h - p.h) / 2, (w - p.w) / 2);
    let mut out = Pixels::filled(p.b, h, w, p.c, value);
    for b in 0..p.b {
        for y in 0..p.h {
            let from = p.at(b, y, 0, 0);
            let to = out.at(b, top + y, left, 0);
            out.data[to..to + p.w * p.c].copy_from_slice(&p.data[from..from + p.w * p.c]);
        }
    }
    out
}

/// `p` with extra channels of ones up to `c`.
fn with_channels(p: Pixels, c: usize) -> Pixels {
    if p.c >= c {
        return p;
    }
    let data = p
        .data
        .chunks_exact(p.c)
        .flat_map(|px| px.iter().copied().chain(std::iter::repeat_n(1.0, c - p.c)))
        .collect();
    Pixels { data, c, ..p }
}

/// Images side by side (`horizontal`) or stacked; they must agree across the joint.
fn concat(parts: &[Pixels], horizontal: bool) -> Result<Pixels, NodeError> {
    let first = &parts[0];
    let (b, c) = (first.b, first.c);
    for p in parts {
        let mismatch = if horizontal {
            p.h != first.h
        } else {
            p.w != first.w
        };
        if mismatch || p.b != b || p.c != c {
            return Err(NodeError::input(
                "image2",
                format!(
                    "cannot join a {}x{} image to a {}x{} one",
                    p.w, p.h, first.w, first.h
                ),
            ));
        }
    }
    if !horizontal {
        let h = parts.iter().map(|p| p.h).sum();
        let mut data = Vec::with_capacity(b * h * first.w * c);
        for i in 0..b {
            for p in parts {
                data.extend_from_slice(p.item(i));
            }
        }
        return Ok(Pixels {
            data,
            b,
            h,
            w: first.w,
            c,
        });
    }
    let w = parts.iter().map(|p| p.w).sum();
    let mut data = Vec::with_capacity(b * first.h * w * c);
    for i in 0..b {
        for y in 0..first.h {
            for p in parts {
                let start = p.at(i, y, 0, 0);
                data.extend_from_slice(&p.data[start..start + p.w * c]);
            }
        }
    }
    Ok(Pixels {
        data,
        b,
        h: first.h,
        w,
        c,
    })
}

const INTERPOLATIONS: &[&str] = &["area", "bicubic", "nearest-exact", "bilinear", "lanczos"];

/// Scales to fit inside the target keeping the aspect ratio, then centres on a white or black
/// canvas of the target size.
pub struct ResizeAndPadImage;

impl Node for ResizeAndPadImage {
    fn spec(&self) -> NodeSpec {
        spec(
            "ResizeAndPadImage",
            "ResizeAndPadImage",
            "image/transform",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("target_width", int(512, 1, MAX_RESOLUTION)),
                required("target_height", int(512, 1, MAX_RESOLUTION)),
                required("padding_color", combo(&["white", "black"])),
                required("interpolation", combo(INTERPOLATIONS)),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = image_in(inputs, "image")?;
        let (tw, th) = (
            inputs.usize("target_width")?,
            inputs.usize("target_height")?,
        );
        let name = inputs.string("interpolation")?;
        let method = UpscaleMethod::parse(name)
            .ok_or_else(|| NodeError::input("interpolation", format!("unknown method '{name}'")))?;
        let pad = if inputs.string("padding_color")? == "black" {
            0.0
        } else {
            1.0
        };
        if image.w == 0 || image.h == 0 {
            return Err(NodeError::input("image", "the image is empty"));
        }
        let scale = (tw as f64 / image.w as f64).min(th as f64 / image.h as f64);
        let (w, h) = (
            (image.w as f64 * scale) as usize,
            (image.h as f64 * scale) as usize,
        );
        let n = pixels::count("target_width", [image.b, th, tw, image.c])?;
        pixels::reserve(ctx, "target_width", n, 3, "resizing and padding")?;
        let resized = image.resized(w, h, method, Crop::Disabled)?;
        let mut out = Pixels::filled(image.b, th, tw, image.c, pad);
        let (top, left) = ((th - h) / 2, (tw - w) / 2);
        for b in 0..image.b {
            for y in 0..h {
                let from = resized.at(b, y, 0, 0);
                let to = out.at(b, top + y, left, 0);
                out.data[to..to + w * image.c]
                    .copy_from_slice(&resized.data[from..from + w * image.c]);
            }
        }
        out.image_output()
    }
}

/// The width, height and batch size of an image.
pub struct GetImageSize;

impl Node for GetImageSize {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            description: "Returns width and height of the image, and passes it through unchanged.",
            outputs: vec![
                output(SlotType::INT, "width"),
                output(SlotType::INT, "height"),
                output(SlotType::INT, "batch_size"),
            ],
            ..spec(
                "GetImageSize",
                "Get Image Size",
                "image",
                vec![required("image", link(SlotType::IMAGE))],
            )
        }
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = inputs.image("image")?;
        let (b, h, w, _) = image.dims4().map_err(|_| {
            NodeError::input(
                "image",
                format!("expected an IMAGE [B,H,W,C], got shape {:?}", image.dims()),
            )
        })?;
        Ok(NodeOutput::values(vec![
            Value::Int(w as i128),
            Value::Int(h as i128),
            Value::Int(b as i128),
        ]))
    }
}

const ROTATIONS: &[&str] = &["none", "90 degrees", "180 degrees", "270 degrees"];

/// Rotates clockwise by quarter turns (`torch.rot90(image, k, dims=[2, 1])`).
pub struct ImageRotate;

impl Node for ImageRotate {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageRotate",
            "Rotate",
            "image/transform",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("rotation", combo(ROTATIONS)),
            ],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = image_in(inputs, "image")?;
        let rotation = inputs.string("rotation")?;
        let turns = if rotation.starts_with("90") {
            1
        } else if rotation.starts_with("180") {
            2
        } else if rotation.starts_with("270") {
            3
        } else {
            0
        };
        let (h, w) = (image.h, image.w);
        let (oh, ow) = if turns % 2 == 1 { (w, h) } else { (h, w) };
        // The source pixel of output (y, x).
        let source = |y: usize, x: usize| match turns {
            1 => (h - 1 - x, y),
            2 => (h - 1 - y, w - 1 - x),
            3 => (x, w - 1 - y),
            _ => (y, x),
        };
        remap(&image, oh, ow, source).image_output()
    }
}

const FLIPS: &[&str] = &["x-axis: vertically", "y-axis: horizontally"];

/// Mirrors an image top to bottom (x-axis) or left to right (y-axis).
pub struct ImageFlip;

impl Node for ImageFlip {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageFlip",
            "ImageFlip",
            "image/transform",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("flip_method", combo(FLIPS)),
            ],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = image_in(inputs, "image")?;
        let method = inputs.string("flip_method")?;
        let (h, w) = (image.h, image.w);
        let out = if method.starts_with('x') {
            remap(&image, h, w, |y, x| (h - 1 - y, x))
        } else if method.starts_with('y') {
            remap(&image, h, w, |y, x| (y, w - 1 - x))
        } else {
            image
        };
        out.image_output()
    }
}

/// An `h` x `w` batch whose pixel (y, x) is `p`'s pixel `source(y, x)`.
fn remap(
    p: &Pixels,
    h: usize,
    w: usize,
    source: impl Fn(usize, usize) -> (usize, usize),
) -> Pixels {
    let mut data = Vec::with_capacity(p.data.len());
    for b in 0..p.b {
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = source(y, x);
                let start = p.at(b, sy, sx, 0);
                data.extend_from_slice(&p.data[start..start + p.c]);
            }
        }
    }
    Pixels { data, h, w, ..*p }
}
