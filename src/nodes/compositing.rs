//! Alpha compositing (ComfyUI's `comfy_extras/nodes_compositing.py`): Porter-Duff operators on
//! images with masks as alpha, and splitting or joining an image's alpha channel. ComfyUI masks
//! are inverted alpha (1 = transparent).

use crate::engine::resize::{Crop, UpscaleMethod};
use crate::graph::spec::build::*;
use crate::graph::spec::{InputKind, NodeSpec};
use crate::graph::SlotType;
use crate::nodes::pixels::{self, Pixels};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

pub fn register(registry: &mut Registry) {
    registry.add(PorterDuffImageComposite);
    registry.add(SplitImageWithAlpha);
    registry.add(JoinImageWithAlpha);
}

/// A declaration from `comfy_extras.nodes_compositing`.
fn spec(
    class_type: &'static str,
    display_name: &'static str,
    inputs: Vec<crate::graph::spec::InputSpec>,
    outputs: Vec<crate::graph::spec::OutputSpec>,
) -> NodeSpec {
    let module = "comfy_extras.nodes_compositing";
    pixels::extras_node(
        module,
        class_type,
        display_name,
        "mask/compositing",
        inputs,
        outputs,
    )
}

/// ComfyUI's `PorterDuffMode` names, in its order.
const MODES: &[&str] = &[
    "ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER", "LIGHTEN",
    "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR",
];

/// Composites a source over a destination with one of the Porter-Duff operators.
pub struct PorterDuffImageComposite;

impl Node for PorterDuffImageComposite {
    fn spec(&self) -> NodeSpec {
        spec(
            "PorterDuffImageComposite",
            "Porter-Duff Image Composite",
            vec![
                required("source", link(SlotType::IMAGE)),
                required("source_alpha", link(SlotType::MASK)),
                required("destination", link(SlotType::IMAGE)),
                required("destination_alpha", link(SlotType::MASK)),
                required(
                    "mode",
                    InputKind::Combo {
                        options: crate::graph::spec::ComboOptions::Static(MODES),
                        default: Some("DST"),
                        image_upload: false,
                    },
                ),
            ],
            vec![
                output(SlotType::IMAGE, "IMAGE"),
                output(SlotType::MASK, "MASK"),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let source = Pixels::image(inputs.image("source")?, "source")?;
        let source_alpha = Pixels::mask(inputs.mask("source_alpha")?, "source_alpha")?;
        let destination = Pixels::image(inputs.image("destination")?, "destination")?;
        let destination_alpha =
            Pixels::mask(inputs.mask("destination_alpha")?, "destination_alpha")?;
        let mode = inputs.string("mode")?;
        if !MODES.contains(&mode) {
            return Err(NodeError::input("mode", format!("unknown mode '{mode}'")));
        }
        if source.c != destination.c {
            return Err(NodeError::input(
                "source",
                format!(
                    "has {} channels but the destination has {}",
                    source.c, destination.c
                ),
            ));
        }
        let batch = source
            .b
            .min(source_alpha.b)
            .min(destination.b)
            .min(destination_alpha.b);
        let (h, w, c) = (destination.h, destination.w, destination.c);
        let n = pixels::count("destination", [batch, h, w, c + 1])?;
        pixels::reserve(ctx, "destination", n, 3, "compositing")?;

        // Each input resized (bicubic, centre crop) to the destination's size where it differs.
        let fit = |p: &Pixels, i: usize| -> Result<Pixels, NodeError> {
            let one = Pixels {
                data: p.item(i).to_vec(),
                b: 1,
                ..*p
            };
            one.resized(w, h, UpscaleMethod::Bicubic, Crop::Center)
        };
        let mut images = Vec::with_capacity(batch * h * w * c);
        let mut alphas = Vec::with_capacity(batch * h * w);
        for i in 0..batch {
            ctx.check_interrupt()?;
            let (src, src_a) = (fit(&source, i)?, fit(&source_alpha, i)?);
            let (dst, dst_a) = (fit(&destination, i)?, fit(&destination_alpha, i)?);
            for p in 0..h * w {
                // Masks to alpha.
                let (sa, da) = (1.0 - src_a.data[p], 1.0 - dst_a.data[p]);
                let mut out_alpha = 0.0;
                for ch in 0..c {
                    // Premultiplied colours.
                    let s = src.data[p * c + ch] * sa;
                    let d = dst.data[p * c + ch] * da;
                    let (color, alpha) = porter_duff(mode, s, sa, d, da);
                    let color = if alpha > 1e-5 { color / alpha } else { 0.0 };
                    images.push(color.clamp(0.0, 1.0));
                    out_alpha = alpha;
                }
                alphas.push(1.0 - out_alpha);
            }
        }
        let image = Pixels {
            data: images,
            b: batch,
            h,
            w,
            c,
        };
        let mask = Pixels {
            data: alphas,
            b: batch,
            h,
            w,
            c: 1,
        };
        Ok(NodeOutput::values(vec![
            Value::Image(image.into_image()?),
            Value::Mask(mask.into_mask()?),
        ]))
    }
}

/// One premultiplied colour and its alpha under `mode` (ComfyUI's `porter_duff_composite`, term
/// for term so the f32 rounding matches).
fn porter_duff(mode: &str, s: f32, sa: f32, d: f32, da: f32) -> (f32, f32) {
    let union = sa + da - sa * da;
    match mode {
        "ADD" => ((s + d).clamp(0.0, 1.0), (sa + da).clamp(0.0, 1.0)),
        "CLEAR" => (0.0, 0.0),
        "DARKEN" => ((1.0 - da) * s + (1.0 - sa) * d + s.min(d), union),
        "DST" => (d, da),
        "DST_ATOP" => (sa * d + (1.0 - da) * s, sa),
        "DST_IN" => (d * sa, sa * da),
        "DST_OUT" => ((1.0 - sa) * d, (1.0 - sa) * da),
        "DST_OVER" => (d + (1.0 - da) * s, da + (1.0 - da) * sa),
        "LIGHTEN" => ((1.0 - da) * s + (1.0 - sa) * d + s.max(d), union),
        "MULTIPLY" => (s * d, sa * da),
        "OVERLAY" => {
            let color = if 2.0 * d < da {
                2.0 * s * d
            } else {
                sa * da - 2.0 * (da - s) * (sa - d)
            };
            (color, union)
        }
        "SCREEN" => (s + d - s * d, union),
        "SRC" => (s, sa),
        "SRC_ATOP" => (da * s + (1.0 - sa) * d, da),
        "SRC_IN" => (s * da, sa * da),
        "SRC_OUT" => ((1.0 - da) * s, (1.0 - da) * sa),
        "SRC_OVER" => (s + (1.0 - sa) * d, sa + (1.0 - sa) * da),
        // XOR (the mode was checked against MODES).
        _ => (
            (1.0 - da) * s + (1.0 - sa) * d,
            (1.0 - da) * sa + (1.0 - sa) * da,
        ),
    }
}

/// An image's RGB, and its alpha channel as a mask (empty when it has none).
pub struct SplitImageWithAlpha;

impl Node for SplitImageWithAlpha {
    fn spec(&self) -> NodeSpec {
        spec(
            "SplitImageWithAlpha",
            "Split Image with Alpha",
            vec![required("image", link(SlotType::IMAGE))],
            vec![
                output(SlotType::IMAGE, "IMAGE"),
                output(SlotType::MASK, "MASK"),
            ],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = Pixels::image(inputs.image("image")?, "image")?;
        let keep = image.c.min(3);
        let mut rgb = Vec::with_capacity(image.data.len() / image.c.max(1) * keep);
        let mut mask = Vec::with_capacity(image.data.len() / image.c.max(1));
        for p in image.data.chunks_exact(image.c) {
            rgb.extend_from_slice(&p[..keep]);
            mask.push(1.0 - p.get(3).copied().unwrap_or(1.0));
        }
        let rgb = Pixels {
            data: rgb,
            c: keep,
            ..image
        };
        let mask = Pixels {
            data: mask,
            c: 1,
            ..image
        };
        Ok(NodeOutput::values(vec![
            Value::Image(rgb.into_image()?),
            Value::Mask(mask.into_mask()?),
        ]))
    }
}

/// An image's RGB with a mask (resized bilinearly to it, inverted) as its alpha channel.
pub struct JoinImageWithAlpha;

impl Node for JoinImageWithAlpha {
    fn spec(&self) -> NodeSpec {
        spec(
            "JoinImageWithAlpha",
            "Join Image with Alpha",
            vec![
                required("image", link(SlotType::IMAGE)),
                required("alpha", link(SlotType::MASK)),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let image = Pixels::image(inputs.image("image")?, "image")?;
        let alpha = Pixels::mask(inputs.mask("alpha")?, "alpha")?.resized(
            image.w,
            image.h,
            UpscaleMethod::Bilinear,
            Crop::Disabled,
        )?;
        let batch = image.b.min(alpha.b);
        let keep = image.c.min(3);
        let mut data = Vec::with_capacity(batch * image.h * image.w * (keep + 1));
        for i in 0..batch {
            for (p, a) in image.item(i).chunks_exact(image.c).zip(alpha.item(i)) {
                data.extend_from_slice(&p[..keep]);
                data.push(1.0 - a);
            }
        }
        let out = Pixels {
            data,
            b: batch,
            c: keep + 1,
            ..image
        };
        Ok(NodeOutput::values(vec![Value::Image(out.into_image()?)]))
    }
}
