//! The extra input channels of inpainting (9-channel) and InstructPix2Pix (8-channel) UNets:
//! ComfyUI's `c_concat`, built per conditioning entry from its `concat_latent_image` and
//! `concat_mask` (InpaintModelConditioning, InstructPixToPixConditioning) or, for inpainting
//! models given neither, from the sampler's noise mask and input latent
//! (`comfy/model_base.py`: `BaseModel.concat_cond` with `concat_keys = ("mask", "masked_image")`,
//! `IP2P.concat_cond`). The sampler concatenates it after the scaled `x` on the channel axis.

use candle_core::{DType, Result, Tensor};

use crate::diffusion::{CondEntry, DiffusionModel};
use crate::ops::math::round_half_even;
use crate::resize::{common_upscale, Crop, UpscaleMethod};

/// What a UNet's extra input channels hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcatKind {
    /// `[mask, masked image latent]`: 1 + latent channels (SD1.5/SDXL inpainting).
    Inpaint,
    /// `[image latent]`: latent channels (InstructPix2Pix).
    InstructPix2Pix,
}

impl DiffusionModel {
    /// What this model's UNet takes beyond the latent, read off its input channels as ComfyUI's
    /// model detection does (9 = inpainting, 8 = InstructPix2Pix for 4-channel latents).
    pub fn concat_kind(&self) -> Option<ConcatKind> {
        let latent = self.latent.channels;
        match self.unet.config().in_channels {
            c if c == 2 * latent + 1 => Some(ConcatKind::Inpaint),
            c if c == 2 * latent => Some(ConcatKind::InstructPix2Pix),
            _ => None,
        }
    }
}

/// An entry's concat inputs resized to the latent, as `concat_cond` prepares them before the
/// sampler's inputs are known.
#[derive(Debug, Clone, Default)]
pub struct PreparedConcat {
    /// `[B, C, h, w]`: the entry's image latent (scaled into the model's space for inpainting).
    image: Option<Tensor>,
    /// `[B, 1, h, w]` of 0s and 1s: the entry's own mask.
    mask: Option<Tensor>,
}

impl PreparedConcat {
    /// Resizes `entry`'s concat inputs for `model` and latents of `latent_shape` (`[B, C, h, w]`).
    pub fn new(model: &DiffusionModel, entry: &CondEntry, latent_shape: &[usize]) -> Result<Self> {
        let Some(kind) = model.concat_kind() else {
            return Ok(Self::default());
        };
        let &[batch, channels, h, w] = latent_shape else {
            candle_core::bail!("latent must be [B, C, h, w], got {latent_shape:?}");
        };
        let image = match &entry.concat_latent_image {
            Some(image) => {
                let mut image = image.to_dtype(DType::F32)?;
                // Only the inpainting path runs `process_latent_in` on the entry's latent.
                if kind == ConcatKind::Inpaint {
                    image = model.latent.process_in(&image)?;
                }
                let (_, c, ih, iw) = image.dims4()?;
                if (c, ih, iw) != (channels, h, w) {
                    image = common_upscale(&image, w, h, UpscaleMethod::Bilinear, Crop::Center)?;
                }
                Some(resize_to_batch_size(&image, batch)?)
            }
            None => None,
        };
        let mask = match (&entry.concat_mask, kind) {
            (Some(mask), ConcatKind::Inpaint) => Some(latent_mask(mask, batch, h, w)?),
            _ => None,
        };
        Ok(Self { image, mask })
    }

    /// The entry's `c_concat` for latents of `x`'s shape: `noise_mask` is the sampler's prepared
    /// noise mask (`[B, C, h, w]`, the `denoise_mask` ComfyUI passes), `latent_image` its scaled
    /// input latent; `None` when the model takes nothing extra.
    pub fn build(
        &self,
        kind: Option<ConcatKind>,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        latent_image: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let (batch, _, h, w) = x.dims4()?;
        let concat = match kind {
            None => return Ok(None),
            Some(ConcatKind::InstructPix2Pix) => match &self.image {
                Some(image) => image.clone(),
                None => x.zeros_like()?,
            },
            Some(ConcatKind::Inpaint) => {
                let mask = match (&self.mask, noise_mask) {
                    (Some(mask), _) => Some(mask.clone()),
                    (None, Some(noise_mask)) => Some(latent_mask(noise_mask, batch, h, w)?),
                    (None, None) => None,
                };
                match mask {
                    Some(mask) => {
                        let image = match (&self.image, latent_image) {
                            (Some(image), _) => image.clone(),
                            (None, Some(latent)) => resize_to_batch_size(latent, batch)?,
                            (None, None) => x.zeros_like()?,
                        };
                        Tensor::cat(&[&mask, &image], 1)?
                    }
                    // No mask anywhere: the whole image is to be painted, over a blank image.
                    None => {
                        let ones = Tensor::ones((batch, 1, h, w), DType::F32, x.device())?;
                        Tensor::cat(&[&ones, &blank_inpaint_image(x)?], 1)?
                    }
                }
            }
        };
        Ok(Some(concat))
    }
}

/// A mask (`[B?, h', w']`, `[B, 1, h', w']` or latent-shaped `[B, C, h', w']`) as `[batch, 1, h,
/// w]` of 0s and 1s: its first channel, resized bilinearly with a centre crop, rounded.
fn latent_mask(mask: &Tensor, batch: usize, h: usize, w: usize) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?;
    let mask = match mask.rank() {
        4 => mask.narrow(1, 0, 1)?,
        _ => {
            let (mh, mw) = (mask.dim(mask.rank() - 2)?, mask.dim(mask.rank() - 1)?);
            mask.reshape(((), 1, mh, mw))?
        }
    };
    let (_, _, mh, mw) = mask.dims4()?;
    let mask = if (mh, mw) != (h, w) {
        common_upscale(&mask, w, h, UpscaleMethod::Bilinear, Crop::Center)?
    } else {
        mask
    };
    resize_to_batch_size(&round_half_even(&mask)?, batch)
}

/// ComfyUI's `blank_inpaint_image_like`: pixel-space black in SD latent space.
fn blank_inpaint_image(x: &Tensor) -> Result<Tensor> {
    let (batch, channels, h, w) = x.dims4()?;
    let mut values = vec![0.8223f32, -0.6876, 0.6364, 0.1380];
    values.resize(channels, 1.0);
    Tensor::from_vec(values, (1, channels, 1, 1), x.device())?
        .broadcast_as((batch, channels, h, w))?
        .contiguous()
}

/// ComfyUI's `resize_to_batch_size`: picks entries evenly spread over the batch (repeating or
/// skipping some) so it has `batch` entries.
pub fn resize_to_batch_size(t: &Tensor, batch: usize) -> Result<Tensor> {
    let have = t.dim(0)?;
    if have == batch {
        return Ok(t.clone());
    }
    if batch <= 1 {
        return t.narrow(0, 0, batch.min(have));
    }
    let picks: Vec<u32> = if batch < have {
        let scale = (have - 1) as f64 / (batch - 1) as f64;
        (0..batch)
            .map(|i| ((i as f64 * scale).round_ties_even() as usize).min(have - 1) as u32)
            .collect()
    } else {
        let scale = have as f64 / batch as f64;
        (0..batch)
            .map(|i| (((i as f64 + 0.5) * scale).floor() as usize).min(have - 1) as u32)
            .collect()
    };
    let index = Tensor::from_vec(picks, batch, t.device())?;
    t.index_select(&index, 0)
}
