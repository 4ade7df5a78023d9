//! Model merging, saving and LoRA extraction, the way ComfyUI's model-merging nodes do them
//! (`comfy_extras/nodes_model_merging.py`, `nodes_lora_extract.py`, `comfy/sd.py save_checkpoint`).
//!
//! - [`merge`]: a new weight map where each weight the second model shares is
//!   `w1 · model + w2 · patch` ([`MergeStrength`], ComfyUI's `add_patches(patches, strength_patch,
//!   strength_model)` of a whole-weight patch); weights left as they are stay the same
//!   (reference-counted) tensors, so a merge costs only the weights it changes;
//! - [`block_strength`]: ComfyUI's ModelMergeBlocks rule, the longest matching prefix of the
//!   weight's LDM name picks its ratio;
//! - `layout`: Weft's diffusers/HF names back to the LDM layout ComfyUI saves checkpoints, VAEs
//!   and text encoders in;
//! - `write`: a safetensors writer that converts and writes one tensor at a time;
//! - `extract`: LoRA extraction from a weight difference (truncated SVD, `svd`), LoraSave.
//!
//! Weights in Weft are patched eagerly (a LoRA's or a merge's result is the model's new weight
//! map), so patches stack in ComfyUI's order by construction: whatever was applied to a model
//! before the merge is in its weights, and a LoRA applied after patches the merged weights.

pub mod extract;
pub mod layout;
mod svd;
pub mod write;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

/// How a merged weight is made from the first model's `w1` and the second's `w2`:
/// `w1 · model + w2 · patch`, computed in f32 and stored in `w1`'s dtype.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeStrength {
    /// The first model's factor (ComfyUI's `strength_model`).
    pub model: f64,
    /// The second model's factor (ComfyUI's `strength_patch`).
    pub patch: f64,
}

impl MergeStrength {
    /// ModelMergeSimple's `ratio`: `w1 · ratio + w2 · (1 - ratio)`.
    pub fn ratio(ratio: f64) -> Self {
        Self {
            model: ratio,
            patch: 1.0 - ratio,
        }
    }

    /// ModelMergeAdd: `w1 + w2`.
    pub fn add() -> Self {
        Self {
            model: 1.0,
            patch: 1.0,
        }
    }

    /// ModelMergeSubtract's `multiplier`: `(w1 - w2) · multiplier`.
    pub fn subtract(multiplier: f64) -> Self {
        Self {
            model: multiplier,
            patch: -multiplier,
        }
    }

    /// Whether the merge leaves `w1` as it is (ComfyUI skips a patch of strength 0 and a model
    /// factor of 1).
    pub fn is_identity(&self) -> bool {
        self.model == 1.0 && self.patch == 0.0
    }
}

/// A merge failure, naming the weight.
#[derive(Debug, thiserror::Error)]
#[error("cannot merge weight '{key}': {source}")]
pub struct MergeError {
    /// The weight's name in the model's map.
    pub key: String,
    /// The tensor error.
    pub source: candle_core::Error,
}

/// What a merge did besides the weights.
#[derive(Debug, Clone, Default)]
pub struct MergeReport {
    /// Weights computed anew.
    pub merged: usize,
    /// Weights both models have with different shapes, sorted: only the first model's factor
    /// applies to them (ComfyUI warns and skips the patch).
    pub shape_mismatches: Vec<String>,
}

/// The first model's weights with the second's merged in, key by key, at the strength
/// `strength_of(key)` gives. Keys only the first model has are kept as they are; keys only the
/// second has are ignored (ComfyUI's `add_patches` patches the keys the model has).
///
/// Every weight left as it is (an identity strength, no counterpart) is the same tensor as in
/// `base`; each merged one is computed on the CPU in f32 and put back where and as `base` kept it.
pub fn merge(
    base: &HashMap<String, Tensor>,
    other: &HashMap<String, Tensor>,
    strength_of: impl Fn(&str) -> MergeStrength,
) -> Result<(HashMap<String, Tensor>, MergeReport), MergeError> {
    let _span = tracing::debug_span!("merge_weights", weights = base.len()).entered();
    let mut out = base.clone();
    let mut report = MergeReport::default();
    let mut keys: Vec<&String> = base.keys().filter(|k| other.contains_key(*k)).collect();
    keys.sort();
    for key in keys {
        let strength = strength_of(key);
        if strength.is_identity() {
            continue;
        }
        let (w1, w2) = (&base[key], &other[key]);
        let fail = |source| MergeError {
            key: key.clone(),
            source,
        };
        let merged = if w1.dims() == w2.dims() {
            merged_weight(w1, Some(w2), strength).map_err(fail)?
        } else {
            tracing::warn!(
                key = key.as_str(),
                first = ?w1.dims(),
                second = ?w2.dims(),
                "merge: weight shapes differ, only the first model's factor applies"
            );
            report.shape_mismatches.push(key.clone());
            merged_weight(w1, None, strength).map_err(fail)?
        };
        report.merged += 1;
        out.insert(key.clone(), merged);
    }
    Ok((out, report))
}

/// `w1 · model (+ w2 · patch)` in f32 on the CPU, back in `w1`'s dtype and device.
fn merged_weight(
    w1: &Tensor,
    w2: Option<&Tensor>,
    strength: MergeStrength,
) -> candle_core::Result<Tensor> {
    let f32_cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F32);
    let mut weight = f32_cpu(w1)?;
    if strength.model != 1.0 {
        weight = weight.affine(strength.model, 0.0)?;
    }
    if let Some(w2) = w2.filter(|_| strength.patch != 0.0) {
        weight = (weight + f32_cpu(w2)?.affine(strength.patch, 0.0)?)?;
    }
    weight.to_dtype(w1.dtype())?.to_device(w1.device())
}

/// ComfyUI's ModelMergeBlocks rule: the value of the longest of `prefixes` that `ldm_key` (the
/// weight's LDM name without `diffusion_model.`) starts with, else the first prefix's value.
/// `None` only when `prefixes` is empty.
pub fn block_strength(ldm_key: &str, prefixes: &[(&str, f64)]) -> Option<f64> {
    let first = prefixes.first()?.1;
    Some(
        prefixes
            .iter()
            .filter(|(prefix, _)| ldm_key.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(first, |(_, value)| *value),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &[f32])]) -> HashMap<String, Tensor> {
        entries
            .iter()
            .map(|(k, v)| {
                let t = Tensor::new(*v, &Device::Cpu).unwrap();
                (k.to_string(), t)
            })
            .collect()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn ratio_add_and_subtract_follow_comfyui() {
        let a = map(&[("w", &[1.0, 2.0]), ("only_a", &[5.0])]);
        let b = map(&[("w", &[3.0, 6.0]), ("only_b", &[7.0])]);
        let (m, report) = merge(&a, &b, |_| MergeStrength::ratio(0.25)).unwrap();
        assert_eq!(values(&m["w"]), vec![2.5, 5.0]);
        assert_eq!(report.merged, 1);
        assert!(!m.contains_key("only_b"));
        assert_eq!(m["only_a"].id(), a["only_a"].id());
        let (m, _) = merge(&a, &b, |_| MergeStrength::add()).unwrap();
        assert_eq!(values(&m["w"]), vec![4.0, 8.0]);
        let (m, _) = merge(&a, &b, |_| MergeStrength::subtract(2.0)).unwrap();
        assert_eq!(values(&m["w"]), vec![-4.0, -8.0]);
    }

    #[test]
    fn ratio_one_shares_the_first_models_tensors() {
        let a = map(&[("w", &[1.0])]);
        let b = map(&[("w", &[3.0])]);
        let (m, report) = merge(&a, &b, |_| MergeStrength::ratio(1.0)).unwrap();
        assert_eq!(m["w"].id(), a["w"].id());
        assert_eq!(report.merged, 0);
    }

    #[test]
    fn mismatched_shapes_keep_only_the_model_factor() {
        let a = map(&[("w", &[2.0, 4.0])]);
        let b = map(&[("w", &[1.0])]);
        let (m, report) = merge(&a, &b, |_| MergeStrength::ratio(0.5)).unwrap();
        assert_eq!(values(&m["w"]), vec![1.0, 2.0]);
        assert_eq!(report.shape_mismatches, vec!["w".to_string()]);
    }

    #[test]
    fn merged_weights_keep_the_first_models_dtype() {
        let a: HashMap<String, Tensor> = map(&[("w", &[1.0])])
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(DType::F16).unwrap()))
            .collect();
        let b = map(&[("w", &[3.0])]);
        let (m, _) = merge(&a, &b, |_| MergeStrength::ratio(0.5)).unwrap();
        assert_eq!(m["w"].dtype(), DType::F16);
        assert_eq!(values(&m["w"]), vec![2.0]);
    }

    #[test]
    fn the_longest_matching_prefix_picks_the_ratio() {
        let prefixes = [("input", 0.1), ("middle", 0.2), ("out", 0.3)];
        assert_eq!(block_strength("input_blocks.1.0.x", &prefixes), Some(0.1));
        assert_eq!(block_strength("output_blocks.1.0.x", &prefixes), Some(0.3));
        assert_eq!(block_strength("time_embed.0.weight", &prefixes), Some(0.1));
        let sd1 = [
            ("time_embed.", 0.0),
            ("input_blocks.1.", 0.4),
            ("input_blocks.10.", 0.7),
        ];
        assert_eq!(block_strength("input_blocks.10.0.x", &sd1), Some(0.7));
        assert_eq!(block_strength("input_blocks.1.0.x", &sd1), Some(0.4));
        assert_eq!(block_strength("x", &[]), None);
    }
}
