//! Animated savers (ComfyUI's SaveAnimatedPNG and SaveAnimatedWEBP in
//! `comfy_extras/nodes_images.py`): the whole batch as the frames of one APNG or WebP in the output
//! folder, with the workflow embedded as ComfyUI does (`comf` chunks after the frames in APNG,
//! EXIF `Model`/`Make` strings in WebP), reported as `images` plus `animated: [true]`.

use std::io::Write;

use crate::graph::spec::build::*;
use crate::graph::spec::{HiddenInput, NodeSpec};
use crate::graph::SlotType;
use crate::nodes::image_io::{metadata, SaveTarget};
use crate::nodes::pixels::{extras_node, Pixels};
use crate::nodes::{Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Ui};
use crate::paths::FolderType;

pub fn register(registry: &mut Registry) {
    registry.add(SaveAnimatedWEBP);
    registry.add(SaveAnimatedPNG);
}

fn spec(class_type: &'static str, inputs: Vec<crate::graph::spec::InputSpec>) -> NodeSpec {
    NodeSpec {
        hidden: vec![
            ("prompt", HiddenInput::Prompt),
            ("extra_pnginfo", HiddenInput::ExtraPngInfo),
        ],
        output_node: true,
        ..extras_node(
            "comfy_extras.nodes_images",
            class_type,
            class_type,
            "image/animation",
            inputs,
            vec![],
        )
    }
}

/// The frames as 8-bit RGB or RGBA (grey expanded), as PIL's `Image.fromarray` of
/// `clip(255 * x, 0, 255).astype(uint8)` gives them.
struct Frames {
    bytes: Vec<Vec<u8>>,
    width: usize,
    height: usize,
    alpha: bool,
}

impl Frames {
    fn read(inputs: &Inputs) -> Result<Frames, NodeError> {
        let images = Pixels::image(inputs.image("images")?, "images")?;
        if images.b == 0 || images.w == 0 || images.h == 0 {
            return Err(NodeError::input("images", "there are no frames to save"));
        }
        if !(1..=4).contains(&images.c) {
            return Err(NodeError::input(
                "images",
                format!("an image has 1 to 4 channels, got {}", images.c),
            ));
        }
        let alpha = images.c % 2 == 0;
        let level = |v: f32| (v * 255.0).clamp(0.0, 255.0) as u8;
        let bytes = (0..images.b)
            .map(|b| {
                images
                    .item(b)
                    .chunks_exact(images.c)
                    .flat_map(|p| {
                        let (grey, rgb) = (level(p[0]), images.c >= 3);
                        let mut px = if rgb {
                            vec![level(p[0]), level(p[1]), level(p[2])]
                        } else {
                            vec![grey; 3]
                        };
                        if alpha {
                            px.push(level(p[images.c - 1]));
                        }
                        px
                    })
                    .collect()
            })
            .collect();
        Ok(Frames {
            bytes,
            width: images.w,
            height: images.h,
            alpha,
        })
    }

    /// ComfyUI's `int(1000.0 / fps)` milliseconds per frame.
    fn duration_ms(inputs: &Inputs) -> Result<u32, NodeError> {
        let fps = inputs.float("fps")?;
        if fps.is_nan() || fps <= 0.0 {
            return Err(NodeError::input(
                "fps",
                format!("{fps} is not a frame rate"),
            ));
        }
        Ok((1000.0 / fps).min(f64::from(u32::MAX)) as u32)
    }
}

/// Writes the bytes `encode` makes of the frames to the next `<prefix>_NNNNN_.<extension>` in
/// the output folder, and reports it as one animated image.
fn save_animation(
    ctx: &NodeContext,
    inputs: &Inputs,
    extension: &str,
    encode: impl FnOnce(&Frames, u32, &[(String, String)]) -> Result<Vec<u8>, String>,
) -> Result<NodeOutput, NodeError> {
    let frames = Frames::read(inputs)?;
    let duration = Frames::duration_ms(inputs)?;
    let prefix = inputs.string("filename_prefix")?;
    let target = SaveTarget::reserve(
        ctx,
        prefix,
        FolderType::Output,
        frames.width,
        frames.height,
        1,
        extension,
    )?;
    let filename = format!("{}_{:05}_.{extension}", target.name, target.first_counter);
    let path = target.path(&filename)?;
    let bytes = encode(&frames, duration, metadata(ctx))
        .map_err(|e| NodeError::file(ctx.dirs.shown(&path), e))?;
    std::fs::write(&path, bytes).map_err(|e| NodeError::file(ctx.dirs.shown(&path), e))?;
    Ok(NodeOutput {
        values: vec![],
        ui: Some(Ui {
            images: vec![target.file_ref(filename, FolderType::Output)],
            animated: vec![true],
            ..Ui::default()
        }),
    })
}

/// The batch as one animated PNG.
pub struct SaveAnimatedPNG;

impl Node for SaveAnimatedPNG {
    fn spec(&self) -> NodeSpec {
        spec(
            "SaveAnimatedPNG",
            vec![
                required("images", link(SlotType::IMAGE)),
                required("filename_prefix", string("ComfyUI")),
                required("fps", float(6.0, 0.01, 1000.0, 0.01)),
                required("compress_level", int(4, 0, 9)),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        // The png crate has three deflate levels for zlib's ten.
        let compression = match inputs.int("compress_level")? {
            0..=2 => png::Compression::Fast,
            3..=6 => png::Compression::Default,
            _ => png::Compression::Best,
        };
        save_animation(ctx, inputs, "png", |frames, duration, text| {
            encode_apng(frames, duration, compression, text)
        })
    }
}

/// An APNG that loops forever, every frame `duration` ms, then the metadata as ComfyUI's `comf`
/// chunks (`key\0json`) after the image data.
fn encode_apng(
    frames: &Frames,
    duration: u32,
    compression: png::Compression,
    text: &[(String, String)],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let (w, h) = (
        u32::try_from(frames.width).map_err(|e| e.to_string())?,
        u32::try_from(frames.height).map_err(|e| e.to_string())?,
    );
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(if frames.alpha {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    });
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(compression);
    let count = u32::try_from(frames.bytes.len()).map_err(|e| e.to_string())?;
    encoder.set_animated(count, 0).map_err(|e| e.to_string())?;
    // APNG delays are a u16 fraction: milliseconds over 1000, or seconds when that overflows.
    let (num, den) = match u16::try_from(duration) {
        Ok(ms) => (ms, 1000),
        Err(_) => (u16::try_from(duration / 1000).unwrap_or(u16::MAX), 1),
    };
    encoder
        .set_frame_delay(num, den)
        .map_err(|e| e.to_string())?;
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    for frame in &frames.bytes {
        writer.write_image_data(frame).map_err(|e| e.to_string())?;
    }
    for (key, value) in text {
        let mut chunk = key.as_bytes().to_vec();
        chunk.push(0);
        chunk.extend_from_slice(value.as_bytes());
        writer
            .write_chunk(png::chunk::ChunkType(*b"comf"), &chunk)
            .map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

const WEBP_METHODS: &[&str] = &["default", "fastest", "slowest"];

/// The batch as one animated WebP. Frames are always lossless (VP8L): the `image` crate has no
/// lossy WebP encoder, so `lossless`, `quality` and `method` only change what ComfyUI would
/// have traded for size.
pub struct SaveAnimatedWEBP;

impl Node for SaveAnimatedWEBP {
    fn spec(&self) -> NodeSpec {
        spec(
            "SaveAnimatedWEBP",
            vec![
                required("images", link(SlotType::IMAGE)),
                required("filename_prefix", string("ComfyUI")),
                required("fps", float(6.0, 0.01, 1000.0, 0.01)),
                required("lossless", boolean(true)),
                required("quality", int(80, 0, 100)),
                required("method", combo(WEBP_METHODS)),
            ],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        save_animation(ctx, inputs, "webp", encode_animated_webp)
    }
}

/// One RIFF chunk, padded to an even size.
fn chunk(out: &mut Vec<u8>, name: &[u8; 4], data: &[u8]) -> Result<(), String> {
    let len = u32::try_from(data.len()).map_err(|_| "a WebP chunk is over 4 GiB".to_string())?;
    out.extend_from_slice(name);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    Ok(())
}

fn u24(v: u32) -> [u8; 3] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// An animated WebP (extended format: `VP8X`, `ANIM`, one `ANMF` per frame holding a lossless
/// `VP8L` bitstream from the `image` crate, then `EXIF`), looping forever.
fn encode_animated_webp(
    frames: &Frames,
    duration: u32,
    text: &[(String, String)],
) -> Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let (w, h) = (frames.width as u32, frames.height as u32);
    if w > 1 << 14 || h > 1 << 14 {
        return Err(format!(
            "WebP frames are at most 16384 pixels a side, got {w}x{h}"
        ));
    }
    let color = if frames.alpha {
        image::ExtendedColorType::Rgba8
    } else {
        image::ExtendedColorType::Rgb8
    };
    let exif = exif_strings(text);
    let mut body = Vec::new();
    body.extend_from_slice(b"WEBP");
    let flags = 0x02 // animation
        | if frames.alpha { 0x10 } else { 0 }
        | if exif.is_empty() { 0 } else { 0x08 };
    let mut vp8x = vec![flags, 0, 0, 0];
    vp8x.extend_from_slice(&u24(w - 1));
    vp8x.extend_from_slice(&u24(h - 1));
    chunk(&mut body, b"VP8X", &vp8x)?;
    // Background transparent black, loop forever.
    chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0])?;
    for frame in &frames.bytes {
        let mut still = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut still)
            .write_image(frame, w, h, color)
            .map_err(|e| e.to_string())?;
        // A simple-format file: "RIFF" size "WEBP" then the "VP8L" chunk we need.
        let vp8l = still
            .get(12..)
            .filter(|rest| rest.starts_with(b"VP8L"))
            .ok_or("the WebP encoder wrote an unexpected layout")?;
        let mut anmf = Vec::with_capacity(16 + vp8l.len());
        anmf.extend_from_slice(&u24(0)); // x / 2
        anmf.extend_from_slice(&u24(0)); // y / 2
        anmf.extend_from_slice(&u24(w - 1));
        anmf.extend_from_slice(&u24(h - 1));
        anmf.extend_from_slice(&u24(duration.min(0xFF_FFFF)));
        anmf.push(0x02); // no blending, no disposal: each frame replaces the canvas
        anmf.extend_from_slice(vp8l);
        chunk(&mut body, b"ANMF", &anmf)?;
    }
    if !exif.is_empty() {
        chunk(&mut body, b"EXIF", &exif)?;
    }
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(b"RIFF");
    let size = u32::try_from(body.len()).map_err(|_| "the WebP file is over 4 GiB".to_string())?;
    out.extend_from_slice(&size.to_le_bytes());
    out.write_all(&body).map_err(|e| e.to_string())?;
    Ok(out)
}

/// ComfyUI's WebP metadata as a little-endian TIFF/EXIF block: `prompt:<json>` in tag 0x0110
/// (Model), then each extra entry as `key:<json>` from 0x010f (Make) downwards. Empty when there
/// is nothing to write.
fn exif_strings(text: &[(String, String)]) -> Vec<u8> {
    let mut entries: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut extra_tag = 0x010fu16;
    for (key, value) in text {
        let tag = if key == "prompt" {
            0x0110
        } else {
            let tag = extra_tag;
            extra_tag = extra_tag.saturating_sub(1);
            tag
        };
        let mut s = format!("{key}:{value}").into_bytes();
        s.push(0);
        entries.push((tag, s));
    }
    if entries.is_empty() {
        return Vec::new();
    }
    // EXIF requires the entries sorted by tag.
    entries.sort_by_key(|(tag, _)| *tag);
    let mut out = b"II*\0".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    let count = entries.len() as u16;
    out.extend_from_slice(&count.to_le_bytes());
    let mut data_offset = 8 + 2 + 12 * entries.len() + 4;
    let mut data = Vec::new();
    for (tag, value) in &entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes()); // ASCII
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        if value.len() <= 4 {
            let mut inline = [0u8; 4];
            inline[..value.len()].copy_from_slice(value);
            out.extend_from_slice(&inline);
        } else {
            out.extend_from_slice(&(data_offset as u32).to_le_bytes());
            data.extend_from_slice(value);
            if value.len() % 2 == 1 {
                data.push(0);
            }
            data_offset = 8 + 2 + 12 * entries.len() + 4 + data.len();
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    out.extend_from_slice(&data);
    out
}
