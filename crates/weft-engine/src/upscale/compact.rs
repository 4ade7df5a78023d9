//! Real-ESRGAN's compact net, SRVGGNetCompact (spandrel's `Compact`): 3x3 convolutions with
//! per-channel PReLU at the input's size, a pixel shuffle, and the nearest-upsampled input added.
//!
//! Weight names: `body.0` the first convolution, `body.1` its PReLU, then a convolution and a
//! PReLU per body layer, and the last convolution (to `out_channels * scale²`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::ops::cast;
use crate::ops::conv::{conv2d, Conv2d};

/// The shape of an SRVGGNetCompact, read from its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Channels of the image.
    pub in_channels: usize,
    /// Channels of the result.
    pub out_channels: usize,
    /// Feature channels (64 in released models).
    pub num_feat: usize,
    /// Convolutions between the first and the last (16 or 32 in released models).
    pub num_conv: usize,
    /// The factor from the image's size to the result's.
    pub scale: usize,
}

/// A per-channel PReLU (`weight`: `[C]`).
#[derive(Debug)]
struct Prelu {
    weight: Tensor,
}

impl Prelu {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let slope = cast::operand(&self.weight, xs)?.reshape((1, (), 1, 1))?;
        xs.relu()? + xs.minimum(0f32)?.broadcast_mul(&slope)?
    }
}

/// SRVGGNetCompact.
#[derive(Debug)]
pub struct SrvggCompact {
    config: Config,
    convs: Vec<Conv2d>,
    activations: Vec<Prelu>,
    span: tracing::Span,
}

impl SrvggCompact {
    /// Builds the net from its weights (`body.N`).
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let body = vb.pp("body");
        let padded = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let nf = cfg.num_feat;
        let mut convs = Vec::with_capacity(cfg.num_conv + 2);
        let mut activations = Vec::with_capacity(cfg.num_conv + 1);
        for i in 0..=cfg.num_conv {
            let in_c = if i == 0 { cfg.in_channels } else { nf };
            convs.push(conv2d(in_c, nf, 3, padded, body.pp(2 * i))?);
            activations.push(Prelu {
                weight: body.pp(2 * i + 1).get(nf, "weight")?,
            });
        }
        let last_out = cfg.out_channels * cfg.scale * cfg.scale;
        convs.push(conv2d(
            nf,
            last_out,
            3,
            padded,
            body.pp(2 * cfg.num_conv + 2),
        )?);
        Ok(Self {
            config: cfg.clone(),
            convs,
            activations,
            span: tracing::trace_span!("srvgg_compact"),
        })
    }

    /// `x`: `[B, in_channels, H, W]` f32 in 0..1; returns `[B, out_channels, H*scale, W*scale]`,
    /// not clamped.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut out = x.clone();
        for (conv, act) in self.convs.iter().zip(&self.activations) {
            out = act.forward(&conv.forward(&out)?)?;
        }
        let last = self.convs.last().expect("built with a last convolution");
        let s = self.config.scale;
        let out = candle_nn::ops::pixel_shuffle(&last.forward(&out)?, s)?;
        let (_, _, h, w) = x.dims4()?;
        out.broadcast_add(&x.upsample_nearest2d(h * s, w * s)?)
    }
}
