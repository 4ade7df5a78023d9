//! ESRGAN's RRDBNet (Wang et al. 2018), as spandrel's `ESRGAN` architecture runs it, including
//! Real-ESRGAN's pixel-unshuffle 2x and 1x variants and BSRGAN's files.
//!
//! Weight names are Real-ESRGAN's (`conv_first`, `body.N.rdbK.convJ`, `conv_body`, `conv_upN`,
//! `conv_hr`, `conv_last`); the old `model.N` and BSRGAN layouts are renamed to them when the file
//! is read (`upscale::detect`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::ops::conv::{conv2d, Conv2d};
use crate::upscale::pad_reflect_to_multiple;

/// The shape of an RRDBNet, read from its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Channels `conv_first` takes: the image's, times `unshuffle²`.
    pub in_channels: usize,
    /// Channels of the result.
    pub out_channels: usize,
    /// Feature channels (`nf`, 64 in released models).
    pub num_feat: usize,
    /// Residual-in-residual dense blocks (`nb`, 23 in released models).
    pub num_block: usize,
    /// Growth channels of each dense block (`gc`, 32 in released models).
    pub num_grow: usize,
    /// Nearest 2x upsampling steps, each followed by a convolution (`conv_upN`).
    pub upsamples: usize,
    /// Real-ESRGAN's pixel-unshuffle factor (2 or 4) before `conv_first`, or `None`.
    pub unshuffle: Option<usize>,
    /// ESRGAN+: each dense block adds a 1x1 convolution of its input to its second output, and
    /// its second output to its fourth (`conv1x1`).
    pub plus: bool,
}

impl Config {
    /// The factor from the image's size to the result's.
    pub fn scale(&self) -> usize {
        (1 << self.upsamples) / self.unshuffle.unwrap_or(1)
    }

    /// Channels of the image the net takes.
    pub fn image_channels(&self) -> usize {
        let f = self.unshuffle.unwrap_or(1);
        self.in_channels / (f * f)
    }
}

fn conv3x3(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Conv2d> {
    let config = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(in_c, out_c, 3, config, vb)
}

/// LeakyReLU with ESRGAN's slope, 0.2.
fn lrelu(xs: &Tensor) -> Result<Tensor> {
    xs.maximum(&(xs * 0.2)?)
}

/// A residual dense block: five convolutions, each fed every earlier output.
#[derive(Debug)]
struct DenseBlock {
    convs: Vec<Conv2d>,
    /// ESRGAN+'s extra residual path (no bias).
    conv1x1: Option<Conv2d>,
}

impl DenseBlock {
    fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (nf, gc) = (cfg.num_feat, cfg.num_grow);
        let convs = (0..5)
            .map(|i| {
                let out = if i == 4 { nf } else { gc };
                conv3x3(nf + i * gc, out, vb.pp(format!("conv{}", i + 1)))
            })
            .collect::<Result<Vec<_>>>()?;
        let conv1x1 = if cfg.plus {
            let weight = vb.get((gc, nf, 1, 1), "conv1x1.weight")?;
            Some(Conv2d::new(weight, None, Conv2dConfig::default()))
        } else {
            None
        };
        Ok(Self { convs, conv1x1 })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut features = vec![x.clone()];
        for (i, conv) in self.convs[..4].iter().enumerate() {
            let input = Tensor::cat(&features, 1)?;
            let mut out = lrelu(&conv.forward(&input)?)?;
            if let Some(extra) = &self.conv1x1 {
                if i == 1 {
                    out = (out + extra.forward(x)?)?;
                } else if i == 3 {
                    out = (out + &features[2])?;
                }
            }
            features.push(out);
        }
        let out = self.convs[4].forward(&Tensor::cat(&features, 1)?)?;
        (out * 0.2)? + x
    }
}

/// Three dense blocks with a scaled residual around them.
#[derive(Debug)]
struct Rrdb {
    blocks: [DenseBlock; 3],
    span: tracing::Span,
}

impl Rrdb {
    fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            blocks: [
                DenseBlock::new(vb.pp("rdb1"), cfg)?,
                DenseBlock::new(vb.pp("rdb2"), cfg)?,
                DenseBlock::new(vb.pp("rdb3"), cfg)?,
            ],
            span: tracing::trace_span!("rrdb"),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let mut out = x.clone();
        for block in &self.blocks {
            out = block.forward(&out)?;
        }
        (out * 0.2)? + x
    }
}

/// RRDBNet.
#[derive(Debug)]
pub struct RrdbNet {
    config: Config,
    conv_first: Conv2d,
    body: Vec<Rrdb>,
    conv_body: Conv2d,
    conv_up: Vec<Conv2d>,
    conv_hr: Conv2d,
    conv_last: Conv2d,
    span: tracing::Span,
}

impl RrdbNet {
    /// Builds the net from Real-ESRGAN-named weights.
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let nf = cfg.num_feat;
        Ok(Self {
            conv_first: conv3x3(cfg.in_channels, nf, vb.pp("conv_first"))?,
            body: (0..cfg.num_block)
                .map(|i| Rrdb::new(vb.pp("body").pp(i), cfg))
                .collect::<Result<_>>()?,
            conv_body: conv3x3(nf, nf, vb.pp("conv_body"))?,
            conv_up: (1..=cfg.upsamples)
                .map(|i| conv3x3(nf, nf, vb.pp(format!("conv_up{i}"))))
                .collect::<Result<_>>()?,
            conv_hr: conv3x3(nf, nf, vb.pp("conv_hr"))?,
            conv_last: conv3x3(nf, cfg.out_channels, vb.pp("conv_last"))?,
            config: cfg.clone(),
            span: tracing::trace_span!("rrdbnet"),
        })
    }

    /// `x`: `[B, image_channels, H, W]` f32 in 0..1; returns `[B, out_channels, H*scale,
    /// W*scale]`, not clamped.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (_, _, h, w) = x.dims4()?;
        let input = match self.config.unshuffle {
            // Real-ESRGAN x2/x1: fold 2x2 (4x4) pixels into channels, after reflecting the edge
            // up to a multiple of the factor (cropped off the result below).
            Some(f) => candle_nn::ops::pixel_unshuffle(&pad_reflect_to_multiple(x, f)?, f)?,
            None => x.clone(),
        };
        let feat = self.conv_first.forward(&input)?;
        let mut body = feat.clone();
        for block in &self.body {
            body = block.forward(&body)?;
        }
        let mut feat = (self.conv_body.forward(&body)? + feat)?;
        for conv in &self.conv_up {
            feat = lrelu(&conv.forward_upsampled_2x(&feat)?)?;
        }
        let out = self
            .conv_last
            .forward(&lrelu(&self.conv_hr.forward(&feat)?)?)?;
        match self.config.unshuffle {
            Some(_) => {
                let scale = self.config.scale();
                out.narrow(2, 0, h * scale)?.narrow(3, 0, w * scale)
            }
            None => Ok(out),
        }
    }
}
