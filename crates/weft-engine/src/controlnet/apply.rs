//! How ControlNet residuals are scaled, timed and combined, following ComfyUI's `comfy/controlnet.py`
//! (`ControlBase.control_merge`, `get_control`'s timestep range) and its `ControlNetApply*` nodes.
//!
//! - strength multiplies every residual (ComfyUI's default), or follows "soft injection"
//!   (lllyasviel's guess mode, A1111's "ControlNet is more important"): down residual `k` of `n`
//!   gets `strength * 0.825^(n - k)` and the mid residual `strength`, so for SD1 (n = 12) the
//!   familiar `0.825^(12 - k)`.
//! - shuffle ControlNets average every residual over space (ComfyUI turns this on for files named
//!   `*_shuffle`).
//! - several ControlNets on one cond sum their residuals.
//! - a control applies only while the sampling position is inside its [start, end] window.
//! - [`AppliedControl`]: one loaded control with its hint, strength and window, as the sampler
//!   evaluates it (ComfyUI's `ControlNet`, `T2IAdapter` and `ControlLora` objects): ControlNets run
//!   every step; T2I-Adapter features are computed once per hint and latent size and added inside
//!   the encoder; Control-LoRAs are built on the sampled model's weights, once per model.

use crate::device::to_compute;
use std::sync::{Arc, Mutex};

use candle_core::{Result, Tensor};

use crate::controlnet::adapter::{self, T2IAdapter};
use crate::controlnet::load::{ControlModel, LoadedControl};
use crate::controlnet::{check_compatible, ControlNetModel};
use crate::diffusion::{ControlHint, DiffusionModel};
use crate::resize::{common_upscale, Crop, UpscaleMethod};
use crate::unet::{ControlResiduals, EncoderAdditions, UNetControl};

/// The base of soft-injection scaling (lllyasviel `cldm`: `0.825 ** (12 - i)`).
pub const SOFT_INJECTION_BASE: f64 = 0.825;

/// How the strength is spread over the residuals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ControlScaling {
    /// Every residual times the strength (ComfyUI).
    Constant,
    /// Down residual `k` of `n` times `strength * base^(n - k)`, mid times `strength`.
    Soft {
        /// The per-residual factor ([`SOFT_INJECTION_BASE`] in lllyasviel's code).
        base: f64,
    },
}

/// The factor for each of `n_down` down residuals and for the mid residual.
pub fn residual_scales(n_down: usize, strength: f64, scaling: ControlScaling) -> (Vec<f64>, f64) {
    match scaling {
        ControlScaling::Constant => (vec![strength; n_down], strength),
        ControlScaling::Soft { base } => (
            (0..n_down)
                .map(|k| strength * base.powi((n_down - k) as i32))
                .collect(),
            strength,
        ),
    }
}

/// The residuals times the strength (see [`residual_scales`]), in their own dtype.
pub fn scale_residuals(
    residuals: &ControlResiduals,
    strength: f64,
    scaling: ControlScaling,
) -> Result<ControlResiduals> {
    let (down_scales, mid_scale) = residual_scales(residuals.down.len(), strength, scaling);
    let down = residuals
        .down
        .iter()
        .zip(down_scales)
        .map(|(t, s)| t.affine(s, 0.0))
        .collect::<Result<Vec<_>>>()?;
    Ok(ControlResiduals {
        down,
        mid: residuals.mid.affine(mid_scale, 0.0)?,
    })
}

/// Replaces every residual by its spatial mean, broadcast back to its size (ComfyUI's
/// `global_average_pooling`, used by shuffle ControlNets).
pub fn global_average_pool(residuals: &ControlResiduals) -> Result<ControlResiduals> {
    let pool = |t: &Tensor| -> Result<Tensor> {
        let (b, c, h, w) = t.dims4()?;
        t.mean_keepdim(3)?
            .mean_keepdim(2)?
            .broadcast_as((b, c, h, w))?
            .contiguous()
    };
    Ok(ControlResiduals {
        down: residuals.down.iter().map(pool).collect::<Result<_>>()?,
        mid: pool(&residuals.mid)?,
    })
}

/// Whether a control with window [`start`, `end`] (fractions of the schedule, ComfyUI's
/// `start_percent`/`end_percent`) applies at `sigma_percent`, the schedule position of the current
/// sigma (0 = first, 1 = last). Both ends are inclusive, as ComfyUI's sigma comparison is.
///
/// ComfyUI compares sigmas, not percents: it turns the window into sigmas with the model's
/// `percent_to_sigma` and skips the control when `sigma > sigma(start)` or `sigma < sigma(end)`;
/// [`active_at_sigma`] does exactly that when the caller has those sigmas.
pub fn active_at(sigma_percent: f64, start: f64, end: f64) -> bool {
    start <= sigma_percent && sigma_percent <= end
}

/// ComfyUI's test in sigma space: active while `sigma_end <= sigma <= sigma_start`, where
/// `sigma_start = percent_to_sigma(start)` (huge for start 0) and `sigma_end =
/// percent_to_sigma(end)` (0 for end 1).
pub fn active_at_sigma(sigma: f64, sigma_start: f64, sigma_end: f64) -> bool {
    !(sigma > sigma_start || sigma < sigma_end)
}

/// Resizes a hint image [B, C, H, W] (values in [0, 1]) to `ratio` times the latent size the way
/// ComfyUI's `get_control` does: nearest-exact, center crop to the target aspect first. ControlNets
/// use ratio 8.
pub fn prepare_hint(
    image: &Tensor,
    latent_h: usize,
    latent_w: usize,
    ratio: usize,
) -> Result<Tensor> {
    let (h, w) = (latent_h * ratio, latent_w * ratio);
    let (_, _, ih, iw) = image.dims4()?;
    if (ih, iw) == (h, w) {
        return Ok(image.clone());
    }
    common_upscale(image, w, h, UpscaleMethod::NearestExact, Crop::Center)
}

/// How strongly and when an [`AppliedControl`] acts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlTiming {
    /// Multiplies every residual or feature.
    pub strength: f64,
    /// Active while `sigma_end <= sigma <= sigma_start` (see [`active_at_sigma`]).
    pub sigma_start: f64,
    /// Lowest sigma at which the control acts (`percent_to_sigma(end_percent)`; 0 for end 1).
    pub sigma_end: f64,
}

/// A control applied to conditioning: the loaded model, its hint image, strength and window.
/// Share one between every entry it was applied to (ComfyUI shares one control object between
/// the positive and negative lists), so adapter features are computed once for all of them.
#[derive(Debug)]
pub struct AppliedControl {
    control: Arc<LoadedControl>,
    /// `[B, C, H, W]` in 0..1, as given; resized to the latent when used.
    hint: Tensor,
    timing: ControlTiming,
    /// Where the control was applied, to start error messages with (for example "control_net of
    /// node '12' (ControlNetApplyAdvanced)").
    origin: String,
    /// T2I-Adapter features for the last latent size.
    features: Mutex<Option<AdapterFeatures>>,
}

#[derive(Debug)]
struct AdapterFeatures {
    latent_size: (usize, usize),
    /// One per adapter level, for the hint's own batch, unscaled.
    features: Vec<Tensor>,
}

impl AppliedControl {
    /// Applies `control` with `hint` (`[B, C, H, W]`, values in 0..1, any size) and `timing`;
    /// `origin` prefixes its error messages (for example "control_net of node '12'").
    pub fn new(
        control: Arc<LoadedControl>,
        hint: Tensor,
        timing: ControlTiming,
        origin: impl Into<String>,
    ) -> Self {
        AppliedControl {
            control,
            hint,
            timing,
            origin: origin.into(),
            features: Mutex::new(None),
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> candle_core::Error {
        candle_core::Error::Msg(format!("{}: {message}", self.origin))
    }

    /// A ControlNet's scaled residuals for `x_in`.
    fn controlnet_residuals(
        &self,
        net: &ControlNetModel,
        x_in: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
    ) -> Result<ControlResiduals> {
        let (batch, _, h, w) = x_in.dims4()?;
        let hint = prepare_hint(&self.hint, h, w, net.config().hint_downscale())?;
        let hint = to_compute(&repeat_to_batch(&hint, batch)?, x_in.device(), net.dtype())?;
        let raw = net.forward_typed(
            &x_in.to_dtype(net.dtype())?,
            timesteps,
            &context.to_dtype(net.dtype())?,
            y,
            &hint,
            self.control.control_type,
        )?;
        let raw = if self.control.global_average_pooling {
            global_average_pool(&raw)?
        } else {
            raw
        };
        scale_residuals(&raw, self.timing.strength, ControlScaling::Constant)
    }

    /// A T2I-Adapter's scaled encoder additions for a latent batch of `batch` x `h` x `w`. The
    /// features are computed on the first call for a latent size and reused (ComfyUI keeps
    /// `control_input` until the hint size changes).
    fn adapter_additions(
        &self,
        adapter: &T2IAdapter,
        batch: usize,
        h: usize,
        w: usize,
        model: &DiffusionModel,
    ) -> Result<EncoderAdditions> {
        let features = {
            let mut cache = self.features.lock().unwrap_or_else(|e| e.into_inner());
            match cache.as_ref() {
                Some(c) if c.latent_size == (h, w) => c.features.clone(),
                _ => {
                    let (hint_h, hint_w) = adapter.hint_size(h, w);
                    let (_, _, ih, iw) = self.hint.dims4()?;
                    let hint = if (ih, iw) == (hint_h, hint_w) {
                        self.hint.clone()
                    } else {
                        common_upscale(
                            &self.hint,
                            hint_w,
                            hint_h,
                            UpscaleMethod::NearestExact,
                            Crop::Center,
                        )?
                    };
                    let features = adapter.forward(&hint.to_device(model.unet.device())?)?;
                    *cache = Some(AdapterFeatures {
                        latent_size: (h, w),
                        features: features.clone(),
                    });
                    features
                }
            }
        };
        let features = features
            .iter()
            .map(|f| repeat_to_batch(f, batch))
            .collect::<Result<Vec<_>>>()?;
        let unet = &model.unet;
        adapter
            .residuals(&features, unet.num_skips(), unet.config().layers_per_block)?
            .scaled(self.timing.strength)
    }
}

impl ControlHint for AppliedControl {
    fn control(
        &self,
        x_in: &Tensor,
        timesteps: &Tensor,
        sigma: f64,
        context: &Tensor,
        y: Option<&Tensor>,
        model: &DiffusionModel,
    ) -> Result<Option<UNetControl>> {
        let timing = &self.timing;
        if !active_at_sigma(sigma, timing.sigma_start, timing.sigma_end) {
            return Ok(None);
        }
        let unet = &model.unet;
        let control = match self.control.model.as_ref() {
            ControlModel::ControlNet(net) => {
                check_compatible(net.config(), unet.config()).map_err(|e| self.error(e))?;
                UNetControl {
                    residuals: Some(self.controlnet_residuals(net, x_in, timesteps, context, y)?),
                    encoder: None,
                }
            }
            ControlModel::ControlLora(lora) => {
                lora.check_compatible(unet.config())
                    .map_err(|e| self.error(e))?;
                let weights = model.weights.as_ref().ok_or_else(|| {
                    self.error("the model keeps no weights to build the control-lora on")
                })?;
                let net = lora
                    .for_model(weights, unet.config(), unet.dtype(), unet.device())
                    .map_err(|e| self.error(e))?;
                UNetControl {
                    residuals: Some(self.controlnet_residuals(&net, x_in, timesteps, context, y)?),
                    encoder: None,
                }
            }
            ControlModel::Adapter(adapter) => {
                adapter::check_compatible(adapter.config(), unet.config())
                    .map_err(|e| self.error(e))?;
                let (batch, _, h, w) = x_in.dims4()?;
                UNetControl {
                    residuals: None,
                    encoder: Some(self.adapter_additions(adapter, batch, h, w, model)?),
                }
            }
        };
        Ok(Some(control))
    }
}

/// Repeats a batch to cover `batch` items, as ComfyUI's `broadcast_image_to` does (whole copies,
/// then a part; a longer batch is cut).
fn repeat_to_batch(t: &Tensor, batch: usize) -> Result<Tensor> {
    let own = t.dim(0)?;
    if own == batch {
        return Ok(t.clone());
    }
    if own == 0 {
        candle_core::bail!("empty hint batch");
    }
    t.repeat((batch.div_ceil(own), 1, 1, 1))?
        .narrow(0, 0, batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_scales_follow_cldm_guess_mode() {
        let (down, mid) = residual_scales(
            12,
            1.0,
            ControlScaling::Soft {
                base: SOFT_INJECTION_BASE,
            },
        );
        for (k, s) in down.iter().enumerate() {
            assert!((s - 0.825f64.powi(12 - k as i32)).abs() < 1e-12);
        }
        assert_eq!(mid, 1.0);
        let (down, mid) = residual_scales(9, 0.5, ControlScaling::Constant);
        assert_eq!(down, vec![0.5; 9]);
        assert_eq!(mid, 0.5);
    }

    #[test]
    fn window_is_inclusive() {
        assert!(active_at(0.0, 0.0, 1.0));
        assert!(active_at(1.0, 0.0, 1.0));
        assert!(active_at(0.5, 0.5, 0.5));
        assert!(!active_at(0.49, 0.5, 1.0));
        assert!(!active_at(0.81, 0.0, 0.8));
        assert!(active_at_sigma(14.6, 1e9, 0.0));
        assert!(!active_at_sigma(14.6, 10.0, 0.0));
        assert!(!active_at_sigma(0.5, 10.0, 1.0));
        assert!(active_at_sigma(1.0, 10.0, 1.0));
    }

    /// A tiny SD1 model and a full adapter for it, both with synthetic weights.
    fn tiny_model_and_adapter() -> (DiffusionModel, Arc<LoadedControl>) {
        use crate::controlnet::adapter::{AdapterKind, T2IAdapterConfig};
        use crate::load::detect::{ModelFamily, Prediction};
        use crate::synth::synth_var_builder;
        use crate::unet::{AttentionHeads, UNet2DConditionModel, UNetConfig};
        use candle_core::{DType, Device};
        let unet = UNetConfig {
            block_out_channels: vec![32, 64, 64],
            transformer_depth: vec![1, 1, 0],
            heads: AttentionHeads::PerLevel(vec![8, 8, 8]),
            context_dim: 48,
            ..UNetConfig::sd15()
        };
        let vb = || synth_var_builder(DType::F32, &Device::Cpu);
        let unet = UNet2DConditionModel::new(vb(), &unet).unwrap();
        let model = DiffusionModel::new(unet, ModelFamily::Sd1, Prediction::Epsilon, 0);
        let cfg = T2IAdapterConfig {
            kind: AdapterKind::Full,
            hint_channels: 3,
            channels: vec![32, 64, 64],
            num_res_blocks: 2,
            kernel_size: 1,
        };
        let control = LoadedControl::new(
            ControlModel::Adapter(T2IAdapter::new(vb(), &cfg).unwrap()),
            false,
        );
        (model, Arc::new(control))
    }

    #[test]
    fn adapter_features_are_computed_once_per_latent_size() {
        let (model, control) = tiny_model_and_adapter();
        let dev = candle_core::Device::Cpu;
        let hint = Tensor::full(0.5f32, (1, 3, 40, 48), &dev).unwrap();
        let timing = ControlTiming {
            strength: 0.5,
            sigma_start: 100.0,
            sigma_end: 1.0,
        };
        let applied = AppliedControl::new(control, hint, timing, "test");
        let x = Tensor::ones((2, 4, 8, 8), candle_core::DType::F32, &dev).unwrap();
        let t = Tensor::new(&[500f32, 500.0], &dev).unwrap();
        let ctx = Tensor::zeros((2, 4, 48), candle_core::DType::F32, &dev).unwrap();
        let eval = |x: &Tensor, sigma: f64| {
            applied
                .control(x, &t, sigma, &ctx, None, &model)
                .unwrap()
                .map(|c| c.encoder.expect("adapters add to the encoder"))
        };
        let max = |a: &EncoderAdditions| {
            let mut m = 0f32;
            for t in a.input.iter().flatten() {
                m = m.max(
                    t.abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar()
                        .unwrap(),
                );
            }
            m
        };
        // Outside the window: nothing.
        assert!(eval(&x, 0.5).is_none());
        let first = eval(&x, 10.0).unwrap();
        assert_eq!(first.input.len(), model.unet.num_skips());
        // Feature i after the last resnet of level i, for the whole batch.
        let placed: Vec<usize> = (0..first.input.len())
            .filter(|&k| first.input[k].is_some())
            .collect();
        assert_eq!(placed, vec![2, 5, 8]);
        assert_eq!(first.input[2].as_ref().unwrap().dims(), &[2, 32, 8, 8]);
        assert!(first.mid.is_none());
        assert!(max(&first) > 0.0);
        // Reused: zeroing the cache zeroes what is added at the same size...
        {
            let mut cache = applied.features.lock().unwrap();
            let cached = cache.as_mut().unwrap();
            assert_eq!(cached.latent_size, (8, 8));
            cached.features = cached
                .features
                .iter()
                .map(|f| f.zeros_like().unwrap())
                .collect();
        }
        assert_eq!(max(&eval(&x, 5.0).unwrap()), 0.0);
        // ...and another latent size computes them again.
        let x16 = Tensor::ones((2, 4, 16, 16), candle_core::DType::F32, &dev).unwrap();
        assert!(max(&eval(&x16, 5.0).unwrap()) > 0.0);
    }
}
