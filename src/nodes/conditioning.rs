//! Text encoding and conditioning edits: CLIPTextEncode, CLIPSetLastLayer, the SDXL encoders and
//! the Conditioning* nodes, with ComfyUI's semantics (`nodes.py`, `comfy_extras/nodes_clip_sdxl.py`).

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::engine::clip::encode::{Conditioning as Encoded, PromptTokens};
use crate::engine::diffusion::{Area, CondEntry};
use crate::engine::load::file::StateDict;
use crate::engine::tokenizer::EmbeddingLookup;
use crate::graph::spec::build::*;
use crate::graph::spec::{InputSpec, NodeSpec, OutputSpec};
use crate::graph::SlotType;
use crate::nodes::image_ops::MAX_RESOLUTION;
use crate::nodes::{Clip, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(ClipTextEncode);
    registry.add(ClipSetLastLayer);
    registry.add(ClipTextEncodeSdxl);
    registry.add(ClipTextEncodeSdxlRefiner);
    registry.add(ConditioningCombine);
    registry.add(ConditioningAverage);
    registry.add(ConditioningConcat);
    registry.add(ConditioningSetArea);
    registry.add(ConditioningSetAreaPercentage);
    registry.add(ConditioningSetMask);
    registry.add(ConditioningZeroOut);
    registry.add(ConditioningSetAreaStrength);
    registry.add(ConditioningSetTimestepRange);
    registry.add(ClipTextEncodeControlnet);
}

fn spec(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
) -> NodeSpec {
    node(class_type, display_name, category, inputs, outputs)
}

fn conditioning_out() -> Vec<OutputSpec> {
    vec![output(SlotType::CONDITIONING, "CONDITIONING")]
}

fn value(list: Vec<CondEntry>) -> Value {
    Value::Conditioning(Arc::new(list))
}

/// Textual inversions from `models/embeddings` (`embedding:name` in a prompt), found and read as
/// ComfyUI's `load_embed` does: `name`, `name.safetensors`, `.pt`, `.bin`; the tensor for this
/// encoder (`clip_l`/`clip_g` in SDXL files), else `string_to_param`, else the first tensor.
pub(crate) struct EmbeddingFiles<'a> {
    pub(crate) dirs: &'a DataDirs,
}

impl EmbeddingLookup for EmbeddingFiles<'_> {
    fn lookup(&self, name: &str, key: &str, dim: usize) -> Option<Tensor> {
        let base = self.dirs.model_folder("embeddings")?;
        let path = ["", ".safetensors", ".pt", ".bin", ".ckpt"]
            .iter()
            .find_map(|ext| {
                let candidate = crate::paths::join_relative(&base, &format!("{name}{ext}")).ok()?;
                candidate.is_file().then_some(candidate)
            });
        let Some(path) = path else {
            tracing::warn!("embedding {name} not found in models/embeddings");
            return None;
        };
        let tensors = match StateDict::open(&path).and_then(|sd| sd.get_prefixed("")) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot read embedding {name}: {e}");
                return None;
            }
        };
        let mut keys: Vec<&String> = tensors.keys().collect();
        keys.sort();
        let chosen = tensors
            .get(key)
            .or_else(|| {
                keys.iter()
                    .find(|k| k.starts_with("string_to_param"))
                    .and_then(|k| tensors.get(*k))
            })
            .or_else(|| keys.first().and_then(|k| tensors.get(*k)))?;
        let vectors = chosen.to_dtype(DType::F32).ok()?;
        let vectors = if vectors.rank() == 1 {
            vectors.unsqueeze(0).ok()?
        } else {
            vectors
        };
        if vectors.rank() != 2 || vectors.dim(1).ok()? != dim {
            tracing::warn!(
                "embedding {name} has shape {:?}, this text encoder needs [n, {dim}]",
                vectors.dims()
            );
            return None;
        }
        Some(vectors)
    }
}

fn encode_tokens(clip: &Clip, tokens: &PromptTokens) -> Result<Encoded, NodeError> {
    clip.encoder
        .encode_tokens(tokens, clip.clip_skip)
        .map_err(|e| NodeError::input("clip", format!("text encoding failed: {e}")))
}

/// Encodes a prompt (ComfyUI's weighting syntax, chunks of 75 tokens).
pub struct ClipTextEncode;

impl Node for ClipTextEncode {
    fn spec(&self) -> NodeSpec {
        let mut spec = spec(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            "conditioning",
            vec![
                required("text", multiline("")),
                required("clip", link(SlotType::CLIP)),
            ],
            conditioning_out(),
        );
        spec.description = "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.";
        spec
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let clip = inputs.clip("clip")?;
        let tokens = clip.encoder.tokenize(inputs.string("text")?, None);
        let encoded = encode_tokens(clip, &tokens)?;
        Ok(NodeOutput::values(vec![value(vec![CondEntry::new(
            encoded.context,
            Some(encoded.pooled),
        )])]))
    }
}

/// Stops the text encoder at an earlier layer ("clip skip").
pub struct ClipSetLastLayer;

impl Node for ClipSetLastLayer {
    fn spec(&self) -> NodeSpec {
        spec(
            "CLIPSetLastLayer",
            "CLIP Set Last Layer",
            "conditioning",
            vec![
                required("clip", link(SlotType::CLIP)),
                required("stop_at_clip_layer", int(-1, -24, -1)),
            ],
            vec![output(SlotType::CLIP, "CLIP")],
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let mut clip = inputs.clip("clip")?.clone();
        let layer = inputs.int("stop_at_clip_layer")?;
        clip.clip_skip = Some(
            isize::try_from(layer)
                .map_err(|_| NodeError::input("stop_at_clip_layer", "out of range"))?,
        );
        Ok(NodeOutput::values(vec![Value::Clip(clip)]))
    }
}

/// SDXL text encoding with separate prompts for each encoder and size conditioning.
pub struct ClipTextEncodeSdxl;

impl Node for ClipTextEncodeSdxl {
    fn spec(&self) -> NodeSpec {
        let mut spec = spec(
            "CLIPTextEncodeSDXL",
            "CLIPTextEncodeSDXL",
            "advanced/conditioning",
            vec![
                required("clip", link(SlotType::CLIP)),
                required("width", int(1024, 0, MAX_RESOLUTION)),
                required("height", int(1024, 0, MAX_RESOLUTION)),
                required("crop_w", int(0, 0, MAX_RESOLUTION)),
                required("crop_h", int(0, 0, MAX_RESOLUTION)),
                required("target_width", int(1024, 0, MAX_RESOLUTION)),
                required("target_height", int(1024, 0, MAX_RESOLUTION)),
                required("text_g", multiline("")),
                required("text_l", multiline("")),
            ],
            conditioning_out(),
        );
        spec.python_module = "comfy_extras.nodes_clip_sdxl";
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let clip = inputs.clip("clip")?;
        let embeddings = EmbeddingFiles { dirs: &ctx.dirs };
        let g = clip
            .encoder
            .tokenize(inputs.string("text_g")?, Some(&embeddings))
            .g;
        let l = clip
            .encoder
            .tokenize(inputs.string("text_l")?, Some(&embeddings))
            .l;
        let (Some(mut g), Some(mut l)) = (g, l) else {
            return Err(NodeError::input(
                "clip",
                "CLIPTextEncodeSDXL needs an SDXL CLIP (CLIP-L and OpenCLIP-bigG)",
            ));
        };
        // ComfyUI pads the shorter prompt with empty chunks so both have as many chunks.
        let empty = clip.encoder.tokenize("", None);
        while l.len() < g.len() {
            l.extend(empty.l.clone().unwrap_or_default());
        }
        while g.len() < l.len() {
            g.extend(empty.g.clone().unwrap_or_default());
        }
        let encoded = encode_tokens(
            clip,
            &PromptTokens {
                l: Some(l),
                g: Some(g),
            },
        )?;
        let mut entry = CondEntry::new(encoded.context, Some(encoded.pooled));
        let size = |name: &str| inputs.int(name).map(|v| v as f32);
        entry.size.width = Some(size("width")?);
        entry.size.height = Some(size("height")?);
        entry.size.crop_w = Some(size("crop_w")?);
        entry.size.crop_h = Some(size("crop_h")?);
        entry.size.target_width = Some(size("target_width")?);
        entry.size.target_height = Some(size("target_height")?);
        Ok(NodeOutput::values(vec![value(vec![entry])]))
    }
}

/// SDXL refiner text encoding with the aesthetic score.
pub struct ClipTextEncodeSdxlRefiner;

impl Node for ClipTextEncodeSdxlRefiner {
    fn spec(&self) -> NodeSpec {
        let mut spec = spec(
            "CLIPTextEncodeSDXLRefiner",
            "CLIPTextEncodeSDXLRefiner",
            "advanced/conditioning",
            vec![
                required("ascore", float(6.0, 0.0, 1000.0, 0.01)),
                required("width", int(1024, 0, MAX_RESOLUTION)),
                required("height", int(1024, 0, MAX_RESOLUTION)),
                required("text", multiline("")),
                required("clip", link(SlotType::CLIP)),
            ],
            conditioning_out(),
        );
        spec.python_module = "comfy_extras.nodes_clip_sdxl";
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let clip = inputs.clip("clip")?;
        let embeddings = EmbeddingFiles { dirs: &ctx.dirs };
        let tokens = clip
            .encoder
            .tokenize(inputs.string("text")?, Some(&embeddings));
        let encoded = encode_tokens(clip, &tokens)?;
        let mut entry = CondEntry::new(encoded.context, Some(encoded.pooled));
        entry.size.aesthetic_score = Some(inputs.float("ascore")? as f32);
        entry.size.width = Some(inputs.int("width")? as f32);
        entry.size.height = Some(inputs.int("height")? as f32);
        Ok(NodeOutput::values(vec![value(vec![entry])]))
    }
}

/// Both lists; each entry is evaluated separately and the results are averaged by area.
pub struct ConditioningCombine;

impl Node for ConditioningCombine {
    fn spec(&self) -> NodeSpec {
        spec(
            "ConditioningCombine",
            "Conditioning (Combine)",
            "conditioning",
            vec![
                required("conditioning_1", link(SlotType::CONDITIONING)),
                required("conditioning_2", link(SlotType::CONDITIONING)),
            ],
            conditioning_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let mut list = inputs.conditioning("conditioning_1")?.as_ref().clone();
        list.extend(inputs.conditioning("conditioning_2")?.iter().cloned());
        Ok(NodeOutput::values(vec![value(list)]))
    }
}

/// The first entry of `from`, cut or zero-padded to `like`'s token count.
fn fit_tokens(from: &Tensor, like: &Tensor) -> Result<Tensor, NodeError> {
    let (_, n_from, width) = from.dims3()?;
    let (_, n_to, width_to) = like.dims3()?;
    if width != width_to {
        return Err(NodeError::input(
            "conditioning_from",
            format!("its context is {width} wide, conditioning_to's is {width_to}"),
        ));
    }
    let cut = from.narrow(1, 0, n_from.min(n_to))?;
    if n_from >= n_to {
        return Ok(cut);
    }
    let pad = Tensor::zeros((1, n_to - n_from, width), cut.dtype(), cut.device())?;
    Ok(Tensor::cat(&[&cut, &pad], 1)?)
}

fn first_entry<'a>(inputs: &'a Inputs, name: &str) -> Result<&'a CondEntry, NodeError> {
    inputs
        .conditioning(name)?
        .first()
        .ok_or_else(|| NodeError::input(name, "the conditioning is empty"))
}

/// `to · s + from · (1 − s)`, token by token (ComfyUI's ConditioningAverage).
pub struct ConditioningAverage;

impl Node for ConditioningAverage {
    fn spec(&self) -> NodeSpec {
        spec(
            "ConditioningAverage",
            "Conditioning (Average)",
            "conditioning",
            vec![
                required("conditioning_to", link(SlotType::CONDITIONING)),
                required("conditioning_from", link(SlotType::CONDITIONING)),
                required("conditioning_to_strength", float(1.0, 0.0, 1.0, 0.01)),
            ],
            conditioning_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let from = first_entry(inputs, "conditioning_from")?;
        let strength = inputs.float("conditioning_to_strength")?;
        let mut out = Vec::new();
        for entry in inputs.conditioning("conditioning_to")?.iter() {
            let t0 = fit_tokens(&from.context, &entry.context)?;
            let mixed = ((&entry.context * strength)? + (t0 * (1.0 - strength))?)?;
            let mut new = entry.clone();
            new.context = mixed;
            new.pooled = match (&entry.pooled, &from.pooled) {
                (Some(to), Some(from)) => Some(((to * strength)? + (from * (1.0 - strength))?)?),
                (None, Some(from)) => Some(from.clone()),
                (to, None) => to.clone(),
            };
            out.push(new);
        }
        Ok(NodeOutput::values(vec![value(out)]))
    }
}

/// Appends `from`'s tokens to each entry of `to`.
pub struct ConditioningConcat;

impl Node for ConditioningConcat {
    fn spec(&self) -> NodeSpec {
        spec(
            "ConditioningConcat",
            "Conditioning (Concat)",
            "conditioning",
            vec![
                required("conditioning_to", link(SlotType::CONDITIONING)),
                required("conditioning_from", link(SlotType::CONDITIONING)),
            ],
            conditioning_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let from = first_entry(inputs, "conditioning_from")?;
        let mut out = Vec::new();
        for entry in inputs.conditioning("conditioning_to")?.iter() {
            if entry.context.dim(2)? != from.context.dim(2)? {
                return Err(NodeError::input(
                    "conditioning_from",
                    "the two conditionings come from different text encoders",
                ));
            }
            let mut new = entry.clone();
            new.context = Tensor::cat(
                &[
                    &entry.context,
                    &from.context.to_dtype(entry.context.dtype())?,
                ],
                1,
            )?;
            out.push(new);
        }
        Ok(NodeOutput::values(vec![value(out)]))
    }
}

fn map_entries(
    inputs: &Inputs,
    edit: impl Fn(&mut CondEntry) -> Result<(), NodeError>,
) -> Result<NodeOutput, NodeError> {
    let mut out = inputs.conditioning("conditioning")?.as_ref().clone();
    for entry in &mut out {
        edit(entry)?;
    }
    Ok(NodeOutput::values(vec![value(out)]))
}

/// Restricts a conditioning to a rectangle (pixels, multiples of 8).
pub struct ConditioningSetArea;

impl Node for ConditioningSetArea {
    fn spec(&self) -> NodeSpec {
        spec(
            "ConditioningSetArea",
            "Conditioning (Set Area)",
            "conditioning",
            vec![
                required("conditioning", link(SlotType::CONDITIONING)),
                required("width", int_step(64, 64, MAX_RESOLUTION, 8)),
                required("height", int_step(64, 64, MAX_RESOLUTION, 8)),
                required("x", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("y", int_step(0, 0, MAX_RESOLUTION, 8)),
                required("strength", float(1.0, 0.0, 10.0, 0.01)),
            ],
            conditioning_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let area = Area::Latent {
            height: inputs.usize("height")? / 8,
            width: inputs.usize("width")? / 8,
            y: inputs.usize("y")? / 8,
            x: inputs.usize("x")? / 8,
        };
        let strength = inputs.float("strength")?;
        map_entries(inputs, |entry| {
            entry.area = Some(area.clone());
            entry.strength = strength;
            entry.set_area_to_bounds = false;
            Ok(())
        })
    }
}

/// Restricts a conditioning to a rectangle given as fractions of the image.
pub struct ConditioningSetAreaPercentage;

impl Node for ConditioningSetAreaPercentage {
    fn spec(&self) -> NodeSpec {
        spec(
            "ConditioningSetAreaPercentage",
            "Conditioning (Set Area with Percentage)",
            "conditioning",
            vec![
                required("conditioning", link(SlotType::CONDITIONING)),
                required("width", float(1.0, 0.0, 1.0, 0.01)),
                required("height", float(1.0, 0.0, 1.0, 0.01)),
                required("x", float(0.0, 0.0, 1.0, 0.01)),
                required("y", float(0.0, 0.0, 1.0, 0.01)),
                required("strength", float(1.0, 0.0, 10.0, 0.01)),
            ],
            conditioning_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let area = Area::Percentage {
            height: inputs.float("height")?,
            width: inputs.float("width")?,
            y: inputs.float("y")?,
            x: inputs.float("x")?,
        };
        let strength = inputs.float("strength")?;
        map_entries(inputs, |entry| {
            entry.area = Some(area.clone());
            entry.strength = strength;
            entry.set_area_to_bounds = false;
            Ok(())
        })
    }
}

/// Weights a conditioning by a mask; "mask bounds" also restricts it to the mask's bounding box.
pub struct ConditioningSetMask;

impl Node for ConditioningSetMask {
    fn spec(&self) -> NodeSpec {
        spec(
            "ConditioningSetMask",
            "Conditioning (Set Mask)",
            "conditioning",
            vec![
                required("conditioning", link(SlotType::CONDITIONING)),
                required("mask", link(SlotType::MASK)),
                required("strength", float(1.0, 0.0, 10.0, 0.01)),
                required("set_cond_area", combo(&["default", "mask bounds"])),
            ],
            conditioning_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let mask = inputs.mask("mask")?;
        let mask = if mask.rank() < 3 {
            mask.unsqueeze(0)?
        } else {
            mask.clone()
        };
        let strength = inputs.float("strength")?;
        let bounds = inputs.string("set_cond_area")? == "mask bounds";
        map_entries(inputs, |entry| {
            entry.mask = Some(mask.to_dtype(DType::F32)?);
            entry.mask_strength = strength;
            entry.set_area_to_bounds = bounds;
            Ok(())
        })
    }
}

/// Zeros the context and pooled output (an "empty" negative for SDXL workflows).
pub struct ConditioningZeroOut;

impl Node for ConditioningZeroOut {
    fn spec(&self) -> NodeSpec {
        spec(
            "ConditioningZeroOut",
            "ConditioningZeroOut",
            "advanced/conditioning",
            vec![required("conditioning", link(SlotType::CONDITIONING))],
            conditioning_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        map_entries(inputs, |entry| {
            entry.context = entry.context.zeros_like()?;
            if let Some(pooled) = &entry.pooled {
                entry.pooled = Some(pooled.zeros_like()?);
            }
            Ok(())
        })
    }
}

/// Sets the weight of each entry's prediction where it applies (ComfyUI's `strength`).
pub struct ConditioningSetAreaStrength;

impl Node for ConditioningSetAreaStrength {
    fn spec(&self) -> NodeSpec {
        spec(
            "ConditioningSetAreaStrength",
            "ConditioningSetAreaStrength",
            "conditioning",
            vec![
                required("conditioning", link(SlotType::CONDITIONING)),
                required("strength", float(1.0, 0.0, 10.0, 0.01)),
            ],
            conditioning_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let strength = inputs.float("strength")?;
        map_entries(inputs, |entry| {
            entry.strength = strength;
            Ok(())
        })
    }
}

/// Makes each entry count only between two fractions of the schedule (ComfyUI's
/// `start_percent`/`end_percent`): outside them the sampler leaves it out.
pub struct ConditioningSetTimestepRange;

impl Node for ConditioningSetTimestepRange {
    fn spec(&self) -> NodeSpec {
        spec(
            "ConditioningSetTimestepRange",
            "ConditioningSetTimestepRange",
            "advanced/conditioning",
            vec![
                required("conditioning", link(SlotType::CONDITIONING)),
                required("start", float(0.0, 0.0, 1.0, 0.001)),
                required("end", float(1.0, 0.0, 1.0, 0.001)),
            ],
            conditioning_out(),
        )
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let range = (inputs.float("start")?, inputs.float("end")?);
        map_entries(inputs, |entry| {
            entry.percent_range = Some(range);
            Ok(())
        })
    }
}

/// Encodes a prompt for the ControlNets only: each entry's ControlNets attend to it instead of the
/// entry's own text (ComfyUI's `cross_attn_controlnet` and `pooled_output_controlnet`).
pub struct ClipTextEncodeControlnet;

impl Node for ClipTextEncodeControlnet {
    fn spec(&self) -> NodeSpec {
        let mut spec = spec(
            "CLIPTextEncodeControlnet",
            "CLIPTextEncodeControlnet",
            "_for_testing/conditioning",
            vec![
                required("clip", link(SlotType::CLIP)),
                required("conditioning", link(SlotType::CONDITIONING)),
                required("text", multiline("")),
            ],
            conditioning_out(),
        );
        spec.python_module = "comfy_extras.nodes_cond";
        spec
    }

    fn run(&self, _ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let clip = inputs.clip("clip")?;
        let tokens = clip.encoder.tokenize(inputs.string("text")?, None);
        let encoded = encode_tokens(clip, &tokens)?;
        map_entries(inputs, |entry| {
            entry.controlnet_context = Some(encoded.context.clone());
            entry.controlnet_pooled = Some(encoded.pooled.clone());
            Ok(())
        })
    }
}
