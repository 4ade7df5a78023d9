//! Image upscale models (ComfyUI's UPSCALE_MODEL, loaded there by spandrel): ESRGAN/RRDBNet in
//! its old, Real-ESRGAN and BSRGAN layouts (with Real-ESRGAN's pixel-unshuffle 2x/1x variants and
//! 8x), Real-ESRGAN's SRVGGNetCompact, and SwinIR. The architecture, scale and sizes come from the
//! weights (`detect`); `tile` is ComfyUI's tiled scaling with feathered blending.
//!
//! [`UpscaleModel::upscale`] is what spandrel's `ImageModelDescriptor.__call__` does with one
//! image: pad to the architecture's size requirements, run the net, clamp to 0..1, crop.

pub mod compact;
pub mod detect;
pub mod esrgan;
pub mod swinir;
pub mod tile;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::LoadError;
use crate::upscale::compact::SrvggCompact;
use crate::upscale::detect::{detect, Architecture};
use crate::upscale::esrgan::RrdbNet;
use crate::upscale::swinir::SwinIr;

#[derive(Debug)]
enum Net {
    Esrgan(RrdbNet),
    Compact(SrvggCompact),
    SwinIr(SwinIr),
}

/// A loaded upscale model.
#[derive(Debug)]
pub struct UpscaleModel {
    net: Net,
    architecture: Architecture,
    device: Device,
}

/// Bytes an upscale file's weights take once loaded in `dtype`, from its header.
pub fn file_bytes(sd: &StateDict, dtype: DType) -> usize {
    sd.loaded_bytes("", |_| dtype)
}

impl UpscaleModel {
    /// Builds the net `architecture` from `vb` (the model's own weight names).
    pub fn new(vb: VarBuilder, architecture: &Architecture) -> Result<Self> {
        let device = vb.device().clone();
        let net = match architecture {
            Architecture::Esrgan(cfg) => Net::Esrgan(RrdbNet::new(vb, cfg)?),
            Architecture::Compact(cfg) => Net::Compact(SrvggCompact::new(vb, cfg)?),
            Architecture::SwinIr(cfg) => Net::SwinIr(SwinIr::new(vb, cfg)?),
        };
        Ok(Self {
            net,
            architecture: architecture.clone(),
            device,
        })
    }

    /// Reads `sd`, detects its architecture and builds it in `dtype` on `device`.
    pub fn load(
        sd: &Arc<StateDict>,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Self, LoadError> {
        let detected = detect(sd.shapes()).map_err(|kind| LoadError::new(sd.path(), kind))?;
        Renaming::new(detected.names)
            .warn_unused("upscale model tensors not used by its architecture")
            .build(sd, dtype, device, |vb| {
                UpscaleModel::new(vb, &detected.architecture)
            })
    }

    /// Opens the file at `path` and loads it as [`UpscaleModel::load`].
    pub fn load_file(
        path: &Path,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Self, LoadError> {
        Self::load(&Arc::new(StateDict::open(path)?), dtype, device)
    }

    /// The architecture and its shape.
    pub fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    /// A short description (`ESRGAN 4x 64nf 23nb`).
    pub fn describe(&self) -> String {
        match &self.architecture {
            Architecture::Esrgan(c) => format!(
                "ESRGAN{} {}x {}nf {}nb{}",
                if c.plus { "+" } else { "" },
                c.scale(),
                c.num_feat,
                c.num_block,
                if c.unshuffle.is_some() {
                    " unshuffle"
                } else {
                    ""
                }
            ),
            Architecture::Compact(c) => {
                format!("Compact {}x {}nf {}nc", c.scale, c.num_feat, c.num_conv)
            }
            Architecture::SwinIr(c) => format!(
                "SwinIR {}x {}dim {:?} w{} {}",
                c.scale,
                c.embed_dim,
                c.depths,
                c.window_size,
                match c.upsampler {
                    swinir::Upsampler::PixelShuffle { .. } => "classical",
                    swinir::Upsampler::PixelShuffleDirect => "lightweight",
                    swinir::Upsampler::NearestConv { .. } => "real-world",
                    swinir::Upsampler::None => "restoration",
                }
            ),
        }
    }

    /// The factor from an image's size to the result's.
    pub fn scale(&self) -> usize {
        match &self.architecture {
            Architecture::Esrgan(c) => c.scale(),
            Architecture::Compact(c) => c.scale,
            Architecture::SwinIr(c) => c.scale,
        }
    }

    /// Channels of the images it takes.
    pub fn in_channels(&self) -> usize {
        match &self.architecture {
            Architecture::Esrgan(c) => c.image_channels(),
            Architecture::Compact(c) => c.in_channels,
            Architecture::SwinIr(c) => c.channels,
        }
    }

    /// Channels of its results.
    pub fn out_channels(&self) -> usize {
        match &self.architecture {
            Architecture::Esrgan(c) => c.out_channels,
            Architecture::Compact(c) => c.out_channels,
            Architecture::SwinIr(c) => c.channels,
        }
    }

    /// spandrel's size requirements: (minimum side, multiple of).
    fn size_requirements(&self) -> (usize, usize) {
        match &self.architecture {
            Architecture::Esrgan(c) => (2, if c.unshuffle.is_some() { 4 } else { 1 }),
            Architecture::Compact(_) => (0, 1),
            Architecture::SwinIr(_) => (16, 1),
        }
    }

    /// About how many bytes of activations one `h` x `w` tile needs at its peak, in f32: at the
    /// input size the dense blocks' concatenations, at the output size the last layers'
    /// features with their im2col and upsampled copies.
    pub fn activation_bytes(&self, h: usize, w: usize) -> u64 {
        let (lr, hr) = match &self.architecture {
            Architecture::Esrgan(c) => (
                3 * (c.num_feat + 4 * c.num_grow),
                4 * c.num_feat * c.scale() * c.scale(),
            ),
            Architecture::Compact(c) => (4 * c.num_feat, 3 * c.out_channels * c.scale * c.scale),
            // Per token: the MLP's hidden layer and the attention scores of its window, per head.
            Architecture::SwinIr(c) => (
                4 * c.embed_dim
                    + c.mlp_hidden
                    + c.num_heads.iter().max().unwrap_or(&1) * c.window_size * c.window_size,
                4 * 64 * c.scale * c.scale,
            ),
        };
        4 * (lr.max(hr) as u64) * (h as u64) * (w as u64)
    }

    /// Upscales one image, as spandrel's descriptor call: `image` `[1, in_channels, H, W]` f32
    /// (any device) is padded to the size requirements (reflected, then repeated), run on the
    /// model's device in f32, clamped to 0..1 and cropped to `[1, out_channels, H*scale,
    /// W*scale]`, returned on the CPU.
    pub fn upscale(&self, image: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = image.dims4()?;
        if c != self.in_channels() {
            candle_core::bail!(
                "the model takes {}-channel images, this one has {c}",
                self.in_channels()
            );
        }
        let (minimum, multiple) = self.size_requirements();
        let up = |n: usize| n.max(minimum).div_ceil(multiple) * multiple;
        let x = pad_end(
            &image.to_device(&self.device)?.to_dtype(DType::F32)?,
            up(h) - h,
            up(w) - w,
        )?;
        let out = match &self.net {
            Net::Esrgan(net) => net.forward(&x)?,
            Net::Compact(net) => net.forward(&x)?,
            Net::SwinIr(net) => net.forward(&x)?,
        };
        let s = self.scale();
        out.clamp(0f32, 1f32)?
            .narrow(2, 0, h * s)?
            .narrow(3, 0, w * s)?
            .to_device(&Device::Cpu)
    }
}

/// `x` (`[B, C, H, W]`) padded at the bottom and right to multiples of `factor`, reflected
/// (`torch.nn.functional.pad(mode="reflect")`).
pub(crate) fn pad_reflect_to_multiple(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    pad_end(
        x,
        h.next_multiple_of(factor) - h,
        w.next_multiple_of(factor) - w,
    )
}

/// `x` padded by `pad_h` rows at the bottom and `pad_w` columns at the right as spandrel's
/// `pad_tensor` does: reflected as far as the size allows (`size - 1`), the rest repeating the
/// last of those.
fn pad_end(x: &Tensor, pad_h: usize, pad_w: usize) -> Result<Tensor> {
    let along = |x: Tensor, dim: usize, pad: usize| -> Result<Tensor> {
        if pad == 0 {
            return Ok(x);
        }
        let len = x.dim(dim)?;
        let reflected = pad.min(len - 1);
        let index: Vec<u32> = (0..len)
            .chain((0..pad).map(|j| {
                if j < reflected {
                    len - 2 - j
                } else {
                    len - 1 - reflected
                }
            }))
            .map(|i| i as u32)
            .collect();
        let index = Tensor::from_vec(index, len + pad, x.device())?;
        x.contiguous()?.index_select(&index, dim)
    };
    along(along(x.clone(), 2, pad_h)?, 3, pad_w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_reflects_then_repeats() {
        let x = Tensor::new(&[1f32, 2., 3.], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 3))
            .unwrap();
        let padded = pad_end(&x, 0, 4).unwrap();
        assert_eq!(
            padded.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            // reflect 2 (3 -> 2, 1), then repeat the last reflected value
            vec![1., 2., 3., 2., 1., 1., 1.]
        );
        let one = Tensor::ones((1, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(pad_end(&one, 1, 1).unwrap().dims(), &[1, 1, 2, 2]);
    }
}
