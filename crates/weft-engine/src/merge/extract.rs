//! LoRA extraction from a weight difference (ComfyUI's `comfy_extras/nodes_lora_extract.py`,
//! LoraSave): each 2-D or conv weight of the difference becomes a `lora_up`/`lora_down` pair from
//! its top singular triplets, the factors clamped at the 99th percentile of their values; 1-D
//! weights and biases become full `diff`/`diff_b` patches when asked for. Every tensor is
//! written in f16, as ComfyUI writes them.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::merge::svd::top_singular;

/// The quantile of the factors' values the clamp keeps (ComfyUI's `CLAMP_QUANTILE`).
pub const CLAMP_QUANTILE: f64 = 0.99;

/// What LoraSave writes for a weight (its `lora_type` input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraType {
    /// `standard`: low-rank `lora_up`/`lora_down` pairs for 2-D and conv weights.
    Standard,
    /// `full_diff`: every weight as a full `diff`.
    FullDiff,
}

impl LoraType {
    /// The names LoraSave's combo offers, in ComfyUI's order.
    pub const NAMES: [&'static str; 2] = ["standard", "full_diff"];

    /// The type a combo name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "standard" => Some(Self::Standard),
            "full_diff" => Some(Self::FullDiff),
            _ => None,
        }
    }
}

/// LoraSave's options.
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    /// The rank of each pair (capped by the weight's sides).
    pub rank: usize,
    /// Pairs or full differences.
    pub lora_type: LoraType,
    /// Also write 1-D weights (`diff`) and biases (`diff_b`) as full differences.
    pub bias_diff: bool,
}

/// An extraction failure, naming the weight.
#[derive(Debug, thiserror::Error)]
#[error("cannot extract a lora from weight '{key}': {source}")]
pub struct ExtractError {
    /// The weight's name as the LoRA file names it.
    pub key: String,
    /// The tensor error.
    pub source: candle_core::Error,
}

/// Adds the LoRA tensors of `diffs` (weight differences, each already named as the file names its
/// module: `diffusion_model.<LDM name>.weight`, `text_encoders.clip_l.transformer.<HF name>.weight`)
/// to `out`, as ComfyUI's `calc_lora_model` does. Returns how many weights gave tensors.
pub fn extract_into<'a>(
    out: &mut BTreeMap<String, Tensor>,
    diffs: impl IntoIterator<Item = (String, &'a Tensor)>,
    options: ExtractOptions,
) -> Result<usize, ExtractError> {
    let mut written = 0;
    for (key, diff) in diffs {
        let fail = |source| ExtractError {
            key: key.clone(),
            source,
        };
        let half = |t: &Tensor| {
            t.to_device(&Device::Cpu)?
                .to_dtype(DType::F16)?
                .contiguous()
        };
        if let Some(module) = key.strip_suffix(".weight") {
            let full = options.lora_type == LoraType::FullDiff || diff.rank() < 2;
            if full {
                if options.lora_type == LoraType::FullDiff || options.bias_diff {
                    out.insert(format!("{module}.diff"), half(diff).map_err(fail)?);
                    written += 1;
                }
                continue;
            }
            let (up, down) = lora_pair(diff, options.rank).map_err(fail)?;
            out.insert(format!("{module}.lora_up.weight"), half(&up).map_err(fail)?);
            out.insert(
                format!("{module}.lora_down.weight"),
                half(&down).map_err(fail)?,
            );
            written += 1;
        } else if let Some(module) = key.strip_suffix(".bias").filter(|_| options.bias_diff) {
            out.insert(format!("{module}.diff_b"), half(diff).map_err(fail)?);
            written += 1;
        }
    }
    Ok(written)
}

/// ComfyUI's `extract_lora`: `(up, down)` with `up · down ≈ diff` at rank
/// `min(rank, out, in)`, both clamped to ± the [`CLAMP_QUANTILE`] of their values; a conv weight
/// `[out, in, kh, kw]` gives `[out, r, 1, 1]` and `[r, in, kh, kw]`. f32 on the CPU.
pub fn lora_pair(diff: &Tensor, rank: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let (up, down) = low_rank_factors(diff, rank)?;
    let values: Vec<f32> = Tensor::cat(&[up.flatten_all()?, down.flatten_all()?], 0)?.to_vec1()?;
    let high = quantile(&values, CLAMP_QUANTILE);
    Ok((up.clamp(-high, high)?, down.clamp(-high, high)?))
}

/// The unclamped factors of [`lora_pair`]: `U[:, :r]·diag(S[:r])` and `Vh[:r]` of the weight
/// flattened to `[out, in·kh·kw]`, in the weight's LoRA shapes, f32 on the CPU.
pub fn low_rank_factors(diff: &Tensor, rank: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let dims = diff.dims().to_vec();
    let (out_dim, in_dim) = match dims.as_slice() {
        [o, i] | [o, i, _, _] => (*o, *i),
        _ => candle_core::bail!("a lora pair needs a 2-D or conv weight, got shape {dims:?}"),
    };
    let rank = rank.min(in_dim).min(out_dim);
    let matrix = diff.reshape((out_dim, diff.elem_count() / out_dim.max(1)))?;
    let (up, down) = top_singular(&matrix, rank)?;
    let (up, down) = (up.to_dtype(DType::F32)?, down.to_dtype(DType::F32)?);
    if let [_, _, kh, kw] = dims.as_slice() {
        return Ok((
            up.reshape((out_dim, rank, 1, 1))?,
            down.reshape((rank, in_dim, *kh, *kw))?,
        ));
    }
    Ok((up, down))
}

/// `torch.quantile(values, q)` with its default linear interpolation; 0 for no values.
pub fn quantile(values: &[f32], q: f64) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    // torch takes q in the values' dtype (0.99 as f32 is a little above 0.99) and ranks it
    // in double.
    let position = (q as f32) as f64 * last as f64;
    let below = (position.floor() as usize).min(last);
    let above = (below + 1).min(last);
    let weight = (position - below as f64) as f32;
    let (a, b) = (sorted[below], sorted[above]);
    // torch.lerp's two-sided form.
    if weight < 0.5 {
        a + weight * (b - a)
    } else {
        b - (b - a) * (1.0 - weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_torch() {
        let v: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert!((quantile(&v, 0.99) - 9.9).abs() < 1e-5);
        assert_eq!(quantile(&v, 0.5), 5.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
    }

    #[test]
    fn conv_pairs_have_lora_shapes() {
        let diff = Tensor::randn(0f32, 1.0, (6, 4, 3, 3), &Device::Cpu).unwrap();
        let (up, down) = lora_pair(&diff, 8).unwrap();
        assert_eq!(up.dims(), &[6, 4, 1, 1]);
        assert_eq!(down.dims(), &[4, 4, 3, 3]);
    }

    #[test]
    fn options_pick_the_tensors_written() {
        let w = Tensor::ones((4, 4), DType::F32, &Device::Cpu).unwrap();
        let norm = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
        let diffs = || {
            vec![
                ("m.lin.weight".to_string(), &w),
                ("m.norm.weight".to_string(), &norm),
                ("m.lin.bias".to_string(), &norm),
            ]
        };
        let keys = |lora_type, bias_diff| {
            let mut out = BTreeMap::new();
            let options = ExtractOptions {
                rank: 2,
                lora_type,
                bias_diff,
            };
            extract_into(&mut out, diffs(), options).unwrap();
            out.into_keys().collect::<Vec<_>>()
        };
        assert_eq!(
            keys(LoraType::Standard, true),
            [
                "m.lin.diff_b",
                "m.lin.lora_down.weight",
                "m.lin.lora_up.weight",
                "m.norm.diff"
            ]
        );
        assert_eq!(
            keys(LoraType::Standard, false),
            ["m.lin.lora_down.weight", "m.lin.lora_up.weight"]
        );
        assert_eq!(
            keys(LoraType::FullDiff, false),
            ["m.lin.diff", "m.norm.diff"]
        );
    }
}
