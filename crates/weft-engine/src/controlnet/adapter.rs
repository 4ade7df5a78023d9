//! T2I-Adapters (TencentARC; diffusers `T2IAdapter`): a small convolutional network on the pixel-
//! unshuffled hint whose per-level features are added *inside* the UNet's encoder, so unlike
//! ControlNet residuals they flow through the following encoder blocks as well as the skips.
//!
//! Where each feature goes follows ComfyUI (`comfy/t2i_adapter/adapter.py` returns features
//! padded with `None`s, one per input block, and `openaimodel.apply_control(h, control,
//! 'input')` adds them right after that block); diffusers' `down_intrablock_additional_residuals`
//! adds at the same places for these layouts, which is what the parity test checks:
//!
//! - full (SD1) and light: feature `i` after the last resnet (and attention) of level `i`
//!   (input blocks 2, 5, 8, 11 for SD1).
//! - full SDXL (16x unshuffle, one downsampling block): features 0, 1, 2 after input blocks 3
//!   (level 0's downsampler), 5 and 8; feature 3 after the mid block.
//!
//! The strength multiplies every feature (ComfyUI's `control_merge`).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::ops::conv::{conv2d, Conv2d};
use crate::unet::blocks::conv_same;
use crate::unet::{EncoderAdditions, UNetConfig};

/// The adapter architectures ComfyUI loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    /// SD1 full adapter: 8x unshuffle, conv_in, a level per UNet level, each after the first
    /// halving the size.
    Full,
    /// SDXL full adapter: 16x unshuffle, only level 2 halves the size.
    FullXl,
    /// SD1 light adapter: 8x unshuffle, per level 1x1 in conv, light resnets at a quarter of the
    /// width, 1x1 out conv.
    Light,
}

/// Architecture of a [`T2IAdapter`].
#[derive(Debug, Clone, PartialEq)]
pub struct T2IAdapterConfig {
    /// Which architecture (full, full SDXL or light).
    pub kind: AdapterKind,
    /// Channels of the hint the adapter was trained on: 3 (RGB) or 1 (ComfyUI averages RGB hints
    /// to grey for those).
    pub hint_channels: usize,
    /// Output channels per level (SD1: 320, 640, 1280, 1280).
    pub channels: Vec<usize>,
    /// Resnets per level (2 full, 4 light).
    pub num_res_blocks: usize,
    /// Kernel of each full resnet's second conv and of the level's input conv (1 in every
    /// released adapter; TencentARC's code allows 3). Light adapters use 3x3 throughout.
    pub kernel_size: usize,
}

impl T2IAdapterConfig {
    /// The pixel-unshuffle factor (8, or 16 for SDXL).
    pub fn unshuffle(&self) -> usize {
        match self.kind {
            AdapterKind::FullXl => 16,
            AdapterKind::Full | AdapterKind::Light => 8,
        }
    }

    /// Whether level `i` halves its input first.
    fn downsamples(&self, level: usize) -> bool {
        match self.kind {
            AdapterKind::FullXl => level == 2,
            AdapterKind::Full | AdapterKind::Light => level > 0,
        }
    }

    /// Checks the invariants the model builder relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.channels.is_empty() || self.num_res_blocks == 0 {
            return Err("adapter config has no levels or no resnets".into());
        }
        if self.hint_channels == 0 || self.kernel_size.is_multiple_of(2) {
            return Err(format!(
                "adapter config has {} hint channels and kernel {}",
                self.hint_channels, self.kernel_size
            ));
        }
        if self.kind == AdapterKind::FullXl && self.channels.len() != 4 {
            return Err(format!(
                "an sdxl adapter has 4 levels, this one has {}",
                self.channels.len()
            ));
        }
        if self.kind == AdapterKind::Light && self.channels.iter().any(|c| c % 4 != 0 || *c == 0) {
            return Err("light adapter channels must be multiples of 4".into());
        }
        Ok(())
    }
}

/// Stride-2 average pooling as ComfyUI's adapter `Downsample` (no conv): odd sizes are first
/// zero-padded by one on both sides and the zeros count in the average (`AvgPool2d` with
/// `padding = size % 2`, `count_include_pad`). diffusers pools with `ceil_mode` instead; both agree
/// on even sizes, which is all an SD hint at 8x the latent gives unless the latent is odd at some
/// level.
fn downsample(xs: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let xs = xs
        .pad_with_zeros(D::Minus2, h % 2, h % 2)?
        .pad_with_zeros(D::Minus1, w % 2, w % 2)?;
    xs.avg_pool2d(2)
}

/// [B, C, H r, W r] -> [B, C r r, H, W], PyTorch's `PixelUnshuffle` channel order.
fn pixel_unshuffle(xs: &Tensor, r: usize) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    if h % r != 0 || w % r != 0 {
        candle_core::bail!("adapter hint {h}x{w} is not a multiple of {r}");
    }
    xs.reshape((b, c, h / r, r, w / r, r))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, c * r * r, h / r, w / r))
}

/// conv - ReLU - conv, plus the input.
#[derive(Debug)]
struct AdapterResnet {
    block1: Conv2d,
    block2: Conv2d,
}

impl AdapterResnet {
    fn new(vb: VarBuilder, channels: usize, kernel2: usize) -> Result<Self> {
        Ok(Self {
            block1: conv_same(channels, channels, 3, vb.pp("block1"))?,
            block2: conv_same(channels, channels, kernel2, vb.pp("block2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.block2.forward(&self.block1.forward(xs)?.relu()?)? + xs
    }
}

#[derive(Debug)]
struct AdapterLevel {
    down: bool,
    in_conv: Option<Conv2d>,
    resnets: Vec<AdapterResnet>,
    /// Light adapters only.
    out_conv: Option<Conv2d>,
    span: tracing::Span,
}

impl AdapterLevel {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut h = if self.down {
            downsample(xs)?
        } else {
            xs.clone()
        };
        if let Some(conv) = &self.in_conv {
            h = conv.forward(&h)?;
        }
        for resnet in &self.resnets {
            h = resnet.forward(&h)?;
        }
        match &self.out_conv {
            Some(conv) => conv.forward(&h),
            None => Ok(h),
        }
    }
}

/// A T2I-Adapter.
#[derive(Debug)]
pub struct T2IAdapter {
    conv_in: Option<Conv2d>,
    levels: Vec<AdapterLevel>,
    config: T2IAdapterConfig,
    dtype: DType,
    span: tracing::Span,
}

impl T2IAdapter {
    /// Builds the adapter from diffusers-named weights (`adapter.conv_in`,
    /// `adapter.body.i.resnets.j.block1`, ...) under `vb`.
    pub fn new(vb: VarBuilder, cfg: &T2IAdapterConfig) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let vb = vb.pp("adapter");
        let r = cfg.unshuffle();
        let cin = cfg.hint_channels * r * r;
        let ch = &cfg.channels;
        let conv_in = match cfg.kind {
            AdapterKind::Light => None,
            AdapterKind::Full | AdapterKind::FullXl => {
                Some(conv_same(cin, ch[0], 3, vb.pp("conv_in"))?)
            }
        };
        let vb_body = vb.pp("body");
        let mut levels = Vec::with_capacity(ch.len());
        for (i, &out) in ch.iter().enumerate() {
            let vb_l = vb_body.pp(i);
            let level = match cfg.kind {
                AdapterKind::Light => {
                    let input = if i == 0 { cin } else { ch[i - 1] };
                    let mid = out / 4;
                    let one = |i, o, vb| conv2d(i, o, 1, Default::default(), vb);
                    AdapterLevel {
                        down: cfg.downsamples(i),
                        in_conv: Some(one(input, mid, vb_l.pp("in_conv"))?),
                        resnets: (0..cfg.num_res_blocks)
                            .map(|j| AdapterResnet::new(vb_l.pp("resnets").pp(j), mid, 3))
                            .collect::<Result<_>>()?,
                        out_conv: Some(one(mid, out, vb_l.pp("out_conv"))?),
                        span: tracing::trace_span!("adapter_level", level = i),
                    }
                }
                AdapterKind::Full | AdapterKind::FullXl => {
                    let input = if i == 0 { ch[0] } else { ch[i - 1] };
                    let in_conv = if input != out {
                        Some(conv_same(input, out, cfg.kernel_size, vb_l.pp("in_conv"))?)
                    } else {
                        None
                    };
                    AdapterLevel {
                        down: cfg.downsamples(i),
                        in_conv,
                        resnets: (0..cfg.num_res_blocks)
                            .map(|j| {
                                AdapterResnet::new(vb_l.pp("resnets").pp(j), out, cfg.kernel_size)
                            })
                            .collect::<Result<_>>()?,
                        out_conv: None,
                        span: tracing::trace_span!("adapter_level", level = i),
                    }
                }
            };
            levels.push(level);
        }
        Ok(Self {
            conv_in,
            levels,
            config: cfg.clone(),
            dtype: crate::device::compute_dtype(vb.device(), vb.dtype()),
            span: tracing::trace_span!("t2i_adapter"),
        })
    }

    /// The architecture this adapter was built with.
    pub fn config(&self) -> &T2IAdapterConfig {
        &self.config
    }

    /// The hint size (height, width) for a latent of `latent_h` x `latent_w`: 8 times it, rounded up
    /// to a multiple of the unshuffle factor (ComfyUI's `scale_image_to`).
    pub fn hint_size(&self, latent_h: usize, latent_w: usize) -> (usize, usize) {
        let r = self.config.unshuffle();
        (
            (latent_h * 8).div_ceil(r) * r,
            (latent_w * 8).div_ceil(r) * r,
        )
    }

    /// The adapter's features, one per level.
    ///
    /// `hint`: [B, 3 or hint_channels, H, W] in [0, 1], H and W multiples of the unshuffle factor
    /// (see [`Self::hint_size`]); an RGB hint for a 1-channel adapter is averaged to grey, as
    /// ComfyUI does. Level `i` of a full or light adapter is `H / 8 / 2^i` high; SDXL levels are
    /// at 1/16, 1/16, 1/32, 1/32. Returned in the adapter's dtype.
    pub fn forward(&self, hint: &Tensor) -> Result<Vec<Tensor>> {
        let _enter = self.span.enter();
        let (_, c, _, _) = hint.dims4()?;
        let hint = hint.to_dtype(self.dtype)?;
        let hint = if self.config.hint_channels == 1 && c > 1 {
            hint.mean_keepdim(1)?
        } else if c == self.config.hint_channels {
            hint
        } else {
            candle_core::bail!(
                "adapter hint has {c} channels, expected {}",
                self.config.hint_channels
            );
        };
        let mut h = pixel_unshuffle(&hint, self.config.unshuffle())?;
        if let Some(conv) = &self.conv_in {
            h = conv.forward(&h)?;
        }
        let mut features = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            h = level.forward(&h)?;
            features.push(h.clone());
        }
        Ok(features)
    }

    /// Places `features` (from [`Self::forward`]) at the UNet's input positions, for a UNet with
    /// `num_skips` skips and `layers_per_block` resnets per level (see the module docs). Unscaled.
    pub fn residuals(
        &self,
        features: &[Tensor],
        num_skips: usize,
        layers_per_block: usize,
    ) -> Result<EncoderAdditions> {
        let per = layers_per_block + 1;
        let mut input: Vec<Option<Tensor>> = vec![None; num_skips];
        let mut mid = None;
        for (i, f) in features.iter().enumerate() {
            let slot = match self.config.kind {
                AdapterKind::Full | AdapterKind::Light => Some(i * per + layers_per_block),
                AdapterKind::FullXl => match i {
                    0 => Some(per),
                    1 | 2 => Some(i * per + layers_per_block),
                    _ => None,
                },
            };
            match slot {
                Some(k) => {
                    let cell = input.get_mut(k).ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "adapter level {i} goes after input block {k}, the model has {num_skips}"
                        ))
                    })?;
                    *cell = Some(f.clone());
                }
                None if mid.is_none() => mid = Some(f.clone()),
                None => candle_core::bail!("adapter has more levels than the model"),
            }
        }
        Ok(EncoderAdditions { input, mid })
    }
}

/// Checks that an adapter's features fit a UNet: the family (SDXL adapters need an SDXL UNet, SD1
/// adapters a UNet without a `y` input), no more levels than the UNet has, and each feature's
/// channels equal to the channels where it is added.
///
/// The error is a lowercase sentence naming both sides, for the node to show.
pub fn check_compatible(
    adapter: &T2IAdapterConfig,
    unet: &UNetConfig,
) -> std::result::Result<(), String> {
    let unet_family = match unet.adm_in_channels {
        Some(_) => "sdxl",
        None => "sd1.x/sd2.x",
    };
    let (adapter_family, fits) = match adapter.kind {
        AdapterKind::FullXl => ("sdxl", unet.adm_in_channels.is_some()),
        AdapterKind::Full | AdapterKind::Light => ("sd1.x", unet.adm_in_channels.is_none()),
    };
    if !fits {
        return Err(format!(
            "this is an {adapter_family} t2i-adapter and the model is {unet_family}; use an \
             adapter made for the model's family"
        ));
    }
    let ch = &unet.block_out_channels;
    // Channels where each feature is added: the end of level i (SD1), or after level 0's
    // downsampler, the ends of levels 1 and 2, and the mid block (SDXL).
    let targets: Vec<Option<usize>> = match adapter.kind {
        AdapterKind::Full | AdapterKind::Light => (0..adapter.channels.len())
            .map(|i| ch.get(i).copied())
            .collect(),
        AdapterKind::FullXl => vec![ch.first(), ch.get(1), ch.get(2), ch.last()]
            .into_iter()
            .map(|c| c.copied())
            .collect(),
    };
    if adapter.channels.len() > targets.len() || targets.iter().any(Option::is_none) {
        return Err(format!(
            "the t2i-adapter has {} levels and the model {}",
            adapter.channels.len(),
            ch.len()
        ));
    }
    if adapter
        .channels
        .iter()
        .zip(&targets)
        .any(|(a, t)| Some(*a) != *t)
    {
        return Err(format!(
            "the t2i-adapter's feature channels {:?} do not match the model's {:?}",
            adapter.channels,
            targets.iter().flatten().collect::<Vec<_>>()
        ));
    }
    Ok(())
}
