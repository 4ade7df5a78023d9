//! From a file's tensors to patches ([`LoraFile::map`], following ComfyUI's `load_lora`), and
//! from patches to a patched weight map ([`apply`], following `ModelPatcher.patch_weight_to_device`
//! and `calculate_weight`: the weight in f32, each patch in turn, then back to its dtype).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::lora::adapter::{Adapter, Factor, Weights};
use crate::lora::keys::{Component, KeyMap};
use crate::lora::{LoraError, LoraErrorKind, LoraFile};

/// One component's share of a LoRA: (canonical weight name, adapter) pairs, sorted by name.
#[derive(Debug, Clone, Default)]
pub struct LoraPatch {
    path: PathBuf,
    targets: Vec<(String, Adapter)>,
}

impl LoraPatch {
    /// The adapter file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (canonical weight name, adapter) pairs.
    pub fn targets(&self) -> &[(String, Adapter)] {
        &self.targets
    }

    /// Whether the file patches nothing in this component.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// What mapping a file found, beyond the patches themselves.
#[derive(Debug, Clone, Default)]
pub struct LoraReport {
    /// Modules that patch a weight (a module with `diff_b` patches two).
    pub modules: usize,
    /// File keys that match no weight of the model (ComfyUI's "lora key not loaded"), sorted.
    pub unmatched: Vec<String>,
    /// File keys for a component that is not loaded (text encoder keys when only the UNet is
    /// patched, and the reverse), sorted.
    pub skipped: Vec<String>,
    /// File keys of a module whose weight another module of the same file already patches
    /// (ComfyUI keeps one of them too), sorted.
    pub ignored: Vec<String>,
}

/// A LoRA file mapped onto one model: a patch per component and a report.
#[derive(Debug, Clone)]
pub struct Lora {
    path: PathBuf,
    unet: LoraPatch,
    clip_l: LoraPatch,
    clip_g: LoraPatch,
    clip_h: LoraPatch,
    report: LoraReport,
}

impl Lora {
    /// The adapter file this was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The patch for `component` (empty when the file has nothing for it).
    pub fn patch(&self, component: Component) -> &LoraPatch {
        match component {
            Component::Unet => &self.unet,
            Component::ClipL => &self.clip_l,
            Component::ClipG => &self.clip_g,
            Component::ClipH => &self.clip_h,
        }
    }

    /// Module count and the file keys that were unmatched, skipped or ignored.
    pub fn report(&self) -> &LoraReport {
        &self.report
    }

    fn patch_mut(&mut self, component: Component) -> &mut LoraPatch {
        match component {
            Component::Unet => &mut self.unet,
            Component::ClipL => &mut self.clip_l,
            Component::ClipG => &mut self.clip_g,
            Component::ClipH => &mut self.clip_h,
        }
    }
}

/// The (up, down, mid) spellings of a LoRA pair, in ComfyUI's order of preference.
const LORA_SPELLINGS: [(&str, &str, Option<&str>); 7] = [
    (
        ".lora_up.weight",
        ".lora_down.weight",
        Some(".lora_mid.weight"),
    ),
    ("_lora.up.weight", "_lora.down.weight", None),
    (".lora_B.weight", ".lora_A.weight", None),
    (".lora.up.weight", ".lora.down.weight", None),
    (".lora_B", ".lora_A", None),
    (
        ".lora_linear_layer.up.weight",
        ".lora_linear_layer.down.weight",
        None,
    ),
    (".lora_B.default.weight", ".lora_A.default.weight", None),
];

const OTHER_SUFFIXES: [&str; 19] = [
    ".alpha",
    ".dora_scale",
    ".hada_w1_a",
    ".hada_w1_b",
    ".hada_w2_a",
    ".hada_w2_b",
    ".hada_t1",
    ".hada_t2",
    ".lokr_w1",
    ".lokr_w2",
    ".lokr_w1_a",
    ".lokr_w1_b",
    ".lokr_w2_a",
    ".lokr_w2_b",
    ".lokr_t2",
    ".diff",
    ".diff_b",
    ".w_norm",
    ".b_norm",
];

/// Suffixes of adapters ComfyUI applies and Weft does not, with their names.
const UNSUPPORTED_SUFFIXES: [(&str, &str); 8] = [
    (".a1.weight", "GLoRA"),
    (".a2.weight", "GLoRA"),
    (".b1.weight", "GLoRA"),
    (".b2.weight", "GLoRA"),
    (".oft_blocks", "OFT/BOFT"),
    (".rescale", "OFT/BOFT"),
    (".set_weight", "set_weight (weight replacement)"),
    (".reshape_weight", "reshape_weight (weight padding)"),
];

/// Down-projection suffixes, whose last dimension is the layer's input width.
const DOWN_SUFFIXES: [&str; 9] = [
    ".lora_down.weight",
    "_lora.down.weight",
    ".lora_A.weight",
    ".lora.down.weight",
    ".lora_A",
    ".lora_linear_layer.down.weight",
    ".lora_A.default.weight",
    ".hada_w1_b",
    ".hada_w2_b",
];

fn all_suffixes() -> impl Iterator<Item = &'static str> {
    LORA_SPELLINGS
        .iter()
        .flat_map(|(up, down, mid)| [Some(*up), Some(*down), *mid])
        .flatten()
        .chain(OTHER_SUFFIXES)
        .chain(UNSUPPORTED_SUFFIXES.iter().map(|(s, _)| *s))
}

/// A module's keys by suffix.
type Group = BTreeMap<&'static str, String>;

impl LoraFile {
    /// Groups the file's tensors into one adapter per target weight of `keys`, as ComfyUI's
    /// `load_lora` does, and checks each adapter against its weight's shape.
    ///
    /// Errors (naming the file and the key) for a malformed adapter, a shape that does not fit,
    /// an adapter type Weft does not implement, or a file made for another model family: a
    /// different cross-attention width, or more modules unmatched than matched. Keys that match
    /// nothing are otherwise listed in the report and logged, as ComfyUI logs them.
    pub fn map(&self, keys: &KeyMap) -> Result<Lora, LoraError> {
        let path = self.path();
        let _span = tracing::debug_span!("lora_map", lora = %path.display()).entered();
        let err = |kind| LoraError::new(path, kind);
        let tensors = self.tensors();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();

        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut leftovers: Vec<String> = Vec::new();
        for name in names {
            let found = all_suffixes().find_map(|suffix| {
                let module = name.strip_suffix(suffix)?;
                keys.target(module).map(|_| (module, suffix))
            });
            match found {
                Some((module, suffix)) => {
                    groups
                        .entry(module.to_string())
                        .or_default()
                        .insert(suffix, name.clone());
                }
                None => leftovers.push(name.clone()),
            }
        }

        let mut lora = Lora {
            path: path.to_path_buf(),
            unet: empty_patch(path),
            clip_l: empty_patch(path),
            clip_g: empty_patch(path),
            clip_h: empty_patch(path),
            report: LoraReport::default(),
        };
        let mut patched: BTreeSet<(Component, String)> = BTreeSet::new();
        let mut mismatches: Vec<LoraErrorKind> = Vec::new();
        for (module, group) in &groups {
            let Some(target) = keys.target(module) else {
                continue;
            };
            let built = build_module(module, group, tensors).map_err(err)?;
            let mut consumed: BTreeSet<&str> = built.consumed;
            let mut writes: Vec<(String, Vec<usize>, Adapter)> = Vec::new();
            if let Some(adapter) = built.weight {
                writes.push((target.key.clone(), target.shape.clone(), adapter));
            }
            if let Some((suffix, adapter)) = built.bias {
                match &target.bias {
                    Some((bias, shape)) => writes.push((bias.clone(), shape.clone(), adapter)),
                    // The layer has no bias: ComfyUI drops the patch silently; we report the key.
                    None => {
                        consumed.remove(suffix);
                    }
                }
            }
            let unconsumed = group
                .iter()
                .filter(|(suffix, _)| !consumed.contains(**suffix))
                .map(|(_, name)| name.clone());
            if writes.is_empty() {
                // An alpha or a lone half of a pair: nothing to apply.
                leftovers.extend(group.values().cloned());
                continue;
            }
            leftovers.extend(unconsumed);
            if writes
                .iter()
                .any(|(key, _, _)| patched.contains(&(target.component, key.clone())))
            {
                lora.report.ignored.extend(group.values().cloned());
                continue;
            }
            lora.report.modules += 1;
            for (key, shape, adapter) in writes {
                if let Err(reason) = adapter.check_fits(&shape) {
                    mismatches.push(LoraErrorKind::ShapeMismatch {
                        key: module.clone(),
                        target: key.clone(),
                        expected: shape,
                        reason,
                        others: 0,
                    });
                    continue;
                }
                patched.insert((target.component, key.clone()));
                lora.patch_mut(target.component)
                    .targets
                    .push((key, adapter));
            }
        }
        for component in [
            Component::Unet,
            Component::ClipL,
            Component::ClipG,
            Component::ClipH,
        ] {
            lora.patch_mut(component)
                .targets
                .sort_by(|a, b| a.0.cmp(&b.0));
        }

        // Keys for components that are not loaded are skipped, not unmatched.
        let has_text = keys.components().iter().any(|c| *c != Component::Unet);
        let has_unet = keys.components().contains(&Component::Unet);
        let (skipped, unmatched): (Vec<String>, Vec<String>) =
            leftovers.into_iter().partition(|name| {
                if is_text_encoder_key(name) {
                    !has_text
                } else {
                    !has_unet
                }
            });
        lora.report.skipped = sorted(skipped);
        lora.report.unmatched = sorted(unmatched);
        lora.report.ignored.sort();

        let unmatched_modules = lora
            .report
            .unmatched
            .iter()
            .map(|k| module_of(k))
            .collect::<BTreeSet<_>>()
            .len();
        let total = lora.report.modules + unmatched_modules;
        if let (Some(lora_context), Some(model_context)) =
            (lora_context_width(tensors), keys.unet_context())
        {
            if lora_context != model_context && (unmatched_modules > 0 || !mismatches.is_empty()) {
                return Err(err(LoraErrorKind::FamilyMismatch {
                    lora_context,
                    model_context,
                    unmatched: unmatched_modules,
                    mismatched: mismatches.len(),
                    total,
                }));
            }
        }
        let mismatch_count = mismatches.len();
        if let Some(mut first) = mismatches.into_iter().next() {
            if let LoraErrorKind::ShapeMismatch { others, .. } = &mut first {
                *others = mismatch_count - 1;
            }
            return Err(err(first));
        }
        if unmatched_modules > lora.report.modules {
            return Err(err(LoraErrorKind::MostlyUnmatched {
                unmatched: unmatched_modules,
                total,
                first: lora.report.unmatched.iter().take(5).cloned().collect(),
            }));
        }
        if !lora.report.unmatched.is_empty() {
            tracing::warn!(
                lora = %path.display(),
                count = lora.report.unmatched.len(),
                first = ?lora.report.unmatched.iter().take(5).collect::<Vec<_>>(),
                "lora keys not loaded"
            );
        }
        if !lora.report.skipped.is_empty() {
            tracing::info!(
                lora = %path.display(),
                count = lora.report.skipped.len(),
                "lora keys skipped: their model component is not loaded"
            );
        }
        Ok(lora)
    }
}

/// A new weight map with every patch applied: `W + Σ strength·ΔW` per weight, computed in f32
/// in the order given (ComfyUI's order for stacked LoRAs, which matters for DoRA) and written
/// back in `W`'s dtype.
///
/// Only patched entries are new tensors; every other entry is the same (reference-counted)
/// tensor as in `weights`, which is never modified, so unpatching is using `weights` again.
/// Patches with strength 0 are skipped; one layer is computed at a time.
pub fn apply(
    weights: &HashMap<String, Tensor>,
    patches: &[(&LoraPatch, f64)],
) -> Result<HashMap<String, Tensor>, LoraError> {
    let _span = tracing::debug_span!("lora_apply", patches = patches.len()).entered();
    let mut by_key: BTreeMap<&str, Vec<(&Adapter, f64, &Path)>> = BTreeMap::new();
    for (patch, strength) in patches {
        if *strength == 0.0 {
            continue;
        }
        for (key, adapter) in &patch.targets {
            by_key
                .entry(key.as_str())
                .or_default()
                .push((adapter, *strength, patch.path()));
        }
    }
    let mut out = weights.clone();
    for (key, list) in by_key {
        let Some(&(_, _, first_path)) = list.first() else {
            continue;
        };
        let base = weights.get(key).ok_or_else(|| {
            LoraError::new(
                first_path,
                LoraErrorKind::MissingWeight {
                    key: key.to_string(),
                },
            )
        })?;
        let failed = |path, source| {
            LoraError::new(
                path,
                LoraErrorKind::Patch {
                    key: key.to_string(),
                    source,
                },
            )
        };
        // Patched on the CPU, where the LoRA's factors are, in f32, then put back where the base
        // weight lives in its dtype (no transfer at all when that is the CPU).
        let mut weight = base
            .to_device(&candle_core::Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|source| failed(first_path, source))?;
        for (adapter, strength, path) in list {
            weight = adapter
                .patch(&weight, strength)
                .map_err(|source| failed(path, source))?;
        }
        let weight = weight
            .to_dtype(base.dtype())
            .and_then(|t| t.to_device(base.device()))
            .map_err(|source| failed(first_path, source))?;
        out.insert(key.to_string(), weight);
    }
    Ok(out)
}

/// What one module's keys build: the weight's adapter, the bias's (`diff_b`/`b_norm`, with its
/// suffix), and the suffixes used.
struct Built {
    weight: Option<Adapter>,
    bias: Option<(&'static str, Adapter)>,
    consumed: BTreeSet<&'static str>,
}

/// ComfyUI's `load_lora` for one module: alpha and dora_scale, then each adapter type in turn
/// (a later one replaces an earlier one, as there), then the full diffs.
fn build_module(
    module: &str,
    group: &Group,
    tensors: &HashMap<String, Tensor>,
) -> Result<Built, LoraErrorKind> {
    for (suffix, kind) in UNSUPPORTED_SUFFIXES {
        if let Some(name) = group.get(suffix) {
            return Err(LoraErrorKind::Unsupported {
                key: name.clone(),
                kind,
            });
        }
    }
    let mut consumed = BTreeSet::new();
    let mut take = |suffix: &'static str| -> Result<Option<Tensor>, LoraErrorKind> {
        let Some(name) = group.get(suffix) else {
            return Ok(None);
        };
        let tensor = tensors
            .get(name)
            .ok_or_else(|| LoraErrorKind::MissingPartner {
                key: module.to_string(),
                missing: name.clone(),
            })?;
        if suffix != ".alpha" && !tensor.dtype().is_float() {
            return Err(LoraErrorKind::BadTensor {
                key: name.clone(),
                reason: format!("dtype {:?} is not a float type", tensor.dtype()),
            });
        }
        consumed.insert(suffix);
        Ok(Some(tensor.clone()))
    };
    let need = |t: Option<Tensor>, suffix: &str| {
        t.ok_or_else(|| LoraErrorKind::MissingPartner {
            key: module.to_string(),
            missing: format!("{module}{suffix}"),
        })
    };

    let alpha = match take(".alpha")? {
        None => None,
        Some(t) => Some(scalar(&t).map_err(|reason| LoraErrorKind::BadTensor {
            key: format!("{module}.alpha"),
            reason,
        })?),
    };
    let dora_scale = take(".dora_scale")?;
    let mut weight: Option<Weights> = None;

    if let Some((up_suffix, down_suffix, mid_suffix)) = LORA_SPELLINGS
        .iter()
        .find(|(up, _, _)| group.contains_key(up))
    {
        let up = need(take(up_suffix)?, up_suffix)?;
        let down = need(take(down_suffix)?, down_suffix)?;
        let mid = match mid_suffix {
            Some(s) => take(s)?,
            None => None,
        };
        weight = Some(Weights::Lora { up, down, mid });
    }
    if group.contains_key(".hada_w1_a") {
        let w1a = need(take(".hada_w1_a")?, ".hada_w1_a")?;
        let w1b = need(take(".hada_w1_b")?, ".hada_w1_b")?;
        let w2a = need(take(".hada_w2_a")?, ".hada_w2_a")?;
        let w2b = need(take(".hada_w2_b")?, ".hada_w2_b")?;
        let tucker = match take(".hada_t1")? {
            Some(t1) => Some((t1, need(take(".hada_t2")?, ".hada_t2")?)),
            None => None,
        };
        weight = Some(Weights::LoHa {
            w1a,
            w1b,
            w2a,
            w2b,
            tucker,
        });
    }
    let lokr_present = [".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w2_a"]
        .iter()
        .any(|s| group.contains_key(s));
    if lokr_present {
        let mut factor = |full: &'static str,
                          a: &'static str,
                          b: &'static str|
         -> Result<Factor, LoraErrorKind> {
            if let Some(t) = take(full)? {
                return Ok(Factor::Full(t));
            }
            Ok(Factor::Product {
                a: need(take(a)?, a)?,
                b: need(take(b)?, b)?,
            })
        };
        let w1 = factor(".lokr_w1", ".lokr_w1_a", ".lokr_w1_b")?;
        let w2 = factor(".lokr_w2", ".lokr_w2_a", ".lokr_w2_b")?;
        // ComfyUI reads lokr_t2 either way but only uses it with a factorised w2.
        let t2 = take(".lokr_t2")?.filter(|_| matches!(w2, Factor::Product { .. }));
        weight = Some(Weights::LoKr { w1, w2, t2 });
    }
    let mut weight = weight.map(|w| Adapter::new(w, alpha, dora_scale));
    let mut bias = None;
    if let Some(w_norm) = take(".w_norm")? {
        weight = Some(Adapter::new(Weights::Diff(w_norm), None, None));
        if let Some(b_norm) = take(".b_norm")? {
            bias = Some((".b_norm", Adapter::new(Weights::Diff(b_norm), None, None)));
        }
    }
    if let Some(diff) = take(".diff")? {
        weight = Some(Adapter::new(Weights::Diff(diff), None, None));
    }
    if let Some(diff_b) = take(".diff_b")? {
        bias = Some((".diff_b", Adapter::new(Weights::Diff(diff_b), None, None)));
    }
    Ok(Built {
        weight,
        bias,
        consumed,
    })
}

/// The value of a one-element tensor (`alpha`), as ComfyUI's `.item()`.
fn scalar(t: &Tensor) -> Result<f64, String> {
    if t.elem_count() != 1 {
        return Err(format!("expected one value, found shape {:?}", t.dims()));
    }
    let values = t
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_vec1::<f64>())
        .map_err(|e| e.to_string())?;
    values
        .first()
        .copied()
        .ok_or_else(|| "expected one value".to_string())
}

/// The width of the context the LoRA's cross-attention key/value layers take (the input width of
/// their down projections), by majority over the file.
fn lora_context_width(tensors: &HashMap<String, Tensor>) -> Option<usize> {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for (name, tensor) in tensors {
        let is_kv = name.contains("attn2") && (name.contains("to_k") || name.contains("to_v"));
        if !is_kv || is_text_encoder_key(name) || tensor.rank() != 2 {
            continue;
        }
        if DOWN_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            *counts.entry(tensor.dims()[1]).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(width, _)| width)
}

fn is_text_encoder_key(name: &str) -> bool {
    ["lora_te", "lora_prior_te", "text_encoder", "text_encoders."]
        .iter()
        .any(|p| name.starts_with(p))
}

/// A file key without its adapter suffix (for counting modules).
fn module_of(name: &str) -> &str {
    all_suffixes()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn empty_patch(path: &Path) -> LoraPatch {
    LoraPatch {
        path: path.to_path_buf(),
        targets: Vec::new(),
    }
}
