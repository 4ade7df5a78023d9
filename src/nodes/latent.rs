//! Latents and the VAE: EmptyLatentImage, latent resizing, compositing and batching, noise masks,
//! VAE encode and decode (plain, tiled, for inpainting). Semantics follow ComfyUI's `nodes.py`.

use candle_core::{DType, Tensor};

use crate::engine::device::{to_compute, to_host};
use crate::engine::manager::ModelManager;
use crate::engine::memory;
use crate::engine::ops::math::round_half_even;
use crate::engine::resize::{common_upscale, Crop, UpscaleMethod};
use crate::engine::vae::AutoEncoderKL;
use crate::graph::spec::build::*;
use crate::graph::spec::{InputSpec, NodeSpec, OutputSpec};
use crate::graph::SlotType;
use crate::nodes::image_ops::MAX_RESOLUTION;
use crate::nodes::{Inputs, Latent, Node, NodeContext, NodeError, NodeOutput, Registry, Value};

/// Resampling methods for latents (`LatentUpscale.upscale_methods`).
const LATENT_UPSCALE_METHODS: &[&str] =
    &["nearest-exact", "bilinear", "area", "bicubic", "bislerp"];
const CROP_METHODS: &[&str] = &["disabled", "center"];

pub fn register(registry: &mut Registry) {
    registry.add(EmptyLatentImage);
    registry.add(LatentUpscale);
    registry.add(LatentUpscaleBy);
    registry.add(LatentComposite);
    registry.add(LatentBlend);
    registry.add(LatentFromBatch);
    registry.add(RepeatLatentBatch);
    registry.add(SetLatentNoiseMask);
    registry.add(VaeDecode);
    registry.add(VaeEncode);
    registry.add(VaeDecodeTiled);
    registry.add(VaeEncodeTiled);
    registry.add(VaeEncodeForInpaint);
}

fn spec(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
) -> NodeSpec {
    node(class_type, display_name, category, inputs, outputs)
}

/// A single LATENT output declaration.
pub fn latent_out() -> Vec<OutputSpec> {
    vec![output(SlotType::LATENT, "LATENT")]
}

/// One LATENT output.
pub fn latent_value(latent: Latent) -> NodeOutput {
    NodeOutput::values(vec![Value::Latent(latent)])
}

/// The dims of `latent`'s samples, or an error on `input` when they are not `[B, C, h, w]`.
pub fn samples_dims(
    latent: &Latent,
    input: &str,
) -> Result<(usize, usize, usize, usize), NodeError> {
    latent.samples.dims4().map_err(|_| {
        NodeError::input(
            input,
            format!(
                "expected a latent [B,C,h,w], got {:?}",
                latent.samples.dims()
            ),
        )
    })
}

fn method(inputs: &Inputs) -> Result<UpscaleMethod, NodeError> {
    let name = inputs.string("upscale_method")?;
    UpscaleMethod::parse(name)
        .ok_or_else(|| NodeError::input("upscale_method", format!("unknown method '{name}'")))
}

/// A batch of zero latents (4 channels, 1/8 of the image size).
pub struct EmptyLatentImage;

impl Node for EmptyLatentImage {
    fn spec(&self) -> NodeSpec {
        let mut spec = spec(
            "EmptyLatentImage",
            "Empty Latent Image",
            "latent",
            vec![
                required("width", int_step(512, 16, MAX_RESOLUTION, 8)),
                required("height", int_step(512, 16, MAX_RESOLUTION, 8)),
                required("batch_size", int(1, 1, 4096)),
            ],
            latent_out(),
        );
        spec.description = "Create a new batch of empty latent images to be denoised via sampling.";
        spec
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let (w, h, b) = (
            inputs.usize("width")? / 8,
            inputs.usize("height")? / 8,
            inputs.usize("batch_size")?,
        );
        if b.saturating_mul(4 * w * h) > 1 << 30 {
            return Err(NodeError::input(
                "batch_size",
                format!("{b} latents of {w}x{h} is more than Weft will allocate at once"),
            ));
        }
        let samples = Tensor::zeros((b, 4, h, w), DType::F32, &candle_core::Device::Cpu)?;
        Ok(latent_value(Latent::new(samples)))
    }
}

/// `latent` resized to `width` x `height` latent pixels, after making sure the result and the
/// resize's intermediates (about three times the result) fit in memory.
fn upscale_latent(
    ctx: &NodeContext,
    latent: &Latent,
    width: usize,
    height: usize,
    method: UpscaleMethod,
    crop: Crop,
) -> Result<Latent, NodeError> {
    let (b, c, _, _) = latent.samples.dims4()?;
    let bytes = 3 * 4 * (b as u64) * (c as u64) * (width as u64) * (height as u64);
    let what = format!("resizing {b} latent(s) to {width}x{height}");
    ctx.reserve_memory("samples", bytes, &what)?;
    let samples = common_upscale(&latent.samples, width, height, method, crop)?;
    Ok(Latent {
        samples,
        noise_mask: latent.noise_mask.clone(),
        batch_index: latent.batch_index.clone(),
    })
}

/// Resizes latents to an image size (0 keeps the aspect ratio, at least 64 pixels).
pub struct LatentUpscale;

impl Node for LatentUpscale {
    fn spec(&self) -> NodeSpec {
        spec(
            "LatentUpscale",
            "Upscale Latent",
            "latent",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("upscale_method", combo(LATENT_UPSCALE_METHODS)),
                required("width", int_step(512, 0, MAX_RESOLUTION, 8)),
                required("height", int_step(512, 0, MAX_RESOLUTION, 8)),
                required("crop", combo(CROP_METHODS)),
            ],
            latent_out(),
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        let (_, _, h, w) = samples_dims(latent, "samples")?;
        let (mut width, mut height) = (inputs.usize("width")?, inputs.usize("height")?);
        if width == 0 && height == 0 {
            return Ok(latent_value(latent.clone()));
        }
        if width == 0 {
            height = height.max(64);
            width = ((w as f64 * height as f64 / h as f64).round() as usize).max(64);
        } else if height == 0 {
            width = width.max(64);
            height = ((h as f64 * width as f64 / w as f64).round() as usize).max(64);
        } else {
            width = width.max(64);
            height = height.max(64);
        }
        let crop = if inputs.string("crop")? == "center" {
            Crop::Center
        } else {
            Crop::Disabled
        };
        Ok(latent_value(upscale_latent(
            ctx,
            latent,
            width / 8,
            height / 8,
            method(inputs)?,
            crop,
        )?))
    }
}

/// Resizes latents by a factor.
pub struct LatentUpscaleBy;

impl Node for LatentUpscaleBy {
    fn spec(&self) -> NodeSpec {
        spec(
            "LatentUpscaleBy",
            "Upscale Latent By",
            "latent",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("upscale_method", combo(LATENT_UPSCALE_METHODS)),
                required("scale_by", float(1.5, 0.01, 8.0, 0.01)),
            ],
            latent_out(),
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        let (_, _, h, w) = samples_dims(latent, "samples")?;
        let scale = inputs.float("scale_by")?;
        let width = ((w as f64 * scale).round() as usize).max(1);
        let height = ((h as f64 * scale).round() as usize).max(1);
        Ok(latent_value(upscale_latent(
            ctx,
            latent,
            width,
            height,
            method(inputs)?,
            Crop::Disabled,
        )?))
    }
}

/// Pastes `samples_from` into `samples_to` at (x, y), with a feathered edge.
pub struct LatentComposite;

impl Node for LatentComposite {
    fn spec(&self) -> NodeSpec {
        spec(
            "LatentComposite",
            "Latent Composite",
            "latent",
            vec![
                required("samples_to", link(SlotType::LATENT)),
                required("samples_from", link(SlotType::LATENT)),
                required("x", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("y", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("feather", int_step(0, 0, MAX_RESOLUTION, 8)),
            ],
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let to = inputs.latent("samples_to")?;
        let from = inputs.latent("samples_from")?;
        let (b, c, h, w) = samples_dims(to, "samples_to")?;
        let (fb, fc, fh, fw) = samples_dims(from, "samples_from")?;
        if fc != c {
            return Err(NodeError::input(
                "samples_from",
                format!("has {fc} channels but samples_to has {c}"),
            ));
        }
        let (x, y, feather) = (
            inputs.usize("x")? / 8,
            inputs.usize("y")? / 8,
            inputs.usize("feather")? / 8,
        );
        if x >= w || y >= h {
            return Ok(latent_value(to.clone()));
        }
        let (ph, pw) = (fh.min(h - y), fw.min(w - x));
        let mut dest: Vec<f32> = to.samples.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let src: Vec<f32> = from
            .samples
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        // ComfyUI's feather ramps 1/feather … 1 from each edge that is not on the border.
        let weight = |i: usize, n: usize, at_start: bool, at_end: bool| -> f32 {
            let mut m = 1.0f32;
            for t in 0..feather {
                if !at_start && i == t {
                    m *= (t + 1) as f32 / feather as f32;
                }
                if !at_end && i + 1 + t == n {
                    m *= (t + 1) as f32 / feather as f32;
                }
            }
            m
        };
        for bi in 0..b {
            let sb = bi % fb;
            for ci in 0..c {
                for yy in 0..ph {
                    for xx in 0..pw {
                        let m = weight(yy, ph, y == 0, y + ph == h)
                            * weight(xx, pw, x == 0, x + pw == w);
                        let d = ((bi * c + ci) * h + y + yy) * w + x + xx;
                        let s = ((sb * c + ci) * fh + yy) * fw + xx;
                        dest[d] = src[s] * m + dest[d] * (1.0 - m);
                    }
                }
            }
        }
        let samples = Tensor::from_vec(dest, (b, c, h, w), to.samples.device())?;
        Ok(latent_value(Latent {
            samples,
            noise_mask: to.noise_mask.clone(),
            batch_index: to.batch_index.clone(),
        }))
    }
}

/// `samples1 · f + samples2 · (1 − f)`; samples2 is resized to samples1 if needed.
pub struct LatentBlend;

impl Node for LatentBlend {
    fn spec(&self) -> NodeSpec {
        let mut spec = spec(
            "LatentBlend",
            "Latent Blend",
            "_for_testing",
            vec![
                required("samples1", link(SlotType::LATENT)),
                required("samples2", link(SlotType::LATENT)),
                required("blend_factor", float(0.5, 0.0, 1.0, 0.01)),
            ],
            latent_out(),
        );
        spec.python_module = "comfy_extras.nodes_latent";
        spec
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let a = inputs.latent("samples1")?;
        let b = inputs.latent("samples2")?;
        let (_, _, h, w) = samples_dims(a, "samples1")?;
        let mut other = b.samples.clone();
        if other.dims() != a.samples.dims() {
            other = common_upscale(&other, w, h, UpscaleMethod::Bicubic, Crop::Center)?;
        }
        let factor = inputs.float("blend_factor")?;
        let samples = ((&a.samples * factor)? + (other * (1.0 - factor))?)?;
        Ok(latent_value(Latent {
            samples,
            noise_mask: a.noise_mask.clone(),
            batch_index: a.batch_index.clone(),
        }))
    }
}

/// Takes `length` latents from `batch_index`.
pub struct LatentFromBatch;

impl Node for LatentFromBatch {
    fn spec(&self) -> NodeSpec {
        spec(
            "LatentFromBatch",
            "Latent From Batch",
            "latent/batch",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("batch_index", int(0, 0, 63)),
                required("length", int(1, 1, 64)),
            ],
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        let (b, _, _, _) = samples_dims(latent, "samples")?;
        let start = inputs.usize("batch_index")?.min(b - 1);
        let length = inputs.usize("length")?.min(b - start);
        let samples = latent.samples.narrow(0, start, length)?;
        let noise_mask = match &latent.noise_mask {
            Some(mask) if mask.dim(0)? > 1 => {
                let mb = mask.dim(0)?;
                let mask = if mb < b {
                    mask.repeat((b.div_ceil(mb), 1, 1, 1))?.narrow(0, 0, b)?
                } else {
                    mask.clone()
                };
                Some(mask.narrow(0, start, length)?)
            }
            other => other.clone(),
        };
        let batch_index = Some(match &latent.batch_index {
            Some(indices) => indices.iter().skip(start).take(length).copied().collect(),
            None => (start..start + length).collect(),
        });
        Ok(latent_value(Latent {
            samples,
            noise_mask,
            batch_index,
        }))
    }
}

/// Repeats a batch `amount` times.
pub struct RepeatLatentBatch;

impl Node for RepeatLatentBatch {
    fn spec(&self) -> NodeSpec {
        spec(
            "RepeatLatentBatch",
            "Repeat Latent Batch",
            "latent/batch",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("amount", int(1, 1, 64)),
            ],
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        let amount = inputs.usize("amount")?;
        let samples = latent.samples.repeat((amount, 1, 1, 1))?;
        let noise_mask = match &latent.noise_mask {
            Some(mask) if mask.dim(0)? > 1 => Some(mask.repeat((amount, 1, 1, 1))?),
            other => other.clone(),
        };
        // ComfyUI offsets the repeated indices so each copy gets its own noise.
        let batch_index = latent.batch_index.as_ref().map(|indices| {
            let offset = indices.iter().max().map_or(0, |m| m + 1);
            (0..amount)
                .flat_map(|r| indices.iter().map(move |i| i + r * offset))
                .collect()
        });
        Ok(latent_value(Latent {
            samples,
            noise_mask,
            batch_index,
        }))
    }
}

/// Limits sampling to the masked part of the latent (inpainting with a normal model).
pub struct SetLatentNoiseMask;

impl Node for SetLatentNoiseMask {
    fn spec(&self) -> NodeSpec {
        spec(
            "SetLatentNoiseMask",
            "Set Latent Noise Mask",
            "latent/inpaint",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("mask", link(SlotType::MASK)),
            ],
            latent_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let mut latent = inputs.latent("samples")?.clone();
        let mask = inputs.mask("mask")?;
        let dims = mask.dims().to_vec();
        let (h, w) = match dims.as_slice() {
            [.., h, w] if dims.len() >= 2 => (*h, *w),
            _ => {
                return Err(NodeError::input(
                    "mask",
                    format!("expected a mask [B,H,W], got {dims:?}"),
                ))
            }
        };
        latent.noise_mask = Some(mask.to_dtype(DType::F32)?.reshape(((), 1, h, w))?);
        Ok(latent_value(latent))
    }
}

fn image_to_vae(image: &Tensor, input: &str) -> Result<Tensor, NodeError> {
    let (_, _, _, c) = image.dims4().map_err(|_| {
        NodeError::input(
            input,
            format!("expected an IMAGE [B,H,W,C], got {:?}", image.dims()),
        )
    })?;
    if c < 3 {
        return Err(NodeError::input(
            input,
            format!("an image for the VAE needs 3 channels, got {c}"),
        ));
    }
    // RGB only (ComfyUI drops alpha), [-1, 1], channels first.
    Ok(image
        .narrow(3, 0, 3)?
        .permute((0, 3, 1, 2))?
        .affine(2.0, -1.0)?
        .contiguous()?)
}

fn vae_to_image(decoded: &Tensor) -> Result<Tensor, NodeError> {
    Ok(to_host(decoded)?
        .affine(0.5, 0.5)?
        .clamp(0f32, 1f32)?
        .permute((0, 2, 3, 1))?
        .contiguous()?)
}

/// Crops an image to a multiple of the VAE's downscale factor, centred (`vae_encode_crop_pixels`).
fn crop_to_factor(image: &Tensor, factor: usize) -> Result<Tensor, NodeError> {
    let (_, h, w, _) = image.dims4()?;
    let (nh, nw) = ((h / factor) * factor, (w / factor) * factor);
    if nh == 0 || nw == 0 {
        return Err(NodeError::input(
            "pixels",
            format!("image {w}x{h} is smaller than the VAE's {factor}-pixel cell"),
        ));
    }
    Ok(image
        .narrow(1, (h % factor) / 2, nh)?
        .narrow(2, (w % factor) / 2, nw)?)
}

fn check_latent_channels(vae: &AutoEncoderKL, latent: &Latent) -> Result<(), NodeError> {
    let (_, c, _, _) = samples_dims(latent, "samples")?;
    let expected = vae.config().latent_channels;
    if c != expected {
        return Err(NodeError::input("vae", format!("this VAE takes {expected}-channel latents, the samples have {c}: the VAE is for another model family")));
    }
    Ok(())
}

/// A VAE input on the VAE's device, in its dtype.
fn to_vae_dtype(vae: &AutoEncoderKL, t: &Tensor) -> Result<Tensor, NodeError> {
    Ok(to_compute(t, vae.device(), vae.dtype())?)
}

/// ComfyUI's tile for the automatic fallback, in latent pixels (512 image pixels), and overlap.
const AUTO_TILE: (usize, usize) = (64, 16);

/// How VAEDecode decodes one `h` x `w` latent: whole (`None`) when its activations fit the
/// memory available now, else in tiles (`Some((tile, overlap))`, as ComfyUI falls back to tiles
/// when a decode runs out of memory), unloading unused models only if even the tiles do not fit.
/// A clear error when nothing fits.
fn decode_plan(
    models: &ModelManager,
    size: usize,
    h: usize,
    w: usize,
) -> Result<Option<(usize, usize)>, NodeError> {
    if models.fits_now(memory::vae_decode_bytes(1, h, w, size)) {
        return Ok(None);
    }
    let (tile, overlap) = AUTO_TILE;
    let tiled = memory::vae_decode_bytes(1, h.min(tile), w.min(tile), size);
    let what = format!("decoding a {h}x{w} latent in tiles");
    models
        .ensure_free(tiled, &what)
        .map_err(|e| NodeError::out_of_memory("samples", e))?;
    tracing::info!(
        h,
        w,
        "the full decode would not fit in memory; decoding in tiles"
    );
    Ok(Some((tile, overlap)))
}

/// Makes room for a whole-frame encode of `x` ([B, 3, H, W]) or says it cannot fit.
fn ensure_encode_memory(
    ctx: &NodeContext,
    vae: &AutoEncoderKL,
    x: &Tensor,
) -> Result<(), NodeError> {
    let (b, _, h, w) = x.dims4()?;
    let needed = memory::vae_encode_bytes(b, h, w, vae.dtype().size_in_bytes());
    ctx.reserve_memory(
        "pixels",
        needed,
        &format!("encoding {b} image(s) of {w}x{h}"),
    )
}

/// Latents to images.
pub struct VaeDecode;

impl Node for VaeDecode {
    fn spec(&self) -> NodeSpec {
        spec(
            "VAEDecode",
            "VAE Decode",
            "latent",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("vae", link(SlotType::VAE)),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        let vae = inputs.vae("vae")?;
        check_latent_channels(vae, latent)?;
        let (batch, _, h, w) = latent.samples.dims4()?;
        let tiled = decode_plan(&ctx.models, vae.dtype().size_in_bytes(), h, w)?;
        let mut images = Vec::with_capacity(batch);
        // One latent at a time keeps peak memory at one image's activations.
        for b in 0..batch {
            ctx.check_interrupt()?;
            let one = to_vae_dtype(vae, &latent.samples.narrow(0, b, 1)?)?;
            let decoded = match tiled {
                Some((tile, overlap)) => vae.decode_tiled(&one, tile, overlap)?,
                None => vae.decode(&one)?,
            };
            images.push(vae_to_image(&decoded)?);
        }
        Ok(NodeOutput::values(vec![Value::Image(Tensor::cat(
            &images, 0,
        )?)]))
    }
}

/// Images to latents (the distribution's mean, as ComfyUI).
pub struct VaeEncode;

impl Node for VaeEncode {
    fn spec(&self) -> NodeSpec {
        spec(
            "VAEEncode",
            "VAE Encode",
            "latent",
            vec![
                required("pixels", link(SlotType::IMAGE)),
                required("vae", link(SlotType::VAE)),
            ],
            latent_out(),
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = encode_image(ctx, inputs.vae("vae")?, inputs.image("pixels")?)?;
        Ok(latent_value(Latent::new(latent)))
    }
}

/// Tiled decode for large images (tile sizes in image pixels).
pub struct VaeDecodeTiled;

impl Node for VaeDecodeTiled {
    fn spec(&self) -> NodeSpec {
        spec(
            "VAEDecodeTiled",
            "VAE Decode (Tiled)",
            "_for_testing",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("vae", link(SlotType::VAE)),
                required("tile_size", int_step(512, 64, 4096, 32)),
                required("overlap", int_step(64, 0, 4096, 32)),
                required("temporal_size", int_step(64, 8, 4096, 4)),
                required("temporal_overlap", int_step(8, 4, 4096, 4)),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        let vae = inputs.vae("vae")?;
        check_latent_channels(vae, latent)?;
        let f = vae.config().downscale_factor().max(1);
        let tile = (inputs.usize("tile_size")? / f).max(1);
        let overlap = (inputs.usize("overlap")? / f).min(tile / 4);
        let (b, _, h, w) = latent.samples.dims4()?;
        let needed =
            memory::vae_decode_bytes(b, h.min(tile), w.min(tile), vae.dtype().size_in_bytes());
        let what = format!("decoding {b} latent(s) in {tile}x{tile} tiles");
        ctx.reserve_memory("tile_size", needed, &what)?;
        let decoded = vae.decode_tiled(&to_vae_dtype(vae, &latent.samples)?, tile, overlap)?;
        Ok(NodeOutput::values(vec![Value::Image(vae_to_image(
            &decoded,
        )?)]))
    }
}

/// Tiled encode for large images.
pub struct VaeEncodeTiled;

impl Node for VaeEncodeTiled {
    fn spec(&self) -> NodeSpec {
        spec(
            "VAEEncodeTiled",
            "VAE Encode (Tiled)",
            "_for_testing",
            vec![
                required("pixels", link(SlotType::IMAGE)),
                required("vae", link(SlotType::VAE)),
                required("tile_size", int_step(512, 64, 4096, 64)),
                required("overlap", int_step(64, 0, 4096, 32)),
                required("temporal_size", int_step(64, 8, 4096, 4)),
                required("temporal_overlap", int_step(8, 4, 4096, 4)),
            ],
            latent_out(),
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let vae = inputs.vae("vae")?;
        let pixels = crop_to_factor(inputs.image("pixels")?, vae.config().downscale_factor())?;
        let x = image_to_vae(&pixels, "pixels")?;
        let tile = inputs.usize("tile_size")?;
        let overlap = inputs.usize("overlap")?.min(tile / 4);
        let (b, _, h, w) = x.dims4()?;
        let needed =
            memory::vae_encode_bytes(b, h.min(tile), w.min(tile), vae.dtype().size_in_bytes());
        let what = format!("encoding {b} image(s) in {tile}x{tile} tiles");
        ctx.reserve_memory("tile_size", needed, &what)?;
        let latent = vae
            .encode_tiled(&to_vae_dtype(vae, &x)?, tile, overlap)?
            .apply(&to_host)?;
        Ok(latent_value(Latent::new(latent)))
    }
}

/// Encodes for an inpainting model: masked pixels are set to grey, and the mask (grown by a few
/// pixels) becomes the latent's noise mask.
pub struct VaeEncodeForInpaint;

impl Node for VaeEncodeForInpaint {
    fn spec(&self) -> NodeSpec {
        spec(
            "VAEEncodeForInpaint",
            "VAE Encode (for Inpainting)",
            "latent/inpaint",
            vec![
                required("pixels", link(SlotType::IMAGE)),
                required("vae", link(SlotType::VAE)),
                required("mask", link(SlotType::MASK)),
                required("grow_mask_by", int(6, 0, 64)),
            ],
            latent_out(),
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let vae = inputs.vae("vae")?;
        let prepared = inpaint_pixels(vae, inputs.image("pixels")?, inputs.mask("mask")?)?;
        let rounded = round_half_even(&prepared.mask)?;
        let grow = inputs.usize("grow_mask_by")?;
        let grown = if grow == 0 {
            rounded
        } else {
            grow_mask(&rounded, grow)?
        };
        let latent = encode_image(ctx, vae, &prepared.greyed)?;
        Ok(latent_value(Latent {
            samples: latent,
            noise_mask: Some(round_half_even(&grown)?),
            batch_index: None,
        }))
    }
}

/// An image and mask made ready for an inpainting encode, as ComfyUI's VAEEncodeForInpaint and
/// InpaintModelConditioning make them.
pub(crate) struct InpaintPixels {
    /// `[B, 1, H, W]`: the mask resized bilinearly to the image, then cropped with it.
    pub mask: Tensor,
    /// `[B, H, W, 3]`: the image cropped (centred) to a multiple of the VAE's cell, with the
    /// pixels under the rounded mask set to 0.5 grey.
    pub greyed: Tensor,
}

/// See [`InpaintPixels`].
pub(crate) fn inpaint_pixels(
    vae: &AutoEncoderKL,
    pixels: &Tensor,
    mask: &Tensor,
) -> Result<InpaintPixels, NodeError> {
    let factor = vae.config().downscale_factor().max(1);
    let (_, h, w, _) = pixels
        .dims4()
        .map_err(|_| NodeError::input("pixels", "expected an IMAGE [B,H,W,C]"))?;
    let mask = match mask.rank() {
        2 => mask.unsqueeze(0)?,
        3 => mask.clone(),
        _ => {
            return Err(NodeError::input(
                "mask",
                format!("expected a mask [B,H,W], got {:?}", mask.dims()),
            ))
        }
    };
    let mask = common_upscale(
        &mask.unsqueeze(1)?.to_dtype(DType::F32)?,
        w,
        h,
        UpscaleMethod::Bilinear,
        Crop::Disabled,
    )?;
    let (nh, nw) = ((h / factor) * factor, (w / factor) * factor);
    let (oy, ox) = ((h % factor) / 2, (w % factor) / 2);
    let pixels = pixels.narrow(1, oy, nh)?.narrow(2, ox, nw)?;
    let mask = mask.narrow(2, oy, nh)?.narrow(3, ox, nw)?;
    // Masked pixels become 0.5 grey: (p - 0.5) · (1 − round(m)) + 0.5.
    let keep = round_half_even(&mask)?
        .affine(-1.0, 1.0)?
        .permute((0, 2, 3, 1))?;
    let rgb = pixels.narrow(3, 0, 3)?;
    let greyed = (rgb.affine(1.0, -0.5)?.broadcast_mul(&keep)? + 0.5)?;
    Ok(InpaintPixels { mask, greyed })
}

/// An IMAGE batch encoded by `vae` (cropped, centred, to a multiple of its cell; RGB; the
/// distribution's mean), on the host, after the memory check.
pub(crate) fn encode_image(
    ctx: &NodeContext,
    vae: &AutoEncoderKL,
    pixels: &Tensor,
) -> Result<Tensor, NodeError> {
    let pixels = crop_to_factor(pixels, vae.config().downscale_factor())?;
    let x = image_to_vae(&pixels, "pixels")?;
    ensure_encode_memory(ctx, vae, &x)?;
    Ok(vae
        .encode(&to_vae_dtype(vae, &x)?)?
        .mode()
        .apply(&to_host)?)
}

/// ComfyUI's mask growth: a box convolution of size `k` with padding ⌈(k−1)/2⌉, clamped to 1.
fn grow_mask(mask: &Tensor, k: usize) -> Result<Tensor, NodeError> {
    let kernel = Tensor::ones((1, 1, k, k), DType::F32, mask.device())?;
    let padding = (k - 1).div_ceil(2);
    let grown = mask.conv2d(&kernel, padding, 1, 1, 1)?;
    let (_, _, h, w) = mask.dims4()?;
    let (_, _, gh, gw) = grown.dims4()?;
    Ok(grown
        .narrow(2, 0, h.min(gh))?
        .narrow(3, 0, w.min(gw))?
        .clamp(0f32, 1f32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::memory::{MemoryProbe, RESERVE};

    /// A manager on a fake machine with `free` bytes beyond the reserve.
    fn manager_with_free(dir: &std::path::Path, free: u64) -> ModelManager {
        std::fs::create_dir_all(dir.join("cgroup")).unwrap();
        std::fs::write(
            dir.join("meminfo"),
            "MemTotal: 67108864 kB\nMemAvailable: 67108864 kB\n",
        )
        .unwrap();
        std::fs::write(dir.join("self_cgroup"), "0::/\n").unwrap();
        std::fs::write(dir.join("cgroup/memory.max"), (free + RESERVE).to_string()).unwrap();
        let probe = MemoryProbe {
            cgroup_root: dir.join("cgroup"),
            self_cgroup: dir.join("self_cgroup"),
            meminfo: dir.join("meminfo"),
        };
        ModelManager::with_probe(1 << 30, candle_core::Device::Cpu, None, probe)
    }

    #[test]
    fn the_decode_goes_to_tiles_only_when_the_whole_frame_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        // An 80x80 latent: whole 3.65 GB by ComfyUI's estimate, a 64x64 tile 2.28 GB.
        assert_eq!(
            decode_plan(&manager_with_free(dir.path(), 4 << 30), 4, 80, 80).unwrap(),
            None
        );
        assert_eq!(
            decode_plan(&manager_with_free(dir.path(), 3 << 30), 4, 80, 80).unwrap(),
            Some(AUTO_TILE)
        );
        let err = decode_plan(&manager_with_free(dir.path(), 1 << 30), 4, 80, 80).unwrap_err();
        assert!(matches!(err, NodeError::OutOfMemory { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("decoding a 80x80 latent in tiles needs"),
            "{err}"
        );
    }
}
