//! Self-Attention Guidance (`comfy_extras/nodes_sag.py`): while the negative side is evaluated,
//! the first self-attention of the middle block records its probabilities; after CFG, the
//! negative prediction is blurred where that attention concentrates, noised back, run through
//! the model again, and the combined prediction moves away from the blurred run's result:
//! `denoised + (degraded - model(degraded + x - uncond)) * scale`.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor};

use crate::device::to_host;
use crate::diffusion::patches::{AttentionReplace, CfgArgs, PostCfg};
use crate::diffusion::DiffusionModel;

/// SAG's patch: the post-CFG hook, holding what its recording attention saw last.
#[derive(Debug)]
pub struct SelfAttentionGuidance {
    /// Guidance scale (`scale`).
    pub scale: f64,
    /// Sigma of the Gaussian blur (`blur_sigma`).
    pub blur_sigma: f64,
    /// `[B * heads, N, N]` probabilities of the last negative evaluation (ComfyUI's
    /// `attn_scores`, shared the same way between the two hooks).
    scores: Arc<Mutex<Option<Tensor>>>,
}

/// ComfyUI's `sag_threshold`: a token is blurred where the attention it receives, averaged over
/// heads and summed over queries, exceeds this.
const THRESHOLD: f64 = 1.0;

impl SelfAttentionGuidance {
    /// A patch with nothing recorded yet.
    pub fn new(scale: f64, blur_sigma: f64) -> Self {
        SelfAttentionGuidance {
            scale,
            blur_sigma,
            scores: Arc::default(),
        }
    }

    /// `model` with SAG patched in, as the SelfAttentionGuidance node does: the recording
    /// attention on the middle block's first transformer block for the negative side, the
    /// post-CFG hook, and the negative side evaluated even at cfg 1.
    pub fn patch(model: &DiffusionModel, scale: f64, blur_sigma: f64) -> DiffusionModel {
        let sag = Arc::new(Self::new(scale, blur_sigma));
        let recorder: Arc<dyn AttentionReplace> = Arc::new(RecordingAttention {
            scores: Arc::clone(&sag.scores),
        });
        model.patched(|p| {
            p.uncond_mid_first_self_attention = Some(recorder);
            p.post_cfg.push(sag);
            p.disable_cfg1_optimization = true;
        })
    }
}

#[derive(Debug)]
struct RecordingAttention {
    scores: Arc<Mutex<Option<Tensor>>>,
}

impl AttentionReplace for RecordingAttention {
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let (out, probabilities) = attention_with_probabilities(q, k, v, heads)?;
        let mut scores = self
            .scores
            .lock()
            .map_err(|_| candle_core::Error::Msg("SAG's attention record is poisoned".into()))?;
        *scores = Some(to_host(&probabilities)?);
        Ok(out)
    }
}

/// ComfyUI's `attention_basic_with_sim`: plain attention over `[B, N, heads * d]` tokens, the
/// scores and softmax in f32. Returns the output `[B, N, heads * d]` in `q`'s dtype and the
/// probabilities `[B * heads, N, M]`.
pub fn attention_with_probabilities(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> Result<(Tensor, Tensor)> {
    let (b, n, inner) = q.dims3()?;
    let d = inner / heads.max(1);
    let split = |t: &Tensor| -> Result<Tensor> {
        let m = t.dim(1)?;
        t.reshape((b, m, heads, d))?
            .transpose(1, 2)?
            .reshape((b * heads, m, d))?
            .to_dtype(DType::F32)
    };
    let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
    let scores = (qh.matmul(&kh.t()?.contiguous()?)? * (d as f64).powf(-0.5))?;
    let probabilities = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probabilities
        .matmul(&vh)?
        .reshape((b, heads, n, d))?
        .transpose(1, 2)?
        .reshape((b, n, inner))?
        .to_dtype(q.dtype())?;
    Ok((out, probabilities))
}

impl PostCfg for SelfAttentionGuidance {
    fn post_cfg(&self, args: &CfgArgs<'_>, denoised: Tensor) -> Result<Tensor> {
        // Without a negative side there is nothing to guide away from.
        let (Some(uncond), Some(eval)) = (args.uncond, args.eval_negative_at) else {
            return Ok(denoised);
        };
        let (_, _, h, w) = denoised.dims4()?;
        // ComfyUI skips latents too small for the blur's reflection padding.
        if h.min(w) <= 4 {
            return Ok(denoised);
        }
        let scores = self
            .scores
            .lock()
            .map_err(|_| candle_core::Error::Msg("SAG's attention record is poisoned".into()))?
            .clone()
            .ok_or_else(|| {
                candle_core::Error::Msg("SAG saw no attention from the negative side".into())
            })?;
        let degraded = blur_map(uncond, &scores, self.blur_sigma, THRESHOLD)?;
        let degraded_noised = ((&degraded + args.x)? - uncond)?;
        let sag = eval(&degraded_noised)?;
        denoised + ((degraded - sag)? * self.scale)?
    }
}

/// ComfyUI's `create_blur_map`: `x0` (`[B, C, h, w]`) blurred where the attention `attn`
/// (`[B * heads, N, N]`, N the middle block's tokens) marks it, left as it is elsewhere.
pub fn blur_map(x0: &Tensor, attn: &Tensor, sigma: f64, threshold: f64) -> Result<Tensor> {
    let (bh, hw1, hw2) = attn.dims3()?;
    let (b, _, lh, lw) = x0.dims4()?;
    if b == 0 || bh % b != 0 || hw1 == 0 {
        candle_core::bail!(
            "SAG's attention {:?} does not fit latents {:?}",
            attn.dims(),
            x0.dims()
        );
    }
    let attn = attn.reshape((b, bh / b, hw1, hw2))?;
    let mask = attn.mean(1)?.sum(1)?.gt(threshold)?.to_dtype(DType::F32)?;
    // The middle block's grid: the latent divided by the power of two nearest its downscale.
    let side = ((lh * lw) as f64 / hw1 as f64).sqrt().ceil() as u64;
    let ratio = 1usize << (u64::BITS - side.saturating_sub(1).leading_zeros());
    let (mh, mw) = (lh.div_ceil(ratio), lw.div_ceil(ratio));
    if mh * mw != hw2 {
        candle_core::bail!("SAG cannot lay {hw2} attention tokens over a {mh}x{mw} grid");
    }
    let mask = mask.reshape((b, 1, mh, mw))?.upsample_nearest2d(lh, lw)?;
    let blurred = gaussian_blur_2d(x0, 9, sigma)?;
    blurred.broadcast_mul(&mask)? + x0.broadcast_mul(&mask.affine(-1.0, 1.0)?)?
}

/// ComfyUI's `gaussian_blur_2d`: a `kernel_size` Gaussian over each channel, the image padded
/// by reflection.
pub fn gaussian_blur_2d(img: &Tensor, kernel_size: usize, sigma: f64) -> Result<Tensor> {
    let half = (kernel_size as f32 - 1.0) * 0.5;
    let xs = crate::sampling::model_sampling::linspace_f32(-half, half, kernel_size);
    let pdf: Vec<f32> = xs
        .iter()
        .map(|x| (-0.5 * (x / sigma as f32).powi(2)).exp())
        .collect();
    let sum: f32 = pdf.iter().sum();
    let kernel = Tensor::from_vec(
        pdf.iter().map(|p| p / sum).collect::<Vec<f32>>(),
        kernel_size,
        img.device(),
    )?;
    let kernel2d = kernel
        .unsqueeze(1)?
        .matmul(&kernel.unsqueeze(0)?)?
        .to_dtype(img.dtype())?;
    let channels = img.dim(1)?;
    let kernel2d = kernel2d
        .reshape((1, 1, kernel_size, kernel_size))?
        .repeat((channels, 1, 1, 1))?;
    let padded = crate::ops::reflect_pad(img, kernel_size / 2)?;
    padded.conv2d(&kernel2d, 0, 1, 1, channels)
}
