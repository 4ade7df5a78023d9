//! Mask nodes (ComfyUI's `comfy_extras/nodes_mask.py`): conversions to and from images, solid,
//! inverted, cropped, composited, feathered, grown and thresholded masks, and
//! ImageCompositeMasked. Alpha compositing lives in `compositing`.

use crate::engine::resize::{Crop, UpscaleMethod};
use crate::graph::spec::build::*;
use crate::graph::spec::NodeSpec;
use crate::graph::SlotType;
use crate::nodes::image_ops::MAX_RESOLUTION;
use crate::nodes::pixels::{self, Pixels};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry};

pub fn register(registry: &mut Registry) {
    registry.add(ImageCompositeMasked);
    registry.add(MaskToImage);
    registry.add(ImageToMask);
    registry.add(ImageColorToMask);
    registry.add(SolidMask);
    registry.add(InvertMask);
    registry.add(CropMask);
    registry.add(MaskComposite);
    registry.add(FeatherMask);
    registry.add(GrowMask);
    registry.add(ThresholdMask);
}

fn spec(
    class_type: &'static str,
    display_name: &'static str,
    inputs: Vec<crate::graph::spec::InputSpec>,
    outputs: Vec<crate::graph::spec::OutputSpec>,
) -> NodeSpec {
    pixels::extras_node(
        "comfy_extras.nodes_mask",
        class_type,
        display_name,
        "mask",
        inputs,
        outputs,
    )
}

/// `x`, `y`, `width`, `height` widgets as ComfyUI declares them.
fn position(name: &'static str) -> crate::graph::spec::InputSpec {
    required(name, int(0, 0, MAX_RESOLUTION))
}

fn extent(name: &'static str) -> crate::graph::spec::InputSpec {
    required(name, int(512, 1, MAX_RESOLUTION))
}

/// ComfyUI's `node_helpers.image_alpha_fix`: a source with more channels than the destination
/// loses them; a source with fewer gets an opaque alpha channel.
pub(crate) fn alpha_fix(destination: &Pixels, source: Pixels) -> Pixels {
    if source.c == destination.c {
        return source;
    }
    let c = destination.c;
    let data = if source.c > c {
        source
            .data
            .chunks_exact(source.c)
            .flat_map(|p| p[..c].iter().copied())
            .collect()
    } else {
        // torch.nn.functional.pad(source, (0, 1)) then the new last channel = 1.
        source
            .data
            .chunks_exact(source.c)
            .flat_map(|p| p.iter().copied().chain([1.0]))
            .collect()
    };
    let c = if source.c > c { c } else { source.c + 1 };
    Pixels { data, c, ..source }
}

/// Pastes `source` onto `destination` at (`x`, `y`) through `mask` (ComfyUI's `composite` with
/// multiplier 1): the source repeats to the destination's batch, the mask is resized (bilinear) to
/// the source and repeats too, and whatever falls outside the destination is clipped.
fn composite(
    mut destination: Pixels,
    source: Pixels,
    x: usize,
    y: usize,
    mask: Option<Pixels>,
) -> Result<Pixels, NodeError> {
    let source = source.repeat_to_batch(destination.b);
    let mask = match mask {
        Some(m) => Some(
            m.resized(source.w, source.h, UpscaleMethod::Bilinear, Crop::Disabled)?
                .repeat_to_batch(source.b),
        ),
        None => None,
    };
    let (left, top) = (x.min(destination.w), y.min(destination.h));
    let visible_w = source.w.min(destination.w - left);
    let visible_h = source.h.min(destination.h - top);
    let c = destination.c;
    for b in 0..destination.b {
        for sy in 0..visible_h {
            for sx in 0..visible_w {
                let m = mask.as_ref().map_or(1.0, |m| m.data[m.at(b, sy, sx, 0)]);
                for ch in 0..c {
                    let s = source.data[source.at(b, sy, sx, ch)];
                    let i = destination.at(b, top + sy, left + sx, ch);
                    destination.data[i] = m * s + (1.0 - m) * destination.data[i];
                }
            }
        }
    }
    Ok(destination)
}

/// Pastes one image onto another through an optional mask.
pub struct ImageCompositeMasked;

impl Node for ImageCompositeMasked {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            category: "image",
            ..spec(
                "ImageCompositeMasked",
                "ImageCompositeMasked",
                vec![
                    required("destination", link(SlotType::IMAGE)),
                    required("source", link(SlotType::IMAGE)),
                    position("x"),
                    position("y"),
                    required("resize_source", boolean(false)),
                    optional("mask", link(SlotType::MASK)),
                ],
                vec![output(SlotType::IMAGE, "IMAGE")],
            )
        }
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let destination = Pixels::image(inputs.image("destination")?, "destination")?;
        let mut source = alpha_fix(
            &destination,
            Pixels::image(inputs.image("source")?, "source")?,
        );
        if inputs.bool("resize_source")? {
            let n = pixels::count("source", [source.b, destination.h, destination.w, source.c])?;
            pixels::reserve(ctx, "source", n, 2, "resizing the source")?;
            source = source.resized(
                destination.w,
                destination.h,
                UpscaleMethod::Bilinear,
                Crop::Disabled,
            )?;
        }
        let mask = match inputs.get("mask") {
            Some(_) => Some(Pixels::mask(inputs.mask("mask")?, "mask")?),
            None => None,
        };
        let (x, y) = (inputs.usize("x")?, inputs.usize("y")?);
        composite(destination, source, x, y, mask)?.image_output()
    }
}

/// A mask as a grey RGB image.
pub struct MaskToImage;

impl Node for MaskToImage {
    fn spec(&self) -> NodeSpec {
        spec(
            "MaskToImage",
            "Convert Mask to Image",
            vec![required("mask", link(SlotType::MASK))],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let mask = Pixels::mask(inputs.mask("mask")?, "mask")?;
        let data = mask.data.iter().flat_map(|v| [*v; 3]).collect();
        (Pixels { data, c: 3, ..mask }).image_output()
    }
}

const CHANNELS: &[&str] = &["red", "green", "blue", "alpha"];

/// One channel of an image as a mask.
pub struct ImageToMask;

impl Node for ImageToMask {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageToMask",
            "Convert Image to Mask",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("channel", combo(CHANNELS)),
            ],
            vec![output(SlotType::MASK, "MASK")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = Pixels::image(inputs.image("image")?, "image")?;
        let channel = inputs.string("channel")?;
        let index = CHANNELS
            .iter()
            .position(|c| *c == channel)
            .ok_or_else(|| NodeError::input("channel", format!("unknown channel '{channel}'")))?;
        if index >= image.c {
            return Err(NodeError::input(
                "channel",
                format!(
                    "the image has {} channels, so no {channel} channel",
                    image.c
                ),
            ));
        }
        let data = image.data.chunks_exact(image.c).map(|p| p[index]).collect();
        (Pixels {
            data,
            c: 1,
            ..image
        })
        .mask_output()
    }
}

/// 1 where a pixel's 8-bit RGB colour is exactly `color`, else 0.
pub struct ImageColorToMask;

impl Node for ImageColorToMask {
    fn spec(&self) -> NodeSpec {
        spec(
            "ImageColorToMask",
            "ImageColorToMask",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("color", int(0, 0, 0xFFFFFF)),
            ],
            vec![output(SlotType::MASK, "MASK")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = Pixels::image(inputs.image("image")?, "image")?;
        if image.c < 3 {
            return Err(NodeError::input(
                "image",
                format!("needs red, green and blue channels, got {}", image.c),
            ));
        }
        let color = inputs.int("color")?;
        // (clamp(x, 0, 1) * 255).round(): torch rounds half to even.
        let level = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round_ties_even() as i128;
        let data = image
            .data
            .chunks_exact(image.c)
            .map(|p| {
                let rgb = (level(p[0]) << 16) + (level(p[1]) << 8) + level(p[2]);
                if rgb == color {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        (Pixels {
            data,
            c: 1,
            ..image
        })
        .mask_output()
    }
}

/// A mask of one value.
pub struct SolidMask;

impl Node for SolidMask {
    fn spec(&self) -> NodeSpec {
        spec(
            "SolidMask",
            "SolidMask",
            vec![
                required("value", float(1.0, 0.0, 1.0, 0.01)),
                extent("width"),
                extent("height"),
            ],
            vec![output(SlotType::MASK, "MASK")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let (w, h) = (inputs.usize("width")?, inputs.usize("height")?);
        let n = pixels::count("width", [1, h, w, 1])?;
        pixels::reserve(ctx, "width", n, 0, &format!("a {w}x{h} mask"))?;
        Pixels::filled(1, h, w, 1, inputs.float("value")? as f32).mask_output()
    }
}

/// 1 − mask.
pub struct InvertMask;

impl Node for InvertMask {
    fn spec(&self) -> NodeSpec {
        spec(
            "InvertMask",
            "InvertMask",
            vec![required("mask", link(SlotType::MASK))],
            vec![output(SlotType::MASK, "MASK")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        Pixels::mask(inputs.mask("mask")?, "mask")?
            .map(|v| 1.0 - v)
            .mask_output()
    }
}

/// A rectangle of a mask; the rectangle is cut at the mask's edges, and must start inside it.
pub struct CropMask;

impl Node for CropMask {
    fn spec(&self) -> NodeSpec {
        spec(
            "CropMask",
            "CropMask",
            vec![
                required("mask", link(SlotType::MASK)),
                position("x"),
                position("y"),
                extent("width"),
                extent("height"),
            ],
            vec![output(SlotType::MASK, "MASK")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let mask = Pixels::mask(inputs.mask("mask")?, "mask")?;
        let (x, y) = (inputs.usize("x")?, inputs.usize("y")?);
        // ComfyUI slices, which gives an empty mask here; an error says why instead.
        for (name, at, size) in [("x", x, mask.w), ("y", y, mask.h)] {
            if at >= size {
                return Err(NodeError::input(
                    name,
                    format!("{at} is outside the {}x{} mask", mask.w, mask.h),
                ));
            }
        }
        let w = inputs.usize("width")?.min(mask.w - x);
        let h = inputs.usize("height")?.min(mask.h - y);
        crop(&mask, x, y, w, h).mask_output()
    }
}

/// The `w` x `h` rectangle at (`x`, `y`) of every item; it must lie inside.
pub(crate) fn crop(p: &Pixels, x: usize, y: usize, w: usize, h: usize) -> Pixels {
    let mut data = Vec::with_capacity(p.b * h * w * p.c);
    for b in 0..p.b {
        for row in y..y + h {
            let start = p.at(b, row, x, 0);
            data.extend_from_slice(&p.data[start..start + w * p.c]);
        }
    }
    Pixels { data, h, w, ..*p }
}

const COMPOSITE_OPERATIONS: &[&str] = &["multiply", "add", "subtract", "and", "or", "xor"];

/// Combines a source mask into a destination mask at (`x`, `y`); the result is clamped to 0..1.
pub struct MaskComposite;

impl Node for MaskComposite {
    fn spec(&self) -> NodeSpec {
        spec(
            "MaskComposite",
            "MaskComposite",
            vec![
                required("destination", link(SlotType::MASK)),
                required("source", link(SlotType::MASK)),
                position("x"),
                position("y"),
                required("operation", combo(COMPOSITE_OPERATIONS)),
            ],
            vec![output(SlotType::MASK, "MASK")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let mut out = Pixels::mask(inputs.mask("destination")?, "destination")?;
        let source = Pixels::mask(inputs.mask("source")?, "source")?;
        // The source's batch broadcasts over the destination's, as torch does.
        if source.b != out.b && source.b != 1 {
            return Err(NodeError::input(
                "source",
                format!(
                    "has {} masks but the destination has {}; give one mask or as many",
                    source.b, out.b
                ),
            ));
        }
        let operation = inputs.string("operation")?;
        let op: fn(f32, f32) -> f32 = match operation {
            "multiply" => |d, s| d * s,
            "add" => |d, s| d + s,
            "subtract" => |d, s| d - s,
            "and" => |d, s| f32::from(on(d) & on(s)),
            "or" => |d, s| f32::from(on(d) | on(s)),
            "xor" => |d, s| f32::from(on(d) ^ on(s)),
            other => {
                return Err(NodeError::input(
                    "operation",
                    format!("unknown operation '{other}'"),
                ))
            }
        };
        let (x, y) = (inputs.usize("x")?, inputs.usize("y")?);
        // A source placed entirely outside changes nothing (ComfyUI fails on the slice shapes).
        let visible_w = source.w.min(out.w.saturating_sub(x));
        let visible_h = source.h.min(out.h.saturating_sub(y));
        for b in 0..out.b {
            let s = source.cyclic(b);
            for sy in 0..visible_h {
                for sx in 0..visible_w {
                    let i = out.at(b, y + sy, x + sx, 0);
                    out.data[i] = op(out.data[i], s[sy * source.w + sx]);
                }
            }
        }
        out.map(|v| v.clamp(0.0, 1.0)).mask_output()
    }
}

/// torch's `x.round().bool()`: half rounds to even, so 0.5 is off and 1.5 on.
fn on(v: f32) -> bool {
    v.round_ties_even() != 0.0
}

/// Fades a mask's edges with linear ramps, `left`/`top`/`right`/`bottom` pixels wide.
pub struct FeatherMask;

impl Node for FeatherMask {
    fn spec(&self) -> NodeSpec {
        spec(
            "FeatherMask",
            "FeatherMask",
            vec![
                required("mask", link(SlotType::MASK)),
                position("left"),
                position("top"),
                position("right"),
                position("bottom"),
            ],
            vec![output(SlotType::MASK, "MASK")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let mut m = Pixels::mask(inputs.mask("mask")?, "mask")?;
        let left = inputs.usize("left")?.min(m.w);
        let right = inputs.usize("right")?.min(m.w);
        let top = inputs.usize("top")?.min(m.h);
        let bottom = inputs.usize("bottom")?.min(m.h);
        // ComfyUI indexes the right and bottom ramps with `-i`: step 0 lands on the first
        // column or row (-0 == 0), step i on the i-th from the far edge. Kept as it is.
        let from_end = |i: usize, n: usize| if i == 0 { 0 } else { n - i };
        let (h, w) = (m.h, m.w);
        let scale_col = |m: &mut Pixels, col: usize, rate: f32| {
            for b in 0..m.b {
                for y in 0..h {
                    let i = m.at(b, y, col, 0);
                    m.data[i] *= rate;
                }
            }
        };
        for i in 0..left {
            scale_col(&mut m, i, ((i as f64 + 1.0) / left as f64) as f32);
        }
        for i in 0..right {
            scale_col(
                &mut m,
                from_end(i, w),
                ((i as f64 + 1.0) / right as f64) as f32,
            );
        }
        let scale_row = |m: &mut Pixels, row: usize, rate: f32| {
            for b in 0..m.b {
                let start = m.at(b, row, 0, 0);
                m.data[start..start + w].iter_mut().for_each(|v| *v *= rate);
            }
        };
        for i in 0..top {
            scale_row(&mut m, i, ((i as f64 + 1.0) / top as f64) as f32);
        }
        for i in 0..bottom {
            scale_row(
                &mut m,
                from_end(i, h),
                ((i as f64 + 1.0) / bottom as f64) as f32,
            );
        }
        m.mask_output()
    }
}

/// Grows (positive `expand`) or shrinks a mask one pixel per step: a 3x3 grey dilation or
/// erosion, over a cross when `tapered_corners`, else a square (scipy's `grey_dilation`, whose
/// reflected border never wins, so only pixels inside count).
pub struct GrowMask;

impl Node for GrowMask {
    fn spec(&self) -> NodeSpec {
        spec(
            "GrowMask",
            "Grow Mask",
            vec![
                required("mask", link(SlotType::MASK)),
                required("expand", int(0, -MAX_RESOLUTION, MAX_RESOLUTION)),
                required("tapered_corners", boolean(true)),
            ],
            vec![output(SlotType::MASK, "MASK")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let mut m = Pixels::mask(inputs.mask("mask")?, "mask")?;
        let expand = inputs.int("expand")?;
        let tapered = inputs.bool("tapered_corners")?;
        let grow = expand > 0;
        let (h, w) = (m.h, m.w);
        let mut next = m.data.clone();
        for _ in 0..expand.unsigned_abs() {
            ctx.check_interrupt()?;
            for b in 0..m.b {
                let plane = &m.data[b * h * w..(b + 1) * h * w];
                let out = &mut next[b * h * w..(b + 1) * h * w];
                step3x3(plane, out, h, w, tapered, grow);
            }
            if next == m.data {
                // A fixed point: further steps change nothing.
                break;
            }
            std::mem::swap(&mut m.data, &mut next);
        }
        m.mask_output()
    }
}

/// One 3x3 max (`grow`) or min filter step of `plane` into `out`; the corners are left out when
/// `tapered`.
fn step3x3(plane: &[f32], out: &mut [f32], h: usize, w: usize, tapered: bool, grow: bool) {
    for y in 0..h {
        for x in 0..w {
            let mut best = plane[y * w + x];
            for dy in -1isize..=1 {
                for dx in -1isize..=1 {
                    if tapered && dx != 0 && dy != 0 {
                        continue;
                    }
                    let (ny, nx) = (y as isize + dy, x as isize + dx);
                    if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                        continue;
                    }
                    let v = plane[ny as usize * w + nx as usize];
                    best = if grow { best.max(v) } else { best.min(v) };
                }
            }
            out[y * w + x] = best;
        }
    }
}

/// 1 where the mask is above `value`, else 0.
pub struct ThresholdMask;

impl Node for ThresholdMask {
    fn spec(&self) -> NodeSpec {
        spec(
            "ThresholdMask",
            "ThresholdMask",
            vec![
                required("mask", link(SlotType::MASK)),
                required("value", float(0.5, 0.0, 1.0, 0.01)),
            ],
            vec![output(SlotType::MASK, "MASK")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let value = inputs.float("value")? as f32;
        let mask = Pixels::mask(inputs.mask("mask")?, "mask")?;
        mask.map(|v| f32::from(u8::from(v > value))).mask_output()
    }
}
