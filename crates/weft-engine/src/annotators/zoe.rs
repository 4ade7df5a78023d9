//! ZoeDepth "N" (metric depth, NYU), as comfyui_controlnet_aux's `ZoeDetector` ran it while it read
//! `ZoeD_M12_N.pt` (the pack up to June 2025; the file holds `{'model': state_dict}`): the MiDaS
//! `DPT_BEiT_L_384` core (`core.core.*`: the [`Beit`] backbone, the DPT `scratch` and depth head)
//! whose `layer4_rn`, fusion outputs and last hidden map feed the metric-bins head: a 1x1
//! bottleneck convolution (`conv2`), the seed bin centres (`seed_bin_regressor`, softplus), bin
//! embeddings (`seed_projector`, `projectors.N`) and attractors (`attractors.N`: softplus points
//! pulling the centres by `dx / (1 + 300 dx^2)`, averaged), then `conditional_log_binomial`: per
//! pixel a binomial over the bins with a predicted temperature, whose expectation over the final
//! centres is the depth. Every width and count is read from the weights; the constants below are
//! the `infer` config's.
//!
//! The detector call: `resize_image_with_pad` to the resolution, `/ 255`, `infer` (reflect
//! padding by `int(sqrt(side / 2) * 3)` per axis, the core's bilinear resize to the 384x512
//! 'minimal' size in multiples of 32 and `(x - 0.5) / 0.5`, the net, bicubic back to the padded
//! size, the padding cropped; averaged with the same on the horizontally flipped image), the
//! 2nd and 85th percentiles scaled to 1 and 0 (near is bright), times 255 truncated, `remove_pad`.
//!
//! The same struct runs transformers' `Intel/zoedepth-nyu-kitti` ([`super::zoe_hf`] renames its
//! tensors onto these names): one bins head per domain under `bins.N.` (no relative-depth channel
//! into their log-binomial), picked per image by [`super::zoe_router`], and today's pack's call
//! ([`Call::Pipeline`]).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::beit::{Beit, BeitConfig};
use super::dpt::{DepthOut, Refine, RefinePaths};
use super::zoe_router::{Router, RouterConfig};
use super::{image_tensor, interpolate_axis, load_published, map_values, u8_from_clipped};
use crate::load::file::StateDict;
use crate::load::LoadError;
use crate::ops::conv::{conv2d, Conv2d};
use crate::ops::reflect_pad_hw;
use crate::preprocess::aux::{detect_resolution, hwc3, resize_image_with_pad};
use crate::preprocess::cv::Interpolation;
use crate::preprocess::{run_aux, ImageU8, PreprocessError, Result};
use crate::resize::{common_upscale, Crop, UpscaleMethod};

const OP: &str = "Zoe";
const CORE: &str = "core.core.";

/// The `inv` attractor's strength: `inv_attractor`'s default, since `AttractorLayerUnnormed`
/// calls it without its own `alpha` (the config's 1000 goes unused); the exponent is 2.
const ALPHA: f64 = 300.0;
/// `min_temp` and `max_temp` of the output distribution (the `infer` config's).
const MIN_TEMP: f64 = 0.0212;
const MAX_TEMP: f64 = 50.0;
/// `ConditionalLogBinomial`'s `p_eps` and `LogBinomial`'s clamp.
const P_EPS: f64 = 1e-4;
/// `log_binom`'s epsilon.
const BINOM_EPS: f64 = 1e-7;
/// `infer`'s padding factor (`fh`, `fw`).
const PAD_FACTOR: f64 = 3.0;

/// The shape of one metric-bins head (a domain's, in a multi-domain net), read from its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinsConfig {
    /// Bins.
    pub bins: usize,
    /// Hidden width of the seed bin regressor.
    pub seed_hidden: usize,
    /// Hidden width of the attractors.
    pub attractor_hidden: usize,
    /// Attractor points per decoder level (16, 8, 4, 1).
    pub attractors: Vec<usize>,
    /// Hidden width of the log-binomial head's MLP.
    pub binomial_hidden: usize,
    /// Whether the log-binomial head also reads the relative depth (the single-head net's).
    pub relative: bool,
}

impl BinsConfig {
    /// The head under `prefix`, for a net whose depth head's hidden map is `head_hidden` wide and
    /// whose bin embeddings are `embedding` wide.
    pub fn detect(
        shapes: &HashMap<String, Vec<usize>>,
        prefix: &str,
        head_hidden: usize,
        embedding: usize,
    ) -> std::result::Result<Self, String> {
        let dim = |name: &str, i: usize| shape_dim(shapes, &format!("{prefix}{name}"), i);
        let attractors = (0..)
            .map_while(|i| {
                shapes
                    .get(&format!("{prefix}attractors.{i}._net.2.weight"))
                    .and_then(|s| s.first().copied())
            })
            .collect::<Vec<_>>();
        if attractors.len() != 4 {
            return Err(format!(
                "{} attractor layers, ZoeDepth has one per fusion output (4)",
                attractors.len()
            ));
        }
        let bins = dim("seed_bin_regressor._net.2.weight", 0)?;
        if bins < 2 {
            return Err(format!(
                "{bins} depth bins: the binomial needs two at least"
            ));
        }
        let binomial_in = dim("conditional_log_binomial.mlp.0.weight", 1)?;
        // the hidden map, the relative depth where it is read, the bin embedding
        let relative = match binomial_in.checked_sub(head_hidden + embedding) {
            Some(0) => false,
            Some(1) => true,
            _ => {
                return Err(format!(
                    "a log-binomial head reading {binomial_in} channels (hidden {head_hidden}, \
                     embedding {embedding})"
                ))
            }
        };
        Ok(BinsConfig {
            bins,
            seed_hidden: dim("seed_bin_regressor._net.0.weight", 0)?,
            attractor_hidden: dim("attractors.0._net.0.weight", 0)?,
            attractors,
            binomial_hidden: dim("conditional_log_binomial.mlp.0.weight", 0)?,
            relative,
        })
    }
}

/// Dimension `i` of the tensor `name`.
fn shape_dim(
    shapes: &HashMap<String, Vec<usize>>,
    name: &str,
    i: usize,
) -> std::result::Result<usize, String> {
    shapes
        .get(name)
        .ok_or_else(|| format!("missing tensor '{name}' (not a ZoeDepth file?)"))?
        .get(i)
        .copied()
        .ok_or_else(|| format!("tensor '{name}' has too few dimensions"))
}

/// The shape of a ZoeDepth network, read from its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The BEiT backbone.
    pub beit: BeitConfig,
    /// DPT fusion width (`features`, the bottleneck's too).
    pub features: usize,
    /// Width of the depth head's hidden map (32), the metric head's main input.
    pub head_hidden: usize,
    /// Bin embedding width.
    pub embedding: usize,
    /// Hidden width of the projectors.
    pub projector_hidden: usize,
    /// The bins heads: the `.pt`'s one at the top level, or one per domain under `bins.N.`
    /// with a [`Router`] to pick one.
    pub heads: Vec<BinsConfig>,
    /// The domain classifier of a multi-domain net.
    pub router: Option<RouterConfig>,
    /// `min_temp` and `max_temp` of the output distribution.
    pub temperature: (f64, f64),
}

impl Config {
    /// The configuration the tensor shapes of a published-layout file (`ZoeD_M12_N.pt`) imply.
    pub fn detect(shapes: &HashMap<String, Vec<usize>>) -> std::result::Result<Self, String> {
        let mut config = Config::detect_core(shapes)?;
        config.heads = vec![BinsConfig::detect(
            shapes,
            "",
            config.head_hidden,
            config.embedding,
        )?];
        Ok(config)
    }

    /// Everything but the bins heads (left empty) and the router.
    pub fn detect_core(shapes: &HashMap<String, Vec<usize>>) -> std::result::Result<Self, String> {
        let dim = |name: &str, i: usize| shape_dim(shapes, name, i);
        Ok(Config {
            beit: BeitConfig::detect(shapes, &format!("{CORE}pretrained."))?,
            features: dim(&format!("{CORE}scratch.layer1_rn.weight"), 0)?,
            head_hidden: dim(&format!("{CORE}scratch.output_conv.2.weight"), 0)?,
            embedding: dim("seed_projector._net.2.weight", 0)?,
            projector_hidden: dim("seed_projector._net.0.weight", 0)?,
            heads: Vec::new(),
            router: None,
            temperature: (MIN_TEMP, MAX_TEMP),
        })
    }
}

/// Two 1x1 convolutions with a ReLU between (`_net.0`, `_net.2`): the projectors, and the
/// regressor and attractors before their softplus.
#[derive(Debug)]
struct Mlp {
    a: Conv2d,
    b: Conv2d,
}

impl Mlp {
    fn new(vb: VarBuilder, cin: usize, hidden: usize, cout: usize) -> candle_core::Result<Self> {
        let one = Conv2dConfig::default();
        Ok(Mlp {
            a: conv2d(cin, hidden, 1, one, vb.pp("_net.0"))?,
            b: conv2d(hidden, cout, 1, one, vb.pp("_net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.b.forward(&self.a.forward(x)?.relu()?)
    }
}

/// torch's `Softplus()` (beta 1, threshold 20), written without overflow.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// torch's bilinear resize with corners aligned of `[B, C, H, W]`.
fn resize_aligned(x: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
    interpolate_axis(&interpolate_axis(x, 2, h, true)?, 3, w, true)
}

/// One metric-bins head: the seed bin regressor, the attractors and the log-binomial output.
#[derive(Debug)]
struct Bins {
    seed: Mlp,
    attractors: Vec<Mlp>,
    binomial: [Conv2d; 2],
    bins: usize,
    relative: bool,
}

impl Bins {
    fn new(vb: VarBuilder, cfg: &BinsConfig, net: &Config) -> candle_core::Result<Self> {
        let (f, e) = (net.features, net.embedding);
        let one = Conv2dConfig::default();
        let binomial_in = net.head_hidden + usize::from(cfg.relative) + e;
        Ok(Bins {
            seed: Mlp::new(vb.pp("seed_bin_regressor"), f, cfg.seed_hidden, cfg.bins)?,
            attractors: cfg
                .attractors
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    Mlp::new(vb.pp(format!("attractors.{i}")), e, cfg.attractor_hidden, n)
                })
                .collect::<candle_core::Result<_>>()?,
            binomial: [
                conv2d(
                    binomial_in,
                    cfg.binomial_hidden,
                    1,
                    one,
                    vb.pp("conditional_log_binomial.mlp.0"),
                )?,
                conv2d(
                    cfg.binomial_hidden,
                    4,
                    1,
                    one,
                    vb.pp("conditional_log_binomial.mlp.2"),
                )?,
            ],
            bins: cfg.bins,
            relative: cfg.relative,
        })
    }
}

/// What the processor makes of a padded image before the net: reflect padding by
/// `int(sqrt(side / 2) * 3)` per axis (`pad`), a bilinear resize with corners aligned to `size`
/// (`(height, width)`; with `keep_aspect_ratio` the one scale of the two nearer to 1) with each
/// side rounded half to even to a multiple of `multiple`, `(x - mean) / std` per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Processor {
    /// `(height, width)` aimed at.
    pub size: (usize, usize),
    /// `ensure_multiple_of`.
    pub multiple: usize,
    /// `keep_aspect_ratio`.
    pub keep_aspect_ratio: bool,
    /// `do_pad`: the reflect padding (cropped off the depth again).
    pub pad: bool,
    /// `image_mean`.
    pub mean: [f32; 3],
    /// `image_std`.
    pub std: [f32; 3],
}

impl Processor {
    /// The `infer` config's core input: `Resize(512, 384, keep_aspect_ratio=True,
    /// ensure_multiple_of=32, resize_method="minimal")` and `(x - 0.5) / 0.5`, after the padding.
    pub const INFER: Processor = Processor {
        size: (384, 512),
        multiple: 32,
        keep_aspect_ratio: true,
        pad: true,
        mean: [0.5; 3],
        std: [0.5; 3],
    };

    /// The rows and columns of reflect padding of an `h x w` image.
    pub fn padding(&self, h: usize, w: usize) -> (usize, usize) {
        if !self.pad {
            return (0, 0);
        }
        let pad = |side: usize| ((side as f64 / 2.0).sqrt() * PAD_FACTOR) as usize;
        (pad(h), pad(w))
    }

    /// The net's input size `(height, width)` for an `h x w` (padded) image.
    pub fn net_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (mut sh, mut sw) = (self.size.0 as f64 / h as f64, self.size.1 as f64 / w as f64);
        if self.keep_aspect_ratio {
            let scale = if (1.0 - sw).abs() < (1.0 - sh).abs() {
                sw
            } else {
                sh
            };
            (sh, sw) = (scale, scale);
        }
        let m = self.multiple.max(1) as f64;
        let fit = |x: f64| ((x / m).round_ties_even() * m) as usize;
        (fit(sh * h as f64), fit(sw * w as f64))
    }
}

/// How the detector runs the net.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `ZoeDepth.infer` as the pack ran the `.pt`: pixels / 255, [`Processor::INFER`], the
    /// run averaged with the horizontally flipped one; the metric depth straight to the map.
    Infer,
    /// Today's pack's transformers pipeline: pixels times `rescale`, the processor, one run, the
    /// depth min-max to uint8 (truncated) before the map's percentiles.
    Pipeline {
        /// The image processor.
        processor: Processor,
        /// `rescale_factor` (1/255), in f32 as torch multiplies by it.
        rescale: f32,
    },
}

/// A ZoeDepth network.
#[derive(Debug)]
pub struct Zoe {
    config: Config,
    beit: Beit,
    refine: Refine,
    out: DepthOut,
    bottleneck: Conv2d,
    seed_projector: Mlp,
    projectors: Vec<Mlp>,
    heads: Vec<Bins>,
    router: Option<Router>,
    call: Call,
    device: Device,
}

impl Zoe {
    /// Builds the net from `vb` (the published names; with a router, the heads under `bins.N.`
    /// and the router under `router.`), called as [`Call::Infer`].
    pub fn new(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let cfg = config;
        let f = cfg.features;
        let e = cfg.embedding;
        let core = vb.pp("core.core");
        let scratch = core.pp("scratch");
        let heads = match &cfg.router {
            None => vec![Bins::new(vb.clone(), single_head(cfg)?, cfg)?],
            Some(_) => cfg
                .heads
                .iter()
                .enumerate()
                .map(|(i, head)| Bins::new(vb.pp(format!("bins.{i}")), head, cfg))
                .collect::<candle_core::Result<_>>()?,
        };
        Ok(Zoe {
            beit: Beit::new(core.pp("pretrained"), &cfg.beit)?,
            refine: Refine::new(scratch.clone(), cfg.beit.readout, f)?,
            out: DepthOut::new(
                [
                    scratch.pp("output_conv.0"),
                    scratch.pp("output_conv.2"),
                    scratch.pp("output_conv.4"),
                ],
                f,
                cfg.head_hidden,
            )?,
            bottleneck: conv2d(f, f, 1, Conv2dConfig::default(), vb.pp("conv2"))?,
            seed_projector: Mlp::new(vb.pp("seed_projector"), f, cfg.projector_hidden, e)?,
            projectors: (0..4)
                .map(|i| Mlp::new(vb.pp(format!("projectors.{i}")), f, cfg.projector_hidden, e))
                .collect::<candle_core::Result<_>>()?,
            heads,
            router: cfg
                .router
                .as_ref()
                .map(|r| Router::new(vb.pp("router"), r))
                .transpose()?,
            call: Call::Infer,
            device: vb.device().clone(),
            config: config.clone(),
        })
    }

    /// The same net called as `call`.
    pub fn with_call(self, call: Call) -> Self {
        Zoe { call, ..self }
    }

    /// Reads a published-layout file (`ZoeD_M12_N.pt`), or transformers' layout
    /// (`Intel/zoedepth-nyu-kitti`, through [`super::zoe_hf`]), in f32 onto `device`.
    pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<Self, LoadError> {
        if super::zoe_hf::is_hf_layout(sd.shapes()) {
            return super::zoe_hf::load(sd, device);
        }
        load_published(sd, device, Config::detect, Zoe::new)
    }

    /// Its shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How the detector runs it.
    pub fn call(&self) -> &Call {
        &self.call
    }

    /// The metric depth `[B, 1, H, W]` of `[B, 3, H, W]` normalised pixels (sides multiples of
    /// 32): `ZoeDepth.forward`'s `metric_depth`, through the head the router votes for.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.forward_domain(x, None)?.0)
    }

    /// The metric depth through head `domain` (`None`: the one the router votes for, or the only
    /// one), and the router's domain logits `[B, domains]` where there is a router.
    pub fn forward_domain(
        &self,
        x: &Tensor,
        domain: Option<usize>,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (_, _, h, w) = x.dims4()?;
        let maps = self.beit.forward(x)?;
        let RefinePaths { layer4_rn, paths } = self.refine.forward_paths(&maps)?;
        let (_, _, ph, pw) = paths[3].dims4()?;
        let (hidden, rel_depth) = self.out.forward_hidden(&paths[3], (2 * ph, 2 * pw))?;
        let (_, _, lh, lw) = hidden.dims4()?;

        let bottleneck = self.bottleneck.forward(&layer4_rn)?;
        let logits = self
            .router
            .as_ref()
            .map(|r| r.logits(&bottleneck))
            .transpose()?;
        let index = match (domain, &logits) {
            (Some(d), _) => d,
            (None, Some(logits)) => vote(logits)?,
            (None, None) => 0,
        };
        let head = self.heads.get(index).ok_or_else(|| {
            candle_core::Error::Msg(format!("no bins head {index} of {}", self.heads.len()))
        })?;

        let mut centres = softplus(&head.seed.forward(&bottleneck)?)?;
        let mut prev_embedding = self.seed_projector.forward(&bottleneck)?;
        let mut embedding = prev_embedding.clone();
        for ((projector, attractor), x) in self.projectors.iter().zip(&head.attractors).zip(&paths)
        {
            embedding = projector.forward(x)?;
            let (_, _, eh, ew) = embedding.dims4()?;
            let input = (&embedding + resize_aligned(&prev_embedding, eh, ew)?)?;
            // points [B, A, 1, h, w] against centres [B, 1, bins, h, w]
            let points = softplus(&attractor.forward(&input)?)?.unsqueeze(2)?;
            let b_prev = resize_aligned(&centres, eh, ew)?;
            let dx = points.broadcast_sub(&b_prev.unsqueeze(1)?)?;
            let pull = (&dx / ((dx.sqr()? * ALPHA)? + 1.0)?)?.mean(1)?;
            centres = (b_prev + pull)?;
            prev_embedding = embedding.clone();
        }

        let embedding = resize_aligned(&embedding, lh, lw)?;
        let main = if head.relative {
            Tensor::cat(
                &[&hidden, &resize_aligned(&rel_depth, lh, lw)?, &embedding],
                1,
            )?
        } else {
            Tensor::cat(&[&hidden, &embedding], 1)?
        };
        let probs = self.log_binomial(head, &main)?;
        let centres = resize_aligned(&centres, lh, lw)?;
        let depth = (probs * centres)?.sum_keepdim(1)?;
        debug_assert_eq!(depth.dims4()?, (x.dim(0)?, 1, h, w));
        Ok((depth, logits))
    }

    /// `ConditionalLogBinomial`: the MLP's two pairs of softplus outputs give the binomial's `p`
    /// and its temperature; the softmax over the bins of its log probabilities / temperature.
    fn log_binomial(&self, head: &Bins, x: &Tensor) -> candle_core::Result<Tensor> {
        let pt = softplus(&head.binomial[1].forward(&head.binomial[0].forward(x)?.gelu_erf()?)?)?;
        let pt = (pt + P_EPS)?;
        let ratio = |i: usize| -> candle_core::Result<Tensor> {
            let a = pt.narrow(1, i, 1)?;
            &a / (&a + pt.narrow(1, i + 1, 1)?)?
        };
        let p = ratio(0)?;
        let (min_temp, max_temp) = self.config.temperature;
        let t = ((ratio(2)? * (max_temp - min_temp))? + min_temp)?;
        let bins = head.bins;
        let dev = x.device();
        // log C(K-1, k) by Stirling, as `log_binom` (in f32, as torch has it)
        let eps = BINOM_EPS as f32;
        let n = (bins - 1) as f32 + eps;
        let coeffs: Vec<f32> = (0..bins)
            .map(|k| {
                let k = k as f32 + eps;
                n * n.ln() - k * k.ln() - (n - k) * (n - k + eps).ln()
            })
            .collect();
        let shape = (1, bins, 1, 1);
        let log_binom = Tensor::from_vec(coeffs, shape, dev)?;
        let k = Tensor::arange(0u32, bins as u32, dev)?
            .to_dtype(x.dtype())?
            .reshape(shape)?;
        let rest = ((k.neg()? + (bins - 1) as f64)?).reshape(shape)?;
        let log_p = p.clamp(P_EPS, 1.0)?.log()?;
        let log_q = (p.neg()? + 1.0)?.clamp(P_EPS, 1.0)?.log()?;
        let y = log_binom
            .broadcast_add(&k.broadcast_mul(&log_p)?)?
            .broadcast_add(&rest.broadcast_mul(&log_q)?)?
            .broadcast_div(&t)?;
        candle_nn::ops::softmax(&y, 1)
    }

    /// One padded run on `[1, 3, H, W]` rescaled pixels: the processor's padding, resize and
    /// normalisation, the net, bicubic back to the padded size, the padding cropped.
    fn infer_padded(&self, x: &Tensor, processor: &Processor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (input, (pad_h, pad_w)) = core_input(x, processor)?;
        let (xh, xw) = (h + 2 * pad_h, w + 2 * pad_w);
        let depth = self.forward(&input)?;
        let depth = if depth.dims()[2..] == [xh, xw] {
            depth
        } else {
            common_upscale(&depth, xw, xh, UpscaleMethod::Bicubic, Crop::Disabled)?
        };
        depth.narrow(2, pad_h, h)?.narrow(3, pad_w, w)?.contiguous()
    }

    /// `ZoeDepth.infer` (pad and flip augmentation) on `[1, 3, H, W]` pixels in 0..1: the
    /// metric depth `[1, 1, H, W]`.
    pub fn infer(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = x.dim(3)?;
        let flip = Tensor::from_vec((0..w as u32).rev().collect::<Vec<_>>(), w, x.device())?;
        let out = self.infer_padded(x, &Processor::INFER)?;
        let flipped = self.infer_padded(&x.index_select(&flip, 3)?, &Processor::INFER)?;
        (out + flipped.index_select(&flip, 3)?)? / 2.0
    }

    /// The metric depth `[H, W]` of a uint8 RGB image as the call has it: `image / 255` and
    /// [`Zoe::infer`], or the pipeline's rescale and one padded run.
    pub fn infer_image(&self, img: &ImageU8) -> Result<Tensor> {
        let (h, w) = (img.height, img.width);
        let pixels = image_tensor(OP, &hwc3(img), &self.device)?;
        match &self.call {
            Call::Infer => (pixels / 255.0).and_then(|x| self.infer(&x)),
            Call::Pipeline { processor, rescale } => {
                (pixels * f64::from(*rescale)).and_then(|x| self.infer_padded(&x, processor))
            }
        }
        .and_then(|d| d.reshape((h, w)))
        .map_err(|source| PreprocessError::Candle { op: OP, source })
    }

    /// `ZoeDetector.__call__` on one uint8 image: the depth (the pipeline's: min-max to uint8
    /// levels first) between its 2nd and 85th percentiles, inverted, to uint8 (three channels),
    /// at the resolution, pad removed.
    pub fn detect(&self, img: &ImageU8, resolution: u32) -> Result<ImageU8> {
        let padded =
            resize_image_with_pad(OP, img, detect_resolution(resolution), Interpolation::Cubic)?;
        let depth = self.infer_image(&padded.image)?;
        let (h, w, mut values) = map_values(OP, &depth)?;
        if matches!(self.call, Call::Pipeline { .. }) {
            values = min_max_levels(&values);
        }
        let mut sorted = values.clone();
        sorted.sort_by(f32::total_cmp);
        let lo = percentile(&sorted, 2.0);
        let range = percentile(&sorted, 85.0) - lo;
        // numpy in f32: d -= vmin; d /= vmax - vmin; 1 - d; * 255, clipped, truncated
        let scaled: Vec<f32> = values
            .iter()
            .map(|&v| (1.0 - (v - lo) / range) * 255.0)
            .collect();
        Ok(padded.remove_pad(&hwc3(&u8_from_clipped(h, w, &scaled))))
    }
}

/// The one bins head of a net without a router.
fn single_head(cfg: &Config) -> candle_core::Result<&BinsConfig> {
    match cfg.heads.as_slice() {
        [head] => Ok(head),
        heads => candle_core::bail!("{} bins heads and no domain router", heads.len()),
    }
}

/// The domain the batch votes for: the largest of the logits summed over the batch (the softmax
/// keeps the order; the first on a tie, as `torch.argmax`).
fn vote(logits: &Tensor) -> candle_core::Result<usize> {
    let sums: Vec<f32> = logits.sum(0)?.to_vec1()?;
    Ok(sums
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0)
}

/// The depth-estimation pipeline's image: `(d - min) / (max - min)` in f32, `* 255`, truncated
/// to uint8 (as f32 levels again, as the pack reads it back).
pub fn min_max_levels(values: &[f32]) -> Vec<f32> {
    let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    values
        .iter()
        .map(|&v| f32::from(((v - lo) / (hi - lo) * 255.0) as u8))
        .collect()
}

/// What the net sees of `[1, 3, H, W]` rescaled pixels: the processor's reflect padding, its
/// bilinear resize (corners aligned) to [`Processor::net_size`] and normalisation. Returns it
/// with the padding `(rows, columns)`.
pub fn core_input(
    x: &Tensor,
    processor: &Processor,
) -> candle_core::Result<(Tensor, (usize, usize))> {
    let (_, _, h, w) = x.dims4()?;
    let (pad_h, pad_w) = processor.padding(h, w);
    let x = reflect_pad_hw(x, pad_h, pad_w)?;
    let (nh, nw) = processor.net_size(h + 2 * pad_h, w + 2 * pad_w);
    if nh == 0 || nw == 0 {
        candle_core::bail!("a {h}x{w} image is too small for the processor's resize");
    }
    let channel = |v: [f32; 3]| Tensor::from_vec(v.to_vec(), (1, 3, 1, 1), x.device());
    let input = resize_aligned(&x, nh, nw)?
        .broadcast_sub(&channel(processor.mean)?)?
        .broadcast_div(&channel(processor.std)?)?;
    Ok((input, (pad_h, pad_w)))
}

/// `np.percentile(values, q)` (linear method) of ascending f32 `sorted` values: the index in f64,
/// the interpolation in f32 as numpy does it (from the upper neighbour past the midpoint).
pub fn percentile(sorted: &[f32], q: f64) -> f32 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f32::NAN;
    };
    let at = last as f64 * (q / 100.0);
    let below = (at.floor() as usize).min(last);
    let above = (below + 1).min(last);
    let t = at - below as f64;
    let (a, b) = (sorted[below], sorted[above]);
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t) as f32
    } else {
        a + diff * t as f32
    }
}

/// The `Zoe-DepthMapPreprocessor` node's result for an IMAGE `[B, H, W, C]` (0..1): each image
/// through [`Zoe::detect`] as `common_annotator_call` runs it.
pub fn zoe(model: &Zoe, image: &Tensor, resolution: u32) -> Result<Tensor> {
    run_aux(OP, image, |img| model.detect(img, resolution))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_size_follows_the_minimal_rule() {
        // 512 padded by 48: both sides 608, the width's scale (0.84) is nearer to 1
        let net_size = |h, w| Processor::INFER.net_size(h, w);
        assert_eq!(net_size(608, 608), (512, 512));
        // the fixtures' cases (torch: 384x384 and 288x512)
        assert_eq!(net_size(176, 176), (384, 384));
        assert_eq!(net_size(96, 176), (288, 512));
        // the HF fixture's processor (192x256): 192x192 and 128x256
        let half = Processor {
            size: (192, 256),
            ..Processor::INFER
        };
        assert_eq!(half.net_size(176, 176), (192, 192));
        assert_eq!(half.net_size(96, 176), (128, 256));
    }

    #[test]
    fn percentile_is_numpy_linear() {
        let v: Vec<f32> = (0..11).map(|i| i as f32 * 0.5).collect();
        // np.percentile(np.arange(11) * 0.5, [2, 85]) = 0.1, 4.25
        assert!((percentile(&v, 2.0) - 0.1).abs() < 1e-6);
        assert!((percentile(&v, 85.0) - 4.25).abs() < 1e-6);
    }
}
