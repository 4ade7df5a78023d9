//! unCLIP image conditioning: ComfyUI's `model_base.unclip_adm` with its
//! `CLIPEmbeddingNoiseAugmentation`, the `y` of SD2.1 unCLIP models and, cut to the pooled
//! width, SDXL's pooled output for "revision" (`sdxl_pooled`).
//!
//! Each image embedding of each unCLIPConditioning is noised at its level
//! (`round(999 * noise_augmentation)`) with `torch.randn` from a CPU generator seeded with the
//! sampler's seed minus 10, and paired with the level's sinusoidal embedding; the pair is scaled
//! by the strength. More than one embedding: the weighted sums are noised again at the merge
//! level with the generator's next draws (CPU ComfyUI's global generator after the last seeded
//! draw; on a GPU ComfyUI draws those from the device's generator, which cannot be reproduced).
//!
//! The augmentor is what ComfyUI builds for every such model: `squaredcos_cap_v2` betas over
//! 1000 steps, data mean 0 and standard deviation 1 (ComfyUI loads no CLIP statistics, and a
//! checkpoint's `noise_augmentor.*` buffers are not read into it).

use candle_core::{DType, Device, Result, Tensor};

use crate::sampling::rng::TorchGenerator;
use crate::unet::blocks::sinusoidal_embedding;

/// One unCLIPConditioning on a conditioning entry.
#[derive(Debug, Clone)]
pub struct UnclipCond {
    /// The CLIP vision output's `image_embeds`, `[B, dim]` f32: each row counts once.
    pub image_embeds: Tensor,
    /// Scale of the noised embedding and its level embedding.
    pub strength: f64,
    /// 0..1: how far along the augmentor's schedule the embedding is noised.
    pub noise_augmentation: f64,
}

/// ComfyUI's `noise_augment_merge` for SD2.1 unCLIP (`unclip_noise_augment_merge` default).
pub const UNCLIP_MERGE_NOISE: f64 = 0.05;
/// `sdxl_pooled` merges without noise.
pub const SDXL_MERGE_NOISE: f64 = 0.0;

/// Steps of the augmentor's schedule (`max_noise_level`).
const LEVELS: usize = 1000;

/// `CLIPEmbeddingNoiseAugmentation` of width `dim`.
#[derive(Debug, Clone)]
pub struct NoiseAugmentor {
    dim: usize,
    sqrt_alphas_cumprod: Vec<f32>,
    sqrt_one_minus_alphas_cumprod: Vec<f32>,
}

impl NoiseAugmentor {
    /// The augmentor for embeddings of width `dim` (768 for unCLIP-L, 1024 for unCLIP-H, 1280
    /// for SDXL).
    pub fn new(dim: usize) -> Self {
        // `betas_for_alpha_bar` in float64, the buffers stored as float32.
        let alpha_bar = |t: f64| {
            ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                .cos()
                .powi(2)
        };
        let mut cumprod = 1.0f64;
        let (mut sqrt_ac, mut sqrt_1m) = (Vec::with_capacity(LEVELS), Vec::with_capacity(LEVELS));
        for i in 0..LEVELS {
            let t1 = i as f64 / LEVELS as f64;
            let t2 = (i + 1) as f64 / LEVELS as f64;
            let beta = (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999);
            cumprod *= 1.0 - beta;
            sqrt_ac.push(cumprod.sqrt() as f32);
            sqrt_1m.push((1.0 - cumprod).sqrt() as f32);
        }
        NoiseAugmentor {
            dim,
            sqrt_alphas_cumprod: sqrt_ac,
            sqrt_one_minus_alphas_cumprod: sqrt_1m,
        }
    }

    /// Width of the embeddings it takes.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `forward(x, noise_level)`: `x` noised at `level` with `dim` normals from `rng`, then the
    /// level's embedding; both `dim` wide.
    fn augment(&self, x: &[f32], level: usize, rng: &mut TorchGenerator) -> Result<Vec<f32>> {
        let noise = rng.randn_vec_f32(self.dim);
        let (a, b) = (
            self.sqrt_alphas_cumprod[level],
            self.sqrt_one_minus_alphas_cumprod[level],
        );
        let mut out: Vec<f32> = x.iter().zip(&noise).map(|(x, n)| a * x + b * n).collect();
        let level_embedding = sinusoidal_embedding(&[level as f32], self.dim, &Device::Cpu)?;
        out.extend(level_embedding.flatten_all()?.to_vec1::<f32>()?);
        Ok(out)
    }
}

/// The level `round((max_noise_level - 1) * noise_augmentation)`, in range.
fn level(noise_augmentation: f64) -> usize {
    (((LEVELS - 1) as f64 * noise_augmentation).round_ties_even() as usize).min(LEVELS - 1)
}

/// ComfyUI's `unclip_adm`: `[1, 2 * dim]` f32 from every image embedding in `conds`, noised with
/// `seed` (the sampler's seed minus 10, as ComfyUI passes it), merged at `merge_noise` when
/// there is more than one. Errors when an embedding is not `dim` wide or `conds` is empty.
pub fn unclip_adm(
    conds: &[UnclipCond],
    augmentor: &NoiseAugmentor,
    merge_noise: f64,
    seed: u64,
) -> Result<Tensor> {
    let dim = augmentor.dim();
    let mut summed: Option<Vec<f32>> = None;
    let mut count = 0usize;
    let mut rng = TorchGenerator::manual_seed(seed);
    for cond in conds {
        let (rows, width) = cond.image_embeds.dims2()?;
        if width != dim {
            candle_core::bail!(
                "the clip vision image embeds are {width} wide but this model's unCLIP input takes {dim}"
            );
        }
        let embeds = cond.image_embeds.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        for row in embeds.iter().take(rows) {
            // Every embedding re-seeds the global generator (`torch.manual_seed(seed)`).
            rng = TorchGenerator::manual_seed(seed);
            let weight = cond.strength as f32;
            let out = augmentor.augment(row, level(cond.noise_augmentation), &mut rng)?;
            let weighted = out.into_iter().map(|v| v * weight);
            summed = Some(match summed {
                Some(sum) => sum.iter().zip(weighted).map(|(s, v)| s + v).collect(),
                None => weighted.collect(),
            });
            count += 1;
        }
    }
    let Some(mut adm) = summed else {
        candle_core::bail!("unCLIP conditioning without image embeddings");
    };
    if count > 1 {
        // The merge call has no seed: it continues the generator the last embedding seeded.
        adm = augmentor.augment(&adm[..dim], level(merge_noise), &mut rng)?;
    }
    Tensor::from_vec(adm, (1, 2 * dim), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_comfyui_buffers() {
        let aug = NoiseAugmentor::new(4);
        // numpy: sqrt(cumprod(1 - betas)) for squaredcos_cap_v2 at 0, 499 and 999.
        assert!((aug.sqrt_alphas_cumprod[0] - 0.999_979_6).abs() < 1e-6);
        assert!((aug.sqrt_one_minus_alphas_cumprod[999] - 1.0).abs() < 1e-6);
        assert_eq!(level(1.0), 999);
        assert_eq!(level(0.5), 500);
    }

    #[test]
    fn one_embedding_is_scaled_and_several_are_merged() -> Result<()> {
        let aug = NoiseAugmentor::new(16);
        let embeds = Tensor::ones((1, 16), DType::F32, &Device::Cpu)?;
        let one = |strength| UnclipCond {
            image_embeds: embeds.clone(),
            strength,
            noise_augmentation: 0.0,
        };
        let single = unclip_adm(&[one(2.0)], &aug, 0.05, 3)?;
        let unit = unclip_adm(&[one(1.0)], &aug, 0.05, 3)?;
        let diff = (single - (unit * 2.0)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6);
        let merged = unclip_adm(&[one(1.0), one(1.0)], &aug, 0.0, 3)?;
        assert_eq!(merged.dims(), &[1, 32]);
        let wrong = UnclipCond {
            image_embeds: Tensor::ones((1, 8), DType::F32, &Device::Cpu)?,
            ..one(1.0)
        };
        assert!(unclip_adm(&[wrong], &aug, 0.0, 3).is_err());
        Ok(())
    }
}
